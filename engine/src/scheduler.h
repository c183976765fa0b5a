// The scheduler: pinned workers with local FIFO run queues that steal from each other,
// drain client submit rings fairly, run continuations in a trampoline and push
// completions back. An idle worker sleeps in epoll_wait on its own epoll set: its wake
// eventfd, and every client's bell eventfd (added with EPOLLEXCLUSIVE to every worker's
// set, so a client's ring wakes one sleeping worker), after announcing itself in the
// pool's bell page. One sleep for any number of clients; nothing polls on a timer.
// The pool's event queue (event_queue.h: timers, descriptors, signals, doorbells) is one
// more descriptor in every worker's set.
//
// Memory ordering of parking:
//   K1 (park: idle_count_.fetch_add, seq_cst, then re-check every queue) pairs with K2
//      (maybe_wake: fence seq_cst after pushing work, then load idle_count_): either the
//      parking worker sees the work or the pusher sees the parked worker and wakes it.
//   K3 (wake: a write to the worker's wake eventfd) needs no order of its own: the
//      eventfd stays readable until the worker's epoll_wait has seen it.
//   B1 (park: bell.sleepers.fetch_add, seq_cst, then a fence and the re-check of every
//      client ring) pairs with the client's fence before it loads sleepers in
//      shm::SubmitBell::ring(): the worker sees the item or the client writes its eventfd.
//
// Memory ordering of resizing (Scheduler::resize(), one control thread at a time):
//   R1 (grow: count_.store, release, after the Worker object at that index exists and its
//      thread runs) pairs with R2 (count_.load, acquire, in steal()/any_work()/...): a
//      reader that sees the count sees every Worker below it. Worker objects are never
//      freed while the scheduler lives (a retired one is reused by the next grow), so a
//      stealer that read a larger count a moment ago still reads valid memory.
//   R3 (shrink: retiring.store, seq_cst, then K3 on its wake word) pairs with R4 (the
//      worker's retiring loads: relaxed every 64 looks, seq_cst in park() after it read
//      its wake word): the worker either sees the flag before it sleeps or the futex
//      word changed under it.
//   R5 (alive.store(false), release, by the worker after its last look at any client
//      slot) pairs with R6 (alive.load, acquire, in quiescent_since()).
//
// Memory ordering of the autosize controller's sleep (autosize.h):
//   A1 (Autosizer::loop: UnparkBell::armed.store(true), seq_cst, then all_parked()'s
//      seq_cst loads of `parked`) pairs with A2 (park(): parked.store(false), seq_cst, then
//      armed.load, seq_cst): the controller sees the worker awake, or the worker sees the
//      bell armed and rings it, so the controller never sleeps through a busy pool.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <queue>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "autosize.h"
#include "event_queue.h"
#include "insideout/shm/bell.h"
#include "insideout/shm/futex.h"
#include "lanes.h"
#include "registry.h"
#include "source.h"
#include "step_context.h"
#include "task.h"
#include "work_queue.h"

