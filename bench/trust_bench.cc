// The trust boundary's figures (issue 7): what idle clients cost the daemon, and what one
// client's flood costs another client's round trip.
//
//   idle_clients_nN   N clients registered and idle (N = 1, 100, 1000): the daemon's CPU
//                     over a window, as % of one core, and the round trip of a `noop` that
//                     one of them submits after idling a few ms. Peer, same run: a raw
//                     futex ping-pong between two processes (the floor of a wake from
//                     sleep; its sleeping side's CPU is measured over the same window).
//   noisy_fanout      client A runs `fanout` of 10^9 (or the largest the daemon allows);
//   noisy_chain       client A keeps 1024 long `chain`s in flight; meanwhile client B
//                     submits `echo` one at a time, through shared memory (`insideout`)
//                     and the serialized path (`insideout_serial`). B alone, on the same
//                     daemon just before A starts, is the `*_alone` system.
//
// Rows with system `target` carry the targets, so that the table prints them
// beside the figures: idle CPU under 0.5% of a core at every N, B's p99 under 50 us
// while A floods. Only the daemon's command line and the public client API are used, so
// the program measures today's daemon and whatever replaces its wake path alike.
#include <sys/resource.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bench_common.h"
#include "insideout/client.hpp"
#include "insideout_daemon.h"

