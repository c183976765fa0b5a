// Deadlines, cancellation and doorbells (issue 9): a continuation past its deadline fails
// with "deadline exceeded" whether queued, parked or running; a client's Handle::cancel()
// and an operator's insideoutctl cancel end queued and parked work at once and running
// work after its step; doorbells feed a parked coroutine without a new submission.
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "event_queue.h"
#include "insideout/client.hpp"
#include "integration/control_support.h"
#include "integration/plugin_support.h"
#include "support/daemon_process.h"

namespace insideout::testing {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

std::unique_ptr<Client> connect(const DaemonProcess& d) {
  ClientOptions o;
  o.runtime_dir = d.runtime_dir();
  auto c = Client::connect(o);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? std::move(*c) : nullptr;
}

SubmitOptions in(Clock::duration d) { return SubmitOptions{.deadline = Clock::now() + d}; }

// One worker held by a single long step (spinner.spin): what is submitted meanwhile
// stays queued in the ring until the step ends.
class OneBusyWorker : public ::testing::Test {
 protected:
  OneBusyWorker() : dir_({"spinner"}), daemon_({"--workers", "1", "--plugin-dir", dir_.path()}) {}
  void SetUp() override {
    ASSERT_TRUE(daemon_.ready()) << daemon_.log();
    client_ = connect(daemon_);
    ASSERT_NE(client_, nullptr);
  }
  Handle hold_worker(std::uint64_t ms) {
    auto h = client_->submit("spinner.spin", {}, ms);
    EXPECT_TRUE(h.ok()) << h.status();
    std::this_thread::sleep_for(30ms);  // the worker has taken it
    return h.ok() ? std::move(*h) : Handle{};
  }
  PluginDir dir_;
  DaemonProcess daemon_;
  std::unique_ptr<Client> client_;
};

TEST_F(OneBusyWorker, ShouldFailAQueuedContinuationWhoseDeadlinePassedBeforeItWasTaken) {
  Handle busy = hold_worker(300);
  auto h = client_->submit("noop", {}, 0, in(50ms));
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_EQ(h->wait_for(10s), Status::kDeadlineExceeded);
  EXPECT_EQ(h->result().error(), "deadline exceeded");
  EXPECT_EQ(busy.wait_for(10s), Status::kOk);
}

TEST_F(OneBusyWorker, ShouldCancelAQueuedContinuationBeforeItRuns) {
  Handle busy = hold_worker(300);
  auto h = client_->submit("noop");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_TRUE(h->cancel());
  ASSERT_EQ(h->wait_for(10s), Status::kCancelled);
  EXPECT_EQ(h->result().detail, ErrorDetail::kCancelledByClient);
  EXPECT_EQ(h->result().error(), "cancelled: cancelled by its client");
  EXPECT_EQ(busy.wait_for(10s), Status::kOk);
}

class Deadlines : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(daemon_.ready()) << daemon_.log();
    client_ = connect(daemon_);
    ASSERT_NE(client_, nullptr);
  }
  DaemonProcess daemon_{{"--workers", "2"}};
  std::unique_ptr<Client> client_;
};

TEST_F(Deadlines, ShouldFailASubmissionWhoseDeadlineHasAlreadyPassed) {
  auto h = client_->submit("noop", {}, 0, SubmitOptions{.deadline = Clock::now() - 1ms});
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_EQ(h->wait_for(10s), Status::kDeadlineExceeded);
  EXPECT_EQ(h->result().error(), "deadline exceeded");
}

