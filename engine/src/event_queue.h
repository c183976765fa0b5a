// The event queue of one pool: continuations parked on descriptors, timers (sleeps, their
// own timeouts and deadlines), signals and client doorbells, resumed on whichever worker
// is free. No thread of its own: the readiness of the whole queue is one descriptor
// (notify_fd()) in every worker's epoll set, level-triggered and EPOLLEXCLUSIVE, so a
// ready event wakes one sleeping worker, which harvests it (harvest()); busy workers
// harvest when their local work runs dry and every 64 looks, and only while something
// waits (waiting() is one relaxed load: nothing is paid on the busy path otherwise).
//
// Backends (Backend below): epoll, with a timerfd for the earliest expiry and a
// signalfd; or io_uring (liburing), with the same timerfd and signalfd polled through the
// ring and its completions announced on an eventfd. Neither needs a kernel newer than
// Debian 12's 6.1 (no io_uring futex operations: workers sleep in epoll, and the
// eventfd or the epoll descriptor is what wakes them). docs/ARCHITECTURE.md says which is
// the default and why.
//
// Exactly one outcome per wait: a wait leaves the queue under mu_ exactly once, by its
// event, its expiry, a cancel, or a close of its descriptor; whoever removes it writes
// its result and hands its task on. Memory: a wait is a 48-byte slot in a free list that
// only grows to the most waits at once, bounded by the source (park_begins(): each
// client's --max-timers).
#pragma once

#include <signal.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "task.h"

namespace insideout::engine {

class Scheduler;
struct Worker;

enum class EventBackendKind : std::uint8_t { kAuto, kEpoll, kIoUring };
const char* event_backend_name(EventBackendKind k) noexcept;
// "auto", "epoll", "io_uring" (--event-backend); false when unknown.
bool parse_event_backend(std::string_view s, EventBackendKind* out) noexcept;
// What this kernel offers io_uring-wise, probed once (a ring made and dropped): empty
// when it works, else why not ("io_uring_setup: Operation not permitted").
std::string probe_io_uring();

// Signals a host routes to the event queues: blocked in every thread (the host blocks
// them before it starts threads) and read from one signalfd per queue that waits on
// them. The daemon routes SIGUSR1, SIGUSR2 and SIGRTMIN..SIGRTMIN+7.
sigset_t routable_signals() noexcept;

// One identifier per wait: slot index (low 32 bits) and the slot's generation.
using WaitId = std::uint64_t;
inline constexpr WaitId kNoWait = 0;

class EventQueue {
 public:
  class Backend;
  EventQueue(Scheduler& sched, EventBackendKind kind);
  ~EventQueue();
  EventQueue(const EventQueue&) = delete;
  EventQueue& operator=(const EventQueue&) = delete;

  EventBackendKind backend() const noexcept;
  // Workers watch notify_fd() with EPOLLET | EPOLLEXCLUSIVE (else level-triggered).
  bool notify_edge_triggered() const noexcept;
  // Readable while something is ready: in every worker's epoll set.
  int notify_fd() const noexcept;
  // Something waits (relaxed: a hint; the descriptor wakes sleepers in any case).
  bool waiting() const noexcept { return count_.load(std::memory_order_relaxed) != 0; }
  std::size_t size() const noexcept { return count_.load(std::memory_order_relaxed); }

  // Parks `t` (the step then returns Step::kPark and touches it no more). Each returns 0;
  // or a negative errno, after which the task is not parked (`result` holds the errno
  // too, when given): the step goes on and decides. A task refused because its owner is
  // gone or the pool drains, or because its owner is over its limit, is handed back with
  // kTaskCancelled / kTaskOverLimit (returns 0: it is the engine's to end).
  // `when_ns` is the wait's own expiry (CLOCK_MONOTONIC; 0: none); the task's deadline
  // (WorkSource::deadline_ns()) also ends it, as a cut-off.
  int park_timer(Task* t, std::int64_t when_ns, std::int64_t* result = nullptr);
  int park_fd(Task* t, int fd, std::uint32_t events, std::int64_t when_ns, std::int64_t* result);
  int park_signal(Task* t, int signo, std::int64_t when_ns, std::int64_t* result);
  // A wait on a key of the source's (a client's doorbell): resumes on notify_key().
  int park_key(Task* t, std::uint64_t key, std::int64_t when_ns, std::int64_t* result);
  // Resumes every wait on `key` with `value`. Any thread.
  void notify_key(std::uint64_t key, std::int64_t value);
  // Any key waited on whose owner (key >> 32) is `owner`? (The source's poll skips its
  // doorbells otherwise.)
  bool keys_of(std::uint32_t owner) const noexcept;

  // Fails every wait on `fd` with -EBADF, then closes it. Any thread.
  int close_fd(int fd);
  // The same without the close: the daemon's client descriptors (it retires their numbers
  // itself, daemon/src/client_fds.h). Any thread.
  void fail_fd(int fd);
  // Cancels one wait (a client's cancel of a parked continuation): true when it was
  // still parked. Any thread. It takes the queue's lock even for kNoWait or a stale id:
  // ClientSource's cancel relies on that to order itself against a park in progress.
  bool cancel(WaitId id);
  // Every parked task for which `which` is true resumes now, cancelled (drain, a client
  // that left). Any thread.
  void cancel_if(const std::function<bool(const Task&)>& which);

