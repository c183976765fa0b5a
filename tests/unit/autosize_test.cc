// The self-sizing policy's decisions, driven by a fake clock: samples carry their own
// time, so nothing here sleeps or depends on the machine's speed.
#include "autosize.h"

#include <gtest/gtest.h>

#include <chrono>
#include <vector>

namespace insideout::engine {
namespace {

using std::chrono::microseconds;
using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

AutosizeConfig config(std::uint32_t min, std::uint32_t max) {
  AutosizeConfig c;
  c.min = min;
  c.max = max;
  c.interval = microseconds(250);
  c.grow_after = microseconds(1000);
  c.shrink_after = milliseconds(20);
  c.target_delay = microseconds(200);
  return c;
}

// A pool as the policy sees it: each tick is one sample `interval` after the last, and
// the pool takes the count the policy answers (as the controller would).
class FakePool {
 public:
  explicit FakePool(AutosizeConfig c, std::uint32_t workers)
      : policy_(c), interval_(c.interval), workers_(workers) {}

  // A busy tick: every worker busy, `queued` tasks waiting, `rate` tasks started per
  // millisecond (so the estimated delay is queued / rate ms).
  AutosizeDecision busy(std::uint64_t queued, std::uint64_t rate_per_ms = 1000) {
    runs_ += rate_per_ms * static_cast<std::uint64_t>(interval_.count()) / 1000;
    return tick(0, queued);
  }
  // An idle tick: `idle` workers looking for work (all of them by default).
  AutosizeDecision idle(std::uint32_t idle = ~0u) {
    runs_ += 1;
    return tick(idle == ~0u ? workers_ : idle, 0);
  }
  AutosizeDecision tick(std::uint32_t idle, std::uint64_t queued) {
    now_ += interval_;
    ++ticks_;
    LoadSample s{now_, workers_, std::min(idle, workers_), queued, runs_};
    const AutosizeDecision d = policy_.decide(s);
    if (d.workers != workers_) {
      ++changes_;
      workers_ = d.workers;
    }
    return d;
  }
  std::uint32_t workers() const { return workers_; }
  std::uint32_t changes() const { return changes_; }
  std::uint64_t ticks() const { return ticks_; }
  void set_workers(std::uint32_t n) { workers_ = n; }  // a manual resize
  AutosizePolicy& policy() { return policy_; }
  Clock::time_point now() const { return now_; }

