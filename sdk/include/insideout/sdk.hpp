// insideout's SDK: continuation code for the daemon's plugins and for the embedded
// executor (insideout::Runtime), the same source for both.
//
// A continuation is either
//   - a plain step function: `insideout::Step f(insideout::Task& t, insideout::Context& c)`,
//     registered as `insideout::step<f>`; it says what happens next by its return value,
//     and continues with another step by setting `t.fn = insideout::step<g>`;
//   - or a C++20 coroutine: `insideout::Continuation f(insideout::Context c)` (the
//     context by value), registered as `insideout::coroutine<f>`. Every co_await is a
//     step boundary: the continuation may resume on another worker or pool.
//
// A whole plugin:
//
//   #include <insideout/sdk.hpp>
//
//   insideout::Step add_one(insideout::Task&, insideout::Context& c) {
//     return c.complete(c.arg() + 1);
//   }
//
//   INSIDEOUT_PLUGIN("demo", "1.0", plugin) {
//     plugin.add("add_one", "returns ARG + 1", insideout::step<add_one>);
//   }
//
// Nothing here allocates per step; coroutine frames come from the engine's pool.
// Build plugins with -fvisibility=hidden (insideout_add_plugin() in CMake does), so that
// two plugins' copies of these inline functions never bind to each other.
// Exceptions thrown by continuation code fail that continuation with their message;
// they never cross into the engine.
#pragma once

#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <new>
#include <span>
#include <string_view>
#include <type_traits>

#include "insideout/sdk/abi.h"

namespace insideout {

namespace detail {
// An operation added after SDK 1.0 exists in the engine that runs this code.
#define INSIDEOUT_HAS_OP(ops, member) \
  ((ops)->size >= offsetof(io_ctx_ops, member) + sizeof((ops)->member))
}  // namespace detail

enum class Step : io_step {
  kContinue = IO_STEP_CONTINUE,
  kYield = IO_STEP_YIELD,
  kPark = IO_STEP_PARK,
  kWait = IO_STEP_WAIT,
  kComplete = IO_STEP_COMPLETE,
  kFail = IO_STEP_FAIL,
  kMoved = IO_STEP_MOVED,
};

enum class Error : std::uint32_t {
  kFailed = IO_ERR_FAILED,
  kInvalidArgument = IO_ERR_INVALID_ARGUMENT,
  kResultTooLarge = IO_ERR_RESULT_TOO_LARGE,
  kCancelled = IO_ERR_CANCELLED,
};

// A continuation as its steps see it: the next step and two words of its own. The
// engine's bookkeeping follows these fields in the same object; never copy a Task.
struct Task : io_task {
  Task() = delete;
  Task(const Task&) = delete;
  Task& operator=(const Task&) = delete;
};

inline Task& as_task(io_task* t) noexcept { return *static_cast<Task*>(t); }

// What a step may do besides returning its Step. Valid for one step only: the next step
// may run on another worker with another context.
class Context {
 public:
  Context(io_task* t, io_ctx* c) noexcept : t_(t), c_(c) {}

  // The submission's scalar argument: w0 as the entry step finds it.
  std::uint64_t arg() const noexcept { return t_->w0; }
  // The environment (client memory may change underfoot: read it as data).
  std::span<const std::byte> env() const noexcept {
    std::size_t n = 0;
    const std::uint8_t* p = c_->ops->env(c_, t_, &n);
    return {reinterpret_cast<const std::byte*>(p), n};
  }
  // IO_FN_OUTPUT functions: the environment, writable (empty for the others).
  std::span<std::byte> output() const noexcept {
    std::size_t n = 0;
    std::uint8_t* p = c_->ops->output(c_, t_, &n);
    return {reinterpret_cast<std::byte*>(p), n};
  }

  // Results. complete() and fail() return the Step to return.
  void set_value(std::uint64_t v) noexcept { c_->value = v; }
  void set_output_len(std::size_t n) noexcept { c_->ops->set_output_len(c_, n); }
  Step complete(std::uint64_t v = 0) noexcept {
    c_->value = v;
    return Step::kComplete;
  }
  Step fail(std::string_view msg, Error e = Error::kFailed) noexcept {
    return static_cast<Step>(
        c_->ops->fail(c_, static_cast<std::uint32_t>(e), msg.data(), msg.size()));
  }

  // Parking: return the Step these return.
  Step park_for(std::chrono::nanoseconds d) noexcept { return park_until(now() + d); }
  Step park_until(std::chrono::steady_clock::time_point when) noexcept {
    c_->ops->park_until(c_, t_, when.time_since_epoch().count());
    return Step::kPark;
  }
  // Continues on another pool (by id, see pool_id()); kFail when there is none.
  Step move_to(std::uint32_t pool) noexcept {
    if (c_->ops->move_to(c_, t_, pool) != 0) return fail("no such pool", Error::kInvalidArgument);
    return Step::kMoved;
  }
  std::int64_t pool_id(std::string_view name) const noexcept {
    return c_->ops->pool_id(c_, name.data(), name.size());
  }
  std::uint32_t pool() const noexcept { return c_->ops->current_pool(c_); }
  std::uint32_t worker() const noexcept { return c_->ops->worker_index(c_); }
  bool cancelled() const noexcept { return c_->ops->cancelled(c_, t_) != 0; }
  std::chrono::steady_clock::time_point now() const noexcept {
    return std::chrono::steady_clock::time_point(std::chrono::nanoseconds(c_->ops->now_ns(c_)));
  }

