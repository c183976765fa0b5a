#include "autosize.h"

#include <pthread.h>

#include <algorithm>

#include "scheduler.h"

namespace insideout::engine {

using std::chrono::nanoseconds;

AutosizeConfig with_autosize_defaults(AutosizeConfig c) {
  const AutosizeConfig d;
  if (c.grow_after.count() == 0) c.grow_after = d.grow_after;
  if (c.shrink_after.count() == 0) c.shrink_after = d.shrink_after;
  if (c.target_delay.count() == 0) c.target_delay = d.target_delay;
  if (c.interval.count() == 0) c.interval = d.interval;
  return c;
}

std::string check_autosize(const AutosizeConfig& c, std::uint32_t cpus) {
  const std::uint32_t limit = cpus == 0 ? kMaxPoolWorkers : std::min(cpus, kMaxPoolWorkers);
  if (c.min == 0) return "autosize min must be at least 1";
  if (c.max == 0) return "autosize max must be at least 1";
  if (c.min > c.max)
    return "autosize min " + std::to_string(c.min) + " is above max " + std::to_string(c.max);
  if (c.max > limit) {
    return "autosize max " + std::to_string(c.max) + " is above the pool's " +
           (cpus == 0 ? std::to_string(kMaxPoolWorkers) + " workers"
                      : std::to_string(cpus) + " CPU" + (cpus == 1 ? "" : "s"));
  }
  using std::chrono::microseconds;
  using std::chrono::seconds;
  if (c.interval < microseconds(50) || c.interval > seconds(1))
    return "autosize interval must be 50 us .. 1 s";
  if (c.grow_after < c.interval || c.grow_after > seconds(10))
    return "autosize grow_after must be at least the sampling interval (" +
           std::to_string(c.interval.count()) + " us) and at most 10 s";
  if (c.shrink_after < c.interval || c.shrink_after > std::chrono::minutes(10))
    return "autosize shrink_after must be at least the sampling interval and at most 10 min";
  if (c.target_delay < microseconds(1) || c.target_delay > seconds(10))
    return "autosize target delay must be 1 us .. 10 s";
  return {};
}

// ---- the policy --------------------------------------------------------------------

AutosizePolicy::AutosizePolicy(AutosizeConfig config)
    : config_(with_autosize_defaults(config)), hold_(config_.shrink_after) {}

nanoseconds AutosizePolicy::estimate_delay(std::uint64_t queued, std::uint64_t runs_delta,
                                           nanoseconds dt) {
  if (queued == 0 || dt.count() <= 0) return nanoseconds(0);
  const long double ns = static_cast<long double>(queued) * static_cast<long double>(dt.count()) /
                         static_cast<long double>(std::max<std::uint64_t>(runs_delta, 1));
  constexpr long double kMax = 1e18L;  // about 31 years: no overflow below
  return nanoseconds(static_cast<std::int64_t>(std::min(ns, kMax)));
}

void AutosizePolicy::restart(time_point) {
  congested_since_.reset();
  idle_since_.reset();
  min_idle_ = 0;
}

AutosizeDecision AutosizePolicy::decide(const LoadSample& s) {
  AutosizeDecision d;
  d.workers = s.active;
  const bool first = !have_last_;
  if (!first && s.now > last_.now) {
    const std::uint64_t ran = s.runs >= last_.runs ? s.runs - last_.runs : 0;
    d.delay = estimate_delay(s.queued, ran, s.now - last_.now);
  }
  last_ = s;
  have_last_ = true;

  // A count outside the bounds (a manual resize, new bounds) comes back at once.
  if (s.active < config_.min || s.active > config_.max) {
    d.workers = std::clamp(s.active, config_.min, config_.max);
    d.reason = AutosizeReason::kBounds;
    restart(s.now);
    return d;
  }

  // Windows: every sample in them must agree, so one spike (or one idle moment) is not
  // a trend.
  // Congested: every worker busy, and either at least two tasks waiting per worker
  // (short steps: each waits little, but more workers would run them at once) or work
  // waiting longer than the target.
  const bool congested =
      !first && s.idle == 0 && s.queued > 0 &&
      (s.queued >= 2 * std::uint64_t{s.active} || d.delay >= config_.target_delay);
  if (!congested) {
    congested_since_.reset();
  } else if (!congested_since_) {
    congested_since_ = s.now;
  }
  if (s.idle == 0 || s.active <= config_.min) {
    idle_since_.reset();
  } else if (!idle_since_) {
    idle_since_ = s.now;
    min_idle_ = s.idle;
  } else {
    min_idle_ = std::min(min_idle_, s.idle);
  }

  if (congested_since_ && s.active < config_.max &&
      s.now - *congested_since_ >= config_.grow_after) {
    // Grow fast: double (a burst gets its cores within a few windows).
    d.workers = std::min(config_.max, std::max(s.active + 1, s.active * 2));
    d.reason = AutosizeReason::kGrow;
    // Flapping: a grow soon after a shrink makes the next shrink wait longer.
    if (last_shrink_ && s.now - *last_shrink_ < 2 * hold_)
      hold_ = std::min<nanoseconds>(2 * hold_, 16 * nanoseconds(config_.shrink_after));
    last_grow_ = s.now;
    ++grows_;
    restart(s.now);
    return d;
  }
  if (idle_since_ && s.now - *idle_since_ >= hold_) {
    // Shrink gently: half of the workers idle throughout the window, at least one.
    const std::uint32_t by =
        std::min(std::max<std::uint32_t>(1, min_idle_ / 2), s.active - config_.min);
    d.workers = s.active - by;
    d.reason = AutosizeReason::kShrink;
    if (!last_grow_ || s.now - *last_grow_ >= 8 * hold_) hold_ = config_.shrink_after;
    last_shrink_ = s.now;
    ++shrinks_;
    restart(s.now);
    return d;
  }
  return d;
}

std::optional<std::chrono::steady_clock::time_point> AutosizePolicy::shrink_due() const {
  if (!idle_since_ || last_.active <= config_.min) return std::nullopt;
  return *idle_since_ + hold_;
}

// ---- the controller ----------------------------------------------------------------

Autosizer::Autosizer(Scheduler& scheduler, AutosizeConfig config, Resize resize)
    : scheduler_(scheduler), config_(with_autosize_defaults(config)), resize_(std::move(resize)) {
  if (!resize_) {
    resize_ = [&s = scheduler_](std::uint32_t n) {
      s.resize(n);
      return true;
    };
  }
  thread_ = std::thread([this] { loop(); });
}

Autosizer::~Autosizer() { stop(); }

void Autosizer::stop() {
  Scheduler::UnparkBell& bell = scheduler_.unpark_bell();
  {
    std::lock_guard lock(bell.mu);
    stop_ = true;
  }
  bell.cv.notify_all();
  if (thread_.joinable()) thread_.join();
}

AutosizeCounters Autosizer::counters() const {
  AutosizeCounters c;
  c.grows = grows_.load(std::memory_order_relaxed);
  c.shrinks = shrinks_.load(std::memory_order_relaxed);
  c.samples = samples_.load(std::memory_order_relaxed);
  c.sleeps = sleeps_.load(std::memory_order_relaxed);
  c.last_delay_ns = last_delay_ns_.load(std::memory_order_relaxed);
  return c;
}

void Autosizer::loop() {
  pthread_setname_np(pthread_self(), "io-autosize");
  AutosizePolicy policy(config_);
  Scheduler::UnparkBell& bell = scheduler_.unpark_bell();
  // Relaxed counters below: statistics, read by the control plane.
  auto bump = [](std::atomic<std::uint64_t>& c) {
    c.store(c.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  };
  for (;;) {
    LoadSample s = scheduler_.load();
    s.now = std::chrono::steady_clock::now();
    bump(samples_);
    const AutosizeDecision d = policy.decide(s);
    last_delay_ns_.store(static_cast<std::uint64_t>(d.delay.count()), std::memory_order_relaxed);
    if (d.workers != s.active && resize_(d.workers)) bump(d.workers > s.active ? grows_ : shrinks_);

    std::unique_lock lock(bell.mu);
    if (stop_) break;
    // A1: arm the bell, then look at the workers (seq_cst both): pairs with A2 in
    // Scheduler::park(), where a waking worker stores parked = false and then loads
    // `armed`. Either this look sees the worker awake, or the worker sees the bell armed
    // and rings it (under bell.mu, so not before this thread waits).
    bell.armed.store(true, std::memory_order_seq_cst);
    // Asleep until a wake-up only at min; above it, until the next shrink is due, which
    // the policy knows once a sample has opened its idle window (not yet right after a
    // change, nor after a sample that caught a worker between two parks).
    const auto due = policy.shrink_due();
    if (scheduler_.all_parked() && (due || scheduler_.worker_count() <= config_.min)) {
      bump(sleeps_);
      const std::uint64_t seen = bell.rings;
      auto woken = [&] { return stop_ || bell.rings != seen; };
      if (due) {
        bell.cv.wait_until(lock, *due, woken);
      } else {
        bell.cv.wait(lock, woken);
      }
    } else {
      bell.armed.store(false, std::memory_order_relaxed);  // nobody needs to ring
      bell.cv.wait_for(lock, config_.interval, [&] { return stop_; });
    }
    bell.armed.store(false, std::memory_order_relaxed);
    if (stop_) break;
  }
}

}  // namespace insideout::engine
