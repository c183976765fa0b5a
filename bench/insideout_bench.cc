// insideout itself, in the scenarios its peers run (bench_common.h), plus its own:
// in-daemon chain step cost and fanout rate by worker count, memory per continuation,
// and the billion-continuation fanout.
//
// Each cross-process scenario starts a real insideoutd (the one built beside this
// program) in a private runtime directory: one worker pinned to the second CPU, the
// client pinned to the first, as the peers' two processes are.
#include <sys/resource.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <deque>
#include <filesystem>
#include <fstream>
#include <memory>
#include <thread>

#include "bench_common.h"
#include "client_source.h"
#include "clients.h"
#include "engine.h"
#include "insideout/client.hpp"
#include "insideout_daemon.h"
#include "task.h"
#include "work_queue.h"

namespace insideout::bench {
namespace {

constexpr const char* kSystem = "insideout";
using shm::IdleStrategy;

// Appends the i-th CPU to a --cpus list.
void append_cpu(std::string& list, unsigned i) {
  if (!list.empty()) list += ',';
  list += std::to_string(cpu_for(static_cast<int>(i)));
}

std::string second_cpu() { return std::to_string(cpu_for(1)); }

// Throughput: noop continuations submitted in batches of `batch`, at most 2048 in
// flight. The zero-copy, high-rate way to use the client: handles are let go at once
// (Handle::reset), and whoever drains completions frees the frames, a batch at a time;
// ClientStats::completed counts what came back, and at the end every frame must be back
// in the arena (a lost or doubled completion would leave it short or corrupt).
// Runs `total` of them through `c`; false (after saying why) on any failure.
bool pump(const Options& o, Client& c, std::uint64_t total, std::uint32_t batch) {
  const std::uint32_t noop = *c.function_id("noop");
  constexpr std::uint64_t kWindow = 2048;
  std::vector<Handle> handles;
  handles.reserve(batch);
  std::vector<Frame*> frames;
  const std::uint64_t base = c.stats().completed;
  std::vector<Frame*> all(65536);
  all.resize(c.allocate_frames(all));
  const std::size_t free_before = all.size();
  for (Frame* f : all) c.release_frame(f);
  std::uint64_t submitted = 0, completed = 0;
  while (completed < total) {
    while (submitted < total && submitted - completed + batch <= kWindow) {
      frames.resize(static_cast<std::size_t>(std::min<std::uint64_t>(batch, total - submitted)));
      frames.resize(c.allocate_frames(frames));
      if (frames.empty()) break;
      for (Frame* f : frames) f->fn = noop;
      handles.clear();
      if (batch == 1) {
        auto h = c.submit(frames[0]);
        if (!h.ok()) return false;
        handles.push_back(std::move(*h));
      } else if (!c.submit_batch(frames, &handles).ok()) {
        return false;
      }
      submitted += handles.size();
      handles.clear();  // let go: the drainer frees each frame when it completes
    }
    c.poll();
    completed = c.stats().completed - base;
    if (completed < total && submitted - completed + batch > kWindow) {
      const std::uint64_t seen = completed;
      if (!c.run_until([&] { return c.stats().completed - base > seen; }, std::chrono::seconds(10)))
        return false;
      completed = c.stats().completed - base;
    }
  }
  // Every frame is back in the arena: none was lost or completed twice.
  all.resize(65536);
  if (c.allocate_frames(all) != free_before) {
    fail(o, "insideout: frames missing after the throughput run");
    return false;
  }
  for (Frame* f : all) c.release_frame(f);
  return true;
}

int throughput(const Options& o, std::uint32_t batch) {
  Daemon d(1, second_cpu(), "spin-then-block");
  if (!d.ok()) return 1;
  pin_thread(cpu_for(0));
  auto c = d.connect();
  if (!c) return 1;
  const std::uint64_t total = o.pick(20'000'000, 2'000'000, 20'000);
  const std::uint64_t t0 = now_ns();
  if (!pump(o, *c, total, batch)) return 1;
  const std::uint64_t t1 = now_ns();
  emit_rate("throughput_batch" + std::to_string(batch), kSystem, total, t1 - t0);
  return 0;
}

// Aggregate throughput of n client processes (throughput_clients{1,2,4,8}), each pumping
// batches of 64 noops as throughput() does, into one daemon with a worker on every
// CPU. The clients are not pinned (there may be more of them than CPUs) and block when
// their window is full. The clock runs from the gate's opening to the last client's end.
struct ClientsGate {
  std::atomic<std::uint32_t> ready{0};  // R1: release by each client, acquire by the parent
  std::atomic<std::uint32_t> go{0};     // G1: release by the parent, acquire by each client
  std::atomic<std::uint64_t> end_ns[8] = {};
};

int throughput_clients(const Options& o, unsigned n) {
  const unsigned cpus = std::max(1u, std::thread::hardware_concurrency());
  std::string list;
  for (unsigned i = 0; i < cpus; ++i) append_cpu(list, i);
  Daemon d(cpus, list, "spin-then-block");
  if (!d.ok()) return 1;
  const std::uint64_t per = o.pick(8'000'000, 800'000, 10'000) / n;
  Shared<ClientsGate> gate;
  std::vector<pid_t> kids;
  for (unsigned i = 0; i < n; ++i) {
    kids.push_back(spawn(-1, [&, i] {
      auto c = d.connect(IdleStrategy::kSpinThenBlock);
      if (!c || !pump(o, *c, 64 * 16, 64)) return 1;        // warm: frames, rings, pages
      gate->ready.fetch_add(1, std::memory_order_release);  // R1
      while (gate->go.load(std::memory_order_acquire) == 0) detail::sleep_ms(1);  // G1
      if (!pump(o, *c, per, 64)) return 1;
      gate->end_ns[i].store(now_ns(), std::memory_order_relaxed);
      return 0;
    }));
  }
  const std::uint64_t limit = now_ns() + 30'000'000'000ull;
  while (gate->ready.load(std::memory_order_acquire) < n && now_ns() < limit)  // R1
    detail::sleep_ms(1);
  const std::uint64_t t0 = now_ns();
  gate->go.store(1, std::memory_order_release);  // G1
  bool ok = true;
  for (pid_t k : kids) ok = reap(k, std::chrono::seconds(120)) && ok;
  if (!ok) {
    fail(o, "insideout: a throughput client failed");
    return 1;
  }
  std::uint64_t t1 = t0;
  for (unsigned i = 0; i < n; ++i) t1 = std::max(t1, gate->end_ns[i].load());
  emit_rate("throughput_clients" + std::to_string(n), kSystem, per * n, t1 - t0);
  return 0;
}

// Round trips of one noop: while work flows (both sides spin) and from sleep (both
// block, with a gap between trips so they really sleep).
int round_trips(const Options& o, bool sleep) {
  Daemon d(1, second_cpu(), sleep ? "block" : "poll");
  if (!d.ok()) return 1;
  pin_thread(cpu_for(0));
  auto c = d.connect(sleep ? IdleStrategy::kBlock : IdleStrategy::kPoll);
  if (!c) return 1;
  const std::uint32_t noop = *c->function_id("noop");
  const std::uint64_t count = o.pick(sleep ? 20'000 : 200'000, sleep ? 3'000 : 50'000, 200);
  auto samples =
      time_round_trips(count, std::chrono::microseconds(sleep ? 100 : 0), [&](std::uint64_t) {
        Frame* f = c->allocate_frame();
        f->fn = noop;
        auto h = c->submit(f);
        return h.ok() && h->wait() == Status::kOk;
      });
  if (!samples) return 1;
  emit_latency(sleep ? "rtt_sleep" : "rtt_busy", kSystem, std::move(*samples));
  return 0;
}

// The peers' dispatch workload in the daemon: 64 chains of empty steps, each step a yield
// (so the continuation may move to another worker).
int dispatch(const Options& o, unsigned threads) {
  std::string cpus;
  for (unsigned i = 0; i < threads; ++i) append_cpu(cpus, i);
  Daemon d(threads, cpus, "spin-then-block");
  if (!d.ok()) return 1;
  auto c = d.connect(IdleStrategy::kBlock);
  if (!c) return 1;
  constexpr std::uint32_t kChains = 64;
  const auto steps = static_cast<std::uint32_t>(o.pick(10'000'000, 2'000'000, 20'000) / kChains);
  auto run = [&](std::uint32_t s) {
    std::vector<Handle> hs;
    for (std::uint32_t i = 0; i < kChains; ++i) hs.push_back(std::move(*c->submit("chain", {}, s)));
    for (auto& h : hs) {
      if (h.wait() != Status::kOk) return false;
    }
    return true;
  };
  run(std::max(1u, steps / 10));
  const std::uint64_t t0 = now_ns();
  if (!run(steps)) return 1;
  const std::uint64_t t1 = now_ns();
  emit_rate(dispatch_scenario(threads), kSystem, std::uint64_t{kChains} * steps, t1 - t0, true);
  return 0;
}

// The peer of a chain's step: the floor of "run a step, queue what comes next" on one
// thread, a ring of 64-byte descriptors (a function pointer and its words, as a task's
// first line) popped and called in a loop, each call pushing its successor. ns per step.
struct alignas(64) Descriptor {
  bool (*fn)(Descriptor&);  // true: queue it again
  std::uint64_t w[7];
};

[[gnu::noinline]] bool trampoline_step(Descriptor& d) { return --d.w[0] != 0; }

double trampoline_ns(std::uint64_t steps) {
  constexpr std::size_t kRing = 256;  // a power of two
  std::vector<Descriptor> ring(kRing);
  std::size_t head = 0, tail = 0;
  ring[tail++ % kRing] = Descriptor{trampoline_step, {steps}};
  const std::uint64_t t0 = now_ns();
  while (head != tail) {
    Descriptor d = ring[head++ % kRing];
    // An opaque call, as a task's fn is to the worker.
    bool (*volatile fn)(Descriptor&) = d.fn;
    if (fn(d)) ring[tail++ % kRing] = d;
  }
  return double(now_ns() - t0) / double(steps);
}

// In-daemon figures by worker count: one chain (its step cost, ns, beside the
// trampoline's on this machine in the same run) and one fanout (children per second).
int in_daemon(const Options& o, unsigned workers, bool billion) {
  std::string cpus;
  for (unsigned i = 0; i < workers; ++i) append_cpu(cpus, i);
  Daemon d(workers, cpus, "spin-then-block");
  if (!d.ok()) return 1;
  auto c = d.connect(IdleStrategy::kBlock);
  if (!c) return 1;
  const std::string w = std::to_string(workers);
  if (billion) {
    const std::uint64_t n = 1'000'000'000;
    const std::uint64_t t0 = now_ns();
    auto h = c->submit("fanout", {}, n);
    if (!h.ok() || h->wait() != Status::kOk) return 1;
    const std::uint64_t t1 = now_ns();
    emit("billion_workers" + w, kSystem, "seconds", double(t1 - t0) / 1e9, "s");
    emit_rate("billion_workers" + w, kSystem, n, t1 - t0, true);
    emit("billion_workers" + w, kSystem, "per_thread_rate",
         double(n) * 1e9 / double(t1 - t0) / workers, "task/s");
    emit("billion_workers" + w, kSystem, "daemon_peak_rss",
         double(d.peak_rss()) / (1024.0 * 1024.0), "MiB");
    return 0;
  }
  const std::uint64_t steps = o.pick(100'000'000, 10'000'000, 100'000);
  std::uint64_t t0 = now_ns();
  auto h = c->submit("chain", {}, steps);
  if (!h.ok() || h->wait() != Status::kOk) return 1;
  std::uint64_t t1 = now_ns();
  emit("chain_step_workers" + w, kSystem, "step_ns", double(t1 - t0) / double(steps), "ns");
  pin_thread(cpu_for(0));
  emit("chain_step_workers" + w, "trampoline", "step_ns", trampoline_ns(steps), "ns");
  const std::uint64_t children = o.pick(100'000'000, 10'000'000, 100'000);
  t0 = now_ns();
  auto f = c->submit("fanout", {}, children);
  if (!f.ok() || f->wait() != Status::kOk) return 1;
  t1 = now_ns();
  emit_rate("fanout_workers" + w, kSystem, children, t1 - t0, true);
  return 0;
}

std::uint64_t rss_bytes() {
  std::ifstream in("/proc/self/statm");
  std::uint64_t size = 0, resident = 0;
  in >> size >> resident;
  return resident * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
}

// Memory of queued continuations: the daemon's own structures (its task pool and a
// worker's run queue with its private deque), filled in this process and measured by RSS.
int memory(const Options& o) {
  emit("memory", kSystem, "bytes_per_empty_continuation", sizeof(engine::Task), "B");
  for (std::uint64_t n : {o.pick(10'000'000, 10'000'000, 100'000), o.pick(100'000'000, 0, 0)}) {
    if (n == 0) continue;
    const std::uint64_t before = rss_bytes();
    {
      engine::TaskPool pool;
      engine::TaskPool::Cache cache;
      engine::WorkQueue queue(1024);
      std::deque<engine::Task*> local;  // as Worker::local
      for (std::uint64_t i = 0; i < n; ++i) {
        engine::Task* t = pool.allocate(cache);
        t->fn = nullptr;
        t->w0 = i;
        if (!queue.push(t)) local.push_back(t);
      }
      const std::uint64_t after = rss_bytes();
      const std::string scenario = "memory_queued_" + std::to_string(n / 1'000'000) + "M";
      emit(scenario, kSystem, "rss_delta", double(after - before) / (1024.0 * 1024.0), "MiB");
      emit(scenario, kSystem, "bytes_per_queued", double(after - before) / double(n), "B");
      emit(scenario, kSystem, "queue_bytes_per_item",
           double(after - before) / double(n) - double(sizeof(engine::Task)), "B");
    }
  }
  return 0;
}

// ---- autosize_burst: a pool that sizes itself beside a fixed one ----------------------

// The daemon's workers (threads named io-wN; not io-watch or io-autosize), from /proc:
// a thread appears when resize() starts it and is gone once it was joined.
unsigned worker_threads(pid_t pid) {
  unsigned n = 0;
  std::error_code ec;
  for (const auto& e :
       std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec)) {
    std::ifstream in(e.path() / "comm");
    std::string name;
    std::getline(in, name);
    if (name.size() > 4 && name.rfind("io-w", 0) == 0 && std::isdigit(name[4])) ++n;
  }
  return n;
}

// What a grow (1 -> 2 workers) and a shrink (2 -> 1) cost the thread that resizes: the
// engine's Scheduler::resize(), in this process, with no work.
int resize_cost(const Options& o) {
  engine::FunctionRegistry registry;
  daemon::register_builtins(registry);
  daemon::ClientTable table(8);
  daemon::SchedulerConfig cfg;
  cfg.workers = 1;
  cfg.idle = IdleStrategy::kBlock;
  daemon::Scheduler s(cfg, registry, std::make_unique<daemon::ClientSource>(table, registry, 0));
  s.start();
  std::vector<std::uint64_t> grow, shrink;
  const std::uint64_t n = o.pick(2000, 300, 20);
  for (std::uint64_t i = 0; i < n; ++i) {
    const std::uint64_t t0 = now_ns();
    s.resize(2);
    const std::uint64_t t1 = now_ns();
    s.resize(1);
    const std::uint64_t t2 = now_ns();
    grow.push_back(t1 - t0);
    shrink.push_back(t2 - t1);
  }
  s.drain(std::chrono::seconds(1));
  s.stop();
  std::sort(grow.begin(), grow.end());
  std::sort(shrink.begin(), shrink.end());
  emit("autosize_burst", "insideout_autosize", "grow_cost_p50", percentile(grow, 0.5) / 1e3, "us");
  emit("autosize_burst", "insideout_autosize", "shrink_cost_p50", percentile(shrink, 0.5) / 1e3,
       "us");
  return 0;
}

// Bursts of `chain` continuations (each about 1 ms of steps) 150 ms apart, from one client
// that sleeps while it waits: the completion latency of each continuation (submit to
// seen done) in a pool of N pinned workers (`insideout_fixed`) and in one that sizes
// itself within 1..N (`insideout_autosize`, started at N and left to shrink first). For
// the latter, from the worker threads the daemon has (sampled every 200 us): how long a
// burst waited for its first extra worker and for all N, and how long after a burst the
// pool was back to 1 (`shrink_ms`; the gap, 150 ms, when it was not). `grown_bursts`:
// the bursts that met one worker and got more.
int autosize_burst(const Options& o, bool autosize) {
  const unsigned n = std::max(2u, std::min(4u, std::thread::hardware_concurrency()));
  std::string cpus;
  for (unsigned i = 0; i < n; ++i) append_cpu(cpus, i);
  std::vector<std::string> extra;
  if (autosize) extra = {"--autosize", "1.." + std::to_string(n)};
  Daemon d(n, cpus, "spin-then-block", extra);
  if (!d.ok()) return 1;
  auto c = d.connect(IdleStrategy::kBlock);
  if (!c) return 1;
  const char* system = autosize ? "insideout_autosize" : "insideout_fixed";
  const auto chain = *c->function_id("chain");
  // About 1 ms of steps per continuation (chain_step_workers1 is some 25-50 ns a step).
  const std::uint64_t steps = 30'000;
  const unsigned burst = 8 * n;
  // Longer than the shrink hold's back-off (a grow within two holds of a shrink doubles
  // it), so that each burst meets a pool of one worker: what is measured is the reaction
  // from 1, not a pool that (rightly) kept its workers between close bursts.
  const auto gap = std::chrono::milliseconds(150);
  const std::uint64_t rounds = o.pick(40, 12, 3);
  auto idle_until_one = [&](std::chrono::milliseconds limit) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
      if (worker_threads(d.pid()) == 1) return true;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    return false;
  };
  if (autosize) {
    // Idle from the start: the first shrink to 1 is the idle reaction.
    const std::uint64_t t0 = now_ns();
    if (!idle_until_one(std::chrono::seconds(5))) {
      fail(o, "insideout_autosize: the idle pool did not shrink to 1 within 5 s");
      return 1;
    }
    emit("autosize_burst", system, "idle_shrink_to_1_ms", double(now_ns() - t0) / 1e6, "ms");
    std::this_thread::sleep_for(gap);  // as between bursts
  }
  std::vector<std::uint64_t> latency, grow, full, shrink, makespan;
  double worker_sum = 0;
  std::uint64_t worker_samples = 0;
  for (std::uint64_t r = 0; r < rounds; ++r) {
    std::vector<Handle> hs;
    std::vector<std::uint64_t> start;
    const bool from_one = worker_threads(d.pid()) == 1;
    const std::uint64_t t0 = now_ns();
    for (unsigned i = 0; i < burst; ++i) {
      auto h = c->submit(chain, {}, steps);
      if (!h.ok()) return 1;
      start.push_back(now_ns());
      hs.push_back(std::move(*h));
    }
    std::uint64_t t_grow = 0, t_full = 0, last_done = 0;
    std::vector<bool> seen(hs.size(), false);
    std::size_t left = hs.size();
    const std::uint64_t limit = t0 + 30'000'000'000ull;
    while (left > 0 && now_ns() < limit) {
      c->poll();
      const std::uint64_t now = now_ns();
      for (std::size_t i = 0; i < hs.size(); ++i) {
        if (seen[i] || !hs[i].done()) continue;
        seen[i] = true;
        --left;
        latency.push_back(now - start[i]);
        last_done = now;
      }
      const unsigned w = worker_threads(d.pid());
      worker_sum += w;
      ++worker_samples;
      if (t_grow == 0 && w > 1) t_grow = now;
      if (t_full == 0 && w >= n) t_full = now;
      if (left > 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    if (left > 0) {
      fail(o, (std::string(system) + ": a burst did not complete within 30 s").c_str());
      return 1;
    }
    for (auto& h : hs) {
      if (h.wait() != Status::kOk) return 1;
    }
    makespan.push_back(last_done - t0);
    if (autosize) {
      if (from_one && t_grow != 0) grow.push_back(t_grow - t0);
      if (from_one && t_full != 0) full.push_back(t_full - t0);
      idle_until_one(gap);
      shrink.push_back(now_ns() - last_done);
      const auto rest = gap - std::chrono::nanoseconds(now_ns() - last_done);
      if (rest.count() > 0) std::this_thread::sleep_for(rest);
    } else {
      std::this_thread::sleep_for(gap);
    }
  }
  std::sort(latency.begin(), latency.end());
  emit("autosize_burst", system, "latency_p50", percentile(latency, 0.5) / 1e3, "us");
  emit("autosize_burst", system, "latency_p99", percentile(latency, 0.99) / 1e3, "us");
  std::sort(makespan.begin(), makespan.end());
  emit("autosize_burst", system, "burst_ms_p50", percentile(makespan, 0.5) / 1e6, "ms");
  emit("autosize_burst", system, "workers_while_busy", worker_sum / double(worker_samples),
       "workers");
  if (autosize) {
    for (auto* v : {&grow, &full, &shrink}) std::sort(v->begin(), v->end());
    emit("autosize_burst", system, "grow_ms_p50", percentile(grow, 0.5) / 1e6, "ms");
    emit("autosize_burst", system, "grow_to_max_ms_p50", percentile(full, 0.5) / 1e6, "ms");
    emit("autosize_burst", system, "shrink_to_1_ms_p50", percentile(shrink, 0.5) / 1e6, "ms");
    emit("autosize_burst", system, "grown_bursts", double(grow.size()), "bursts");
  }
  return 0;
}

}  // namespace
}  // namespace insideout::bench

int main(int argc, char** argv) {
  using namespace insideout::bench;
  std::vector<std::string> scenarios = {"throughput_batch1",
                                        "throughput_batch8",
                                        "throughput_batch64",
                                        "throughput_batch512",
                                        "throughput_clients1",
                                        "throughput_clients2",
                                        "throughput_clients4",
                                        "throughput_clients8",
                                        "rtt_busy",
                                        "rtt_sleep",
                                        "memory",
                                        "autosize_burst",
                                        "billion"};
  for (const auto& s : dispatch_scenarios()) scenarios.push_back(s);
  for (unsigned t : dispatch_thread_counts()) {
    scenarios.push_back("chain_step_workers" + std::to_string(t));
    scenarios.push_back("fanout_workers" + std::to_string(t));
  }
  const Options o =
      parse_options(argc, argv, "insideout: continuations through insideoutd", scenarios);
  int failures = 0;
  for (std::uint32_t b : {1u, 8u, 64u, 512u}) {
    if (o.wants("throughput_batch" + std::to_string(b))) failures += throughput(o, b);
  }
  for (unsigned n : {1u, 2u, 4u, 8u}) {
    if (o.wants("throughput_clients" + std::to_string(n))) failures += throughput_clients(o, n);
  }
  if (o.wants("rtt_busy")) failures += round_trips(o, false);
  if (o.wants("rtt_sleep")) failures += round_trips(o, true);
  for (unsigned t : dispatch_thread_counts()) {
    if (o.wants(dispatch_scenario(t))) failures += dispatch(o, t);
    const std::string w = std::to_string(t);
    if (o.wants("chain_step_workers" + w) || o.wants("fanout_workers" + w))
      failures += in_daemon(o, t, false);
  }
  if (o.wants("memory")) failures += memory(o);
  if (o.wants("autosize_burst")) {
    // Alternated, so that drift hits both alike.
    failures += autosize_burst(o, false);
    failures += autosize_burst(o, true);
    failures += resize_cost(o);
  }
  // The billion runs only when asked for by name, or in a full run.
  if (o.scenario == "billion" || (o.scenario == "all" && o.size == Size::kFull)) {
    failures += in_daemon(o, std::max(1u, std::thread::hardware_concurrency()), true);
  }
  return failures == 0 ? 0 : 1;
}
