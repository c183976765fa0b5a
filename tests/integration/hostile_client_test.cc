// Clients are not trusted: one that scribbles random bytes over its whole segment while
// it submits, and frames that are wrong in every way the daemon checks. Each bad
// continuation fails alone with the right Status and ErrorDetail; the daemon and every
// other client carry on.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>
#include <thread>
#include <vector>

#include "insideout/client.hpp"
#include "insideout/shm/futex.h"
#include "insideout/shm/layout.h"
#include "insideout/shm/ring.h"
#include "integration/control_support.h"
#include "integration/workload.h"
#include "support/daemon_process.h"

namespace insideout::testing {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using shm::ring_detail::make_word;

// The geometry the daemon lays out for a default request (a client knows what it asked).
shm::SegmentGeometry default_geometry() {
  shm::SegmentGeometry g{};
  EXPECT_TRUE(shm::SegmentGeometry::compute(shm::SegmentRequest{}, &g));
  return g;
}

std::unique_ptr<Client> connect_or_die(const std::string& dir, const std::string& name) {
  ClientOptions co;
  co.runtime_dir = dir;
  co.name = name;
  auto c = Client::connect(co);
  if (!c.ok()) {
    std::fprintf(stderr, "%s: connect: %s\n", name.c_str(),
                 std::string(c.status().message()).c_str());
    return nullptr;
  }
  return std::move(*c);
}

// A well-behaved client that checks every result until told to stop.
int good_main(const std::string& dir, std::atomic<bool>* stop,
              std::atomic<std::uint64_t>* progress) {
  auto c = connect_or_die(dir, "good");
  if (!c) return 2;
  WorkloadOptions o;
  o.counts.fill(64);
  o.window = 512;
  o.batch = 64;
  o.seed = 5;
  o.stop = [stop] { return stop->load(std::memory_order_relaxed); };
  o.progress = progress;
  const WorkloadReport rep = run_workload(*c, o);
  if (!rep.clean() || rep.ok == 0) {
    std::fprintf(stderr, "good: %s\n", rep.summary().c_str());
    return 1;
  }
  return 0;
}

// Connects again and again for about `duration`; each time it submits a batch through
// the library, then, round after round, overwrites its whole segment with random bytes
// (rings, headers, doorbells, counters: nothing is repaired for the daemon), publishes
// crafted and random offsets at the daemon's submit position (frames half valid, half
// garbage), rings its bell, and scribbles over frames while the daemon reads them. A
// daemon that finds its completion ring unusable disconnects it; it connects again.
struct AttackStats {
  std::atomic<std::uint64_t> rounds{0};
  std::atomic<std::uint64_t> disconnected{0};  // connections the daemon failed and closed
};

int attacker_main(const std::string& dir, std::chrono::milliseconds duration, AttackStats* stats) {
  std::mt19937_64 rng(2024);
  const shm::SegmentGeometry g = default_geometry();
  const std::uint32_t cap = g.ring_capacity;
  const auto end = Clock::now() + duration;
  while (Clock::now() < end) {
    auto c = connect_or_die(dir, "attacker");
    if (!c) return 2;
    char* base = static_cast<char*>(c->segment_base());
    const std::uint32_t fns[] = {c->function_id("noop").value(), c->function_id("sleep").value(),
                                 c->function_id("chain").value(), c->function_id("echo").value()};
    {
      // An honest batch first, left in flight.
      std::vector<Frame*> frames;
      for (int k = 0; k < 256; ++k) {
        Frame* f = c->allocate_frame();
        if (f == nullptr) break;
        f->fn = fns[k % 4];
        f->arg = k % 4 == 1 ? 1'000'000 : (k % 4 == 2 ? 100 : 0);
        frames.push_back(f);
      }
      std::vector<Handle> handles;
      (void)c->submit_batch(frames, &handles);
      // Handles are let go (no frame is touched: nothing was drained).
    }
    shm::RingView sub(base + g.submit_ring_off, cap);
    std::uint64_t pos = sub.header()->tail.load();  // where the daemon reads next
    for (int it = 0; it < 16 && Clock::now() < end && !c->daemon_lost(); ++it) {
      // Let the daemon take what was published (bounded), so that the offsets published
      // next lie at its position: the attack is on what it then reads, not a lost race.
      for (auto until = Clock::now() + 3ms; Clock::now() < until;) {
        if (sub.header()->head.load(std::memory_order_acquire) == pos) break;
        std::this_thread::sleep_for(50us);
      }
      // Random bytes over everything.
      for (std::uint64_t off = 0; off + 8 <= g.size; off += 8) {
        const std::uint64_t v = rng();
        std::memcpy(base + off, &v, 8);
      }
      // Publish 48 offsets: a quarter random, the rest frames with crafted fields.
      for (int k = 0; k < 48; ++k) {
        std::uint32_t value = static_cast<std::uint32_t>(rng());
        if (rng() % 4 != 0) {
          value = g.frames_off + static_cast<std::uint32_t>(rng() % g.frame_count) * sizeof(Frame);
          auto* f = reinterpret_cast<Frame*>(base + value);
          const std::uint16_t flag_choices[] = {0, shm::kFrameEnvInline, shm::kFrameResultInline,
                                                0x8000, static_cast<std::uint16_t>(rng())};
          f->fn = static_cast<std::uint32_t>(rng() % 9);
          f->flags = flag_choices[rng() % 5];
          const std::uint32_t off_choices[] = {
              static_cast<std::uint32_t>(rng()),
              g.buffers_off +
                  static_cast<std::uint32_t>(rng() % (g.buffer_block_size * g.buffer_block_count)),
              0};
          f->env_off = off_choices[rng() % 3];
          const std::uint32_t len_choices[] = {
              static_cast<std::uint32_t>(rng() % 17), static_cast<std::uint32_t>(rng() % 64),
              static_cast<std::uint32_t>(rng() % 8192), static_cast<std::uint32_t>(rng())};
          f->env_len = len_choices[rng() % 4];
          f->arg = rng() % 2 == 0 ? rng() % 100 : rng();
        }
        // P1 in ring.h: the frame's bytes are published with the slot.
        sub.slot(pos).store(make_word(pos + 1, value), std::memory_order_release);
        ++pos;
      }
      c->ring_bell();
      // Scribble over frames while the daemon reads them.
      for (auto until = Clock::now() + 1ms; Clock::now() < until;) {
        const std::uint32_t off =
            g.frames_off + static_cast<std::uint32_t>(rng() % g.frame_count) * sizeof(Frame);
        const std::uint64_t v = rng();
        std::memcpy(base + off + (rng() % 7) * 8, &v, 8);
      }
      std::this_thread::sleep_for(1ms);
    }
    // The daemon fails a client whose completion ring it cannot use: give it a moment.
    for (auto until = Clock::now() + 2s; Clock::now() < until && !c->daemon_lost();)
      std::this_thread::sleep_for(1ms);
    if (c->daemon_lost()) stats->disconnected.fetch_add(1, std::memory_order_relaxed);
    stats->rounds.fetch_add(1, std::memory_order_relaxed);
  }
  return 0;
}

// Seconds of CPU (user + system) the process has used, from /proc/<pid>/stat.
double cpu_seconds(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto close = text.rfind(')');
  if (close == std::string::npos) return -1;
  std::istringstream fields(text.substr(close + 2));
  std::string f;
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && fields >> f; ++i) {
    if (i == 14) utime = std::stoull(f);
    if (i == 15) stime = std::stoull(f);
  }
  return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// The share of one core the process uses over `window`.
double cpu_share(pid_t pid, std::chrono::milliseconds window) {
  const double before = cpu_seconds(pid);
  const auto t0 = Clock::now();
  std::this_thread::sleep_for(window);
  const double after = cpu_seconds(pid);
  return (after - before) / std::chrono::duration<double>(Clock::now() - t0).count();
}

// An echo over the serialized path from a fresh client answers within `bound`.
::testing::AssertionResult serves_echo(const std::string& dir, std::chrono::milliseconds bound) {
  ClientOptions co;
  co.runtime_dir = dir;
  co.name = "bystander";
  co.want_segment = false;
  auto c = Client::connect(co);
  if (!c.ok()) return ::testing::AssertionFailure() << "connect: " << c.status();
  auto r = (*c)->call("echo", "still here", 0, bound);
  if (!r.ok()) return ::testing::AssertionFailure() << "echo: " << r.status();
  if (r->status != Status::kOk) return ::testing::AssertionFailure() << "echo: " << r->error;
  return ::testing::AssertionSuccess();
}

TEST(HostileClient, ShouldCarryOnWhileAClientOverwritesItsSegmentWithRandomBytes) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  struct Shared {
    std::atomic<bool> stop{false};
    std::atomic<std::uint64_t> progress{0};
    AttackStats attack;
  };
  Shared* shared = map_shared<Shared>();
  ASSERT_NE(shared, nullptr);
  const pid_t good =
      fork_child([&] { return good_main(daemon.runtime_dir(), &shared->stop, &shared->progress); });
  ASSERT_GT(good, 0);
  const pid_t attacker =
      fork_child([&] { return attacker_main(daemon.runtime_dir(), 1000ms, &shared->attack); });
  ASSERT_GT(attacker, 0);

