// Plugins beside the built-ins, in the same run (issue 8's figures):
//
//   yield_step            one continuation yielding N times on one worker: the built-in
//                         `chain` (system insideout) against a coroutine continuation of a
//                         plugin, bench.yield (insideout_coroutine). step_ns.
//   plugin_rtt_busy       round trip of one continuation at a time, both sides polling:
//                         built-in `noop` (insideout) against the plugin's bench.noop
//                         (insideout_plugin). p50 p99 p999.
//   plugin_throughput_batch64
//                         noop continuations in batches of 64, 2,048 in flight, as
//                         throughput_batch64: the same pair. tasks_per_s.
//   zstd_4clients         4 client processes, each compressing 64 KiB buffers (level 3,
//                         checksummed, one frame each) through the daemon's zstd.compress,
//                         4 in flight per client, the input copied into the segment first
//                         (insideout), against the same 4 processes each compressing with
//                         libzstd itself (libzstd_local). buffers_per_s (all clients),
//                         us_per_buffer (a client's wall time per buffer) and
//                         cpu_us_per_buffer (CPU of the clients, and of the daemon, per
//                         buffer): the cost of going through the daemon.
//
// The daemon loads the bench plugin and the zstd example plugin with --plugin-dir from a
// private copy of them.
#include <sys/stat.h>
#include <zstd.h>

#include <deque>
#include <filesystem>
#include <memory>
#include <random>
#include <thread>

#include "bench_common.h"
#include "insideout/client.hpp"
#include "insideout_daemon.h"

namespace insideout::bench {
namespace {

// The plugins copied into a private directory with the modes insideoutd wants.
class PluginDir {
 public:
  PluginDir() {
    char tmpl[] = "/tmp/insideout-bench-plugins-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) return;
    path_ = tmpl;
    ::chmod(path_.c_str(), 0755);
    ok_ = add(BENCH_PLUGIN_PATH, "bench.so");
#ifdef ZSTD_PLUGIN_PATH
    ok_ = ok_ && add(ZSTD_PLUGIN_PATH, "zstd.so");
#endif
  }
  ~PluginDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  bool ok() const { return ok_; }
  const std::string& path() const { return path_; }

