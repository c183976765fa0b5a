// The race insideout's Nim mailboxes lose: the consumer finds the queue empty, the
// producer pushes and skips the wake because nobody sleeps yet, the consumer then
// sleeps on a non-empty queue. With the announce-then-recheck protocol (futex.h) that
// cannot happen; here it is raced hard, with the last pop against the next push, and a
// sleep that outlasts its generous timeout on a non-empty ring counts as a lost wake-up.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "insideout/shm/futex.h"
#include "insideout/shm/ring.h"

namespace insideout::shm {
namespace {

using namespace std::chrono_literals;

struct Shared {
  EventWord ev;
  alignas(64) std::atomic<std::uint32_t> lost;
  alignas(64) std::atomic<std::uint32_t> sleeps;
};

// Consumer: pop until `count` values arrived, sleeping (no spinning at all) whenever the
// ring looks empty. Producer: push one value at a time, notify, and sometimes pause so
// the consumer really goes to sleep. Returns the number of lost wake-ups seen.
void consume(RingView view, Shared& s, std::uint32_t count) {
  RingConsumer c(view);
  std::uint32_t expect = 0;
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  while (expect < count && std::chrono::steady_clock::now() < deadline) {
    std::uint32_t v;
    if (c.try_pop(&v)) {
      if (v != expect) s.lost.fetch_add(1000);  // order broken: fail loudly
      ++expect;
      continue;
    }
    s.sleeps.fetch_add(1, std::memory_order_relaxed);
    const auto t0 = std::chrono::steady_clock::now();
    const bool ok = event_wait(
        s.ev, [&] { return c.ready(); }, 2s);
    // A false return may be an early (spurious) one; only a sleep that ran its whole
    // timeout while a value sat in the ring is a lost wake-up.
    if (!ok && std::chrono::steady_clock::now() - t0 >= 2s && c.ready()) s.lost.fetch_add(1);
  }
  if (expect != count) s.lost.fetch_add(1'000'000);
}

void produce(RingView view, Shared& s, std::uint32_t count) {
  RingProducer p(view);
  std::uint32_t rng = 12345;
  for (std::uint32_t i = 0; i < count; ++i) {
    while (!p.try_push(i)) std::this_thread::yield();
    event_notify(s.ev);
    rng = rng * 1103515245 + 12345;
    // Vary the gap so that pushes land before, during and after the consumer's sleep.
    const std::uint32_t spin = (rng >> 16) % 512;
    for (std::uint32_t k = 0; k < spin; ++k) cpu_relax();
  }
}

TEST(LostWakeup, ShouldNeverSleepOnANonEmptyRingBetweenThreads) {
  constexpr std::uint32_t kCount = 200'000;
  auto shared = std::make_unique<Shared>();
  std::vector<char> mem(ring_bytes(64) + 64);
  void* ring = reinterpret_cast<void*>((reinterpret_cast<std::uintptr_t>(mem.data()) + 63) &
                                       ~std::uintptr_t{63});
  ring_initialize(ring, 64);
  std::thread consumer([&] { consume(RingView(ring, 64), *shared, kCount); });
  produce(RingView(ring, 64), *shared, kCount);
  consumer.join();
  EXPECT_EQ(shared->lost.load(), 0u);
  EXPECT_GT(shared->sleeps.load(), 0u) << "the consumer should really have slept";
}

TEST(LostWakeup, ShouldNeverSleepOnANonEmptyRingBetweenProcesses) {
  constexpr std::uint32_t kCount = 100'000;
  const std::size_t bytes = sizeof(Shared) + ring_bytes(64);
  void* mem = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  auto* s = new (mem) Shared{};
  void* ring = static_cast<char*>(mem) + sizeof(Shared);
  ring_initialize(ring, 64);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    produce(RingView(ring, 64), *s, kCount);
    ::_exit(0);
  }
  consume(RingView(ring, 64), *s, kCount);
  int status = 0;
  ::waitpid(child, &status, 0);
  EXPECT_EQ(s->lost.load(), 0u);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  ::munmap(mem, bytes);
}

}  // namespace
}  // namespace insideout::shm
