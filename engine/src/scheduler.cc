#include "scheduler.h"

#include <pthread.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <variant>

#include "log.h"

namespace insideout::engine {
namespace {

using shm::ErrorDetail;
using shm::Status;

constexpr std::uint32_t kStealMax = 32;
constexpr std::uint64_t kShareAcceptedBelow = 64;  // see push_local()
// A client's bell in a worker's epoll set: a write wakes one sleeping worker of the pool
// (EPOLLEXCLUSIVE), and edge-triggered, so nobody has to read the count back.
constexpr std::uint32_t kClientBellEvents = EPOLLIN | EPOLLET | EPOLLEXCLUSIVE;

std::uint32_t next_random(std::uint32_t& s) {
  s ^= s << 13;
  s ^= s >> 17;
  s ^= s << 5;
  return s;
}

}  // namespace

// ---- lifecycle ---------------------------------------------------------------------

Scheduler::Scheduler(SchedulerConfig config, const FunctionRegistry& registry,
                     std::unique_ptr<WorkSource> source)
    : config_(std::move(config)),
      registry_(registry),
      source_(std::move(source)),
      own_pool_(config_.tasks == nullptr ? std::make_unique<TaskPool>() : nullptr),
      pool_(config_.tasks != nullptr ? config_.tasks : own_pool_.get()) {
  std::uint32_t n = config_.workers;
  if (n == 0) n = config_.cpus.empty() ? 1 : static_cast<std::uint32_t>(config_.cpus.size());
  n = std::clamp<std::uint32_t>(n, 1, kMaxPoolWorkers);
  std::string err;
  events_ = std::make_unique<EventQueue>(*this, config_.event_backend);
  bell_ = shm::BellPage::create(config_.pool, &err);
  if (!bell_.valid()) throw std::runtime_error("pool " + std::to_string(config_.pool) + ": " + err);
  std::lock_guard bells(bells_mu_);
  for (std::uint32_t i = 0; i < n; ++i) workers_[i] = make_worker(i);
  // Relaxed: no worker runs yet; start() publishes them by creating the threads.
  allocated_.store(n, std::memory_order_relaxed);
  count_.store(n, std::memory_order_relaxed);
  idle_.reserve(kMaxPoolWorkers);
  source_->bind(*this);
}

Scheduler::~Scheduler() {
  if (!stop_.load()) {
    drain(std::chrono::milliseconds(0));
    stop();
  }
  for (auto& w : workers_) {
    if (w == nullptr) continue;
    if (w->epfd >= 0) ::close(w->epfd);
    if (w->wake_fd >= 0) ::close(w->wake_fd);
  }
}

std::unique_ptr<Worker> Scheduler::make_worker(std::uint32_t i) {
  auto w = std::make_unique<Worker>(config_.queue_capacity);
  w->index = i;
  w->cpu = config_.cpus.empty() ? -1 : config_.cpus[i % config_.cpus.size()];
  w->rng = 0x9E3779B9u * (i + 1);
  w->epfd = ::epoll_create1(EPOLL_CLOEXEC);
  w->wake_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (w->epfd < 0 || w->wake_fd < 0)
    throw std::runtime_error(std::string("worker epoll set: ") + std::strerror(errno));
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLET;  // edge-triggered: each wake() is one event, never read
  if (::epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->wake_fd, &ev) != 0)
    throw std::runtime_error(std::string("worker epoll set: ") + std::strerror(errno));
  // The event queue: an eventfd posting an edge per completion wakes one sleeper
  // (io_uring); a nested epoll set is level-triggered, every sleeper wakes (epoll).
  epoll_event qev{};
  qev.events = EPOLLIN;
  if (events_->notify_edge_triggered()) qev.events |= EPOLLET | EPOLLEXCLUSIVE;
  if (::epoll_ctl(w->epfd, EPOLL_CTL_ADD, events_->notify_fd(), &qev) != 0)
    throw std::runtime_error(std::string("worker epoll set: ") + std::strerror(errno));
  for (int fd : bell_fds_) {  // the caller holds bells_mu_
    epoll_event cev{};
    cev.events = kClientBellEvents;
    if (::epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &cev) != 0)
      throw std::runtime_error(std::string("worker epoll set: ") + std::strerror(errno));
  }
  return w;
}

void Scheduler::wake(Worker& w) {
  // K3: the eventfd stays readable (and its edge queued) until the worker's epoll_wait.
  const std::uint64_t one = 1;
  (void)!::write(w.wake_fd, &one, sizeof(one));
}

void Scheduler::start() {
  watch_thread_ = std::thread([this] { watch_loop(); });
  std::lock_guard lock(resize_mu_);
  const std::uint32_t n =
      count_.load(std::memory_order_relaxed);  // only resize() writes it, under resize_mu_
  for (std::uint32_t i = 0; i < n; ++i) start_worker(i);
  wait_for_tids(0, n);
}

void Scheduler::wait_for_tids(std::uint32_t from, std::uint32_t to) {
  // Bounded: the caller may then set the threads' attributes and report them.
  std::unique_lock lock(tid_mu_);
  tid_cv_.wait_for(lock, std::chrono::seconds(2), [&] {
    for (std::uint32_t i = from; i < to; ++i) {
      if (workers_[i]->tid.load(std::memory_order_relaxed) == 0) return false;
    }
    return true;
  });
}