  EXPECT_EQ(wait_child(attacker, 30s), 0);
  EXPECT_GT(shared->attack.rounds.load(), 1u)
      << "the attacker should have reconnected and attacked again";
  EXPECT_GT(shared->attack.disconnected.load(), 0u)
      << "a client that forged its completion ring should have been failed and disconnected";
  const std::uint64_t during = shared->progress.load();
  shared->stop.store(true);
  EXPECT_EQ(wait_child(good, 30s), 0) << "the well-behaved client lost or got wrong results";
  EXPECT_GT(during, 0u) << "the well-behaved client made no progress during the attack";

  ASSERT_TRUE(daemon.alive()) << daemon.log();
  EXPECT_NE(daemon.log().find("its completion ring is"), std::string::npos) << daemon.log();
  auto c = connect_or_die(daemon.runtime_dir(), "after");
  ASSERT_NE(c, nullptr);
  const std::string text = "still serving";
  auto h = c->submit("echo", std::as_bytes(std::span(text)));
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_EQ(h->wait_for(5s), Status::kOk);
  EXPECT_EQ(
      std::string(reinterpret_cast<const char*>(h->result().data.data()), h->result().data.size()),
      text);
  // The attacker's segments are gone too, once its continuations ended.
  int mapped = -1;
  for (auto until = Clock::now() + 5s; Clock::now() < until;) {
    if ((mapped = count_mapped_segments(daemon.pid())) == 1) break;
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(mapped, 1);
  // And it stops within its drain timeout (5 s by default), a client still connected.
  const auto t0 = Clock::now();
  EXPECT_EQ(daemon.stop(SIGTERM, 10s), 0) << daemon.log();
  EXPECT_LT(Clock::now() - t0, 6s);
}

// Defect 1 of the trust-boundary review: tags "ahead" of the daemon's position in every
// completion slot, then a few noops. The daemon used to reload its own tail forever on
// both workers; now the client is failed and disconnected, everyone else is served, the
// idle daemon sleeps, and SIGTERM ends it at once.
TEST(HostileClient, ShouldDisconnectAClientWhoseCompletionRingIsForgedAndServeTheOthers) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto liar = connect_or_die(daemon.runtime_dir(), "liar");
  ASSERT_NE(liar, nullptr);
  const shm::SegmentGeometry g = default_geometry();
  shm::RingView comp(static_cast<char*>(liar->segment_base()) + g.completion_ring_off,
                     g.ring_capacity);
  for (std::uint64_t p = 0; p < g.ring_capacity; ++p)
    comp.slot(p).store(make_word(p + 5, 0), std::memory_order_relaxed);
  std::vector<Handle> handles;
  for (int i = 0; i < 4; ++i) {
    auto h = liar->submit("noop");
    if (i > 0 && !h.ok() && absl::IsUnavailable(h.status())) break;  // already disconnected
    ASSERT_TRUE(h.ok()) << h.status();
    handles.push_back(std::move(*h));
  }
  // Its handles fail with "daemon lost" (the connection is closed), not never.
  for (auto& h : handles) EXPECT_EQ(h.wait_for(3s), Status::kDaemonLost);
  EXPECT_TRUE(liar->daemon_lost());
  EXPECT_TRUE(serves_echo(daemon.runtime_dir(), 3s));
  EXPECT_NE(daemon.log().find("its completion ring is forged"), std::string::npos) << daemon.log();
  EXPECT_LT(cpu_share(daemon.pid(), 1s), 0.2) << "the daemon should be idle";
  // Counted, for the operator: the stats file is refreshed every 100 ms.
  std::string prom;
  for (auto until = Clock::now() + 3s; Clock::now() < until;) {
    prom = run_command(ctl_args(daemon.runtime_dir(), {"stats", "--prometheus"}), 10s).out;
    if (prom.find("insideout_clients_faulted_total 1\n") != std::string::npos) break;
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_NE(prom.find("insideout_clients_faulted_total 1\n"), std::string::npos) << prom;
  handles.clear();
  liar.reset();
  const auto t0 = Clock::now();
  EXPECT_EQ(daemon.stop(SIGTERM, 10s), 0) << daemon.log();
  EXPECT_LT(Clock::now() - t0, 2s);
}

// A completion ring that looks full (every slot still holding the previous lap's item)
// cannot happen to an honest client (it has no more frames than slots): the client is
// failed, visibly, rather than the daemon keeping a backlog for it.
TEST(HostileClient, ShouldDisconnectAClientWhoseCompletionRingLooksFull) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto liar = connect_or_die(daemon.runtime_dir(), "full");
  ASSERT_NE(liar, nullptr);
  const shm::SegmentGeometry g = default_geometry();
  shm::RingView comp(static_cast<char*>(liar->segment_base()) + g.completion_ring_off,
                     g.ring_capacity);
  for (std::uint64_t p = 0; p < g.ring_capacity; ++p)
    comp.slot(p).store(make_word(p - g.ring_capacity + 1, 0), std::memory_order_relaxed);
  auto h = liar->submit("noop");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->wait_for(3s), Status::kDaemonLost);
  EXPECT_NE(daemon.log().find("its completion ring is full"), std::string::npos) << daemon.log();
  EXPECT_TRUE(serves_echo(daemon.runtime_dir(), 3s));
}

