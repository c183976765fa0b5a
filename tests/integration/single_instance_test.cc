// One insideoutd per runtime directory, and the command line's --help and --version.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include "insideout/client.hpp"
#include "support/daemon_process.h"

namespace insideout::testing {
namespace {

using namespace std::chrono_literals;

TEST(SingleInstance, ShouldRefuseASecondDaemonOnTheSameRuntimeDirNamingTheFirstOnesPid) {
  DaemonProcess first;
  ASSERT_TRUE(first.ready()) << first.log();
  const CommandResult second = run_insideoutd({"--runtime-dir", first.runtime_dir()}, 30s);
  EXPECT_NE(second.exit_code, 0) << second.output;
  EXPECT_NE(second.exit_code, -1) << "the second daemon did not exit: " << second.output;
  EXPECT_NE(second.output.find("pid " + std::to_string(first.pid())), std::string::npos)
      << second.output;
  EXPECT_NE(second.output.find(first.runtime_dir()), std::string::npos) << second.output;

  // The first one is untouched: alive, its sockets, lock and counters area in place, serving.
  EXPECT_TRUE(first.alive());
  auto files = list_dir(first.runtime_dir());
  std::sort(files.begin(), files.end());
  EXPECT_EQ(files,
            (std::vector<std::string>{"control.sock", "daemon.sock", "insideoutd.lock", "stats"}));
  ClientOptions co;
  co.runtime_dir = first.runtime_dir();
  auto c = Client::connect(co);
  ASSERT_TRUE(c.ok()) << c.status();
  auto h = (*c)->submit("noop");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->wait_for(5s), Status::kOk);
}

TEST(SingleInstance, ShouldStartOnTheRuntimeDirOfADaemonThatWasKilled) {
  DaemonProcess first;
  ASSERT_TRUE(first.ready()) << first.log();
  const std::string dir = first.runtime_dir();
  ASSERT_EQ(first.stop(SIGKILL, 5s), 128 + SIGKILL);
  // Its socket and lock file are left behind; neither may stop a successor.
  DaemonProcess second({}, dir);
  ASSERT_TRUE(second.ready()) << second.log();
  ClientOptions co;
  co.runtime_dir = dir;
  auto c = Client::connect(co);
  ASSERT_TRUE(c.ok()) << c.status() << second.log();
  auto h = (*c)->submit("noop");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->wait_for(5s), Status::kOk);
}

TEST(CommandLine, ShouldPrintHelpAndExitZero) {
  const CommandResult r = run_insideoutd({"--help"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("insideoutd"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--runtime-dir"), std::string::npos) << r.output;
}

TEST(CommandLine, ShouldPrintVersionAndExitZero) {
  const CommandResult r = run_insideoutd({"--version"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("insideoutd 0."), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("layout " + std::to_string(shm::kLayoutVersion)), std::string::npos)
      << r.output;
}

TEST(CommandLine, ShouldExitNonZeroOnAnUnknownOption) {
  const CommandResult r = run_insideoutd({"--no-such-option"});
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.exit_code, -1) << r.output;
}

}  // namespace
}  // namespace insideout::testing