 private:
  AutosizePolicy policy_;
  microseconds interval_;
  std::uint32_t workers_;
  Clock::time_point now_{};
  std::uint64_t runs_ = 0;
  std::uint32_t changes_ = 0;
  std::uint64_t ticks_ = 0;
};

TEST(AutosizePolicy, ShouldEstimateDelayByLittlesLaw) {
  // 100 waiting, 50 started in 1 ms: each waits about 2 ms.
  EXPECT_EQ(AutosizePolicy::estimate_delay(100, 50, milliseconds(1)), milliseconds(2));
  EXPECT_EQ(AutosizePolicy::estimate_delay(0, 50, milliseconds(1)).count(), 0);
  // Nothing started while work waited: the whole interval per waiting task.
  EXPECT_EQ(AutosizePolicy::estimate_delay(3, 0, milliseconds(1)), milliseconds(3));
  EXPECT_GT(AutosizePolicy::estimate_delay(~0ull, 0, milliseconds(1000)).count(), 0);
}

TEST(AutosizePolicy, ShouldGrowOnSustainedDelay) {
  FakePool p(config(1, 8), 1);
  p.busy(1000);  // the first sample has no delay: nothing to compare with
  std::uint64_t grew_at = 0;
  for (int i = 0; i < 20 && grew_at == 0; ++i) {
    if (p.busy(1000).reason == AutosizeReason::kGrow) grew_at = p.ticks();
  }
  ASSERT_NE(grew_at, 0u);
  EXPECT_EQ(p.workers(), 2u) << "doubles";
  // Reaction time in ticks: congestion from the 2nd sample, sustained for grow_after
  // (4 intervals of 250 us) grows at the 6th.
  EXPECT_EQ(grew_at, 6u);
}

TEST(AutosizePolicy, ShouldNotGrowOnOneSpike) {
  FakePool p(config(1, 8), 1);
  p.idle();
  for (int i = 0; i < 1000; ++i) {
    // A spike every 3rd sample: delayed work, then drained (idle again).
    if (i % 3 == 0) {
      EXPECT_EQ(p.busy(100'000).reason, AutosizeReason::kHold);
    } else {
      p.idle();
    }
  }
  EXPECT_EQ(p.workers(), 1u);
  EXPECT_EQ(p.policy().grows(), 0u);
}

TEST(AutosizePolicy, ShouldNotGrowWhileSomeWorkerIsIdle) {
  FakePool p(config(1, 8), 4);
  // One of four looking for work (for less than shrink_after: 80 ticks).
  for (int i = 0; i < 60; ++i) p.tick(1, 100'000);
  EXPECT_EQ(p.workers(), 4u);
  EXPECT_EQ(p.policy().grows(), 0u);
}

TEST(AutosizePolicy, ShouldNotGrowOnAShortQueueBelowTheTargetDelay) {
  FakePool p(config(1, 8), 2);
  // 3 waiting (fewer than two per worker) at 1000 per ms: 3 us, under the 200 us target.
  for (int i = 0; i < 100; ++i) p.busy(3);
  EXPECT_EQ(p.workers(), 2u);
}

TEST(AutosizePolicy, ShouldGrowWhenShortStepsKeepEveryWorkerBusyWithWorkWaiting) {
  FakePool p(config(1, 8), 1);
  // 63 yielding chains behind one worker at 10 steps per us: each step waits 6.3 us
  // (under the target), but a second worker would run half of them at once.
  for (int i = 0; i < 10; ++i) p.busy(63, 10'000);
  EXPECT_EQ(p.workers(), 2u);
}

TEST(AutosizePolicy, ShouldReachMaxWithinAFewWindowsUnderABurst) {
  FakePool p(config(1, 16), 1);
  std::uint64_t ticks = 0;
  while (p.workers() < 16 && ticks < 1000) {
    p.busy(100'000);
    ++ticks;
  }
  EXPECT_EQ(p.workers(), 16u);
  // 1 -> 2 -> 4 -> 8 -> 16: four grows, each after a window of 5 samples (the first
  // sample of a window starts it, grow_after later it grows).
  EXPECT_EQ(p.policy().grows(), 4u);
  EXPECT_LE(ticks, 4u * 5 + 1);
}

TEST(AutosizePolicy, ShouldShrinkOnSustainedIdlenessStepByStep) {
  FakePool p(config(1, 8), 8);
  std::vector<std::uint32_t> sizes;
  for (int i = 0; i < 2000 && p.workers() > 1; ++i) {
    if (p.idle().reason == AutosizeReason::kShrink) sizes.push_back(p.workers());
  }
  // Half of the idle workers at a time (at least one): 8 -> 4 -> 2 -> 1.
  EXPECT_EQ(sizes, (std::vector<std::uint32_t>{4, 2, 1}));
  // Each shrink waited shrink_after (80 ticks of 250 us) of idleness.
  EXPECT_GE(p.ticks(), 3u * 80);
  EXPECT_LE(p.ticks(), 3u * 81 + 1);
}

TEST(AutosizePolicy, ShouldShrinkOnlyTheWorkersIdleThroughout) {
  FakePool p(config(1, 8), 8);
  // Two of eight are idle at every sample, sometimes more: shrink by one (half of 2).
  for (int i = 0; i < 100; ++i) p.idle(i % 2 == 0 ? 2u : 5u);
  EXPECT_EQ(p.workers(), 7u);
}

TEST(AutosizePolicy, ShouldNotShrinkWhenIdlenessIsInterrupted) {
  FakePool p(config(1, 8), 4);
  for (int i = 0; i < 2000; ++i) {
    if (i % 50 == 49) {
      p.tick(0, 10);  // a moment with every worker busy restarts the window
    } else {
      p.idle(1);
    }
  }
  EXPECT_EQ(p.workers(), 4u);
}

TEST(AutosizePolicy, ShouldNeverLeaveItsBounds) {
  FakePool p(config(2, 5), 2);
  for (int round = 0; round < 20; ++round) {
    for (int i = 0; i < 50; ++i) {
      p.busy(1'000'000);
      EXPECT_GE(p.workers(), 2u);
      EXPECT_LE(p.workers(), 5u);
    }
    for (int i = 0; i < 500; ++i) {
      p.idle();
      EXPECT_GE(p.workers(), 2u);
      EXPECT_LE(p.workers(), 5u);
    }
  }
  EXPECT_EQ(p.workers(), 2u);
}

TEST(AutosizePolicy, ShouldBringACountOutsideTheBoundsBack) {
  FakePool p(config(2, 4), 2);
  p.set_workers(7);  // resized by hand, or the bounds changed
  EXPECT_EQ(p.idle(0).reason, AutosizeReason::kBounds);
  EXPECT_EQ(p.workers(), 4u);
  p.set_workers(1);
  EXPECT_EQ(p.busy(0).reason, AutosizeReason::kBounds);
  EXPECT_EQ(p.workers(), 2u);
}

TEST(AutosizePolicy, ShouldHoldAtMinAndMax) {
  FakePool p(config(1, 2), 2);
  for (int i = 0; i < 200; ++i) p.busy(1'000'000);
  EXPECT_EQ(p.workers(), 2u);
  EXPECT_EQ(p.policy().grows(), 0u);
  FakePool q(config(3, 8), 3);
  for (int i = 0; i < 2000; ++i) q.idle();
  EXPECT_EQ(q.workers(), 3u);
  EXPECT_EQ(q.policy().shrinks(), 0u);
  EXPECT_FALSE(q.policy().shrink_due().has_value()) << "at min nothing is due";
}

TEST(AutosizePolicy, ShouldNotFlapUnderAnAlternatingLoad) {
  // Busy for 2 ms, idle for 2 ms, for 10 s: shorter than either window would need.
  FakePool p(config(1, 8), 2);
  for (int i = 0; i < 40'000; ++i) {
    if ((i / 8) % 2 == 0) {
      p.busy(100'000);
    } else {
      p.idle();
    }
  }
  // Grows to what the bursts need, then stays: a handful of changes, not one per period.
  EXPECT_LE(p.changes(), 4u) << "changed " << p.changes() << " times in 10 s";
}

TEST(AutosizePolicy, ShouldBackOffShrinkingWhenEachShrinkIsUndoneSoon) {
  // A load that needs more workers now and then: grows after each shrink are flapping,
  // so the hold before the next shrink doubles.
  FakePool p(config(1, 4), 1);
  const auto base = p.policy().shrink_hold();
  std::uint32_t changes_per_second[10] = {};
  for (int sec = 0; sec < 10; ++sec) {
    const std::uint32_t before = p.changes();
    for (int i = 0; i < 4000; ++i) {
      // 30 ms idle, then 3 ms of congestion.
      if (i % 132 < 120) {
        p.idle(1);
      } else {
        p.busy(100'000);
      }
    }
    changes_per_second[sec] = p.changes() - before;
  }
  EXPECT_GT(p.policy().shrink_hold(), base);
  EXPECT_LT(changes_per_second[9], changes_per_second[0])
      << "fewer changes once the hold has backed off";
}

TEST(AutosizePolicy, ShouldSayWhenTheNextShrinkIsDue) {
  FakePool p(config(1, 4), 4);
  EXPECT_FALSE(p.policy().shrink_due().has_value());
  p.idle();
  const auto due = p.policy().shrink_due();
  ASSERT_TRUE(due.has_value());
  EXPECT_EQ(*due, p.now() + milliseconds(20));
}

TEST(AutosizeConfig, ShouldRefuseBadBounds) {
  auto c = with_autosize_defaults(config(1, 4));
  EXPECT_EQ(check_autosize(c, 4), "");
  c.min = 0;
  EXPECT_NE(check_autosize(c, 4).find("min must be at least 1"), std::string::npos);
  c.min = 3;
  c.max = 2;
  EXPECT_NE(check_autosize(c, 4).find("min 3 is above max 2"), std::string::npos);
  c.min = 1;
  c.max = 5;
  EXPECT_NE(check_autosize(c, 4).find("above the pool's 4 CPUs"), std::string::npos);
  c.max = 0;
  EXPECT_NE(check_autosize(c, 4).find("max must be at least 1"), std::string::npos);
  c.max = 4;
  c.grow_after = microseconds(10);
  EXPECT_NE(check_autosize(c, 4).find("grow_after"), std::string::npos);
}

TEST(AutosizeConfig, ShouldFillDefaultsForZeroFields) {
  AutosizeConfig c;
  c.grow_after = c.shrink_after = c.target_delay = c.interval = microseconds(0);
  const AutosizeConfig d = with_autosize_defaults(c);
  EXPECT_EQ(d.grow_after, AutosizeConfig{}.grow_after);
  EXPECT_EQ(d.shrink_after, AutosizeConfig{}.shrink_after);
  EXPECT_EQ(d.target_delay, AutosizeConfig{}.target_delay);
  EXPECT_EQ(d.interval, AutosizeConfig{}.interval);
}

}  // namespace
}  // namespace insideout::engine
