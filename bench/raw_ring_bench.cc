// raw_ring: the floor insideout is measured against. A minimal single-producer,
// single-consumer ring of 64-byte messages in an anonymous shared mapping made before
// fork(), with a futex wake issued only when the other side announced that it sleeps.
//
// Systems: raw_ring (both sides spin: throughput and rtt_busy) and raw_ring_futex (both
// sides sleep on a futex as soon as there is nothing to do: throughput and rtt_sleep).
//
// Memory ordering:
//   P1 (producer: tail store, release) pairs with C1 (consumer: tail load, acquire): the
//      slots before tail are written.
//   C2 (consumer: head store, release) pairs with P0 (producer: head load, acquire): the
//      slots before head are read and may be overwritten.
//   W1 (waiter: asleep store, then fence seq_cst, then its re-check) pairs with N1
//      (notifier: its P1 or C2 store, then fence seq_cst, then the asleep load). Two
//      seq_cst fences forbid both loads from missing the other side's store, so either
//      the waiter sees the new position or the notifier sees the announcement and wakes.
#include <cstring>

#include "channel_bench.h"

namespace insideout::bench {
namespace {

inline constexpr std::uint64_t kCapacity = 1024;  // messages; a power of two, >= 512
inline constexpr std::uint64_t kMask = kCapacity - 1;

// The shared part: each position and each futex word on its own cache line.
struct RingShared {
  alignas(kCacheLine) std::atomic<std::uint64_t> tail{0};             // producer writes
  alignas(kCacheLine) std::atomic<std::uint32_t> consumer_asleep{0};  // futex word
  alignas(kCacheLine) std::atomic<std::uint64_t> head{0};             // consumer writes
  alignas(kCacheLine) std::atomic<std::uint32_t> producer_asleep{0};  // futex word
  alignas(kCacheLine) Msg slots[kCapacity];
};
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

// Waits until ready(). Spinning, or: announce on `asleep`, re-check, sleep.
template <class Ready>
void wait_until(Ready&& ready, std::atomic<std::uint32_t>& asleep, Wait wait) {
  if (wait == Wait::kSpin) {
    while (!ready()) cpu_relax();  // bounded by the watchdog
    return;
  }
  for (;;) {
    // Relaxed: ordered before the re-check by the fence (W1).
    asleep.store(1, std::memory_order_relaxed);
    // W1: pairs with N1 in wake_if_asleep().
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (ready()) {
      // Relaxed: at worst the notifier issues one needless wake.
      asleep.store(0, std::memory_order_relaxed);
      return;
    }
    futex_wait(&asleep, 1);  // returns at once when the notifier already cleared it
  }
}

// Call after publishing a position.
inline void wake_if_asleep(std::atomic<std::uint32_t>& asleep) {
  // N1: pairs with W1 in wait_until(); orders the position store before the load.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  // Relaxed: the futex word carries no data; the positions are published by P1/C2.
  if (asleep.load(std::memory_order_relaxed) != 0 &&
      asleep.exchange(0, std::memory_order_relaxed) != 0) {
    futex_wake(&asleep, 1);
  }
}

// One ring and the process-local state of whichever side this process plays; both sides
// of a measurement use the same Wait, so a spinning ring never pays for wake checks.
class RawRing {
 public:
  [[nodiscard]] bool send(std::span<const Msg> batch, Wait wait) {
    const std::uint64_t n = batch.size();
    if (tail_ + n - head_cache_ > kCapacity) {
      wait_until(
          [&] {
            head_cache_ = s_->head.load(std::memory_order_acquire);  // P0: pairs with C2
            return tail_ + n - head_cache_ <= kCapacity;
          },
          s_->producer_asleep, wait);
    }
    for (std::uint64_t i = 0; i < n; ++i) s_->slots[(tail_ + i) & kMask] = batch[i];
    tail_ += n;
    s_->tail.store(tail_, std::memory_order_release);  // P1: pairs with C1
    if (wait == Wait::kBlock) wake_if_asleep(s_->consumer_asleep);
    return true;
  }

  [[nodiscard]] std::size_t recv(std::span<Msg> out, Wait wait) {
    if (tail_cache_ == head_) {
      wait_until(
          [&] {
            tail_cache_ = s_->tail.load(std::memory_order_acquire);  // C1: pairs with P1
            return tail_cache_ != head_;
          },
          s_->consumer_asleep, wait);
    }
    const auto n = std::size_t(std::min<std::uint64_t>(tail_cache_ - head_, out.size()));
    for (std::size_t i = 0; i < n; ++i) out[i] = s_->slots[(head_ + i) & kMask];
    head_ += n;
    s_->head.store(head_, std::memory_order_release);  // C2: pairs with P0
    if (wait == Wait::kBlock) wake_if_asleep(s_->producer_asleep);
    return n;
  }

 private:
  Shared<RingShared> s_;
  std::uint64_t tail_ = 0;        // producer: next position to write
  std::uint64_t head_cache_ = 0;  // producer: last head seen
  std::uint64_t head_ = 0;        // consumer: next position to read
  std::uint64_t tail_cache_ = 0;  // consumer: last tail seen
};

}  // namespace
}  // namespace insideout::bench

int main(int argc, char** argv) {
  using namespace insideout::bench;
  const Options o = parse_options(argc, argv,
                                  "Shared-memory SPSC ring of 64-byte messages, spinning "
                                  "(raw_ring) or futex-blocking (raw_ring_futex).",
                                  channel_scenarios(true));
  pin_thread(cpu_for(0));
  const ChannelPeer spin{.system = "raw_ring",
                         .throughput_wait = Wait::kSpin,
                         .rtt_sleep = false,  // it never sleeps
                         .throughput_msgs = o.pick(5'000'000, 2'000'000, 20'000),
                         .rtt_busy_samples = o.pick(200'000, 40'000, 200)};
  const ChannelPeer futex{.system = "raw_ring_futex",
                          .throughput_wait = Wait::kBlock,
                          .rtt_busy = false,  // it never spins
                          .throughput_msgs = o.pick(2'000'000, 800'000, 20'000),
                          .rtt_sleep_samples = o.pick(20'000, 4'000, 50)};
  auto make = [] { return RawRing(); };
  const int failures = run_channel_peer(o, spin, make) + run_channel_peer(o, futex, make);
  return failures == 0 ? 0 : 1;
}
