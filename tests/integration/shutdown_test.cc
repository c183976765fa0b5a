// SIGTERM with clients connected and work in flight: the daemon drains (running work
// completes, parked sleeps are cancelled), says goodbye, exits 0 and leaves nothing
// behind.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <thread>
#include <vector>

#include "insideout/client.hpp"
#include "insideout/shm/layout.h"
#include "integration/raw_protocol.h"
#include "integration/workload.h"
#include "support/daemon_process.h"

namespace insideout::testing {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr std::uint64_t kTenSeconds = 10'000'000'000;
constexpr std::uint64_t kChainSteps = 5'000'000;
constexpr std::uint64_t kFanout = 300'000;

TEST(Shutdown, ShouldDrainSayGoodbyeExitZeroAndLeaveNothingBehindOnSigterm) {
  // A generous drain timeout: the point is that running work completes, however slow
  // the build (sanitizers) makes it.
  DaemonProcess daemon({"--drain-timeout-ms", "60000"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  const std::string dir = daemon.runtime_dir();

  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < 2; ++i) {
    ClientOptions co;
    co.runtime_dir = dir;
    co.name = "shutdown-" + std::to_string(i);
    auto c = Client::connect(co);
    ASSERT_TRUE(c.ok()) << c.status();
    clients.push_back(std::move(*c));
  }
  struct Expect {
    Handle h;
    const char* what;
    Status status;
    std::uint64_t value;
  };
  std::vector<Expect> work;
  for (auto& c : clients) {
    for (int k = 0; k < 3; ++k)
      work.push_back({c->submit("sleep", {}, kTenSeconds).value(), "sleep", Status::kCancelled, 0});
    work.push_back(
        {c->submit("chain", {}, kChainSteps).value(), "chain", Status::kOk, kChainSteps});
    work.push_back({c->submit("fanout", {}, kFanout).value(), "fanout", Status::kOk, kFanout});
    // The daemon takes a ring in order: once this noop has completed, everything before
    // it was accepted and is the daemon's to finish (none of it may end as "daemon lost").
    auto marker = c->submit("noop").value();
    ASSERT_EQ(marker.wait_for(10s), Status::kOk);
  }
  // A caller of the serialized path waits for a sleep too; the echo behind it on the same
  // connection proves the daemon has taken it.
  RawConnection raw(daemon.socket_path());
  ASSERT_TRUE(raw.valid()) << raw.error();
  ASSERT_EQ(raw.send(hello_message()), 0);
  v1::DaemonMessage m;
  ASSERT_EQ(raw.recv(&m, 5s), v1::RecvStatus::kOk);
  ASSERT_TRUE(m.has_welcome()) << m.DebugString();
  ASSERT_EQ(raw.send(submit_message("sleep", "", kTenSeconds, 1)), 0);
  ASSERT_EQ(raw.send(submit_message("echo", "behind", 0, 2)), 0);
  ASSERT_EQ(raw.recv(&m, 5s), v1::RecvStatus::kOk);
  ASSERT_TRUE(m.has_result() && m.result().tag() == 2) << m.DebugString();

  int running = 0;  // for the record: how much was still running when the signal came
  for (auto& e : work) running += !e.h.poll();
  ASSERT_EQ(daemon.stop(SIGTERM, 90s), 0) << daemon.log();
  RecordProperty("in_flight_at_sigterm", running);

  for (auto& e : work) {
    SCOPED_TRACE(e.what);
    const auto st = e.h.wait_for(5s);
    ASSERT_TRUE(st.has_value()) << "no outcome 5 s after the daemon exited";
    EXPECT_EQ(*st, e.status) << e.h.result().error();
    EXPECT_EQ(e.h.result().value, e.value);
    if (e.status == Status::kCancelled) {
      EXPECT_EQ(e.h.result().detail, ErrorDetail::kShutdown);
    }
  }
  // The serialized sleep: cancelled, then Goodbye, then the connection closes.
  ASSERT_EQ(raw.recv(&m, 5s), v1::RecvStatus::kOk);
  ASSERT_TRUE(m.has_result()) << m.DebugString();
  EXPECT_EQ(m.result().tag(), 1u);
  EXPECT_EQ(m.result().status(), v1::STATUS_CANCELLED) << m.result().error();
  ASSERT_EQ(raw.recv(&m, 5s), v1::RecvStatus::kOk);
  ASSERT_TRUE(m.has_goodbye()) << m.DebugString();
  EXPECT_NE(m.goodbye().reason().find("shutting down"), std::string::npos) << m.goodbye().reason();
  EXPECT_EQ(raw.recv(&m, 5s), v1::RecvStatus::kClosed);

  for (auto& c : clients) {
    const auto until = Clock::now() + 2s;
    while (!c->daemon_lost() && Clock::now() < until) std::this_thread::sleep_for(5ms);
    EXPECT_TRUE(c->daemon_lost());
    EXPECT_NE(c->lost_reason().find("shutting down"), std::string::npos) << c->lost_reason();
    EXPECT_EQ(static_cast<const shm::SegmentHeader*>(c->segment_base())->state.load(),
              static_cast<std::uint32_t>(shm::SegmentState::kClosed));
  }
  EXPECT_TRUE(list_dir(dir).empty())
      << "left in " << dir << ": " << ::testing::PrintToString(list_dir(dir));
  std::vector<std::string> shm_left;
  for (const auto& name : list_dir("/dev/shm")) {
    if (name.find("insideout") != std::string::npos) shm_left.push_back(name);
  }
  EXPECT_TRUE(shm_left.empty()) << ::testing::PrintToString(shm_left);
}

TEST(Shutdown, ShouldExitZeroOnSigintAndSigtermWithNoClients) {
  for (int sig : {SIGTERM, SIGINT}) {
    DaemonProcess daemon;
    ASSERT_TRUE(daemon.ready()) << daemon.log();
    const std::string dir = daemon.runtime_dir();
    EXPECT_EQ(daemon.stop(sig, 30s), 0) << strsignal(sig) << "\n" << daemon.log();
    EXPECT_TRUE(list_dir(dir).empty()) << ::testing::PrintToString(list_dir(dir));
  }
}

}  // namespace
}  // namespace insideout::testing
