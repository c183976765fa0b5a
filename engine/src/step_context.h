// What a step function may do besides returning its Step: read its environment, set its
// result, spawn children, resume a waiting continuation, park on a timer, move to another
// pool. It is the SDK's io_ctx (sdk/include/insideout/sdk/abi.h): plugins reach the same
// members through io_ctx_ops, built-ins call them directly.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "insideout/sdk/abi.h"
#include "insideout/shm/layout.h"
#include "task.h"

namespace insideout::engine {

class Scheduler;
struct Worker;

class StepContext : public io_ctx {
 public:
  StepContext(Scheduler& s, Worker& w) noexcept;

  static StepContext& of(io_ctx* c) noexcept { return *static_cast<StepContext*>(c); }

  // The environment bytes of `t` (inline, in the client's segment, or the serialized
  // job's), already validated at accept. Client memory may change underfoot; steps treat
  // it as data only. Empty for children.
  std::span<const std::byte> env(const Task& t) const noexcept;
  // IO_FN_OUTPUT functions: the environment, writable (else empty).
  std::span<std::byte> output(const Task& t) const noexcept;

  void set_value(std::uint64_t v) noexcept { value = v; }
  // The result data is the first `len` bytes of the environment (echo, or output()).
  void set_result_is_env(std::uint32_t len) noexcept {
    result_len_ = len;
    result_is_env_ = true;
  }
  Step fail(shm::Status s, shm::ErrorDetail d) noexcept {
    status_ = s;
    detail_ = d;
    return Step::kFail;
  }
  // Fails with a message (the SDK's fail): the client sees its first kMessageMax bytes.
  Step fail(std::uint32_t sdk_error, std::string_view message) noexcept;
  static constexpr std::size_t kMessageMax = 127;

  // A child continuation of the current one (same client); `aux` lands in the child's
  // `frame` field, which children may use. A child worth stealing (a spawner, a large
  // piece of work) goes to the shared queue at once; small ones (leaves) stay private
  // unless some worker is hungry.
  enum class Share : std::uint8_t { kAlways, kWhenHungry };
  void spawn(StepFn fn, std::uint64_t w0, std::uint64_t w1, std::uint32_t aux = kNoFrame,
             Share share = Share::kAlways) noexcept;
  // True when the continuation's client hung up: a long computation should stop and
  // fail with kCancelled.
  bool cancelled(const Task& t) const noexcept;
  // Why a cancelled() continuation stops: kShutdown while the daemon stops (it closes
  // every connection then), else kClientGone.
  shm::ErrorDetail cancel_detail() const noexcept;
  // A child of `parent` finished. The parent's w0 counts its outstanding children; the
  // worker subtracts finished ones in batches and resumes the parent (which must have
  // returned Step::kWait or be about to) when the count reaches zero.
  void child_done(Task* parent) noexcept;
  // Makes a waiting (Step::kWait) task runnable again on this worker.
  void resume(Task* t) noexcept;
  // With Step::kPark: the timer queue resumes the task (with task.fn) after `d`.
  void park_for(Task& t, std::chrono::nanoseconds d) noexcept;
  void park_until(Task& t, std::chrono::steady_clock::time_point when) noexcept;
  // With Step::kPark on success (0): the event queue resumes the task when `fd` is ready,
  // a signal comes, a doorbell rings, or at `timeout_ns` (0: none); *result says which
  // (IO_EV_* or -errno, sdk/abi.h). Nonzero: not parked; the step goes on.
  // park_doorbell() returns -EALREADY when the doorbell already moved past `seen`.
  int park_fd(Task& t, int fd, std::uint32_t events, std::int64_t timeout_ns,
              std::int64_t* result) noexcept;
  int park_signal(Task& t, int signo, std::int64_t timeout_ns, std::int64_t* result) noexcept;
  int park_doorbell(Task& t, std::uint32_t bell, std::uint64_t seen, std::int64_t timeout_ns,
                    std::int64_t* result) noexcept;
  // With Step::kMoved: the task continues on pool `pool`. False when there is none.
  bool move_to(Task& t, std::uint32_t pool) noexcept;

  std::uint32_t worker_index() const noexcept;
  void count_park() noexcept;
  std::uint32_t pool() const noexcept;

  // Read by the scheduler after the step.
  void set_current(const Task* t) noexcept { current_ = t; }
  const Task* current() const noexcept { return current_; }
  void reset() noexcept {
    value = 0;
    result_len_ = 0;
    result_is_env_ = false;
    status_ = shm::Status::kOk;
    detail_ = shm::ErrorDetail::kNone;
    message_len_ = 0;
  }
  std::uint64_t result_value() const noexcept { return value; }
  std::uint32_t result_len() const noexcept { return result_len_; }
  bool result_is_env() const noexcept { return result_is_env_; }
  shm::Status status() const noexcept { return status_; }
  shm::ErrorDetail detail() const noexcept { return detail_; }
  std::string_view message() const noexcept { return {message_, message_len_}; }

  Scheduler& scheduler() const noexcept { return sched_; }
  Worker& worker() const noexcept { return worker_; }

 private:
  Scheduler& sched_;
  Worker& worker_;
  const Task* current_ = nullptr;
  std::uint32_t result_len_ = 0;
  bool result_is_env_ = false;
  shm::Status status_ = shm::Status::kOk;
  shm::ErrorDetail detail_ = shm::ErrorDetail::kNone;
  std::uint32_t message_len_ = 0;
  char message_[kMessageMax + 1];
};

// A built-in's step, `Step f(Task&, StepContext&)`, as the io_step_fn the engine calls.
template <Step (*F)(Task&, StepContext&)>
io_step engine_step(io_task* t, io_ctx* c) noexcept {
  return static_cast<io_step>(F(*static_cast<Task*>(t), StepContext::of(c)));
}

}  // namespace insideout::engine
