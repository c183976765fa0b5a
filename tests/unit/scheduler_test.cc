#include <gtest/gtest.h>
#include <xxhash.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "support/in_process.h"

namespace insideout {
namespace {

using shm::ErrorDetail;
using shm::Frame;
using shm::Status;
using testing::InProcessDaemon;
using namespace std::chrono_literals;

Status status_of(const Frame* f) { return static_cast<Status>(f->status); }
ErrorDetail detail_of(const Frame* f) { return static_cast<ErrorDetail>(f->detail); }

TEST(Scheduler, ShouldRunEveryBuiltin) {
  InProcessDaemon d;
  Frame* f = d.frame();
  f->fn = d.fn("noop");
  ASSERT_TRUE(d.push(f));
  ASSERT_EQ(d.next(), f);
  EXPECT_EQ(status_of(f), Status::kOk);

  f->fn = d.fn("echo");
  f->flags = shm::kFrameEnvInline;
  f->env_len = 5;
  std::memcpy(f->inline_data, "hello", 5);
  f->status = 0;
  ASSERT_TRUE(d.push(f));
  ASSERT_EQ(d.next(), f);
  EXPECT_EQ(status_of(f), Status::kOk);
  EXPECT_EQ(f->result_len, 5u);
  EXPECT_TRUE(f->flags & shm::kFrameResultInline);

  char* buf = d.buffer(0);
  for (int i = 0; i < 1000; ++i) buf[i] = static_cast<char>(i * 7);
  f->fn = d.fn("checksum");
  f->flags = 0;
  f->env_off = d.offset(buf);
  f->env_len = 1000;
  ASSERT_TRUE(d.push(f));
  ASSERT_EQ(d.next(), f);
  EXPECT_EQ(status_of(f), Status::kOk);
  EXPECT_EQ(f->result, XXH3_64bits(buf, 1000));

  f->fn = d.fn("fanout");
  f->env_len = 0;
  f->arg = 10'000;
  ASSERT_TRUE(d.push(f));
  ASSERT_EQ(d.next(), f);
  EXPECT_EQ(status_of(f), Status::kOk);
  EXPECT_EQ(f->result, 10'000u);

  f->fn = d.fn("chain");
  f->arg = 1000;
  ASSERT_TRUE(d.push(f));
  ASSERT_EQ(d.next(), f);
  EXPECT_EQ(status_of(f), Status::kOk);
  EXPECT_EQ(f->result, 1000u);

  f->fn = d.fn("sleep");
  f->arg = 1'000'000;
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(d.push(f));
  ASSERT_EQ(d.next(), f);
  EXPECT_EQ(status_of(f), Status::kOk);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(1));
}

TEST(Scheduler, ShouldCompleteManyInFlightContinuationsExactlyOnce) {
  InProcessDaemon d(2);
  std::vector<int> seen(d.geometry().frame_count, 0);
  int submitted = 0, completed = 0;
  const std::uint32_t noop = d.fn("noop"), chain = d.fn("chain");
  while (completed < 50'000) {
    while (submitted < 50'000) {
      Frame* f = d.frame();
      if (f == nullptr) break;
      f->fn = submitted % 2 ? noop : chain;
      f->arg = 3;
      f->tag = static_cast<std::uint64_t>(submitted);
      if (!d.push(f)) {
        d.release(f);
        break;
      }
      ++submitted;
    }
    Frame* f = d.next();
    ASSERT_NE(f, nullptr) << "a completion went missing";
    EXPECT_EQ(status_of(f), Status::kOk);
    ++completed;
    d.release(f);
  }
  EXPECT_EQ(d.slot().completed.load(), 50'000u);
  EXPECT_EQ(d.slot().failed.load(), 0u);
}

struct BadCase {
  const char* name;
  void (*setup)(Frame*, InProcessDaemon&);
  Status status;
  ErrorDetail detail;
};

TEST(Scheduler, ShouldFailEachKindOfBadInputWithAClearError) {
  const BadCase cases[] = {
      {"unknown function", [](Frame* f, InProcessDaemon&) { f->fn = 999; },
       Status::kUnknownFunction, ErrorDetail::kUnknownFunction},
      {"function id zero", [](Frame* f, InProcessDaemon&) { f->fn = 0; }, Status::kUnknownFunction,
       ErrorDetail::kUnknownFunction},
      {"unknown flags",
       [](Frame* f, InProcessDaemon& d) {
         f->fn = d.fn("noop");
         f->flags = 0x80;
       },
       Status::kInvalidArgument, ErrorDetail::kUnknownFlags},
      {"inline too long",
       [](Frame* f, InProcessDaemon& d) {
         f->fn = d.fn("echo");
         f->flags = shm::kFrameEnvInline;
         f->env_len = 17;
       },
       Status::kInvalidArgument, ErrorDetail::kInlineTooLong},
      {"env outside the buffers",
       [](Frame* f, InProcessDaemon& d) {
         f->fn = d.fn("checksum");
         f->env_off = d.geometry().frames_off;  // the arena is not a buffer
         f->env_len = 64;
       },
       Status::kInvalidArgument, ErrorDetail::kEnvOutOfSegment},
      {"env past the end",
       [](Frame* f, InProcessDaemon& d) {
         f->fn = d.fn("checksum");
         f->env_off = d.geometry().buffers_off;
         f->env_len = 0xFFFFFFF0u;
       },
       Status::kInvalidArgument, ErrorDetail::kEnvOutOfSegment},
      {"fanout too large",
       [](Frame* f, InProcessDaemon& d) {
         f->fn = d.fn("fanout");
         f->arg = 1ull << 40;
       },
       Status::kInvalidArgument, ErrorDetail::kArgumentOutOfRange},
      {"sleep too long",
       [](Frame* f, InProcessDaemon& d) {
         f->fn = d.fn("sleep");
         f->arg = ~0ull;
       },
       Status::kInvalidArgument, ErrorDetail::kArgumentOutOfRange},
      {"chain of zero steps",
       [](Frame* f, InProcessDaemon& d) {
         f->fn = d.fn("chain");
         f->arg = 0;
       },
       Status::kInvalidArgument, ErrorDetail::kArgumentOutOfRange},
  };
  InProcessDaemon d;
  for (const auto& c : cases) {
    Frame* f = d.frame();
    c.setup(f, d);
    ASSERT_TRUE(d.push(f));
    ASSERT_EQ(d.next(), f) << c.name;
    EXPECT_EQ(status_of(f), c.status) << c.name;
    EXPECT_EQ(detail_of(f), c.detail) << c.name;
    d.release(f);
  }
  // And the daemon carries on.
  Frame* f = d.frame();
  f->fn = d.fn("noop");
  ASSERT_TRUE(d.push(f));
  ASSERT_EQ(d.next(), f);
  EXPECT_EQ(status_of(f), Status::kOk);
}

TEST(Scheduler, ShouldCountAndDropOffsetsThatAreNotFrames) {
  InProcessDaemon d;
  for (std::uint32_t off :
       {0u, 1u, d.geometry().frames_off + 1, d.geometry().buffers_off, 0xFFFFFFFFu}) {
    ASSERT_TRUE(d.push(off));
  }
  Frame* f = d.frame();
  f->fn = d.fn("noop");
  ASSERT_TRUE(d.push(f));
  ASSERT_EQ(d.next(), f) << "only the real frame completes";
  EXPECT_EQ(d.slot().rejected.load(), 5u);
  EXPECT_EQ(d.next(std::chrono::milliseconds(50)), nullptr);
}

TEST(Scheduler, ShouldCancelParkedContinuationsOfAClientThatLeft) {
  InProcessDaemon d;
  Frame* f = d.frame();
  f->fn = d.fn("sleep");
  f->arg = 60ull * 1'000'000'000;  // a minute
  ASSERT_TRUE(d.push(f));
  // Wait until it is parked, then the client goes.
  for (int i = 0; i < 1000 && d.scheduler().totals().timer_parks == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  d.close_client();
  ASSERT_EQ(d.next(std::chrono::seconds(5)), f);
  EXPECT_EQ(status_of(f), Status::kCancelled);
  EXPECT_EQ(detail_of(f), ErrorDetail::kClientGone);
}

TEST(Scheduler, ShouldSayShutdownNotClientGoneForWorkCutOffByTheDaemonStopping) {
  InProcessDaemon d;
  Frame* f = d.frame();
  f->fn = d.fn("fanout");
  f->arg = 1ull << 30;  // the most it takes: far more than runs before the cut
  ASSERT_TRUE(d.push(f));
  for (int i = 0; i < 5000 && d.scheduler().totals().spawned == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  // What Daemon::shutdown() does once its drain timeout has passed: every connection
  // is closed while work still runs.
  d.scheduler().begin_drain(/*shutdown=*/true);
  d.close_client();
  ASSERT_EQ(d.next(std::chrono::seconds(30)), f);
  EXPECT_EQ(status_of(f), Status::kCancelled);
  EXPECT_EQ(detail_of(f), ErrorDetail::kShutdown);
}

TEST(Scheduler, ShouldCompleteRingSubmissionsWithDrainingWhilePausedAndRunThemAfterResume) {
  InProcessDaemon d;
  d.scheduler().pause();
  std::vector<Frame*> frames;
  for (int i = 0; i < 50; ++i) {
    Frame* f = d.frame();
    f->fn = d.fn("noop");
    ASSERT_TRUE(d.push(f));
    frames.push_back(f);
  }
  for (int i = 0; i < 50; ++i) {
    Frame* f = d.next(std::chrono::seconds(5));
    ASSERT_NE(f, nullptr) << "a submission made while paused never completed";
    EXPECT_EQ(status_of(f), Status::kDraining);
  }
  // The worker drops its references just after pushing the completions: wait for that.
  EXPECT_TRUE(d.scheduler().wait_idle(std::chrono::seconds(5)));
  d.scheduler().resume();
  Frame* f = frames.front();
  f->status = 0;
  ASSERT_TRUE(d.push(f));
  ASSERT_EQ(d.next(std::chrono::seconds(5)), f);
  EXPECT_EQ(status_of(f), Status::kOk);
}

TEST(Scheduler, ShouldSpreadFanoutChildrenOverWorkers) {
  InProcessDaemon d(2);
  Frame* f = d.frame();
  f->fn = d.fn("fanout");
  f->arg = 1'000'000;
  ASSERT_TRUE(d.push(f));
  ASSERT_EQ(d.next(std::chrono::seconds(30)), f);
  EXPECT_EQ(status_of(f), Status::kOk);
  EXPECT_EQ(f->result, 1'000'000u);
  const auto t = d.scheduler().totals();
  // A million leaves, plus the spawner nodes of the tree (4 per 4,096 leaves at most).
  EXPECT_GE(t.spawned, 1'000'000u);
  EXPECT_LE(t.spawned, 1'000'000u + 1'000'000u / 1024u);
  EXPECT_GE(t.steps, 1'000'000u);
  // Both workers took part: the tree's nodes are stolen.
  for (std::uint32_t i = 0; i < d.scheduler().worker_count(); ++i) {
    EXPECT_GT(d.scheduler().worker(i).stats.steps.load(), 0u) << "worker " << i;
  }
}

// A yielding continuation alone on its worker runs again without the trip through the
// queues (Scheduler::run_steps()), but still lets the rings in every 32 looks and still
// passes each step boundary: a noop submitted behind an endless chain completes, and the
// chain is cut off at a step boundary once its client hangs up.
TEST(Scheduler, ShouldServeTheRingAndCutOffAnEndlessYieldingChain) {
  InProcessDaemon d(1);
  Frame* chain = d.frame();
  chain->fn = d.fn("chain");
  chain->arg = 1ull << 40;  // hours of steps: it never ends by itself here
  ASSERT_TRUE(d.push(chain));
  for (int i = 0; i < 5000 && d.scheduler().totals().steps < 1000; ++i)
    std::this_thread::sleep_for(1ms);
  ASSERT_GE(d.scheduler().totals().steps, 1000u) << "the chain did not start";
  Frame* f = d.frame();
  f->fn = d.fn("noop");
  ASSERT_TRUE(d.push(f));
  ASSERT_EQ(d.next(), f) << "the ring was not served while the chain yielded";
  EXPECT_EQ(status_of(f), Status::kOk);
  EXPECT_EQ(d.scheduler().totals().failed, 0u);
  d.close_client();
  for (int i = 0; i < 5000 && d.scheduler().totals().failed == 0; ++i)
    std::this_thread::sleep_for(1ms);
  EXPECT_EQ(d.scheduler().totals().failed, 1u) << "the chain was not cut off";
}

// Defect 2 of the trust-boundary review: a client that hangs up between a worker's
// "is it active?" check and its taking references must not get references back from
// zero (its slot would be reclaimed with continuations still writing into it). The hook
// closes the client in exactly that window.
TEST(Scheduler, ShouldNotReviveAClientThatClosedBetweenItsCheckAndTheAccept) {
  std::atomic<int> zombies{0};
  std::atomic<bool> closed{false};
  InProcessDaemon d(1, {}, shm::IdleStrategy::kSpinThenBlock, [&](InProcessDaemon& self) {
    self.table().set_on_zombie([&] { zombies.fetch_add(1); });
    self.source().set_before_accept_hook([&](daemon::ClientSlot&) {
      if (!closed.exchange(true)) self.close_client();  // the connection's reference: zero
    });
  });
  Frame* f = d.frame();
  f->fn = d.fn("noop");
  ASSERT_TRUE(d.push(f));
  for (int i = 0; i < 500 && !closed.load(); ++i) std::this_thread::sleep_for(1ms);
  ASSERT_TRUE(closed.load()) << "the worker never looked at the ring";
  std::this_thread::sleep_for(50ms);  // time for an accepted noop to run and complete
  EXPECT_EQ(d.scheduler().totals().accepted, 0u) << "accepted from a slot with no reference";
  EXPECT_EQ(d.slot().refs.load(), 0u);
  EXPECT_EQ(d.slot().state.load(), daemon::SlotState::kZombie);
  EXPECT_EQ(zombies.load(), 1) << "the slot died twice";
}

}  // namespace
}  // namespace insideout
