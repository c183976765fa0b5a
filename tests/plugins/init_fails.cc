// A plugin whose init registers a function and then fails: refused, and the function it
// registered is not left behind.
#include <insideout/sdk.hpp>

namespace {
insideout::Step noop(insideout::Task&, insideout::Context& c) { return c.complete(); }
}  // namespace

INSIDEOUT_PLUGIN("init_fails", "1.0", plugin) {
  plugin.add("early", "registered before init fails", insideout::step<noop>);
  plugin.error("no licence key in /etc/init_fails.conf");
}
