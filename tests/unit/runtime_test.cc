// The embedded executor (insideout::Runtime): the SDK's continuations in-process, with
// no daemon, and the same results as the daemon's engine gives.
#include "insideout/runtime.hpp"

#include <gtest/gtest.h>
#include <xxhash.h>

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "insideout/sdk.hpp"
#include "support/in_process.h"

namespace insideout {
namespace {

using namespace std::chrono_literals;

Step add_one(Task&, Context& c) { return c.complete(c.arg() + 1); }

Step reverse(Task&, Context& c) {
  auto out = c.output();
  const std::size_t n = c.arg() < out.size() ? c.arg() : out.size();
  for (std::size_t i = 0; i < n / 2; ++i) std::swap(out[i], out[n - 1 - i]);
  c.set_output_len(n);
  return Step::kComplete;
}

// Runs ARG steps, each on the pool after the last one (default, io, default, ...) and
// yielding between them; the result packs, per step, the pool and worker it ran on
// (bit pool * 8 + worker), so a test sees every worker of both pools.
Continuation tour(CoContext c) {
  const auto io = c.pool_id("io");
  if (io < 0) co_return c.fail("no pool named io");
  std::uint64_t seen = 0;
  for (std::uint64_t i = 0; i < c.arg(); ++i) {
    seen |= std::uint64_t{1} << (c.pool() * 8 + c.worker());
    const std::uint32_t next = c.pool() == 0 ? static_cast<std::uint32_t>(io) : 0;
    if (!co_await c.move_to(next)) co_return c.fail("could not move");
    co_await c.yield();
  }
  co_return seen;
}

Continuation fails_later(CoContext c) {
  co_await c.sleep_for(1ms);
  co_return c.fail("it failed after a sleep");
}

INSIDEOUT_PLUGIN("demo", "1.0", plugin) {
  plugin.add("add_one", "returns ARG + 1", step<add_one>);
  plugin.add("reverse", "reverses the first ARG bytes in place", step<reverse>,
             IO_FN_OUTPUT | IO_FN_NEEDS_BUFFER);
  plugin.add("tour", "moves between two pools", coroutine<tour>);
  plugin.add("fails_later", "fails with a message", coroutine<fails_later>);
}

RuntimeOptions two_pools() {
  RuntimeOptions o;
  o.pin = false;
  o.pools = {{"default", 2, {}}, {"io", 2, {}}};
  return o;
}

TEST(Runtime, ShouldRunAPluginsFunctionsInProcess) {
  Runtime rt(two_pools());
  std::string err;
  ASSERT_TRUE(rt.add_plugin(insideout_plugin_v1(), &err)) << err;
  const auto r = rt.call("demo.add_one", 41);
  EXPECT_TRUE(r.ok()) << r.error();
  EXPECT_EQ(r.value, 42u);
  const std::string text = "insideout";
  const auto rev = rt.call("demo.reverse", text.size(), std::as_bytes(std::span(text)));
  EXPECT_TRUE(rev.ok()) << rev.error();
  EXPECT_EQ(rev.data, "tuoedisni");
  const auto f = rt.call("demo.fails_later");
  EXPECT_FALSE(f.ok());
  EXPECT_EQ(f.message, "it failed after a sleep");
  EXPECT_NE(f.error().find("it failed after a sleep"), std::string::npos);
}

TEST(Runtime, ShouldMoveACoroutineAcrossEveryWorkerOfTwoPoolsAndKeepItsState) {
  Runtime rt(two_pools());
  std::string err;
  ASSERT_TRUE(rt.add_plugin(insideout_plugin_v1(), &err)) << err;
  ASSERT_EQ(rt.workers("default"), 2u);
  ASSERT_EQ(rt.workers("io"), 2u);
  // Several at once, so that every worker of both pools has work and takes some.
  std::uint64_t seen = 0;
  for (int round = 0; round < 50 && seen != 0x303; ++round) {
    std::vector<Runtime::Handle> hs;
    for (int i = 0; i < 8; ++i) hs.push_back(rt.submit("demo.tour", 200));
    for (auto& h : hs) {
      const auto r = h.wait();
      ASSERT_TRUE(r.ok()) << r.error();
      seen |= r.value;
    }
  }
  EXPECT_EQ(seen, 0x303u) << std::hex << seen;  // workers 0 and 1 of pool 0 and of pool 1
}

TEST(Runtime, ShouldNameTheClosestFunctionsForAnUnknownName) {
  Runtime rt;
  const auto r = rt.call("chekcsum");
  EXPECT_FALSE(r.ok());
  EXPECT_NE(r.error().find("did you mean 'checksum'?"), std::string::npos) << r.error();
}

TEST(Runtime, ShouldRefuseAPluginOfAnotherAbi) {
  Runtime rt;
  io_plugin_info info = *insideout_plugin_v1();
  info.abi_version = IO_SDK_ABI_VERSION + 1;
  std::string err;
  EXPECT_FALSE(rt.add_plugin(&info, &err));
  EXPECT_NE(err.find("ABI"), std::string::npos) << err;
  EXPECT_FALSE(rt.call("demo.add_one").ok());
}

TEST(Runtime, ShouldGiveTheSameResultsAsTheDaemonsEngine) {
  // The same built-ins and plugin functions, through the daemon's client source (a
  // segment in this process) and through the Runtime.
  Runtime rt;
  ASSERT_TRUE(rt.add_plugin(insideout_plugin_v1()));
  testing::InProcessDaemon d(2, {}, shm::IdleStrategy::kSpinThenBlock,
                             [](testing::InProcessDaemon& self) {
                               auto& r = self.registry();
                               r.add({"demo.add_one", "", step<add_one>});
                               daemon::FunctionDef rev{"demo.reverse", "", step<reverse>, true};
                               rev.flags = IO_FN_OUTPUT;
                               r.add(rev);
                             });
  const std::string text = "a continuation scheduler";
  struct Case {
    const char* fn;
    std::uint64_t arg;
    bool with_env;
  } cases[] = {{"demo.add_one", 99, false}, {"checksum", 0, true}, {"fanout", 1000, false},
               {"chain", 100, false},       {"echo", 0, true},     {"demo.reverse", 24, true}};
  for (const Case& k : cases) {
    const auto r = rt.call(
        k.fn, k.arg, k.with_env ? std::as_bytes(std::span(text)) : std::span<const std::byte>{});
    ASSERT_TRUE(r.ok()) << k.fn << ": " << r.error();
    shm::Frame* f = d.frame();
    f->fn = d.fn(k.fn);
    f->arg = k.arg;
    if (k.with_env) {
      char* buf = d.buffer(0);
      std::memcpy(buf, text.data(), text.size());
      f->env_off = d.offset(buf);
      f->env_len = static_cast<std::uint32_t>(text.size());
    }
    ASSERT_TRUE(d.push(f));
    ASSERT_EQ(d.next(), f);
    EXPECT_EQ(f->status, r.status) << k.fn;
    EXPECT_EQ(f->result, r.value) << k.fn;
    if (k.with_env) {
      EXPECT_EQ(std::string(d.buffer(0), f->result_len), r.data) << k.fn;
    }
    d.release(f);
  }
  EXPECT_EQ(rt.call("checksum", 0, std::as_bytes(std::span(text))).value,
            XXH3_64bits(text.data(), text.size()));
}

}  // namespace
}  // namespace insideout
