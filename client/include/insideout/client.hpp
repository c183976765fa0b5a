// libinsideout: hand continuations to insideoutd through shared memory.
//
//   auto client = insideout::Client::connect().value();
//   auto h = client->submit("checksum", bytes).value();
//   if (h.wait() == insideout::Status::kOk) use(h.result().value);
//
// Zero-copy: allocate a frame (and a buffer) in the segment, fill them in place, submit
// the frame: only its offset travels. Completions come back through the completion ring;
// a handle is waited on (wait, wait_for), polled, given a callback (then) or co_awaited.
// Callbacks run, and coroutines resume, on the thread that drains completions: any
// wait()/poll() caller, or the client's dispatcher thread when ClientOptions::dispatcher.
//
// Thread safety: a Client may be used from many threads; a Handle from one at a time.
// Handles must not outlive their Client.
//
// Daemon restarts (ClientOptions::reconnect, on by default). When the daemon goes away (it
// stopped, crashed or was restarted), the same Client reconnects on its own to the next
// insideoutd on the socket (a new generation(): Welcome and segment header say which
// start of the daemon it is) and gets a new segment. Every continuation still gets
// exactly one outcome:
//   - one the old daemon completed before it went: its result, as usual;
//   - one the old daemon had accepted (taken from the submit ring) but not completed:
//     Status::kDaemonLost, since nobody can tell whether its steps ran;
//   - one still waiting in the submit ring (never accepted): submitted again to the new
//     daemon, with its environment copied into the new segment; its Handle, callback or
//     coroutine gets the new daemon's result. When no daemon is back within
//     ClientOptions::reconnect_wait, it completes with kDaemonLost instead.
// While no daemon is connected, submit(), allocate_buffer(), call() and function_id()
// wait for one up to reconnect_wait, then fail with kUnavailable ("daemon lost").
// Handles stay valid across a restart (they follow their continuation into the new
// segment). Raw pointers into a segment (a Frame* from allocate_frame(), a buffer from
// allocate_buffer(), Result::data) belong to the segment they came from: they stay mapped,
// readable and writable until the Client is destroyed, and a Frame* allocated before a
// restart may still be passed to submit(), which copies it and its environment buffer into
// the new segment. Everything else that came from the old daemon must be obtained again
// from the new one: function ids of plugins (a built-in keeps its id), segment_base() and
// client_id(). A client the daemon itself disconnected (insideoutctl evict, a forged ring)
// is told so (Goodbye.disconnected) and stays lost; so does one that finds the same
// generation again. Callbacks that run while the loss is being handled (on the client's
// monitor thread) do not wait for the next daemon: a submit() from one fails at once.
//
// Limits. Each client gets one segment, sized by ClientOptions::segment (SegmentRequest in
// <insideout/shm/layout.h>); the defaults are
//   - 4,096 frames (segment.frame_count): one per continuation in flight or not yet
//     released; a Handle holds its frame until it is reset or destroyed;
//   - 1 MiB of buffers (segment.buffer_block_count = 4,096 blocks of
//     segment.buffer_block_size = 256 bytes): environments over 16 bytes are copied into a
//     buffer, which takes whole blocks (a 300-byte environment takes 2); a buffer submit()
//     allocated goes back when its continuation completes, unless the result is in it;
//   - 4,096 slots in each ring (segment.ring_capacity).
// Ask for more with ClientOptions::segment (the daemon caps a segment at its
// --max-segment-mib, 256 MiB by default). When frames, buffers or ring slots run out,
// OnFull::kWait (the default) waits for room up to ClientOptions::full_timeout, draining
// completions meanwhile, and then fails with kDeadlineExceeded; OnFull::kFailFast fails at
// once with kResourceExhausted. Either error names the option that raises the limit.
#pragma once

#include <chrono>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "insideout/shm/futex.h"
#include "insideout/shm/layout.h"

