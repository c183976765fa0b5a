// fuzz_segment: the daemon's intake and completion code (Scheduler: poll_clients,
// accept_from, accept_one, the step trampoline, flush_completions, park) against a client
// whose segment the fuzzer rewrites between steps.
//
// Each input builds a fresh scheduler with one worker (IdleStrategy::kBlock, so an idle
// worker parks at once) and one client slot with a real memfd segment, as
// tests/support/in_process.h does, then plays the input as a script of operations, one
// opcode byte each (operands follow; a short input ends the script):
//   0 WRITE    u16 offset (mod segment size), u8 length (<= 32), bytes: anywhere (header,
//              doorbells, ring headers and slots, arena, frames, buffers)
//   1 FRAME    a structured descriptor in frame i (fn, flags, arg, environment), published
//   2 PUSH     a raw u32 into the submit ring (any value: a bad offset, a frame twice)
//   3 RESUBMIT frame i's offset again (completed or not)
//   4 POP      the client takes what is in its completion ring
//   5 SETTLE   wait until the worker has gone back to sleep
//   6 PAUSE    ~100 us: the worker runs while the next writes land
//   7 CLOSE    the client hangs up (what Daemon::close_conn() does); writes go on
//   8 SLOT     u8 ring (bit 0: completion), u8 index, u64 word: a ring slot, tag included
//   9 RING     the bell alone (shm::SubmitBell::ring())
// The client side keeps its positions privately and reads nothing back for control, so
// the harness itself cannot be misled into a loop.
//
// A finding: any sanitizer report; a completion the daemon pushed for an offset that is
// not a frame (unless the script forged completion slots itself); a worker that does not
// go back to sleep within FUZZ_SEGMENT_HANG_MS (default 3000) of a SETTLE, or a closed
// client whose accepted continuations do not all complete within that time (the
// daemon's loops and waits must not depend on what the client wrote); and, behind
// those, an internal watchdog that aborts an input running over 4x that bound (and
// libFuzzer's own -timeout).
#include <sanitizer/common_interface_defs.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>

#include "client_source.h"
#include "clients.h"
#include "engine.h"
#include "insideout/shm/bell.h"
#include "insideout/shm/futex.h"
#include "insideout/shm/layout.h"
#include "insideout/shm/ring.h"
#include "insideout/shm/segment.h"

namespace {

namespace shm = insideout::shm;
namespace daemon = insideout::daemon;
using Clock = std::chrono::steady_clock;

#define FUZZ_CHECK(cond, ...)                                                           \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      std::fprintf(stderr, "%s:%d: invariant failed: %s: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                                \
      std::fprintf(stderr, "\n");                                                       \
      std::abort();                                                                     \
    }                                                                                   \
  } while (0)

std::chrono::milliseconds hang_bound() {
  static const std::chrono::milliseconds ms{[] {
    const char* e = std::getenv("FUZZ_SEGMENT_HANG_MS");
    return e != nullptr ? std::atol(e) : 3000L;
  }()};
  return ms;
}

// A hang report names where the worker is: the worker prints its own stack (SIGUSR2),
// then the harness aborts with its message.
void print_own_stack(int) { __sanitizer_print_stack_trace(); }

[[noreturn]] void report_hang(pid_t worker_tid, const char* what) {
  std::fprintf(stderr, "fuzz_segment: %s\nfuzz_segment: the worker (tid %d) is here:\n", what,
               static_cast<int>(worker_tid));
  struct sigaction sa {};
  sa.sa_handler = print_own_stack;
  ::sigaction(SIGUSR2, &sa, nullptr);
  if (worker_tid != 0) ::syscall(SYS_tgkill, ::getpid(), worker_tid, SIGUSR2);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  std::abort();
}

// The internal watchdog: one thread for the process; each input arms it. It catches what
// the harness's own bounded waits cannot (a stop() that never returns, a stuck close).
std::atomic<std::int64_t> g_deadline_ns{0};  // 0: disarmed
std::atomic<const char*> g_phase{"idle"};

