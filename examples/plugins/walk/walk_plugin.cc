// The walk plugin: a coroutine continuation that sleeps, moves to another pool and back,
// and says where it ran.
//
//   walk.path  ARG: microseconds to sleep before moving (0: no sleep). Moves from the
//              pool it starts on to the pool named "io" (insideoutctl pool create io ...)
//              and back, a yield on each, then writes its path in place: the pool ids it
//              ran on, as "0>1>0" (IO_FN_OUTPUT: the environment is the output buffer,
//              8 bytes or more). The scalar result is the number of pools visited.
//              Fails when there is no pool "io" or the buffer is too small.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <insideout/sdk.hpp>
#include <string>

namespace {

insideout::Continuation path(insideout::CoContext c) {
  std::string walked = std::to_string(c.pool());  // state kept across every suspension
  const std::uint32_t home = c.pool();
  if (c.arg() != 0) co_await c.sleep_for(std::chrono::microseconds(c.arg()));
  const std::int64_t io = c.pool_id("io");
  if (io < 0) co_return c.fail("walk.path: no pool named \"io\" (insideoutctl pool create io)");
  for (std::uint32_t to : {static_cast<std::uint32_t>(io), home}) {
    if (!co_await c.move_to(to)) {
      co_return c.fail(to == home ? "walk.path: the move back home was refused"
                                  : "walk.path: the move to pool \"io\" was refused");
    }
    co_await c.yield();  // a step of its own on the new pool
    walked += '>' + std::to_string(c.pool());
  }
  const auto out = c.output();
  if (out.size() < walked.size())
    co_return c.fail("walk.path: the buffer is smaller than the path",
                     insideout::Error::kResultTooLarge);
  std::copy_n(reinterpret_cast<const std::byte*>(walked.data()), walked.size(), out.data());
  c.set_output_len(walked.size());
  co_return 3;
}

}  // namespace

INSIDEOUT_PLUGIN("walk", "1.0", plugin) {
  plugin.add("path", "sleeps ARG us, moves to pool \"io\" and back, writes the path \"0>1>0\"",
             insideout::coroutine<path>, IO_FN_OUTPUT);
}
