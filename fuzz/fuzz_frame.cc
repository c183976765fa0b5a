// fuzz_frame: check_frame() (daemon/src/frame_check.h), the validation of a continuation
// descriptor a hostile client wrote, over any geometry the daemon can lay out and any
// 64 bytes of frame.
//
// Input: 16 bytes of SegmentRequest (four little-endian u32, used as asked when
// SegmentGeometry::compute() accepts them, else the default request), a u32 frame
// offset, then the frame's 64 bytes (zero-padded).
//
// Invariants: a descriptor is accepted exactly when every rule holds (checked against a
// plain restatement of the rules below), and an accepted one can only reach memory of
// its own segment: an inline environment of at most 16 bytes, a buffer environment
// inside the buffer area, which lies inside the segment; an argument within the
// function's max_arg; a refusal carries a status and detail that belong together.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <variant>

#include "engine.h"
#include "frame_check.h"
#include "fuzz_check.h"
#include "insideout/shm/layout.h"
namespace {

using insideout::daemon::FrameCheck;
using insideout::daemon::FrameError;
using insideout::daemon::FunctionDef;
using insideout::daemon::FunctionRegistry;
using insideout::daemon::ValidFrame;
namespace shm = insideout::shm;

io_step never_runs(io_task*, io_ctx*) { return IO_STEP_COMPLETE; }

// The built-ins, plus what they lack today: a function that needs a buffer and one with a
// small max_arg, so that both rules are exercised.
const FunctionRegistry& registry() {
  static const FunctionRegistry* r = [] {
    auto* reg = new FunctionRegistry;
    insideout::daemon::register_builtins(*reg);
    reg->add({"fuzz_needs_buffer", "", never_runs, true});
    reg->add({"fuzz_small_arg", "", never_runs, false, 100});
    return reg;
  }();
  return *r;
}

std::uint32_t u32(const std::uint8_t* p) {
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// The rules of check_frame(), restated without its structure: which error (if any) a
// descriptor deserves. The first failing rule in the documented order wins.
FrameError expected(const shm::Frame& f, const shm::SegmentGeometry& g, const FunctionDef* def) {
  using shm::ErrorDetail;
  using shm::Status;
  if (f.flags & ~shm::kFrameKnownFlags)
    return {Status::kInvalidArgument, ErrorDetail::kUnknownFlags};
  if (def == nullptr) return {Status::kUnknownFunction, ErrorDetail::kUnknownFunction};
  const bool inl = f.flags & shm::kFrameEnvInline;
  if (inl && f.env_len > 16) return {Status::kInvalidArgument, ErrorDetail::kInlineTooLong};
  if (inl && def->needs_buffer) return {Status::kInvalidArgument, ErrorDetail::kBufferRequired};
  const std::uint64_t buf_end =
      std::uint64_t{g.buffers_off} + std::uint64_t{g.buffer_block_size} * g.buffer_block_count;
  if (!inl && f.env_len != 0 &&
      (f.env_off < g.buffers_off || std::uint64_t{f.env_off} + f.env_len > buf_end)) {
    return {Status::kInvalidArgument, ErrorDetail::kEnvOutOfSegment};
  }
  if (!inl && f.env_len == 0 && def->needs_buffer)
    return {Status::kInvalidArgument, ErrorDetail::kBufferRequired};
  if (f.arg > def->max_arg) return {Status::kInvalidArgument, ErrorDetail::kArgumentOutOfRange};
  return {Status::kOk, ErrorDetail::kNone};
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::uint8_t in[16 + 4 + sizeof(shm::Frame)] = {};
  std::memcpy(in, data, size < sizeof(in) ? size : sizeof(in));

  shm::SegmentRequest req{u32(in), u32(in + 4), u32(in + 8), u32(in + 12)};
  shm::SegmentGeometry g;
  if (!shm::SegmentGeometry::compute(req, &g)) FUZZ_CHECK(shm::SegmentGeometry::compute({}, &g));
  // The layout the checks rely on: buffers after the frames, both inside the segment.
  const std::uint64_t frames_end = std::uint64_t{g.frames_off} + std::uint64_t{g.frame_count} * 64;
  const std::uint64_t buf_end =
      std::uint64_t{g.buffers_off} + std::uint64_t{g.buffer_block_size} * g.buffer_block_count;
  FUZZ_CHECK(frames_end <= g.buffers_off && buf_end <= g.size && g.size <= 0xFFFFFFFFull);

  // The frame's own offset, as accept_one() checks it before copying the frame out.
  const std::uint32_t off = u32(in + 16);
  if (g.frame_offset_valid(off)) {
    FUZZ_CHECK(off >= g.frames_off && std::uint64_t{off} + sizeof(shm::Frame) <= frames_end);
    FUZZ_CHECK((off - g.frames_off) % sizeof(shm::Frame) == 0);
  } else {
    FUZZ_CHECK(off < g.frames_off || off >= frames_end || (off - g.frames_off) % 64 != 0);
  }

  shm::Frame f;
  std::memcpy(&f, in + 20, sizeof(f));
  const FunctionDef* def = registry().find(f.fn);
  const FrameError want = expected(f, g, def);
  const FrameCheck got = insideout::daemon::check_frame(f, g, registry());

  if (const auto* e = std::get_if<FrameError>(&got)) {
    FUZZ_CHECK(want.status == e->status && want.detail == e->detail);
    FUZZ_CHECK((e->status == shm::Status::kUnknownFunction) ==
               (e->detail == shm::ErrorDetail::kUnknownFunction));
    return 0;
  }
  FUZZ_CHECK(want.status == shm::Status::kOk);
  const ValidFrame& v = std::get<ValidFrame>(got);
  FUZZ_CHECK(v.def == def && def != nullptr && def->entry != nullptr);
  FUZZ_CHECK(v.arg == f.arg && v.arg <= def->max_arg);
  const auto len = static_cast<std::uint32_t>(v.env >> 32);
  const auto env_off = static_cast<std::uint32_t>(v.env);
  FUZZ_CHECK(len == f.env_len);
  if (v.task_flags & insideout::engine::kTaskEnvInline) {
    FUZZ_CHECK(v.task_flags == insideout::engine::kTaskEnvInline);
    FUZZ_CHECK((f.flags & shm::kFrameEnvInline) && len <= shm::kInlineCapacity);
    FUZZ_CHECK(env_off == 0 && !def->needs_buffer);
  } else {
    FUZZ_CHECK(v.task_flags == 0 && !(f.flags & shm::kFrameEnvInline));
    if (len != 0) {
      // What a step function will read in place: inside the buffer area, so inside the
      // segment and never in the header, rings or frames.
      FUZZ_CHECK(env_off >= g.buffers_off && std::uint64_t{env_off} + len <= buf_end);
      FUZZ_CHECK(std::uint64_t{env_off} >= frames_end);
    } else {
      FUZZ_CHECK(v.env == 0 && !def->needs_buffer);
    }
  }
  return 0;
}
