// The in-process dispatch workload every thread-pool peer runs, and its driver.
//
// The shape is continuation-style: `chains` independent chains, fanned out from the
// calling thread, each of `steps` empty tasks; a task's only work is to hand its successor
// (the next step of its chain) to the scheduler. So the figure is the pool's cost to
// submit, hand over and run one task. tasks/s = chains * steps / wall time.
#pragma once

#include <barrier>
#include <functional>
#include <memory>

#include "bench_common.h"

namespace insideout::bench {

struct ChainTask {
  std::uint32_t chain;
  std::uint32_t step;
};

// Memory ordering:
//   D1 (remaining.fetch_sub, acq_rel) orders every chain's end before the last one's D2.
//   D2 (done store, release) pairs with D3 (done load, acquire) in wait_done().
class ChainWorkload {
 public:
  ChainWorkload(std::uint32_t chains, std::uint32_t steps) : chains_(chains), steps_(steps) {
    remaining_.store(chains, std::memory_order_relaxed);  // before any task exists
  }

  std::uint32_t chains() const noexcept { return chains_; }
  std::uint64_t tasks() const noexcept { return std::uint64_t{chains_} * steps_; }

  // Runs one empty step. True, with `next` set, while its chain goes on.
  bool step(ChainTask t, ChainTask* next) noexcept {
    if (t.step + 1 < steps_) {
      *next = {t.chain, t.step + 1};
      return true;
    }
    if (remaining_.fetch_sub(1, std::memory_order_acq_rel) == 1) {  // D1
      done_.store(1, std::memory_order_release);                    // D2: pairs with D3
      done_.notify_all();
    }
    return false;
  }

  void wait_done() noexcept {
    while (done_.load(std::memory_order_acquire) == 0) done_.wait(0);  // D3: pairs with D2
  }

 private:
  std::uint32_t chains_;
  std::uint32_t steps_;
  alignas(kCacheLine) std::atomic<std::uint32_t> remaining_;
  alignas(kCacheLine) std::atomic<std::uint32_t> done_{0};
};

// Pins each of a pool's `threads` threads to its own CPU (wrapping around) by posting one
// task per thread that blocks until all have arrived, so no thread can take two. The
// tasks share the barrier: a thread may still be leaving it when this one returns.
inline void pin_pool_threads(unsigned threads,
                             const std::function<void(std::function<void()>)>& post) {
  auto sync = std::make_shared<std::barrier<>>(std::ptrdiff_t(threads) + 1);
  auto next = std::make_shared<std::atomic<int>>(0);
  for (unsigned i = 0; i < threads; ++i) {
    post([sync, next] {
      // Relaxed: only hands out distinct indices.
      pin_thread(cpu_for(next->fetch_add(1, std::memory_order_relaxed)));
      sync->arrive_and_wait();
    });
  }
  sync->arrive_and_wait();
}

// Runs the workload on pools of 1, 2 and hardware_concurrency threads, for each
// dispatch_threads<N> scenario that `o` asks for. make_pool(threads) returns a pool with
// `void run(ChainWorkload&)`, which submits the chains and returns when all are done;
// pools are made and warmed up outside the timed run. Returns failures.
template <class MakePool>
int run_dispatch(const Options& o, std::string_view system, MakePool&& make_pool) {
  constexpr std::uint32_t kChains = 64;
  const auto steps = std::uint32_t(o.pick(10'000'000, 4'000'000, 20'000) / kChains);
  int failures = 0;
  for (unsigned threads : dispatch_thread_counts()) {
    const std::string scenario = dispatch_scenario(threads);
    if (!o.wants(scenario)) continue;
    try {
      // The workloads outlive the pool: a worker may still be in the last step's notify
      // when wait_done() returns, and the pool's destructor joins it.
      ChainWorkload warm(kChains, std::max(1u, steps / 10));
      ChainWorkload work(kChains, steps);
      auto pool = make_pool(threads);
      pool->run(warm);
      const std::uint64_t t0 = now_ns();
      pool->run(work);
      const std::uint64_t t1 = now_ns();
      emit_rate(scenario, system, work.tasks(), t1 - t0, /*tasks=*/true);
    } catch (const std::exception& e) {
      fail(o, (std::string(system) + " " + scenario + ": " + e.what()).c_str());
      ++failures;
    }
  }
  return failures;
}

}  // namespace insideout::bench