void watchdog() {
  for (;;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    const std::int64_t d = g_deadline_ns.load(std::memory_order_relaxed);
    if (d != 0 && Clock::now().time_since_epoch().count() > d) {
      std::fprintf(stderr, "fuzz_segment: watchdog: input still running in phase '%s'\n",
                   g_phase.load());
      std::abort();
    }
  }
}

// The built-ins with their arguments capped, so that one input stays short: the fuzzer
// looks for the daemon losing track of work, not for work that is merely long.
const daemon::FunctionRegistry& registry() {
  static const daemon::FunctionRegistry* r = [] {
    daemon::FunctionRegistry builtins;
    daemon::register_builtins(builtins);
    auto* reg = new daemon::FunctionRegistry;
    for (auto entry : builtins.list()) {
      daemon::FunctionDef& def = entry.def;
      if (def.name == "fanout") def.max_arg = 256;
      if (def.name == "chain") def.max_arg = 256;
      if (def.name == "sleep") def.max_arg = 200'000;  // 200 us
      reg->add(def);
    }
    return reg;
  }();
  return *r;
}

class Input {
 public:
  Input(const std::uint8_t* p, std::size_t n) : p_(p), end_(p + n) {}
  bool empty() const { return p_ == end_; }
  std::uint8_t u8() { return p_ == end_ ? 0 : *p_++; }
  std::uint16_t u16() { return static_cast<std::uint16_t>(u8() | (u8() << 8)); }
  std::uint32_t u32() { return u16() | (std::uint32_t{u16()} << 16); }
  std::uint64_t u64() { return u32() | (std::uint64_t{u32()} << 32); }
  std::size_t take(void* out, std::size_t n) {
    n = std::min<std::size_t>(n, static_cast<std::size_t>(end_ - p_));
    std::memcpy(out, p_, n);
    p_ += n;
    return n;
  }

 private:
  const std::uint8_t* p_;
  const std::uint8_t* end_;
};

class Harness {
 public:
  explicit Harness(std::uint8_t shape) : table_(2) {
    // A few small shapes: a ring of 4, 8, 16 or 32 slots, frames up to the ring, one or
    // two buffer blocks per frame.
    shm::SegmentRequest req;
    req.ring_capacity = 4u << (shape & 3);
    req.frame_count = req.ring_capacity >> ((shape >> 2) & 1);
    req.buffer_block_size = 64u << ((shape >> 3) & 1);
    req.buffer_block_count = req.frame_count << ((shape >> 4) & 1);
    FUZZ_CHECK(shm::SegmentGeometry::compute(req, &g_), "shape %u", shape);
    daemon::SchedulerConfig cfg;
    cfg.workers = 1;
    cfg.idle = shm::IdleStrategy::kBlock;
    cfg.queue_capacity = 64;
    cfg.thread_prefix = "fz-w";
    sched_ = std::make_unique<daemon::Scheduler>(
        cfg, registry(), std::make_unique<daemon::ClientSource>(table_, registry(), cfg.pool));
    slot_ = table_.reserve();
    std::string err;
    slot_->segment = shm::Segment::create(g_, 1, 1, 0, 1, &err);
    FUZZ_CHECK(slot_->segment.valid(), "%s", err.c_str());
    slot_->geom = g_;
    slot_->has_segment = true;
    FUZZ_CHECK(daemon::ClientSource::of(*sched_).attach_client(*slot_, &err), "%s", err.c_str());
    bell_ = shm::SubmitBell(sched_->bell_page(), slot_->bell_fd);
    table_.activate(*slot_);
    base_ = static_cast<char*>(slot_->segment.base());
    submit_ = shm::RingView(base_ + g_.submit_ring_off, g_.ring_capacity);
    completion_ = shm::RingView(base_ + g_.completion_ring_off, g_.ring_capacity);
    sched_->start();
  }

