// The measurements of the cross-process peers that fit one shape, a Channel that moves Msgs
// one way between two processes. A Channel is made before fork() and used by both
// processes after it:
//
//   [[nodiscard]] bool send(std::span<const Msg> batch, Wait w);
//       all of the batch, in one submission where the peer can batch; false on error
//   [[nodiscard]] std::size_t recv(std::span<Msg> out, Wait w);
//       1 to out.size() messages; 0 on error
//
// Both sides of one measurement use the same Wait. The producer or echo server runs in a
// child on cpu_for(1), the consumer or client here on cpu_for(0).
#pragma once

#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench_common.h"

namespace insideout::bench {

// How a receiver waits for its next message.
enum class Wait {
  kSpin,   // poll without sleeping (non-blocking calls in a loop)
  kBlock,  // the peer's blocking call or futex
};

inline constexpr std::size_t kBatches[] = {1, 8, 64, 512};
inline constexpr auto kSleepGap = std::chrono::microseconds(50);

inline std::string throughput_scenario(std::size_t batch) {
  return "throughput_batch" + std::to_string(batch);
}

// What one channel peer measures and how much.
struct ChannelPeer {
  std::string system;
  bool batching = true;  // throughput_batch{8,64,512} too, else batch1 only
  Wait throughput_wait = Wait::kBlock;
  bool rtt_busy = true;   // both sides spin
  bool rtt_sleep = true;  // both sides wait with `sleep_wait`, 50 us between pings
  Wait sleep_wait = Wait::kBlock;
  std::uint64_t throughput_msgs = 1'000'000;  // per batch size
  std::uint64_t rtt_busy_samples = 100'000;
  std::uint64_t rtt_sleep_samples = 20'000;
};

inline std::vector<std::string> channel_scenarios(bool batching) {
  std::vector<std::string> v;
  for (std::size_t b : kBatches) {
    if (b == 1 || batching) v.push_back(throughput_scenario(b));
  }
  v.push_back("rtt_busy");
  v.push_back("rtt_sleep");
  return v;
}

// A producer in the child sends `total` messages in batches of `batch`; this side receives
// up to `batch` at a time, checks the sequence, and times from the open gate to the last.
template <class Chan>
bool run_throughput(const Options& o, const ChannelPeer& p, Chan& ch, std::size_t batch,
                    std::uint64_t total) {
  total = std::max<std::uint64_t>(total - total % batch, batch);  // whole batches only
  const Wait wait = p.throughput_wait;
  Shared<StartGate> gate;
  const pid_t child = spawn(cpu_for(1), [&]() -> int {
    std::vector<Msg> buf(batch);
    gate->arrive_and_wait();
    for (std::uint64_t seq = 0; seq < total; seq += batch) {
      for (std::size_t i = 0; i < batch; ++i) buf[i].seq = seq + i;
      if (!ch.send(buf, wait)) return 1;
    }
    return 0;
  });
  if (child < 0) {
    fail_errno(o, "fork");
    return false;
  }
  std::vector<Msg> buf(batch);
  gate->wait_and_open();
  const std::uint64_t t0 = now_ns();
  std::uint64_t next = 0;
  bool ok = true;
  while (ok && next < total) {
    const auto want = std::size_t(std::min<std::uint64_t>(batch, total - next));
    const std::size_t n = ch.recv(std::span<Msg>(buf).first(want), wait);
    ok = n != 0;
    for (std::size_t i = 0; ok && i < n; ++i) ok = buf[i].seq == next + i;
    next += n;
  }
  const std::uint64_t t1 = now_ns();
  const bool child_ok = reap(child, ok ? std::chrono::seconds(60) : std::chrono::seconds(1));
  if (!ok || !child_ok) {
    fail(o, (p.system + " " + throughput_scenario(batch) + ": lost, reordered or failed").c_str());
    return false;
  }
  emit_rate(throughput_scenario(batch), p.system, total, t1 - t0);
  return true;
}

// Round trips of one message: this side sends a ping and waits for the echo, then sleeps
// `gap` (none for rtt_busy); see time_round_trips().
template <class Chan>
bool run_rtt(const Options& o, const ChannelPeer& p, const std::string& scenario, Chan& ping,
             Chan& pong, Wait wait, std::chrono::microseconds gap, std::uint64_t count) {
  const std::uint64_t trips = trips_with_warmup(count);
  const pid_t child = spawn(cpu_for(1), [&]() -> int {
    Msg m;
    for (std::uint64_t i = 0; i < trips; ++i) {
      if (ping.recv(std::span<Msg>(&m, 1), wait) != 1) return 1;
      if (!pong.send(std::span<const Msg>(&m, 1), wait)) return 1;
    }
    return 0;
  });
  if (child < 0) {
    fail_errno(o, "fork");
    return false;
  }
  auto samples = time_round_trips(count, gap, [&](std::uint64_t i) {
    Msg m = make_msg(i);
    return ping.send(std::span<const Msg>(&m, 1), wait) &&
           pong.recv(std::span<Msg>(&m, 1), wait) == 1 && m.seq == i;
  });
  const bool ok = samples.has_value();
  const bool child_ok = reap(child, ok ? std::chrono::seconds(60) : std::chrono::seconds(1));
  if (!ok || !child_ok) {
    fail(o, (p.system + " " + scenario + ": lost, reordered or failed").c_str());
    return false;
  }
  emit_latency(scenario, p.system, std::move(*samples));
  return true;
}

// Runs every scenario of `p` that `o` asks for, with fresh channels from make() for each
// measurement (make() may throw; that fails the measurement, not the program). Returns
// the number of failed measurements.
template <class MakeChannel>
int run_channel_peer(const Options& o, const ChannelPeer& p, MakeChannel&& make) {
  int failures = 0;
  auto guarded = [&](auto&& measure) {
    try {
      if (!measure()) ++failures;
    } catch (const std::exception& e) {
      fail(o, (p.system + ": " + e.what()).c_str());
      ++failures;
    }
  };
  for (std::size_t b : kBatches) {
    if ((b != 1 && !p.batching) || !o.wants(throughput_scenario(b))) continue;
    guarded([&] {
      auto ch = make();
      return run_throughput(o, p, ch, b, p.throughput_msgs);
    });
  }
  if (p.rtt_busy && o.wants("rtt_busy")) {
    guarded([&] {
      auto ping = make();
      auto pong = make();
      return run_rtt(o, p, "rtt_busy", ping, pong, Wait::kSpin, std::chrono::microseconds(0),
                     p.rtt_busy_samples);
    });
  }
  if (p.rtt_sleep && o.wants("rtt_sleep")) {
    guarded([&] {
      auto ping = make();
      auto pong = make();
      return run_rtt(o, p, "rtt_sleep", ping, pong, Wait::kBlock, kSleepGap, p.rtt_sleep_samples);
    });
  }
  return failures;
}

// Throws errno as an exception, for channel constructors.
[[noreturn]] inline void throw_errno(const char* what) {
  throw std::runtime_error(std::string(what) + ": " + std::strerror(errno));
}

}  // namespace insideout::bench
