// The built-in functions. Each entry step reads its argument from w0 (put there at
// accept) and its environment through the context.
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <chrono>

#include "registry.h"
#include "step_context.h"

namespace insideout::daemon {
namespace {

using shm::ErrorDetail;
using shm::Status;

Step noop(Task&, StepContext&) { return Step::kComplete; }

Step echo(Task& t, StepContext& ctx) {
  const auto env = ctx.env(t);
  ctx.set_value(env.size());
  ctx.set_result_is_env(static_cast<std::uint32_t>(env.size()));
  return Step::kComplete;
}

Step checksum(Task& t, StepContext& ctx) {
  const auto env = ctx.env(t);
  ctx.set_value(XXH3_64bits(env.data(), env.size()));
  return Step::kComplete;
}

// fanout(N): spawns N children in bursts, yielding between bursts so that children run
// (here or on a thief) before more are made; completes with N when the last child has.
// w0: outstanding children plus one for the spawner itself (atomic: finished children
// are subtracted through StepContext::child_done()); w1: (N << 32) | children to spawn.
constexpr std::uint64_t kFanoutBurst = 64;

Step fanout_done(Task& t, StepContext& ctx) {
  t.flags = static_cast<std::uint16_t>(t.flags & ~kTaskNoCancel);  // no child is left
  if (ctx.cancelled(t)) return ctx.fail(Status::kCancelled, ErrorDetail::kClientGone);
  ctx.set_value(t.w1 >> 32);
  return Step::kComplete;
}

Step fanout_child(Task& child, StepContext& ctx) {
  // The worker batches these decrements (one atomic per run of siblings) and resumes the
  // parent when its count reaches zero.
  ctx.child_done(reinterpret_cast<Task*>(child.w0));
  return Step::kComplete;
}

Step fanout_spawn(Task& t, StepContext& ctx) {
  if (ctx.cancelled(t)) t.w1 &= ~std::uint64_t{0xFFFFFFFFu};  // spawn no more; wait for the rest
  const std::uint64_t left = t.w1 & 0xFFFFFFFFu;
  const std::uint64_t n = std::min(left, kFanoutBurst);
  // Relaxed: the children that decrement this count are spawned after it, through the
  // queue's release/acquire.
  std::atomic_ref<std::uint64_t>(t.w0).fetch_add(n, std::memory_order_relaxed);
  for (std::uint64_t i = 0; i < n; ++i) ctx.spawn(fanout_child, reinterpret_cast<std::uint64_t>(&t), 0);
  t.w1 -= n;
  if ((t.w1 & 0xFFFFFFFFu) != 0) return Step::kYield;
  t.fn = fanout_done;
  // Drop the spawner's own count; whoever reaches zero runs fanout_done.
  if (std::atomic_ref<std::uint64_t>(t.w0).fetch_sub(1, std::memory_order_acq_rel) == 1) {
    return Step::kContinue;
  }
  return Step::kWait;
}

Step fanout(Task& t, StepContext&) {
  const std::uint64_t n = t.w0;
  t.w0 = 1;
  t.w1 = (n << 32) | n;
  t.fn = n == 0 ? fanout_done : fanout_spawn;
  t.flags = static_cast<std::uint16_t>(t.flags | kTaskNoCancel);
  return Step::kContinue;
}

// chain(K): K steps, each ending in a yield, so the continuation may migrate between
// workers; completes with K. w0: steps left; w1: K.
Step chain_step(Task& t, StepContext& ctx) {
  if (--t.w0 == 0) {
    ctx.set_value(t.w1);
    return Step::kComplete;
  }
  return Step::kYield;
}

Step chain(Task& t, StepContext& ctx) {
  if (t.w0 == 0) return ctx.fail(Status::kInvalidArgument, ErrorDetail::kArgumentOutOfRange);
  t.w1 = t.w0;
  t.fn = chain_step;
  return Step::kContinue;
}

// sleep(ns): parks on the timer queue, then completes.
Step sleep_done(Task&, StepContext&) { return Step::kComplete; }

Step sleep(Task& t, StepContext& ctx) {
  t.fn = sleep_done;
  ctx.park_for(t, std::chrono::nanoseconds(t.w0));
  return Step::kPark;
}

}  // namespace

void register_builtins(FunctionRegistry& r) {
  r.add({"noop", "does nothing and completes", noop});
  r.add({"echo", "returns its environment (in place)", echo});
  r.add({"checksum", "XXH3-64 of its environment, read in place", checksum});
  r.add({"fanout", "spawns ARG children and completes with ARG when all have", fanout, false, 0xFFFFFFFFull});
  r.add({"chain", "ARG steps, each a yield (may migrate between workers)", chain, false, 1ull << 40});
  r.add({"sleep", "parks for ARG nanoseconds (at most one hour)", sleep, false, 3600ull * 1'000'000'000});
}

}  // namespace insideout::daemon