  // Takes what is ready (a bounded batch) and hands it to worker `w`'s queues; returns
  // one task to run now, or null. Any worker; one harvests at a time (the others go on).
  Task* harvest(Worker& w);

  // Statistics.
  std::uint64_t resumed() const noexcept { return resumed_.load(std::memory_order_relaxed); }

 private:
  enum class Kind : std::uint8_t { kFree, kTimer, kFd, kSignal, kKey };
  struct Wait {
    Task* task = nullptr;
    std::int64_t* result = nullptr;
    std::int64_t when_ns = 0;     // expiry on the heap (min of its timeout and deadline)
    std::int64_t timeout_ns = 0;  // its own timeout (0: none): past it, -ETIMEDOUT
    std::uint64_t key = 0;        // kFd: the descriptor; kSignal: signo; kKey: the key
    std::uint32_t gen = 1;        // bumped when the slot is freed (stale WaitIds)
    std::uint32_t heap_pos = kNoPos;
    std::uint32_t next = kNoPos;  // free list; for kFd/kSignal/kKey: the next on the key
    std::uint32_t events = 0;     // kFd
    Kind kind = Kind::kFree;
  };
  static constexpr std::uint32_t kNoPos = 0xFFFFFFFFu;

  // All under mu_.
  // Whether `t` may park; if not, *result (when given) says why and it joins `back`.
  bool admit(Task* t, std::int64_t* result, std::vector<Task*>* back);
  std::uint32_t alloc_wait(Task* t, Kind k, std::int64_t when_ns, std::int64_t timeout_ns,
                           std::int64_t* result);
  // Removes wait i from every index, writes `result`, hands its task to `out`.
  void finish(std::uint32_t i, std::int64_t result, bool cut_off, std::vector<Task*>& out);
  void link(std::unordered_map<std::uint64_t, std::uint32_t>& index, std::uint32_t i);
  void unlink(std::unordered_map<std::uint64_t, std::uint32_t>& index, std::uint32_t i);
  void heap_push(std::uint32_t i);
  void heap_remove(std::uint32_t i);
  void heap_up(std::uint32_t pos);
  void heap_down(std::uint32_t pos);
  void rearm_timer();  // the timerfd at the heap's top
  void expire(std::int64_t now_ns, std::vector<Task*>& out);
  void take_signals(std::vector<Task*>& out);
  void hand_over(std::vector<Task*>& out);  // outside mu_: into the pool
  void rearm(std::uint64_t token);  // a watch the kernel dropped (io_uring: submitter exited)

  Scheduler& sched_;
  std::unique_ptr<Backend> backend_;
  int timer_fd_ = -1;
  int signal_fd_ = -1;    // made on the first signal wait
  sigset_t signal_mask_;  // signals signal_fd_ reads

  mutable std::mutex mu_;
  std::vector<Wait> waits_;
  std::uint32_t free_ = kNoPos;
  std::vector<std::uint32_t> heap_;  // wait indices, earliest when_ns first
  std::int64_t armed_ns_ = 0;        // what timer_fd_ is set to (0: disarmed)
  std::unordered_map<std::uint64_t, std::uint32_t> by_fd_, by_signal_, by_key_;
  // Persistent backends (Backend::persistent()): each descriptor registered once, until
  // close_fd()/fail_fd(), under a token of its own (fd_token()), for the kinds of
  // readiness its waits have asked for so far (a socket only read from never reports
  // the acknowledgements that free its send buffer); `ready` gathers the
  // IO_EV_* bits reported since a wait last took them; `wait` is its waiter, if any.
  // `owner`: the task that registered it; another task's first wait registers the
  // number again (a descriptor closed with close(2) leaves the epoll set by itself, and
  // its number may name another file now).
  struct FdReg {
    std::uint32_t gen = 0;
    std::uint32_t ready = 0;
    std::uint32_t wait = kNoPos;
    std::uint32_t events = 0;  // EPOLLIN/EPOLLOUT registered: what some wait wanted
    // The peer shut its side (EPOLLRDHUP/EPOLLHUP): a final state, so every read wait
    // resumes at once from here on. A step whose short read took the last bytes and the
    // end of file together parks next without trying (the SDK's drained socket), and no
    // edge will come again.
    bool read_closed = false;
    const Task* owner = nullptr;
    // What it has ready for its waits: what it recorded, and reading for good once the
    // peer has shut its side.
    std::uint32_t ready_now() const noexcept { return read_closed ? ready | IO_EV_READ : ready; }
  };
  std::unordered_map<int, FdReg> regs_;
  std::uint32_t reg_gen_ = 0;
  // A wait on a persistent registration: resumes at once on what is ready already, or
  // becomes the descriptor's waiter.
  void wait_on_registration(std::uint32_t i, FdReg& r, std::vector<Task*>& out);
  // Readiness of a registration, from the harvest.
  void registration_ready(std::uint64_t token, std::uint32_t revents, std::vector<Task*>& out);
  std::unordered_map<std::uint32_t, std::uint32_t> key_owners_;  // owner -> waits on its keys
  std::atomic<std::size_t> count_{0};  // waits parked (relaxed: waiting() is a hint)
  std::mutex harvest_mu_;              // one harvester at a time (try_lock)
  std::atomic<std::uint64_t> resumed_{0};
  // Signals (bit per signo) another queue read while this one had waiters on them.
  std::atomic<std::uint64_t> pending_signals_{0};
};

}  // namespace insideout::engine
