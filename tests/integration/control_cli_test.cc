// What insideoutctl says when things go wrong: a daemon killed (its counters area left
// behind) or frozen, a mistyped command, a refusal, a limit; and that `top` gives the
// terminal back however it ends.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <thread>

#include "insideout/client.hpp"
#include "integration/control_support.h"
#include "support/daemon_process.h"

namespace insideout::testing {
namespace {

using namespace std::chrono_literals;

bool has(const std::string& text, const std::string& what) {
  return text.find(what) != std::string::npos;
}

TEST(ControlCli, ShouldSayADaemonKilledIsNotRunningAndExportUpZero) {
  DaemonProcess daemon({"--workers", "1"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  const std::string dir = daemon.runtime_dir();
  {
    ClientOptions o;
    o.runtime_dir = dir;
    auto c = Client::connect(o);
    ASSERT_TRUE(c.ok()) << c.status();
    for (int i = 0; i < 10; ++i) ASSERT_EQ((*c)->submit("noop").value().wait(), Status::kOk);
  }
  std::this_thread::sleep_for(300ms);
  auto p = run_command(ctl_args(dir, {"stats", "--prometheus"}), 10s);
  EXPECT_EQ(p.exit_code, 0) << p.err;
  EXPECT_TRUE(has(p.out, "insideout_up 1\n")) << p.out;
  EXPECT_TRUE(has(p.out, "insideout_stats_age_seconds ")) << p.out;

  // Killed: no chance to remove its files. First a zombie (not reaped yet), then gone.
  ASSERT_EQ(::kill(daemon.pid(), SIGKILL), 0);
  std::this_thread::sleep_for(200ms);
  for (int round = 0; round < 2; ++round) {
    auto r = run_command(ctl_args(dir, {"stats"}), 10s);
    EXPECT_EQ(r.exit_code, 3) << r.out << r.err;
    EXPECT_TRUE(has(r.err, "not running")) << r.err;
    EXPECT_FALSE(has(r.out, "uptime")) << r.out;
    p = run_command(ctl_args(dir, {"stats", "--prometheus"}), 10s);
    EXPECT_EQ(p.exit_code, 3) << p.err;
    EXPECT_TRUE(has(p.out, "insideout_up 0\n")) << p.out;
    EXPECT_TRUE(has(p.out, "insideout_stats_age_seconds ")) << p.out;
    EXPECT_TRUE(has(p.out, "insideout_completed_total 10\n")) << p.out;
    if (round == 0) daemon.stop(SIGKILL);  // reaps it
  }
}

TEST(ControlCli, ShouldTreatAFrozenDaemonAsUnreachable) {
  DaemonProcess daemon({"--workers", "1"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  const std::string dir = daemon.runtime_dir();
  ASSERT_EQ(::kill(daemon.pid(), SIGSTOP), 0);
  auto r = run_command(ctl_args(dir, {"--timeout-ms", "500", "status"}), 10s);
  std::this_thread::sleep_for(2500ms);  // the counters area goes stale
  auto s = run_command(ctl_args(dir, {"stats"}), 10s);
  ::kill(daemon.pid(), SIGCONT);
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_TRUE(has(r.err, "DEADLINE_EXCEEDED")) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(s.exit_code, 3) << s.out << s.err;
  EXPECT_TRUE(has(s.err, "not running")) << s.err;
  // Running again: the figures are fresh within a refresh.
  std::this_thread::sleep_for(300ms);
  s = run_command(ctl_args(dir, {"stats"}), 10s);
  EXPECT_EQ(s.exit_code, 0) << s.err;
}

TEST(ControlCli, ShouldNameAnUnknownCommandAndSuggestTheClosest) {
  const std::string dir = "/nonexistent-insideout";
  auto r = run_command(ctl_args(dir, {"statuss"}));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_TRUE(has(r.err, "unknown command 'statuss'")) << r.err;
  EXPECT_TRUE(has(r.err, "did you mean 'status'?")) << r.err;
  r = run_command(ctl_args(dir, {"--timeout-ms", "100", "pool", "crate", "x"}));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_TRUE(has(r.err, "unknown command 'crate' of 'pool' (did you mean 'create'?)")) << r.err;
  r = run_command(ctl_args(dir, {"frobnicate"}));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_TRUE(has(r.err, "unknown command 'frobnicate'")) << r.err;
  EXPECT_FALSE(has(r.err, "did you mean")) << r.err;
  r = run_command(ctl_args(dir, {}));  // none at all: still the usage line
  EXPECT_EQ(r.exit_code, 2) << r.err;
}

TEST(ControlCli, ShouldPrintTheCodeNameOfARefusalAndTheLimitOfAnArgument) {
  DaemonProcess daemon({"--workers", "1"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  const std::string dir = daemon.runtime_dir();
  auto r = run_command(ctl_args(dir, {"pool", "create", "default", "--size", "1"}));
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_TRUE(has(r.err, "insideoutctl: ALREADY_EXISTS: ")) << r.err;
  EXPECT_FALSE(has(r.err, "ERROR")) << r.err;
  r = run_command(ctl_args(dir, {"submit", "fanout", "--arg", "2000000000"}));
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_TRUE(has(r.err, "argument out of range")) << r.err;
  EXPECT_TRUE(has(r.err, "at most 1073741824")) << r.err;
}

void expect_top_restores_the_terminal(const char* how) {
  DaemonProcess daemon({"--workers", "1"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto r = run_command(
      {"/usr/bin/python3", INSIDEOUT_TOP_TERMINAL, INSIDEOUTCTL_PATH, daemon.runtime_dir(), how},
      30s);
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_TRUE(has(r.out, "RESTORED")) << r.out << r.err;
}

TEST(ControlCli, ShouldRestoreTheTerminalWhenTopIsInterruptedByCtrlC) {
  expect_top_restores_the_terminal("INT");
}

TEST(ControlCli, ShouldRestoreTheTerminalWhenTopIsTerminated) {
  expect_top_restores_the_terminal("TERM");
}

}  // namespace
}  // namespace insideout::testing