void Scheduler::start_worker(std::uint32_t i) {
  Worker* w = workers_[i].get();
  // Relaxed: the thread's creation publishes these to it; readers of tid (the control
  // plane) only display it or wait for it to become non-zero.
  w->retiring.store(false, std::memory_order_relaxed);
  w->backlog.store(0, std::memory_order_relaxed);
  w->tid.store(0, std::memory_order_relaxed);
  w->alive.store(
      true, std::memory_order_release);  // R5': pairs with R6 (a started worker is not quiescent)
  w->thread = std::thread([this, w] { run(*w); });
}

std::uint32_t Scheduler::resize(std::uint32_t n) {
  std::lock_guard lock(resize_mu_);
  const std::uint32_t cur =
      count_.load(std::memory_order_relaxed);  // only written here, under resize_mu_
  if (stop_.load(std::memory_order_relaxed) || draining_.load(std::memory_order_relaxed))
    return cur;
  n = std::clamp<std::uint32_t>(n, 1, kMaxPoolWorkers);
  if (n > cur) {
    std::uint32_t alloc = allocated_.load(std::memory_order_relaxed);  // only written here
    for (std::uint32_t i = cur; i < n; ++i) {
      if (i >= alloc) {
        // Under bells_mu_ from its epoll set's making to its counting, so that a client
        // attached meanwhile is in the set either way.
        std::lock_guard bells(bells_mu_);
        workers_[i] = make_worker(i);
        alloc = i + 1;
        // Release: pairs with the acquire in totals()/epochs(); the Worker exists.
        allocated_.store(alloc, std::memory_order_release);
      }
      start_worker(i);
    }
    wait_for_tids(cur, n);
    count_.store(n, std::memory_order_release);  // R1: pairs with R2
    wake_all();  // parked workers' any_work() may now see the new workers' queues
  } else if (n < cur) {
    for (std::uint32_t i = n; i < cur; ++i) {
      Worker& w = *workers_[i];
      w.retiring.store(true, std::memory_order_seq_cst);  // R3: pairs with R4
      wake(w);
    }
    count_.store(n, std::memory_order_release);  // R1: thieves stop looking at them
    for (std::uint32_t i = n; i < cur; ++i) {
      if (workers_[i]->thread.joinable()) workers_[i]->thread.join();
    }
    // What they handed over is in the injection queue; make sure someone looks.
    wake_all();
  }
  return n;
}

void Scheduler::begin_drain(bool shutdown) {
  // Relaxed: read by workers as they cut continuations off; draining_'s seq_cst store
  // below publishes it to any worker that sees draining_.
  if (shutdown) shutting_down_.store(true, std::memory_order_relaxed);
  draining_.store(true, std::memory_order_seq_cst);
  wake_all();  // parked workers stop watching client doorbells
  cancel_waits();
}

void Scheduler::cancel_waits() {
  // Parked continuations resume now, cancelled (run_task() says why).
  events_->cancel_if([](const Task&) { return true; });
}

void Scheduler::pause() {
  paused_.store(true, std::memory_order_seq_cst);
  wake_all();  // a parked worker looks at the rings again, now to refuse
  cancel_waits();
}

void Scheduler::resume() {
  paused_.store(false, std::memory_order_seq_cst);
  wake_all();
}

bool Scheduler::wait_idle(std::chrono::milliseconds timeout) {
  std::unique_lock lock(drain_mu_);
  return drain_cv_.wait_for(lock, timeout, [&] { return !busy(); });
}

bool Scheduler::drain(std::chrono::milliseconds timeout) {
  begin_drain();
  return wait_idle(timeout);
}

void Scheduler::stop() {
  set_autosize(std::nullopt);  // before resize_mu_: the controller may be resizing
  std::lock_guard resize_lock(resize_mu_);
  stop_.store(true, std::memory_order_seq_cst);
  wake_all();
  const std::uint32_t alloc =
      allocated_.load(std::memory_order_relaxed);  // written under resize_mu_
  for (std::uint32_t i = 0; i < alloc; ++i) {
    if (workers_[i]->thread.joinable()) workers_[i]->thread.join();
  }
  {
    std::lock_guard lock(watch_mu_);
    watch_stop_ = true;
  }
  watch_cv_.notify_all();
  if (watch_thread_.joinable()) watch_thread_.join();
}

void Scheduler::wake_all() {
  const std::uint32_t n = worker_count();
  for (std::uint32_t i = 0; i < n; ++i) {
    wake(*workers_[i]);
  }
}

