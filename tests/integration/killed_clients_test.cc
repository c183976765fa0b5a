// Clients SIGKILLed in the middle of their batches (long chains, fanouts and sleeps in
// flight) while well-behaved clients keep going: the daemon must carry on, lose nothing
// of the others, and unmap every dead client's segment.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <thread>
#include <vector>

#include "insideout/client.hpp"
#include "integration/workload.h"
#include "support/daemon_process.h"

namespace insideout::testing {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

std::string mapped_segment_lines(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/maps");
  std::string line, out;
  while (std::getline(in, line)) {
    if (line.find("memfd:insideout-client-") != std::string::npos) out += line + "\n";
  }
  return out;
}

constexpr int kGoodClients = 3;
constexpr int kVictims = 50;
constexpr int kVictimsAtOnce = 5;

struct Shared {
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> ok[kGoodClients]{};
};

int good_main(const std::string& dir, Shared* shared, int i) {
  ClientOptions co;
  co.runtime_dir = dir;
  co.name = "good-" + std::to_string(i);
  auto c = Client::connect(co);
  if (!c.ok()) {
    std::fprintf(stderr, "good %d: connect: %s\n", i, std::string(c.status().message()).c_str());
    return 2;
  }
  WorkloadOptions o;
  o.counts.fill(64);
  o.window = 512;
  o.batch = 64;
  o.seed = 77 + static_cast<std::uint64_t>(i);
  o.stop = [shared] { return shared->stop.load(std::memory_order_relaxed); };
  o.progress = &shared->ok[i];
  const WorkloadReport rep = run_workload(**c, o);
  if (!rep.clean() || rep.ok == 0) {
    std::fprintf(stderr, "good %d: %s\n", i, rep.summary().c_str());
    return 1;
  }
  return 0;
}

// Connects, says so on `ready_fd` after its first batch, and submits batches (long
// continuations among them) until it is killed. Exits 3 if nobody kills it in 20 s.
int victim_main(const std::string& dir, int ready_fd, int i) {
  ClientOptions co;
  co.runtime_dir = dir;
  co.name = "victim-" + std::to_string(i);
  co.on_full = OnFull::kFailFast;
  auto connected = Client::connect(co);
  if (!connected.ok()) {
    std::fprintf(stderr, "victim %d: connect: %s\n", i,
                 std::string(connected.status().message()).c_str());
    return 2;
  }
  Client& c = **connected;
  const std::uint32_t noop = c.function_id("noop").value(), sleep = c.function_id("sleep").value(),
                      chain = c.function_id("chain").value(),
                      fanout = c.function_id("fanout").value();
  std::mt19937_64 rng(static_cast<std::uint64_t>(i) * 7919);
  std::vector<Frame*> frames;
  std::vector<Handle> handles;
  std::string bytes(300, 'v');
  bool told = false;
  const auto give_up = Clock::now() + 20s;
  while (Clock::now() < give_up) {
    frames.clear();
    for (int k = 0; k < 64; ++k) {
      Frame* f = c.allocate_frame();
      if (f == nullptr) break;
      switch (rng() % 6) {
        case 0:
          f->fn = noop;
          break;
        case 1:
          f->fn = sleep, f->arg = 1'000'000 + rng() % 2'000'000'000;
          break;  // 1 ms - 2 s
        case 2:
          f->fn = sleep, f->arg = 10'000'000'000;
          break;  // 10 s
        case 3:
          f->fn = chain, f->arg = 1000 + rng() % 200'000;
          break;
        case 4:
          f->fn = fanout, f->arg = 100 + rng() % 50'000;
          break;
        default:
          f->fn = chain, f->arg = 1 + rng() % 16;
          break;
      }
      frames.push_back(f);
    }
    handles.clear();
    const absl::Status st = c.submit_batch(frames, &handles);
    for (std::size_t k = handles.size(); k < frames.size(); ++k) c.release_frame(frames[k]);
    handles.clear();  // detached: freed when their completions are drained
    (void)st;         // a full ring is fine: the next round tries again
    for (int k = 0; k < 4; ++k) {
      bytes[0] = static_cast<char>(rng());
      if (auto h = c.submit("checksum", std::as_bytes(std::span(bytes))); h.ok()) h->reset();
    }
    if (!told && !frames.empty()) {
      told = ::write(ready_fd, "R", 1) == 1;
    }
    if (c.poll() == 0 && frames.empty()) std::this_thread::sleep_for(200us);
  }
  std::fprintf(stderr, "victim %d: nobody killed me\n", i);
  return 3;
}

TEST(KilledClients, ShouldCarryOnAndUnmapEverySegmentWhenFiftyClientsAreKilledMidBatch) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  Shared* shared = map_shared<Shared>();
  ASSERT_NE(shared, nullptr);