  ~Harness() {
    g_phase = "teardown: close";
    close();
    g_phase = "teardown: waiting for every accepted continuation to complete";
    const auto until = Clock::now() + hang_bound();
    while (slot_->state.load() != daemon::SlotState::kZombie) {
      if (Clock::now() >= until)
        hang(
            "the client closed %lld ms ago and %u continuations are still in flight; "
            "accepted %llu completed %llu failed %llu rejected %llu",
            static_cast<long long>(hang_bound().count()), slot_->refs.load(),
            static_cast<unsigned long long>(slot_->accepted.load()),
            static_cast<unsigned long long>(slot_->completed.load()),
            static_cast<unsigned long long>(slot_->failed.load()),
            static_cast<unsigned long long>(slot_->rejected.load()));
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    g_phase = "teardown: stop";
    sched_->drain(std::chrono::milliseconds(0));
    sched_->stop();
    table_.reclaim(*slot_);
  }

  void run(Input& in) {
    while (!in.empty()) {
      switch (in.u8() % 10) {
        case 0: {
          g_phase = "write";
          const std::uint32_t off = in.u16() % static_cast<std::uint32_t>(g_.size);
          std::uint8_t buf[32];
          std::size_t n = std::min<std::size_t>(in.u8() % 33, g_.size - off);
          n = in.take(buf, n);
          note_write(off, n);
          poked_ = true;
          std::memcpy(base_ + off, buf, n);
          break;
        }
        case 1:
          g_phase = "frame";
          frame(in);
          break;
        case 2:
          g_phase = "push";
          push(in.u32());
          break;
        case 3:
          g_phase = "resubmit";
          push(frame_off(in.u8()));
          break;
        case 4:
          g_phase = "pop";
          pop();
          break;
        case 5:
          g_phase = "settle";
          settle();
          break;
        case 6:
          g_phase = "pause";
          std::this_thread::sleep_for(std::chrono::microseconds(100));
          break;
        case 7:
          g_phase = "close";
          close();
          break;
        case 8: {
          g_phase = "slot";
          const bool comp = in.u8() & 1;
          const std::uint8_t i = in.u8();
          const std::uint64_t word = in.u64();
          if (comp) forged_completions_ = true;
          poked_ = true;
          (comp ? completion_ : submit_).slot(i).store(word, std::memory_order_release);
          break;
        }
        case 9:
          g_phase = "ring";
          bell_.ring();
          poked_ = true;
          break;
      }
    }
    g_phase = "final settle";
    settle();
    pop();
  }

 private:
  std::uint32_t frame_off(std::uint8_t i) const {
    return g_.frames_off + (i % g_.frame_count) * static_cast<std::uint32_t>(sizeof(shm::Frame));
  }

  void note_write(std::uint32_t off, std::size_t n) {
    const std::uint64_t lo = g_.completion_ring_off;
    const std::uint64_t hi = lo + shm::ring_bytes(g_.ring_capacity);
    if (off < hi && off + n > lo) forged_completions_ = true;
  }

  // A descriptor as an honest (or nearly honest) client writes it: the fuzzer reaches
  // valid frames at once and the mutations around them from there.
  void frame(Input& in) {
    const std::uint32_t off = frame_off(in.u8());
    shm::Frame f{};
    f.fn = in.u8() % 8;  // 1..6 are the built-ins
    const std::uint8_t flags = in.u8();
    f.flags =
        static_cast<std::uint16_t>((flags & 1 ? shm::kFrameEnvInline : 0) | (flags & 2 ? 0x80 : 0));
    f.arg = in.u8() | (flags & 4 ? std::uint64_t{in.u8()} << 8 : 0);
    f.tag = off;
    if (f.flags & shm::kFrameEnvInline) {
      f.env_len = in.u8() % 20;
      in.take(f.inline_data, sizeof(f.inline_data));
    } else if (flags & 8) {
      const std::uint32_t block = in.u8() % g_.buffer_block_count;
      f.env_off = g_.buffers_off + block * g_.buffer_block_size;
      f.env_len = in.u8() * 4u;  // may run past its block, or the buffer area
    }
    std::memcpy(base_ + off, &f, sizeof(f));
    push(off);
  }

  void push(std::uint32_t value) {
    // As the client library does: publish only into a free slot (tag = position), with
    // tag = position + 1 (ring.h), and ring the doorbell; a full ring drops the value
    // (fail fast). Overwriting a slot the daemon has not consumed yet is what SLOT does.
    const std::uint64_t old = submit_.slot(sub_pos_).load(std::memory_order_acquire);
    if (static_cast<std::uint32_t>(old >> 32) != static_cast<std::uint32_t>(sub_pos_)) return;
    submit_.slot(sub_pos_).store(
        (static_cast<std::uint64_t>(static_cast<std::uint32_t>(sub_pos_ + 1)) << 32) | value,
        std::memory_order_release);
    ++sub_pos_;
    bell_.ring();
    poked_ = true;
  }

  void pop() {
    // Bounded by the capacity: the client's loop must not depend on the daemon either.
    for (std::uint32_t i = 0; i < g_.ring_capacity; ++i) {
      const std::uint64_t word = completion_.slot(comp_head_).load(std::memory_order_acquire);
      if (static_cast<std::uint32_t>(word >> 32) != static_cast<std::uint32_t>(comp_head_ + 1))
        return;
      const auto off = static_cast<std::uint32_t>(word);
      FUZZ_CHECK(forged_completions_ || g_.frame_offset_valid(off),
                 "the daemon completed offset %u, which is not a frame", off);
      completion_.slot(comp_head_)
          .store(
              static_cast<std::uint64_t>(static_cast<std::uint32_t>(comp_head_ + g_.ring_capacity))
                  << 32,
              std::memory_order_release);
      ++comp_head_;
    }
  }

  // Until the worker has slept again since this call, or sleeps and has nothing to wake
  // for (a client that corrupted its own doorbell is not woken: its loss, not a hang).
  void settle() {
    const daemon::Worker& w = sched_->worker(0);
    const std::uint64_t parks0 = w.stats.parks.load(std::memory_order_relaxed);
    const auto start = Clock::now();
    const bool poked = poked_;
    poked_ = false;
    for (;;) {
      if (w.stats.parks.load(std::memory_order_relaxed) != parks0) return;
      const auto waited = Clock::now() - start;
      // Asleep and not poked since the last settle: nothing can have woken it. Poked but
      // still asleep after a while: the wake-up was lost to the client's own writes.
      if (w.parked.load(std::memory_order_relaxed) &&
          (!poked || waited > std::chrono::microseconds(500)))
        return;
      if (waited >= hang_bound())
        hang(
            "hang: the worker has not gone back to sleep for %lld ms (steps %llu, "
            "accepted %llu, completed %llu, backpressure %llu, faulted %d)",
            static_cast<long long>(hang_bound().count()),
            static_cast<unsigned long long>(w.stats.steps.load()),
            static_cast<unsigned long long>(slot_->accepted.load()),
            static_cast<unsigned long long>(slot_->completed.load()),
            static_cast<unsigned long long>(slot_->backpressure.load()),
            static_cast<int>(slot_->faulted.load()));
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }

  [[noreturn]] __attribute__((format(printf, 2, 3))) void hang(const char* fmt, ...) {
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    report_hang(sched_->worker(0).tid.load(), what);
  }

  void close() {
    if (closed_) return;
    closed_ = true;
    poked_ = true;
    slot_->state.store(daemon::SlotState::kClosing, std::memory_order_seq_cst);
    daemon::ClientSource::of(*sched_).client_closing(*slot_);
    table_.release(*slot_);
  }

  daemon::ClientTable table_;
  std::unique_ptr<daemon::Scheduler> sched_;
  daemon::ClientSlot* slot_ = nullptr;
  shm::SegmentGeometry g_{};
  char* base_ = nullptr;
  shm::RingView submit_, completion_;
  std::uint64_t sub_pos_ = 0, comp_head_ = 0;
  bool forged_completions_ = false;
  bool poked_ = true;  // the worker may have something to do since the last settle
  bool closed_ = false;
  shm::SubmitBell bell_;
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  spdlog::set_level(spdlog::level::err);
  registry();
  std::thread(watchdog).detach();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return -1;
  g_deadline_ns.store((Clock::now() + 4 * hang_bound()).time_since_epoch().count());
  {
    Input in(data + 1, size - 1);
    Harness h(data[0]);
    h.run(in);
  }
  g_deadline_ns.store(0);
  g_phase = "idle";
  return 0;
}