SchedulerTotals Scheduler::totals() const {
  SchedulerTotals t;
  // Retired workers' counts stay in the totals. Acquire: pairs with the release in resize().
  const std::uint32_t alloc = allocated_.load(std::memory_order_acquire);
  for (std::uint32_t i = 0; i < alloc; ++i) {
    const WorkerStats& s = workers_[i]->stats;
    t.steps += s.steps.load(std::memory_order_relaxed);
    t.accepted += s.accepted.load(std::memory_order_relaxed);
    t.completed += s.completed.load(std::memory_order_relaxed);
    t.failed += s.failed.load(std::memory_order_relaxed);
    t.rejected += s.rejected.load(std::memory_order_relaxed);
    t.steals += s.steals.load(std::memory_order_relaxed);
    t.parks += s.parks.load(std::memory_order_relaxed);
    t.timer_parks += s.timer_parks.load(std::memory_order_relaxed);
    t.backpressure += s.backpressure.load(std::memory_order_relaxed);
    t.spawned += s.spawned.load(std::memory_order_relaxed);
    t.faulted += s.faulted.load(std::memory_order_relaxed);
    t.long_steps += s.long_steps.load(std::memory_order_relaxed);
    t.refused += s.refused.load(std::memory_order_relaxed);
    for (std::size_t k = 0; k < kStatusSlots; ++k)
      t.failed_by[k] += s.failed_by[k].load(std::memory_order_relaxed);
  }
  t.accepted += serial_accepted_.load(std::memory_order_relaxed);
  t.submitted = t.accepted + t.rejected + t.refused;
  return t;
}

// ---- the worker loop ---------------------------------------------------------------

void Scheduler::run(Worker& w) {
  {
    // Relaxed: published to wait_for_tids() by tid_mu_.
    std::lock_guard lock(tid_mu_);
    w.tid.store(static_cast<pid_t>(::syscall(SYS_gettid)), std::memory_order_relaxed);
  }
  tid_cv_.notify_all();
  const std::string name = config_.thread_prefix + std::to_string(w.index);
  pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
  if (w.cpu >= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(w.cpu, &set);
    if (pthread_setaffinity_np(pthread_self(), sizeof(set), &set) != 0) {
      log(LogLevel::kWarn,
          "worker " + std::to_string(w.index) + ": could not pin to CPU " + std::to_string(w.cpu));
    }
  }
  StepContext ctx(*this, w);
  const auto spin = config_.spin;
  for (;;) {
    if (Task* t = find_work(w)) {
      set_hungry(w, false);
      run_task(w, ctx, t);
      continue;
    }
    // R4: relaxed is enough here; park() re-reads it seq_cst before sleeping.
    if (stop_.load(std::memory_order_acquire) || w.retiring.load(std::memory_order_relaxed)) break;
    set_hungry(w, true);  // busy workers start sharing their private work
    // Nothing to do: spin (bounded) or poll, then park.
    if (config_.idle != shm::IdleStrategy::kBlock) {
      const auto until = std::chrono::steady_clock::now() + spin;
      Task* t = nullptr;
      for (std::uint32_t i = 0;; ++i) {
        shm::cpu_relax();
        if ((t = find_work(w)) != nullptr) break;
        if (stop_.load(std::memory_order_relaxed) || w.retiring.load(std::memory_order_relaxed))
          break;
        if (config_.idle == shm::IdleStrategy::kSpinThenBlock && (i & 63) == 63) {
          if (std::chrono::steady_clock::now() >= until) break;
          // A spinning worker holds a CPU that a woken thread of this host (a client
          // about to take its completions, another pool's worker) may be waiting for: the
          // scheduler's wake-up preemption can leave that thread queued for a millisecond
          // or more. Yielding every 64 looks hands the CPU over at once, and costs one
          // system call that returns at once when nothing else is runnable.
          sched_yield();
        }
      }
      if (t != nullptr) {
        set_hungry(w, false);
        run_task(w, ctx, t);
        continue;
      }
      if (stop_.load(std::memory_order_acquire) || w.retiring.load(std::memory_order_relaxed))
        break;
    }
    park(w);
  }
  set_hungry(w, false);
  flush_children(w);  // may resume a parent into w.local
  if (!stop_.load(std::memory_order_relaxed)) retire(w);
  source_->flush(w);
  pool_->drain(w.cache);
  w.alive.store(false,
                std::memory_order_release);  // R5: pairs with R6; no slot pointer is held now
}

void Scheduler::retire(Worker& w) {
  // Everything this worker still holds goes to the injection queue, where any worker of
  // the pool takes it (the event queue and the client rings belong to the pool, not to
  // a worker, so nothing else is left behind).
  std::vector<Task*> moved;
  // What the event queue has ready: this worker may have taken the notification that
  // would have woken another.
  if (events_->waiting()) {
    if (Task* t = events_->harvest(w)) moved.push_back(t);
  }
  while (Task* t = w.queue.pop()) moved.push_back(t);
  w.local.drain_into(&moved);
  w.backlog.store(0, std::memory_order_relaxed);  // statistics: the controller's estimate
  if (moved.empty()) return;
  {
    std::lock_guard lock(inject_mu_);
    injected_.insert(injected_.end(), moved.begin(), moved.end());
    injected_size_.store(injected_.size(), std::memory_order_relaxed);
  }
  maybe_wake();
}

