// Several client processes at once, each running every built-in through batched,
// pipelined submissions, every result checked against a local computation.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <vector>

#include "insideout/client.hpp"
#include "integration/workload.h"
#include "support/daemon_process.h"

namespace insideout::testing {
namespace {

using namespace std::chrono_literals;

// One client process: connects after fork() and runs `o`; the exit code says how it went.
int client_main(const std::string& runtime_dir, const WorkloadOptions& o, const char* name) {
  ClientOptions co;
  co.runtime_dir = runtime_dir;
  co.name = name;
  auto c = Client::connect(co);
  if (!c.ok()) {
    std::fprintf(stderr, "%s: connect: %s\n", name, std::string(c.status().message()).c_str());
    return 2;
  }
  const WorkloadReport rep = run_workload(**c, o);
  if (!rep.clean()) {
    std::fprintf(stderr, "%s: %s\n", name, rep.summary().c_str());
    return 1;
  }
  for (std::size_t k = 0; k < kKinds; ++k) {
    if (rep.ok_by_kind[k] != o.counts[k]) {
      std::fprintf(stderr, "%s: %s: %llu ok, expected %llu\n", name,
                   kind_name(static_cast<Kind>(k)),
                   static_cast<unsigned long long>(rep.ok_by_kind[k]),
                   static_cast<unsigned long long>(o.counts[k]));
      return 1;
    }
  }
  return 0;
}

TEST(ManyClients, ShouldCompleteEveryContinuationOfFourClients) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.ready()) << daemon.log();

  WorkloadOptions o;
  o.counts[static_cast<std::size_t>(Kind::kNoop)] = 100'000;
  o.counts[static_cast<std::size_t>(Kind::kEchoInline)] = 100'000;
  o.counts[static_cast<std::size_t>(Kind::kEchoBuffer)] = 100'000;
  o.counts[static_cast<std::size_t>(Kind::kChecksum)] = 100'000;
  // fanout (N <= 8), chain (K <= 8) and sleep (0-100 us) run 100,000 each per client too:
  // all 2.8 million take about 2 s on two cores, so nothing needs scaling down.
  o.counts[static_cast<std::size_t>(Kind::kFanout)] = 100'000;
  o.counts[static_cast<std::size_t>(Kind::kChain)] = 100'000;
  o.counts[static_cast<std::size_t>(Kind::kSleep)] = 100'000;
  o.window = 1024;
  o.batch = 128;

  constexpr int kClients = 4;
  std::vector<pid_t> children;
  for (int i = 0; i < kClients; ++i) {
    WorkloadOptions mine = o;
    mine.seed = 1000 + static_cast<std::uint64_t>(i);
    const std::string name = "load-" + std::to_string(i);
    children.push_back(fork_child(
        [&, mine, name] { return client_main(daemon.runtime_dir(), mine, name.c_str()); }));
    ASSERT_GT(children.back(), 0);
  }
  for (int i = 0; i < kClients; ++i) {
    EXPECT_EQ(wait_child(children[static_cast<std::size_t>(i)], 120s), 0) << "client " << i;
  }
  EXPECT_TRUE(daemon.alive()) << daemon.log();

  // The daemon still serves, and let go of every segment but the new client's.
  ClientOptions co;
  co.runtime_dir = daemon.runtime_dir();
  auto c = Client::connect(co);
  ASSERT_TRUE(c.ok()) << c.status();
  auto h = (*c)->submit("noop");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->wait_for(5s), Status::kOk);
}

}  // namespace
}  // namespace insideout::testing
