// The built-in functions. Each entry step reads its argument from w0 (put there at
// accept) and its environment through the context. read_fd and write_fd are SDK
// coroutines (they need only the SDK's operations, so they work on any host).
#include <sys/socket.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <insideout/sdk.hpp>
#include <string>

#include "registry.h"
#include "step_context.h"

namespace insideout::engine {
namespace {

using ::insideout::CoContext;
using ::insideout::Continuation;
using ::insideout::coroutine;
using ::insideout::Error;
using ::insideout::Failure;
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

// fanout(N): N leaf children, made by a tree of spawner nodes so that the spawning
// itself is spread over the workers: a node with more than kFanoutLeaf (65,536) children to make
// spawns kFanoutSplit sub-nodes that share them (thieves take the older, larger ones);
// a smaller node spawns its leaves in bursts of kFanoutBurst, yielding between bursts so
// that leaves run (here or on a thief) before more are made. Completes with N when the
// last leaf has. Every node's w0 counts its outstanding children plus one for itself
// (finished children are subtracted through StepContext::child_done()).
//   root (the client's continuation): w1 = (N << 32) | children still to make
//   sub-node (a child): w1 = its parent; frame = children still to make
constexpr std::uint64_t kFanoutBurst = 64;
constexpr std::uint64_t kFanoutLeaf = 65536;
constexpr std::uint64_t kFanoutSplit = 4;

bool is_root(const Task& t) { return !(t.flags & kTaskChild); }
std::uint64_t to_make(const Task& t) { return is_root(t) ? (t.w1 & 0xFFFFFFFFu) : t.frame; }
void set_to_make(Task& t, std::uint64_t n) {
  if (is_root(t)) {
    t.w1 = (t.w1 & ~std::uint64_t{0xFFFFFFFFu}) | n;
  } else {
    t.frame = static_cast<std::uint32_t>(n);
  }
}

Step fanout_done(Task& t, StepContext& ctx) {
  if (!is_root(t)) {
    ctx.child_done(reinterpret_cast<Task*>(t.w1));
    return Step::kComplete;  // a child: freed, nothing reported
  }
  t.flags = static_cast<std::uint16_t>(t.flags & ~kTaskNoCancel);  // no child is left
  if (ctx.cancelled(t)) return ctx.fail(Status::kCancelled, ctx.cancel_detail());
  ctx.set_value(t.w1 >> 32);
  return Step::kComplete;
}

Step fanout_leaf(Task& leaf, StepContext& ctx) {
  // The worker batches these subtractions (one atomic per run of siblings) and resumes
  // the node when its count reaches zero.
  ctx.child_done(reinterpret_cast<Task*>(leaf.w0));
  return Step::kComplete;
}

Step fanout_node(Task& t, StepContext& ctx);

Step fanout_node(Task& t, StepContext& ctx) {
  std::uint64_t left = ctx.cancelled(t) ? 0 : to_make(t);  // cancelled: make no more
  auto count = std::atomic_ref<std::uint64_t>(t.w0);
  const auto parent = reinterpret_cast<std::uint64_t>(&t);
  if (left > kFanoutLeaf) {
    // Relaxed: the children that subtract from this count are spawned after it, through
    // the queue's release/acquire.
    count.fetch_add(kFanoutSplit, std::memory_order_relaxed);
    for (std::uint64_t i = 0; i < kFanoutSplit; ++i) {
      const std::uint64_t share = left / (kFanoutSplit - i);
      left -= share;
      // A sub-node: its own count starts at one (itself), its parent in w1.
      ctx.spawn(engine_step<fanout_node>, 1, parent, static_cast<std::uint32_t>(share));
    }
    set_to_make(t, 0);
  } else if (left != 0) {
    const std::uint64_t n = std::min(left, kFanoutBurst);
    count.fetch_add(n, std::memory_order_relaxed);  // relaxed, as above
    for (std::uint64_t i = 0; i < n; ++i) {
      ctx.spawn(engine_step<fanout_leaf>, parent, 0, kNoFrame, StepContext::Share::kWhenHungry);
    }
    set_to_make(t, left - n);
    if (left - n != 0) return Step::kYield;
  }
  t.fn = engine_step<fanout_done>;
  // Drop the node's own count; whoever reaches zero runs fanout_done.
  if (count.fetch_sub(1, std::memory_order_acq_rel) == 1) return Step::kContinue;
  return Step::kWait;
}

Step fanout(Task& t, StepContext&) {
  const std::uint64_t n = t.w0;
  t.w0 = 1;
  t.w1 = (n << 32) | n;
  t.fn = n == 0 ? engine_step<fanout_done> : engine_step<fanout_node>;
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
  t.fn = engine_step<chain_step>;
  return Step::kContinue;
}

// sleep(ns): parks on the timer queue, then completes.
Step sleep_done(Task&, StepContext&) { return Step::kComplete; }

Step sleep(Task& t, StepContext& ctx) {
  t.fn = engine_step<sleep_done>;
  ctx.park_for(t, std::chrono::nanoseconds(t.w0));
  return Step::kPark;
}

// sleep_until(t): parks until CLOCK_MONOTONIC t (ns), at most an hour ahead; a time
// already past completes at once. What measures wake-up lateness: the client names the
// instant, so the time the daemon took to accept it does not count.
Step sleep_until(Task& t, StepContext& ctx) {
  const auto when = std::chrono::steady_clock::time_point(std::chrono::nanoseconds(t.w0));
  if (when > std::chrono::steady_clock::now() + std::chrono::hours(1))
    return ctx.fail(Status::kInvalidArgument, ErrorDetail::kArgumentOutOfRange);
  t.fn = engine_step<sleep_done>;
  ctx.park_until(t, when);
  return Step::kPark;
}

// read_fd(id) and write_fd(id): bytes between a descriptor the client handed over
// (Client::send_fd) and the submission's environment. The descriptor is looked up again
// after every wait: the client may close it meanwhile (its number is then retired, see
// daemon/src/client_fds.h), and that fails the continuation.
Failure fd_failure(const CoContext& c, const char* fn, std::uint32_t id, std::int64_t err) {
  thread_local std::string msg;  // fail() copies it at once
  if (err == -ECANCELED) return c.fail("cancelled", Error::kCancelled);
  if (err == -EBADF) {
    msg = std::string(fn) + ": descriptor " + std::to_string(id) + " was closed";
  } else if (err == -EPIPE) {
    msg = std::string(fn) + ": descriptor " + std::to_string(id) + ": the reader hung up (EPIPE)";
  } else {
    msg = std::string(fn) + ": descriptor " + std::to_string(id) + ": " +
          std::strerror(static_cast<int>(-err));
  }
  return c.fail(msg);
}

Failure no_fd(const CoContext& c, const char* fn, std::uint32_t id) {
  thread_local std::string msg;
  msg = std::string(fn) + ": this client has no descriptor with id " + std::to_string(id) +
        " (Client::send_fd gives ids)";
  return c.fail(msg, Error::kInvalidArgument);
}

// Reads what is there, as read(2): waits until the descriptor is readable, then up to the
// environment's size; the result is the bytes read (value: how many). End of file before
// any byte fails ("end of file").
Continuation read_fd(CoContext c) {
  const auto id = static_cast<std::uint32_t>(c.arg());
  const std::span<std::byte> out = c.output();
  if (out.empty())
    co_return c.fail("read_fd: the environment (where bytes go) is empty", Error::kInvalidArgument);
  for (;;) {
    const int fd = c.client_fd(id);
    if (fd < 0) co_return no_fd(c, "read_fd", id);
    const ssize_t n = ::read(fd, out.data(), out.size());
    if (n > 0) {
      c.set_output_len(static_cast<std::size_t>(n));
      co_return static_cast<std::uint64_t>(n);
    }
    if (n == 0) {
      thread_local std::string msg;
      msg = "read_fd: end of file on descriptor " + std::to_string(id);
      co_return c.fail(msg);
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) co_return fd_failure(c, "read_fd", id, -errno);
    const std::int64_t r = co_await c.readable(fd);
    if (r < 0) co_return fd_failure(c, "read_fd", id, r);
  }
}

// Writes the whole environment, waiting for writability as often as it takes; value: the
// bytes written.
Continuation write_fd(CoContext c) {
  const auto id = static_cast<std::uint32_t>(c.arg());
  const std::span<const std::byte> in = c.env();
  std::size_t off = 0;
  bool socket = true;  // send(MSG_NOSIGNAL) first: no SIGPIPE in a host that keeps it
  while (off < in.size()) {
    const int fd = c.client_fd(id);
    if (fd < 0) co_return no_fd(c, "write_fd", id);
    ssize_t n;
    if (socket) {
      n = ::send(fd, in.data() + off, in.size() - off, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0 && errno == ENOTSOCK) {
        socket = false;
        continue;
      }
    } else {
      n = ::write(fd, in.data() + off, in.size() - off);
    }
    if (n >= 0) {
      off += static_cast<std::size_t>(n);
      continue;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) co_return fd_failure(c, "write_fd", id, -errno);
    const std::int64_t r = co_await c.writable(fd);
    if (r < 0) co_return fd_failure(c, "write_fd", id, r);
  }
  co_return static_cast<std::uint64_t>(off);
}

}  // namespace

void register_builtins(FunctionRegistry& r) {
  r.add({"noop", "does nothing and completes", engine_step<noop>});
  r.add({"echo", "returns its environment (in place)", engine_step<echo>});
  r.add({"checksum", "XXH3-64 of its environment, read in place", engine_step<checksum>});
  // At most 2^30 children (a billion runs): the peak of task memory a fanout holds is
  // about 65 tasks per 65,536 children (kFanoutLeaf), ~33 MiB at the limit.
  r.add({"fanout", "spawns ARG children (at most 2^30) and completes with ARG when all have",
         engine_step<fanout>, false, 1ull << 30});
  r.add({"chain", "ARG steps, each a yield (may migrate between workers)", engine_step<chain>,
         false, 1ull << 40});
  r.add({"sleep", "parks for ARG nanoseconds (at most one hour)", engine_step<sleep>, false,
         3600ull * 1'000'000'000});
  r.add({"sleep_until",
         "parks until CLOCK_MONOTONIC ARG nanoseconds (at most one hour ahead; past: at once)",
         engine_step<sleep_until>});
  r.add({"read_fd",
         "reads what descriptor ARG (Client::send_fd) has, up to the environment's size, into "
         "the environment: the result (fails at end of file)",
         coroutine<read_fd>, false, 0xFFFFFFFFull, kFnOutput});
  r.add({"write_fd",
         "writes the whole environment to descriptor ARG (Client::send_fd); value: the bytes",
         coroutine<write_fd>, false, 0xFFFFFFFFull});
}

}  // namespace insideout::engine