  std::vector<pid_t> good;
  for (int i = 0; i < kGoodClients; ++i) {
    good.push_back(fork_child([&, i] { return good_main(daemon.runtime_dir(), shared, i); }));
    ASSERT_GT(good.back(), 0);
  }

  // The good clients are under way (each has results checked) before the first victim.
  for (auto until = Clock::now() + 30s; Clock::now() < until;) {
    bool all = true;
    for (int i = 0; i < kGoodClients; ++i) all &= shared->ok[i].load() > 0;
    if (all) break;
    std::this_thread::sleep_for(1ms);
  }
  for (int i = 0; i < kGoodClients; ++i)
    ASSERT_GT(shared->ok[i].load(), 0u) << "good client " << i << " never got going";

  struct Victim {
    pid_t pid;
    int fd;
    Clock::time_point started;
    std::optional<Clock::time_point> kill_at;
  };
  std::vector<Victim> live;
  std::mt19937 rng(4242);
  int spawned = 0, killed = 0;
  const auto deadline = Clock::now() + 60s;
  while ((spawned < kVictims || !live.empty()) && Clock::now() < deadline) {
    while (static_cast<int>(live.size()) < kVictimsAtOnce && spawned < kVictims) {
      int fds[2];
      ASSERT_EQ(::pipe(fds), 0);
      const int i = spawned++;
      const pid_t pid = fork_child([&, i, fds] {
        ::close(fds[0]);
        return victim_main(daemon.runtime_dir(), fds[1], i);
      });
      ::close(fds[1]);
      ASSERT_GT(pid, 0);
      live.push_back({pid, fds[0], Clock::now(), std::nullopt});
    }
    for (auto it = live.begin(); it != live.end();) {
      if (!it->kill_at) {
        pollfd p{it->fd, POLLIN, 0};
        char ch = 0;
        if (::poll(&p, 1, 0) == 1 && ::read(it->fd, &ch, 1) == 1 && ch == 'R') {
          it->kill_at = Clock::now() + std::chrono::microseconds(rng() % 30'000);
        } else if (p.revents & (POLLHUP | POLLERR) || Clock::now() - it->started > 10s) {
          ADD_FAILURE() << "victim " << it->pid << " never got its first batch in; exit "
                        << wait_child(it->pid, 1s);
          ::close(it->fd);
          it = live.erase(it);
          continue;
        }
      }
      if (it->kill_at && Clock::now() >= *it->kill_at) {
        ASSERT_EQ(::kill(it->pid, SIGKILL), 0);
        EXPECT_EQ(wait_child(it->pid, 5s), 128 + SIGKILL);
        ::close(it->fd);
        ++killed;
        it = live.erase(it);
        continue;
      }
      ++it;
    }
    std::this_thread::sleep_for(1ms);
  }
  EXPECT_EQ(killed, kVictims);
  for (auto& v : live) {  // only after a failure above
    ::kill(v.pid, SIGKILL);
    wait_child(v.pid, 5s);
    ::close(v.fd);
  }

  // The good clients were running all along; they stop now and check everything.
  shared->stop.store(true);
  for (int i = 0; i < kGoodClients; ++i) {
    EXPECT_EQ(wait_child(good[static_cast<std::size_t>(i)], 60s), 0) << "good client " << i;
  }

  ASSERT_TRUE(daemon.alive()) << daemon.log();
  ClientOptions co;
  co.runtime_dir = daemon.runtime_dir();
  co.name = "after";
  auto c = Client::connect(co);
  ASSERT_TRUE(c.ok()) << c.status();
  const std::string text(100, 'x');
  auto h = (*c)->submit("checksum", std::as_bytes(std::span(text)));
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->wait_for(5s), Status::kOk);
  EXPECT_EQ(h->result().value, XXH3_64bits(text.data(), text.size()));

  // Every dead client's segment is unmapped: only the new client's remains.
  int mapped = -1;
  for (auto until = Clock::now() + 5s; Clock::now() < until;) {
    mapped = count_mapped_segments(daemon.pid());
    if (mapped == 1) break;
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(mapped, 1) << "segments still mapped by the daemon:\n"
                       << mapped_segment_lines(daemon.pid()) << daemon.log();
}

}  // namespace
}  // namespace insideout::testing
