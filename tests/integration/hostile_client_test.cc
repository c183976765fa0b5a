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
#include <random>
#include <thread>
#include <vector>

#include "insideout/client.hpp"
#include "insideout/shm/futex.h"
#include "insideout/shm/layout.h"
#include "insideout/shm/ring.h"
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
// the library, then overwrites its whole segment with random bytes, repairs just enough
// of the submit and completion rings that the daemon reads on, publishes crafted and
// random offsets (frames half valid, half garbage) and scribbles over frames while the
// daemon reads them.
struct AttackStats {
  std::atomic<std::uint64_t> rounds{0};
  std::atomic<std::uint64_t> refused{0};  // completions of crafted frames the daemon refused
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
    shm::RingView comp(base + g.completion_ring_off, cap);
    auto* doorbells = reinterpret_cast<shm::Doorbells*>(base + g.doorbells_off);
    std::uint64_t pos =
        sub.header()->tail.load();  // the daemon's next position once it took the batch
    std::uint64_t comp_head = 0;    // ours: completions taken so far
    for (int it = 0; it < 16 && Clock::now() < end; ++it) {
      // Let the daemon take what was published and finish it (bounded), then take the
      // completions, so the daemon's positions are known when the rings are repaired.
      for (auto until = Clock::now() + 3ms; Clock::now() < until;) {
        if (sub.header()->head.load(std::memory_order_acquire) == pos) break;
        std::this_thread::sleep_for(50us);
      }
      std::this_thread::sleep_for(200us);
      for (std::uint64_t word; ((word = comp.slot(comp_head).load(std::memory_order_acquire)) >>
                                32) == static_cast<std::uint32_t>(comp_head + 1);
           ++comp_head) {
        const auto off = static_cast<std::uint32_t>(word);
        if (it == 0 || !g.frame_offset_valid(off)) continue;
        const auto st = static_cast<Status>(reinterpret_cast<const Frame*>(base + off)->status);
        if (st == Status::kInvalidArgument || st == Status::kUnknownFunction) {
          stats->refused.fetch_add(1, std::memory_order_relaxed);
        }
      }
      // Random bytes over everything.
      for (std::uint64_t off = 0; off + 8 <= g.size; off += 8) {
        const std::uint64_t v = rng();
        std::memcpy(base + off, &v, 8);
      }
      // Repair the ring slots the daemon reads and writes next.
      for (std::uint64_t p = pos; p < pos + cap; ++p)
        sub.slot(p).store(make_word(p, 0), std::memory_order_relaxed);
      for (std::uint64_t p = comp_head; p < comp_head + cap; ++p) {
        comp.slot(p).store(make_word(p, 0), std::memory_order_relaxed);
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
      doorbells->submit.seq.fetch_add(1, std::memory_order_release);
      shm::futex_wake(&doorbells->submit.seq, INT_MAX);
      // Scribble over frames while the daemon reads them.
      for (auto until = Clock::now() + 1ms; Clock::now() < until;) {
        const std::uint32_t off =
            g.frames_off + static_cast<std::uint32_t>(rng() % g.frame_count) * sizeof(Frame);
        const std::uint64_t v = rng();
        std::memcpy(base + off + (rng() % 7) * 8, &v, 8);
      }
    }
    stats->rounds.fetch_add(1, std::memory_order_relaxed);
  }
  return 0;
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
  EXPECT_GT(shared->attack.refused.load(), 0u)
      << "the daemon never got to validate the attacker's garbage";
  const std::uint64_t during = shared->progress.load();
  shared->stop.store(true);
  EXPECT_EQ(wait_child(good, 30s), 0) << "the well-behaved client lost or got wrong results";
  EXPECT_GT(during, 0u) << "the well-behaved client made no progress during the attack";

  ASSERT_TRUE(daemon.alive()) << daemon.log();
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
