// One client floods the daemon with long work and keeps its ring full; another's small
// continuations must still get through promptly: workers visit client rings in turn and
// take at most a batch from each.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "insideout/client.hpp"
#include "support/daemon_process.h"

namespace insideout {
namespace {

using namespace std::chrono_literals;

TEST(Fairness, ShouldServeAQuietClientWhileAnotherFloods) {
  testing::DaemonProcess daemon;
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  ClientOptions o;
  o.runtime_dir = daemon.runtime_dir();
  o.segment.ring_capacity = 1024;
  o.segment.frame_count = 1024;
  o.on_full = OnFull::kFailFast;
  auto flood = Client::connect(o);
  auto quiet = Client::connect(o);
  ASSERT_TRUE(flood.ok() && quiet.ok());

  // The flooder: every frame it has, each a chain of 200,000 yields (all of them together
  // are seconds of work), refilled as they complete, for as long as the quiet client runs.
  std::atomic<bool> stop{false};
  std::atomic<std::size_t> flood_inflight{0};
  std::thread flooder([&] {
    const std::uint32_t chain = *(*flood)->function_id("chain");
    std::vector<Handle> inflight;
    while (!stop.load()) {
      while (Frame* f = (*flood)->allocate_frame()) {
        f->fn = chain;
        f->arg = 200'000;
        auto h = (*flood)->submit(f);
        if (!h.ok()) {
          (*flood)->release_frame(f);
          break;
        }
        inflight.push_back(std::move(*h));
      }
      (*flood)->poll();
      std::erase_if(inflight, [&](Handle& h) { return h.done(); });
      flood_inflight.store(inflight.size());
      std::this_thread::sleep_for(100us);
    }
  });

  // Let the flood build up, then time the quiet client's round trips.
  std::this_thread::sleep_for(100ms);
  std::vector<double> ms;
  for (int i = 0; i < 200; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    auto h = (*quiet)->submit("noop");
    ASSERT_TRUE(h.ok());
    auto st = h->wait_for(10s);
    ASSERT_TRUE(st.has_value()) << "the quiet client starved";
    EXPECT_EQ(*st, Status::kOk);
    ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  const std::size_t still_flooding = flood_inflight.load();
  stop = true;
  flooder.join();
  std::sort(ms.begin(), ms.end());
  // The flood was still in the daemon when the quiet client finished (a scheduler that
  // served clients first come, first served would have made it wait for all of it, which
  // is seconds); the quiet client's median round trip is far below that.
  EXPECT_GE(still_flooding, 512u);
  EXPECT_LT(ms[ms.size() / 2], 500.0) << "median round trip " << ms[ms.size() / 2] << " ms";
}

}  // namespace
}  // namespace insideout