namespace insideout {

using shm::ErrorDetail;
using shm::Frame;
using shm::Status;

// What submit and allocate_buffer do when the submit ring is full or no frame or buffer
// is free.
enum class OnFull : std::uint8_t {
  kFailFast,  // return kResourceExhausted at once
  kWait,      // wait for room, up to ClientOptions::full_timeout
};

struct ClientOptions {
  std::string
      runtime_dir;  // empty: $INSIDEOUT_RUNTIME_DIR, /run/insideout or $XDG_RUNTIME_DIR/insideout
  std::string socket_path;        // overrides runtime_dir
  std::string name;               // shown by the daemon's logs and insideoutctl
  std::string pool;               // the pool whose workers run this client's work; empty: "default"
  bool want_segment = true;       // false: the serialized path only
  shm::SegmentRequest segment{};  // frames, buffers, ring slots: see "Limits" above
  shm::IdleStrategy idle = shm::IdleStrategy::kSpinThenBlock;
  std::chrono::microseconds spin{20};  // spin-then-block: how long a wait spins
  OnFull on_full = OnFull::kWait;
  std::chrono::milliseconds full_timeout{1000};
  bool dispatcher = false;  // a thread that drains completions (for then() and co_await)
  // connect(): how long to wait for a daemon that is starting (its socket missing or
  // refusing), retrying with backoff; 0 fails at once.
  std::chrono::milliseconds wait{0};
  // Reconnect to the next daemon after a restart (see "Daemon restarts" above); false: a
  // lost daemon leaves the Client lost for good, every pending handle kDaemonLost.
  bool reconnect = true;
  // How long never-accepted continuations and calls made while no daemon is connected
  // wait for the next daemon before they fail with daemon lost.
  std::chrono::milliseconds reconnect_wait{5000};
};

// Per submission. A deadline (steady_clock, that is CLOCK_MONOTONIC) past which the
// continuation fails with Status::kDeadlineExceeded ("deadline exceeded"): at once if it
// is still queued or parked, at its next step boundary if it is running.
struct SubmitOptions {
  std::optional<std::chrono::steady_clock::time_point> deadline;
};

struct FunctionInfo {
  std::string name;
  std::uint32_t id = 0;
  bool needs_buffer = false;
  std::uint64_t max_arg = 0;
  std::string help;
};

// A completed continuation's outcome. `data` points into the segment (inline bytes or
// the environment buffer) and stays valid while the handle does.
struct Result {
  Status status = Status::kPending;
  ErrorDetail detail = ErrorDetail::kNone;
  std::uint64_t value = 0;
  std::span<const std::byte> data;
  std::string message;  // a failed function's own words (ErrorDetail::kFunctionFailed)

  bool ok() const noexcept { return status == Status::kOk; }
  std::string error() const;
};

// The outcome of a serialized (protobuf) continuation.
struct SerialResult {
  Status status = Status::kPending;
  std::string error;
  std::uint64_t value = 0;
  std::string data;
};

struct ClientStats {
  std::uint64_t submitted = 0;
  std::uint64_t completed = 0;
  std::uint64_t full_fail_fast = 0;  // submissions refused because the ring was full
  std::uint64_t full_waits = 0;      // submissions and allocations that waited for room
  std::uint64_t reconnects = 0;      // new daemons this client registered with after a loss
  std::uint64_t resubmitted = 0;     // never-accepted continuations handed to the next daemon
  std::uint64_t lost = 0;            // continuations completed with kDaemonLost by this client
};

namespace detail {
struct Session;  // one registration with one daemon: socket, segment, rings
}

class Client;

class Handle {
 public:
  Handle() = default;
  Handle(Handle&& o) noexcept : client_(o.client_), session_(o.session_), index_(o.index_) {
    o.client_ = nullptr;
  }
  Handle& operator=(Handle&& o) noexcept;
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() { reset(); }