// Defect 3: a client at its in-flight limit (hour-long sleeps) with one more item in its
// ring used to keep every worker spinning (any_work() saw the item accept_from() would
// refuse). The daemon must sleep while it waits.
TEST(HostileClient, ShouldSleepWhileAHeldBackClientHasWorkInItsRing) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  ClientOptions co;
  co.runtime_dir = daemon.runtime_dir();
  co.name = "held-back";
  co.segment.ring_capacity = 64;  // 64 in flight at most
  co.segment.frame_count = 64;
  auto c = Client::connect(co);
  ASSERT_TRUE(c.ok()) << c.status();
  std::vector<Handle> handles;
  for (int i = 0; i < 64; ++i) {
    auto h = (*c)->submit("sleep", {}, 3600ull * 1'000'000'000);
    ASSERT_TRUE(h.ok()) << h.status();
    handles.push_back(std::move(*h));
  }
  // One more offset, pushed by hand (every frame is in flight): it waits in the ring.
  shm::SegmentGeometry g{};
  ASSERT_TRUE(shm::SegmentGeometry::compute(co.segment, &g));
  shm::RingProducer raw(
      shm::RingView(static_cast<char*>((*c)->segment_base()) + g.submit_ring_off, g.ring_capacity));
  // The ring has room once the daemon has taken the 64 sleeps (on a loaded machine that
  // may take a moment).
  bool pushed = false;
  for (int i = 0; i < 500 && !(pushed = raw.try_push(g.frames_off)); ++i)
    std::this_thread::sleep_for(10ms);
  ASSERT_TRUE(pushed);
  (*c)->ring_bell();
  std::this_thread::sleep_for(300ms);  // the spinning phase of the idle strategy is over
  const double share = cpu_share(daemon.pid(), 1s);
  EXPECT_LT(share, 0.1) << "the daemon used " << share * 100 << "% of a core while waiting";
  EXPECT_TRUE(serves_echo(daemon.runtime_dir(), 3s));
}

