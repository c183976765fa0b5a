// The plugin the benchmarks measure against the built-ins (bench_plugins): bench.noop
// (a plain step, as the built-in noop) and bench.yield (a coroutine that yields ARG times,
// as the built-in chain steps ARG times).
#include <insideout/sdk.hpp>

namespace {

insideout::Step noop(insideout::Task&, insideout::Context& c) { return c.complete(0); }

insideout::Continuation yield(insideout::CoContext c) {
  const std::uint64_t n = c.arg();
  for (std::uint64_t i = 0; i < n; ++i) co_await c.yield();
  co_return n;
}

}  // namespace

INSIDEOUT_PLUGIN("bench", "1.0", plugin) {
  plugin.add("noop", "does nothing (the built-in noop, as a plugin)", insideout::step<noop>);
  plugin.add("yield", "yields ARG times (the built-in chain, as a coroutine)",
             insideout::coroutine<yield>);
}
