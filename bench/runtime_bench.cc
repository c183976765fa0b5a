// The embedded executor (insideout::Runtime, the engine in this process, no daemon) on the
// in-process peers' workloads, with system `insideout_embedded`: dispatch_threadsN (64
// chains of empty steps, each a yield, as the daemon runs them in insideout_bench) and
// fanout_workersN (children per second of the `fanout` built-in). Its rows sit beside
// tbb, moodycamel, asio and mutex_cv (dispatch) and beside insideout (the daemon) in the
// same run of bench.sh.
#include <string>
#include <vector>

#include "bench_common.h"
#include "insideout/runtime.hpp"

namespace insideout::bench {
namespace {

constexpr const char* kSystem = "insideout_embedded";

RuntimeOptions pinned(unsigned workers) {
  RuntimeOptions o;
  RuntimeOptions::Pool p;
  p.name = "default";
  p.workers = workers;
  for (unsigned i = 0; i < workers; ++i) p.cpus.push_back(cpu_for(int(i)));
  o.pools.push_back(p);
  return o;
}

bool run_chains(Runtime& rt, std::uint32_t chains, std::uint32_t steps) {
  std::vector<Runtime::Handle> hs;
  hs.reserve(chains);
  for (std::uint32_t i = 0; i < chains; ++i) hs.push_back(rt.submit("chain", steps));
  bool ok = true;
  for (auto& h : hs) ok = h.wait().ok() && ok;
  return ok;
}

int dispatch(const Options& o, unsigned threads) {
  Runtime rt(pinned(threads));
  constexpr std::uint32_t kChains = 64;
  const auto steps = static_cast<std::uint32_t>(o.pick(10'000'000, 4'000'000, 20'000) / kChains);
  if (!run_chains(rt, kChains, std::max(1u, steps / 10))) return 1;  // warm up
  const std::uint64_t t0 = now_ns();
  if (!run_chains(rt, kChains, steps)) return 1;
  const std::uint64_t t1 = now_ns();
  emit_rate(dispatch_scenario(threads), kSystem, std::uint64_t{kChains} * steps, t1 - t0, true);
  return 0;
}

int fanout(const Options& o, unsigned workers) {
  Runtime rt(pinned(workers));
  const std::uint64_t children = o.pick(100'000'000, 10'000'000, 100'000);
  if (!rt.call("fanout", children / 10 + 1).ok()) return 1;  // warm up
  const std::uint64_t t0 = now_ns();
  if (!rt.call("fanout", children).ok()) return 1;
  const std::uint64_t t1 = now_ns();
  emit_rate("fanout_workers" + std::to_string(workers), kSystem, children, t1 - t0, true);
  return 0;
}

}  // namespace
}  // namespace insideout::bench

int main(int argc, char** argv) {
  using namespace insideout::bench;
  std::vector<std::string> scenarios = dispatch_scenarios();
  for (unsigned t : dispatch_thread_counts())
    scenarios.push_back("fanout_workers" + std::to_string(t));
  const Options o = parse_options(
      argc, argv,
      "insideout::Runtime (the engine in-process): dispatch chains and fanout, tasks/s.",
      scenarios);
  int failures = 0;
  for (unsigned t : dispatch_thread_counts()) {
    if (o.wants(dispatch_scenario(t))) failures += dispatch(o, t);
    if (o.wants("fanout_workers" + std::to_string(t))) failures += fanout(o, t);
  }
  return failures == 0 ? 0 : 1;
}