  // Children for counting parents (the fanout built-in's pattern): see abi.h.
  void spawn(io_step_fn fn, std::uint64_t w0, std::uint64_t w1, std::uint32_t aux = 0xFFFFFFFFu,
             bool leaf = false) noexcept {
    c_->ops->spawn(c_, fn, w0, w1, aux, leaf ? IO_SHARE_WHEN_HUNGRY : IO_SHARE_ALWAYS);
  }
  void child_done(io_task* parent) noexcept { c_->ops->child_done(c_, parent); }
  void resume(io_task* t) noexcept { c_->ops->resume(c_, t); }

  io_task* raw_task() const noexcept { return t_; }
  io_ctx* raw() const noexcept { return c_; }

 private:
  io_task* t_;
  io_ctx* c_;
};

namespace detail {

inline io_step fail_with(io_ctx* c, std::string_view msg) noexcept {
  return c->ops->fail(c, IO_ERR_FAILED, msg.data(), msg.size());
}

inline io_step fail_current_exception(io_ctx* c) noexcept {
  try {
    throw;
  } catch (const std::exception& e) {
    return fail_with(c, e.what());
  } catch (...) {
    return fail_with(c, "a step threw an exception that is not a std::exception");
  }
}

}  // namespace detail

// A plain step function as the engine calls it.
template <auto F>
io_step step(io_task* t, io_ctx* c) noexcept {
  static_assert(std::is_invocable_r_v<Step, decltype(F), Task&, Context&>,
                "a step function is Step f(insideout::Task&, insideout::Context&)");
  try {
    Context ctx(t, c);
    return static_cast<io_step>(F(as_task(t), ctx));
  } catch (...) {
    return detail::fail_current_exception(c);
  }
}

// ---- coroutines ----------------------------------------------------------------------

namespace detail {

struct Promise;
using Handle = std::coroutine_handle<Promise>;

}  // namespace detail

class CoContext;

// The result of a child continuation, as its parent sees it.
struct Outcome {
  bool ok = false;
  std::uint64_t value = 0;
};

namespace detail {
struct Promise;
}

// What a coroutine continuation returns. Created suspended; the engine drives it.
class [[nodiscard]] Continuation {
 public:
  using promise_type = detail::Promise;
  explicit Continuation(detail::Handle h) noexcept : h_(h) {}
  Continuation(Continuation&& o) noexcept : h_(o.h_) { o.h_ = {}; }
  Continuation(const Continuation&) = delete;
  Continuation& operator=(const Continuation&) = delete;
  ~Continuation();
  detail::Handle release() noexcept {
    auto h = h_;
    h_ = {};
    return h;
  }

 private:
  detail::Handle h_;
};

// The failure a coroutine returns: `co_return c.fail("why");`.
struct Failure {
  std::string_view message;
  Error error = Error::kFailed;
};

// A coroutine's view of its continuation; take it by value. Valid across suspensions
// (it refers to the coroutine's own state, which the engine updates at every step).
class CoContext {
 public:
  // Made by insideout::coroutine<F>; bound to its coroutine's state by the promise.
  explicit CoContext(const io_ctx_ops* ops) noexcept : ops_(ops) {}

  std::uint64_t arg() const noexcept;
  std::span<const std::byte> env() const noexcept;
  std::span<std::byte> output() const noexcept;
  void set_output_len(std::size_t n) noexcept;
  Failure fail(std::string_view msg, Error e = Error::kFailed) const noexcept { return {msg, e}; }
  std::uint32_t pool() const noexcept;
  std::uint32_t worker() const noexcept;
  std::int64_t pool_id(std::string_view name) const noexcept;
  bool cancelled() const noexcept;
  std::chrono::steady_clock::time_point now() const noexcept;

  // Awaitables.
  struct Suspend;
  // Requeues: another worker may take the rest.
  Suspend yield() const noexcept;
  Suspend sleep_for(std::chrono::nanoseconds d) const noexcept;
  Suspend sleep_until(std::chrono::steady_clock::time_point when) const noexcept;
  // Continues on pool `pool` (an id from pool_id()); true when it moved.
  struct Move;
  Move move_to(std::uint32_t pool) const noexcept;
  // Runs coroutine F once per argument in `args` (at most 65,535), each as a
  // continuation of its own that any worker may take, and resumes when all have
  // finished, their outcomes in `out` (same order; at most out.size() children).
  struct Join;
  template <auto F>
  Join all(std::span<const std::uint64_t> args, std::span<Outcome> out) const noexcept;
  // The same, but resumes with the index of the first child to succeed (or -1 when none
  // did); the others see cancelled() and have finished when it resumes.
  template <auto F>
  Join any(std::span<const std::uint64_t> args, std::span<Outcome> out) const noexcept;
  // Starts coroutine F(arg) as a continuation of its own that nobody waits for (a
  // server's connection); it ends with its client's work, like every child.
  template <auto F>
  void spawn(std::uint64_t arg) const noexcept;

