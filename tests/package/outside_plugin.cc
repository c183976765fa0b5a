// A plugin built outside the tree from the installed package, as a user builds one:
// find_package(insideout) and insideout_add_plugin(outside outside_plugin.cc).
#include <insideout/sdk.hpp>

namespace {

insideout::Step add_one(insideout::Task&, insideout::Context& c) { return c.complete(c.arg() + 1); }

// A coroutine: two steps apart (a yield between), then twice ARG.
insideout::Continuation twice(insideout::CoContext c) {
  co_await c.yield();
  co_return c.arg() * 2;
}

}  // namespace

INSIDEOUT_PLUGIN("outside", "1.0", plugin) {
  plugin.add("add_one", "returns ARG + 1", insideout::step<add_one>);
  plugin.add("twice", "yields, then returns 2 * ARG", insideout::coroutine<twice>);
}