TEST_F(Deadlines, ShouldEndAParkedContinuationAtItsDeadline) {
  const auto start = Clock::now();
  auto h = client_->submit("sleep", {}, 10'000'000'000, in(100ms));  // 10 s
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_EQ(h->wait_for(8s), Status::kDeadlineExceeded);
  const auto took = Clock::now() - start;
  EXPECT_GE(took, 100ms);
  EXPECT_LT(took, 5s) << "the parked sleep was not ended at its deadline";
}

TEST_F(Deadlines, ShouldCutARunningContinuationOffAtAStepBoundaryPastItsDeadline) {
  const auto start = Clock::now();
  auto h = client_->submit("chain", {}, 1ull << 40, in(100ms));  // far more than 8 s of steps
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_EQ(h->wait_for(8s), Status::kDeadlineExceeded);
  EXPECT_GE(Clock::now() - start, 100ms);
}

TEST_F(Deadlines, ShouldLeaveWorkThatEndsBeforeItsDeadlineAloneAndForgetItOnReuse) {
  auto h = client_->submit("sleep", {}, 1'000'000, in(10s));  // 1 ms
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_EQ(h->wait_for(8s), Status::kOk);
  h->reset();
  // The frame is free again: a submission without a deadline is not bound by the last.
  for (int i = 0; i < 8; ++i) {
    auto n = client_->submit("sleep", {}, 20'000'000);  // 20 ms
    ASSERT_TRUE(n.ok()) << n.status();
    ASSERT_EQ(n->wait_for(8s), Status::kOk);
  }
}

TEST_F(Deadlines, ShouldCancelAParkedContinuationAtOnce) {
  const auto start = Clock::now();
  auto h = client_->submit("sleep", {}, 10'000'000'000);
  ASSERT_TRUE(h.ok()) << h.status();
  std::this_thread::sleep_for(50ms);  // parked by now
  EXPECT_TRUE(h->cancel());
  ASSERT_EQ(h->wait_for(8s), Status::kCancelled);
  EXPECT_EQ(h->result().detail, ErrorDetail::kCancelledByClient);
  EXPECT_LT(Clock::now() - start, 5s);
  EXPECT_FALSE(h->cancel()) << "nothing left to cancel";
}

TEST_F(Deadlines, ShouldCancelARunningContinuationAfterItsStep) {
  auto h = client_->submit("chain", {}, 1ull << 40);
  ASSERT_TRUE(h.ok()) << h.status();
  std::this_thread::sleep_for(20ms);
  EXPECT_TRUE(h->cancel());
  ASSERT_EQ(h->wait_for(8s), Status::kCancelled);
  EXPECT_EQ(h->result().detail, ErrorDetail::kCancelledByClient);
}

TEST_F(Deadlines, ShouldKeepTheOutcomeOfWhatCompletedBeforeTheCancel) {
  auto h = client_->submit("noop", {}, 0);
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_EQ(h->wait_for(8s), Status::kOk);
  EXPECT_FALSE(h->cancel());
  EXPECT_EQ(h->result().status, Status::kOk);
  // A stale cancel in the ring is a no-op for the frame's next submission.
  auto n = client_->submit("noop", {}, 0);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(n->wait_for(8s), Status::kOk);
}

TEST_F(Deadlines, ShouldLetAnOperatorCancelAClientsWorkAllOrOneFrame) {
  std::vector<Handle> hs;
  for (int i = 0; i < 3; ++i) {
    auto h = client_->submit("sleep", {}, 10'000'000'000);
    ASSERT_TRUE(h.ok()) << h.status();
    hs.push_back(std::move(*h));
  }
  std::this_thread::sleep_for(50ms);
  const std::string id = std::to_string(client_->client_id());
  const std::string offset = std::to_string(client_->offset_of(hs[0].frame()));
  auto one = run_command(ctl_args(daemon_.runtime_dir(), {"cancel", id, "--frame", offset}));
  ASSERT_EQ(one.exit_code, 0) << one.out << one.err;
  EXPECT_NE(one.out.find("cancelled 1 continuation(s) of client " + id), std::string::npos)
      << one.out;
  ASSERT_EQ(hs[0].wait_for(8s), Status::kCancelled);
  EXPECT_EQ(hs[0].result().detail, ErrorDetail::kCancelledByOperator);
  EXPECT_FALSE(hs[1].poll());
  auto all = run_command(ctl_args(daemon_.runtime_dir(), {"cancel", id}));
  ASSERT_EQ(all.exit_code, 0) << all.out << all.err;
  EXPECT_NE(all.out.find("cancelled 2 continuation(s)"), std::string::npos) << all.out;
  for (int i = 1; i < 3; ++i) {
    ASSERT_EQ(hs[i].wait_for(8s), Status::kCancelled);
    EXPECT_EQ(hs[i].result().detail, ErrorDetail::kCancelledByOperator);
  }
  auto unknown = run_command(ctl_args(daemon_.runtime_dir(), {"cancel", "999999"}));
  EXPECT_NE(unknown.exit_code, 0);
  EXPECT_NE((unknown.out + unknown.err).find("no client with id 999999"), std::string::npos)
      << unknown.out << unknown.err;
  auto bad = run_command(ctl_args(daemon_.runtime_dir(), {"cancel", id, "--frame", "3"}));
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE((bad.out + bad.err).find("is no frame of client"), std::string::npos)
      << bad.out << bad.err;
}

class Doorbells : public ::testing::Test {
 protected:
  Doorbells() : dir_({"bells"}), daemon_({"--workers", "2", "--plugin-dir", dir_.path()}) {}
  void SetUp() override {
    ASSERT_TRUE(daemon_.ready()) << daemon_.log();
    client_ = connect(daemon_);
    ASSERT_NE(client_, nullptr);
  }
  PluginDir dir_;
  DaemonProcess daemon_;
  std::unique_ptr<Client> client_;
};

TEST_F(Doorbells, ShouldFeedAParkedCoroutineWithoutResubmitting) {
  constexpr std::uint64_t kRings = 200;
  auto h = client_->submit("bells.sum", {}, kRings);
  ASSERT_TRUE(h.ok()) << h.status();
  for (std::uint64_t i = 0; i < kRings; ++i) {
    ASSERT_TRUE(client_->ring(0).ok());
    if (i % 20 == 0) std::this_thread::sleep_for(5ms);  // let it park again, workers sleep
    EXPECT_FALSE(h->done() && i + 1 < kRings) << "completed before the last ring";
  }
  ASSERT_EQ(h->wait_for(10s), Status::kOk) << h->result().error();
  EXPECT_GE(h->result().value, 1u);
  EXPECT_LE(h->result().value, kRings);
  EXPECT_EQ(client_->stats().submitted, 1u) << "fed through the doorbell, not resubmitted";
}

TEST_F(Doorbells, ShouldWakeASleepingPoolForOneRing) {
  auto h = client_->submit("bells.sum", {}, 1);
  ASSERT_TRUE(h.ok()) << h.status();
  std::this_thread::sleep_for(100ms);  // parked; both workers asleep
  EXPECT_FALSE(h->poll());
  const auto start = Clock::now();
  ASSERT_TRUE(client_->ring(0).ok());
  ASSERT_EQ(h->wait_for(5s), Status::kOk) << h->result().error();
  EXPECT_EQ(h->result().value, 1u);
  EXPECT_LT(Clock::now() - start, 2s);
}

TEST_F(Doorbells, ShouldRefuseABellThatDoesNotExist) {
  const auto st = client_->ring(shm::kClientBells);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("0..15"), std::string::npos) << st;
}

TEST_F(Doorbells, ShouldCancelACoroutineWaitingOnADoorbell) {
  auto h = client_->submit("bells.sum", {}, 5);
  ASSERT_TRUE(h.ok()) << h.status();
  std::this_thread::sleep_for(50ms);
  ASSERT_TRUE(h->cancel());
  ASSERT_EQ(h->wait_for(5s), Status::kCancelled) << h->result().error();
}

// Each wait this adds (a deadline, a cancel, a doorbell) on both event backends:
// io_uring, and epoll (Debian 12's 6.1 path, forced).
class OnBackend : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    if (std::string(GetParam()) == "io_uring") {
      const std::string why = engine::probe_io_uring();
      if (!why.empty()) GTEST_SKIP() << "io_uring unavailable here: " << why;
    }
    daemon_ = std::make_unique<DaemonProcess>(std::vector<std::string>{
        "--workers", "2", "--plugin-dir", dir_.path(), "--event-backend", GetParam()});
    ASSERT_TRUE(daemon_->ready()) << daemon_->log();
    client_ = connect(*daemon_);
    ASSERT_NE(client_, nullptr);
  }
  PluginDir dir_{"bells"};
  std::unique_ptr<DaemonProcess> daemon_;
  std::unique_ptr<Client> client_;
};

