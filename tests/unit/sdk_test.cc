// The SDK (<insideout/sdk.hpp>) on the engine: plain steps and coroutine continuations
// registered as a plugin's functions would be, run by an in-process scheduler.
#include "insideout/sdk.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support/in_process.h"

namespace insideout {
namespace {

using namespace std::chrono_literals;
using shm::ErrorDetail;
using shm::Frame;
using shm::Status;
using testing::InProcessDaemon;

Step add_one(Task&, Context& c) { return c.complete(c.arg() + 1); }

Step throws(Task&, Context&) { throw std::runtime_error("the step threw this"); }

Step fails(Task&, Context& c) { return c.fail("zstd: corrupt input"); }

// Upper-cases the first ARG bytes of its buffer in place and returns them.
Step upper(Task&, Context& c) {
  auto out = c.output();
  if (c.arg() > out.size()) return c.fail("input longer than its buffer", Error::kInvalidArgument);
  for (std::size_t i = 0; i < c.arg(); ++i)
    out[i] = static_cast<std::byte>(std::toupper(static_cast<int>(out[i])));
  c.set_output_len(c.arg());
  return Step::kComplete;
}

// Yields ARG times; the result is a bit per worker it ran on.
Continuation hop(CoContext c) {
  std::uint64_t seen = 0;
  for (std::uint64_t i = 0; i < c.arg(); ++i) {
    seen |= std::uint64_t{1} << c.worker();
    co_await c.yield();
  }
  seen |= std::uint64_t{1} << c.worker();
  co_return seen;
}

Continuation nap(CoContext c) {
  const auto start = c.now();
  co_await c.sleep_for(std::chrono::milliseconds(c.arg()));
  co_return static_cast<std::uint64_t>((c.now() - start) / 1ms);
}

Continuation coro_throws(CoContext c) {
  co_await c.yield();
  throw std::runtime_error("thrown after a yield");
}

Continuation coro_fails(CoContext c) {
  co_await c.yield();
  co_return c.fail("no such pool: io");
}

Continuation square(CoContext c) {
  co_await c.yield();
  if (c.arg() == 13) co_return c.fail("unlucky");
  co_return c.arg() * c.arg();
}

// The sum of the squares of 1..ARG, each computed by a child continuation.
Continuation sum_squares(CoContext c) {
  std::uint64_t args[64];
  Outcome out[64];
  const std::uint64_t n = c.arg() < 64 ? c.arg() : 64;
  for (std::uint64_t i = 0; i < n; ++i) args[i] = i + 1;
  co_await c.all<square>(std::span(args, n), std::span(out, n));
  std::uint64_t sum = 0, failed = 0;
  for (std::uint64_t i = 0; i < n; ++i) (out[i].ok ? sum : failed) += out[i].ok ? out[i].value : 1;
  co_return failed * 1'000'000 + sum;
}

// A long sleep, for the cut-off test; `dropped` counts its frames destroyed.
std::atomic<int> dropped{0};
struct CountsDrop {
  ~CountsDrop() { dropped.fetch_add(1); }
};
Continuation long_nap(CoContext c) {
  CountsDrop guard;
  co_await c.sleep_for(1h);
  co_return 1;
}

Continuation to_nowhere(CoContext c) {
  const bool moved = co_await c.move_to(7);
  co_return moved ? 1 : 2;
}

void add_sdk_functions(InProcessDaemon& d) {
  auto& r = d.registry();
  r.add({"t.add_one", "", step<add_one>});
  r.add({"t.throws", "", step<throws>});
  r.add({"t.fails", "", step<fails>});
  daemon::FunctionDef up{"t.upper", "", step<upper>, true};
  up.flags = IO_FN_OUTPUT;
  r.add(up);
  r.add({"t.hop", "", coroutine<hop>});
  r.add({"t.nap", "", coroutine<nap>});
  r.add({"t.coro_throws", "", coroutine<coro_throws>});
  r.add({"t.coro_fails", "", coroutine<coro_fails>});
  r.add({"t.sum_squares", "", coroutine<sum_squares>});
  r.add({"t.long_nap", "", coroutine<long_nap>});
  r.add({"t.to_nowhere", "", coroutine<to_nowhere>});
}

struct Done {
  Status status;
  ErrorDetail detail;
  std::uint64_t value;
  std::string message;
};

Done run(InProcessDaemon& d, const char* fn, std::uint64_t arg) {
  Frame* f = d.frame();
  f->fn = d.fn(fn);
  f->arg = arg;
  EXPECT_TRUE(d.push(f));
  Frame* got = d.next();
  EXPECT_EQ(got, f) << fn;
  if (got == nullptr) return {Status::kPending, ErrorDetail::kNone, 0, ""};
  const auto& g = d.geometry();
  const std::uint32_t index = (d.offset(f) - g.frames_off) / sizeof(Frame);
  Done out{static_cast<Status>(f->status), static_cast<ErrorDetail>(f->detail), f->result,
           out.status == Status::kOk ? "" : ""};
  if (out.detail == ErrorDetail::kFunctionFailed)
    out.message = d.base() + g.messages_off + std::size_t{index} * shm::kMessageBytes;
  d.release(f);
  return out;
}

TEST(Sdk, ShouldRunAPlainStepFunction) {
  InProcessDaemon d(2, {}, shm::IdleStrategy::kSpinThenBlock, add_sdk_functions);
  const Done r = run(d, "t.add_one", 41);
  EXPECT_EQ(r.status, Status::kOk);
  EXPECT_EQ(r.value, 42u);
}

TEST(Sdk, ShouldFailAContinuationWhoseStepThrowsWithItsMessageAndCarryOn) {
  InProcessDaemon d(2, {}, shm::IdleStrategy::kSpinThenBlock, add_sdk_functions);
  Done r = run(d, "t.throws", 0);
  EXPECT_EQ(r.status, Status::kFailed);
  EXPECT_EQ(r.detail, ErrorDetail::kFunctionFailed);
  EXPECT_EQ(r.message, "the step threw this");
  r = run(d, "t.coro_throws", 0);
  EXPECT_EQ(r.status, Status::kFailed);
  EXPECT_EQ(r.message, "thrown after a yield");
  EXPECT_EQ(run(d, "t.add_one", 1).value, 2u);  // the workers carry on
}

TEST(Sdk, ShouldHandTheFailureMessageBack) {
  InProcessDaemon d(2, {}, shm::IdleStrategy::kSpinThenBlock, add_sdk_functions);
  Done r = run(d, "t.fails", 0);
  EXPECT_EQ(r.status, Status::kFailed);
  EXPECT_EQ(r.message, "zstd: corrupt input");
  r = run(d, "t.coro_fails", 0);
  EXPECT_EQ(r.status, Status::kFailed);
  EXPECT_EQ(r.message, "no such pool: io");
}

TEST(Sdk, ShouldWriteOutputInPlaceInTheClientsBuffer) {
  InProcessDaemon d(2, {}, shm::IdleStrategy::kSpinThenBlock, add_sdk_functions);
  Frame* f = d.frame();
  char* buf = d.buffer(3);
  std::memcpy(buf, "hello, world....", 16);
  f->fn = d.fn("t.upper");
  f->arg = 5;  // the input: the first 5 bytes
  f->env_off = d.offset(buf);
  f->env_len = 16;  // the whole buffer is the output's room
  ASSERT_TRUE(d.push(f));
  ASSERT_EQ(d.next(), f);
  EXPECT_EQ(f->status, static_cast<std::uint16_t>(Status::kOk));
  EXPECT_EQ(f->result_len, 5u);
  EXPECT_EQ(std::string(buf, 5), "HELLO");
  EXPECT_EQ(std::string(buf + 5, 11), ", world....");
  d.release(f);
}

TEST(Sdk, ShouldRunACoroutineWhoseYieldsMayMoveItBetweenWorkers) {
  InProcessDaemon d(2, {}, shm::IdleStrategy::kSpinThenBlock, add_sdk_functions);
  // Keep both workers busy with hops until one continuation has run on both: its state
  // (the bit set) survives every step.
  std::uint64_t seen = 0;
  for (int round = 0; round < 200 && seen != 0b11; ++round) {
    Frame* fs[8];
    for (auto*& f : fs) {
      f = d.frame();
      f->fn = d.fn("t.hop");
      f->arg = 2000;
      ASSERT_TRUE(d.push(f));
    }
    for (int i = 0; i < 8; ++i) {
      Frame* got = d.next();
      ASSERT_NE(got, nullptr);
      EXPECT_EQ(got->status, static_cast<std::uint16_t>(Status::kOk));
      EXPECT_NE(got->result, 0u);
      seen |= got->result;
      d.release(got);
    }
  }
  EXPECT_EQ(seen, 0b11u) << "no coroutine ran on both workers";
}

TEST(Sdk, ShouldSleepInACoroutine) {
  InProcessDaemon d(2, {}, shm::IdleStrategy::kSpinThenBlock, add_sdk_functions);
  const Done r = run(d, "t.nap", 20);
  EXPECT_EQ(r.status, Status::kOk);
  EXPECT_GE(r.value, 20u);
}

TEST(Sdk, ShouldAwaitAllChildrenAndSeeEachOutcome) {
  InProcessDaemon d(2, {}, shm::IdleStrategy::kSpinThenBlock, add_sdk_functions);
  Done r = run(d, "t.sum_squares", 10);
  EXPECT_EQ(r.status, Status::kOk);
  EXPECT_EQ(r.value, 385u);         // 1 + 4 + ... + 100
  r = run(d, "t.sum_squares", 20);  // child 13 fails
  EXPECT_EQ(r.value, 1'000'000u + (2870u - 169u));
}

TEST(Sdk, ShouldDestroyACoroutineFrameWhenItsClientLeaves) {
  // The parked coroutine is cut off at once (not after its hour) and its frame, with
  // the locals in it, is destroyed.
  InProcessDaemon d(2, {}, shm::IdleStrategy::kSpinThenBlock, add_sdk_functions);
  dropped.store(0);
  Frame* f = d.frame();
  f->fn = d.fn("t.long_nap");
  ASSERT_TRUE(d.push(f));
  for (int i = 0; i < 1000 && d.scheduler().totals().timer_parks == 0; ++i)
    std::this_thread::sleep_for(1ms);
  EXPECT_EQ(dropped.load(), 0);
  d.close_client();
  ASSERT_EQ(d.next(std::chrono::seconds(5)), f);
  EXPECT_EQ(f->status, static_cast<std::uint16_t>(Status::kCancelled));
  EXPECT_EQ(static_cast<ErrorDetail>(f->detail), ErrorDetail::kClientGone);
  EXPECT_EQ(dropped.load(), 1);
}

TEST(Sdk, ShouldFailAMoveToAPoolThatDoesNotExist) {
  InProcessDaemon d(2, {}, shm::IdleStrategy::kSpinThenBlock, add_sdk_functions);
  const Done r = run(d, "t.to_nowhere", 0);
  EXPECT_EQ(r.status, Status::kOk);
  EXPECT_EQ(r.value, 2u);
}

// Runs ARG milliseconds; with ARG 0, until the long-step report has come (at most 10 s),
// so that the test does not depend on when the watch's thread gets a CPU.
std::atomic<bool> long_step_reported{false};
Step spin(Task&, Context& c) {
  const auto start = std::chrono::steady_clock::now();
  const auto until = start + (c.arg() != 0 ? std::chrono::milliseconds(c.arg()) : 10s);
  while (std::chrono::steady_clock::now() < until) {
    if (c.arg() == 0 && long_step_reported.load()) break;
  }
  return c.complete(1);
}

TEST(Sdk, ShouldReportAStepThatRunsPastTheBoundOnceAndCarryOn) {
  struct Report {
    std::uint32_t worker;
    io_step_fn step;
    std::chrono::milliseconds ran;
  };
  std::mutex mu;
  std::vector<Report> reports;
  InProcessDaemon d(
      2, {}, shm::IdleStrategy::kSpinThenBlock,
      [&](InProcessDaemon& self) {
        self.registry().add({"t.spin", "", step<spin>});
        self.scheduler().set_long_step_sink(
            [&](std::uint32_t w, io_step_fn fn, std::chrono::milliseconds ran) {
              std::lock_guard lock(mu);
              reports.push_back({w, fn, ran});
              long_step_reported.store(true);
            });
      },
      100ms);
  EXPECT_EQ(run(d, "chain", 100000).status, Status::kOk);  // many short steps: no report
  EXPECT_EQ(run(d, "t.spin", 1).status, Status::kOk);      // under the bound: none
  {
    std::lock_guard lock(mu);
    EXPECT_TRUE(reports.empty());
  }
  // One long step: one report. The step runs until the report has come (or 10 s).
  long_step_reported.store(false);
  EXPECT_EQ(run(d, "t.spin", 0).status, Status::kOk);
  std::lock_guard lock(mu);
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_EQ(reports[0].step, &step<spin>);
  EXPECT_LT(reports[0].worker, 2u);
  EXPECT_GE(reports[0].ran, 100ms);
  EXPECT_EQ(d.scheduler().totals().long_steps, 1u);
}

}  // namespace
}  // namespace insideout