  // ---- the event queue: each resumes with a result, >= 0 or a negative errno ----
  // -ETIMEDOUT: `timeout` (0: none) passed; -ECANCELED: cancelled (stop: cancelled() is
  // true); -EBADF: the descriptor was closed through close(). Descriptors must be
  // non-blocking (SOCK_NONBLOCK, O_NONBLOCK).
  struct Wait;
  // The descriptor is ready: resumes with the IO_EV_* mask.
  Wait readable(int fd, std::chrono::nanoseconds timeout = {}) const noexcept;
  Wait writable(int fd, std::chrono::nanoseconds timeout = {}) const noexcept;
  // Signal `signo` came (the host routes SIGUSR1, SIGUSR2, SIGRTMIN..+7): resumes with it.
  Wait signal(int signo, std::chrono::nanoseconds timeout = {}) const noexcept;
  // The client rang doorbell `bell` (its counter moved past `seen`): resumes with the
  // counter. Root continuations of a daemon's client only.
  Wait doorbell(std::uint32_t bell, std::uint64_t seen,
                std::chrono::nanoseconds timeout = {}) const noexcept;
  // I/O on a non-blocking descriptor: tried at once, and after readiness while the kernel
  // says EAGAIN. Resumes with what the call returns (bytes, a descriptor) or -errno.
  // A read of a stream socket that returned less than asked for emptied it: the next
  // read of it waits for readiness first (a try would only see EAGAIN). Descriptors you
  // wait on are closed with close(), not close(2), whose number may otherwise come back.
  struct Io;
  Io read(int fd, std::span<std::byte> buf, std::chrono::nanoseconds timeout = {}) const noexcept;
  Io write(int fd, std::span<const std::byte> buf,
           std::chrono::nanoseconds timeout = {}) const noexcept;
  Io recv(int fd, std::span<std::byte> buf, int flags = 0,
          std::chrono::nanoseconds timeout = {}) const noexcept;
  Io send(int fd, std::span<const std::byte> buf, int flags = MSG_NOSIGNAL,
          std::chrono::nanoseconds timeout = {}) const noexcept;
  // A connection on a listening socket: the new descriptor (non-blocking, close-on-exec).
  Io accept(int fd, std::chrono::nanoseconds timeout = {}) const noexcept;
  // Connects a non-blocking socket: 0 or -errno.
  Io connect(int fd, const sockaddr* addr, socklen_t len,
             std::chrono::nanoseconds timeout = {}) const noexcept;
  // Closes a descriptor, failing whatever waits on it with -EBADF first.
  int close(int fd) const noexcept;
  // A descriptor the client handed over (Client::send_fd()), borrowed; -1 if none. Look
  // it up again after each co_await: the client may have closed it meanwhile.
  int client_fd(std::uint32_t id) const noexcept;
  // The continuation's deadline (none: time_point::max()).
  std::chrono::steady_clock::time_point deadline() const noexcept;

 private:
  friend struct detail::Promise;
  detail::Promise* p_ = nullptr;
  const io_ctx_ops* ops_ = nullptr;
};

namespace detail {

struct Promise {
  // The current step's engine objects (updated by co_step before each resume).
  io_task* task = nullptr;
  io_ctx* ctx = nullptr;
  std::uint64_t arg = 0;
  // What the suspension asks for. The awaiters only record it: the hand-off (to the
  // timer queue, another pool, children) is co_step()'s last act, once nothing of this
  // frame is touched any more, since the task may run elsewhere the moment it is done.
  enum class Op : std::uint8_t { kYield, kPark, kMove, kJoin, kWaitFd, kSignal, kDoorbell, kIo };
  Op op = Op::kYield;
  std::int64_t until_ns = 0;  // kPark; the waits' timeout (0: none)
  // The event queue's waits (kWaitFd, kSignal, kDoorbell) and I/O (kIo).
  enum class IoKind : std::uint8_t { kRead, kWrite, kRecv, kSend, kAccept, kConnect };
  IoKind io = IoKind::kRead;
  bool io_pending = false;   // kIo: waiting for readiness, to try again
  int fd = -1;               // kWaitFd, kIo; kSignal: the signal
  std::uint32_t events = 0;  // kWaitFd
  int io_flags = 0;          // kIo: recv/send flags
  void* buf = nullptr;       // kIo: the buffer, or the address (kConnect)
  std::size_t len = 0;
  std::uint64_t seen = 0;  // kDoorbell
  std::int64_t wait_result = 0;
  // kIo: the last read of this stream socket returned less than it asked for, so it
  // emptied the socket; the next read waits for readiness before it tries (as Asio and
  // tokio do: every byte that arrives after it is an edge the engine records). -1: none.
  int drained_fd = -1;
  int typed_fd = -1;  // the descriptor whose type typed_stream caches (-1: none)
  bool typed_stream = false;
  std::uint32_t pool = 0;      // kMove
  bool move_failed = false;    // kMove: there was no such pool; resumed at once
  io_step_fn child = nullptr;  // kJoin: the children's entry, their arguments
  const std::uint64_t* child_args = nullptr;
  std::uint32_t child_count = 0;
  bool failed = false;
  // Children (all()/any()).
  Promise* parent = nullptr;  // this is a child: where it reports, in slot `index`
  std::uint32_t index = 0;
  bool first_wins = false;                // any(): cancel siblings once one succeeded
  std::atomic<std::uint32_t> pending{0};  // children still running, +1 while deciding
  std::atomic<bool> stop_children{false};
  std::atomic<std::int32_t> first{-1};
  ::insideout::Outcome* child_slots = nullptr;

