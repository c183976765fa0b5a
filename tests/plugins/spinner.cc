// A test plugin whose step holds its worker: spinner.spin runs ARG milliseconds without
// returning (the long-step report's test); spinner.fail fails with a message.
#include <chrono>
#include <string>

#include "insideout/sdk.hpp"

namespace {

insideout::Step spin(insideout::Task&, insideout::Context& c) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(c.arg());
  while (std::chrono::steady_clock::now() < until) {
  }
  return c.complete(c.arg());
}

insideout::Step fail(insideout::Task&, insideout::Context& c) {
  return c.fail("asked to fail, with ARG " + std::to_string(c.arg()));
}

}  // namespace

INSIDEOUT_PLUGIN("spinner", "1.0", plugin) {
  plugin.add("spin", "runs ARG milliseconds in one step", insideout::step<spin>, 0, 60'000);
  plugin.add("fail", "fails with a message", insideout::step<fail>);
}