  bool valid() const noexcept { return client_ != nullptr; }
  // Drains completions; true once this continuation has completed.
  bool poll();
  bool done() const noexcept;
  // Blocks until it completes (or the daemon is lost: kDaemonLost).
  Status wait();
  // As wait(), at most `timeout`; nullopt when it has not completed by then.
  std::optional<Status> wait_for(std::chrono::nanoseconds timeout);
  Result result() const;
  Frame* frame() const noexcept;
  // Runs `fn` on completion (on the draining thread); consumes the handle.
  void then(std::function<void(const Result&)> fn) &&;
  // Lets go without waiting; the frame is freed when its completion arrives.
  void reset() noexcept;
  // Asks the daemon to cancel this continuation: queued or parked, it completes at once
  // with Status::kCancelled (ErrorDetail::kCancelledByClient); running, after its
  // current step. It still completes exactly once: with kCancelled, or with what it
  // finished with when the cancel came too late. False when there was nothing to cancel
  // (done, or an invalid handle); waits for room in the submit ring as submit() does.
  bool cancel();

  struct Awaiter {
    Handle& h;
    bool await_ready() { return h.poll(); }
    bool await_suspend(std::coroutine_handle<> c);
    Result await_resume() const { return h.result(); }
  };
  Awaiter operator co_await() noexcept { return Awaiter{*this}; }

 private:
  friend class Client;
  Handle(Client* c, detail::Session* s, std::uint32_t index) noexcept
      : client_(c), session_(s), index_(index) {}
  // Follows the continuation into a new segment after a restart (see Client).
  void resolve() const noexcept;
  Client* client_ = nullptr;
  mutable detail::Session* session_ = nullptr;
  mutable std::uint32_t index_ = 0;
};

class Client {
 public:
  // Registers with insideoutd and maps the segment it hands over. Fails with
  // kUnavailable (naming the socket path) when no daemon listens (after waiting up to
  // ClientOptions::wait for one to start), kFailedPrecondition when the daemon refuses
  // (it says why: versions, limits).
  static absl::StatusOr<std::unique_ptr<Client>> connect(ClientOptions options = {});
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // The functions registered when this client connected (the Welcome).
  const std::vector<FunctionInfo>& functions() const noexcept;
  // A function's id: from the Welcome's list, or else asked of the daemon (a function
  // registered since, such as a plugin loaded live) and remembered. An id stays its
  // name's for the daemon's lifetime (a reload keeps it). NOT_FOUND names the closest
  // registered function when there is one ("did you mean 'zstd.compress'?").
  absl::StatusOr<std::uint32_t> function_id(std::string_view name) const;

  // Copies `env` into the frame (up to 16 bytes) or a buffer in the segment and submits.
  // Waits for a free frame and buffer as ClientOptions::on_full says.
  absl::StatusOr<Handle> submit(std::string_view function, std::span<const std::byte> env = {},
                                std::uint64_t arg = 0);
  absl::StatusOr<Handle> submit(std::uint32_t function_id, std::span<const std::byte> env = {},
                                std::uint64_t arg = 0);
  // The same, with per-submission options (a deadline).
  absl::StatusOr<Handle> submit(std::string_view function, std::span<const std::byte> env,
                                std::uint64_t arg, const SubmitOptions& options);
  absl::StatusOr<Handle> submit(std::uint32_t function_id, std::span<const std::byte> env,
                                std::uint64_t arg, const SubmitOptions& options);

