#include "insideout/shm/layout.h"

#include <cstring>

#include "insideout/shm/arena.h"
#include "insideout/shm/ring.h"

namespace insideout::shm {
namespace {

constexpr std::uint64_t align_up(std::uint64_t v, std::uint64_t a) { return (v + a - 1) / a * a; }
constexpr bool is_pow2(std::uint32_t v) { return v != 0 && (v & (v - 1)) == 0; }

}  // namespace

const char* status_name(Status s) noexcept {
  switch (s) {
    case Status::kPending:
      return "pending";
    case Status::kOk:
      return "ok";
    case Status::kInvalidArgument:
      return "invalid argument";
    case Status::kUnknownFunction:
      return "unknown function";
    case Status::kBackpressure:
      return "backpressure";
    case Status::kCancelled:
      return "cancelled";
    case Status::kDeadlineExceeded:
      return "deadline exceeded";
    case Status::kDaemonLost:
      return "daemon lost";
    case Status::kInternal:
      return "internal error";
    case Status::kResultTooLarge:
      return "result too large";
    case Status::kDraining:
      return "draining";
    case Status::kFailed:
      return "failed";
  }
  return "unknown status";
}

const char* detail_name(ErrorDetail d) noexcept {
  switch (d) {
    case ErrorDetail::kNone:
      return "none";
    case ErrorDetail::kFrameOutOfArena:
      return "frame offset outside the arena";
    case ErrorDetail::kFrameMisaligned:
      return "frame offset not on a frame boundary";
    case ErrorDetail::kEnvOutOfSegment:
      return "environment outside the buffer area";
    case ErrorDetail::kInlineTooLong:
      return "inline environment longer than 16 bytes";
    case ErrorDetail::kUnknownFlags:
      return "unknown frame flags";
    case ErrorDetail::kUnknownFunction:
      return "unknown function id";
    case ErrorDetail::kBufferRequired:
      return "function needs a buffer environment";
    case ErrorDetail::kArgumentOutOfRange:
      return "argument out of range";
    case ErrorDetail::kClientGone:
      return "client gone";
    case ErrorDetail::kShutdown:
      return "daemon shutting down";
    case ErrorDetail::kTooManyTimers:
      return "too many parked continuations for this client (--max-timers)";
    case ErrorDetail::kStepThrew:
      return "step threw an exception";
    case ErrorDetail::kFunctionFailed:
      return "the function failed";
    case ErrorDetail::kCancelledByClient:
      return "cancelled by its client";
    case ErrorDetail::kCancelledByOperator:
      return "cancelled by an operator (insideoutctl cancel)";
  }
  return "unknown detail";
}

bool SegmentGeometry::compute(const SegmentRequest& req, SegmentGeometry* out) noexcept {
  if (!is_pow2(req.ring_capacity) || req.ring_capacity > (1u << 24)) return false;
  if (req.frame_count == 0 || req.frame_count > req.ring_capacity) return false;
  if (req.buffer_block_size == 0 || req.buffer_block_size % kCacheLine != 0) return false;
  SegmentGeometry g{};
  std::uint64_t off = sizeof(SegmentHeader);
  g.doorbells_off = static_cast<std::uint32_t>(off);
  off += sizeof(Doorbells);
  g.counters_off = static_cast<std::uint32_t>(off);
  off += sizeof(ClientCounters);
  g.ring_capacity = req.ring_capacity;
  g.submit_ring_off = static_cast<std::uint32_t>(off);
  off = align_up(off + ring_bytes(req.ring_capacity), kCacheLine);
  g.completion_ring_off = static_cast<std::uint32_t>(off);
  off = align_up(off + ring_bytes(req.ring_capacity), kCacheLine);
  g.arena_off = static_cast<std::uint32_t>(off);
  off += sizeof(ArenaHeader);
  g.frames_off = static_cast<std::uint32_t>(off);
  g.frame_count = req.frame_count;
  off += std::uint64_t{req.frame_count} * sizeof(Frame);
  g.buffers_off = static_cast<std::uint32_t>(off);
  g.buffer_block_size = req.buffer_block_size;
  g.buffer_block_count = req.buffer_block_count;
  off += std::uint64_t{req.buffer_block_size} * req.buffer_block_count;
  off = align_up(off, kCacheLine);
  g.messages_off = static_cast<std::uint32_t>(off);
  off += std::uint64_t{req.frame_count} * kMessageBytes;
  off = align_up(off, kCacheLine);
  g.controls_off = static_cast<std::uint32_t>(off);
  off += std::uint64_t{req.frame_count} * sizeof(FrameControl);
  off = align_up(off, kCacheLine);
  g.bells_off = static_cast<std::uint32_t>(off);
  off += sizeof(ClientBells);
  off = align_up(off, 4096);
  // Cancel entries in the submit ring use bit 31 (kSubmitCancel): frames must lie below.
  if (std::uint64_t{g.frames_off} + std::uint64_t{req.frame_count} * sizeof(Frame) >= kSubmitCancel)
    return false;
  if (off > 0xFFFFFFFFull) return false;
  g.size = off;
  *out = g;
  return true;
}

void initialize_segment(void* base, const SegmentGeometry& g, std::uint32_t daemon_pid,
                        std::uint32_t client_id, std::uint64_t daemon_start_ns,
                        std::uint64_t generation) noexcept {
  auto* h = static_cast<SegmentHeader*>(base);
  h->magic = kSegmentMagic;
  h->header_size = sizeof(SegmentHeader);
  h->segment_size = g.size;
  h->daemon_pid = daemon_pid;
  h->client_id = client_id;
  h->daemon_start_ns = daemon_start_ns;
  h->heartbeat_ns.store(0, std::memory_order_relaxed);
  h->state.store(static_cast<std::uint32_t>(SegmentState::kRunning), std::memory_order_relaxed);
  h->doorbells_off = g.doorbells_off;
  h->counters_off = g.counters_off;
  h->submit_ring_off = g.submit_ring_off;
  h->submit_ring_capacity = g.ring_capacity;
  h->completion_ring_off = g.completion_ring_off;
  h->completion_ring_capacity = g.ring_capacity;
  h->frames_off = g.frames_off;
  h->frame_count = g.frame_count;
  h->frame_size = sizeof(Frame);
  h->buffers_off = g.buffers_off;
  h->buffer_block_size = g.buffer_block_size;
  h->buffer_block_count = g.buffer_block_count;
  h->messages_off = g.messages_off;
  h->generation = generation;
  h->controls_off = g.controls_off;
  h->bells_off = g.bells_off;
  char* b = static_cast<char*>(base);
  ring_initialize(b + g.submit_ring_off, g.ring_capacity);
  ring_initialize(b + g.completion_ring_off, g.ring_capacity);
  FrameArena(base, g).initialize();
  // Written last: pairs with the acquire load in check_segment(); everything above is
  // visible to a reader that sees this version.
  h->layout_version.store(kLayoutVersion, std::memory_order_release);
}

CheckResult check_segment(const void* base, std::size_t size, SegmentGeometry* out) noexcept {
  if (size < sizeof(SegmentHeader)) return CheckResult::kGeometryMismatch;
  const auto* h = static_cast<const SegmentHeader*>(base);
  if (h->magic != kSegmentMagic) return CheckResult::kBadMagic;
  // Pairs with the release store in initialize_segment().
  const std::uint32_t v = h->layout_version.load(std::memory_order_acquire);
  if (v == 0) return CheckResult::kNotReady;
  if (v != kLayoutVersion) return CheckResult::kVersionMismatch;
  SegmentRequest req;
  req.ring_capacity = h->submit_ring_capacity;
  req.frame_count = h->frame_count;
  req.buffer_block_size = h->buffer_block_size;
  req.buffer_block_count = h->buffer_block_count;
  SegmentGeometry g;
  if (!SegmentGeometry::compute(req, &g) || g.size != h->segment_size || g.size > size ||
      h->completion_ring_capacity != g.ring_capacity || h->frames_off != g.frames_off ||
      h->buffers_off != g.buffers_off || h->messages_off != g.messages_off ||
      h->controls_off != g.controls_off || h->bells_off != g.bells_off ||
      h->frame_size != sizeof(Frame)) {
    return CheckResult::kGeometryMismatch;
  }
  *out = g;
  return CheckResult::kOk;
}

void ring_initialize(void* ring_base, std::uint32_t capacity) noexcept {
  auto* hdr = static_cast<RingHeader*>(ring_base);
  hdr->tail.store(0, std::memory_order_relaxed);
  hdr->head.store(0, std::memory_order_relaxed);
  RingView view(ring_base, capacity);
  for (std::uint32_t i = 0; i < capacity; ++i) {
    view.slot(i).store(ring_detail::make_word(i, 0), std::memory_order_relaxed);
  }
}

}  // namespace insideout::shm
