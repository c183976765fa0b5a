// A test plugin fed through its client's doorbells: bells.sum waits on doorbell 0 until
// the client has rung it ARG times, without being resubmitted, and completes with the
// number of times it woke (at most ARG: rings that come together wake it once).
#include <cstdint>
#include <string>

#include "insideout/sdk.hpp"

namespace {

insideout::Continuation sum(insideout::CoContext c) {
  std::uint64_t seen = 0;
  std::uint64_t wakes = 0;
  while (seen < c.arg()) {
    const std::int64_t r = co_await c.doorbell(0, seen);
    if (r < 0) co_return c.fail("doorbell wait failed: " + std::to_string(r));
    seen = static_cast<std::uint64_t>(r);
    ++wakes;
  }
  co_return wakes;
}

}  // namespace

INSIDEOUT_PLUGIN("bells", "1.0", plugin) {
  plugin.add("sum", "waits until doorbell 0 has rung ARG times; completes with its wake-ups",
             insideout::coroutine<sum>, 0, 1'000'000'000);
}
