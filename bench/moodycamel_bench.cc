// moodycamel: a moodycamel::ConcurrentQueue of tasks and N pinned worker threads, each
// with its own producer and consumer token. Each task runs its step and enqueues its
// successor. The queue cannot block, so idle workers spin, then yield; they stop when the
// pool is destroyed.
#include <concurrentqueue/concurrentqueue.h>

#include "dispatch_bench.h"

namespace insideout::bench {
namespace {

class MoodycamelPool {
 public:
  explicit MoodycamelPool(unsigned threads) {
    for (unsigned i = 0; i < threads; ++i) workers_.emplace_back([this, i] { work(int(i)); });
  }
  ~MoodycamelPool() {
    // Relaxed: the workers only need to see it eventually; no data rides on it.
    stop_.store(true, std::memory_order_relaxed);
    for (auto& t : workers_) t.join();
  }

  void run(ChainWorkload& w) {
    // Relaxed: the queue's own enqueue/dequeue synchronise the task and this pointer's
    // reader; it is set before any task of this run is enqueued.
    work_.store(&w, std::memory_order_relaxed);
    moodycamel::ProducerToken token(queue_);
    for (std::uint32_t c = 0; c < w.chains(); ++c) queue_.enqueue(token, ChainTask{c, 0});
    w.wait_done();
  }

 private:
  void work(int index) {
    pin_thread(cpu_for(index));
    moodycamel::ProducerToken ptok(queue_);
    moodycamel::ConsumerToken ctok(queue_);
    unsigned idle = 0;
    while (!stop_.load(std::memory_order_relaxed)) {
      ChainTask t;
      if (!queue_.try_dequeue(ctok, t)) {
        if (++idle < 1024) {
          cpu_relax();
        } else {
          std::this_thread::yield();
        }
        continue;
      }
      idle = 0;
      ChainTask next;
      if (work_.load(std::memory_order_relaxed)->step(t, &next)) queue_.enqueue(ptok, next);
    }
  }

  moodycamel::ConcurrentQueue<ChainTask> queue_;
  std::atomic<ChainWorkload*> work_{nullptr};
  std::atomic<bool> stop_{false};
  std::vector<std::thread> workers_;
};

}  // namespace
}  // namespace insideout::bench

int main(int argc, char** argv) {
  using namespace insideout::bench;
  const Options o = parse_options(
      argc, argv, "moodycamel::ConcurrentQueue with spinning workers: empty continuation chains.",
      dispatch_scenarios());
  pin_thread(cpu_for(0));
  return run_dispatch(o, "moodycamel",
                      [](unsigned n) { return std::make_unique<MoodycamelPool>(n); }) == 0
             ? 0
             : 1;
}
