// A well-formed test plugin "good": good.add (ARG + GOOD_STEP), good.hello (7) and
// good.slow (parks ARG ms, then ARG + GOOD_STEP). Built twice: good.so (version 1.0, adds 1) and
// good_v2.so (2.0, adds 2), so a reload shows which code ran.
#include <insideout/sdk.hpp>

#ifndef GOOD_STEP
#define GOOD_STEP 1
#define GOOD_VERSION "1.0"
#endif

namespace {

insideout::Step add(insideout::Task&, insideout::Context& c) {
  return c.complete(c.arg() + GOOD_STEP);
}

insideout::Step hello(insideout::Task&, insideout::Context& c) { return c.complete(7); }

insideout::Step slow_done(insideout::Task&, insideout::Context& c) {
  return c.complete(c.arg() + GOOD_STEP);
}

// Parks ARG milliseconds, then returns ARG + the step: its second step is this library's
// code, run after a reload that replaced it.
insideout::Step slow(insideout::Task& t, insideout::Context& c) {
  t.fn = insideout::step<slow_done>;
  return c.park_for(std::chrono::milliseconds(c.arg()));
}

}  // namespace

INSIDEOUT_PLUGIN("good", GOOD_VERSION, plugin) {
  plugin.add("add", "returns ARG + " GOOD_VERSION "'s step", insideout::step<add>);
  plugin.add("hello", "returns 7", insideout::step<hello>);
  plugin.add("slow", "parks ARG ms, then returns ARG + the version's step", insideout::step<slow>);
}
