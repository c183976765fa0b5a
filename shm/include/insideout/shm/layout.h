// The shared-memory layout between insideoutd and one client: header, doorbells,
// counters, two rings of frame offsets and the frame and buffer arenas.
//
// Everything here is plain, fixed-width and position independent: offsets from the
// segment base and free-running positions, never pointers. The daemon computes the
// geometry itself (SegmentGeometry) and never re-reads it from the segment, because a
// client may write anything into its segment at any moment.
//
// Bump kLayoutVersion when a field changes width, order or meaning; layout_test.cc pins
// sizes and offsets so that a change cannot slip through.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace insideout::shm {

inline constexpr std::size_t kCacheLine = 64;
inline constexpr std::uint64_t kSegmentMagic = 0x3154554F44534E49ULL;  // "INSDOUT1"
// 4: the daemon's generation in the header, per-frame controls (deadlines), client
// doorbells, cancel entries in the submit ring; 3: failure messages; 2: the pool bell
inline constexpr std::uint32_t kLayoutVersion = 4;
// 3: Welcome carries the daemon's generation; 2: Welcome passes three descriptors
inline constexpr std::uint32_t kProtocolVersion = 3;

static_assert(std::atomic<std::uint32_t>::is_always_lock_free);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

// Segment lifecycle, written by the daemon into SegmentHeader::state.
enum class SegmentState : std::uint32_t {
  kRunning = 1,
  kDraining = 2,  // the daemon is shutting down: no new work is accepted
  kClosed = 3,    // the daemon has let go of this segment
};

struct SegmentHeader {
  std::uint64_t magic;                        // kSegmentMagic, written first
  std::atomic<std::uint32_t> layout_version;  // written last with release; 0 = not ready
  std::uint32_t header_size;
  std::uint64_t segment_size;
  std::uint32_t daemon_pid;
  std::uint32_t client_id;
  std::uint64_t daemon_start_ns;            // CLOCK_REALTIME at daemon start
  std::atomic<std::uint64_t> heartbeat_ns;  // CLOCK_MONOTONIC, refreshed by the daemon
  std::atomic<std::uint32_t> state;         // SegmentState
  std::uint32_t doorbells_off;
  std::uint32_t counters_off;
  std::uint32_t submit_ring_off;
  std::uint32_t submit_ring_capacity;
  std::uint32_t completion_ring_off;
  std::uint32_t completion_ring_capacity;
  std::uint32_t frames_off;
  std::uint32_t frame_count;
  std::uint32_t frame_size;
  std::uint32_t buffers_off;
  std::uint32_t buffer_block_size;
  std::uint32_t buffer_block_count;
  std::uint32_t messages_off;  // kMessageBytes per frame: why the frame's continuation failed
  // Which start of insideoutd made this segment: a new value at every start (never 0), the
  // same as Welcome.generation. A client tells a restarted daemon from the one it knew.
  std::uint64_t generation;
  std::uint32_t controls_off;  // FrameControl per frame (deadlines)
  std::uint32_t bells_off;     // ClientBells
  std::uint32_t reserved[2];
};
static_assert(std::is_standard_layout_v<SegmentHeader>);
static_assert(sizeof(SegmentHeader) == 128);
static_assert(offsetof(SegmentHeader, layout_version) == 8);
static_assert(offsetof(SegmentHeader, heartbeat_ns) == 40);
static_assert(offsetof(SegmentHeader, buffer_block_count) == 96);
static_assert(offsetof(SegmentHeader, messages_off) == 100);
static_assert(offsetof(SegmentHeader, generation) == 104);
static_assert(offsetof(SegmentHeader, controls_off) == 112);
static_assert(offsetof(SegmentHeader, bells_off) == 116);

// The message of a failed continuation (its function's words, "zstd: corrupt input"):
// written by the daemon into the frame's message slot, NUL-terminated, before the frame
// is completed; read by the client with the failed status. Slot i belongs to frame i.
inline constexpr std::uint32_t kMessageBytes = 128;

// A frame's control slot (slot i belongs to frame i), written by the client before it
// pushes the frame (the ring's release store publishes it); the daemon copies it once
// when it accepts the frame and never reads it again for that submission.
struct FrameControl {
  std::atomic<std::int64_t> deadline_ns;  // CLOCK_MONOTONIC; 0: none
  std::uint64_t reserved;                 // zero
};
static_assert(sizeof(FrameControl) == 16);

// Doorbells a client rings to feed its running continuations (CoContext::doorbell()):
// counters the client bumps (fetch_add, release) and the daemon reads (acquire) when
// the client's pool bell wakes a worker. Only the low 63 bits count.
inline constexpr std::uint32_t kClientBells = 16;
struct alignas(kCacheLine) ClientBells {
  std::atomic<std::uint64_t> count[kClientBells];
};
static_assert(sizeof(ClientBells) == 2 * kCacheLine);

