// The event queue (event_queue.h): waits, their expiry heap, signals, and the harvest.
// The backends are in event_backends.cc.
#include "event_queue.h"

#include <errno.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "event_backend.h"
#include "scheduler.h"

namespace insideout::engine {

namespace {

constexpr std::uint64_t kTimerToken = ~std::uint64_t{0};
constexpr std::uint64_t kSignalToken = ~std::uint64_t{0} - 1;
constexpr int kHarvestBatch = 64;

std::int64_t now_ns() noexcept {
  timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// What the kernel watches for a wait on IO_EV_* events (one shot).
std::uint32_t watch_events(std::uint32_t io_events) noexcept {
  std::uint32_t ev = EPOLLONESHOT;
  if (io_events & IO_EV_READ) ev |= EPOLLIN | EPOLLRDHUP;
  if (io_events & IO_EV_WRITE) ev |= EPOLLOUT;
  return ev;
}

WaitId make_id(std::uint32_t index, std::uint32_t gen) noexcept {
  return (std::uint64_t{gen} << 32) | index;
}

// A persistent registration's token: its generation (30 bits, so that it never meets
// kTimerToken or kSignalToken) over the descriptor.
std::uint64_t fd_token(int fd, std::uint32_t gen) noexcept {
  return (std::uint64_t{gen & 0x3FFFFFFFu} << 32) | static_cast<std::uint32_t>(fd);
}

// IO_EV_* bits of what epoll reported.
std::uint32_t io_events_of(std::uint32_t revents) noexcept {
  std::uint32_t ev = 0;
  if (revents & (EPOLLIN | EPOLLRDHUP)) ev |= IO_EV_READ;
  if (revents & EPOLLOUT) ev |= IO_EV_WRITE;
  if (revents & EPOLLERR) ev |= IO_EV_ERROR;
  if (revents & EPOLLHUP) ev |= IO_EV_HUP;
  return ev;
}

// What a wait for `wanted` (IO_EV_READ/WRITE) resumes with when `ready` holds: an error
// wakes either kind of wait, a hang-up a reader.
std::int64_t resume_events(std::uint32_t ready, std::uint32_t wanted) noexcept {
  std::uint32_t ev = ready & (wanted | IO_EV_ERROR | IO_EV_HUP);
  if (ev & IO_EV_ERROR) ev |= wanted & (IO_EV_READ | IO_EV_WRITE);
  if (ev & IO_EV_HUP) ev |= wanted & IO_EV_READ;
  return ev;
}

// Every queue that waits on signals: a signal is read by one queue's signalfd and
// delivered to the waiters of all of them.
std::mutex g_signal_mu;
std::vector<EventQueue*> g_signal_queues;

}  // namespace

sigset_t routable_signals() noexcept {
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, SIGUSR1);
  sigaddset(&s, SIGUSR2);
  for (int i = 0; i < 8; ++i) sigaddset(&s, SIGRTMIN + i);
  return s;
}

const char* event_backend_name(EventBackendKind k) noexcept {
  switch (k) {
    case EventBackendKind::kAuto:
      return "auto";
    case EventBackendKind::kEpoll:
      return "epoll";
    case EventBackendKind::kIoUring:
      return "io_uring";
  }
  return "?";
}

bool parse_event_backend(std::string_view s, EventBackendKind* out) noexcept {
  if (s == "auto") {
    *out = EventBackendKind::kAuto;
  } else if (s == "epoll") {
    *out = EventBackendKind::kEpoll;
  } else if (s == "io_uring" || s == "uring") {
    *out = EventBackendKind::kIoUring;
  } else {
    return false;
  }
  return true;
}

EventQueue::EventQueue(Scheduler& sched, EventBackendKind kind) : sched_(sched) {
  sigemptyset(&signal_mask_);
  backend_ = make_event_backend(kind);
  timer_fd_ = ::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
  if (timer_fd_ < 0) throw std::runtime_error(std::string("timerfd: ") + std::strerror(errno));
  if (const int e = backend_->arm(timer_fd_, EPOLLIN, kTimerToken); e != 0)
    throw std::runtime_error(std::string("event queue: ") + std::strerror(-e));
}

EventQueue::~EventQueue() {
  if (signal_fd_ >= 0) {
    std::lock_guard g(g_signal_mu);
    std::erase(g_signal_queues, this);
  }
  backend_.reset();
  if (timer_fd_ >= 0) ::close(timer_fd_);
  if (signal_fd_ >= 0) ::close(signal_fd_);
}

EventBackendKind EventQueue::backend() const noexcept { return backend_->kind(); }
int EventQueue::notify_fd() const noexcept { return backend_->notify_fd(); }
bool EventQueue::notify_edge_triggered() const noexcept { return backend_->edge_triggered(); }

// ---- parking -------------------------------------------------------------------------

bool EventQueue::admit(Task* t, std::int64_t* result, std::vector<Task*>* back) {
  // Under mu_, as the sweeps (cancel_if()) are: a task whose client hung up after its
  // step began must not park, or it would sleep out its whole wait after the sweep.
  WorkSource& src = sched_.source();
  const bool gone = src.gone(*t);
  const bool root = !(t->flags & kTaskChild);
  int err = 0;
  if (sched_.draining() || sched_.paused() || gone) {
    // A child is not cut off (it reports to its parent) but its cancelled() says so.
    t->flags |= kTaskCancelled;
    err = -ECANCELED;
  } else if (!src.park_begins(*t)) {
    // Each client's parked continuations are bounded (--max-timers): the queue, and the
    // sweep when a client leaves, are bounded by the clients times that.
    if (root) t->flags |= kTaskOverLimit;
    err = -EMFILE;
  }
  if (err == 0) return true;
  // Refused: the task goes back to the engine (to end it, or to resume the step's code
  // with the error in its result).
  if (result != nullptr) *result = err;
  back->push_back(t);
  return false;
}

std::uint32_t EventQueue::alloc_wait(Task* t, Kind k, std::int64_t when_ns, std::int64_t timeout_ns,
                                     std::int64_t* result) {
  std::uint32_t i;
  if (free_ != kNoPos) {
    i = free_;
    free_ = waits_[i].next;
  } else {
    i = static_cast<std::uint32_t>(waits_.size());
    waits_.emplace_back();
  }
  Wait& w = waits_[i];
  w.task = t;
  w.result = result;
  w.kind = k;
  w.timeout_ns = timeout_ns;
  w.next = kNoPos;
  // The continuation's deadline ends the wait too, as a cut-off.
  const std::int64_t deadline = sched_.source().deadline_ns(*t);
  w.when_ns = when_ns;
  if (deadline != 0 && (w.when_ns == 0 || deadline < w.when_ns)) w.when_ns = deadline;
  if (w.when_ns != 0) heap_push(i);
  count_.fetch_add(1, std::memory_order_relaxed);
  sched_.source().parked(*t, make_id(i, w.gen));
  return i;
}

namespace {
// A refusal: the task goes back to the engine (cancelled or over its limit) or the step
// learns why.
int refuse(std::int64_t* result, int err) {
  if (result != nullptr) *result = err;
  return err;
}
}  // namespace

int EventQueue::park_timer(Task* t, std::int64_t when_ns, std::int64_t* result) {
  std::vector<Task*> back;
  {
    std::lock_guard lock(mu_);
    if (admit(t, result, &back)) {
      (void)alloc_wait(t, Kind::kTimer, when_ns <= 0 ? 1 : when_ns, when_ns <= 0 ? 1 : when_ns,
                       result);
      rearm_timer();
    }
  }
  hand_over(back);
  return 0;
}

int EventQueue::park_fd(Task* t, int fd, std::uint32_t events, std::int64_t when_ns,
                        std::int64_t* result) {
  if (fd < 0 || (events & (IO_EV_READ | IO_EV_WRITE)) == 0) return refuse(result, -EINVAL);
  std::vector<Task*> back;
  {
    std::lock_guard lock(mu_);
    // One waiter per descriptor: a persistent registration names its own (by_fd_ is for
    // one-shot watches; an insert and an erase per wait would cost more than the wait).
    if (backend_->persistent()) {
      if (auto it = regs_.find(fd); it != regs_.end() && it->second.wait != kNoPos)
        return refuse(result, -EBUSY);
    } else if (by_fd_.count(static_cast<std::uint64_t>(fd)) != 0) {
      return refuse(result, -EBUSY);
    }
    if (admit(t, result, &back)) {
      const std::uint32_t i = alloc_wait(t, Kind::kFd, when_ns, when_ns, result);
      Wait& w = waits_[i];
      w.key = static_cast<std::uint64_t>(fd);
      w.events = events & (IO_EV_READ | IO_EV_WRITE);
      if (backend_->persistent()) {
        auto [it, fresh] = regs_.try_emplace(fd);
        FdReg& r = it->second;
        const std::uint32_t want = watch_events(events) & (EPOLLIN | EPOLLOUT);
        const bool anew = fresh || r.owner != t;
        if (anew) r = FdReg{.gen = ++reg_gen_, .owner = t};
        // A registration that is not new reports edges only: unless the step has just
        // seen EAGAIN, MOD makes the kernel look at the descriptor's level once more (a
        // ready one is reported at once), as a one-shot watch would.
        if (anew || (r.events & want) != want ||
            (!(events & IO_EV_AFTER_EAGAIN) && resume_events(r.ready_now(), events) == 0)) {
          r.events |= want;
          if (const int e = backend_->register_fd(fd, r.events, fd_token(fd, r.gen), !anew);
              e != 0) {
            regs_.erase(it);
            std::vector<Task*> none;
            w.result = nullptr;
            finish(i, e, false, none);
            return refuse(result, e);
          }
        }
        wait_on_registration(i, r, back);
      } else if (const int e = backend_->arm(fd, watch_events(events), make_id(i, w.gen)); e != 0) {
        // Not a descriptor the kernel can wait on (a regular file, a closed one): the
        // task is not parked after all (finish() ends the park); the step hears why.
        std::vector<Task*> none;
        w.result = nullptr;
        finish(i, e, false, none);
        return refuse(result, e);
      } else {
        link(by_fd_, i);
        if (w.when_ns != 0) rearm_timer();
      }
    }
  }
  hand_over(back);
  return 0;
}

void EventQueue::wait_on_registration(std::uint32_t i, FdReg& r, std::vector<Task*>& out) {
  Wait& w = waits_[i];
  const std::int64_t ev = resume_events(r.ready_now(), w.events);
  if (ev != 0) {
    // Ready since the last wait took it (possibly before the step's own attempt saw
    // EAGAIN: then it costs one more attempt, never a lost edge).
    r.ready &= ~(w.events & (IO_EV_READ | IO_EV_WRITE));
    finish(i, ev, false, out);
    return;
  }
  r.wait = i;
  if (w.when_ns != 0) rearm_timer();
}

void EventQueue::registration_ready(std::uint64_t token, std::uint32_t revents,
                                    std::vector<Task*>& out) {
  const int fd = static_cast<int>(static_cast<std::uint32_t>(token));
  auto it = regs_.find(fd);
  if (it == regs_.end() || fd_token(fd, it->second.gen) != token) return;  // forgotten
  FdReg& r = it->second;
  r.ready |= io_events_of(revents);
  if (revents & (EPOLLRDHUP | EPOLLHUP)) r.read_closed = true;
  if (r.wait == kNoPos) return;  // kept for the next wait
  const std::uint32_t i = r.wait;
  const std::int64_t ev = resume_events(r.ready_now(), waits_[i].events);
  if (ev == 0) return;
  r.ready &= ~(waits_[i].events & (IO_EV_READ | IO_EV_WRITE));
  finish(i, ev, false, out);
}

int EventQueue::park_signal(Task* t, int signo, std::int64_t when_ns, std::int64_t* result) {
  const sigset_t routable = routable_signals();
  if (signo <= 0 || signo >= NSIG || sigismember(&routable, signo) != 1)
    return refuse(result, -EINVAL);
  // The signal must be blocked in this thread (and so, by the host's contract, in all):
  // otherwise it would be delivered to a handler, never to the signalfd.
  sigset_t cur;
  pthread_sigmask(SIG_SETMASK, nullptr, &cur);
  if (sigismember(&cur, signo) != 1) return refuse(result, -EINVAL);
  std::vector<Task*> back;
  {
    std::lock_guard lock(mu_);
    if (sigismember(&signal_mask_, signo) != 1) {
      sigaddset(&signal_mask_, signo);
      const bool first = signal_fd_ < 0;
      const int fd = ::signalfd(signal_fd_, &signal_mask_, SFD_CLOEXEC | SFD_NONBLOCK);
      if (fd < 0) return refuse(result, -errno);
      signal_fd_ = fd;
      if (first) {
        if (const int e = backend_->arm(signal_fd_, EPOLLIN, kSignalToken); e != 0)
          return refuse(result, e);
        std::lock_guard g(g_signal_mu);
        g_signal_queues.push_back(this);
      }
    }
    if (admit(t, result, &back)) {
      const std::uint32_t i = alloc_wait(t, Kind::kSignal, when_ns, when_ns, result);
      waits_[i].key = static_cast<std::uint64_t>(signo);
      link(by_signal_, i);
      if (waits_[i].when_ns != 0) rearm_timer();
    }
  }
  hand_over(back);
  return 0;
}

int EventQueue::park_key(Task* t, std::uint64_t key, std::int64_t when_ns, std::int64_t* result) {
  std::vector<Task*> back;
  {
    std::lock_guard lock(mu_);
    if (admit(t, result, &back)) {
      const std::uint32_t i = alloc_wait(t, Kind::kKey, when_ns, when_ns, result);
      waits_[i].key = key;
      link(by_key_, i);
      ++key_owners_[static_cast<std::uint32_t>(key >> 32)];
      if (waits_[i].when_ns != 0) rearm_timer();
    }
  }
  hand_over(back);
  return 0;
}

bool EventQueue::keys_of(std::uint32_t owner) const noexcept {
  std::lock_guard lock(mu_);
  return key_owners_.count(owner) != 0;
}

void EventQueue::notify_key(std::uint64_t key, std::int64_t value) {
  std::vector<Task*> out;
  {
    std::lock_guard lock(mu_);
    auto it = by_key_.find(key);
    while (it != by_key_.end()) {
      finish(it->second, value, false, out);
      it = by_key_.find(key);
    }
  }
  hand_over(out);
}

// ---- leaving the queue -----------------------------------------------------------------

void EventQueue::link(std::unordered_map<std::uint64_t, std::uint32_t>& index, std::uint32_t i) {
  auto [it, fresh] = index.try_emplace(waits_[i].key, i);
  if (!fresh) {  // push at the head of the key's list
    waits_[i].next = it->second;
    it->second = i;
  }
}

void EventQueue::unlink(std::unordered_map<std::uint64_t, std::uint32_t>& index, std::uint32_t i) {
  auto it = index.find(waits_[i].key);
  if (it == index.end()) return;
  if (it->second == i) {
    if (waits_[i].next == kNoPos) {
      index.erase(it);
    } else {
      it->second = waits_[i].next;
    }
    return;
  }
  // Lists are short (the waiters of one signal or doorbell).
  for (std::uint32_t p = it->second; waits_[p].next != kNoPos; p = waits_[p].next) {
    if (waits_[p].next == i) {
      waits_[p].next = waits_[i].next;
      return;
    }
  }
}

void EventQueue::finish(std::uint32_t i, std::int64_t result, bool cut_off,
                        std::vector<Task*>& out) {
  Wait& w = waits_[i];
  switch (w.kind) {
    case Kind::kFd:
      if (!backend_->persistent()) {
        unlink(by_fd_, i);
      } else if (auto it = regs_.find(static_cast<int>(w.key));
                 it != regs_.end() && it->second.wait == i) {
        it->second.wait = kNoPos;
      }
      break;
    case Kind::kSignal:
      unlink(by_signal_, i);
      break;
    case Kind::kKey: {
      unlink(by_key_, i);
      auto it = key_owners_.find(static_cast<std::uint32_t>(w.key >> 32));
      if (it != key_owners_.end() && --it->second == 0) key_owners_.erase(it);
      break;
    }
    default:
      break;
  }
  if (w.heap_pos != kNoPos) heap_remove(i);
  Task* t = w.task;
  if (w.result != nullptr) *w.result = result;
  // A root is cut off at its next step (run_task()); a child resumes with the result and
  // sees cancelled().
  if (cut_off) t->flags |= kTaskCancelled;
  if (t != nullptr) {
    sched_.source().park_ends(*t);
    out.push_back(t);
  }
  w = Wait{.gen = w.gen + 1, .next = free_};
  free_ = i;
  count_.fetch_sub(1, std::memory_order_relaxed);
}

int EventQueue::close_fd(int fd) {
  if (fd < 0) return -EBADF;
  fail_fd(fd);
  return ::close(fd) == 0 ? 0 : -errno;
}

void EventQueue::fail_fd(int fd) {
  if (fd < 0) return;
  std::vector<Task*> out;
  {
    std::lock_guard lock(mu_);
    auto it = by_fd_.find(static_cast<std::uint64_t>(fd));
    while (it != by_fd_.end()) {
      const std::uint32_t i = it->second;
      backend_->disarm(fd, make_id(i, waits_[i].gen));
      finish(i, -EBADF, false, out);
      it = by_fd_.find(static_cast<std::uint64_t>(fd));
    }
    if (auto r = regs_.find(fd); r != regs_.end() && r->second.wait != kNoPos)
      finish(r->second.wait, -EBADF, false, out);
    backend_->forget(fd);
    regs_.erase(fd);
  }
  hand_over(out);
}

bool EventQueue::cancel(WaitId id) {
  const auto i = static_cast<std::uint32_t>(id);
  std::vector<Task*> out;
  {
    std::lock_guard lock(mu_);
    if (i >= waits_.size() || waits_[i].gen != static_cast<std::uint32_t>(id >> 32) ||
        waits_[i].kind == Kind::kFree)
      return false;
    if (waits_[i].kind == Kind::kFd)
      backend_->disarm(static_cast<int>(waits_[i].key), make_id(i, waits_[i].gen));
    finish(i, -ECANCELED, true, out);
  }
  hand_over(out);
  return true;
}

void EventQueue::cancel_if(const std::function<bool(const Task&)>& which) {
  std::vector<Task*> out;
  {
    std::lock_guard lock(mu_);
    for (std::uint32_t i = 0; i < waits_.size(); ++i) {
      Wait& w = waits_[i];
      if (w.kind == Kind::kFree || !which(*w.task)) continue;
      if (w.kind == Kind::kFd) backend_->disarm(static_cast<int>(w.key), make_id(i, w.gen));
      finish(i, -ECANCELED, true, out);
    }
    rearm_timer();
  }
  hand_over(out);
}

void EventQueue::hand_over(std::vector<Task*>& out) {
  if (out.empty()) return;
  resumed_.fetch_add(out.size(), std::memory_order_relaxed);
  sched_.inject_batch(out);
  out.clear();
}

// ---- the expiry heap ---------------------------------------------------------------

void EventQueue::heap_push(std::uint32_t i) {
  waits_[i].heap_pos = static_cast<std::uint32_t>(heap_.size());
  heap_.push_back(i);
  heap_up(waits_[i].heap_pos);
}

void EventQueue::heap_remove(std::uint32_t i) {
  const std::uint32_t pos = waits_[i].heap_pos;
  const std::uint32_t last = heap_.back();
  heap_.pop_back();
  waits_[i].heap_pos = kNoPos;
  if (last == i) return;
  heap_[pos] = last;
  waits_[last].heap_pos = pos;
  heap_up(pos);
  heap_down(waits_[last].heap_pos);
}

void EventQueue::heap_up(std::uint32_t pos) {
  while (pos > 0) {
    const std::uint32_t parent = (pos - 1) / 2;
    if (waits_[heap_[parent]].when_ns <= waits_[heap_[pos]].when_ns) break;
    std::swap(heap_[parent], heap_[pos]);
    waits_[heap_[parent]].heap_pos = parent;
    waits_[heap_[pos]].heap_pos = pos;
    pos = parent;
  }
}

void EventQueue::heap_down(std::uint32_t pos) {
  const auto n = static_cast<std::uint32_t>(heap_.size());
  for (;;) {
    std::uint32_t best = pos;
    for (std::uint32_t c = 2 * pos + 1; c <= 2 * pos + 2 && c < n; ++c) {
      if (waits_[heap_[c]].when_ns < waits_[heap_[best]].when_ns) best = c;
    }
    if (best == pos) return;
    std::swap(heap_[best], heap_[pos]);
    waits_[heap_[best]].heap_pos = best;
    waits_[heap_[pos]].heap_pos = pos;
    pos = best;
  }
}

void EventQueue::rearm_timer() {
  const std::int64_t want = heap_.empty() ? 0 : waits_[heap_.front()].when_ns;
  if (want == armed_ns_) return;
  itimerspec its{};
  if (want != 0) {
    its.it_value.tv_sec = want / 1'000'000'000;
    its.it_value.tv_nsec = want % 1'000'000'000;
  }
  ::timerfd_settime(timer_fd_, want != 0 ? TFD_TIMER_ABSTIME : 0, &its, nullptr);
  armed_ns_ = want;
}

void EventQueue::expire(std::int64_t now, std::vector<Task*>& out) {
  while (!heap_.empty() && waits_[heap_.front()].when_ns <= now) {
    const std::uint32_t i = heap_.front();
    Wait& w = waits_[i];
    // Its own timeout (a sleep's end is one) resumes it; the deadline cuts it off.
    const bool own = w.timeout_ns != 0 && w.timeout_ns <= now;
    if (w.kind == Kind::kFd) backend_->disarm(static_cast<int>(w.key), make_id(i, w.gen));
    finish(i, w.kind == Kind::kTimer ? 0 : -ETIMEDOUT, !own, out);
  }
  armed_ns_ = -1;  // the timerfd fired or is stale: set it again
  rearm_timer();
}

void EventQueue::take_signals(std::vector<Task*>& out) {
  signalfd_siginfo si[16];
  for (int rounds = 0; rounds < 4; ++rounds) {
    const ssize_t n = ::read(signal_fd_, si, sizeof(si));
    if (n <= 0) break;
    for (ssize_t k = 0; k < n / static_cast<ssize_t>(sizeof(si[0])); ++k) {
      const int signo = static_cast<int>(si[k].ssi_signo);
      // This queue's waiters now (mu_ is held); the other queues' outside it.
      auto it = by_signal_.find(static_cast<std::uint64_t>(signo));
      while (it != by_signal_.end()) {
        finish(it->second, signo, false, out);
        it = by_signal_.find(static_cast<std::uint64_t>(signo));
      }
      std::lock_guard g(g_signal_mu);
      for (EventQueue* q : g_signal_queues) {
        if (q == this) continue;
        // Release: pairs with the acquire exchange in harvest(); the poke makes one of
        // its workers look.
        q->pending_signals_.fetch_or(std::uint64_t{1} << signo, std::memory_order_release);
        q->sched_.poke();
      }
    }
  }
}

// ---- harvesting ---------------------------------------------------------------------

void EventQueue::rearm(std::uint64_t token) {
  if (token == kTimerToken) {
    backend_->arm(timer_fd_, EPOLLIN, kTimerToken);
    return;
  }
  if (token == kSignalToken) {
    if (signal_fd_ >= 0) backend_->arm(signal_fd_, EPOLLIN, kSignalToken);
    return;
  }
  const auto i = static_cast<std::uint32_t>(token);
  if (i >= waits_.size() || waits_[i].gen != static_cast<std::uint32_t>(token >> 32) ||
      waits_[i].kind != Kind::kFd)
    return;  // the wait has ended: this was our own removal
  (void)backend_->arm(static_cast<int>(waits_[i].key), watch_events(waits_[i].events), token);
}

Task* EventQueue::harvest(Worker& w) {
  // Nothing can be ready: a load for io_uring (its completion ring), so idle and busy
  // looks cost no system call.
  if (!backend_->maybe_ready() && pending_signals_.load(std::memory_order_relaxed) == 0)
    return nullptr;
  // Waits for a harvest in progress rather than skipping it: the worker may have been woken
  // by an edge-triggered notification that the other harvest started too early to see,
  // and nothing would notify again.
  std::lock_guard h(harvest_mu_);
  std::vector<Task*> out;
  std::uint64_t tokens[kHarvestBatch];
  std::uint32_t revents[kHarvestBatch];
  // Signals another queue read for us (acquire: pairs with the release in take_signals()).
  std::uint64_t others = pending_signals_.exchange(0, std::memory_order_acquire);
  {
    std::lock_guard lock(mu_);
    const int n = backend_->poll(tokens, revents, kHarvestBatch);
    bool timer = false;
    for (int k = 0; k < n; ++k) {
      if (revents[k] == kCancelledWatch) {  // io_uring: its submitter exited; still wanted?
        rearm(tokens[k]);
        continue;
      }
      if (tokens[k] == kTimerToken) {
        std::uint64_t ticks;
        (void)!::read(timer_fd_, &ticks, sizeof(ticks));
        backend_->arm(timer_fd_, EPOLLIN, kTimerToken);
        timer = true;
        continue;
      }
      if (tokens[k] == kSignalToken) {
        take_signals(out);
        backend_->arm(signal_fd_, EPOLLIN, kSignalToken);
        continue;
      }
      if (backend_->persistent()) {
        registration_ready(tokens[k], revents[k], out);
        continue;
      }
      const auto i = static_cast<std::uint32_t>(tokens[k]);
      if (i >= waits_.size() || waits_[i].gen != static_cast<std::uint32_t>(tokens[k] >> 32) ||
          waits_[i].kind != Kind::kFd)
        continue;  // stale: the wait ended another way
      std::int64_t ev = 0;
      if (revents[k] & (EPOLLIN | EPOLLRDHUP)) ev |= IO_EV_READ;
      if (revents[k] & EPOLLOUT) ev |= IO_EV_WRITE;
      if (revents[k] & EPOLLERR)
        ev |= IO_EV_ERROR | (waits_[i].events & (IO_EV_READ | IO_EV_WRITE));
      if (revents[k] & EPOLLHUP) ev |= IO_EV_HUP | (waits_[i].events & IO_EV_READ);
      finish(i, ev, false, out);
    }
    for (int signo = 1; others != 0 && signo < 64; ++signo) {
      if (!(others & (std::uint64_t{1} << signo))) continue;
      auto it = by_signal_.find(static_cast<std::uint64_t>(signo));
      while (it != by_signal_.end()) {
        finish(it->second, signo, false, out);
        it = by_signal_.find(static_cast<std::uint64_t>(signo));
      }
    }
    // The timerfd may not have been seen yet (this harvest came from a busy worker):
    // what is due is due either way.
    if (timer || (!heap_.empty() && waits_[heap_.front()].when_ns <= now_ns())) {
      expire(now_ns(), out);
    }
  }
  if (out.empty()) return nullptr;
  resumed_.fetch_add(out.size(), std::memory_order_relaxed);
  Task* first = out.front();
  if (out.size() > 1) {
    sched_.push_resumed(w, std::span<Task*>(out.data() + 1, out.size() - 1));
  }
  return first;
}

}  // namespace insideout::engine
