// A test plugin whose step holds its worker: spinner.spin runs ARG milliseconds without
// returning (the long-step report's test).
#include <chrono>

#include "insideout/sdk.hpp"

namespace {

insideout::Step spin(insideout::Task&, insideout::Context& c) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(c.arg());
  while (std::chrono::steady_clock::now() < until) {
  }
  return c.complete(c.arg());
}

}  // namespace

INSIDEOUT_PLUGIN("spinner", "1.0", plugin) {
  plugin.add("spin", "runs ARG milliseconds in one step", insideout::step<spin>, 0, 60'000);
}
