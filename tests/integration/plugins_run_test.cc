// Plugin code running in the daemon: a plugin function through every path (shared
// memory, the serialized path, gRPC Submit), a reload under a steady stream of calls in
// which every continuation completes exactly once, on the old code or the new, and the
// report of a step that holds its worker too long.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "insideout/client.hpp"
#include "integration/control_support.h"
#include "integration/plugin_support.h"
#include "support/daemon_process.h"

namespace insideout::testing {
namespace {

using namespace std::chrono_literals;

TEST(PluginsRun, ShouldRunAPluginFunctionThroughEveryPath) {
  PluginDir dir({"good"});
  DaemonProcess daemon({"--workers", "2", "--plugin-dir", dir.path()});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  ClientOptions o;
  o.runtime_dir = daemon.runtime_dir();
  auto client = Client::connect(o);
  ASSERT_TRUE(client.ok()) << client.status();
  auto h = (*client)->submit("good.add", {}, 41);
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_EQ(h->wait_for(10s), Status::kOk) << daemon.log();
  EXPECT_EQ(h->result().value, 42u);
  auto s = (*client)->call("good.add", {}, 99);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->status, Status::kOk) << s->error;
  EXPECT_EQ(s->value, 100u);
  auto stub = control_stub(daemon.runtime_dir());
  v1::SubmitRequest q;
  q.set_function("good.hello");
  v1::SubmitResponse r;
  ASSERT_TRUE(stub->Submit(ctx().get(), q, &r).ok());
  EXPECT_EQ(r.value(), 7u);
  EXPECT_TRUE(daemon.alive());
}

// Four client threads keep up to 64 calls each in flight while the control plane swaps
// good (adds 1) and good_v2 (adds 2) back and forth. Every call completes once, OK, with
// the value of one version or the other; the old libraries are unloaded in the end.
TEST(PluginsRun, ShouldCompleteEveryContinuationExactlyOnceAcrossReloadsUnderLoad) {
  PluginDir dir({"good", "good_v2"});
  DaemonProcess daemon({"--workers", "2", "--plugin-dir", dir.path()});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> submitted{0}, ok{0}, wrong{0}, v1_seen{0}, v2_seen{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      ClientOptions o;
      o.runtime_dir = daemon.runtime_dir();
      o.name = "stream" + std::to_string(t);
      auto c = Client::connect(o);
      if (!c.ok()) return wrong.fetch_add(1000000), void();
      // good.slow parks 1-3 ms between its two steps: many continuations are parked, their
      // next step the old library's code, whenever a reload replaces it.
      const auto id = (*c)->function_id("good.slow");
      if (!id.ok()) return wrong.fetch_add(1000000), void();
      std::uint64_t arg = static_cast<std::uint64_t>(t);
      std::vector<std::pair<std::uint64_t, Handle>> inflight;
      while (!stop.load(std::memory_order_relaxed) || !inflight.empty()) {
        while (!stop.load(std::memory_order_relaxed) && inflight.size() < 64) {
          auto h = (*c)->submit(*id, {}, (++arg % 3) + 1);
          if (!h.ok()) break;
          submitted.fetch_add(1);
          inflight.emplace_back((arg % 3) + 1, std::move(*h));
        }
        auto& [a, h] = inflight.front();
        const auto st = h.wait_for(10s);
        if (st == Status::kOk && h.result().value == a + 1) {
          ok.fetch_add(1), v1_seen.fetch_add(1);
        } else if (st == Status::kOk && h.result().value == a + 2) {
          ok.fetch_add(1), v2_seen.fetch_add(1);
        } else {
          wrong.fetch_add(1);
        }
        inflight.erase(inflight.begin());
      }
    });
  }
  auto stub = control_stub(daemon.runtime_dir());
  for (int i = 0; i < 20; ++i) {
    std::this_thread::sleep_for(20ms);
    v1::ReloadPluginRequest rq;
    rq.set_name("good");
    rq.set_path(dir.file(i % 2 == 0 ? "good_v2" : "good"));
    v1::ReloadPluginResponse rr;
    const auto st = stub->ReloadPlugin(ctx(15s).get(), rq, &rr);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  std::this_thread::sleep_for(50ms);
  stop.store(true);
  for (auto& t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0u) << daemon.log();
  EXPECT_EQ(ok.load(), submitted.load());
  EXPECT_GT(v1_seen.load(), 0u);
  EXPECT_GT(v2_seen.load(), 0u);
  // Every old instance is unloaded once its continuations are done.
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  v1::ListPluginsResponse pl;
  for (;;) {
    ASSERT_TRUE(stub->ListPlugins(ctx().get(), {}, &pl).ok());
    if (pl.plugins_size() == 1 || std::chrono::steady_clock::now() > deadline) break;
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(pl.plugins_size(), 1) << "old instances still draining";
  EXPECT_TRUE(daemon.alive());
  std::size_t unloaded = 0;
  const std::string log = daemon.log();
  for (auto p = log.find("unloaded: nothing of it runs any more"); p != std::string::npos;
       p = log.find("unloaded: nothing of it runs any more", p + 1))
    ++unloaded;
  EXPECT_EQ(unloaded, 20u) << "each reload's old instance is unloaded once";
}

// A continuation parked in the old code across a reload: the old instance drains (shown
// by ListPlugins) while it sleeps, the continuation finishes on the old code, and only
// then is the old library unloaded.
TEST(PluginsRun, ShouldKeepTheOldLibraryUntilItsParkedContinuationFinished) {
  PluginDir dir({"good", "good_v2"});
  DaemonProcess daemon({"--workers", "2", "--plugin-dir", dir.path()});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  ClientOptions o;
  o.runtime_dir = daemon.runtime_dir();
  auto client = Client::connect(o);
  ASSERT_TRUE(client.ok()) << client.status();
  auto h = (*client)->submit("good.slow", {}, 2500);  // parks 2.5 s in good.so's code
  ASSERT_TRUE(h.ok()) << h.status();
  std::this_thread::sleep_for(100ms);
  auto stub = control_stub(daemon.runtime_dir());
  v1::ReloadPluginRequest rq;
  rq.set_name("good");
  rq.set_path(dir.file("good_v2"));
  v1::ReloadPluginResponse rr;
  ASSERT_TRUE(stub->ReloadPlugin(ctx(15s).get(), rq, &rr).ok());
  EXPECT_FALSE(rr.old_unloaded()) << "unloaded while a continuation was parked in it";
  v1::ListPluginsResponse pl;
  ASSERT_TRUE(stub->ListPlugins(ctx().get(), {}, &pl).ok());
  ASSERT_EQ(pl.plugins_size(), 2);
  EXPECT_FALSE(pl.plugins(0).draining());
  EXPECT_EQ(pl.plugins(0).version(), "2.0");
  EXPECT_TRUE(pl.plugins(1).draining());
  EXPECT_EQ(pl.plugins(1).version(), "1.0");
  const std::string maps = read_file("/proc/" + std::to_string(daemon.pid()) + "/maps");
  EXPECT_NE(maps.find(dir.file("good")), std::string::npos) << "the old library is gone early";
  // New continuations run the new code meanwhile.
  auto s = (*client)->call("good.add", {}, 10);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->value, 12u);
  // The parked one finishes on the old code.
  ASSERT_EQ(h->wait_for(10s), Status::kOk) << daemon.log();
  EXPECT_EQ(h->result().value, 2501u);
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  for (;;) {
    ASSERT_TRUE(stub->ListPlugins(ctx().get(), {}, &pl).ok());
    if (pl.plugins_size() == 1 || std::chrono::steady_clock::now() > deadline) break;
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(pl.plugins_size(), 1) << "the old instance never finished draining";
  const std::string after = read_file("/proc/" + std::to_string(daemon.pid()) + "/maps");
  EXPECT_EQ(after.find(dir.file("good") + "\n"), std::string::npos) << "still mapped";
  EXPECT_TRUE(daemon.alive());
}

TEST(PluginsRun, ShouldReportAStepThatHoldsItsWorkerPastTheBound) {
  PluginDir dir({"spinner"});
  DaemonProcess daemon({"--workers", "2", "--long-step-ms", "100", "--plugin-dir", dir.path()});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  ClientOptions o;
  o.runtime_dir = daemon.runtime_dir();
  auto client = Client::connect(o);
  ASSERT_TRUE(client.ok()) << client.status();
  auto quick = (*client)->submit("spinner.spin", {}, 1);
  ASSERT_TRUE(quick.ok()) << quick.status();
  ASSERT_EQ(quick->wait_for(10s), Status::kOk);
  auto stub = control_stub(daemon.runtime_dir());
  auto long_steps = [&] {
    std::uint64_t n = 0;
    v1::ListWorkersRequest q;
    v1::ListWorkersResponse r;
    EXPECT_TRUE(stub->ListWorkers(ctx().get(), q, &r).ok());
    for (const auto& w : r.workers()) n += w.counters().long_steps();
    return n;
  };
  EXPECT_EQ(long_steps(), 0u);
  // 15 times the bound: the daemon's timer thread sees it even on a loaded machine.
  auto slow = (*client)->submit("spinner.spin", {}, 1500);
  ASSERT_TRUE(slow.ok()) << slow.status();
  ASSERT_EQ(slow->wait_for(10s), Status::kOk);
  EXPECT_EQ(slow->result().value, 1500u);
  EXPECT_EQ(long_steps(), 1u);
  // One line, naming the function and the worker; the daemon carries on.
  const std::string log = daemon.log();
  EXPECT_NE(log.find("'spinner.spin' has run for"), std::string::npos) << log;
  EXPECT_NE(log.find("worker"), std::string::npos) << log;
  auto after = (*client)->submit("spinner.spin", {}, 1);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->wait_for(10s), Status::kOk);
}

