// A plugin that registers one function name twice: refused, nothing of it loaded.
#include <insideout/sdk.hpp>

namespace {
insideout::Step noop(insideout::Task&, insideout::Context& c) { return c.complete(); }
}  // namespace

INSIDEOUT_PLUGIN("dup_function", "1.0", plugin) {
  plugin.add("twice", "first", insideout::step<noop>);
  plugin.add("twice", "second", insideout::step<noop>);
}
