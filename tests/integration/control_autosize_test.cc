// Pools that size themselves, through the control plane of a real insideoutd: autosize
// set by RPC and by insideoutctl, read back in `pools`, bad bounds refused with nothing
// changed, a manual resize of an autosized pool refused, and a pool that grows under
// load and gives its workers back when idle (bounded waits, no timing asserts).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "insideout/client.hpp"
#include "integration/control_support.h"
#include "support/daemon_process.h"

namespace insideout::testing {
namespace {

using namespace std::chrono_literals;

std::uint32_t allowed_count() { return static_cast<std::uint32_t>(kernel_affinity(0).size()); }

v1::Pool pool_named(v1::Scheduler::Stub& stub, const std::string& name) {
  v1::ListPoolsResponse r;
  auto st = stub.ListPools(ctx().get(), {}, &r);
  EXPECT_TRUE(st.ok()) << st.error_message();
  for (const auto& p : r.pools()) {
    if (p.name() == name) return p;
  }
  ADD_FAILURE() << "no pool " << name;
  return {};
}

grpc::Status set_autosize(v1::Scheduler::Stub& stub, const std::string& name, bool on,
                          std::uint32_t min = 0, std::uint32_t max = 0,
                          std::uint32_t shrink_after_ms = 0) {
  v1::SetPoolAutosizeRequest q;
  q.set_name(name);
  q.mutable_autosize()->set_enabled(on);
  q.mutable_autosize()->set_min(min);
  q.mutable_autosize()->set_max(max);
  q.mutable_autosize()->set_shrink_after_ms(shrink_after_ms);
  v1::SetPoolAutosizeResponse r;
  auto st = stub.SetPoolAutosize(ctx().get(), q, &r);
  if (st.ok()) {
    EXPECT_EQ(r.pool().autosize().enabled(), on);
  }
  return st;
}

TEST(ControlAutosize, ShouldSetAutosizeAndShowItInPools) {
  const std::uint32_t cpus = allowed_count();
  DaemonProcess daemon({"--workers", "1"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto stub = control_stub(daemon.runtime_dir());
  EXPECT_FALSE(pool_named(*stub, "default").autosize().enabled());

  auto st = set_autosize(*stub, "default", true, 1, cpus);
  ASSERT_TRUE(st.ok()) << st.error_message();
  v1::Pool p = pool_named(*stub, "default");
  EXPECT_TRUE(p.autosize().enabled());
  EXPECT_EQ(p.autosize().min(), 1u);
  EXPECT_EQ(p.autosize().max(), cpus);
  EXPECT_EQ(p.autosize().grow_after_us(), 1000u) << "defaults filled in";
  EXPECT_EQ(p.autosize().shrink_after_ms(), 20u);
  EXPECT_GE(p.size(), 1u);
  EXPECT_LE(p.size(), cpus);

  // A manual resize of a pool that sizes itself is refused, and says how to go on.
  v1::ResizePoolRequest rq;
  rq.set_name("default");
  rq.set_size(1);
  v1::ResizePoolResponse rr;
  st = stub->ResizePool(ctx().get(), rq, &rr);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(st.error_message().find("sizes itself"), std::string::npos) << st.error_message();
  EXPECT_NE(st.error_message().find("--off"), std::string::npos) << st.error_message();

  // insideoutctl: the AUTO column, the autosize command, --off, create --autosize.
  const std::string bounds = "1.." + std::to_string(cpus);
  auto r = run_command(ctl_args(daemon.runtime_dir(), {"pools"}));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("AUTO"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(bounds), std::string::npos) << r.out;
  r = run_command(ctl_args(daemon.runtime_dir(), {"pool", "resize", "default", "1"}));
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("FAILED_PRECONDITION"), std::string::npos) << r.err;
  r = run_command(ctl_args(daemon.runtime_dir(), {"pool", "autosize", "default", "--off"}));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(pool_named(*stub, "default").autosize().enabled());
  r = run_command(ctl_args(daemon.runtime_dir(), {"pool", "resize", "default", "1"}));
  EXPECT_EQ(r.exit_code, 0) << r.err << " (resizing by hand works again once autosize is off)";
  r = run_command(ctl_args(daemon.runtime_dir(),
                           {"pool", "create", "auto", "--size", "1", "--autosize", bounds}));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  p = pool_named(*stub, "auto");
  EXPECT_TRUE(p.autosize().enabled());
  EXPECT_EQ(p.autosize().max(), cpus);
  r = run_command(ctl_args(daemon.runtime_dir(), {"pool", "autosize", "auto", "--min", "1", "--max",
                                                  "1", "--shrink-after-ms", "5"}));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  p = pool_named(*stub, "auto");
  EXPECT_EQ(p.autosize().max(), 1u);
  EXPECT_EQ(p.autosize().shrink_after_ms(), 5u);
  EXPECT_EQ(p.size(), 1u) << "brought within the new bounds at once";
  r = run_command(ctl_args(daemon.runtime_dir(), {"pools", "--json"}));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("\"autosize\""), std::string::npos) << r.out;
  EXPECT_EQ(daemon.stop(SIGTERM), 0) << daemon.log();
}

std::string config_toml(v1::Scheduler::Stub& stub) {
  v1::GetConfigResponse r;
  auto st = stub.GetConfig(ctx().get(), {}, &r);
  EXPECT_TRUE(st.ok()) << st.error_message();
  return r.toml();
}

// GetConfig is the configuration in effect, live changes included: a file written from it
// would start the daemon as it runs now.
TEST(ControlAutosize, ShouldShowLiveSizesAndSelfSizingInGetConfig) {
  DaemonProcess daemon({"--workers", "1", "--no-pin"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto stub = control_stub(daemon.runtime_dir());
  std::string toml = config_toml(*stub);
  EXPECT_NE(toml.find("workers = 1\n"), std::string::npos) << toml;
  EXPECT_EQ(toml.find("autosize"), std::string::npos) << toml;

  ASSERT_TRUE(set_autosize(*stub, "default", true, 1, 1, 7).ok());
  auto r = run_command(ctl_args(daemon.runtime_dir(), {"pool", "create", "extra", "--size", "1"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = run_command(ctl_args(daemon.runtime_dir(), {"pool", "resize", "extra", "2"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  toml = config_toml(*stub);
  EXPECT_NE(toml.find("autosize = { min = 1, max = 1, grow_after_us = 1000, shrink_after_ms = 7"),
            std::string::npos)
      << toml;
  EXPECT_NE(toml.find("[[pools]]\nname = 'extra'\nsize = 2\n"), std::string::npos) << toml;

  ASSERT_TRUE(set_autosize(*stub, "default", false).ok());
  r = run_command(ctl_args(daemon.runtime_dir(), {"pool", "delete", "extra"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  toml = config_toml(*stub);
  EXPECT_EQ(toml.find("autosize"), std::string::npos) << toml;
  EXPECT_EQ(toml.find("extra"), std::string::npos) << toml;
  EXPECT_EQ(daemon.stop(SIGTERM), 0) << daemon.log();
}

TEST(ControlAutosize, ShouldRefuseBadBoundsAndChangeNothing) {
  const std::uint32_t cpus = allowed_count();
  DaemonProcess daemon({"--workers", "1"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto stub = control_stub(daemon.runtime_dir());
  struct Case {
    const char* what;
    grpc::Status st;
    grpc::StatusCode want;
    const char* says;
  };
  const Case cases[] = {
      {"min above max", set_autosize(*stub, "default", true, 2, 1),
       grpc::StatusCode::INVALID_ARGUMENT, "min 2 is above max 1"},
      {"max above the CPUs", set_autosize(*stub, "default", true, 1, cpus + 1),
       grpc::StatusCode::INVALID_ARGUMENT, "above the pool's"},
      {"min 0", set_autosize(*stub, "default", true, 0, 1), grpc::StatusCode::INVALID_ARGUMENT,
       "min must be at least 1"},
      {"max 0", set_autosize(*stub, "default", true, 1, 0), grpc::StatusCode::INVALID_ARGUMENT,
       "max must be at least 1"},
      {"unknown pool", set_autosize(*stub, "nope", true, 1, 1), grpc::StatusCode::NOT_FOUND,
       "no pool named 'nope'"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    EXPECT_EQ(c.st.error_code(), c.want) << c.st.error_message();
    EXPECT_NE(c.st.error_message().find(c.says), std::string::npos) << c.st.error_message();
  }
  // CreatePool checks autosize before it makes anything.
  v1::CreatePoolRequest cq;
  cq.mutable_pool()->set_name("bad");
  cq.mutable_pool()->set_size(1);
  cq.mutable_pool()->mutable_autosize()->set_enabled(true);
  cq.mutable_pool()->mutable_autosize()->set_min(1);
  cq.mutable_pool()->mutable_autosize()->set_max(cpus + 1);
  v1::CreatePoolResponse cr;
  EXPECT_EQ(stub->CreatePool(ctx().get(), cq, &cr).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  v1::ListPoolsResponse lp;
  ASSERT_TRUE(stub->ListPools(ctx().get(), {}, &lp).ok());
  ASSERT_EQ(lp.pools_size(), 1) << "the bad pool was not made";
  EXPECT_FALSE(lp.pools(0).autosize().enabled());
  EXPECT_EQ(lp.pools(0).size(), 1u);
  // insideoutctl: usage errors exit 2, refusals 1 with the reason on one line.
  auto r =
      run_command(ctl_args(daemon.runtime_dir(), {"pool", "autosize", "default", "--min", "1"}));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  r = run_command(
      ctl_args(daemon.runtime_dir(), {"pool", "autosize", "default", "--min", "3", "--max", "2"}));
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("INVALID_ARGUMENT"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  r = run_command(
      ctl_args(daemon.runtime_dir(), {"pool", "create", "x", "--size", "1", "--autosize", "two"}));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_FALSE(pool_named(*stub, "default").autosize().enabled());
  EXPECT_EQ(daemon.stop(SIGTERM), 0) << daemon.log();
}

TEST(ControlAutosize, ShouldGrowUnderLoadAndGiveWorkersBackWhenIdle) {
  const std::uint32_t cpus = allowed_count();
  if (cpus < 2) GTEST_SKIP() << "needs two CPUs";
  DaemonProcess daemon({"--workers", "1", "--autosize", "1..2"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto stub = control_stub(daemon.runtime_dir());
  ASSERT_TRUE(pool_named(*stub, "default").autosize().enabled());
  ClientOptions co;
  co.runtime_dir = daemon.runtime_dir();
  co.name = "autosize-test";
  auto c = Client::connect(co);
  ASSERT_TRUE(c.ok()) << c.status();
  // Long chains, many at once: every worker busy with work waiting.
  std::vector<Handle> hs;
  for (int i = 0; i < 64; ++i) {
    auto h = (*c)->submit("chain", {}, 200'000);
    ASSERT_TRUE(h.ok()) << h.status();
    hs.push_back(std::move(*h));
  }
  std::uint32_t most = 1;
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (most < 2 && std::chrono::steady_clock::now() < deadline) {
    most = std::max(most, pool_named(*stub, "default").size());
    std::this_thread::sleep_for(1ms);
  }
  for (auto& h : hs) EXPECT_EQ(h.wait(), shm::Status::kOk);
  EXPECT_EQ(most, 2u) << "it grew under load";
  // Idle: back to 1 (bounded wait).
  const auto idle_deadline = std::chrono::steady_clock::now() + 20s;
  while (pool_named(*stub, "default").size() != 1 &&
         std::chrono::steady_clock::now() < idle_deadline) {
    std::this_thread::sleep_for(5ms);
  }
  const v1::Pool p = pool_named(*stub, "default");
  EXPECT_EQ(p.size(), 1u) << "it shrank when idle";
  EXPECT_GE(p.autosize().grows(), 1u);
  EXPECT_GE(p.autosize().shrinks(), 1u);
  hs.clear();
  c->reset();
  EXPECT_EQ(daemon.stop(SIGTERM), 0) << daemon.log();
}

TEST(ControlAutosize, ShouldCheckAutosizeInAConfigurationFile) {
  char tmpl[] = "/tmp/io-autosize-XXXXXX";
  const std::string dir = ::mkdtemp(tmpl);
  const std::string config = dir + "/insideoutd.toml";
  const std::uint32_t cpus = allowed_count();
  {
    std::ofstream(config) << "[[pools]]\nname = \"burst\"\nautosize = { min = 1, max = " << cpus + 1
                          << " }\n";
  }
  auto r = run_insideoutd({"--check-config", config});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find(":3: pools[0].autosize: autosize max " + std::to_string(cpus + 1) +
                          " is above the pool's"),
            std::string::npos)
      << r.output;
  {
    std::ofstream(config) << "autosize = { min = 1, max = 1 }\n[[pools]]\nname = \"burst\"\n"
                          << "size = 1\nautosize = { min = 1, max = 1, shrink_after_ms = 7 }\n";
  }
  r = run_insideoutd({"--check-config", config});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  DaemonProcess daemon({"--workers", "1", "--config", config});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto stub = control_stub(daemon.runtime_dir());
  EXPECT_TRUE(pool_named(*stub, "default").autosize().enabled());
  EXPECT_EQ(pool_named(*stub, "burst").autosize().shrink_after_ms(), 7u);
  EXPECT_EQ(daemon.stop(SIGTERM), 0) << daemon.log();
  std::filesystem::remove_all(dir);
}

TEST(ControlAutosize, ShouldTurnAutosizeOnAndOffOnReload) {
  char tmpl[] = "/tmp/io-autosize-XXXXXX";
  const std::string dir = ::mkdtemp(tmpl);
  const std::string config = dir + "/insideoutd.toml";
  std::ofstream(config) << "workers = 1\n[[pools]]\nname = \"b\"\nsize = 1\n"
                        << "autosize = { min = 1, max = 1 }\n";
  DaemonProcess daemon({"--config", config});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto stub = control_stub(daemon.runtime_dir());
  EXPECT_TRUE(pool_named(*stub, "b").autosize().enabled());
  EXPECT_FALSE(pool_named(*stub, "default").autosize().enabled());
  // Off for "b" (which takes the file's size), on for the default pool.
  std::ofstream(config) << "workers = 1\nautosize = { min = 1, max = 1, shrink_after_ms = 5 }\n"
                        << "[[pools]]\nname = \"b\"\nsize = 2\n";
  auto r = run_command(ctl_args(daemon.runtime_dir(), {"reload"}));
  EXPECT_EQ(r.exit_code, 0) << r.err << daemon.log();
  v1::Pool b = pool_named(*stub, "b");
  EXPECT_FALSE(b.autosize().enabled());
  EXPECT_EQ(b.size(), 2u);
  v1::Pool d = pool_named(*stub, "default");
  EXPECT_TRUE(d.autosize().enabled());
  EXPECT_EQ(d.autosize().shrink_after_ms(), 5u);
  // The effective configuration says so.
  r = run_command(ctl_args(daemon.runtime_dir(), {"config"}));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("autosize = { min = 1, max = 1"), std::string::npos) << r.out;
  EXPECT_EQ(daemon.stop(SIGTERM), 0) << daemon.log();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace insideout::testing