  explicit Promise(CoContext& c) noexcept { c.p_ = this; }

  // Frames come from the engine's frame pool (per-worker caches): nothing of the pool
  // lives in the plugin, so unloading it leaves no thread-local state behind. The
  // engine's operations are remembered in front of the frame for the delete.
  static void* operator new(std::size_t n, CoContext& c) {
    const io_ctx_ops* ops = c.ops_;
    void* raw = ops->frame_alloc(n + kFrameHeader);
    if (raw == nullptr) throw std::bad_alloc();
    *static_cast<const io_ctx_ops**>(raw) = ops;
    return static_cast<std::byte*>(raw) + kFrameHeader;
  }
  static void operator delete(void* p, std::size_t n) noexcept {
    void* raw = static_cast<std::byte*>(p) - kFrameHeader;
    (*static_cast<const io_ctx_ops**>(raw))->frame_free(raw, n + kFrameHeader);
  }
  static constexpr std::size_t kFrameHeader = 16;

  Continuation get_return_object() noexcept { return Continuation(Handle::from_promise(*this)); }
  std::suspend_always initial_suspend() noexcept { return {}; }
  std::suspend_always final_suspend() noexcept { return {}; }
  void return_value(std::uint64_t v) noexcept { ctx->value = v; }
  void return_value(Failure f) noexcept {
    ctx->ops->fail(ctx, static_cast<std::uint32_t>(f.error), f.message.data(), f.message.size());
    failed = true;
  }
  void unhandled_exception() noexcept {
    (void)fail_current_exception(ctx);
    failed = true;
  }
};

}  // namespace detail

inline Continuation::~Continuation() {
  if (h_) h_.destroy();
}

inline std::uint64_t CoContext::arg() const noexcept { return p_->arg; }
inline std::span<const std::byte> CoContext::env() const noexcept {
  return Context(p_->task, p_->ctx).env();
}
inline std::span<std::byte> CoContext::output() const noexcept {
  return Context(p_->task, p_->ctx).output();
}
inline void CoContext::set_output_len(std::size_t n) noexcept {
  p_->ctx->ops->set_output_len(p_->ctx, n);
}
inline std::uint32_t CoContext::pool() const noexcept {
  return p_->ctx->ops->current_pool(p_->ctx);
}
inline std::uint32_t CoContext::worker() const noexcept {
  return p_->ctx->ops->worker_index(p_->ctx);
}
inline std::int64_t CoContext::pool_id(std::string_view name) const noexcept {
  return p_->ctx->ops->pool_id(p_->ctx, name.data(), name.size());
}
inline bool CoContext::cancelled() const noexcept {
  if (p_->parent != nullptr && p_->parent->stop_children.load(std::memory_order_relaxed))
    return true;
  return p_->ctx->ops->cancelled(p_->ctx, p_->task) != 0;
}
inline std::chrono::steady_clock::time_point CoContext::now() const noexcept {
  return std::chrono::steady_clock::time_point(
      std::chrono::nanoseconds(p_->ctx->ops->now_ns(p_->ctx)));
}

struct CoContext::Suspend {
  detail::Promise* p;
  std::int64_t until_ns;  // < 0: a plain yield
  bool await_ready() const noexcept { return false; }
  void await_suspend(detail::Handle) const noexcept {
    p->op = until_ns < 0 ? detail::Promise::Op::kYield : detail::Promise::Op::kPark;
    p->until_ns = until_ns;
  }
  void await_resume() const noexcept {}
};

inline CoContext::Suspend CoContext::yield() const noexcept { return {p_, -1}; }
inline CoContext::Suspend CoContext::sleep_until(
    std::chrono::steady_clock::time_point when) const noexcept {
  const auto ns = when.time_since_epoch().count();
  return {p_, ns < 0 ? 0 : ns};
}
inline CoContext::Suspend CoContext::sleep_for(std::chrono::nanoseconds d) const noexcept {
  return sleep_until(now() + d);
}

struct CoContext::Move {
  detail::Promise* p;
  std::uint32_t pool;
  bool await_ready() const noexcept { return false; }
  void await_suspend(detail::Handle) const noexcept {
    p->op = detail::Promise::Op::kMove;
    p->pool = pool;
    p->move_failed = false;
  }
  bool await_resume() const noexcept { return !p->move_failed; }
};

inline CoContext::Move CoContext::move_to(std::uint32_t pool) const noexcept { return {p_, pool}; }

namespace detail {
inline std::int64_t timeout_at(io_ctx* c, std::chrono::nanoseconds d) noexcept {
  return d.count() <= 0 ? 0 : c->ops->now_ns(c) + d.count();
}
inline bool is_read(const Promise& p) noexcept {
  return (p.io == Promise::IoKind::kRead || p.io == Promise::IoKind::kRecv) &&
         (p.io_flags & (MSG_PEEK | MSG_OOB)) == 0;
}
// After a read that returned `r`: a short one of a stream socket emptied it. A datagram
// socket's short read says nothing of the next datagram, a file's nothing at all, so the
// type is asked once per descriptor.
inline void note_read(Promise& p, std::int64_t r) noexcept {
  p.drained_fd = -1;
  if (r <= 0 || static_cast<std::size_t>(r) >= p.len || !is_read(p)) return;
  if (p.typed_fd != p.fd) {
    int type = 0;
    socklen_t n = sizeof type;
    p.typed_stream = ::getsockopt(p.fd, SOL_SOCKET, SO_TYPE, &type, &n) == 0 && type == SOCK_STREAM;
    p.typed_fd = p.fd;
  }
  if (p.typed_stream) p.drained_fd = p.fd;
}
// One try of an I/O call: its result, or -errno (-EAGAIN: wait and try again).
inline std::int64_t try_io(Promise& p) noexcept {
  ssize_t r = -1;
  switch (p.io) {
    case Promise::IoKind::kRead:
      r = ::read(p.fd, p.buf, p.len);
      break;
    case Promise::IoKind::kWrite:
      r = ::write(p.fd, p.buf, p.len);
      break;
    case Promise::IoKind::kRecv:
      r = ::recv(p.fd, p.buf, p.len, p.io_flags);
      break;
    case Promise::IoKind::kSend:
      r = ::send(p.fd, p.buf, p.len, p.io_flags);
      break;
    case Promise::IoKind::kAccept:
      r = ::accept4(p.fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      break;
    case Promise::IoKind::kConnect: {
      if (!p.io_pending) {  // the first try
        r = ::connect(p.fd, static_cast<const sockaddr*>(p.buf), static_cast<socklen_t>(p.len));
        if (r < 0 && errno == EINPROGRESS) return -EAGAIN;
        break;
      }
      int err = 0;  // writable: the connect finished, well or not
      socklen_t n = sizeof err;
      if (::getsockopt(p.fd, SOL_SOCKET, SO_ERROR, &err, &n) != 0) return -errno;
      return -err;
    }
  }
  const std::int64_t res = r >= 0 ? r : errno == EWOULDBLOCK ? -EAGAIN : -errno;
  if (p.io == Promise::IoKind::kRead || p.io == Promise::IoKind::kRecv) note_read(p, res);
  return res;
}
inline std::uint32_t io_events(const Promise& p) noexcept {
  switch (p.io) {
    case Promise::IoKind::kRead:
    case Promise::IoKind::kRecv:
    case Promise::IoKind::kAccept:
      return IO_EV_READ;
    default:
      return IO_EV_WRITE;
  }
}
}  // namespace detail

struct CoContext::Wait {
  detail::Promise* p;
  detail::Promise::Op op;
  int fd;
  std::uint32_t events;
  std::uint64_t seen;
  std::chrono::nanoseconds timeout;
  bool await_ready() const noexcept { return false; }
  void await_suspend(detail::Handle) const noexcept {
    if (op == detail::Promise::Op::kWaitFd && fd == p->drained_fd) p->drained_fd = -1;
    p->op = op;
    p->fd = fd;
    p->events = events;
    p->seen = seen;
    p->until_ns = detail::timeout_at(p->ctx, timeout);
    p->wait_result = 0;
  }
  std::int64_t await_resume() const noexcept { return p->wait_result; }
};

inline CoContext::Wait CoContext::readable(int fd, std::chrono::nanoseconds t) const noexcept {
  return {p_, detail::Promise::Op::kWaitFd, fd, IO_EV_READ, 0, t};
}
inline CoContext::Wait CoContext::writable(int fd, std::chrono::nanoseconds t) const noexcept {
  return {p_, detail::Promise::Op::kWaitFd, fd, IO_EV_WRITE, 0, t};
}
inline CoContext::Wait CoContext::signal(int signo, std::chrono::nanoseconds t) const noexcept {
  return {p_, detail::Promise::Op::kSignal, signo, 0, 0, t};
}
inline CoContext::Wait CoContext::doorbell(std::uint32_t bell, std::uint64_t seen,
                                           std::chrono::nanoseconds t) const noexcept {
  return {p_, detail::Promise::Op::kDoorbell, static_cast<int>(bell), 0, seen, t};
}

// Tried in await_ready(): a call the kernel can answer at once costs no suspension.
struct CoContext::Io {
  detail::Promise* p;
  detail::Promise::IoKind kind;
  int fd;
  void* buf;
  std::size_t len;
  int flags;
  std::chrono::nanoseconds timeout;
  bool await_ready() const noexcept {
    p->io = kind;
    p->fd = fd;
    p->buf = buf;
    p->len = len;
    p->io_flags = flags;
    p->io_pending = false;
    // A stream socket the last read emptied: a try now would only see EAGAIN.
    if (p->drained_fd == fd && detail::is_read(*p) && INSIDEOUT_HAS_OP(p->ctx->ops, park_fd)) {
      p->wait_result = -EAGAIN;
      return false;
    }
    p->wait_result = detail::try_io(*p);
    return p->wait_result != -EAGAIN;
  }
  void await_suspend(detail::Handle) const noexcept {
    p->op = detail::Promise::Op::kIo;
    p->io_pending = true;
    p->until_ns = detail::timeout_at(p->ctx, timeout);
  }
  std::int64_t await_resume() const noexcept { return p->wait_result; }
};

inline CoContext::Io CoContext::read(int fd, std::span<std::byte> b,
                                     std::chrono::nanoseconds t) const noexcept {
  return {p_, detail::Promise::IoKind::kRead, fd, b.data(), b.size(), 0, t};
}
inline CoContext::Io CoContext::write(int fd, std::span<const std::byte> b,
                                      std::chrono::nanoseconds t) const noexcept {
  return {p_, detail::Promise::IoKind::kWrite, fd, const_cast<std::byte*>(b.data()), b.size(), 0,
          t};
}
inline CoContext::Io CoContext::recv(int fd, std::span<std::byte> b, int flags,
                                     std::chrono::nanoseconds t) const noexcept {
  return {p_, detail::Promise::IoKind::kRecv, fd, b.data(), b.size(), flags, t};
}
inline CoContext::Io CoContext::send(int fd, std::span<const std::byte> b, int flags,
                                     std::chrono::nanoseconds t) const noexcept {
  return {p_, detail::Promise::IoKind::kSend, fd, const_cast<std::byte*>(b.data()), b.size(), flags,
          t};
}
inline CoContext::Io CoContext::accept(int fd, std::chrono::nanoseconds t) const noexcept {
  return {p_, detail::Promise::IoKind::kAccept, fd, nullptr, 0, 0, t};
}
inline CoContext::Io CoContext::connect(int fd, const sockaddr* addr, socklen_t len,
                                        std::chrono::nanoseconds t) const noexcept {
  return {p_, detail::Promise::IoKind::kConnect, fd, const_cast<sockaddr*>(addr), len, 0, t};
}
inline int CoContext::close(int fd) const noexcept {
  io_ctx* c = p_->ctx;
  if (p_->drained_fd == fd) p_->drained_fd = -1;
  if (p_->typed_fd == fd) p_->typed_fd = -1;
  if (!INSIDEOUT_HAS_OP(c->ops, close_fd)) return ::close(fd) == 0 ? 0 : -errno;
  return c->ops->close_fd(c, fd);
}
inline int CoContext::client_fd(std::uint32_t id) const noexcept {
  io_ctx* c = p_->ctx;
  if (!INSIDEOUT_HAS_OP(c->ops, client_fd)) return -1;
  return c->ops->client_fd(c, p_->task, id);
}
inline std::chrono::steady_clock::time_point CoContext::deadline() const noexcept {
  io_ctx* c = p_->ctx;
  const std::int64_t ns =
      INSIDEOUT_HAS_OP(c->ops, deadline_ns) ? c->ops->deadline_ns(c, p_->task) : 0;
  if (ns == 0) return std::chrono::steady_clock::time_point::max();
  return std::chrono::steady_clock::time_point(std::chrono::nanoseconds(ns));
}

// Memory ordering of joins:
//   J1 (a child's pending.fetch_sub, acq_rel, after it wrote its Outcome) pairs with J2
//      (the parent's pending.fetch_sub, acq_rel, when it starts waiting): whoever brings
//      the count to zero has seen every child's Outcome, and only that one resumes the
//      parent (the parent itself, at once, or the last child through ops->resume()).
struct CoContext::Join {
  detail::Promise* p;
  io_step_fn child;
  std::span<const std::uint64_t> args;
  std::span<Outcome> out;
  bool first_wins;
  bool await_ready() const noexcept { return args.empty(); }
  void await_suspend(detail::Handle) const noexcept {
    std::size_t n = args.size() < out.size() ? args.size() : out.size();
    if (n > 0xFFFF) n = 0xFFFF;
    p->first_wins = first_wins;
    p->stop_children.store(false, std::memory_order_relaxed);
    p->first.store(-1, std::memory_order_relaxed);
    p->child_slots = out.data();
    for (std::size_t i = 0; i < n; ++i) out[i] = Outcome{};
    p->op = detail::Promise::Op::kJoin;
    p->child = child;
    p->child_args = args.data();
    p->child_count = static_cast<std::uint32_t>(n);
  }
  std::int32_t await_resume() const noexcept {
    return first_wins ? p->first.load(std::memory_order_relaxed) : 0;
  }
};

namespace detail {

// A child coroutine has finished (ok or not): report to the parent.
inline void report_to_parent(Promise* parent, io_ctx* c, bool ok, std::uint64_t value,
                             std::uint32_t index) noexcept {
  parent->child_slots[index] = ::insideout::Outcome{ok, value};
  if (ok && parent->first_wins) {
    std::int32_t none = -1;
    if (parent->first.compare_exchange_strong(none, static_cast<std::int32_t>(index),
                                              std::memory_order_relaxed))
      parent->stop_children.store(true, std::memory_order_relaxed);
  }
  // J1: pairs with J2.
  if (parent->pending.fetch_sub(1, std::memory_order_acq_rel) == 1) c->ops->resume(c, parent->task);
}

// Every step of a coroutine continuation: resume it, then say what its suspension means.
inline io_step co_step(io_task* t, io_ctx* c) noexcept {
  auto h = Handle::from_address(reinterpret_cast<void*>(t->w0));
  Promise& p = h.promise();
  p.task = t;
  p.ctx = c;
  if (c->cutoff != 0) {  // the engine cuts it off: release the frame
    h.destroy();
    return IO_STEP_FAIL;
  }
  for (;;) {
    if (p.op == Promise::Op::kIo && p.io_pending) {  // back from a readiness wait: try again
      if (p.wait_result >= 0) p.wait_result = try_io(p);
      if (p.wait_result == -EAGAIN) {
        if (p.until_ns != 0 && c->ops->now_ns(c) >= p.until_ns) {
          p.wait_result = -ETIMEDOUT;
        } else if (c->ops->park_fd(c, t, p.fd, io_events(p) | IO_EV_AFTER_EAGAIN, p.until_ns,
                                   &p.wait_result) == 0) {
          return IO_STEP_PARK;  // the last act: the task may run elsewhere from here
        }
      }
      p.io_pending = false;
    }
    p.op = Promise::Op::kYield;
    h.resume();
    if (h.done()) {
      const bool ok = !p.failed;
      Promise* parent = p.parent;
      const std::uint32_t index = p.index;
      h.destroy();
      // A child reports to its parent (the engine completes children silently).
      if (parent != nullptr) report_to_parent(parent, c, ok, c->value, index);
      return ok ? IO_STEP_COMPLETE : IO_STEP_FAIL;
    }
    // Each case hands the task over as its last act: from then on another worker may
    // resume this coroutine, so nothing of its frame is touched after.
    switch (p.op) {
      case Promise::Op::kYield:
        return IO_STEP_YIELD;
      case Promise::Op::kPark:
        c->ops->park_until(c, t, p.until_ns);
        return IO_STEP_PARK;
      case Promise::Op::kWaitFd:
      case Promise::Op::kIo:
        if (!INSIDEOUT_HAS_OP(c->ops, park_fd)) {
          p.wait_result = -ENOSYS;
        } else if (c->ops->park_fd(
                       c, t, p.fd,
                       p.op == Promise::Op::kIo ? io_events(p) | IO_EV_AFTER_EAGAIN : p.events,
                       p.until_ns, &p.wait_result) == 0) {
          return IO_STEP_PARK;
        }
        continue;  // not parked: resume with the error (kIo: io_pending retries nothing)
      case Promise::Op::kSignal:
        if (!INSIDEOUT_HAS_OP(c->ops, park_signal)) {
          p.wait_result = -ENOSYS;
        } else if (c->ops->park_signal(c, t, p.fd, p.until_ns, &p.wait_result) == 0) {
          return IO_STEP_PARK;
        }
        continue;
      case Promise::Op::kDoorbell:
        if (!INSIDEOUT_HAS_OP(c->ops, park_doorbell)) {
          p.wait_result = -ENOSYS;
        } else if (c->ops->park_doorbell(c, t, static_cast<std::uint32_t>(p.fd), p.seen, p.until_ns,
                                         &p.wait_result) == 0) {
          return IO_STEP_PARK;
        }
        continue;
      case Promise::Op::kMove:
        if (c->ops->move_to(c, t, p.pool) == 0) return IO_STEP_MOVED;
        p.move_failed = true;  // still ours: resume it at once
        continue;
      case Promise::Op::kJoin: {
        const std::uint32_t n = p.child_count;
        // Relaxed: the children subtract only after they are spawned (the queue's
        // release publishes the count with them).
        p.pending.store(n + 1, std::memory_order_relaxed);
        for (std::uint32_t i = 0; i < n; ++i) {
          // The child's entry step finds its parent and index in w1 (child_entry<F>).
          c->ops->spawn(c, p.child, p.child_args[i],
                        reinterpret_cast<std::uint64_t>(&p) | (std::uint64_t{i} << 48), 0xFFFFFFFFu,
                        IO_SHARE_ALWAYS);
        }
        // J2: pairs with J1. Zero: every child is done already; resume at once.
        if (p.pending.fetch_sub(1, std::memory_order_acq_rel) == 1) continue;
        return IO_STEP_WAIT;
      }
    }
    return IO_STEP_YIELD;
  }
}

template <auto F>
io_step start(io_task* t, io_ctx* c, Promise* parent, std::uint32_t index) noexcept {
  static_assert(std::is_invocable_r_v<Continuation, decltype(F), CoContext>,
                "a coroutine continuation is Continuation f(insideout::CoContext)");
  Handle h;
  try {
    h = F(CoContext(c->ops)).release();
  } catch (...) {
    if (parent != nullptr) report_to_parent(parent, c, false, 0, index);
    return fail_current_exception(c);  // no frame could be made
  }
  Promise& p = h.promise();
  p.arg = t->w0;
  p.parent = parent;
  p.index = index;
  t->w0 = reinterpret_cast<std::uint64_t>(h.address());
  t->fn = &co_step;
  c->ops->owns_state(c, t);
  return IO_STEP_CONTINUE;
}

template <auto F>
io_step child_entry(io_task* t, io_ctx* c) noexcept {
  constexpr std::uint64_t kPointer = (std::uint64_t{1} << 48) - 1;
  return start<F>(t, c, reinterpret_cast<Promise*>(t->w1 & kPointer),
                  static_cast<std::uint32_t>(t->w1 >> 48));
}

}  // namespace detail

// A coroutine continuation as the engine calls it: its entry step makes the coroutine
// (its frame from the pool) and every later step resumes it.
template <auto F>
io_step coroutine(io_task* t, io_ctx* c) noexcept {
  return detail::start<F>(t, c, nullptr, 0);
}

template <auto F>
void CoContext::spawn(std::uint64_t arg) const noexcept {
  // No parent to report to (w1 = 0): child_entry<F> sees none.
  p_->ctx->ops->spawn(p_->ctx, &detail::child_entry<F>, arg, 0, 0xFFFFFFFFu, IO_SHARE_ALWAYS);
}

template <auto F>
CoContext::Join CoContext::all(std::span<const std::uint64_t> args,
                               std::span<Outcome> out) const noexcept {
  return {p_, &detail::child_entry<F>, args, out, false};
}
template <auto F>
CoContext::Join CoContext::any(std::span<const std::uint64_t> args,
                               std::span<Outcome> out) const noexcept {
  return {p_, &detail::child_entry<F>, args, out, true};
}

// ---- plugins -------------------------------------------------------------------------

// What INSIDEOUT_PLUGIN's body registers functions with.
class Plugin {
 public:
  explicit Plugin(const io_registrar* r) noexcept : r_(r) {}
  // Registers `name` (prefixed with the plugin's name by the daemon). Returns false when
  // the daemon refused it; init then fails and nothing of the plugin is loaded.
  bool add(const char* name, const char* help, io_step_fn entry, std::uint32_t flags = 0,
           std::uint64_t max_arg = 0) noexcept {
    io_function_def d{};
    d.size = sizeof d;
    d.flags = flags;
    d.name = name;
    d.help = help;
    d.entry = entry;
    d.max_arg = max_arg;
    if (r_->add(r_->host, &d) != 0) ok_ = false;
    return ok_;
  }
  void error(const char* msg) noexcept {
    r_->error(r_->host, msg);
    ok_ = false;
  }
  bool ok() const noexcept { return ok_; }

