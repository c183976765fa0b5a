// insideout itself, in the scenarios its peers run (bench_common.h), plus its own:
// in-daemon chain step cost and fanout rate by worker count, memory per continuation,
// and the billion-continuation fanout.
//
// Each cross-process scenario starts a real insideoutd (the one built beside this
// program) in a private runtime directory: one worker pinned to the second CPU, the
// client pinned to the first, as the peers' two processes are.
#include <sys/resource.h>
#include <sys/stat.h>

#include <deque>
#include <filesystem>
#include <fstream>
#include <memory>
#include <thread>

#include "bench_common.h"
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

// In-daemon figures by worker count: one chain (its step cost, ns) and one fanout
// (children per second).
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
  // The billion runs only when asked for by name, or in a full run.
  if (o.scenario == "billion" || (o.scenario == "all" && o.size == Size::kFull)) {
    failures += in_daemon(o, std::max(1u, std::thread::hardware_concurrency()), true);
  }
  return failures == 0 ? 0 : 1;
}