namespace insideout::engine {

// The most workers one pool (one Scheduler) may have.
inline constexpr std::uint32_t kMaxPoolWorkers = 256;

class Scheduler;

// Where a continuation that moves between pools (Step::kMoved) finds its target; the
// daemon implements it over its pools. Any worker may call it.
class PoolDirectory {
 public:
  virtual ~PoolDirectory() = default;
  virtual std::shared_ptr<Scheduler> find_pool(std::uint32_t id) const = 0;
  virtual std::int64_t pool_id(std::string_view name) const = 0;  // -1: none
};

struct SchedulerConfig {
  std::uint32_t pool = 0;     // client slots with this ClientSlot::pool are this scheduler's
  std::uint32_t workers = 0;  // 0: one per CPU in `cpus`
  std::vector<int> cpus;      // CPUs to pin to (worker i gets cpus[i % size]); empty: no pinning
  shm::IdleStrategy idle = shm::IdleStrategy::kSpinThenBlock;
  std::chrono::microseconds spin{50};  // how long kSpinThenBlock spins before it blocks
  std::uint32_t accept_batch = 64;     // offsets taken from one client per visit (fairness)
  std::uint32_t queue_capacity = 1024;
  std::string thread_prefix = "io-w";
  // A step (one run of a task, its trampoline included) that has run this long is
  // reported (set_long_step_sink(), WorkerStats::long_steps); 0: not watched.
  std::chrono::milliseconds long_step{1000};
  // Shared by every pool of a host, so that a continuation can move between pools and be
  // freed by any of them; it must outlive them. Null: the scheduler has its own.
  TaskPool* tasks = nullptr;
  const PoolDirectory* directory = nullptr;
  // The event queue's backend (--event-backend).
  EventBackendKind event_backend = EventBackendKind::kAuto;
};

inline constexpr std::size_t kStatusSlots = 16;  // > every shm::Status value

// Continuation latency, accept to completion, of one continuation in 64 (sampled so the
// hot path pays nothing for the others): log2 buckets of nanoseconds. Relaxed counters:
// statistics only.
struct LatencyHistogram {
  static constexpr std::size_t kBuckets = 40;  // bucket i: [2^i, 2^(i+1)) ns
  std::atomic<std::uint64_t> counts[kBuckets] = {};
  std::atomic<std::uint64_t> count{0}, sum_ns{0};
  void add(std::uint64_t ns) noexcept;
};

// Statistics of one worker; each written by its worker only (relaxed).
struct alignas(shm::kCacheLine) WorkerStats {
  std::atomic<std::uint64_t> steps{0};
  std::atomic<std::uint64_t> accepted{0};
  std::atomic<std::uint64_t> completed{0};
  std::atomic<std::uint64_t> failed{0};
  std::atomic<std::uint64_t> rejected{0};
  std::atomic<std::uint64_t> steals{0};
  std::atomic<std::uint64_t> parks{0};
  std::atomic<std::uint64_t> timer_parks{0};  // parks on the event queue (any kind of wait)
  std::atomic<std::uint64_t> backpressure{0};
  std::atomic<std::uint64_t> spawned{0};
  std::atomic<std::uint64_t> faulted{0};     // clients this worker found with unusable rings
  std::atomic<std::uint64_t> long_steps{0};  // steps over config.long_step (the watch's count)
  std::atomic<std::uint64_t> refused{0};     // frames answered kDraining, never accepted
  std::atomic<std::uint64_t> failed_by[kStatusSlots] = {};  // completions by shm::Status
};

struct alignas(shm::kCacheLine) Worker {
  std::uint32_t index = 0;
  int cpu = -1;
  std::atomic<pid_t> tid{0};
  WorkQueue queue;
  // Owner only: work no thief can see. It is where new work goes while no worker is
  // hungry (so a busy pool queues and takes work without atomics), and what does not fit
  // in `queue`. Fair by client (lanes.h).
  LaneQueue local;
  bool hungry = false;      // counted in Scheduler::hungry_
  bool share_hint = false;  // hungry_ != 0, as last read (every 64 looks)
  TaskPool::Cache cache;
  std::uint32_t rng = 0;
  std::uint32_t tick = 0;
  bool pushed = false;  // this step pushed work others could take
  // The long-step watch: `runs` counts the tasks this worker has started running and
  // `running` is the step it started last; `looking` says it has nothing to run (spins or
  // sleeps). Written by the worker (relaxed: a watch, not a protocol), read by the watch
  // thread; a run is long when `runs` stays put while `looking` is false.
  std::atomic<std::uint64_t> runs{0};
  std::atomic<io_step_fn> running{nullptr};
  std::atomic<bool> looking{true};
  // Where it sleeps: an epoll set of its wake eventfd and every client bell of the pool.
  // Created with the Worker, closed by the Scheduler's destructor.
  int epfd = -1;
  int wake_fd = -1;
  std::atomic<bool> parked{false};
  // Tasks in `local` (which only the owner may touch), as of its last 64th look: what the
  // autosize controller counts as waiting there. Relaxed: an estimate.
  std::atomic<std::uint32_t> backlog{0};
  // Resizing: set by the control thread (R3); the worker hands its work over and exits.
  std::atomic<bool> retiring{false};
  // True while a thread runs this worker's loop (R5/R6).
  std::atomic<bool> alive{false};
  // Quiescent-state counter: bumped (seq_cst) at the top of the loop, where the worker
  // holds no pointer into any client segment that is not pinned by a reference.
  alignas(shm::kCacheLine) std::atomic<std::uint64_t> epoch{0};
  WorkerStats stats;
  std::thread thread;
  std::uint32_t sample_tick = 0;  // one accepted task in 64 has its latency measured
  // Finished children of one parent not yet subtracted from its count.
  Task* done_parent = nullptr;
  std::uint64_t done_children = 0;
  // Tasks running plugin code, by plugin slot: +1 where one starts, -1 where one ends
  // (possibly on another worker or pool), so only the sum means anything. Written by
  // this worker only (relaxed), summed by Scheduler::plugin_live().
  std::atomic<std::int64_t> plugin_live[kMaxPluginSlots] = {};

