// Pools that size themselves: a policy that answers how many workers a pool should have
// from measured queueing delay and idleness, and the controller that asks it and calls
// Scheduler::resize().
//
// The policy (AutosizePolicy) is a pure class: it is fed samples with their time and
// answers a worker count, so tests drive it with a fake clock. Its rules:
//   - congested: every worker is busy (none looking for work) and work waits: at least
//     two tasks per worker (continuations of short steps each wait little, yet more
//     workers would run them at once), or a queueing delay, estimated by Little's law
//     (tasks waiting / tasks started per second), of at least `target_delay`. Congestion
//     sustained for `grow_after` (every sample in the window congested: one spike is not
//     enough) doubles the pool, up to `max`.
//   - idle: at least one worker looking for work at every sample. Idleness sustained for
//     the shrink hold (`shrink_after`, longer while the pool flaps) removes half of the
//     workers that were idle throughout (at least one), down to `min`.
//   - no flapping: every change restarts both windows, and a grow that follows a shrink
//     within two holds doubles the hold (up to 16 x shrink_after); a shrink after a long
//     calm (8 holds without a grow) puts it back.
//   - bounds: a count outside [min, max] (a manual resize, new bounds) is brought back
//     at the next sample.
//
// The controller (Autosizer) is one thread per autosized pool. While any worker of the
// pool is awake it samples every `interval` (Scheduler::load(): relaxed loads of counters
// the workers keep anyway; nothing is computed per task). When every worker is parked it
// sleeps: until the policy's next shrink is due if the pool is above `min`, else until
// the first worker that unparks rings it (Scheduler's unpark bell, A1/A2 there). An idle
// pool thus costs no CPU beyond one wake-up per shrink step.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <thread>

namespace insideout::engine {

class Scheduler;

struct AutosizeConfig {
  std::uint32_t min = 1;
  std::uint32_t max = 1;
  // Congestion this long grows the pool; idleness this long shrinks it.
  std::chrono::microseconds grow_after{1000};
  std::chrono::microseconds shrink_after{20'000};
  // The estimated queueing delay that counts as congestion.
  std::chrono::microseconds target_delay{200};
  // How often the controller samples the pool while any of its workers is awake.
  std::chrono::microseconds interval{250};
  bool operator==(const AutosizeConfig&) const = default;
};

// Defaults for fields given as 0 (the control plane's "unset").
AutosizeConfig with_autosize_defaults(AutosizeConfig c);
// Empty when the bounds and timings make sense for a pool of `cpus` CPUs (0: no limit
// but kMaxPoolWorkers); otherwise why not, in one line.
std::string check_autosize(const AutosizeConfig& c, std::uint32_t cpus);

// One look at a pool.
struct LoadSample {
  std::chrono::steady_clock::time_point now;
  std::uint32_t active = 0;  // workers running
  std::uint32_t idle = 0;    // of them, looking for work (spinning or parked)
  std::uint64_t queued = 0;  // tasks waiting in the pool's queues (an estimate)
  std::uint64_t runs = 0;    // tasks started since the pool began (monotonic)
};

enum class AutosizeReason : std::uint8_t { kHold, kGrow, kShrink, kBounds };

struct AutosizeDecision {
  std::uint32_t workers = 0;
  AutosizeReason reason = AutosizeReason::kHold;
  std::chrono::nanoseconds delay{0};  // the queueing delay estimated from this sample
};

class AutosizePolicy {
 public:
  explicit AutosizePolicy(AutosizeConfig config);

  // The count the pool should have after sample `s`. A change restarts the windows:
  // the caller is expected to apply it (if it cannot, the next sample shows the truth).
  AutosizeDecision decide(const LoadSample& s);

  // When the next shrink is due if the pool stays idle (nullopt: none can be, the pool
  // is at min or not idle): how long a controller of an all-parked pool may sleep.
  std::optional<std::chrono::steady_clock::time_point> shrink_due() const;

  // Little's law: tasks waiting / tasks started per unit of time. Nothing started
  // while something waits: the whole interval per waiting task (a large value).
  static std::chrono::nanoseconds estimate_delay(std::uint64_t queued, std::uint64_t runs_delta,
                                                 std::chrono::nanoseconds dt);

  const AutosizeConfig& config() const noexcept { return config_; }
  std::uint64_t grows() const noexcept { return grows_; }
  std::uint64_t shrinks() const noexcept { return shrinks_; }
  std::chrono::nanoseconds shrink_hold() const noexcept { return hold_; }

 private:
  using time_point = std::chrono::steady_clock::time_point;
  void restart(time_point now);

  AutosizeConfig config_;
  bool have_last_ = false;
  LoadSample last_;
  std::optional<time_point> congested_since_;
  std::optional<time_point> idle_since_;
  std::uint32_t min_idle_ = 0;  // the fewest idle workers seen in the idle window
  std::optional<time_point> last_grow_, last_shrink_;
  std::chrono::nanoseconds hold_;
  std::uint64_t grows_ = 0, shrinks_ = 0;
};

// What a controller has done, for the control plane (relaxed counters: statistics).
struct AutosizeCounters {
  std::uint64_t grows = 0, shrinks = 0;  // resizes applied
  std::uint64_t samples = 0;             // looks at the pool
  std::uint64_t sleeps = 0;              // times it slept with every worker parked
  std::uint64_t last_delay_ns = 0;       // the delay estimated at the last sample
};

class Autosizer {
 public:
  // Applies a count; false when it cannot now (the controller tries again later).
  using Resize = std::function<bool(std::uint32_t workers)>;

  // Starts the controller thread. `resize` defaults to scheduler.resize().
  Autosizer(Scheduler& scheduler, AutosizeConfig config, Resize resize = {});
  ~Autosizer();
  Autosizer(const Autosizer&) = delete;
  Autosizer& operator=(const Autosizer&) = delete;

  // Stops and joins the thread; idempotent. Not from the controller's own resize hook.
  void stop();
  const AutosizeConfig& config() const noexcept { return config_; }
  AutosizeCounters counters() const;

 private:
  void loop();

  Scheduler& scheduler_;
  const AutosizeConfig config_;
  Resize resize_;
  std::atomic<std::uint64_t> grows_{0}, shrinks_{0}, samples_{0}, sleeps_{0}, last_delay_ns_{0};
  bool stop_ = false;  // under the scheduler's UnparkBell::mu, where the thread waits
  std::thread thread_;
};

}  // namespace insideout::engine