TEST(PluginsRun, ShouldHandAFunctionsFailureMessageBackOnEveryPath) {
  PluginDir dir({"spinner"});
  DaemonProcess daemon({"--workers", "2", "--plugin-dir", dir.path()});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  ClientOptions o;
  o.runtime_dir = daemon.runtime_dir();
  auto client = Client::connect(o);
  ASSERT_TRUE(client.ok()) << client.status();
  // Shared memory: the frame's message slot.
  auto h = (*client)->submit("spinner.fail", {}, 7);
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_EQ(h->wait_for(10s), Status::kFailed);
  EXPECT_EQ(h->result().message, "asked to fail, with ARG 7");
  EXPECT_EQ(h->result().error(), "failed: asked to fail, with ARG 7");
  // The serialized path.
  auto s = (*client)->call("spinner.fail", {}, 8);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->status, Status::kFailed);
  EXPECT_EQ(s->error, "failed: asked to fail, with ARG 8");
  // gRPC Submit.
  auto stub = control_stub(daemon.runtime_dir());
  v1::SubmitRequest q;
  q.set_function("spinner.fail");
  q.set_arg(9);
  v1::SubmitResponse r;
  ASSERT_TRUE(stub->Submit(ctx().get(), q, &r).ok());
  EXPECT_EQ(r.status_name(), "STATUS_FAILED");
  EXPECT_EQ(r.error(), "failed: asked to fail, with ARG 9");
}

}  // namespace
}  // namespace insideout::testing