// A submit ring entry is a frame offset, or a cancel: kSubmitCancel | frame index. A
// cancel follows the submission it cancels in the ring (the client pushes it later), so
// the daemon meets it after it accepted that frame: it cancels the frame if it is still
// in flight and is a no-op otherwise (a frame is resubmitted only after it completed).
// Frame offsets stay below 2^31 (SegmentGeometry::compute()).
inline constexpr std::uint32_t kSubmitCancel = 1u << 31;

// A futex-backed event: the waiter announces itself in `waiters` before it re-checks its
// condition and sleeps on `seq`; the notifier bumps `seq` and wakes only when it sees a
// waiter. See futex.h for the protocol.
struct alignas(kCacheLine) EventWord {
  std::atomic<std::uint32_t> seq;
  std::atomic<std::uint32_t> waiters;
};
static_assert(sizeof(EventWord) == kCacheLine);

struct Doorbells {
  EventWord unused;      // layout 1's submit doorbell: the pool bell (PoolBell) took its place
  EventWord completion;  // daemon notifies, client waits: "completions ready"
  EventWord space;       // daemon notifies, client waits: "the submit ring has room again"
};
static_assert(sizeof(Doorbells) == 3 * kCacheLine);

// A pool's bell: one page per pool of workers, written by the daemon only and mapped
// read-only by every client of the pool (a sealed memfd: no client can map it writable).
// `sleepers` counts the pool's workers that announced they are going to sleep; a client
// that pushed work reads it (after a full fence) and writes its own eventfd only when it
// is non-zero. The eventfd's count persists until a worker's epoll sees it, so the
// announce-recheck-sleep of the worker and the push-fence-load of the client cannot
// lose a wake-up (the EventWord protocol of futex.h, with a descriptor instead of a
// futex word the client could not change). See Scheduler::park().
struct alignas(kCacheLine) PoolBell {
  std::atomic<std::uint32_t> sleepers;
  std::uint32_t pool;  // the pool's id (SchedulerConfig::pool)
};
static_assert(std::is_standard_layout_v<PoolBell>);
static_assert(sizeof(PoolBell) == kCacheLine);
inline constexpr std::size_t kPoolBellBytes = 4096;  // one page, so it maps on its own

// Per-client counters, written by the daemon (relaxed: they are statistics only), read
// by the client and by insideoutctl.
struct alignas(kCacheLine) ClientCounters {
  std::atomic<std::uint64_t> accepted;
  std::atomic<std::uint64_t> completed;
  std::atomic<std::uint64_t> failed;
  std::atomic<std::uint64_t> rejected_invalid;   // bad offset, length or flags
  std::atomic<std::uint64_t> rejected_function;  // unknown function id
  std::atomic<std::uint64_t> backpressure;       // times the daemon held back a full client
  std::atomic<std::uint64_t> steps;
  std::atomic<std::uint64_t> wakes;  // futex wakes the daemon issued to the client
};
static_assert(sizeof(ClientCounters) == kCacheLine);

// Frame flags (Frame::flags), set by the client.
enum FrameFlags : std::uint16_t {
  kFrameEnvInline = 1u << 0,     // the environment is in Frame::inline_data (env_len <= 16)
  kFrameResultInline = 1u << 1,  // set by the daemon: the result is in Frame::inline_data
};
inline constexpr std::uint16_t kFrameKnownFlags = kFrameEnvInline;

// Completion status (Frame::status), written by the daemon before the frame's offset is
// pushed to the completion ring. 0 means "not completed".
enum class Status : std::uint16_t {
  kPending = 0,
  kOk = 1,
  kInvalidArgument = 2,
  kUnknownFunction = 3,
  kBackpressure = 4,
  kCancelled = 5,
  kDeadlineExceeded = 6,
  kDaemonLost = 7,
  kInternal = 8,
  kResultTooLarge = 9,
  // Refused or cut off because the daemon is draining (insideoutctl drain); resubmit
  // after insideoutctl resume. New in protocol 1 without a version bump: only a value
  // was added, and a client that does not know it reports "unknown status".
  kDraining = 10,
  // The function reported a failure (the SDK's fail()); the message says why.
  kFailed = 11,
};
const char* status_name(Status s) noexcept;

// One continuation as the client describes it. The daemon copies it out once, validates
// the copy and never reads the descriptor fields again.
struct alignas(kCacheLine) Frame {
  std::uint32_t fn;          // function id (from the registry sent at registration)
  std::uint16_t flags;       // FrameFlags
  std::uint16_t status;      // Status, written by the daemon
  std::uint64_t tag;         // the client's own; the daemon never reads it
  std::uint64_t arg;         // a scalar argument (steps, children, nanoseconds, ...)
  std::uint32_t env_off;     // the environment: a buffer in this segment ...
  std::uint32_t env_len;     // ... or, with kFrameEnvInline, inline_data[0, env_len)
  std::uint64_t result;      // a scalar result (checksum, children run, ...)
  std::uint32_t result_len;  // bytes of result data: inline_data or the env buffer
  std::uint32_t detail;      // error detail (ErrorDetail) when status != kOk
  std::uint8_t inline_data[16];
};
static_assert(std::is_standard_layout_v<Frame>);
static_assert(sizeof(Frame) == 64);
static_assert(offsetof(Frame, env_off) == 24);
static_assert(offsetof(Frame, result) == 32);
static_assert(offsetof(Frame, inline_data) == 48);
inline constexpr std::uint32_t kInlineCapacity = sizeof(Frame::inline_data);

