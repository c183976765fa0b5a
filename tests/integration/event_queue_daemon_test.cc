// The event queue inside insideoutd, on each backend (--event-backend): a sleep, a signal
// sent to the daemon resuming a plugin's continuation, a pipe between two continuations,
// and a client that leaves while its continuation waits on a descriptor leaves no
// descriptor behind in the daemon.
#include <dirent.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <string>
#include <thread>

#include "event_queue.h"
#include "insideout/client.hpp"
#include "integration/plugin_support.h"
#include "support/daemon_process.h"

namespace insideout::testing {
namespace {

using namespace std::chrono_literals;

int open_fds(pid_t pid) {
  int n = 0;
  DIR* d = ::opendir(("/proc/" + std::to_string(pid) + "/fd").c_str());
  if (d == nullptr) return -1;
  while (dirent* e = ::readdir(d)) n += e->d_name[0] != '.';
  ::closedir(d);
  return n;
}

class DaemonEventQueue : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    if (std::string(GetParam()) == "io_uring") {
      const std::string why = engine::probe_io_uring();
      if (!why.empty()) GTEST_SKIP() << "io_uring unavailable here: " << why;
    }
    dir_ = std::make_unique<PluginDir>(std::initializer_list<const char*>{"events"});
    daemon_ = std::make_unique<DaemonProcess>(std::vector<std::string>{
        "--workers", "2", "--plugin-dir", dir_->path(), "--event-backend", GetParam()});
    ASSERT_TRUE(daemon_->ready()) << daemon_->log();
  }
  std::unique_ptr<Client> connect() {
    ClientOptions o;
    o.runtime_dir = daemon_->runtime_dir();
    auto c = Client::connect(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(*c) : nullptr;
  }
  std::unique_ptr<PluginDir> dir_;
  std::unique_ptr<DaemonProcess> daemon_;
};

TEST_P(DaemonEventQueue, ShouldSleepAndPassBytesBetweenContinuations) {
  auto client = connect();
  ASSERT_NE(client, nullptr);
  const auto t0 = std::chrono::steady_clock::now();
  auto s = client->submit("sleep", {}, 20'000'000);
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_EQ(s->wait_for(10s), Status::kOk) << daemon_->log();
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 20ms);
  auto p = client->submit("events.pipe_trip");
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->wait_for(10s), Status::kOk) << p->result().error() << daemon_->log();
  EXPECT_EQ(p->result().value, 42u);
}

TEST_P(DaemonEventQueue, ShouldResumeAContinuationWaitingOnASignalSentToTheDaemon) {
  auto client = connect();
  ASSERT_NE(client, nullptr);
  auto h = client->submit("events.wait_signal", {}, 10'000);
  ASSERT_TRUE(h.ok()) << h.status();
  // The signal must come after the wait is parked: retry until it resumes (a signal sent
  // before the park is consumed with nobody waiting, as sigwaitinfo would drop it).
  std::optional<Status> st;
  for (int i = 0; i < 100 && !st; ++i) {
    ASSERT_EQ(::kill(daemon_->pid(), SIGUSR1), 0);
    st = h->wait_for(50ms);
  }
  ASSERT_TRUE(st.has_value()) << "no resume after SIGUSR1\n" << daemon_->log();
  ASSERT_EQ(*st, Status::kOk) << h->result().error();
  EXPECT_EQ(h->result().value, static_cast<std::uint64_t>(SIGUSR1));
  EXPECT_TRUE(daemon_->alive()) << "SIGUSR1 must not kill the daemon";
}

TEST_P(DaemonEventQueue, ShouldLeaveNoDescriptorBehindWhenAClientLeavesWhileWaiting) {
  // Warm the daemon up (its pools, a first client) before counting its descriptors.
  {
    auto warm = connect();
    ASSERT_NE(warm, nullptr);
    auto h = warm->submit("events.pipe_trip");
    ASSERT_TRUE(h.ok());
    ASSERT_EQ(h->wait_for(10s), Status::kOk);
  }
  std::this_thread::sleep_for(200ms);
  const int before = open_fds(daemon_->pid());
  ASSERT_GT(before, 0);
  {
    auto client = connect();
    ASSERT_NE(client, nullptr);
    for (int i = 0; i < 16; ++i) {
      auto h = client->submit("events.stuck", {}, 600'000);  // ten minutes
      ASSERT_TRUE(h.ok()) << h.status();
      h->reset();  // abandoned: the client leaves with them parked
    }
    std::this_thread::sleep_for(100ms);
    EXPECT_GE(open_fds(daemon_->pid()), before + 32) << "the continuations did not park";
  }
  // The client is gone: its parked continuations are cut off and their frames close
  // their pipes.
  int after = -1;
  for (int i = 0; i < 200; ++i) {
    after = open_fds(daemon_->pid());
    if (after <= before) break;
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_LE(after, before) << daemon_->log();
  EXPECT_TRUE(daemon_->alive());
}

INSTANTIATE_TEST_SUITE_P(Backends, DaemonEventQueue, ::testing::Values("epoll", "io_uring"),
                         [](const auto& info) { return std::string(info.param); });

}  // namespace
}  // namespace insideout::testing
