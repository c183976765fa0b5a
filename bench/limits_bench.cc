// limits: the physical floor of this machine, to read the other figures against. All in
// scenario `limits`, in nanoseconds:
//   cacheline_pingpong  two threads on CPUs 0 and 1 bounce one cache line (each writes,
//                       then waits for the other's write; plain spin, no pause). mean is
//                       total time over round trips; p50/p99/p999 time single round trips
//                       and so include one clock read (see clock).
//   futex_wake          a thread on CPU 1 sleeps on a shared (not private, as across
//                       processes) futex; one on CPU 0 stamps the time and wakes it. From
//                       the stamp to the sleeper running again; the sleeper has slept
//                       100 us, so the CPU may have gone idle, as in rtt_sleep.
//   syscall             mean cost of getppid(), the least any syscall-based peer pays.
//   clock               mean cost of now_ns() (clock_gettime, vDSO).
#include <sys/syscall.h>

#include "bench_common.h"

namespace insideout::bench {
namespace {

// Memory ordering: L1 (ping store, release) pairs with L2 (pong load, acquire), and L3
// (pong store, release) with L4 (ping load, acquire); the value is the only payload.
void cacheline_pingpong(const Options& o) {
  const std::uint64_t warm_trips = o.pick(100'000, 10'000, 500);  // both threads running
  const std::uint64_t mean_trips = o.pick(2'000'000, 200'000, 2'000);
  const std::uint64_t timed_trips = o.pick(200'000, 20'000, 500);
  const std::uint64_t trips = warm_trips + mean_trips + timed_trips;
  struct alignas(kCacheLine) Line {
    std::atomic<std::uint64_t> v{0};
  } line;
  std::thread pong([&] {
    pin_thread(cpu_for(1));
    for (std::uint64_t i = 0; i < trips; ++i) {
      while (line.v.load(std::memory_order_acquire) != 2 * i + 1) {  // L2
      }
      line.v.store(2 * i + 2, std::memory_order_release);  // L3
    }
  });
  std::uint64_t i = 0;
  auto trip = [&] {
    line.v.store(2 * i + 1, std::memory_order_release);            // L1
    while (line.v.load(std::memory_order_acquire) != 2 * i + 2) {  // L4
    }
    ++i;
  };
  while (i < warm_trips) trip();
  const std::uint64_t t0 = now_ns();
  while (i < warm_trips + mean_trips) trip();
  const std::uint64_t t1 = now_ns();
  std::vector<std::uint64_t> samples;
  samples.reserve(timed_trips);
  while (i < trips) {
    const std::uint64_t s = now_ns();
    trip();
    samples.push_back(now_ns() - s);
  }
  pong.join();
  emit("limits", "cacheline_pingpong", "mean", double(t1 - t0) / double(mean_trips), "ns");
  emit_latency("limits", "cacheline_pingpong", std::move(samples), Unit::kNs);
}

// Memory ordering:
//   S1 (sleeper: state store "asleep", release) pairs with S2 (waker: state load, acquire).
//   W1 (waker: word store, release) pairs with W2 (sleeper: word load, acquire); it carries
//      the stamp, stored before it.
//   S3 (sleeper: state store "awake", release) pairs with S4 (waker), so the next round
//      starts with the word reset.
void futex_wake_latency(const Options& o) {
  const std::uint64_t rounds = o.pick(20'000, 4'000, 50);
  struct Shared {
    alignas(kCacheLine) std::atomic<std::uint32_t> word{0};
    alignas(kCacheLine) std::atomic<std::uint64_t> state{0};
    alignas(kCacheLine) std::atomic<std::uint64_t> stamp{0};
  } s;
  std::vector<std::uint64_t> samples;
  samples.reserve(rounds);
  std::thread sleeper([&] {
    pin_thread(cpu_for(1));
    for (std::uint64_t i = 0; i < rounds; ++i) {
      s.state.store(2 * i + 1, std::memory_order_release);  // S1
      bool slept = false;
      while (s.word.load(std::memory_order_acquire) == 0) {  // W2
        slept = futex_wait(&s.word, 0) || slept;
      }
      const std::uint64_t t = now_ns();
      // Relaxed: published by W1, read after W2.
      if (slept) samples.push_back(t - s.stamp.load(std::memory_order_relaxed));
      s.word.store(0, std::memory_order_relaxed);           // published by S3
      s.state.store(2 * i + 2, std::memory_order_release);  // S3
    }
  });
  prctl(PR_SET_TIMERSLACK, 1UL);
  for (std::uint64_t i = 0; i < rounds; ++i) {
    spin_until([&] { return s.state.load(std::memory_order_acquire) >= 2 * i + 1; });  // S2
    std::this_thread::sleep_for(std::chrono::microseconds(100));  // it is in the kernel now
    s.stamp.store(now_ns(), std::memory_order_relaxed);           // published by W1
    s.word.store(1, std::memory_order_release);                   // W1
    futex_wake(&s.word, 1);
    // >=: the sleeper may already have announced its next round.
    spin_until([&] { return s.state.load(std::memory_order_acquire) >= 2 * i + 2; });  // S4
  }
  sleeper.join();
  emit_latency("limits", "futex_wake", std::move(samples), Unit::kNs);
}

template <class F>
double mean_ns(std::uint64_t n, F&& f) {
  const std::uint64_t t0 = now_ns();
  for (std::uint64_t i = 0; i < n; ++i) f();
  return double(now_ns() - t0) / double(n);
}

}  // namespace
}  // namespace insideout::bench

int main(int argc, char** argv) {
  using namespace insideout::bench;
  const Options o =
      parse_options(argc, argv,
                    "Physical limits: cache-line ping-pong between two CPUs, futex wake-to-run "
                    "latency, syscall and clock cost (ns).",
                    {"limits"});
  if (!o.wants("limits")) return 0;
  pin_thread(cpu_for(0));
  cacheline_pingpong(o);
  futex_wake_latency(o);
  const std::uint64_t n = o.pick(1'000'000, 200'000, 10'000);
  emit("limits", "syscall", "mean", mean_ns(n, [] { syscall(SYS_getppid); }), "ns");
  std::uint64_t sink = 0;
  emit("limits", "clock", "mean", mean_ns(n, [&] { sink += now_ns(); }), "ns");
  return sink == 1 ? 2 : 0;  // keeps the clock reads
}
