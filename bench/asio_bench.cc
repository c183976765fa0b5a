// asio: boost::asio::thread_pool of N threads, each pinned to its own CPU. Each task runs
// its step and post()s its successor to the pool; the calling thread only submits the
// chains and waits.
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>

#include "dispatch_bench.h"

namespace insideout::bench {
namespace {

class AsioPool {
 public:
  explicit AsioPool(unsigned threads) : pool_(threads) {
    pin_pool_threads(threads,
                     [this](std::function<void()> f) { boost::asio::post(pool_, std::move(f)); });
  }
  ~AsioPool() { pool_.join(); }

  void run(ChainWorkload& w) {
    for (std::uint32_t c = 0; c < w.chains(); ++c) {
      boost::asio::post(pool_, [this, &w, c] { step(w, {c, 0}); });
    }
    w.wait_done();
  }

 private:
  void step(ChainWorkload& w, ChainTask t) {
    ChainTask next;
    if (w.step(t, &next)) boost::asio::post(pool_, [this, &w, next] { step(w, next); });
  }

  boost::asio::thread_pool pool_;
};

}  // namespace
}  // namespace insideout::bench

int main(int argc, char** argv) {
  using namespace insideout::bench;
  const Options o = parse_options(
      argc, argv, "Boost.Asio thread_pool with post(): empty continuation chains, tasks/s.",
      dispatch_scenarios());
  pin_thread(cpu_for(0));
  return run_dispatch(o, "asio", [](unsigned n) { return std::make_unique<AsioPool>(n); }) == 0 ? 0
                                                                                                : 1;
}