void Scheduler::set_hungry(Worker& w, bool hungry) {
  // The long-step watch: stored every time (a worker whose first look found work was
  // never hungry, and its `looking` would keep its initial value).
  w.looking.store(hungry, std::memory_order_relaxed);
  if (w.hungry == hungry) return;
  w.hungry = hungry;
  // Relaxed: a hint for busy workers' sharing decisions; a stale value costs at most one
  // round of sharing (or 64 ticks of not sharing), never a lost task.
  if (hungry) {
    w.backlog.store(0, std::memory_order_relaxed);  // its local work is done
    hungry_.fetch_add(1, std::memory_order_relaxed);
  } else {
    hungry_.fetch_sub(1, std::memory_order_relaxed);
  }
}

void Scheduler::share(Worker& w) {
  // Hand the oldest half of the private queue to the shared one, where thieves look.
  std::size_t n = (w.local.size() + 1) / 2;
  while (n-- != 0 && w.queue.push(w.local.front())) (void)w.local.pop_front();
  maybe_wake();
}

std::vector<std::uint64_t> Scheduler::epochs() const {
  std::vector<std::uint64_t> e;
  // Acquire: pairs with the release in resize(); every Worker below it exists. Retired
  // ones are in the snapshot too: one started again afterwards must pass a quiescent
  // point before the snapshot is satisfied (its epoch keeps counting across restarts).
  const std::uint32_t alloc = allocated_.load(std::memory_order_acquire);
  for (std::uint32_t i = 0; i < alloc; ++i)
    e.push_back(workers_[i]->epoch.load(std::memory_order_seq_cst));
  return e;
}

bool Scheduler::quiescent_since(const std::vector<std::uint64_t>& snapshot) const {
  // Not "stop_ is set": a stopping pool's workers may still be leaving park() and
  // touching the slots they watched; only a worker that has exited (alive false) is done.
  const std::uint32_t alloc =
      allocated_.load(std::memory_order_acquire);  // pairs with the release in resize()
  for (std::uint32_t i = 0; i < alloc; ++i) {
    const Worker& w = *workers_[i];
    // R6: pairs with R5; a worker with no thread holds no pointer into any slot.
    if (!w.alive.load(std::memory_order_acquire)) continue;
    // seq_cst: pairs with the worker's quiescent store (Q in find_work()). A worker
    // created after the snapshot counts from epoch 0.
    const std::uint64_t then = i < snapshot.size() ? snapshot[i] : 0;
    if (w.epoch.load(std::memory_order_seq_cst) == then) return false;
  }
  return true;
}

Task* Scheduler::find_work(Worker& w) {
  ++w.tick;
  // Q: a quiescent point (no unpinned slot pointer is held here). seq_cst pairs with the
  // zombie store in ClientTable::release() and the snapshot in epochs(): a worker past
  // this point sees the slot is no longer active.
  if ((w.tick & 63) == 0) {
    w.epoch.store(w.tick, std::memory_order_seq_cst);
    flush_children(w);  // bounds how long a parent waits for its last children
    source_->flush(w);  // and a completion behind busy local work
    w.share_hint = hungry_.load(std::memory_order_relaxed) != 0;  // read once per 64 looks
    // Relaxed: an estimate for the autosize controller (one store per 64 looks).
    w.backlog.store(static_cast<std::uint32_t>(w.local.size()), std::memory_order_relaxed);
    if (w.share_hint && w.local.size() > 1) share(w);
    // The event queue, while anything waits on it (one relaxed load otherwise).
    if (events_->waiting()) {
      if (Task* t = events_->harvest(w)) return t;
    }
    // R4: relaxed, once per 64 looks: a retiring worker stops here and hands its work
    // over in retire(); resize() also wakes it, and park() re-reads the flag seq_cst.
    if (w.retiring.load(std::memory_order_relaxed)) return nullptr;
  }
  // Every 32nd look starts at the client rings and at work from outside (timers, the
  // serialized path), so local work cannot starve them.
  if ((w.tick & 31) == 0) {
    if (injected_size_.load(std::memory_order_relaxed) != 0) {
      if (Task* t = take_injected()) return t;
    }
    if (Task* t = poll_source(w)) return t;
  }
  // Shared work (what thieves could otherwise take) and private work by turns: a
  // client that floods the shared queue (a fanout's nodes) cannot starve the private
  // lanes where other clients' continuations wait (see lanes.h).
  if ((w.tick & 1) != 0) {
    if (Task* t = w.local.pop_front()) return t;
  }
  if (Task* t = w.queue.pop()) return t;
  if (Task* t = w.local.pop_front()) return t;
  // Local work is done: settle finished children and hand the client what completed
  // before looking further.
  flush_children(w);
  if (Task* t = w.local.pop_front()) return t;  // a parent the children just resumed
  source_->flush(w);
  if (injected_size_.load(std::memory_order_relaxed) != 0) {
    if (Task* t = take_injected()) return t;
  }
  if (Task* t = poll_source(w)) return t;
  if (events_->waiting()) {
    if (Task* t = events_->harvest(w)) return t;
  }
  if (Task* t = steal(w)) return t;
  // Nothing to do: completions buffered on the way (rejected frames) go out now, and
  // the worker holds no slot pointer when it spins or parks.
  source_->flush(w);
  return nullptr;
}

Task* Scheduler::take_injected() {
  std::lock_guard lock(inject_mu_);
  if (injected_.empty()) return nullptr;
  Task* t = injected_.front();
  injected_.pop_front();
  injected_size_.store(injected_.size(), std::memory_order_relaxed);
  return t;
}