// Defect 4: beyond 127 registered clients a parked worker used to re-scan every
// millisecond (futex_waitv takes 128 words at most). Idle is idle at any count.
TEST(HostileClient, ShouldSleepWithTwoHundredIdleClients) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < 200; ++i) {
    auto c = connect_or_die(daemon.runtime_dir(), "idle-" + std::to_string(i));
    ASSERT_NE(c, nullptr);
    clients.push_back(std::move(c));
  }
  std::this_thread::sleep_for(300ms);
  const double share = cpu_share(daemon.pid(), 1s);
  EXPECT_LT(share, 0.05) << "the idle daemon used " << share * 100 << "% of a core";
  // And the last one to register is heard at once after idling.
  auto h = clients.back()->submit("noop");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->wait_for(2s), Status::kOk);
  auto first = clients.front()->submit("noop");
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->wait_for(2s), Status::kOk);
}

struct BadFrame {
  const char* what;
  std::function<void(Frame*, const shm::SegmentGeometry&)> fill;
  Status status;
  ErrorDetail detail;
};

TEST(HostileClient, ShouldFailEachBadFrameAloneWithTheRightStatusAndDetail) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto c = connect_or_die(daemon.runtime_dir(), "bad-frames");
  ASSERT_NE(c, nullptr);
  const shm::SegmentGeometry g = default_geometry();
  const std::uint32_t noop = c->function_id("noop").value(),
                      checksum = c->function_id("checksum").value(),
                      echo = c->function_id("echo").value(),
                      fanout = c->function_id("fanout").value(),
                      chain = c->function_id("chain").value(),
                      sleep = c->function_id("sleep").value();
  const std::uint32_t buffers_end = g.buffers_off + g.buffer_block_size * g.buffer_block_count;
  const std::vector<BadFrame> cases = {
      {"function id 0", [](Frame* f, auto&) { f->fn = 0; }, Status::kUnknownFunction,
       ErrorDetail::kUnknownFunction},
      {"function id 9999", [](Frame* f, auto&) { f->fn = 9999; }, Status::kUnknownFunction,
       ErrorDetail::kUnknownFunction},
      {"unknown flag 0x8000", [&](Frame* f, auto&) { f->fn = noop, f->flags = 0x8000; },
       Status::kInvalidArgument, ErrorDetail::kUnknownFlags},
      {"kFrameResultInline set by the client",
       [&](Frame* f, auto&) { f->fn = noop, f->flags = shm::kFrameResultInline; },
       Status::kInvalidArgument, ErrorDetail::kUnknownFlags},
      {"env in the segment header",
       [&](Frame* f, auto&) { f->fn = checksum, f->env_off = 0, f->env_len = 64; },
       Status::kInvalidArgument, ErrorDetail::kEnvOutOfSegment},
      {"env in the frame arena",
       [&](Frame* f, auto& geo) { f->fn = checksum, f->env_off = geo.frames_off, f->env_len = 64; },
       Status::kInvalidArgument, ErrorDetail::kEnvOutOfSegment},
      {"env running past the buffers",
       [&](Frame* f, auto&) { f->fn = echo, f->env_off = buffers_end - 10, f->env_len = 64; },
       Status::kInvalidArgument, ErrorDetail::kEnvOutOfSegment},
      {"env past the segment",
       [&](Frame* f, auto&) { f->fn = checksum, f->env_off = buffers_end + 4096, f->env_len = 1; },
       Status::kInvalidArgument, ErrorDetail::kEnvOutOfSegment},
      {"env offset + length overflowing 32 bits",
       [&](Frame* f, auto&) { f->fn = checksum, f->env_off = 0xFFFFFFF0u, f->env_len = 0x20; },
       Status::kInvalidArgument, ErrorDetail::kEnvOutOfSegment},
      {"inline env_len 17",
       [&](Frame* f, auto&) { f->fn = echo, f->flags = shm::kFrameEnvInline, f->env_len = 17; },
       Status::kInvalidArgument, ErrorDetail::kInlineTooLong},
      {"inline env_len 2^32-1",
       [&](Frame* f, auto&) {
         f->fn = echo, f->flags = shm::kFrameEnvInline, f->env_len = 0xFFFFFFFFu;
       },
       Status::kInvalidArgument, ErrorDetail::kInlineTooLong},
      {"fanout 2^30 + 1", [&](Frame* f, auto&) { f->fn = fanout, f->arg = (1ull << 30) + 1; },
       Status::kInvalidArgument, ErrorDetail::kArgumentOutOfRange},
      {"fanout 2^32", [&](Frame* f, auto&) { f->fn = fanout, f->arg = 1ull << 32; },
       Status::kInvalidArgument, ErrorDetail::kArgumentOutOfRange},
      {"fanout 2^64-1", [&](Frame* f, auto&) { f->fn = fanout, f->arg = ~0ull; },
       Status::kInvalidArgument, ErrorDetail::kArgumentOutOfRange},
      {"chain 2^40+1", [&](Frame* f, auto&) { f->fn = chain, f->arg = (1ull << 40) + 1; },
       Status::kInvalidArgument, ErrorDetail::kArgumentOutOfRange},
      {"chain 0", [&](Frame* f, auto&) { f->fn = chain, f->arg = 0; }, Status::kInvalidArgument,
       ErrorDetail::kArgumentOutOfRange},
      {"sleep over an hour",
       [&](Frame* f, auto&) { f->fn = sleep, f->arg = 3600ull * 1'000'000'000 + 1; },
       Status::kInvalidArgument, ErrorDetail::kArgumentOutOfRange},
  };
  const std::string text = "a good one between bad ones";
  for (const auto& bad : cases) {
    SCOPED_TRACE(bad.what);
    Frame* f = c->allocate_frame();
    ASSERT_NE(f, nullptr);
    bad.fill(f, g);
    f->tag = 0xBAD;
    auto h = c->submit(f);
    ASSERT_TRUE(h.ok()) << h.status();
    ASSERT_EQ(h->wait_for(5s), bad.status);
    const Result r = h->result();
    EXPECT_EQ(r.detail, bad.detail) << r.error();
    EXPECT_TRUE(r.data.empty());
    EXPECT_EQ(h->frame()->tag, 0xBADu);
    // And the very next continuation of the same client is fine.
    auto ok = c->submit("echo", std::as_bytes(std::span(text)));
    ASSERT_TRUE(ok.ok()) << ok.status();
    ASSERT_EQ(ok->wait_for(5s), Status::kOk);
    EXPECT_EQ(ok->result().value, text.size());
  }
  EXPECT_TRUE(daemon.alive()) << daemon.log();
}

