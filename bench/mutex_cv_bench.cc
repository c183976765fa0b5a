// mutex_cv: the textbook pool, a std::deque of tasks behind one std::mutex with a
// std::condition_variable, and N pinned worker threads that sleep when it is empty. Each
// task runs its step and pushes its successor (notify_one per push).
#include <condition_variable>
#include <deque>
#include <mutex>

#include "dispatch_bench.h"

namespace insideout::bench {
namespace {

class MutexCvPool {
 public:
  explicit MutexCvPool(unsigned threads) {
    for (unsigned i = 0; i < threads; ++i) workers_.emplace_back([this, i] { work(int(i)); });
  }
  ~MutexCvPool() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }

  void run(ChainWorkload& w) {
    {
      std::lock_guard lock(mu_);
      work_ = &w;
      for (std::uint32_t c = 0; c < w.chains(); ++c) queue_.push_back({c, 0});
    }
    cv_.notify_all();
    w.wait_done();
  }

 private:
  void work(int index) {
    pin_thread(cpu_for(index));
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      const ChainTask t = queue_.front();
      queue_.pop_front();
      ChainWorkload* w = work_;
      lock.unlock();
      ChainTask next;
      const bool more = w->step(t, &next);
      lock.lock();
      if (more) {
        queue_.push_back(next);
        cv_.notify_one();
      }
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<ChainTask> queue_;    // guarded by mu_
  ChainWorkload* work_ = nullptr;  // guarded by mu_
  bool stop_ = false;              // guarded by mu_
  std::vector<std::thread> workers_;
};

}  // namespace
}  // namespace insideout::bench

int main(int argc, char** argv) {
  using namespace insideout::bench;
  const Options o = parse_options(
      argc, argv, "std::mutex + std::condition_variable task queue: empty continuation chains.",
      dispatch_scenarios());
  pin_thread(cpu_for(0));
  return run_dispatch(o, "mutex_cv", [](unsigned n) { return std::make_unique<MutexCvPool>(n); }) ==
                 0
             ? 0
             : 1;
}
