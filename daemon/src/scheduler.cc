#include "scheduler.h"

#include <pthread.h>
#include <sched.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <variant>

#include "frame_check.h"

namespace insideout::daemon {
namespace {

using shm::ErrorDetail;
using shm::Status;

constexpr std::uint16_t kTaskCancelled = 1u << 8;   // resumed by a cancelled timer
constexpr std::uint16_t kTaskSampled = 1u << 9;     // its latency is measured
constexpr std::uint16_t kTaskOverLimit = 1u << 10;  // its client has too many timers
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

// ---- StepContext -------------------------------------------------------------------

std::span<const std::byte> StepContext::env(const Task& t) const noexcept {
  ClientSlot& c = sched_.clients_.slot(t.client);
  if (t.flags & kTaskSerial) {
    const SerialJob* job;
    {
      std::lock_guard lock(c.jobs_mu);  // the table may grow meanwhile; the job does not move
      job = c.jobs[t.frame].get();
    }
    return std::as_bytes(std::span(job->env.data(), job->env.size()));
  }
  const auto len = static_cast<std::uint32_t>(t.w1 >> 32);
  if (t.flags & kTaskEnvInline) {
    return {reinterpret_cast<const std::byte*>(c.frame(t.frame)->inline_data), len};
  }
  const auto off = static_cast<std::uint32_t>(t.w1);
  return {reinterpret_cast<const std::byte*>(c.base + off), len};
}

void StepContext::spawn(StepFn fn, std::uint64_t w0, std::uint64_t w1, std::uint32_t aux,
                        Share share) noexcept {
  Task* t = sched_.pool_.allocate(worker_.cache);
  t->fn = fn;
  t->w0 = w0;
  t->w1 = w1;
  t->frame = aux;
  t->client = current_ != nullptr ? current_->client : 0;  // so that cancelled() sees the client
  t->flags = kTaskChild;
  worker_.stats.spawned.store(worker_.stats.spawned.load(std::memory_order_relaxed) + 1,
                              std::memory_order_relaxed);
  sched_.push_local(
      worker_, t,
      share == Share::kAlways ? Scheduler::Origin::kSpawned : Scheduler::Origin::kAccepted);
}

bool StepContext::cancelled(const Task& t) const noexcept {
  return sched_.clients_.slot(t.client).state.load(std::memory_order_relaxed) ==
         SlotState::kClosing;
}

void StepContext::child_done(Task* parent) noexcept {
  if (worker_.done_parent != parent) {
    sched_.flush_children(worker_);
    worker_.done_parent = parent;
  }
  if (++worker_.done_children == 64) sched_.flush_children(worker_);
}

void StepContext::resume(Task* t) noexcept { sched_.push_local(worker_, t); }

void StepContext::park_for(Task& t, std::chrono::nanoseconds d) noexcept {
  worker_.stats.timer_parks.fetch_add(1, std::memory_order_relaxed);
  sched_.park_timer(&t, std::chrono::steady_clock::now() + d);
}

ErrorDetail StepContext::cancel_detail() const noexcept {
  return sched_.shutting_down_.load(std::memory_order_relaxed) ? ErrorDetail::kShutdown
                                                               : ErrorDetail::kClientGone;
}

std::uint32_t StepContext::worker_index() const noexcept { return worker_.index; }

// ---- lifecycle ---------------------------------------------------------------------

Scheduler::Scheduler(SchedulerConfig config, const FunctionRegistry& registry, ClientTable& clients)
    : config_(std::move(config)), registry_(registry), clients_(clients) {
  std::uint32_t n = config_.workers;
  if (n == 0) n = config_.cpus.empty() ? 1 : static_cast<std::uint32_t>(config_.cpus.size());
  n = std::clamp<std::uint32_t>(n, 1, kMaxPoolWorkers);
  std::string err;
  bell_ = shm::BellPage::create(config_.pool, &err);
  if (!bell_.valid()) throw std::runtime_error("pool " + std::to_string(config_.pool) + ": " + err);
  std::lock_guard bells(bells_mu_);
  for (std::uint32_t i = 0; i < n; ++i) workers_[i] = make_worker(i);
  // Relaxed: no worker runs yet; start() publishes them by creating the threads.
  allocated_.store(n, std::memory_order_relaxed);
  count_.store(n, std::memory_order_relaxed);
  idle_.reserve(kMaxPoolWorkers);
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

bool Scheduler::attach_client(ClientSlot& slot, std::string* error) {
  if (slot.bell_fd < 0) {
    slot.bell_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (slot.bell_fd < 0) {
      *error = std::string("eventfd: ") + std::strerror(errno);
      return false;
    }
  }
  std::lock_guard lock(bells_mu_);
  // Every Worker object, retired ones too (a grow restarts them with their epoll set).
  const std::uint32_t alloc = allocated_.load(std::memory_order_relaxed);  // under bells_mu_
  for (std::uint32_t i = 0; i < alloc; ++i) {
    epoll_event ev{};
    ev.events = kClientBellEvents;
    if (::epoll_ctl(workers_[i]->epfd, EPOLL_CTL_ADD, slot.bell_fd, &ev) != 0) {
      *error = std::string("epoll_ctl: ") + std::strerror(errno);
      for (std::uint32_t j = 0; j < i; ++j)
        ::epoll_ctl(workers_[j]->epfd, EPOLL_CTL_DEL, slot.bell_fd, nullptr);
      return false;
    }
  }
  bell_fds_.push_back(slot.bell_fd);
  return true;
}

void Scheduler::start() {
  timer_thread_ = std::thread([this] { timer_loop(); });
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
  cancel_timers();
}

void Scheduler::cancel_timers() {
  // Parked continuations resume now, cancelled (run_task() says why).
  std::lock_guard lock(timer_mu_);
  while (!timers_.empty()) {
    Task* t = timers_.top().task;
    timers_.pop();
    clients_.slot(t->client).timers.fetch_sub(1, std::memory_order_relaxed);
    t->flags |= kTaskCancelled;
    inject(t);
  }
}

void Scheduler::pause() {
  paused_.store(true, std::memory_order_seq_cst);
  wake_all();  // a parked worker looks at the rings again, now to refuse
  cancel_timers();
}

void Scheduler::resume() {
  paused_.store(false, std::memory_order_seq_cst);
  wake_all();
}

bool Scheduler::busy() const {
  const std::uint32_t hw = clients_.high_water();
  for (std::uint32_t i = 0; i < hw; ++i) {
    ClientSlot& c = clients_.slot(i);
    const SlotState st = c.state.load(std::memory_order_acquire);
    if (st == SlotState::kFree || st == SlotState::kZombie || c.pool != config_.pool) continue;
    // Active slots hold one reference for the connection; closing ones may hold none.
    const std::uint32_t base = st == SlotState::kActive ? 1 : 0;
    if (c.refs.load(std::memory_order_acquire) > base) return true;
  }
  return false;
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
  std::lock_guard resize_lock(resize_mu_);
  stop_.store(true, std::memory_order_seq_cst);
  wake_all();
  const std::uint32_t alloc =
      allocated_.load(std::memory_order_relaxed);  // written under resize_mu_
  for (std::uint32_t i = 0; i < alloc; ++i) {
    if (workers_[i]->thread.joinable()) workers_[i]->thread.join();
  }
  {
    std::lock_guard lock(timer_mu_);
    timer_stop_ = true;
  }
  timer_cv_.notify_all();
  if (timer_thread_.joinable()) timer_thread_.join();
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
      spdlog::warn("worker {}: could not pin to CPU {}", w.index, w.cpu);
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
        if (config_.idle == shm::IdleStrategy::kSpinThenBlock && (i & 63) == 63 &&
            std::chrono::steady_clock::now() >= until) {
          break;
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
  flush_completions(w);
  pool_.drain(w.cache);
  w.alive.store(false,
                std::memory_order_release);  // R5: pairs with R6; no slot pointer is held now
}

void Scheduler::retire(Worker& w) {
  // Everything this worker still holds goes to the injection queue, where any worker of
  // the pool takes it (the timer heap and the client rings belong to the pool, not to
  // a worker, so nothing else is left behind).
  std::vector<Task*> moved;
  while (Task* t = w.queue.pop()) moved.push_back(t);
  w.local.drain_into(&moved);
  if (moved.empty()) return;
  {
    std::lock_guard lock(inject_mu_);
    injected_.insert(injected_.end(), moved.begin(), moved.end());
    injected_size_.store(injected_.size(), std::memory_order_relaxed);
  }
  maybe_wake();
}

void Scheduler::set_hungry(Worker& w, bool hungry) {
  if (w.hungry == hungry) return;
  w.hungry = hungry;
  // Relaxed: a hint for busy workers' sharing decisions; a stale value costs at most one
  // round of sharing (or 64 ticks of not sharing), never a lost task.
  if (hungry) {
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
    flush_children(w);     // bounds how long a parent waits for its last children
    flush_completions(w);  // and a completion behind busy local work
    w.share_hint = hungry_.load(std::memory_order_relaxed) != 0;  // read once per 64 looks
    if (w.share_hint && w.local.size() > 1) share(w);
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
    if (Task* t = poll_clients(w)) return t;
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
  flush_completions(w);
  if (injected_size_.load(std::memory_order_relaxed) != 0) {
    if (Task* t = take_injected()) return t;
  }
  if (Task* t = poll_clients(w)) return t;
  if (Task* t = steal(w)) return t;
  // Nothing to do: completions buffered on the way (rejected frames) go out now, and
  // the worker holds no slot pointer when it spins or parks.
  flush_completions(w);
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

Task* Scheduler::poll_clients(Worker& w) {
  if (draining_.load(std::memory_order_relaxed)) return nullptr;
  const std::uint32_t hw = clients_.high_water();
  if (hw == 0) return nullptr;
  const std::uint32_t start = w.client_cursor++ % hw;
  for (std::uint32_t i = 0; i < hw; ++i) {
    ClientSlot& c = clients_.slot((start + i) % hw);
    // S2: pairs with S1 in ClientTable::activate().
    if (c.state.load(std::memory_order_acquire) != SlotState::kActive || !c.has_segment ||
        c.pool != config_.pool || c.faulted.load(std::memory_order_relaxed)) {
      continue;
    }
    // A peek without the lock: is the slot at the consumer's position published?
    const std::uint64_t head = c.peek_head.load(std::memory_order_relaxed);
    shm::RingView view(c.base + c.geom.submit_ring_off, c.geom.ring_capacity);
    const std::uint64_t word = view.slot(head).load(std::memory_order_relaxed);
    if (static_cast<std::uint32_t>(word >> 32) != static_cast<std::uint32_t>(head + 1)) continue;
    if (c.draining.exchange(true, std::memory_order_acquire)) continue;  // another worker drains it
    if (before_accept_hook_) before_accept_hook_(c);
    const bool got =
        paused_.load(std::memory_order_relaxed) ? refuse_from(w, c) : accept_from(w, c);
    c.draining.store(false, std::memory_order_release);
    if (got) {
      if (Task* t = w.queue.pop()) {
        if (w.queue.size() != 0) maybe_wake();
        return t;
      }
      if (Task* t = w.local.pop_front()) return t;
    }
  }
  return nullptr;
}

bool Scheduler::accept_from(Worker& w, ClientSlot& c) {
  // The client may have at most max_inflight continuations in the daemon; the rest wait
  // in its ring (backpressure it sees as a full ring).
  if (held_back(c)) {
    c.backpressure.fetch_add(1, std::memory_order_relaxed);
    w.stats.backpressure.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  const std::uint32_t refs = c.refs.load(std::memory_order_relaxed);
  const std::uint32_t inflight = refs > 0 ? refs - 1 : 0;
  std::uint32_t budget = std::min(config_.accept_batch, c.max_inflight - inflight);
  std::uint32_t offs[256];
  budget = std::min<std::uint32_t>(budget, 256);
  // One reference per continuation it may accept, taken before any can complete, and
  // only from a slot that still has one: a client that hung up after poll_clients() saw
  // it active may have dropped its last reference already (its slot is a zombie).
  if (!clients_.try_acquire(c, budget)) return false;
  const std::size_t n = c.submit.pop_batch(std::span<std::uint32_t>(offs, budget));
  c.peek_head.store(c.submit.head(), std::memory_order_relaxed);
  if (n < budget) release_client(c, budget - static_cast<std::uint32_t>(n));
  if (n == 0) return false;
  w.accepted_batch = 0;
  // The frames were last written by the client's core: fetch their lines together
  // rather than one miss at a time (out-of-range offsets are harmless to prefetch).
  for (std::size_t i = 0; i < n; ++i) __builtin_prefetch(c.base + (offs[i] % c.geom.size));
  for (std::size_t i = 0; i < n; ++i) accept_one(w, c, offs[i]);
  // Relaxed: statistics, counted once per batch.
  c.accepted.fetch_add(w.accepted_batch, std::memory_order_relaxed);
  w.stats.accepted.store(w.stats.accepted.load(std::memory_order_relaxed) + w.accepted_batch,
                         std::memory_order_relaxed);
  // The client may be waiting for room in its ring.
  shm::event_notify(c.doorbells->space);
  return true;
}

bool Scheduler::refuse_from(Worker& w, ClientSlot& c) {
  // Each refusal is a completion in the client's ring: take no more than accept_from()
  // would (the completion ring has room for what the client may have in flight).
  if (held_back(c)) return false;
  const std::uint32_t refs = c.refs.load(std::memory_order_relaxed);
  const std::uint32_t inflight = refs > 0 ? refs - 1 : 0;
  std::uint32_t offs[256];
  const std::uint32_t budget =
      std::min<std::uint32_t>({config_.accept_batch, c.max_inflight - inflight, 256});
  // One reference each, as if accepted, and only from a live slot (see accept_from()):
  // complete_frame() takes them over, an offset that is no frame drops its own.
  if (!clients_.try_acquire(c, budget)) return false;
  const std::size_t n = c.submit.pop_batch(std::span<std::uint32_t>(offs, budget));
  c.peek_head.store(c.submit.head(), std::memory_order_relaxed);
  if (n < budget) release_client(c, budget - static_cast<std::uint32_t>(n));
  if (n == 0) return false;
  for (std::size_t i = 0; i < n; ++i) {
    if (!c.geom.frame_offset_valid(offs[i])) {
      c.rejected.fetch_add(1, std::memory_order_relaxed);
      c.dropped.fetch_add(1, std::memory_order_relaxed);
      w.stats.rejected.fetch_add(1, std::memory_order_relaxed);
      w.stats.failed.fetch_add(1, std::memory_order_relaxed);  // dropped: ends here
      release_client(c, 1);
      continue;
    }
    c.refused.fetch_add(1, std::memory_order_relaxed);
    w.stats.refused.fetch_add(1, std::memory_order_relaxed);
    complete_frame(w, c, offs[i], Status::kDraining, ErrorDetail::kNone, 0, 0, false);
  }
  shm::event_notify(c.doorbells->space);  // the client may be waiting for room in its ring
  return true;
}

void Scheduler::accept_one(Worker& w, ClientSlot& c, std::uint32_t off) {
  if (!c.geom.frame_offset_valid(off)) {
    // No frame to complete: count it and drop the reference taken for it.
    c.rejected.fetch_add(1, std::memory_order_relaxed);
    c.dropped.fetch_add(1, std::memory_order_relaxed);
    w.stats.rejected.fetch_add(1, std::memory_order_relaxed);
    w.stats.failed.fetch_add(1, std::memory_order_relaxed);  // dropped: ends here
    release_client(c, 1);
    return;
  }
  // Copy the descriptor out once; only the copy is used from here on.
  shm::Frame f;
  std::memcpy(&f, c.base + off, sizeof(f));
  auto reject = [&](Status st, ErrorDetail d) {
    // ClientCounters keeps unknown function ids apart from bad offsets, lengths and flags.
    (st == Status::kUnknownFunction ? c.rejected_function : c.rejected)
        .fetch_add(1, std::memory_order_relaxed);
    w.stats.rejected.fetch_add(1, std::memory_order_relaxed);
    complete_frame(w, c, off, st, d, 0, 0, false);  // takes over the reference
  };
  const FrameCheck checked = check_frame(f, c.geom, registry_);
  if (const auto* e = std::get_if<FrameError>(&checked)) return reject(e->status, e->detail);
  const ValidFrame& v = std::get<ValidFrame>(checked);
  Task* t = pool_.allocate(w.cache);
  t->fn = v.def->entry;
  t->w0 = v.arg;
  t->w1 = v.env;
  t->frame = off;
  t->client = static_cast<std::uint16_t>(c.index);
  t->flags = v.task_flags;
  if ((++w.accepted_batch + w.stats.accepted.load(std::memory_order_relaxed)) % 64 == 0) {
    t->flags |= kTaskSampled;
    std::lock_guard lock(sampled_mu_);
    sampled_[t] = std::chrono::steady_clock::now();
  }
  push_local(w, t, Origin::kAccepted);
}

bool Scheduler::submit_serial(ClientSlot& c, std::uint32_t job, std::uint32_t fn_id,
                              std::uint64_t arg, Status* status, ErrorDetail* detail) {
  const FunctionDef* def = registry_.find(fn_id);
  if (def == nullptr) {
    *status = Status::kUnknownFunction;
    *detail = ErrorDetail::kUnknownFunction;
    return false;
  }
  if (arg > def->max_arg) {
    *status = Status::kInvalidArgument;
    *detail = ErrorDetail::kArgumentOutOfRange;
    return false;
  }
  if (draining_.load(std::memory_order_relaxed)) {  // a pool being deleted or a daemon stopping
    *status = Status::kCancelled;
    *detail = ErrorDetail::kShutdown;
    return false;
  }
  if (paused_.load(std::memory_order_relaxed)) {  // drained by the control plane
    *status = Status::kDraining;
    *detail = ErrorDetail::kNone;
    return false;
  }
  c.refs.fetch_add(1, std::memory_order_relaxed);
  c.accepted.fetch_add(1, std::memory_order_relaxed);
  serial_accepted_.fetch_add(1, std::memory_order_relaxed);  // statistics
  Task* t;
  {
    std::lock_guard lock(inject_mu_);
    t = pool_.allocate(inject_cache_);
  }
  t->fn = def->entry;
  t->w0 = arg;
  t->w1 = 0;
  t->frame = job;
  t->client = static_cast<std::uint16_t>(c.index);
  t->flags = kTaskSerial;
  inject(t);
  return true;
}

// ---- running and completing --------------------------------------------------------

void Scheduler::run_task(Worker& w, StepContext& ctx, Task* t) {
  // A root continuation of a client that hung up, or one resumed by a cancelled timer,
  // is cancelled at its next step boundary.
  if (!(t->flags & kTaskChild)) {
    ClientSlot& c = clients_.slot(t->client);
    const bool gone = c.state.load(std::memory_order_relaxed) == SlotState::kClosing;
    if (t->flags & kTaskOverLimit) {
      t->flags = static_cast<std::uint16_t>(t->flags & ~kTaskOverLimit);
      ctx.reset();
      ctx.fail(Status::kBackpressure, ErrorDetail::kTooManyTimers);
      return finish(w, ctx, t, Step::kFail);
    }
    if ((t->flags & kTaskCancelled) || (gone && !(t->flags & kTaskNoCancel))) {
      ctx.reset();
      const auto [st, d] = cut_off_reason(c);
      ctx.fail(st, d);
      return finish(w, ctx, t, Step::kFail);
    }
  }
  std::uint64_t steps = 0;
  for (;;) {
    ctx.reset();
    ctx.set_current(t);
    Step s;
    try {
      s = t->fn(*t, ctx);
    } catch (...) {
      s = ctx.fail(Status::kInternal, ErrorDetail::kStepThrew);
    }
    ++steps;
    if (s == Step::kContinue) continue;
    w.stats.steps.store(w.stats.steps.load(std::memory_order_relaxed) + steps,
                        std::memory_order_relaxed);
    switch (s) {
      case Step::kYield:
        push_local(w, t);
        break;
      case Step::kPark:
      case Step::kWait:
        break;
      case Step::kComplete:
      case Step::kFail:
        finish(w, ctx, t, s);
        break;
      case Step::kContinue:
        break;
    }
    if (w.pushed) {
      w.pushed = false;
      if (w.queue.size() > 1) maybe_wake();
    }
    return;
  }
}

void Scheduler::finish(Worker& w, StepContext& ctx, Task* t, Step s) {
  if (t->flags & kTaskChild) {
    pool_.free(w.cache, t);
    return;
  }
  ClientSlot& c = clients_.slot(t->client);
  const Status st = s == Step::kComplete ? Status::kOk : ctx.status();
  const ErrorDetail d = s == Step::kComplete ? ErrorDetail::kNone : ctx.detail();
  if (t->flags & kTaskSampled) sample_done(t);
  if (t->flags & kTaskSerial) {
    auto& by = w.stats.failed_by[static_cast<std::size_t>(st) % kStatusSlots];
    if (st != Status::kOk)
      by.store(by.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    (st == Status::kOk ? c.completed : c.failed).fetch_add(1, std::memory_order_relaxed);
    auto& counter = st == Status::kOk ? w.stats.completed : w.stats.failed;
    counter.store(counter.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    SerialJob* job;
    {
      std::lock_guard lock(c.jobs_mu);
      job = c.jobs[t->frame].get();
    }
    job->status = st;
    job->detail = d;
    job->value = ctx.value();
    if (ctx.result_is_env()) job->data = job->env;
    const std::uint32_t idx = t->frame;
    pool_.free(w.cache, t);
    if (serial_sink_) serial_sink_(c, idx);
    release_client(c, 1);
  } else {
    const bool inline_result = ctx.result_is_env() && (t->flags & kTaskEnvInline);
    const std::uint32_t off = t->frame;
    pool_.free(w.cache, t);
    complete_frame(w, c, off, st, d, ctx.value(), ctx.result_len(),
                   inline_result);  // takes the reference
  }
}

std::pair<Status, ErrorDetail> Scheduler::cut_off_reason(const ClientSlot& c) const noexcept {
  // The daemon stopping closes every connection after its drain timeout: that is a
  // shutdown, not a client that went away.
  if (shutting_down_.load(std::memory_order_relaxed))
    return {Status::kCancelled, ErrorDetail::kShutdown};
  if (c.state.load(std::memory_order_relaxed) == SlotState::kClosing)
    return {Status::kCancelled, ErrorDetail::kClientGone};
  if (draining_.load(std::memory_order_relaxed))  // a pool being deleted
    return {Status::kCancelled, ErrorDetail::kShutdown};
  if (paused_.load(std::memory_order_relaxed)) return {Status::kDraining, ErrorDetail::kNone};
  return {Status::kCancelled, ErrorDetail::kShutdown};
}

void Scheduler::release_client(ClientSlot& c, std::uint32_t n) {
  clients_.release(c, n);
  if (draining_.load(std::memory_order_relaxed) || paused_.load(std::memory_order_relaxed)) {
    std::lock_guard lock(drain_mu_);
    drain_cv_.notify_all();
  }
}

void Scheduler::complete_frame(Worker& w, ClientSlot& c, std::uint32_t off, Status st,
                               ErrorDetail d, std::uint64_t value, std::uint32_t result_len,
                               bool result_inline) {
  shm::Frame* f = c.frame(off);
  f->result = value;
  f->result_len = result_len;
  f->detail = static_cast<std::uint32_t>(d);
  if (result_inline) f->flags = static_cast<std::uint16_t>(f->flags | shm::kFrameResultInline);
  f->status = static_cast<std::uint16_t>(st);
  // Completions are pushed in batches per client (one ring reservation, one doorbell,
  // one reference drop): see flush_completions().
  if (w.out_client != &c || w.out_n == Worker::kOutMax) flush_completions(w);
  w.out_client = &c;
  w.out_offs[w.out_n++] = off;
  if (st == Status::kOk) {
    ++w.out_ok;
  } else {
    ++w.out_failed;
    auto& by = w.stats.failed_by[static_cast<std::size_t>(st) % kStatusSlots];
    by.store(by.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }
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

void Scheduler::flush_completions(Worker& w) {
  if (w.out_n == 0) return;
  ClientSlot& c = *w.out_client;
  const std::span<const std::uint32_t> offs(w.out_offs, w.out_n);
  // Relaxed: statistics. Counted before the ring's release stores publish the frames, so
  // whoever has seen a completion also sees it counted (tests compare the counts then).
  if (w.out_ok) c.completed.fetch_add(w.out_ok, std::memory_order_relaxed);
  if (w.out_failed) c.failed.fetch_add(w.out_failed, std::memory_order_relaxed);
  w.stats.completed.store(w.stats.completed.load(std::memory_order_relaxed) + w.out_ok,
                          std::memory_order_relaxed);
  w.stats.failed.store(w.stats.failed.load(std::memory_order_relaxed) + w.out_failed,
                       std::memory_order_relaxed);
  std::size_t pushed = 0;
  shm::PushFailure why = shm::PushFailure::kNone;
  // Bounded whatever the client wrote: each round pushes at least one or stops.
  while (pushed < offs.size() && !c.faulted.load(std::memory_order_relaxed)) {
    // The ring's release stores publish the frames' results (P1 in ring.h).
    const std::size_t n = c.completion.try_push_batch(offs.subspan(pushed), &why);
    if (n == 0) break;
    pushed += n;
  }
  if (pushed < offs.size() && !c.faulted.load(std::memory_order_relaxed)) {
    // An honest client cannot fill its completion ring (it has no more frames than
    // slots), nor write a tag ahead of the daemon's own position: these are lost.
    fault_client(w, c,
                 why == shm::PushFailure::kCorrupt
                     ? "its completion ring is forged (a slot's tag is ahead of the daemon's "
                       "position)"
                     : "its completion ring is full (frames submitted twice, or a forged ring)");
  }
  if (pushed != 0) shm::event_notify(c.doorbells->completion, INT32_MAX);
  const std::uint32_t n = w.out_n;
  w.out_n = w.out_ok = w.out_failed = 0;
  w.out_client = nullptr;
  release_client(c, n);
}

void Scheduler::fault_client(Worker& w, ClientSlot& c, std::string why) {
  if (c.faulted.exchange(true, std::memory_order_relaxed)) return;  // one report per client
  w.stats.faulted.fetch_add(1, std::memory_order_relaxed);
  spdlog::warn("client {} (pid {}): {}; its completions are dropped and it is disconnected", c.id,
               c.pid, why);
  c.fault_reason = std::move(why);  // read by the daemon after the sink's hand-over
  if (fault_sink_) fault_sink_(c);
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
  const std::uint32_t hw = clients_.high_water();
  for (std::uint32_t i = 0; i < hw; ++i) {
    ClientSlot& c = clients_.slot(i);
    // A client accept_from() would refuse is no work: its held-back items wait for one
    // of its continuations to complete, on a worker that is awake to complete it.
    if (c.state.load(std::memory_order_acquire) != SlotState::kActive || !c.has_segment ||
        c.pool != config_.pool || c.faulted.load(std::memory_order_relaxed) || held_back(c)) {
      continue;
    }
    const std::uint64_t head = c.peek_head.load(std::memory_order_relaxed);
    shm::RingView view(c.base + c.geom.submit_ring_off, c.geom.ring_capacity);
    const std::uint64_t word = view.slot(head).load(std::memory_order_seq_cst);
    if (static_cast<std::uint32_t>(word >> 32) == static_cast<std::uint32_t>(head + 1)) return true;
  }
  return false;
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
    w.parked.store(false, std::memory_order_relaxed);
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

bool Scheduler::held_back(const ClientSlot& c) const noexcept {
  // At most max_inflight continuations of one client in the daemon; the rest wait in its
  // ring (backpressure it sees as a full ring). refs counts the connection's too.
  const std::uint32_t refs = c.refs.load(std::memory_order_relaxed);
  return (refs > 0 ? refs - 1 : 0) >= c.max_inflight;
}

void Scheduler::client_closing(ClientSlot& slot) {
  if (slot.bell_fd >= 0) {
    std::lock_guard lock(bells_mu_);
    auto it = std::find(bell_fds_.begin(), bell_fds_.end(), slot.bell_fd);
    if (it != bell_fds_.end()) {
      bell_fds_.erase(it);
      // The client may keep its copy open: without this its writes would still wake us.
      const std::uint32_t alloc = allocated_.load(std::memory_order_relaxed);  // under bells_mu_
      for (std::uint32_t i = 0; i < alloc; ++i)
        ::epoll_ctl(workers_[i]->epfd, EPOLL_CTL_DEL, slot.bell_fd, nullptr);
    }
  }
  std::lock_guard lock(timer_mu_);
  std::vector<TimerEntry> keep;
  while (!timers_.empty()) {
    TimerEntry e = timers_.top();
    timers_.pop();
    if (e.task->client == slot.index) {
      slot.timers.fetch_sub(1, std::memory_order_relaxed);
      e.task->flags |= kTaskCancelled;
      inject(e.task);
    } else {
      keep.push_back(e);
    }
  }
  for (auto& e : keep) timers_.push(e);
}

// ---- timers ------------------------------------------------------------------------

void Scheduler::park_timer(Task* t, std::chrono::steady_clock::time_point when) {
  bool earliest;
  {
    std::lock_guard lock(timer_mu_);
    // A task whose client hung up after its step began must not park: client_closing()
    // has already swept the timers (under timer_mu_, after the slot became kClosing), so
    // it would sleep out its whole timeout and keep the segment mapped meanwhile.
    const bool client_gone =
        !(t->flags & kTaskChild) &&
        clients_.slot(t->client).state.load(std::memory_order_seq_cst) == SlotState::kClosing;
    if (draining_.load(std::memory_order_relaxed) || paused_.load(std::memory_order_relaxed) ||
        client_gone) {
      t->flags |= kTaskCancelled;
      inject(t);
      return;
    }
    // Each client's parked continuations are bounded (--max-timers): the heap, and the
    // sweep when a client leaves, are bounded by the clients times that.
    ClientSlot& c = clients_.slot(t->client);
    if (c.max_timers != 0 && c.timers.load(std::memory_order_relaxed) >= c.max_timers) {
      t->flags |= kTaskOverLimit;
      inject(t);
      return;
    }
    c.timers.fetch_add(1, std::memory_order_relaxed);  // under timer_mu_, like every change
    earliest = timers_.empty() || when < timers_.top().when;
    timers_.push({when, t});
  }
  if (earliest) timer_cv_.notify_one();
}

void Scheduler::timer_loop() {
  pthread_setname_np(pthread_self(), "io-timers");
  std::unique_lock lock(timer_mu_);
  while (!timer_stop_) {
    if (timers_.empty()) {
      timer_cv_.wait(lock);
      continue;
    }
    const auto when = timers_.top().when;
    if (std::chrono::steady_clock::now() < when) {
      timer_cv_.wait_until(lock, when);
      continue;
    }
    Task* t = timers_.top().task;
    timers_.pop();
    clients_.slot(t->client).timers.fetch_sub(1, std::memory_order_relaxed);
    inject(t);
  }
}

}  // namespace insideout::daemon
