// The seam between the engine and its host: where a pool's work comes from and where
// its results go. The daemon's clients (daemon/src/client_source.h) and the embedded
// runtime (runtime.cc) are the two hosts; the engine knows nothing else of them.
//
// A source makes "root" tasks (its own, with Task::frame, client and the source's flag
// bits meaning what it wants) and hands them to the engine with Scheduler::accept();
// children that continuation code spawns belong to the engine. Everything here is called
// on the pool's workers unless said otherwise, and must not block.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "insideout/shm/layout.h"
#include "task.h"

namespace insideout::engine {

class Scheduler;
struct Worker;

// How a root task ended.
struct Outcome {
  shm::Status status = shm::Status::kOk;
  shm::ErrorDetail detail = shm::ErrorDetail::kNone;
  std::uint64_t value = 0;
  std::uint32_t result_len = 0;  // bytes of result data: the first bytes of its environment
  bool result_is_env = false;
  std::string_view message;  // the function's failure message, if it gave one
};

class WorkSource {
 public:
  virtual ~WorkSource() = default;
  // Called once by the scheduler that hosts it, before any worker runs.
  virtual void bind(Scheduler& s) { sched_ = &s; }

  // New work for worker `w`: root tasks made with Scheduler::new_task() and handed over
  // with Scheduler::accept(). True when it accepted any. A bounded batch per call.
  virtual bool poll(Worker& w) = 0;
  // Asked by a worker about to sleep, after it announced itself (see Scheduler::park()):
  // would poll() find work? Nothing here may loop on what an untrusted party wrote.
  virtual bool has_work() = 0;
  // A root task's environment (writable only for kTaskOutput tasks).
  virtual std::span<std::byte> env(const Task& t) = 0;
  // The owner of task `t` (a root or its children) has gone: it should stop at its
  // next step boundary (StepContext::cancelled()).
  virtual bool gone(const Task& t) = 0;
  // Why a root task is cut off at a step boundary (its owner gone, the pool draining).
  virtual Outcome cut_off_reason(const Task& t) = 0;
  // Root task `t` ended; the engine frees it right after.
  virtual void complete(Worker& w, Task& t, const Outcome& o) = 0;
  // Pushes what complete() buffered for `w` (it may batch completions per owner).
  virtual void flush(Worker& w) = 0;
  // Task `t` parks on a timer: false when its owner is over its limit of parked tasks
  // (the engine then fails it). park_ends() follows every park_begins() that said true.
  virtual bool park_begins(const Task& t) = 0;
  virtual void park_ends(const Task& t) = 0;
  // Some root task was accepted and has not completed. Any thread.
  virtual bool busy() const = 0;

  // ---- the event queue (event_queue.h); called under its lock: no blocking ----
  // Root task `t`'s deadline (CLOCK_MONOTONIC ns), 0 when none. Its gone() says true
  // once it has passed, and cut_off_reason() says kDeadlineExceeded.
  virtual std::int64_t deadline_ns(const Task&) { return 0; }
  // `t` is parked as wait `id` (EventQueue::cancel(id) cancels it at once), until the
  // park_ends() that follows.
  virtual void parked(const Task&, std::uint64_t /*id*/) {}
  // A descriptor `t`'s owner handed over, by its id; -1 when none. Any worker.
  virtual int client_fd(const Task&, std::uint32_t /*id*/) { return -1; }
  // Doorbell `bell` of `t`'s owner: its key for EventQueue::park_key() and its counter
  // now. False when there is no such doorbell. Any worker.
  virtual bool doorbell(const Task&, std::uint32_t /*bell*/, std::uint64_t* /*key*/,
                        std::uint64_t* /*value*/) {
    return false;
  }
  // The counter of doorbell `key` now (after a park: a ring the park may have missed).
  virtual bool doorbell_value(std::uint64_t /*key*/, std::uint64_t* /*value*/) { return false; }

 protected:
  Scheduler* sched_ = nullptr;
};

}  // namespace insideout::engine