  explicit Worker(std::uint32_t capacity) : queue(capacity) {}
};

// The counts, one definition each (docs/ARCHITECTURE.md, "Counters"). Once nothing is in
// flight, submitted == completed + failed.
//   submitted  every continuation a pool took from a client: each offset a worker popped
//              from a submit ring, and each serialized or control-plane continuation
//              accepted to run; = accepted + rejected + refused
//   accepted   taken on to run (a valid frame, or a serialized continuation)
//   rejected   offsets refused as invalid (answered with an error, or dropped when they
//              are no frame: nothing to answer)
//   refused    frames answered kDraining while the pool was drained, never run
//   completed  ended with kOk
//   failed     ended otherwise: a failed or cancelled step, a rejection, a refusal, a drop
// A serialized or control-plane submission refused before it reaches a pool (unknown
// function, argument out of range, backpressure, draining) is answered at once on its
// socket or call and counted in none of them.
struct SchedulerTotals {
  std::uint64_t long_steps = 0;
  std::uint64_t steps = 0, accepted = 0, completed = 0, failed = 0, rejected = 0, steals = 0,
                parks = 0, timer_parks = 0, backpressure = 0, spawned = 0, faulted = 0, refused = 0,
                submitted = 0;
  std::uint64_t failed_by[kStatusSlots] =
      {};  // completions by shm::Status (failures and rejections)

  SchedulerTotals& operator+=(const SchedulerTotals& o) noexcept {
    steps += o.steps;
    accepted += o.accepted;
    completed += o.completed;
    failed += o.failed;
    rejected += o.rejected;
    steals += o.steals;
    parks += o.parks;
    timer_parks += o.timer_parks;
    backpressure += o.backpressure;
    spawned += o.spawned;
    faulted += o.faulted;
    long_steps += o.long_steps;
    refused += o.refused;
    submitted += o.submitted;
    for (std::size_t k = 0; k < kStatusSlots; ++k) failed_by[k] += o.failed_by[k];
    return *this;
  }
};

class Scheduler {
 public:
  // `source` is where the pool's work comes from (the daemon's clients, the embedded
  // runtime's callers); it lives as long as the scheduler.
  Scheduler(SchedulerConfig config, const FunctionRegistry& registry,
            std::unique_ptr<WorkSource> source);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Starts the workers; returns once each has recorded its tid (bounded: 2 s).
  void start();
  // Stops taking work from client rings, cancels parked continuations, and waits until
  // every accepted continuation has completed or `timeout` passed. True when drained.
  bool drain(std::chrono::milliseconds timeout);
  // The first half of drain(): stop taking work, cancel parked continuations; no wait.
  // `shutdown`: the daemon is going away, and what is cut off says so (kShutdown).
  void begin_drain(bool shutdown = false);
  // A drain the control plane can undo: while paused, work offered to the pool (client
  // rings and the serialized path) is completed at once with kDraining, and parked
  // continuations are cut off with kDraining; resume() takes work again.
  void pause();
  void resume();
  bool paused() const noexcept { return paused_.load(std::memory_order_relaxed); }
  // Waits until no continuation accepted from this pool's clients is in flight, at most
  // `timeout`; true when none is.
  bool wait_idle(std::chrono::milliseconds timeout);
  // Some continuation accepted from this pool's clients has not completed yet.
  bool busy() const;
  // Joins the workers (after drain()).
  void stop();

  // Live resizing (one caller at a time; not concurrently with start()/stop()): starts
  // workers in the next free slots (pinned per config.cpus, index modulo its size) and
  // waits until each has recorded its tid, or retires the highest ones: each hands its
  // queued work to the injection queue, flushes its batched completions and children,
  // and exits; they are joined before this returns. Returns the new size.
  std::uint32_t resize(std::uint32_t workers);
  const SchedulerConfig& config() const noexcept { return config_; }

  // Wakes every worker.
  void wake_all();
  // The pool's bell page, which every client of the pool maps read-only.
  int bell_fd() const noexcept { return bell_.fd(); }
  const shm::PoolBell* bell_page() const noexcept { return bell_.page(); }

  // Called on the watch thread when a step has run past config.long_step: the worker,
  // the step it is in, how long it has run. Set before start().
  using LongStepSink =
      std::function<void(std::uint32_t worker, io_step_fn step, std::chrono::milliseconds ran)>;
  void set_long_step_sink(LongStepSink sink) { long_step_sink_ = std::move(sink); }

