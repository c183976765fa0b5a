// Per-client limits (insideoutd --max-timers, --max-inflight, --max-segment-mib): one
// client's appetite is refused with a clear status, and nobody else notices.
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <vector>

#include "insideout/client.hpp"
#include "support/daemon_process.h"

namespace insideout::testing {
namespace {

using namespace std::chrono_literals;

std::unique_ptr<Client> connect(const std::string& dir, ClientOptions co = {}) {
  co.runtime_dir = dir;
  auto c = Client::connect(co);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? std::move(*c) : nullptr;
}

TEST(ClientLimits, ShouldFailSleepsPastTheClientsTimerLimitAndKeepTheRest) {
  DaemonProcess daemon({"--max-timers", "8"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto c = connect(daemon.runtime_dir());
  ASSERT_NE(c, nullptr);
  std::vector<Handle> handles;
  for (int i = 0; i < 12; ++i) {
    auto h = c->submit("sleep", {}, 400'000'000);  // 400 ms
    ASSERT_TRUE(h.ok()) << h.status();
    handles.push_back(std::move(*h));
  }
  int ok = 0, refused = 0;
  for (auto& h : handles) {
    const auto st = h.wait_for(5s);
    ASSERT_TRUE(st.has_value());
    if (*st == shm::Status::kOk) {
      ++ok;
    } else {
      EXPECT_EQ(*st, shm::Status::kBackpressure);
      EXPECT_EQ(h.result().detail, shm::ErrorDetail::kTooManyTimers) << h.result().error();
      ++refused;
    }
  }
  EXPECT_EQ(ok, 8);
  EXPECT_EQ(refused, 4);
  // Another client has its own allowance, and the first one's is free again.
  auto other = connect(daemon.runtime_dir());
  ASSERT_NE(other, nullptr);
  auto h = other->submit("sleep", {}, 1'000'000);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->wait_for(5s), shm::Status::kOk);
  auto again = c->submit("sleep", {}, 1'000'000);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->wait_for(5s), shm::Status::kOk);
}

TEST(ClientLimits, ShouldRefuseASegmentOverTheLimitNamingTheOption) {
  DaemonProcess daemon({"--max-segment-mib", "2"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  ClientOptions co;
  co.runtime_dir = daemon.runtime_dir();
  co.segment.buffer_block_size = 4096;
  co.segment.buffer_block_count = 4096;  // 16 MiB of buffers
  auto c = Client::connect(co);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(std::string(c.status().message()).find("--max-segment-mib"), std::string::npos)
      << c.status();
  EXPECT_NE(connect(daemon.runtime_dir()), nullptr) << "a default segment still fits";
}

TEST(ClientLimits, ShouldHoldAtMostMaxInflightOfOneClient) {
  DaemonProcess daemon({"--max-inflight", "4"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto c = connect(daemon.runtime_dir());
  ASSERT_NE(c, nullptr);
  std::vector<Handle> handles;
  for (int i = 0; i < 6; ++i) {
    auto h = c->submit("sleep", {}, 300'000'000);  // 300 ms each
    ASSERT_TRUE(h.ok()) << h.status();
    handles.push_back(std::move(*h));
  }
  // Four run at once; the last two start when two of them have finished.
  const auto t0 = std::chrono::steady_clock::now();
  for (auto& h : handles) EXPECT_EQ(h.wait_for(5s), shm::Status::kOk);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 550ms);
}

}  // namespace
}  // namespace insideout::testing