namespace insideout::bench {
namespace {

constexpr const char* kSystem = "insideout";
constexpr double kIdleCpuTargetPct = 0.5;
constexpr double kNoisyP99TargetUs = 50.0;
// Above the largest N, so the daemon never refuses a registration here; stated
// explicitly because the default (256 today) is below 1,000.
constexpr const char* kMaxClients = "1100";

// ---- the peer: a raw futex ping-pong between two processes ----
//
// Each word is both the message (a sequence number) and the futex it is waited on, so a
// wake cannot be lost: FUTEX_WAIT returns at once when the word no longer holds the
// value the waiter saw. Both sides block as soon as they have nothing to do.
//
// Memory ordering:
//   F1 (client: ping store, release) pairs with F2 (server: ping load, acquire), and
//   F3 (server: pong store, release) with F4 (client: pong load, acquire). They carry
//   only the sequence numbers; release/acquire keeps the example honest, not needed.
struct PingPong {
  alignas(kCacheLine) std::atomic<std::uint32_t> ping{0};
  alignas(kCacheLine) std::atomic<std::uint32_t> pong{0};
  alignas(kCacheLine) std::atomic<std::uint32_t> stop{0};
};

int pingpong_server(PingPong& p) {
  std::uint32_t seen = 0;
  for (;;) {
    std::uint32_t v;
    while ((v = p.ping.load(std::memory_order_acquire)) == seen) futex_wait(&p.ping, seen);  // F2
    if (p.stop.load(std::memory_order_relaxed) != 0) return 0;  // relaxed: ping carried it
    seen = v;
    p.pong.store(v, std::memory_order_release);  // F3: pairs with F4
    futex_wake(&p.pong);
  }
}

bool pingpong_trip(PingPong& p, std::uint32_t v) {
  p.ping.store(v, std::memory_order_release);  // F1: pairs with F2
  futex_wake(&p.ping);
  std::uint32_t got;
  while ((got = p.pong.load(std::memory_order_acquire)) != v) futex_wait(&p.pong, got);  // F4
  return true;
}

// ---- helpers ----

void raise_fd_limit() {
  // 1,000 clients hold a socket each here and a socket and a segment each in the daemon,
  // which inherits this limit.
  rlimit r{};
  if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
    r.rlim_cur = r.rlim_max;
    setrlimit(RLIMIT_NOFILE, &r);
  }
}

void sleep_for_ns(std::uint64_t ns) { std::this_thread::sleep_for(std::chrono::nanoseconds(ns)); }

std::string us(double ns) {
  char b[32];
  std::snprintf(b, sizeof(b), "%.1f us", ns / 1e3);
  return b;
}

// Emits p50 and p99 (and p999 with `p999`) of ns samples as `prefix`p50... in us.
void emit_percentiles(const std::string& scenario, const char* system, const std::string& prefix,
                      std::vector<std::uint64_t> s, bool p999) {
  std::sort(s.begin(), s.end());
  emit(scenario, system, prefix + "p50", percentile(s, 0.50) / 1e3, "us");
  emit(scenario, system, prefix + "p99", percentile(s, 0.99) / 1e3, "us");
  if (p999) emit(scenario, system, prefix + "p999", percentile(s, 0.999) / 1e3, "us");
}

double p99_of(std::vector<std::uint64_t> s) {
  std::sort(s.begin(), s.end());
  return percentile(s, 0.99);
}

// ---- idle clients ----

// A client that only registers and sits there. Small rings and arena: what is measured
// is the cost of an idle registration, and 1,000 default segments (about 1.3 MiB each)
// would only load the machine's memory.
ClientOptions idle_client_options(const Daemon& d, std::size_t i) {
  ClientOptions o;
  o.runtime_dir = d.runtime_dir();
  o.name = "idle-" + std::to_string(i);
  o.segment.ring_capacity = 64;
  o.segment.frame_count = 64;
  o.segment.buffer_block_count = 16;
  return o;
}

int idle_clients(const Options& o, const std::vector<std::size_t>& counts) {
  const std::uint64_t settle_ns = o.pick(1'000'000'000, 500'000'000, 100'000'000);
  const std::uint64_t window_ns = o.pick(2'000'000'000, 1'000'000'000, 200'000'000);
  const std::uint64_t samples = o.pick(300, 200, 20);
  const auto gap = std::chrono::milliseconds(3);  // longer than any spin: both sides sleep

  // The peer first: fork() before this process has any thread (a Client has two).
  Shared<PingPong> pp;
  const pid_t server = spawn(-1, [&] { return pingpong_server(*pp); });
  if (server < 0) {
    fail_errno(o, "fork");
    return 1;
  }
  auto stop_server = [&] {
    pp->stop.store(1, std::memory_order_relaxed);  // relaxed: published by F1 below
    pp->ping.fetch_add(1, std::memory_order_release);
    futex_wake(&pp->ping);
    return reap(server, std::chrono::seconds(5));
  };

  // The daemon as deployed: a worker per CPU, pinned, spin-then-block.
  Daemon d(0, "", "spin-then-block", {"--max-clients", kMaxClients}, /*pin_default=*/true);
  if (!d.ok()) {
    fail(o, "insideoutd did not come up");
    stop_server();
    return 1;
  }
  // The client that measures the round trip; it is one of the N.
  ClientOptions po = d.client_options();
  po.name = "probe";
  po.spin = ClientOptions{}.spin;  // the library's default, as an ordinary client
  auto probe = d.connect(po);
  if (!probe) {
    stop_server();
    return 1;
  }
  const std::uint32_t noop = *probe->function_id("noop");
  std::vector<std::unique_ptr<Client>> idle;
  int failures = 0;
  std::uint32_t seq = 0;
  for (std::size_t n : counts) {
    const std::string scenario = "idle_clients_n" + std::to_string(n);
    const std::uint64_t r0 = now_ns();
    while (idle.size() + 1 < n) {
      auto c = Client::connect(idle_client_options(d, idle.size()));
      if (!c.ok()) {
        std::fprintf(stderr, "%s: error: registering idle client %zu: %s\n", o.program.c_str(),
                     idle.size() + 2, std::string(c.status().message()).c_str());
        stop_server();
        return 1;
      }
      idle.push_back(std::move(*c));
    }
    const std::uint64_t registered_ms = (now_ns() - r0) / 1'000'000;
    sleep_for_ns(settle_ns);

    // Idle CPU: the daemon's, and the sleeping ping-pong server's, over the same window.
    const std::uint64_t d0 = process_cpu_ns(d.pid()), s0 = process_cpu_ns(server);
    const std::uint64_t t0 = now_ns();
    sleep_for_ns(window_ns);
    const std::uint64_t d1 = process_cpu_ns(d.pid()), s1 = process_cpu_ns(server);
    const double wall = double(now_ns() - t0);
    const double daemon_pct = double(d1 - d0) / wall * 100.0;
    emit(scenario, kSystem, "idle_cpu_pct", daemon_pct, "pct");
    emit(scenario, "futex_pingpong", "idle_cpu_pct", double(s1 - s0) / wall * 100.0, "pct");
    emit(scenario, "target", "idle_cpu_pct", kIdleCpuTargetPct, "pct");

    // Round trip from idle: the probe's noop, then the peer's ping, same gaps.
    auto mine = time_round_trips(samples, gap, [&](std::uint64_t) {
      Frame* f = probe->allocate_frame();
      if (f == nullptr) return false;
      f->fn = noop;
      auto h = probe->submit(f);
      return h.ok() && h->wait_for(std::chrono::seconds(5)) == Status::kOk;
    });
    if (!mine) {
      fail(o, "insideout: a noop after idling did not complete within 5 s");
      ++failures;
      break;
    }
    auto peer =
        time_round_trips(samples, gap, [&](std::uint64_t) { return pingpong_trip(*pp, ++seq); });
    const double p99 = p99_of(*mine);
    emit_percentiles(scenario, kSystem, "rtt_after_idle_", *mine, false);
    emit_percentiles(scenario, "futex_pingpong", "rtt_after_idle_", *peer, false);
    std::fprintf(stderr,
                 "%s: %s: registered in %llu ms; idle daemon %.3f%% of a core (target < %.1f%%: "
                 "%s); noop after idle p99 %s (futex ping-pong p99 %s)\n",
                 o.program.c_str(), scenario.c_str(),
                 static_cast<unsigned long long>(registered_ms), daemon_pct, kIdleCpuTargetPct,
                 daemon_pct < kIdleCpuTargetPct ? "met" : "NOT met", us(p99).c_str(),
                 us(p99_of(*peer)).c_str());
  }
  idle.clear();
  probe.reset();
  if (!stop_server()) ++failures;
  return failures;
}

// ---- noisy neighbour ----

enum class FloodKind { kFanout, kChain };

// Client A's flood, on a thread of its own with its own Client: keeps `window`
// continuations in flight (resubmitting each one that completes, so the flood outlasts
// the measurement on any machine) until stop(). Submissions fail fast: a daemon that
// pushes back on A is doing its job, and A simply tries again a millisecond later.
class Flood {
 public:
  Flood(const Daemon& d, FloodKind kind) : kind_(kind) {
    ClientOptions co = d.client_options(shm::IdleStrategy::kBlock);
    co.name = "flood";
    co.on_full = OnFull::kFailFast;
    client_ = d.connect(co);
    if (!client_) return;
    const char* fn = kind == FloodKind::kFanout ? "fanout" : "chain";
    for (const auto& f : client_->functions()) {
      if (f.name == fn) {
        fn_ = f.id;
        // fanout: 10^9 children, or as many as the daemon allows; chain: steps enough
        // to outlast any run (a step is ~10 ns), cut short by disconnecting.
        const std::uint64_t want = kind == FloodKind::kFanout ? 1'000'000'000 : 1ull << 34;
        arg_ = f.max_arg == 0 ? want : std::min(want, f.max_arg);
      }
    }
  }
  ~Flood() { stop(); }
  bool ok() const { return client_ != nullptr && fn_ != 0; }
  std::uint64_t arg() const { return arg_; }

  void start() {
    const std::size_t window = kind_ == FloodKind::kFanout ? 1 : 1024;
    thread_ = std::thread([this, window] {
      std::vector<Handle> inflight(window);
      while (!stop_.load(std::memory_order_relaxed)) {  // relaxed: a flag, joined below
        client_->poll();
        for (Handle& h : inflight) {
          if (h.valid() && !h.done()) continue;
          if (h.valid() && h.result().status != Status::kOk) {
            failed_.fetch_add(1, std::memory_order_relaxed);  // relaxed: a counter
          }
          h.reset();
          auto s = client_->submit(fn_, {}, arg_);
          if (s.ok()) {
            h = std::move(*s);
            submitted_.fetch_add(1, std::memory_order_relaxed);  // relaxed: a counter
          }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      for (Handle& h : inflight) h.reset();  // handles never outlive their client
    });
  }
  std::uint64_t submitted() const { return submitted_.load(std::memory_order_relaxed); }
  // A's continuations that completed with an error (a limit, backpressure) during the
  // flood: a daemon that refuses A's flood shows here, not as a silent non-flood.
  std::uint64_t failed() const { return failed_.load(std::memory_order_relaxed); }

  // Stops A and disconnects it: the daemon cancels its continuations at their next step
  // boundary (a fanout stops making children), so the next measurement starts clean.
  void stop() {
    stop_.store(true, std::memory_order_relaxed);
    if (thread_.joinable()) thread_.join();
    client_.reset();
  }

 private:
  FloodKind kind_;
  std::unique_ptr<Client> client_;
  std::uint32_t fn_ = 0;
  std::uint64_t arg_ = 0;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<std::uint64_t> submitted_{0};
  std::atomic<std::uint64_t> failed_{0};
};

// B's echo round trips, one at a time, 100 us apart, after three unrecorded ones: `count`
// samples, or fewer when `budget_ns` runs out (a flood may make each trip slow), going on
// to 20 unless the hard limit (30 s; 20 with --quick, 5 with --smoke, inside the
// watchdog) passes first, when it says how few it got. Each result is checked. Empty on
// error or when not one trip came back.
std::vector<std::uint64_t> echo_trips(const Options& o, Client& b, bool serial, std::uint64_t count,
                                      std::uint64_t budget_ns) {
  const std::uint64_t min_samples = std::min<std::uint64_t>(count, 20);
  const std::uint64_t hard_limit_ns = o.pick(30'000'000'000, 20'000'000'000, 5'000'000'000);
  constexpr std::array<char, 16> kEnv = {'i', 'n', 's', 'i', 'd', 'e', 'o', 'u',
                                         't', '-', 'e', 'c', 'h', 'o', '-', 'B'};
  const auto env = std::as_bytes(std::span(kEnv));
  const std::string_view env_sv(kEnv.data(), kEnv.size());
  std::vector<std::uint64_t> samples;
  samples.reserve(count);
  const std::uint64_t start = now_ns();
  auto more = [&] {
    const std::uint64_t spent = now_ns() - start;
    if (samples.size() >= count) return false;
    if (spent >= hard_limit_ns) return false;
    return spent < budget_ns || samples.size() < min_samples;
  };
  for (std::uint64_t i = 0; more(); ++i) {
    const std::uint64_t t0 = now_ns();
    bool ok;
    if (serial) {
      auto r = b.call("echo", env_sv, 0, std::chrono::milliseconds(10'000));
      ok = r.ok() && r->status == Status::kOk && r->data == env_sv;
    } else {
      auto h = b.submit("echo", env);
      ok = h.ok() && h->wait_for(std::chrono::seconds(10)) == Status::kOk &&
           h->result().value == env.size() && h->result().data.size() == env.size() &&
           std::memcmp(h->result().data.data(), env.data(), env.size()) == 0;
    }
    const std::uint64_t t1 = now_ns();
    if (!ok) {
      std::fprintf(stderr, "%s: error: B's %s echo failed or came back wrong\n", o.program.c_str(),
                   serial ? "serialized" : "shared-memory");
      return {};
    }
    if (i >= 3) samples.push_back(t1 - t0);  // the first trips warm caches and the path
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  if (samples.size() < min_samples) {
    std::fprintf(stderr, "%s: %s B's %s echo: only %zu trips in %.0f s\n", o.program.c_str(),
                 samples.empty() ? "error:" : "note:", serial ? "serialized" : "shared-memory",
                 samples.size(), double(hard_limit_ns) / 1e9);
  }
  return samples;
}

int noisy(const Options& o, FloodKind kind) {
  const std::string scenario = kind == FloodKind::kFanout ? "noisy_fanout" : "noisy_chain";
  const std::uint64_t count = o.pick(5'000, 2'000, 50);
  const std::uint64_t budget_ns = o.pick(3'000'000'000, 1'500'000'000, 200'000'000);

  // A daemon of its own per flood, so that a cancelled flood's wind-down is never
  // measured as the next one's "alone".
  Daemon d(0, "", "spin-then-block", {"--max-clients", kMaxClients}, /*pin_default=*/true);
  if (!d.ok()) {
    fail(o, "insideoutd did not come up");
    return 1;
  }
  Flood a(d, kind);
  ClientOptions bo = d.client_options();
  bo.name = "echo-B";
  bo.spin = ClientOptions{}.spin;
  auto b = d.connect(bo);
  if (!a.ok() || !b) {
    fail(o, "connecting clients A and B");
    return 1;
  }
  // B alone (A registered, idle), then B beside A's flood; each path in turn.
  auto alone_shm = echo_trips(o, *b, false, count, budget_ns);
  auto alone_serial = echo_trips(o, *b, true, count, budget_ns);
  a.start();
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the flood spreads
  auto flood_shm = echo_trips(o, *b, false, count, budget_ns);
  auto flood_serial = echo_trips(o, *b, true, count, budget_ns);
  const std::uint64_t a_submitted = a.submitted();
  const std::uint64_t a_failed = a.failed();
  a.stop();
  if (alone_shm.empty() || alone_serial.empty() || flood_shm.empty() || flood_serial.empty()) {
    return 1;
  }
  if (a_submitted == 0) {
    fail(o, "client A never got a continuation accepted: nothing flooded");
    return 1;
  }
  emit_percentiles(scenario, kSystem, "", flood_shm, true);
  emit_percentiles(scenario, "insideout_alone", "", alone_shm, true);
  emit_percentiles(scenario, "insideout_serial", "", flood_serial, true);
  emit_percentiles(scenario, "insideout_serial_alone", "", alone_serial, true);
  emit(scenario, "target", "p99", kNoisyP99TargetUs, "us");
  const double p99 = p99_of(flood_shm) / 1e3;
  std::fprintf(
      stderr,
      "%s: %s: A %s(%llu), %llu accepted, %llu failed; B's echo p99 %s beside A (%zu "
      "trips), %s alone; serialized %s beside A, %s alone; target p99 < %.0f us: %s\n",
      o.program.c_str(), scenario.c_str(), kind == FloodKind::kFanout ? "fanout" : "1024 x chain",
      static_cast<unsigned long long>(a.arg()), static_cast<unsigned long long>(a_submitted),
      static_cast<unsigned long long>(a_failed), us(p99_of(flood_shm)).c_str(), flood_shm.size(),
      us(p99_of(alone_shm)).c_str(), us(p99_of(flood_serial)).c_str(),
      us(p99_of(alone_serial)).c_str(), kNoisyP99TargetUs,
      p99 < kNoisyP99TargetUs ? "met" : "NOT met");
  return 0;
}

}  // namespace
}  // namespace insideout::bench

int main(int argc, char** argv) {
  using namespace insideout::bench;
  const std::vector<std::string> scenarios = {
      "idle_clients",    "idle_clients_n1", "idle_clients_n100", "idle_clients_n1000",
      "noisy_neighbour", "noisy_fanout",    "noisy_chain"};
  const Options o = parse_options(
      argc, argv,
      "insideout's trust boundary: idle clients' cost to the daemon (idle_clients = _n1, _n100, "
      "_n1000) and a flooding client's cost to another's round trip (noisy_neighbour = "
      "noisy_fanout, noisy_chain).",
      scenarios);
  raise_fd_limit();
  int failures = 0;
  std::vector<std::size_t> counts;
  for (std::size_t n : {1, 100, 1000}) {
    // --smoke checks that the scenario works, in seconds: 1,000 clients are the
    // integration test's (ManyClients) and the full and quick runs' business.
    if (n == 1000 && o.size == Size::kSmoke && o.scenario != "idle_clients_n1000") continue;
    if (o.wants("idle_clients") || o.wants("idle_clients_n" + std::to_string(n))) {
      counts.push_back(n);
    }
  }
  if (!counts.empty()) failures += idle_clients(o, counts);
  if (o.wants("noisy_neighbour") || o.wants("noisy_fanout")) {
    failures += noisy(o, FloodKind::kFanout);
  }
  if (o.wants("noisy_neighbour") || o.wants("noisy_chain")) {
    failures += noisy(o, FloodKind::kChain);
  }
  return failures == 0 ? 0 : 1;
}