void Scheduler::inject_batch(std::vector<Task*>& tasks) {
  {
    std::lock_guard lock(inject_mu_);
    injected_.insert(injected_.end(), tasks.begin(), tasks.end());
    injected_size_.store(injected_.size(), std::memory_order_relaxed);
  }
  for (std::size_t k = 0; k < tasks.size() && k < 4; ++k) maybe_wake();
}

void Scheduler::push_resumed(Worker& w, std::span<Task*> tasks) {
  // Resumed waits are new parallelism: where thieves see them.
  for (Task* t : tasks) push_local(w, t, Origin::kSpawned);
  maybe_wake();
}

void Scheduler::inject(Task* t) {
  {
    std::lock_guard lock(inject_mu_);
    injected_.push_back(t);
    injected_size_.store(injected_.size(), std::memory_order_relaxed);
  }
  maybe_wake();
}

Task* Scheduler::steal(Worker& w) {
  const std::uint32_t n = worker_count();  // R2
  if (n < 2) return nullptr;
  Task* got[kStealMax];
  const std::uint32_t start = next_random(w.rng) % n;
  for (std::uint32_t i = 0; i < n; ++i) {
    Worker& v = *workers_[(start + i) % n];
    if (&v == &w || v.queue.size() == 0) continue;
    const std::size_t k = v.queue.steal(std::span<Task*>(got, kStealMax));
    if (k == 0) continue;
    w.stats.steals.store(w.stats.steals.load(std::memory_order_relaxed) + 1,
                         std::memory_order_relaxed);
    for (std::size_t j = 1; j < k; ++j) push_local(w, got[j], Origin::kAccepted);
    if (k > 1) maybe_wake();
    return got[0];
  }
  return nullptr;
}

void Scheduler::push_local(Worker& w, Task* t, Origin origin) {
  // New parallelism goes where thieves see it: spawned children always, continuations
  // accepted from a client while some worker is hungry. A continuation that yields or is
  // resumed stays private (a busy pool queues and takes it without atomics, and a lone
  // chain does not bounce between cores); share() hands surplus private work over to
  // hungry workers every 64 looks. The owner takes shared and private work by turns.
  // An accepted continuation joins the shared FIFO only while it is short: behind a
  // queue another client's spawns filled, it would wait for all of them, while its own
  // lane is served within a turn per client (lanes.h).
  const bool shared = origin == Origin::kSpawned || (origin == Origin::kAccepted && w.share_hint &&
                                                     w.queue.size() < kShareAcceptedBelow);
  if (shared && w.queue.push(t)) {
    w.pushed = true;
    return;
  }
  w.local.push_back(t);
}

void Scheduler::maybe_wake() {
  // K2: pairs with K1 in park().
  if (shm::load_after_fence(idle_count_) == 0) return;
  Worker* v = nullptr;
  {
    std::lock_guard lock(idle_mu_);
    if (idle_.empty()) return;
    v = idle_.back();
    idle_.pop_back();
    idle_count_.fetch_sub(1, std::memory_order_relaxed);
  }
  wake(*v);
}

// ---- client rings ------------------------------------------------------------------

// ---- running and completing --------------------------------------------------------

void Scheduler::run_task(Worker& w, StepContext& ctx, Task* t) {
  while (run_steps(w, ctx, t)) {
  }
}

