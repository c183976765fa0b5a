// StepContext: the engine's services to a running step, and the same services as the
// SDK's C ABI (io_ctx_ops) for plugin code.
#include "step_context.h"

#include <errno.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "scheduler.h"

namespace insideout::engine {

using shm::ErrorDetail;
using shm::Status;

namespace {

// The engine's services as the SDK's C ABI sees them (io_ctx_ops).
const std::uint8_t* op_env(io_ctx* c, const io_task* t, std::size_t* len) {
  const auto e = StepContext::of(c).env(*static_cast<const Task*>(t));
  *len = e.size();
  return reinterpret_cast<const std::uint8_t*>(e.data());
}
std::uint8_t* op_output(io_ctx* c, const io_task* t, std::size_t* capacity) {
  const auto o = StepContext::of(c).output(*static_cast<const Task*>(t));
  *capacity = o.size();
  return reinterpret_cast<std::uint8_t*>(o.data());
}
void op_set_output_len(io_ctx* c, std::size_t len) {
  auto& ctx = StepContext::of(c);
  const auto env = ctx.current() != nullptr ? ctx.env(*ctx.current()).size() : 0;
  ctx.set_result_is_env(static_cast<std::uint32_t>(std::min(len, env)));
}
io_step op_fail(io_ctx* c, std::uint32_t err, const char* msg, std::size_t len) {
  return static_cast<io_step>(StepContext::of(c).fail(err, std::string_view(msg, len)));
}
void op_spawn(io_ctx* c, io_step_fn fn, std::uint64_t w0, std::uint64_t w1, std::uint32_t aux,
              std::uint32_t share) {
  StepContext::of(c).spawn(fn, w0, w1, aux,
                           share == IO_SHARE_WHEN_HUNGRY ? StepContext::Share::kWhenHungry
                                                         : StepContext::Share::kAlways);
}
void op_resume(io_ctx* c, io_task* t) { StepContext::of(c).resume(static_cast<Task*>(t)); }
int op_park_until(io_ctx* c, io_task* t, std::int64_t steady_ns) {
  StepContext::of(c).park_until(*static_cast<Task*>(t), std::chrono::steady_clock::time_point(
                                                            std::chrono::nanoseconds(steady_ns)));
  return 0;  // over the client's limit: the engine fails the task when it comes back
}
int op_move_to(io_ctx* c, io_task* t, std::uint32_t pool) {
  return StepContext::of(c).move_to(*static_cast<Task*>(t), pool) ? 0 : 1;
}
std::int64_t op_pool_id(io_ctx* c, const char* name, std::size_t len) {
  return StepContext::of(c).scheduler().pool_id(std::string_view(name, len));
}
std::uint32_t op_current_pool(io_ctx* c) { return StepContext::of(c).pool(); }
std::uint32_t op_worker_index(io_ctx* c) { return StepContext::of(c).worker_index(); }
int op_cancelled(io_ctx* c, const io_task* t) {
  return StepContext::of(c).cancelled(*static_cast<const Task*>(t)) ? 1 : 0;
}
std::int64_t op_now_ns(io_ctx*) {
  return std::chrono::steady_clock::now().time_since_epoch().count();
}
void op_owns_state(io_ctx*, io_task* t) {
  auto& task = *static_cast<Task*>(t);
  task.flags = static_cast<std::uint16_t>(task.flags | kTaskOwnsState);
}
void op_child_done(io_ctx* c, io_task* parent) {
  StepContext::of(c).child_done(static_cast<Task*>(parent));
}

int op_park_fd(io_ctx* c, io_task* t, int fd, std::uint32_t events, std::int64_t timeout_ns,
               std::int64_t* result) {
  return StepContext::of(c).park_fd(*static_cast<Task*>(t), fd, events, timeout_ns, result);
}
int op_park_signal(io_ctx* c, io_task* t, int signo, std::int64_t timeout_ns,
                   std::int64_t* result) {
  return StepContext::of(c).park_signal(*static_cast<Task*>(t), signo, timeout_ns, result);
}
int op_close_fd(io_ctx* c, int fd) { return StepContext::of(c).scheduler().events().close_fd(fd); }
std::int64_t op_deadline_ns(io_ctx* c, const io_task* t) {
  return StepContext::of(c).scheduler().source().deadline_ns(*static_cast<const Task*>(t));
}
int op_client_fd(io_ctx* c, const io_task* t, std::uint32_t id) {
  return StepContext::of(c).scheduler().source().client_fd(*static_cast<const Task*>(t), id);
}
int op_park_doorbell(io_ctx* c, io_task* t, std::uint32_t bell, std::uint64_t seen,
                     std::int64_t timeout_ns, std::int64_t* result) {
  return StepContext::of(c).park_doorbell(*static_cast<Task*>(t), bell, seen, timeout_ns, result);
}

constexpr io_ctx_ops kOps = {
    sizeof(io_ctx_ops),
    0,
    op_env,
    op_output,
    op_set_output_len,
    op_fail,
    op_spawn,
    op_resume,
    op_park_until,
    op_move_to,
    op_pool_id,
    op_current_pool,
    op_worker_index,
    op_cancelled,
    op_now_ns,
    op_owns_state,
    frame_allocate,
    frame_release,
    op_child_done,
    op_park_fd,
    op_park_signal,
    op_close_fd,
    op_deadline_ns,
    op_client_fd,
    op_park_doorbell,
};

}  // namespace

StepContext::StepContext(Scheduler& s, Worker& w) noexcept
    : io_ctx{&kOps, 0, 0, 0}, sched_(s), worker_(w) {}

std::span<const std::byte> StepContext::env(const Task& t) const noexcept {
  if (t.flags & kTaskChild) return {};
  return sched_.source_->env(t);
}

std::span<std::byte> StepContext::output(const Task& t) const noexcept {
  // Only functions registered with IO_FN_OUTPUT: for them the owner handed the buffer
  // over for writing.
  if ((t.flags & (kTaskOutput | kTaskChild)) != kTaskOutput) return {};
  return sched_.source_->env(t);
}

Step StepContext::fail(std::uint32_t sdk_error, std::string_view message) noexcept {
  message_len_ = static_cast<std::uint32_t>(std::min(message.size(), kMessageMax));
  std::memcpy(message_, message.data(), message_len_);
  message_[message_len_] = '\0';
  switch (sdk_error) {
    case IO_ERR_INVALID_ARGUMENT:
      return fail(Status::kInvalidArgument, ErrorDetail::kFunctionFailed);
    case IO_ERR_RESULT_TOO_LARGE:
      return fail(Status::kResultTooLarge, ErrorDetail::kFunctionFailed);
    case IO_ERR_CANCELLED:
      return fail(Status::kCancelled, cancel_detail());
    default:
      return fail(Status::kFailed, ErrorDetail::kFunctionFailed);
  }
}

void StepContext::spawn(StepFn fn, std::uint64_t w0, std::uint64_t w1, std::uint32_t aux,
                        Share share) noexcept {
  Task* t = sched_.pool_->allocate(worker_.cache);
  t->fn = fn;
  t->w0 = w0;
  t->w1 = w1;
  t->frame = aux;
  t->client = current_ != nullptr ? current_->client : 0;  // so that cancelled() sees the client
  // A child runs its parent's code: it keeps the parent's plugin loaded too.
  const std::uint8_t slot = current_ != nullptr ? plugin_slot(*current_) : 0;
  t->flags = with_plugin_slot(kTaskChild, slot);
  if (slot != 0) sched_.plugin_task_started(worker_, slot);
  worker_.stats.spawned.store(worker_.stats.spawned.load(std::memory_order_relaxed) + 1,
                              std::memory_order_relaxed);
  sched_.push_local(
      worker_, t,
      share == Share::kAlways ? Scheduler::Origin::kSpawned : Scheduler::Origin::kAccepted);
}

bool StepContext::cancelled(const Task& t) const noexcept {
  if (t.flags & kTaskCancelled) return true;
  return sched_.source_->gone(t);
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
  park_until(t, std::chrono::steady_clock::now() + d);
}

void StepContext::park_until(Task& t, std::chrono::steady_clock::time_point when) noexcept {
  count_park();
  const std::int64_t ns = when.time_since_epoch().count();
  (void)sched_.events().park_timer(&t, ns <= 0 ? 1 : ns);
}

int StepContext::park_fd(Task& t, int fd, std::uint32_t events, std::int64_t timeout_ns,
                         std::int64_t* result) noexcept {
  const int e = sched_.events().park_fd(&t, fd, events, timeout_ns, result);
  if (e == 0) count_park();
  return e;
}

int StepContext::park_signal(Task& t, int signo, std::int64_t timeout_ns,
                             std::int64_t* result) noexcept {
  const int e = sched_.events().park_signal(&t, signo, timeout_ns, result);
  if (e == 0) count_park();
  return e;
}

int StepContext::park_doorbell(Task& t, std::uint32_t bell, std::uint64_t seen,
                               std::int64_t timeout_ns, std::int64_t* result) noexcept {
  std::uint64_t key = 0, value = 0;
  WorkSource& src = sched_.source();
  if ((t.flags & kTaskChild) || !src.doorbell(t, bell, &key, &value)) {
    if (result != nullptr) *result = -EINVAL;
    return -EINVAL;
  }
  const std::uint64_t mask = (std::uint64_t{1} << 63) - 1;
  if ((value & mask) != (seen & mask)) {  // rung already: no wait
    if (result != nullptr) *result = static_cast<std::int64_t>(value & mask);
    return -EALREADY;
  }
  count_park();
  (void)sched_.events().park_key(&t, key, timeout_ns, result);
  // A ring between the look above and the park: the wait must not miss it. (The task
  // may already run elsewhere: only the source and the queue are touched here.)
  std::uint64_t now = 0;
  if (src.doorbell_value(key, &now) && (now & mask) != (seen & mask))
    sched_.events().notify_key(key, static_cast<std::int64_t>(now & mask));
  return 0;
}

void StepContext::count_park() noexcept {
  worker_.stats.timer_parks.store(worker_.stats.timer_parks.load(std::memory_order_relaxed) + 1,
                                  std::memory_order_relaxed);
}

bool StepContext::move_to(Task& t, std::uint32_t pool) noexcept {
  return sched_.move_task(worker_, &t, pool);
}

ErrorDetail StepContext::cancel_detail() const noexcept {
  return sched_.shutting_down_.load(std::memory_order_relaxed) ? ErrorDetail::kShutdown
                                                               : ErrorDetail::kClientGone;
}

std::uint32_t StepContext::worker_index() const noexcept { return worker_.index; }
std::uint32_t StepContext::pool() const noexcept { return sched_.config_.pool; }

}  // namespace insideout::engine