  // ---- for the source (source.h) ----
  WorkSource& source() noexcept { return *source_; }
  // A task for a new root continuation, from worker w's cache / from any other thread.
  Task* new_task(Worker& w);
  Task* new_external_task();
  // Hands a root task over: on worker w (in WorkSource::poll()) / from any other thread.
  void accept(Worker& w, Task* t);
  void accept_external(Task* t);
  // Every worker's epoll set watches `fd` (EPOLLIN, edge-triggered, EPOLLEXCLUSIVE: a
  // write wakes one sleeping worker), or no longer does. False (and *error) when the
  // kernel refuses.
  bool watch(int fd, std::string* error);
  void unwatch(int fd);
  // Parked tasks for which `which` is true resume at once, cancelled.
  void cancel_parked_if(const std::function<bool(const Task&)>& which);
  // The pool's event queue: waits on timers, descriptors, signals and doorbells.
  EventQueue& events() noexcept { return *events_; }
  // Tasks the event queue resumed, from any thread / on worker w (the first to run next).
  void inject_batch(std::vector<Task*>& tasks);
  void push_resumed(Worker& w, std::span<Task*> tasks);
  // Makes one sleeping worker look (the event queue has something for it).
  void poke() { maybe_wake(); }
  // The source's accepted work went down while draining or paused: wake drain().
  void notify_drain();
  bool draining() const noexcept { return draining_.load(std::memory_order_relaxed); }
  bool shutting_down() const noexcept { return shutting_down_.load(std::memory_order_relaxed); }

  const FunctionRegistry& registry() const noexcept { return registry_; }
  // R2: pairs with R1 in resize().
  std::uint32_t worker_count() const noexcept { return count_.load(std::memory_order_acquire); }
  const Worker& worker(std::uint32_t i) const noexcept { return *workers_[i]; }
  SchedulerTotals totals() const;
  const LatencyHistogram& latency() const noexcept { return latency_; }
  // Grace periods for ClientTable: a snapshot of the workers' epochs, and whether every
  // worker has passed a quiescent point since it was taken.
  std::vector<std::uint64_t> epochs() const;
  bool quiescent_since(const std::vector<std::uint64_t>& snapshot) const;
  std::size_t task_bytes_reserved() const { return pool_->bytes_reserved(); }

  // ---- self-sizing (autosize.h) ----
  // Starts the pool's autosize controller with `config` (validated by the caller:
  // check_autosize()), replacing one that runs; nullopt stops it. `resize` is how it
  // applies a count (default: resize()). Not from the controller's own thread.
  void set_autosize(std::optional<AutosizeConfig> config, Autosizer::Resize resize = {});
  std::optional<AutosizeConfig> autosize() const;
  std::optional<AutosizeCounters> autosize_counters() const;
  // One look at the pool's load (relaxed loads of counters the workers keep anyway);
  // `now` is left to the caller.
  LoadSample load() const;
  // Every running worker sleeps in park() (A1/A2).
  bool all_parked() const;
  // Where the controller sleeps while every worker is parked; the first worker to wake
  // rings it.
  struct UnparkBell {
    std::atomic<bool> armed{false};
    std::mutex mu;
    std::condition_variable cv;
    std::uint64_t rings = 0;  // under mu
  };
  UnparkBell& unpark_bell() noexcept { return unpark_bell_; }

  // Tasks of plugin slot `slot` started minus ended on this pool's workers (a task may
  // start on one pool and end on another: only the sum over every pool is a count).
  // Once no new task can get the slot and a grace period has passed, a sum of 0 means
  // no code of that plugin can run any more.
  std::int64_t plugin_live(std::uint8_t slot) const;
  // The pool's id by name (PoolDirectory), -1 when there is none.
  std::int64_t pool_id(std::string_view name) const;
  // Takes a task that moves here from another pool (Step::kMoved) or is handed over by
  // a deleted pool. False when this pool is draining.
  bool adopt(Task* t);
  // After stop(): the tasks left in the queues (moved in from other pools), for
  // another pool to adopt.
  std::vector<Task*> take_leftovers();

 private:
  friend class StepContext;