// Why a continuation failed, beside its Status (Frame::detail).
enum class ErrorDetail : std::uint32_t {
  kNone = 0,
  kFrameOutOfArena = 1,
  kFrameMisaligned = 2,
  kEnvOutOfSegment = 3,
  kInlineTooLong = 4,
  kUnknownFlags = 5,
  kUnknownFunction = 6,
  kBufferRequired = 7,
  kArgumentOutOfRange = 8,
  kClientGone = 9,
  kShutdown = 10,
  kStepThrew = 11,
  kTooManyTimers = 12,        // the client's parked continuations are at its limit
  kFunctionFailed = 13,       // the function failed it; see the frame's message
  kCancelledByClient = 14,    // Handle::cancel() (layout 4)
  kCancelledByOperator = 15,  // insideoutctl cancel (layout 4)
};
const char* detail_name(ErrorDetail d) noexcept;

// The ring header: consumer and producer positions on their own cache lines; the slots
// (std::atomic<uint64_t>[capacity]) follow it. See ring.h.
struct RingHeader {
  alignas(kCacheLine) std::atomic<std::uint64_t> tail;  // next position producers reserve
  alignas(kCacheLine) std::atomic<std::uint64_t> head;  // next position the consumer reads
};
static_assert(sizeof(RingHeader) == 2 * kCacheLine);

struct ArenaHeader {
  alignas(kCacheLine) std::atomic<std::uint64_t> free_head;  // (aba tag << 32) | (index + 1)
};
static_assert(sizeof(ArenaHeader) == kCacheLine);

// What a client asks for; the daemon clamps it to its limits. frame_count may not exceed
// ring_capacity: an honest client then can never fill its completion ring, since every
// completion in it holds a frame the client has not freed yet.
struct SegmentRequest {
  std::uint32_t ring_capacity = 4096;  // power of two, both rings
  std::uint32_t frame_count = 4096;
  std::uint32_t buffer_block_size = 256;
  std::uint32_t buffer_block_count = 4096;  // 1 MiB of buffers by default
};

// Where everything lies; computed from a request by both sides, never read back.
struct SegmentGeometry {
  std::uint32_t doorbells_off;
  std::uint32_t counters_off;
  std::uint32_t submit_ring_off;
  std::uint32_t completion_ring_off;
  std::uint32_t ring_capacity;
  std::uint32_t arena_off;
  std::uint32_t frames_off;
  std::uint32_t frame_count;
  std::uint32_t buffers_off;
  std::uint32_t buffer_block_size;
  std::uint32_t buffer_block_count;
  std::uint32_t messages_off;
  std::uint32_t controls_off;  // FrameControl per frame
  std::uint32_t bells_off;     // ClientBells
  std::uint64_t size;

  // Returns false where the request cannot be laid out (zero or non-power-of-two
  // capacity, block size not a multiple of 64, or a segment over 4 GiB).
  [[nodiscard]] static bool compute(const SegmentRequest& req, SegmentGeometry* out) noexcept;

  [[nodiscard]] bool frame_offset_valid(std::uint32_t off) const noexcept {
    return off >= frames_off && off < frames_off + frame_count * sizeof(Frame) &&
           (off - frames_off) % sizeof(Frame) == 0;
  }
  [[nodiscard]] bool buffer_range_valid(std::uint32_t off, std::uint32_t len) const noexcept {
    const std::uint64_t end = std::uint64_t{off} + len;
    return off >= buffers_off && end <= std::uint64_t{buffers_off} +
                                            std::uint64_t{buffer_block_size} * buffer_block_count;
  }
};

// Writes a fresh segment at `base` (size bytes, zero-filled by the kernel): every field,
// then the layout version with release.
void initialize_segment(void* base, const SegmentGeometry& g, std::uint32_t daemon_pid,
                        std::uint32_t client_id, std::uint64_t daemon_start_ns,
                        std::uint64_t generation) noexcept;

enum class CheckResult { kOk, kNotReady, kBadMagic, kVersionMismatch, kGeometryMismatch };
// The client's check of a segment it was handed: magic, then version (acquire), then
// that the header agrees with the geometry it expects.
CheckResult check_segment(const void* base, std::size_t size,
                          SegmentGeometry* geometry_out) noexcept;

}  // namespace insideout::shm
