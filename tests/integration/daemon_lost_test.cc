// The daemon dies (SIGKILL) while clients wait: every pending handle and serialized call
// fails with "daemon lost" within a second; nothing waits forever.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <future>
#include <optional>
#include <thread>

#include "insideout/client.hpp"
#include "integration/workload.h"
#include "support/daemon_process.h"

namespace insideout::testing {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr std::uint64_t kTenSeconds = 10'000'000'000;

// Kills the daemon after `delay`, from another thread; `killed_at` says when.
std::thread kill_later(DaemonProcess& daemon, std::chrono::milliseconds delay,
                       std::promise<Clock::time_point>& killed_at) {
  return std::thread([&daemon, delay, &killed_at] {
    std::this_thread::sleep_for(delay);
    const auto t = Clock::now();
    ::kill(daemon.pid(), SIGKILL);
    killed_at.set_value(t);
  });
}

TEST(DaemonLost, ShouldFailAWaitingHandleWithDaemonLostWithinOneSecond) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  ClientOptions co;
  co.runtime_dir = daemon.runtime_dir();
  co.reconnect_wait = 500ms;  // no daemon comes back: submit() gives up after this
  auto c = Client::connect(co);
  ASSERT_TRUE(c.ok()) << c.status();
  auto waited = (*c)->submit("sleep", {}, kTenSeconds);
  auto timed = (*c)->submit("sleep", {}, kTenSeconds);
  ASSERT_TRUE(waited.ok() && timed.ok());

  // One handle in wait() (unbounded) on its own thread, one in wait_for() here.
  std::promise<std::pair<Status, Clock::time_point>> waited_result;
  auto waited_future = waited_result.get_future();
  std::thread waiter([&] {
    const Status s = waited->wait();
    waited_result.set_value({s, Clock::now()});
  });
  std::promise<Clock::time_point> killed_at;
  std::thread killer = kill_later(daemon, 300ms, killed_at);

  const std::optional<Status> st = timed->wait_for(5s);
  const auto returned = Clock::now();
  killer.join();
  const auto kill_time = killed_at.get_future().get();
  EXPECT_EQ(st, Status::kDaemonLost);
  EXPECT_LT(returned - kill_time, 1s) << "wait_for() noticed the loss late";
  EXPECT_EQ(timed->result().status, Status::kDaemonLost);

  if (waited_future.wait_for(5s) != std::future_status::ready) {
    ADD_FAILURE() << "wait() still blocked 5 s after the daemon died";
    waiter.detach();  // it holds the client: leak both rather than hang
    (void)c->release();
    return;
  }
  waiter.join();
  const auto [ws, wt] = waited_future.get();
  EXPECT_EQ(ws, Status::kDaemonLost);
  EXPECT_LT(wt - kill_time, 1s) << "wait() noticed the loss late";

  EXPECT_TRUE((*c)->daemon_lost());
  EXPECT_FALSE((*c)->lost_reason().empty());
  EXPECT_EQ(daemon.stop(SIGKILL, 5s), 128 + SIGKILL);
  // And nothing new is accepted on a lost connection.
  auto after = (*c)->submit("noop");
  EXPECT_FALSE(after.ok());
}

TEST(DaemonLost, ShouldFailWaitingSerializedCallsWithDaemonLostWithinOneSecond) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  // Both kinds of client wait in call(): a serialized-only one and one with a segment.
  std::unique_ptr<Client> clients[2];
  for (int i = 0; i < 2; ++i) {
    ClientOptions co;
    co.runtime_dir = daemon.runtime_dir();
    co.want_segment = i == 1;
    co.reconnect = false;  // lost for good: later calls fail at once
    auto c = Client::connect(co);
    ASSERT_TRUE(c.ok()) << c.status();
    clients[i] = std::move(*c);
    auto quick = clients[i]->call("echo", "ping");  // the path works before
    ASSERT_TRUE(quick.ok()) << quick.status();
    EXPECT_EQ(quick->status, Status::kOk);
    EXPECT_EQ(quick->data, "ping");
  }
  struct Outcome {
    absl::StatusOr<SerialResult> result;
    Clock::time_point returned;
  };
  std::promise<Outcome> outcomes[2];
  std::thread callers[2];
  for (int i = 0; i < 2; ++i) {
    callers[i] = std::thread([&, i] {
      auto r = clients[i]->call("sleep", "", kTenSeconds, 8s);
      outcomes[i].set_value({std::move(r), Clock::now()});
    });
  }
  std::promise<Clock::time_point> killed_at;
  std::thread killer = kill_later(daemon, 300ms, killed_at);
  killer.join();
  const auto kill_time = killed_at.get_future().get();
  for (int i = 0; i < 2; ++i) {
    SCOPED_TRACE(i == 0 ? "serialized-only client" : "client with a segment");
    callers[i].join();  // bounded: call() gives up after 8 s at worst
    const Outcome o = outcomes[i].get_future().get();
    EXPECT_LT(o.returned - kill_time, 1s) << "call() noticed the loss late";
    if (o.result.ok()) {
      EXPECT_EQ(o.result->status, Status::kDaemonLost) << o.result->error;
      EXPECT_NE(o.result->error.find("daemon lost"), std::string::npos) << o.result->error;
    } else {
      EXPECT_NE(o.result.status().message().find("daemon lost"), std::string::npos)
          << o.result.status();
    }
    EXPECT_TRUE(clients[i]->daemon_lost());
    // Later calls fail at once.
    const auto t0 = Clock::now();
    const auto again = clients[i]->call("noop", "", 0, 5s);
    EXPECT_LT(Clock::now() - t0, 1s);
    EXPECT_FALSE(again.ok() && again->status == Status::kOk);
  }
  EXPECT_EQ(daemon.stop(SIGKILL, 5s), 128 + SIGKILL);
}

}  // namespace
}  // namespace insideout::testing
