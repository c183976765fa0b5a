// tbb: oneTBB task_group in a task_arena of N threads. The calling thread joins the arena
// (it is one of the N, as TBB is used), and an observer pins each thread that enters the
// arena to its own CPU (arena slot i to cpu_for(i)). Each task runs its step and spawns its
// successor with task_group::run(), so a chain continues on the thread's own deque until stolen.
#include <oneapi/tbb/task_arena.h>
#include <oneapi/tbb/task_group.h>
#include <oneapi/tbb/task_scheduler_observer.h>

#include "dispatch_bench.h"

namespace insideout::bench {
namespace {

class ArenaPinner : public tbb::task_scheduler_observer {
 public:
  explicit ArenaPinner(tbb::task_arena& arena) : tbb::task_scheduler_observer(arena) {
    observe(true);
  }
  ~ArenaPinner() override { observe(false); }
  void on_scheduler_entry(bool) override {
    pin_thread(cpu_for(tbb::this_task_arena::current_thread_index()));
  }
};

class TbbPool {
 public:
  explicit TbbPool(unsigned threads) : arena_(int(threads)), pinner_(arena_) {}

  void run(ChainWorkload& w) {
    arena_.execute([&] {
      tbb::task_group group;
      for (std::uint32_t c = 0; c < w.chains(); ++c) {
        group.run([&group, &w, c] { step(group, w, {c, 0}); });
      }
      group.wait();
    });
  }

 private:
  static void step(tbb::task_group& group, ChainWorkload& w, ChainTask t) {
    ChainTask next;
    if (w.step(t, &next)) group.run([&group, &w, next] { step(group, w, next); });
  }

  tbb::task_arena arena_;
  ArenaPinner pinner_;
};

}  // namespace
}  // namespace insideout::bench

int main(int argc, char** argv) {
  using namespace insideout::bench;
  const Options o = parse_options(
      argc, argv, "oneTBB task_group in a task_arena: empty continuation chains, tasks/s.",
      dispatch_scenarios());
  // Not pinned here: TBB sizes its worker pool from the affinity of the first thread that
  // uses it. The observer pins every thread of the arena, this one included.
  return run_dispatch(o, "tbb", [](unsigned n) { return std::make_unique<TbbPool>(n); }) == 0 ? 0
                                                                                              : 1;
}
