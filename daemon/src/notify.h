// insideoutd under systemd (Type=notify): the sd_notify(3) messages, and the watchdog fed
// from the workers' progress. Without $NOTIFY_SOCKET every call does nothing.
//
// Why progress and not a timer: a thread that pings on a timer keeps pinging while every
// worker hangs in a step that never returns, and systemd would never restart a daemon
// that serves nobody. The loop thread pings only while no pool has all of its workers
// inside one step for longer than the watchdog interval (ProgressWatch), so a wedged pool
// stops the pings and systemd kills and restarts the daemon.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine.h"

namespace insideout::daemon {

class Notifier {
 public:
  Notifier();  // reads $NOTIFY_SOCKET and $WATCHDOG_USEC/$WATCHDOG_PID (sd_watchdog_enabled)
  bool enabled() const { return enabled_; }
  void ready();
  void reloading();  // RELOADING=1 and MONOTONIC_USEC=<now>; ready() ends it
  void stopping();
  // STATUS=<text>, sent only when it changed.
  void status(const std::string& text);
  // The watchdog interval systemd asked for; zero: no watchdog.
  std::chrono::microseconds watchdog_interval() const { return watchdog_; }
  void watchdog();  // WATCHDOG=1

 private:
  void send(const std::string& message);
  bool enabled_ = false;
  std::chrono::microseconds watchdog_{0};
  std::string last_status_;
};

// Which pools made no progress: a worker progresses while it looks for work (idle) or
// starts new steps (Worker::runs moves), the state of the engine's long-step watch.
class ProgressWatch {
 public:
  struct Pool {
    std::string name;
    std::shared_ptr<Scheduler> scheduler;
  };
  // The first pool all of whose workers have been inside one step for at least `bound`
  // (empty: none). Called from one thread, at a steady pace.
  std::string stuck_pool(const std::vector<Pool>& pools, std::chrono::steady_clock::time_point now,
                         std::chrono::microseconds bound);

 private:
  struct Seen {
    std::uint64_t runs = 0;
    std::chrono::steady_clock::time_point since{};
  };
  struct PoolSeen {
    const Scheduler* scheduler = nullptr;
    std::vector<Seen> workers;
  };
  std::vector<PoolSeen> seen_;
};

}  // namespace insideout::daemon
