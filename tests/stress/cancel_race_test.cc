// Cancel racing completion (issue 9): 100,000 continuations, each cancelled as soon as it
// was submitted, so that the cancel meets it queued, parked, running or already done.
// Every one must complete exactly once, with its own outcome or kCancelled: no frame is
// completed twice (the client counts every completion it drains) and none is lost
// (every wait returns).
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include "insideout/client.hpp"
#include "support/daemon_process.h"

namespace insideout::testing {
namespace {

using namespace std::chrono_literals;

TEST(CancelRace, ShouldGiveEveryContinuationExactlyOneOutcomeWhenCancelRacesCompletion) {
  DaemonProcess daemon({"--workers", "2"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  ClientOptions o;
  o.runtime_dir = daemon.runtime_dir();
  auto client = Client::connect(o);
  ASSERT_TRUE(client.ok()) << client.status();
  Client& c = **client;
  const std::uint32_t noop = c.function_id("noop").value();
  const std::uint32_t chain = c.function_id("chain").value();
  const std::uint32_t sleep = c.function_id("sleep").value();

  constexpr std::size_t kTotal = 100'000, kBatch = 250;
  std::size_t ok = 0, cancelled = 0;
  std::vector<Frame*> frames(kBatch);
  std::vector<Handle> hs;
  hs.reserve(kBatch);
  const auto start = std::chrono::steady_clock::now();
  for (std::size_t done = 0; done < kTotal; done += kBatch) {
    ASSERT_EQ(c.allocate_frames(frames), kBatch);
    for (std::size_t i = 0; i < kBatch; ++i) {
      Frame* f = frames[i];
      f->flags = shm::kFrameEnvInline;
      f->env_len = 0;
      switch ((done + i) % 4) {
        case 0:  // parks (20 us): cancelled parked, or after it woke
          f->fn = sleep;
          f->arg = 20'000;
          break;
        case 1:  // a few steps: cancelled queued, between steps, or done
          f->fn = chain;
          f->arg = 3;
          break;
        default:  // done at once: mostly completes before the cancel
          f->fn = noop;
          f->arg = 0;
          break;
      }
    }
    hs.clear();
    ASSERT_TRUE(c.submit_batch(frames, &hs).ok());
    for (auto& h : hs) h.cancel();
    for (auto& h : hs) {
      const auto st = h.wait_for(10s);
      ASSERT_TRUE(st.has_value()) << "a continuation never completed";
      if (*st == Status::kOk) {
        ++ok;
      } else {
        ASSERT_EQ(*st, Status::kCancelled) << h.result().error();
        ASSERT_EQ(h.result().detail, ErrorDetail::kCancelledByClient);
        ++cancelled;
      }
    }
  }
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(ok + cancelled, kTotal);
  // A frame completed twice would show as a completion beyond the submissions.
  std::this_thread::sleep_for(50ms);
  c.poll();
  EXPECT_EQ(c.stats().completed, c.stats().submitted);
  EXPECT_EQ(c.stats().submitted, kTotal);
  std::printf(
      "cancel race: %zu ok, %zu cancelled in %lld ms\n", ok, cancelled,
      static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(took).count()));
}

}  // namespace
}  // namespace insideout::testing
