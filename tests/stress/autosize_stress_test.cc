// A pool that sizes itself under a bursty load, in-process so ThreadSanitizer sees every
// thread: the autosize controller grows and shrinks the pool while bursts of mixed
// noop/chain/fanout/sleep continuations come and go; every continuation completes
// exactly once with its result. Bounded in count (and by a 60 s deadline), no timing
// asserts: the counts of grows and shrinks are printed, and only "it resized at all" is
// required of them.
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <thread>
#include <vector>

#include "autosize.h"
#include "support/in_process.h"

namespace insideout {
namespace {

using shm::Frame;
using shm::Status;
using testing::InProcessDaemon;

engine::AutosizeConfig quick(std::uint32_t min, std::uint32_t max) {
  engine::AutosizeConfig c;
  c.min = min;
  c.max = max;
  c.interval = std::chrono::microseconds(100);
  c.grow_after = std::chrono::microseconds(300);
  c.shrink_after = std::chrono::microseconds(2000);
  c.target_delay = std::chrono::microseconds(50);
  return c;
}

void run_bursts(shm::IdleStrategy idle, int total, int burst) {
  InProcessDaemon d(1, {}, idle);
  d.scheduler().set_autosize(quick(1, 4));
  const std::uint32_t fns[] = {d.fn("noop"), d.fn("chain"), d.fn("fanout"), d.fn("sleep")};
  std::vector<std::atomic<int>> seen(static_cast<std::size_t>(total));
  int completed = 0, bad = 0, dup = 0;
  std::uint32_t most = 1;
  auto take = [&](Frame* c) {
    const auto tag = static_cast<std::size_t>(c->tag);
    const std::uint32_t k = static_cast<std::uint32_t>(c->tag % 4);
    const std::uint64_t want = k == 1 || k == 2 ? c->arg : 0;
    if (c->status != static_cast<std::uint16_t>(Status::kOk) || c->result != want) ++bad;
    if (tag >= seen.size() || seen[tag].fetch_add(1) != 0) ++dup;
    ++completed;
    d.release(c);
  };
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  int submitted = 0;
  while (submitted < total && std::chrono::steady_clock::now() < deadline) {
    // A burst: as many as the segment holds, up to `burst`, then let it drain.
    const int end = std::min(total, submitted + burst);
    while (submitted < end) {
      Frame* f = d.frame();
      if (f == nullptr) {
        if (Frame* c = d.next(std::chrono::milliseconds(5))) take(c);
        continue;
      }
      const std::uint32_t k = static_cast<std::uint32_t>(submitted) % 4;
      f->fn = fns[k];
      f->arg = k == 1 ? 20 : k == 2 ? 200 : k == 3 ? 100'000 : 0;
      f->tag = static_cast<std::uint64_t>(submitted);
      while (!d.push(f)) {
        if (Frame* c = d.next(std::chrono::milliseconds(0))) take(c);
      }
      ++submitted;
      most = std::max(most, d.scheduler().worker_count());
    }
    while (completed < submitted && std::chrono::steady_clock::now() < deadline) {
      if (Frame* c = d.next(std::chrono::milliseconds(100))) take(c);
      most = std::max(most, d.scheduler().worker_count());
    }
    // A pause: long enough for idleness to be sustained (shrink_after is 2 ms).
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const auto counters = d.scheduler().autosize_counters();
  ASSERT_TRUE(counters.has_value());
  std::printf("autosize: %llu grows, %llu shrinks, %llu samples, %llu sleeps, at most %u workers\n",
              static_cast<unsigned long long>(counters->grows),
              static_cast<unsigned long long>(counters->shrinks),
              static_cast<unsigned long long>(counters->samples),
              static_cast<unsigned long long>(counters->sleeps), most);
  EXPECT_EQ(submitted, total);
  EXPECT_EQ(completed, total);
  EXPECT_EQ(bad, 0);
  EXPECT_EQ(dup, 0);
  EXPECT_GT(counters->grows + counters->shrinks, 0u) << "the controller resized the pool";
  EXPECT_LE(most, 4u) << "never above max";
  EXPECT_GE(d.scheduler().worker_count(), 1u);
  EXPECT_EQ(d.next(std::chrono::milliseconds(20)), nullptr) << "no duplicate completions";
  EXPECT_EQ(d.scheduler().totals().completed, static_cast<std::uint64_t>(total));
}

TEST(AutosizeStress, ShouldCompleteEveryContinuationOnceWhileTheControllerResizesBlocking) {
  run_bursts(shm::IdleStrategy::kBlock, 60'000, 3'000);
}

TEST(AutosizeStress, ShouldCompleteEveryContinuationOnceWhileTheControllerResizesSpinning) {
  run_bursts(shm::IdleStrategy::kSpinThenBlock, 60'000, 3'000);
}

// Resizes by hand and bound changes racing the controller: the count comes back within
// the bounds, and nothing is lost.
TEST(AutosizeStress, ShouldKeepWorkingWhenBoundsChangeUnderLoad) {
  InProcessDaemon d(2);
  const std::uint32_t chain = d.fn("chain");
  std::atomic<bool> done{false};
  std::thread changer([&] {
    for (int i = 0; !done.load(); ++i) {
      d.scheduler().set_autosize(quick(1 + i % 2, 2 + i % 3));
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      if (i % 5 == 0) d.scheduler().set_autosize(std::nullopt);
    }
  });
  int completed = 0, bad = 0;
  for (int i = 0; i < 20'000; ++i) {
    Frame* f = nullptr;
    while ((f = d.frame()) == nullptr) {
      if (Frame* c = d.next(std::chrono::milliseconds(5))) {
        bad += c->result != 50;
        ++completed;
        d.release(c);
      }
    }
    f->fn = chain;
    f->arg = 50;
    while (!d.push(f)) std::this_thread::yield();
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (completed < 20'000 && std::chrono::steady_clock::now() < deadline) {
    if (Frame* c = d.next(std::chrono::milliseconds(100))) {
      bad += c->result != 50;
      ++completed;
      d.release(c);
    }
  }
  done.store(true);
  changer.join();
  EXPECT_EQ(completed, 20'000);
  EXPECT_EQ(bad, 0);
}

// The controller costs nothing while the pool sleeps: once every worker is parked at
// min it stops sampling until a worker wakes.
TEST(AutosizeStress, ShouldSleepWhileEveryWorkerIsParkedAndWakeWithTheFirst) {
  InProcessDaemon d(3, {}, shm::IdleStrategy::kBlock);
  d.scheduler().set_autosize(quick(1, 3));
  // Idle from the start: it shrinks to 1 (bounded wait, not a timing assert).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while ((d.scheduler().worker_count() != 1 || !d.scheduler().all_parked()) &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  {
    const auto k = *d.scheduler().autosize_counters();
    const auto l = d.scheduler().load();
    ASSERT_EQ(d.scheduler().worker_count(), 1u)
        << k.grows << " grows " << k.shrinks << " shrinks, delay " << k.last_delay_ns << " idle "
        << l.idle << " queued " << l.queued;
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // let it go to sleep
  const auto before = *d.scheduler().autosize_counters();
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const auto after = *d.scheduler().autosize_counters();
  // Awake it would sample every 100 us (1,000 in 100 ms).
  EXPECT_LE(after.samples - before.samples, 2u) << "it sampled an idle pool";
  // The first worker that unparks rings it.
  Frame* f = d.frame();
  f->fn = d.fn("noop");
  ASSERT_TRUE(d.push(f));
  Frame* c = d.next();
  ASSERT_NE(c, nullptr);
  d.release(c);
  const auto wake_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (d.scheduler().autosize_counters()->samples == after.samples &&
         std::chrono::steady_clock::now() < wake_deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_GT(d.scheduler().autosize_counters()->samples, after.samples);
}

}  // namespace
}  // namespace insideout