  void run(Worker& w);
  Task* find_work(Worker& w);
  Task* poll_source(Worker& w);
  void cancel_waits();
  Task* steal(Worker& w);
  Task* take_injected();
  void run_task(Worker& w, StepContext& ctx, Task* t);
  // One run of `t` up to its next yield, park or end; true: it yielded and nothing else
  // waits on this worker, so run_task() runs it again at once.
  bool run_steps(Worker& w, StepContext& ctx, Task* t);
  void finish(Worker& w, StepContext& ctx, Task* t, Step s);
  void flush_children(Worker& w);
  enum class Origin { kSpawned, kAccepted, kResumed };
  void push_local(Worker& w, Task* t, Origin origin = Origin::kResumed);
  void set_hungry(Worker& w, bool hungry);
  void share(Worker& w);
  void inject(Task* t);
  void maybe_wake();
  void park(Worker& w);
  bool any_work(const Worker& w);
  void retire(Worker& w);
  std::unique_ptr<Worker> make_worker(std::uint32_t i);  // under bells_mu_
  void wake(Worker& w);
  void start_worker(std::uint32_t i);
  void wait_for_tids(std::uint32_t from, std::uint32_t to);
  bool move_task(Worker& w, Task* t, std::uint32_t pool);
  void plugin_task_started(Worker& w, std::uint8_t slot) noexcept {
    auto& n = w.plugin_live[slot];
    n.store(n.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }
  void plugin_task_ended(Worker& w, std::uint8_t slot) noexcept {
    auto& n = w.plugin_live[slot];
    n.store(n.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
  }
  // Cuts a task off at a step boundary: its code drops its state (kTaskOwnsState), and it
  // ends with `st`/`d`.
  void cut_off(Worker& w, StepContext& ctx, Task* t, shm::Status st, shm::ErrorDetail d);

  // The long-step watch, on its own thread every config.long_step / 2 (a thread of its
  // own, since what it watches for is every worker stuck).
  void watch_loop();
  struct Watch {
    std::uint64_t runs = 0;
    std::chrono::steady_clock::time_point since;
    bool reported = false;
  };
  void check_long_steps(std::vector<Watch>& watch);
  LongStepSink long_step_sink_;

  SchedulerConfig config_;
  const FunctionRegistry& registry_;
  std::unique_ptr<WorkSource> source_;
  std::unique_ptr<TaskPool> own_pool_;
  TaskPool* pool_;
  // Plugin tasks started off the workers (the serialized path): see plugin_live().
  std::atomic<std::int64_t> external_plugin_live_[kMaxPluginSlots] = {};
  // Fixed capacity: never reallocated while workers run (stealers index it). Slots
  // [0, count_) run; slots past it up to allocated_ hold retired workers, kept for reuse.
  std::unique_ptr<Worker> workers_[kMaxPoolWorkers];
  std::atomic<std::uint32_t> count_{0};
  std::atomic<std::uint32_t> allocated_{0};  // written by resize() (under resize_mu_), released
  std::mutex resize_mu_;
  std::mutex tid_mu_;  // a new worker announces its kernel tid (wait_for_tids())
  std::condition_variable tid_cv_;

  // The pool's bell page, and the client bells every worker's epoll set watches.
  shm::BellPage bell_;
  std::mutex bells_mu_;  // bell_fds_ and the epoll sets' membership
  std::vector<int> bell_fds_;

  // Sampled continuations: when each was accepted (see LatencyHistogram).
  void sample_done(const Task* t);
  std::mutex sampled_mu_;
  std::unordered_map<const Task*, std::chrono::steady_clock::time_point> sampled_;
  LatencyHistogram latency_;

  std::atomic<bool> stop_{false};
  // Serialized continuations accepted (submit_serial() runs outside the workers).
  std::atomic<std::uint64_t> serial_accepted_{0};
  std::atomic<bool> draining_{false};
  // Relaxed, as draining_: a worker that misses a change takes (or refuses) one more
  // batch; pause()/resume() wake every worker after storing it.
  std::atomic<bool> paused_{false};
  std::atomic<bool> shutting_down_{false};  // set with draining_ when the daemon stops

  // Workers that found nothing to do (spinning or parked): while there are any, busy
  // workers put new work in their shared queues and share their private ones.
  alignas(shm::kCacheLine) std::atomic<std::uint32_t> hungry_{0};
  // Idle workers; idle_count_ is the announcement (K1/K2).
  alignas(shm::kCacheLine) std::atomic<std::uint32_t> idle_count_{0};
  std::mutex idle_mu_;
  std::vector<Worker*> idle_;

  // Work from outside the workers (the event queue, the serialized path).
  alignas(shm::kCacheLine) std::atomic<std::size_t> injected_size_{0};
  std::mutex inject_mu_;
  std::deque<Task*> injected_;
  TaskPool::Cache inject_cache_;  // under inject_mu_

  // Drain: completions notify while draining.
  std::mutex drain_mu_;
  std::condition_variable drain_cv_;

  std::unique_ptr<EventQueue> events_;

  UnparkBell unpark_bell_;
  mutable std::mutex autosize_mu_;  // autosizer_ (not its work: it runs on its own thread)
  std::unique_ptr<Autosizer> autosizer_;

  std::mutex watch_mu_;
  std::condition_variable watch_cv_;
  bool watch_stop_ = false;
  std::thread watch_thread_;
};

}  // namespace insideout::engine