TEST_P(OnBackend, ShouldEndParkedWorkAtItsDeadlineOnCancelAndWakeItOnADoorbell) {
  const auto start = Clock::now();
  auto late = client_->submit("sleep", {}, 10'000'000'000, in(100ms));
  auto cancelled = client_->submit("sleep", {}, 10'000'000'000);
  auto fed = client_->submit("bells.sum", {}, 50);
  ASSERT_TRUE(late.ok() && cancelled.ok() && fed.ok());
  std::this_thread::sleep_for(30ms);
  EXPECT_TRUE(cancelled->cancel());
  for (int i = 0; i < 50; ++i) {
    ASSERT_TRUE(client_->ring(0).ok());
    if (i % 10 == 0) std::this_thread::sleep_for(2ms);
  }
  EXPECT_EQ(cancelled->wait_for(8s), Status::kCancelled);
  EXPECT_EQ(fed->wait_for(8s), Status::kOk) << fed->result().error();
  EXPECT_EQ(late->wait_for(8s), Status::kDeadlineExceeded);
  EXPECT_LT(Clock::now() - start, 5s);
}

INSTANTIATE_TEST_SUITE_P(Backends, OnBackend, ::testing::Values("epoll", "io_uring"),
                         [](const auto& info) { return std::string(info.param); });

}  // namespace
}  // namespace insideout::testing