bool Scheduler::run_steps(Worker& w, StepContext& ctx, Task* t) {
  // The long-step watch (relaxed: only a report depends on it).
  w.running.store(t->fn, std::memory_order_relaxed);
  w.runs.store(w.runs.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  // A root continuation of a client that hung up, or one resumed by a cancelled timer,
  // is cancelled at its next step boundary.
  if (!(t->flags & kTaskChild)) {
    if (t->flags & kTaskOverLimit) {
      t->flags = static_cast<std::uint16_t>(t->flags & ~kTaskOverLimit);
      cut_off(w, ctx, t, Status::kBackpressure, ErrorDetail::kTooManyTimers);
      return false;
    }
    if ((t->flags & kTaskCancelled) || (!(t->flags & kTaskNoCancel) && source_->gone(*t))) {
      const Outcome why = source_->cut_off_reason(*t);
      cut_off(w, ctx, t, why.status, why.detail);
      return false;
    }
  }
  std::uint64_t steps = 0;
  for (;;) {
    ctx.reset();
    ctx.set_current(t);
    // Continuation code never throws into the engine: the SDK's wrappers catch what
    // plugin code throws and fail the continuation with its message.
    const auto s = static_cast<Step>(t->fn(t, &ctx));
    ++steps;
    if (s == Step::kContinue) continue;
    w.stats.steps.store(w.stats.steps.load(std::memory_order_relaxed) + steps,
                        std::memory_order_relaxed);
    switch (s) {
      case Step::kYield:
        // A yield with nothing else queued on this worker: find_work() would pop this
        // same task next, so it runs again at once (run_task()), through the step
        // boundary's checks, without the trip through the queues (a lone chain then costs the
        // same on a pool of one worker or of many). Every 32nd look still goes
        // through find_work(), which polls the rings, the injection queue and the
        // event queue, and passes the quiescent point.
        if (((w.tick + 1) & 31) != 0 && w.local.empty() && w.queue.size() == 0 && !w.pushed) {
          ++w.tick;
          return true;
        }
        push_local(w, t);
        break;
      case Step::kPark:
      case Step::kWait:
      case Step::kMoved:
        break;
      case Step::kComplete:
      case Step::kFail:
        finish(w, ctx, t, s);
        break;
      case Step::kContinue:
        break;
      default:  // a value no step should return: a bug in continuation code
        ctx.fail(IO_ERR_FAILED, "a step returned an unknown step value");
        finish(w, ctx, t, Step::kFail);
        break;
    }
    if (w.pushed) {
      w.pushed = false;
      if (w.queue.size() > 1) maybe_wake();
    }
    return false;
  }
}

void Scheduler::cut_off(Worker& w, StepContext& ctx, Task* t, Status st, ErrorDetail d) {
  if (t->flags & kTaskOwnsState) {
    // Its code releases what it holds (a coroutine frame); what it returns is ignored.
    ctx.reset();
    ctx.set_current(t);
    ctx.cutoff = 1;
    (void)t->fn(t, &ctx);
    ctx.cutoff = 0;
  }
  ctx.reset();
  ctx.fail(st, d);
  finish(w, ctx, t, Step::kFail);
}

void Scheduler::finish(Worker& w, StepContext& ctx, Task* t, Step s) {
  if (const std::uint8_t slot = plugin_slot(*t); slot != 0) plugin_task_ended(w, slot);
  if (!(t->flags & kTaskChild)) {  // a child's code reports to its parent itself
    if (t->flags & kTaskSampled) sample_done(t);
    Outcome o;
    o.status = s == Step::kComplete ? Status::kOk : ctx.status();
    o.detail = s == Step::kComplete ? ErrorDetail::kNone : ctx.detail();
    o.value = ctx.result_value();
    o.result_len = ctx.result_len();
    o.result_is_env = ctx.result_is_env();
    o.message = ctx.message();
    source_->complete(w, *t, o);
  }
  pool_->free(w.cache, t);
}

void Scheduler::sample_done(const Task* t) {
  std::chrono::steady_clock::time_point start;
  {
    std::lock_guard lock(sampled_mu_);
    auto it = sampled_.find(t);
    if (it == sampled_.end()) return;
    start = it->second;
    sampled_.erase(it);
  }
  latency_.add(static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start)
          .count()));
}

void LatencyHistogram::add(std::uint64_t ns) noexcept {
  std::size_t i = ns == 0 ? 0 : static_cast<std::size_t>(63 - __builtin_clzll(ns));
  if (i >= kBuckets) i = kBuckets - 1;
  counts[i].fetch_add(1, std::memory_order_relaxed);
  count.fetch_add(1, std::memory_order_relaxed);
  sum_ns.fetch_add(ns, std::memory_order_relaxed);
}

void Scheduler::flush_children(Worker& w) {
  if (w.done_children == 0) return;
  Task* parent = w.done_parent;
  const std::uint64_t n = w.done_children;
  w.done_children = 0;
  w.done_parent = nullptr;
  // acq_rel: pairs with the other workers' subtractions and the spawner's; whoever takes
  // the count to zero sees all the children's work and resumes the parent.
  if (std::atomic_ref<std::uint64_t>(parent->w0).fetch_sub(n, std::memory_order_acq_rel) == n) {
    push_local(w, parent);
  }
}

// ---- parking -----------------------------------------------------------------------

bool Scheduler::any_work(const Worker& self) {
  if (!self.local.empty() || self.queue.size() != 0) return true;
  const std::uint32_t n = worker_count();  // R2
  for (std::uint32_t i = 0; i < n; ++i) {
    if (workers_[i]->queue.size() != 0) return true;
  }
  if (injected_size_.load(std::memory_order_relaxed) != 0) return true;
  if (draining_.load(std::memory_order_relaxed)) return false;
  return source_->has_work();
}