 private:
  const io_registrar* r_;
  bool ok_ = true;
};

}  // namespace insideout

// Defines a plugin named `name` (its functions become "name.function"): the body
// registers them through `var` (an insideout::Plugin&).
#define INSIDEOUT_PLUGIN(name, version, var)                                                   \
  static void insideout_plugin_register_(::insideout::Plugin& var);                            \
  static int insideout_plugin_init_(const io_registrar* r) {                                   \
    ::insideout::Plugin p(r);                                                                  \
    try {                                                                                      \
      insideout_plugin_register_(p);                                                           \
    } catch (const std::exception& e) {                                                        \
      p.error(e.what());                                                                       \
    } catch (...) {                                                                            \
      p.error("the plugin's init threw");                                                      \
    }                                                                                          \
    return p.ok() ? 0 : 1;                                                                     \
  }                                                                                            \
  extern "C" __attribute__((visibility("default"))) const io_plugin_info* insideout_plugin_v1( \
      void) {                                                                                  \
    static const io_plugin_info info = {IO_SDK_ABI_VERSION,                                    \
                                        sizeof(io_plugin_info),                                \
                                        IO_SDK_VERSION,                                        \
                                        0,                                                     \
                                        name,                                                  \
                                        version,                                               \
                                        insideout_plugin_init_,                                \
                                        nullptr};                                              \
    return &info;                                                                              \
  }                                                                                            \
  static void insideout_plugin_register_(::insideout::Plugin& var)