// The daemon's counters in the client's segment, refreshed on its heartbeat (250 ms).
const shm::ClientCounters& counters_of(const Client& c) {
  return *reinterpret_cast<const shm::ClientCounters*>(static_cast<const char*>(c.segment_base()) +
                                                       default_geometry().counters_off);
}

bool wait_for_counter(const std::atomic<std::uint64_t>& counter, std::uint64_t want) {
  for (auto until = Clock::now() + 5s; Clock::now() < until;) {
    if (counter.load(std::memory_order_relaxed) == want) return true;
    std::this_thread::sleep_for(10ms);
  }
  return counter.load(std::memory_order_relaxed) == want;
}

TEST(HostileClient, ShouldCountAndDropOffsetsThatAreNotFrames) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto c = connect_or_die(daemon.runtime_dir(), "raw-offsets");
  ASSERT_NE(c, nullptr);
  const shm::SegmentGeometry g = default_geometry();
  // Pushed straight into the submit ring, as a client that bypasses the library would.
  shm::RingProducer raw(
      shm::RingView(static_cast<char*>(c->segment_base()) + g.submit_ring_off, g.ring_capacity));
  const std::uint32_t not_frames[] = {
      0,
      1,
      g.submit_ring_off,
      g.frames_off - 64,
      g.frames_off + 1,
      g.frames_off + 32,
      g.frames_off + g.frame_count * static_cast<std::uint32_t>(sizeof(Frame)),
      g.buffers_off,
      0xFFFFFFC0u,
      0xFFFFFFFFu};
  for (std::uint32_t off : not_frames) ASSERT_TRUE(raw.try_push(off));
  // A real frame behind them completes; nothing else does.
  auto h = c->submit("noop");
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_EQ(h->wait_for(5s), Status::kOk);
  EXPECT_TRUE(wait_for_counter(counters_of(*c).rejected_invalid, std::size(not_frames)))
      << "rejected_invalid = " << counters_of(*c).rejected_invalid.load();
  EXPECT_EQ(counters_of(*c).rejected_function.load(), 0u);
  EXPECT_EQ(c->poll(), 0u) << "a completion for an offset that is not a frame";
  EXPECT_EQ(c->stats().completed, 1u);

  // Unknown function ids are counted apart.
  Frame* f = c->allocate_frame();
  ASSERT_NE(f, nullptr);
  f->fn = 4242;
  auto bad = c->submit(f);
  ASSERT_TRUE(bad.ok()) << bad.status();
  ASSERT_EQ(bad->wait_for(5s), Status::kUnknownFunction);
  EXPECT_TRUE(wait_for_counter(counters_of(*c).rejected_function, 1))
      << "rejected_function = " << counters_of(*c).rejected_function.load();
  EXPECT_EQ(counters_of(*c).rejected_invalid.load(), std::size(not_frames));

  // The client, the daemon and a newcomer all carry on.
  auto again = c->submit("noop");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->wait_for(5s), Status::kOk);
  EXPECT_TRUE(daemon.alive()) << daemon.log();
  auto other = connect_or_die(daemon.runtime_dir(), "other");
  ASSERT_NE(other, nullptr);
  auto h2 = other->submit("noop");
  ASSERT_TRUE(h2.ok()) << h2.status();
  EXPECT_EQ(h2->wait_for(5s), Status::kOk);
}

}  // namespace
}  // namespace insideout::testing
