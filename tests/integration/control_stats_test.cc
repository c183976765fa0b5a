// GetStats counts failures by their status and measures continuations' latency.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>
#include <vector>

#include "insideout/client.hpp"
#include "integration/control_support.h"
#include "support/daemon_process.h"

namespace insideout::testing {
namespace {

TEST(ControlStats, ShouldCountFailuresByStatusAndSampleLatency) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  ClientOptions o;
  o.runtime_dir = daemon.runtime_dir();
  auto c = Client::connect(o);
  ASSERT_TRUE(c.ok());
  // 3 unknown functions, 2 bad arguments, 256 noops.
  for (int i = 0; i < 3; ++i) {
    Frame* f = (*c)->allocate_frame();
    f->fn = 9999;
    auto h = (*c)->submit(f);
    ASSERT_TRUE(h.ok());
    EXPECT_EQ(h->wait(), Status::kUnknownFunction);
  }
  for (int i = 0; i < 2; ++i) {
    auto h = (*c)->submit("chain", {}, 0);  // a chain of no steps
    ASSERT_TRUE(h.ok());
    EXPECT_EQ(h->wait(), Status::kInvalidArgument);
  }
  for (int i = 0; i < 256; ++i) {
    auto h = (*c)->submit("noop");
    ASSERT_TRUE(h.ok());
    ASSERT_EQ(h->wait(), Status::kOk);
  }
  auto stub = control_stub(daemon.runtime_dir());
  v1::Stats s;
  ASSERT_TRUE(stub->GetStats(ctx().get(), {}, &s).ok());
  EXPECT_EQ(s.failed_by_reason().at("STATUS_UNKNOWN_FUNCTION"), 3u);
  EXPECT_EQ(s.failed_by_reason().at("STATUS_INVALID_ARGUMENT"), 2u);
  // One in 64 accepted continuations is timed: 261 accepted gives at least 3 samples
  // (the 3 unknown functions are refused at accept, before sampling).
  const auto& h = s.continuation_latency();
  EXPECT_GE(h.count(), 3u);
  EXPECT_EQ(static_cast<std::size_t>(h.counts_size()),
            static_cast<std::size_t>(h.bounds_ns_size()) + 1);
  std::uint64_t sum = 0;
  for (auto n : h.counts()) sum += n;
  EXPECT_EQ(sum, h.count());
  EXPECT_GT(h.sum_ns(), 0u);
}

TEST(ControlStats, ShouldPublishEveryPoolInTheCountersArea) {
  using namespace std::chrono_literals;
  DaemonProcess daemon({"--workers", "2"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto stub = control_stub(daemon.runtime_dir());
  v1::CreatePoolRequest req;
  req.mutable_pool()->set_name("side");
  req.mutable_pool()->set_size(1);
  v1::CreatePoolResponse resp;
  auto st = stub->CreatePool(ctx().get(), req, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ClientOptions o;
  o.runtime_dir = daemon.runtime_dir();
  o.pool = "side";
  auto c = Client::connect(o);
  ASSERT_TRUE(c.ok()) << c.status();
  for (int i = 0; i < 100; ++i) ASSERT_EQ((*c)->submit("noop").value().wait(), Status::kOk);
  std::this_thread::sleep_for(300ms);  // a refresh (every 100 ms) after the last completion
  auto p = run_command(ctl_args(daemon.runtime_dir(), {"stats", "--prometheus"}), 10s);
  EXPECT_EQ(p.exit_code, 0) << p.err;
  // The side pool's work is in the totals, and its worker follows the default pool's two.
  EXPECT_NE(p.out.find("insideout_completed_total 100\n"), std::string::npos) << p.out;
  EXPECT_NE(p.out.find("insideout_queue_depth{worker=\"2\"}"), std::string::npos) << p.out;
}

}  // namespace
}  // namespace insideout::testing