 private:
  bool add(const char* from, const char* as) {
    std::error_code ec;
    const std::string to = path_ + "/" + as;
    std::filesystem::copy_file(from, to, ec);
    if (ec) std::fprintf(stderr, "bench_plugins: error: %s: %s\n", from, ec.message().c_str());
    ::chmod(to.c_str(), 0644);
    return !ec;
  }
  std::string path_;
  bool ok_ = false;
};

std::string cpu_list(unsigned n, unsigned first = 0) {
  std::string s;
  for (unsigned i = first; i < first + n; ++i)
    s += (s.empty() ? "" : ",") + std::to_string(cpu_for(int(i)));
  return s;
}

// ---- yield_step ----------------------------------------------------------------------

int yield_step(const Options& o, const PluginDir& plugins) {
  Daemon d(1, cpu_list(1, 1), "spin-then-block", {"--plugin-dir", plugins.path()});
  if (!d.ok()) return 1;
  auto c = d.connect(shm::IdleStrategy::kBlock);
  if (!c) return 1;
  const std::uint64_t steps = o.pick(50'000'000, 5'000'000, 50'000);
  auto time = [&](const char* fn, std::uint64_t n) -> double {
    const std::uint64_t t0 = now_ns();
    auto h = c->submit(fn, {}, n);
    if (!h.ok() || h->wait() != Status::kOk) {
      fail(o, (std::string(fn) + " failed").c_str());
      return -1;
    }
    return double(now_ns() - t0) / double(n);
  };
  // Warm both, then alternate so that drift hits both alike; the better of two each.
  if (time("chain", steps / 10) < 0 || time("bench.yield", steps / 10) < 0) return 1;
  double chain = 1e300, coro = 1e300;
  for (int round = 0; round < 2; ++round) {
    const double a = time("chain", steps), b = time("bench.yield", steps);
    if (a < 0 || b < 0) return 1;
    chain = std::min(chain, a);
    coro = std::min(coro, b);
  }
  emit("yield_step", "insideout", "step_ns", chain, "ns");
  emit("yield_step", "insideout_coroutine", "step_ns", coro, "ns");
  return 0;
}

// ---- noop: built-in against plugin -----------------------------------------------------

int plugin_rtt(const Options& o, const PluginDir& plugins) {
  Daemon d(1, cpu_list(1, 1), "poll", {"--plugin-dir", plugins.path()});
  if (!d.ok()) return 1;
  pin_thread(cpu_for(0));
  auto c = d.connect(shm::IdleStrategy::kPoll);
  if (!c) return 1;
  const std::uint64_t count = o.pick(200'000, 50'000, 200);
  // Alternating blocks of trips, so that both see the same machine.
  std::vector<std::uint64_t> samples[2];
  const std::uint32_t fns[2] = {*c->function_id("noop"), *c->function_id("bench.noop")};
  constexpr std::uint64_t kBlock = 1000;
  for (std::uint64_t done = 0; done < count; done += kBlock) {
    for (int which = 0; which < 2; ++which) {
      auto s = time_round_trips(std::min(kBlock, count - done), std::chrono::microseconds(0),
                                [&](std::uint64_t) {
                                  Frame* f = c->allocate_frame();
                                  f->fn = fns[which];
                                  auto h = c->submit(f);
                                  return h.ok() && h->wait() == Status::kOk;
                                });
      if (!s) return 1;
      samples[which].insert(samples[which].end(), s->begin(), s->end());
    }
  }
  emit_latency("plugin_rtt_busy", "insideout", std::move(samples[0]));
  emit_latency("plugin_rtt_busy", "insideout_plugin", std::move(samples[1]));
  return 0;
}

// Batches of 64 noops, 2,048 in flight (throughput_batch64 of insideout_bench.cc), for
// `total` continuations of function `fn`; returns ns, 0 on error.
std::uint64_t batch_run(Client& c, std::uint32_t fn, std::uint64_t total) {
  constexpr std::uint32_t kBatch = 64;
  constexpr std::uint64_t kWindow = 2048;
  std::vector<Handle> handles;
  std::vector<Frame*> frames;
  const std::uint64_t base = c.stats().completed;
  std::uint64_t submitted = 0, completed = 0;
  const std::uint64_t t0 = now_ns();
  while (completed < total) {
    while (submitted < total && submitted - completed + kBatch <= kWindow) {
      frames.resize(std::size_t(std::min<std::uint64_t>(kBatch, total - submitted)));
      frames.resize(c.allocate_frames(frames));
      if (frames.empty()) break;
      for (Frame* f : frames) f->fn = fn;
      handles.clear();
      if (!c.submit_batch(frames, &handles).ok()) return 0;
      submitted += handles.size();
      handles.clear();  // let go: the drainer frees each frame as it completes
    }
    c.poll();
    completed = c.stats().completed - base;
    if (completed < total && submitted - completed + kBatch > kWindow) {
      c.run_until([&] { return c.stats().completed - base > completed; }, std::chrono::seconds(10));
      completed = c.stats().completed - base;
    }
  }
  return now_ns() - t0;
}

int plugin_throughput(const Options& o, const PluginDir& plugins) {
  Daemon d(1, cpu_list(1, 1), "spin-then-block", {"--plugin-dir", plugins.path()});
  if (!d.ok()) return 1;
  pin_thread(cpu_for(0));
  auto c = d.connect();
  if (!c) return 1;
  const std::uint32_t fns[2] = {*c->function_id("noop"), *c->function_id("bench.noop")};
  const std::uint64_t total = o.pick(10'000'000, 1'000'000, 20'000);
  // Warm-up, then alternating halves.
  for (std::uint32_t fn : fns) {
    if (batch_run(*c, fn, total / 10) == 0) return 1;
  }
  std::uint64_t ns[2] = {0, 0};
  for (int round = 0; round < 2; ++round) {
    for (int which = 0; which < 2; ++which) {
      const std::uint64_t t = batch_run(*c, fns[which], total / 2);
      if (t == 0) return 1;
      ns[which] += t;
    }
  }
  emit_rate("plugin_throughput_batch64", "insideout", total, ns[0], true);
  emit_rate("plugin_throughput_batch64", "insideout_plugin", total, ns[1], true);
  return 0;
}

// ---- zstd_4clients ---------------------------------------------------------------------

#ifdef ZSTD_PLUGIN_PATH
constexpr int kClients = 4;
constexpr std::size_t kChunk = 64 * 1024;
constexpr int kInputs = 16;  // distinct buffers each client cycles through

struct ZstdShared {
  std::atomic<std::uint32_t> ready{0};
  std::atomic<std::uint32_t> go{0};
  std::uint64_t start_ns = 0;
  std::uint64_t end_ns[kClients] = {};
  std::uint64_t cpu_ns[kClients] = {};
  std::uint64_t out_bytes[kClients] = {};
};

std::vector<std::string> make_inputs(int seed) {
  std::mt19937_64 rng(std::uint64_t(seed) * 7919 + 1);
  std::vector<std::string> in(kInputs);
  for (auto& s : in) {
    s.reserve(kChunk);
    while (s.size() < kChunk) {  // runs of noise, of a few letters and of zeros
      const std::size_t run = 1 + rng() % 300;
      const int kind = int(rng() % 3);
      for (std::size_t i = 0; i < run && s.size() < kChunk; ++i)
        s.push_back(kind == 0 ? char(rng()) : kind == 1 ? char('a' + rng() % 4) : '\0');
    }
  }
  return in;
}

std::uint64_t self_cpu_ns() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return std::uint64_t(ts.tv_sec) * 1'000'000'000u + std::uint64_t(ts.tv_nsec);
}

void wait_for_go(ZstdShared& s) {
  s.ready.fetch_add(1, std::memory_order_release);
  spin_until([&] { return s.go.load(std::memory_order_acquire) != 0; });
}

// One client through the daemon: `n` buffers, 4 in flight.
int daemon_client(const Daemon& d, ZstdShared& s, int me, std::uint64_t n) {
  const auto inputs = make_inputs(me);
  ClientOptions co = d.client_options(shm::IdleStrategy::kSpinThenBlock);
  constexpr std::uint32_t kInFlight = 4, kBlock = 4096;
  const std::size_t slot = (ZSTD_compressBound(kChunk) + kBlock - 1) / kBlock * kBlock;
  co.segment.ring_capacity = 64;
  co.segment.frame_count = 64;
  co.segment.buffer_block_size = kBlock;
  co.segment.buffer_block_count = std::uint32_t(kInFlight * slot / kBlock);
  auto c = d.connect(co);
  if (!c) return 1;
  auto fn = c->function_id("zstd.compress");
  if (!fn.ok()) return 1;
  std::vector<std::span<std::byte>> bufs;
  for (std::uint32_t i = 0; i < kInFlight; ++i) bufs.push_back(c->allocate_buffer(slot));
  struct InFlight {
    std::span<std::byte> buf;
    Handle h;
  };
  std::deque<InFlight> q;
  std::uint64_t out = 0;
  wait_for_go(s);
  const std::uint64_t cpu0 = self_cpu_ns();
  std::uint64_t next = 0;
  while (next < n || !q.empty()) {
    while (next < n && !bufs.empty()) {
      auto b = bufs.back();
      bufs.pop_back();
      const std::string& in = inputs[next % kInputs];
      std::memcpy(b.data(), in.data(), in.size());
      Frame* f = c->allocate_frame();
      if (f == nullptr) return 1;
      f->fn = *fn;
      f->flags = 0;
      f->arg = in.size();
      f->env_off = c->offset_of(b.data());
      f->env_len = std::uint32_t(b.size());
      auto h = c->submit(f);
      if (!h.ok()) return 1;
      q.push_back({b, std::move(*h)});
      ++next;
    }
    InFlight& front = q.front();
    if (front.h.wait() != Status::kOk) return 1;
    out += front.h.result().data.size();
    front.h.reset();
    bufs.push_back(front.buf);
    q.pop_front();
  }
  s.end_ns[me] = now_ns();
  s.cpu_ns[me] = self_cpu_ns() - cpu0;
  s.out_bytes[me] = out;
  return 0;
}

// One client alone: libzstd in the process, the same parameters.
int local_client(ZstdShared& s, int me, std::uint64_t n) {
  const auto inputs = make_inputs(me);
  ZSTD_CCtx* cc = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(cc, ZSTD_c_compressionLevel, 3);
  ZSTD_CCtx_setParameter(cc, ZSTD_c_checksumFlag, 1);
  std::vector<char> dst(ZSTD_compressBound(kChunk));
  std::uint64_t out = 0;
  wait_for_go(s);
  const std::uint64_t cpu0 = self_cpu_ns();
  for (std::uint64_t i = 0; i < n; ++i) {
    const std::string& in = inputs[i % kInputs];
    const std::size_t r = ZSTD_compress2(cc, dst.data(), dst.size(), in.data(), in.size());
    if (ZSTD_isError(r)) return 1;
    out += r;
  }
  s.end_ns[me] = now_ns();
  s.cpu_ns[me] = self_cpu_ns() - cpu0;
  s.out_bytes[me] = out;
  ZSTD_freeCCtx(cc);
  return 0;
}

int zstd_clients(const Options& o, const PluginDir& plugins) {
  const std::uint64_t n = o.pick(4000, 1000, 20);  // buffers per client
  const unsigned cpus = std::max(1u, std::min(2u, std::thread::hardware_concurrency()));
  for (const bool through_daemon : {true, false}) {
    std::unique_ptr<Daemon> d;
    if (through_daemon) {
      d = std::make_unique<Daemon>(cpus, cpu_list(cpus), "spin-then-block",
                                   std::vector<std::string>{"--plugin-dir", plugins.path()});
      if (!d->ok()) return 1;
    }
    Shared<ZstdShared> s;
    pid_t kids[kClients];
    for (int i = 0; i < kClients; ++i) {
      kids[i] = spawn(-1, [&] {
        return through_daemon ? daemon_client(*d, *s, i, n) : local_client(*s, i, n);
      });
    }
    spin_until([&] { return s->ready.load(std::memory_order_acquire) == kClients; });
    const std::uint64_t daemon_cpu0 = d ? process_cpu_ns(d->pid()) : 0;
    const std::uint64_t t0 = now_ns();
    s->go.store(1, std::memory_order_release);
    bool ok = true;
    for (pid_t k : kids) ok = reap(k, std::chrono::seconds(300)) && ok;
    if (!ok) {
      fail(o, through_daemon ? "a zstd client through the daemon failed"
                             : "a zstd client with libzstd failed");
      return 1;
    }
    const std::uint64_t daemon_cpu = d ? process_cpu_ns(d->pid()) - daemon_cpu0 : 0;
    std::uint64_t end = 0, cpu = daemon_cpu, bytes = 0;
    double per_client_us = 0;
    for (int i = 0; i < kClients; ++i) {
      end = std::max(end, s->end_ns[i]);
      cpu += s->cpu_ns[i];
      bytes += s->out_bytes[i];
      per_client_us += double(s->end_ns[i] - t0) / 1e3 / double(n);
    }
    const char* sys = through_daemon ? "insideout" : "libzstd_local";
    const double buffers = double(n) * kClients;
    emit("zstd_4clients", sys, "buffers_per_s", buffers * 1e9 / double(end - t0), "buf/s");
    emit("zstd_4clients", sys, "us_per_buffer", per_client_us / kClients, "us");
    emit("zstd_4clients", sys, "cpu_us_per_buffer", double(cpu) / 1e3 / buffers, "us");
    emit("zstd_4clients", sys, "ratio_pct", 100.0 * double(bytes) / (buffers * kChunk), "pct");
  }
  return 0;
}
#endif

}  // namespace
}  // namespace insideout::bench

int main(int argc, char** argv) {
  using namespace insideout::bench;
  std::vector<std::string> scenarios = {"yield_step", "plugin_rtt_busy",
                                        "plugin_throughput_batch64"};
#ifdef ZSTD_PLUGIN_PATH
  scenarios.push_back("zstd_4clients");
#endif
  const Options o = parse_options(argc, argv, "plugins beside the built-ins", scenarios);
  PluginDir plugins;
  if (!plugins.ok()) return 1;
  int failures = 0;
  // The forked scenario first: its children must not inherit a client's threads.
#ifdef ZSTD_PLUGIN_PATH
  if (o.wants("zstd_4clients")) failures += zstd_clients(o, plugins);
#endif
  if (o.wants("yield_step")) failures += yield_step(o, plugins);
  if (o.wants("plugin_rtt_busy")) failures += plugin_rtt(o, plugins);
  if (o.wants("plugin_throughput_batch64")) failures += plugin_throughput(o, plugins);
  return failures == 0 ? 0 : 1;
}
