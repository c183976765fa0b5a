#include "insideout/shm/futex.h"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <ctime>

namespace insideout::shm {
namespace {

timespec to_timespec(std::chrono::nanoseconds ns) {
  if (ns.count() < 0) ns = std::chrono::nanoseconds(0);
  return timespec{static_cast<time_t>(ns.count() / 1'000'000'000),
                  static_cast<long>(ns.count() % 1'000'000'000)};
}

WaitResult from_errno(long rc) {
  if (rc >= 0) return WaitResult::kWoken;
  switch (errno) {
    case EAGAIN:
      return WaitResult::kValueChanged;
    case ETIMEDOUT:
      return WaitResult::kTimedOut;
    default:
      return WaitResult::kInterrupted;
  }
}

#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449
#endif
#ifndef FUTEX_32
#define FUTEX_32 2
#endif

std::atomic<int> g_waitv_state{0};  // 0 unknown, 1 supported, -1 not supported

}  // namespace

WaitResult futex_wait(std::atomic<std::uint32_t>* word, std::uint32_t expected,
                      std::optional<std::chrono::nanoseconds> timeout) noexcept {
  timespec ts{};
  if (timeout) ts = to_timespec(*timeout);
  const long rc = syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAIT, expected,
                          timeout ? &ts : nullptr, nullptr, 0);
  return from_errno(rc);
}

int futex_wake(std::atomic<std::uint32_t>* word, int count) noexcept {
  const long rc = syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAKE, count,
                          nullptr, nullptr, 0);
  return rc < 0 ? 0 : static_cast<int>(rc);
}

bool futex_waitv_probe_says_supported(long rc, int err) noexcept {
  // An empty vector: EINVAL where the call exists, ENOSYS where it does not, EPERM (or
  // whatever errno a filter chose) under a seccomp policy that denies it.
  return rc < 0 && err == EINVAL;
}

bool futex_waitv_supported() noexcept {
  int s = g_waitv_state.load(std::memory_order_relaxed);
  if (s == 0) {
    const long rc = syscall(SYS_futex_waitv, nullptr, 0, 0, nullptr, CLOCK_MONOTONIC);
    s = futex_waitv_probe_says_supported(rc, rc < 0 ? errno : 0) ? 1 : -1;
    g_waitv_state.store(s, std::memory_order_relaxed);  // relaxed: idempotent probe
  }
  return s > 0;
}

WaitResult futex_wait_any(std::span<const WaitTarget> targets,
                          std::optional<std::chrono::nanoseconds> timeout) noexcept {
  if (targets.empty()) return WaitResult::kTimedOut;
  if (targets.size() == 1 || !futex_waitv_supported()) {
    auto slice = std::chrono::nanoseconds(1'000'000);
    if (targets.size() == 1) {
      return futex_wait(targets[0].word, targets[0].expected, timeout);
    }
    if (timeout && *timeout < slice) slice = *timeout;
    const WaitResult r = futex_wait(targets[0].word, targets[0].expected, slice);
    return r == WaitResult::kWoken ? r : WaitResult::kTimedOut;
  }
  futex_waitv v[kMaxWaitTargets] = {};
  const std::size_t n = targets.size() < kMaxWaitTargets ? targets.size() : kMaxWaitTargets;
  for (std::size_t i = 0; i < n; ++i) {
    v[i].val = targets[i].expected;
    v[i].uaddr = reinterpret_cast<std::uintptr_t>(targets[i].word);
    v[i].flags = FUTEX_32;
  }
  timespec abs{};
  if (timeout) {
    clock_gettime(CLOCK_MONOTONIC, &abs);
    const timespec rel = to_timespec(*timeout);
    abs.tv_sec += rel.tv_sec;
    abs.tv_nsec += rel.tv_nsec;
    if (abs.tv_nsec >= 1'000'000'000) {
      abs.tv_sec += 1;
      abs.tv_nsec -= 1'000'000'000;
    }
  }
  const long rc = syscall(SYS_futex_waitv, v, n, 0, timeout ? &abs : nullptr, CLOCK_MONOTONIC);
  return from_errno(rc);
}

std::string_view idle_strategy_name(IdleStrategy s) noexcept {
  switch (s) {
    case IdleStrategy::kBlock:
      return "block";
    case IdleStrategy::kSpinThenBlock:
      return "spin-then-block";
    case IdleStrategy::kPoll:
      return "poll";
  }
  return "unknown";
}

std::optional<IdleStrategy> parse_idle_strategy(std::string_view name) noexcept {
  if (name == "block") return IdleStrategy::kBlock;
  if (name == "spin-then-block" || name == "spin") return IdleStrategy::kSpinThenBlock;
  if (name == "poll") return IdleStrategy::kPoll;
  return std::nullopt;
}

}  // namespace insideout::shm
