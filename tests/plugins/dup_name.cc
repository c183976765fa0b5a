// A second plugin named "good" (a name already taken): refused while good.so is loaded.
#include <insideout/sdk.hpp>

namespace {
insideout::Step noop(insideout::Task&, insideout::Context& c) { return c.complete(); }
}  // namespace

INSIDEOUT_PLUGIN("good", "9.9", plugin) {
  plugin.add("other", "never loaded", insideout::step<noop>);
}
