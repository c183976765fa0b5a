#include "notify.h"

#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include <cstdlib>

namespace insideout::daemon {

Notifier::Notifier() {
  const char* sock = std::getenv("NOTIFY_SOCKET");
  enabled_ = sock != nullptr && *sock != '\0';
  std::uint64_t usec = 0;
  // > 0 when $WATCHDOG_USEC is set and $WATCHDOG_PID is unset or ours.
  if (sd_watchdog_enabled(0, &usec) > 0) watchdog_ = std::chrono::microseconds(usec);
}

void Notifier::send(const std::string& message) {
  if (!enabled_) return;
  const int r = sd_notify(0, message.c_str());
  if (r < 0) spdlog::debug("sd_notify: {}", std::strerror(-r));
}

void Notifier::ready() { send("READY=1"); }

void Notifier::reloading() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  const std::uint64_t us = static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000u +
                           static_cast<std::uint64_t>(ts.tv_nsec) / 1000u;
  send("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(us));
}

void Notifier::stopping() { send("STOPPING=1"); }

void Notifier::status(const std::string& text) {
  if (text == last_status_) return;
  last_status_ = text;
  send("STATUS=" + text);
}

void Notifier::watchdog() { send("WATCHDOG=1"); }

std::string ProgressWatch::stuck_pool(const std::vector<Pool>& pools,
                                      std::chrono::steady_clock::time_point now,
                                      std::chrono::microseconds bound) {
  std::vector<PoolSeen> next;
  std::string stuck;
  for (const auto& p : pools) {
    PoolSeen ps;
    ps.scheduler = p.scheduler.get();
    for (const auto& old : seen_) {
      if (old.scheduler == ps.scheduler) ps.workers = old.workers;
    }
    const std::uint32_t n = p.scheduler->worker_count();
    ps.workers.resize(n, Seen{~std::uint64_t{0}, now});
    bool all_stuck = n > 0;
    for (std::uint32_t i = 0; i < n; ++i) {
      const Worker& w = p.scheduler->worker(i);
      // Relaxed, as the long-step watch reads them: a watch, not a protocol.
      const std::uint64_t runs = w.runs.load(std::memory_order_relaxed);
      Seen& s = ps.workers[i];
      if (runs != s.runs || w.looking.load(std::memory_order_relaxed)) {
        s = Seen{runs, now};
        all_stuck = false;
      } else if (now - s.since < bound) {
        all_stuck = false;
      }
    }
    if (all_stuck && stuck.empty()) stuck = p.name;
    next.push_back(std::move(ps));
  }
  seen_ = std::move(next);
  return stuck;
}

}  // namespace insideout::daemon