  // Zero-copy. A frame to fill in place (nullptr when all are in use), then submit(f).
  Frame* allocate_frame() noexcept;
  // Up to out.size() frames at once (one atomic operation); returns how many.
  std::size_t allocate_frames(std::span<Frame*> out) noexcept;
  void release_frame(Frame* f) noexcept;  // one never submitted
  // A buffer in the segment; point a frame's env_off/env_len at it. The caller frees it
  // once the continuation completed. When none is free it waits as ClientOptions::on_full
  // says (up to full_timeout) and then returns an empty span;
  // allocate_buffer_or_error() says why instead (and which option raises the limit).
  std::span<std::byte> allocate_buffer(std::size_t bytes);
  absl::StatusOr<std::span<std::byte>> allocate_buffer_or_error(std::size_t bytes);
  void free_buffer(std::span<std::byte> buffer);
  std::uint32_t offset_of(const void* p) const noexcept;
  absl::StatusOr<Handle> submit(Frame* f, const SubmitOptions& options = {});
  // Pushes frames in as few ring reservations as room allows; one doorbell for all.
  // On error, the frames not submitted are left to the caller (out holds the rest).
  // `options` apply to every frame.
  absl::Status submit_batch(std::span<Frame* const> frames, std::vector<Handle>* out,
                            const SubmitOptions& options = {});

  // Rings doorbell `bell` (0..15, shm::kClientBells): bumps its counter in the segment
  // and wakes the pool, so that a running continuation waiting on it
  // (CoContext::doorbell()) resumes with the new count, without a new submission.
  absl::Status ring(std::uint32_t bell);

  // Drains the completion ring: marks handles done, runs callbacks, resumes coroutines.
  // Returns how many completions it took.
  std::size_t poll();
  // Polls, sleeping between completions, until pred() or the timeout; false on timeout.
  bool run_until(const std::function<bool()>& pred,
                 std::optional<std::chrono::nanoseconds> timeout = std::nullopt);

  // The serialized path: a protobuf Continuation over the registration socket.
  // `timeout` is also its deadline in the daemon: past it, it ends with
  // kDeadlineExceeded whether queued, parked or running (at its next step).
  absl::StatusOr<SerialResult> call(
      std::string_view function, std::string_view env = {}, std::uint64_t arg = 0,
      std::chrono::milliseconds timeout = std::chrono::milliseconds(10000));

  // True while no daemon is connected (lost and not, or not yet, reconnected).
  // Descriptors for continuations: hands `fd` to the daemon over the registration socket
  // (SCM_RIGHTS; the daemon gets its own copy, the caller keeps and closes its own) and
  // returns its id, the argument of the built-ins read_fd and write_fd and of a plugin's
  // CoContext::client_fd(). Sockets, pipes, FIFOs, regular files and eventfds only; the
  // daemon makes all but regular files O_NONBLOCK, a flag of the open file description
  // that the caller's copy shares. At most the daemon's --max-client-fds (64) at once;
  // past it, or for another kind of descriptor, kFailedPrecondition says why.
  absl::StatusOr<std::uint32_t> send_fd(int fd);
  // Closes descriptor `id` in the daemon: continuations waiting on it fail (EBADF).
  // kNotFound when there is no such id. All of them are closed when the client leaves.
  absl::Status close_fd(std::uint32_t id);

  bool daemon_lost() const noexcept;
  std::string lost_reason() const;
  // The connected daemon's generation: new at each start of insideoutd.
  std::uint64_t generation() const noexcept;
  std::uint32_t client_id() const noexcept;
  ClientStats stats() const noexcept;
  void* segment_base() const noexcept;
  // Tells the daemon that the submit ring has work, as submit() does after its push:
  // for a program that writes the ring itself (segment_base(), shm/ring.h). A syscall only
  // while a worker of the pool sleeps.
  void ring_bell() const noexcept;

  struct Impl;

 private:
  friend class Handle;
  explicit Client(std::unique_ptr<Impl> impl);
  absl::StatusOr<Handle> submit_in(detail::Session& s, std::uint32_t function_id,
                                   std::span<const std::byte> env, std::uint64_t arg,
                                   const SubmitOptions& options);
  absl::StatusOr<Handle> push_in(detail::Session& s, Frame* f, const SubmitOptions& options);
  absl::Status submit_batch_in(detail::Session& s, std::span<Frame* const> frames,
                               std::vector<Handle>* out, const SubmitOptions& options);
  std::unique_ptr<Impl> impl_;
};

}  // namespace insideout