void Scheduler::park(Worker& w) {
  // Q, as in find_work(): entering park() the worker holds no slot pointer (its
  // completions were flushed when its local work ran dry). Without this, a worker that
  // parks after a zombie's epoch snapshot would still hold the zombie's reclamation up
  // until something woke it.
  w.epoch.store(w.epoch.load(std::memory_order_relaxed) + 1, std::memory_order_seq_cst);
  {
    std::lock_guard lock(idle_mu_);
    idle_.push_back(&w);
  }
  idle_count_.fetch_add(1, std::memory_order_seq_cst);  // K1: pairs with K2
  // B1: pairs with the client's fence in SubmitBell::ring(). While draining no ring is
  // read, so clients need not ring.
  const bool watch = !draining_.load(std::memory_order_relaxed);
  if (watch) bell_.page()->sleepers.fetch_add(1, std::memory_order_seq_cst);
  // The re-check below reads queues and ring slots with relaxed loads: on a weakly
  // ordered CPU they could move above the announcements without this fence.
  shm::full_barrier();
  // R4: seq_cst, after the announcements: pairs with R3 in resize().
  if (!any_work(w) && !stop_.load(std::memory_order_seq_cst) &&
      !w.retiring.load(std::memory_order_seq_cst)) {
    w.parked.store(true, std::memory_order_relaxed);
    w.stats.parks.store(w.stats.parks.load(std::memory_order_relaxed) + 1,
                        std::memory_order_relaxed);
    // Which descriptor fired does not matter: the worker looks at everything on waking.
    epoll_event events[8];
    while (::epoll_wait(w.epfd, events, 8, -1) < 0 && errno == EINTR) {
    }
    // A2: pairs with A1 in Autosizer::loop(); off the busy path (after a sleep).
    w.parked.store(false, std::memory_order_seq_cst);
    if (unpark_bell_.armed.load(std::memory_order_seq_cst) &&
        unpark_bell_.armed.exchange(false, std::memory_order_seq_cst)) {
      {
        std::lock_guard lock(unpark_bell_.mu);
        ++unpark_bell_.rings;
      }
      unpark_bell_.cv.notify_one();
    }
  }
  if (watch)
    bell_.page()->sleepers.fetch_sub(
        1, std::memory_order_relaxed);  // a stale count costs a client one needless write
  w.tick |= 63;                         // the next find_work() is a quiescent point
  {
    std::lock_guard lock(idle_mu_);
    auto it = std::find(idle_.begin(), idle_.end(), &w);
    if (it != idle_.end()) {
      idle_.erase(it);
      idle_count_.fetch_sub(1, std::memory_order_relaxed);
    }
  }
}

// ---- the source's side -------------------------------------------------------------

Task* Scheduler::new_task(Worker& w) { return pool_->allocate(w.cache); }

Task* Scheduler::new_external_task() {
  std::lock_guard lock(inject_mu_);
  return pool_->allocate(inject_cache_);
}

void Scheduler::accept(Worker& w, Task* t) {
  if (const std::uint8_t slot = plugin_slot(*t); slot != 0) plugin_task_started(w, slot);
  if (++w.sample_tick % 64 == 0) {
    t->flags |= kTaskSampled;
    std::lock_guard lock(sampled_mu_);
    sampled_[t] = std::chrono::steady_clock::now();
  }
  push_local(w, t, Origin::kAccepted);
}

void Scheduler::accept_external(Task* t) {
  serial_accepted_.fetch_add(1, std::memory_order_relaxed);  // statistics
  if (const std::uint8_t slot = plugin_slot(*t); slot != 0)
    external_plugin_live_[slot].fetch_add(1, std::memory_order_relaxed);
  inject(t);
}

Task* Scheduler::poll_source(Worker& w) {
  if (draining_.load(std::memory_order_relaxed)) return nullptr;
  if (!source_->poll(w)) return nullptr;
  if (Task* t = w.queue.pop()) {
    if (w.queue.size() != 0) maybe_wake();
    return t;
  }
  return w.local.pop_front();
}

bool Scheduler::busy() const { return source_->busy(); }

void Scheduler::notify_drain() {
  std::lock_guard lock(drain_mu_);
  drain_cv_.notify_all();
}

