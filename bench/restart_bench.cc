// A daemon restart under load: 8 clients (Client objects, one thread each) submit echo
// continuations in windows of 32 and wait for each, while insideoutd is stopped (SIGTERM,
// as `systemctl restart` does: scenario restart_term) or killed (SIGKILL, a crash:
// restart_kill) and a new one started on the same runtime directory at once.
//
// Rows: how long the restart took (restart_gap: stop sent -> new daemon answering), how
// long submissions waited (max_submit_wait: the longest submit() call; submits_over_1ms;
// max_outcome_wait: the longest from submit() to the handle's outcome;
// slowest_client_back: stop sent -> the last client's first result from the new
// daemon), how many were refused (submit() failed), and the outcomes: ok, daemon lost
// (accepted by the old daemon), resubmitted (never accepted, run by the new one), and
// exactly_once = 1 when every continuation submitted had exactly one outcome and every
// echo came back with its own bytes. Nothing here asserts a timing.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bench_common.h"
#include "insideout/client.hpp"
#include "insideout_daemon.h"

namespace insideout::bench {
namespace {

constexpr int kClients = 8;
constexpr int kWindow = 32;

pid_t start_daemon(const std::string& dir) {
  return spawn(-1, [&] {
    std::vector<std::string> args = {daemon_path(), "--runtime-dir", dir,         "--log-level",
                                     "warn",        "--no-pin",      "--workers", "2"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    return 127;
  });
}

// Until a client can register with the daemon on `dir` (bounded: 10 s).
bool wait_ready(const std::string& dir) {
  ClientOptions o;
  o.runtime_dir = dir;
  o.want_segment = false;
  o.reconnect = false;
  o.wait = std::chrono::seconds(10);
  return Client::connect(o).ok();
}

struct Tally {
  std::uint64_t submitted = 0, refused = 0, ok = 0, lost = 0, other = 0, wrong = 0;
  std::uint64_t waited_over_1ms = 0;
  std::uint64_t max_submit_ns = 0;
  std::uint64_t max_outcome_ns = 0;          // submit() called -> its handle's outcome
  std::uint64_t first_ok_after_stop_ns = 0;  // from the new daemon, since the stop; 0: none
};

void run(const Options& o, const char* scenario, int sig) {
  char tmpl[] = "/tmp/insideout-restart-XXXXXX";
  const std::string dir = ::mkdtemp(tmpl);
  pid_t daemon = start_daemon(dir);
  if (!wait_ready(dir)) return fail(o, "the first insideoutd did not start");
  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < kClients; ++i) {
    ClientOptions co;
    co.runtime_dir = dir;
    co.name = "restart-bench";
    co.reconnect_wait = std::chrono::seconds(10);
    auto c = Client::connect(co);
    if (!c.ok()) return fail(o, std::string(c.status().message()).c_str());
    clients.push_back(std::move(*c));
  }
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> stopped_at{0};  // now_ns() when the signal went
  std::vector<Tally> tallies(kClients);
  std::vector<std::thread> threads;
  for (int t = 0; t < kClients; ++t) {
    threads.emplace_back([&, t] {
      Tally& y = tallies[t];
      Client& c = *clients[t];
      const std::uint64_t gen0 = c.generation();
      std::uint64_t n = 0;
      struct Item {
        Handle h;
        std::uint64_t tag;
        std::uint64_t t0;
      };
      std::vector<Item> window;
      while (!stop.load(std::memory_order_relaxed)) {
        window.clear();
        for (int i = 0; i < kWindow; ++i, ++n) {
          const std::uint64_t tag = (std::uint64_t(t) << 48) | n;
          const std::uint64_t t0 = now_ns();
          auto h = c.submit("echo", std::as_bytes(std::span(&tag, 1)));
          const std::uint64_t took = now_ns() - t0;
          y.max_submit_ns = std::max(y.max_submit_ns, took);
          if (took > 1'000'000) ++y.waited_over_1ms;
          if (!h.ok()) {
            ++y.refused;
            continue;
          }
          ++y.submitted;
          window.push_back({std::move(*h), tag, t0});
        }
        for (auto& [h, tag, t0] : window) {
          const auto st = h.wait_for(std::chrono::seconds(30));
          y.max_outcome_ns = std::max(y.max_outcome_ns, now_ns() - t0);
          if (st == Status::kOk) {
            ++y.ok;
            const Result r = h.result();
            std::uint64_t back = 0;
            if (r.data.size() == sizeof(back)) std::memcpy(&back, r.data.data(), sizeof(back));
            if (back != tag) ++y.wrong;
            // The first result from the new daemon.
            const std::uint64_t s = stopped_at.load(std::memory_order_relaxed);
            if (s != 0 && y.first_ok_after_stop_ns == 0 && c.generation() != gen0) {
              y.first_ok_after_stop_ns = now_ns() - s;
            }
          } else if (st == Status::kDaemonLost) {
            ++y.lost;
          } else {
            ++y.other;
          }
        }
      }
    });
  }
  const int run_ms = int(o.pick(1000, 500, 200));
  detail::sleep_ms(run_ms);
  const std::uint64_t t_stop = now_ns();
  stopped_at.store(t_stop, std::memory_order_relaxed);
  ::kill(daemon, sig);
  reap(daemon, std::chrono::seconds(15));
  daemon = start_daemon(dir);
  const bool back = wait_ready(dir);
  const std::uint64_t t_ready = now_ns();
  detail::sleep_ms(run_ms);
  stop.store(true);
  for (auto& th : threads) th.join();
  Tally sum;
  for (const auto& y : tallies) {
    sum.submitted += y.submitted;
    sum.refused += y.refused;
    sum.ok += y.ok;
    sum.lost += y.lost;
    sum.other += y.other;
    sum.wrong += y.wrong;
    sum.waited_over_1ms += y.waited_over_1ms;
    sum.max_submit_ns = std::max(sum.max_submit_ns, y.max_submit_ns);
    sum.max_outcome_ns = std::max(sum.max_outcome_ns, y.max_outcome_ns);
    sum.first_ok_after_stop_ns = std::max(sum.first_ok_after_stop_ns, y.first_ok_after_stop_ns);
  }
  std::uint64_t reconnects = 0, resubmitted = 0, lost_by_client = 0;
  for (auto& c : clients) {
    const ClientStats s = c->stats();
    reconnects += s.reconnects;
    resubmitted += s.resubmitted;
    lost_by_client += s.lost;
  }
  clients.clear();
  ::kill(daemon, SIGTERM);
  reap(daemon, std::chrono::seconds(15));
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  if (!back) return fail(o, "the second insideoutd did not start");
  const bool exactly_once = sum.ok + sum.lost + sum.other == sum.submitted && sum.wrong == 0 &&
                            sum.other == 0 && lost_by_client == sum.lost;
  emit(scenario, "insideout", "restart_gap", double(t_ready - t_stop) / 1e6, "ms");
  emit(scenario, "insideout", "max_submit_wait", double(sum.max_submit_ns) / 1e6, "ms");
  emit(scenario, "insideout", "max_outcome_wait", double(sum.max_outcome_ns) / 1e6, "ms");
  emit(scenario, "insideout", "slowest_client_back", double(sum.first_ok_after_stop_ns) / 1e6,
       "ms");
  emit(scenario, "insideout", "submits_over_1ms", double(sum.waited_over_1ms), "count");
  emit(scenario, "insideout", "refused", double(sum.refused), "count");
  emit(scenario, "insideout", "submitted", double(sum.submitted), "count");
  emit(scenario, "insideout", "ok", double(sum.ok), "count");
  emit(scenario, "insideout", "daemon_lost", double(sum.lost), "count");
  emit(scenario, "insideout", "resubmitted", double(resubmitted), "count");
  emit(scenario, "insideout", "reconnects", double(reconnects), "count");
  emit(scenario, "insideout", "exactly_once", exactly_once ? 1.0 : 0.0, "bool");
  if (!exactly_once || reconnects != kClients) {
    fail(o, (std::string(scenario) + ": a continuation without exactly one outcome, or a client "
                                     "that did not reconnect")
                .c_str());
  }
}

}  // namespace
}  // namespace insideout::bench

int main(int argc, char** argv) {
  using namespace insideout::bench;
  const Options o = parse_options(
      argc, argv,
      "A restart of insideoutd with 8 clients submitting: how long submissions waited or were "
      "refused, and that every continuation had exactly one outcome.",
      {"restart_term", "restart_kill"});
  if (o.wants("restart_term")) run(o, "restart_term", SIGTERM);
  if (o.wants("restart_kill")) run(o, "restart_kill", SIGKILL);
  return 0;
}
