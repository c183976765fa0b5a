// Futex wait and wake on 32-bit words in shared memory, and the announce-then-sleep
// protocol that keeps a busy path free of syscalls and an idle one free of spinning.
//
// The words are shared between processes, so no FUTEX_PRIVATE_FLAG.
//
// Memory ordering of the EventWord protocol (the lost wake-up it prevents: a consumer
// that sees an empty queue, a producer that pushes and skips the wake because nobody
// waits yet, and the consumer then sleeping on a non-empty queue):
//   W1 (waiter: waiters.fetch_add, seq_cst) then it loads seq and re-checks its
//      condition; pairs with N1 (notifier: fence seq_cst after publishing its item, then
//      loads waiters). Either the waiter's re-check sees the item, or the notifier sees the
//      announcement and bumps seq (N2, release), which makes the waiter's futex_wait on the
//      old seq value return at once or wakes it.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

#include "insideout/shm/layout.h"

namespace insideout::shm {

enum class WaitResult { kWoken, kTimedOut, kValueChanged, kInterrupted };

// Sleeps while *word == expected, at most `timeout` (none: forever).
WaitResult futex_wait(std::atomic<std::uint32_t>* word, std::uint32_t expected,
                      std::optional<std::chrono::nanoseconds> timeout = std::nullopt) noexcept;
// Wakes up to `count` sleepers; returns how many woke.
int futex_wake(std::atomic<std::uint32_t>* word, int count) noexcept;

// One word and the value to sleep on, for futex_wait_any.
struct WaitTarget {
  std::atomic<std::uint32_t>* word;
  std::uint32_t expected;
};
inline constexpr std::size_t kMaxWaitTargets = 128;  // FUTEX_WAITV_MAX
// Sleeps until any of the words differs from its expected value or is woken (futex_waitv,
// Linux 5.16). Where the kernel lacks futex_waitv it sleeps on the first word alone for
// at most `fallback_slice` (default 1 ms) and returns kTimedOut, so callers re-check.
WaitResult futex_wait_any(std::span<const WaitTarget> targets,
                          std::optional<std::chrono::nanoseconds> timeout = std::nullopt) noexcept;
bool futex_waitv_supported() noexcept;
// The probe's verdict: futex_waitv with an empty vector fails with EINVAL where the call
// exists and is allowed. Only that means supported: ENOSYS (an old kernel) and EPERM or
// anything else (a seccomp filter that refuses it) mean every wait would fail.
bool futex_waitv_probe_says_supported(long rc, int err) noexcept;

// How a side waits when there is nothing to do.
enum class IdleStrategy : std::uint8_t {
  kBlock,          // announce and sleep at once: no CPU while idle, a wake-up costs a syscall
  kSpinThenBlock,  // spin a bounded number of rounds first (default), then block
  kPoll,           // never sleep: for cores dedicated to insideout
};
std::string_view idle_strategy_name(IdleStrategy s) noexcept;
std::optional<IdleStrategy> parse_idle_strategy(std::string_view name) noexcept;

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// The store-load barrier of the Dekker pattern: orders the caller's earlier stores before
// this load of `word`, with seq_cst. A full fence and a plain load cost the notifier no
// write to the waiter's cache line; ThreadSanitizer cannot model standalone fences, so
// under it the barrier is a seq_cst read-modify-write of the word instead.
inline std::uint32_t load_after_fence(std::atomic<std::uint32_t>& word) noexcept {
#if defined(__SANITIZE_THREAD__)
  return word.fetch_add(0, std::memory_order_seq_cst);
#else
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return word.load(std::memory_order_relaxed);
#endif
}

// A full (store-load) barrier where no word of the caller's may take the read-modify-
// write: under ThreadSanitizer, which refuses standalone fences, the read-modify-write
// goes to a thread-local word, whose locked instruction is the hardware's full barrier
// all the same.
inline void full_barrier() noexcept {
#if defined(__SANITIZE_THREAD__)
  static thread_local std::atomic<std::uint32_t> barrier{0};
  barrier.fetch_add(0, std::memory_order_seq_cst);
#else
  std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
}

// load_after_fence() for a page this process may only read (the pool bell).
inline std::uint32_t load_after_fence(const std::atomic<std::uint32_t>& word) noexcept {
  full_barrier();
  return word.load(std::memory_order_seq_cst);
}

// The waiting side of an EventWord. `ready` is the condition, re-checked after the
// announcement. Returns true when `ready` held, false on timeout.
template <class Ready>
bool event_wait(EventWord& ev, Ready&& ready, std::optional<std::chrono::nanoseconds> timeout) {
  // W1: pairs with N1 in event_notify().
  ev.waiters.fetch_add(1, std::memory_order_seq_cst);
  const std::uint32_t seq = ev.seq.load(std::memory_order_seq_cst);
  bool ok = ready();
  if (!ok) {
    futex_wait(&ev.seq, seq, timeout);
    ok = ready();
  }
  // Relaxed: a stale count costs the notifier at most one needless wake.
  ev.waiters.fetch_sub(1, std::memory_order_relaxed);
  return ok;
}

// The notifying side; call after publishing. Returns true when it issued a wake.
inline bool event_notify(EventWord& ev, int count = 1) noexcept {
  // N1: pairs with W1 in event_wait(): orders the item's publication before the load.
  if (load_after_fence(ev.waiters) == 0) return false;
  // N2: pairs with the waiter's seq load; its futex_wait sees the new value.
  ev.seq.fetch_add(1, std::memory_order_release);
  futex_wake(&ev.seq, count);
  return true;
}

}  // namespace insideout::shm