bool Scheduler::watch(int fd, std::string* error) {
  std::lock_guard lock(bells_mu_);
  // Every Worker object, retired ones too (a grow restarts them with their epoll set).
  const std::uint32_t alloc = allocated_.load(std::memory_order_relaxed);  // under bells_mu_
  for (std::uint32_t i = 0; i < alloc; ++i) {
    epoll_event ev{};
    ev.events = kClientBellEvents;
    if (::epoll_ctl(workers_[i]->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
      *error = std::string("epoll_ctl: ") + std::strerror(errno);
      for (std::uint32_t j = 0; j < i; ++j)
        ::epoll_ctl(workers_[j]->epfd, EPOLL_CTL_DEL, fd, nullptr);
      return false;
    }
  }
  bell_fds_.push_back(fd);
  return true;
}

void Scheduler::unwatch(int fd) {
  std::lock_guard lock(bells_mu_);
  auto it = std::find(bell_fds_.begin(), bell_fds_.end(), fd);
  if (it == bell_fds_.end()) return;
  bell_fds_.erase(it);
  const std::uint32_t alloc = allocated_.load(std::memory_order_relaxed);  // under bells_mu_
  for (std::uint32_t i = 0; i < alloc; ++i)
    ::epoll_ctl(workers_[i]->epfd, EPOLL_CTL_DEL, fd, nullptr);
}

void Scheduler::cancel_parked_if(const std::function<bool(const Task&)>& which) {
  events_->cancel_if(which);
}

// ---- moving between pools, plugins ---------------------------------------------------

bool Scheduler::move_task(Worker& w, Task* t, std::uint32_t pool) {
  if (pool == config_.pool) {  // already here: a yield
    push_local(w, t);
    return true;
  }
  if (config_.directory == nullptr) return false;
  const std::shared_ptr<Scheduler> target = config_.directory->find_pool(pool);
  return target != nullptr && target->adopt(t);
}

bool Scheduler::adopt(Task* t) {
  if (draining_.load(std::memory_order_relaxed)) return false;
  inject(t);
  return true;
}

std::vector<Task*> Scheduler::take_leftovers() {
  std::vector<Task*> out;
  {
    std::lock_guard lock(inject_mu_);
    out.assign(injected_.begin(), injected_.end());
    injected_.clear();
    injected_size_.store(0, std::memory_order_relaxed);
  }
  const std::uint32_t n = allocated_.load(std::memory_order_acquire);
  for (std::uint32_t i = 0; i < n; ++i) {
    Worker& w = *workers_[i];
    while (Task* t = w.queue.pop()) out.push_back(t);
    while (Task* t = w.local.pop_front()) out.push_back(t);
  }
  return out;
}

std::int64_t Scheduler::plugin_live(std::uint8_t slot) const {
  if (slot >= kMaxPluginSlots) return 0;
  std::int64_t sum = external_plugin_live_[slot].load(std::memory_order_relaxed);
  const std::uint32_t n = allocated_.load(std::memory_order_acquire);
  for (std::uint32_t i = 0; i < n; ++i)
    sum += workers_[i]->plugin_live[slot].load(std::memory_order_relaxed);
  return sum;
}

std::int64_t Scheduler::pool_id(std::string_view name) const {
  if (config_.directory != nullptr) return config_.directory->pool_id(name);
  return name == "default" ? std::int64_t{config_.pool} : -1;
}

// ---- self-sizing -------------------------------------------------------------------

void Scheduler::set_autosize(std::optional<AutosizeConfig> config, Autosizer::Resize resize) {
  std::unique_ptr<Autosizer> old;
  {
    std::lock_guard lock(autosize_mu_);
    old = std::move(autosizer_);
  }
  old.reset();  // joins its thread, outside autosize_mu_ (counters() may be waiting)
  if (!config || stop_.load(std::memory_order_relaxed)) return;
  auto next = std::make_unique<Autosizer>(*this, *config, std::move(resize));
  std::lock_guard lock(autosize_mu_);
  autosizer_ = std::move(next);
}

std::optional<AutosizeConfig> Scheduler::autosize() const {
  std::lock_guard lock(autosize_mu_);
  if (autosizer_ == nullptr) return std::nullopt;
  return autosizer_->config();
}

std::optional<AutosizeCounters> Scheduler::autosize_counters() const {
  std::lock_guard lock(autosize_mu_);
  if (autosizer_ == nullptr) return std::nullopt;
  return autosizer_->counters();
}

LoadSample Scheduler::load() const {
  LoadSample s;
  s.active = worker_count();  // R2
  for (std::uint32_t i = 0; i < s.active; ++i) {
    const Worker& w = *workers_[i];
    s.queued += w.queue.size() + w.backlog.load(std::memory_order_relaxed);
  }
  s.queued += injected_size_.load(std::memory_order_relaxed);
  // Every allocated worker, retired ones too, so that the count only grows. Acquire:
  // pairs with the release in resize().
  const std::uint32_t alloc = allocated_.load(std::memory_order_acquire);
  for (std::uint32_t i = 0; i < alloc; ++i)
    s.runs += workers_[i]->runs.load(std::memory_order_relaxed);
  // Relaxed: a hint, as for the busy workers' sharing; a retiring worker may still count.
  s.idle = std::min(hungry_.load(std::memory_order_relaxed), s.active);
  return s;
}

bool Scheduler::all_parked() const {
  const std::uint32_t n = worker_count();  // R2
  for (std::uint32_t i = 0; i < n; ++i) {
    // A1: seq_cst, pairs with A2 in park().
    if (!workers_[i]->parked.load(std::memory_order_seq_cst)) return false;
  }
  return true;
}

// ---- the long-step watch -----------------------------------------------------------

void Scheduler::check_long_steps(std::vector<Watch>& watch) {
  const auto now = std::chrono::steady_clock::now();
  const std::uint32_t n = worker_count();  // R2
  if (watch.size() < n) watch.resize(n);
  for (std::uint32_t i = 0; i < n; ++i) {
    Worker& w = *workers_[i];
    Watch& x = watch[i];
    const std::uint64_t runs = w.runs.load(std::memory_order_relaxed);
    if (runs != x.runs || w.looking.load(std::memory_order_relaxed)) {
      x = Watch{runs, now, false};
      continue;
    }
    const auto ran = std::chrono::duration_cast<std::chrono::milliseconds>(now - x.since);
    if (x.reported || ran < config_.long_step) continue;
    x.reported = true;  // once per long step
    // Only this thread writes the counter.
    w.stats.long_steps.store(w.stats.long_steps.load(std::memory_order_relaxed) + 1,
                             std::memory_order_relaxed);
    if (long_step_sink_) long_step_sink_(i, w.running.load(std::memory_order_relaxed), ran);
  }
}

void Scheduler::watch_loop() {
  pthread_setname_np(pthread_self(), "io-watch");
  if (config_.long_step.count() <= 0) return;
  const auto period = config_.long_step / 2;
  std::vector<Watch> watch;
  std::unique_lock lock(watch_mu_);
  while (!watch_stop_) {
    if (watch_cv_.wait_for(lock, period, [&] { return watch_stop_; })) break;
    lock.unlock();
    check_long_steps(watch);
    lock.lock();
  }
}

}  // namespace insideout::engine
