// The daemon restarts under a connected Client: the same Client object reconnects to the
// next insideoutd on the socket; what the old daemon never accepted is submitted again,
// what it had accepted completes with kDaemonLost, each continuation exactly once; when
// no daemon comes back within reconnect_wait, everything pending fails, with a clear
// error. Client::connect() waits for a daemon that is starting, up to ClientOptions::wait.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "insideout/client.hpp"
#include "insideout/shm/layout.h"
#include "integration/control_support.h"
#include "support/daemon_process.h"

namespace insideout::testing {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr std::uint64_t kTenSeconds = 10'000'000'000;

std::span<const std::byte> bytes(const std::string& s) { return std::as_bytes(std::span(s)); }

std::string text(std::span<const std::byte> b) {
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}

// How many continuations the daemon accepted from this client (its segment's counters).
std::uint64_t accepted(const Client& c) {
  const auto* base = static_cast<const char*>(c.segment_base());
  const auto* h = reinterpret_cast<const shm::SegmentHeader*>(base);
  const auto* counters = reinterpret_cast<const shm::ClientCounters*>(base + h->counters_off);
  return counters->accepted.load(std::memory_order_relaxed);
}

bool wait_accepted(const Client& c, std::uint64_t n, std::chrono::milliseconds bound = 5s) {
  for (const auto until = Clock::now() + bound; Clock::now() < until;) {
    if (accepted(c) >= n) return true;
    std::this_thread::sleep_for(2ms);
  }
  return false;
}

ClientOptions options_for(const DaemonProcess& d) {
  ClientOptions co;
  co.runtime_dir = d.runtime_dir();
  co.reconnect_wait = 5s;
  return co;
}

TEST(Reconnect, ShouldKeepWorkingAfterARestartWhileIdle) {
  DaemonProcess first;
  ASSERT_TRUE(first.ready()) << first.log();
  auto c = Client::connect(options_for(first));
  ASSERT_TRUE(c.ok()) << c.status();
  Client& client = **c;
  const std::uint64_t gen0 = client.generation();
  EXPECT_NE(gen0, 0u);
  const std::string long_text(300, 'x');  // in a buffer, not inline
  auto before = client.submit("echo", bytes(long_text));
  ASSERT_TRUE(before.ok()) << before.status();
  ASSERT_EQ(before->wait(), Status::kOk);

  ASSERT_EQ(first.stop(SIGTERM), 0) << first.log();
  std::optional<DaemonProcess> second;
  second.emplace(std::vector<std::string>{}, first.runtime_dir());
  ASSERT_TRUE(second->ready()) << second->log();

  // The same object: the next submit waits for the reconnection and runs on the new daemon.
  auto after = client.submit("echo", bytes(long_text));
  ASSERT_TRUE(after.ok()) << after.status();
  ASSERT_EQ(after->wait_for(5s), Status::kOk);
  EXPECT_EQ(text(after->result().data), long_text);
  EXPECT_FALSE(client.daemon_lost());
  EXPECT_NE(client.generation(), gen0) << "a restarted daemon has a new generation";
  EXPECT_EQ(client.stats().reconnects, 1u);
  EXPECT_EQ(client.stats().lost, 0u);
  // A result of the old daemon stays readable.
  EXPECT_EQ(text(before->result().data), long_text);
  // The serialized path and lookups reconnected too.
  auto call = client.call("echo", "ping");
  ASSERT_TRUE(call.ok()) << call.status();
  EXPECT_EQ(call->data, "ping");
  EXPECT_TRUE(client.function_id("checksum").ok());
}

// The old daemon crashes while the client waits: the continuations it had accepted fail
// with kDaemonLost; those still in the ring (held back by --max-inflight) run on the next
// daemon, through their handles, callbacks and waiting threads, each exactly once.
TEST(Reconnect, ShouldResubmitWhatWasNeverAcceptedAndLoseWhatWasWhileWaitingOnResults) {
  DaemonProcess first({"--workers", "1", "--max-inflight", "4"});
  ASSERT_TRUE(first.ready()) << first.log();
  auto c = Client::connect(options_for(first));
  ASSERT_TRUE(c.ok()) << c.status();
  Client& client = **c;
  std::vector<Handle> accepted_ones, held_back;
  for (int i = 0; i < 4; ++i) {
    auto h = client.submit("sleep", {}, kTenSeconds);
    ASSERT_TRUE(h.ok()) << h.status();
    accepted_ones.push_back(std::move(*h));
  }
  ASSERT_TRUE(wait_accepted(client, 4)) << "the daemon did not accept the sleeps";
  const std::string env = "resubmitted env, in a buffer of the segment";
  for (int i = 0; i < 6; ++i) {
    auto h = client.submit("echo", bytes(env + std::to_string(i)));
    ASSERT_TRUE(h.ok()) << h.status();
    held_back.push_back(std::move(*h));
  }
  // A callback on a held-back one, and a thread blocked in wait() on another.
  std::atomic<int> callbacks{0};
  std::promise<Result> callback_result;
  {
    auto h = client.submit("echo", bytes(std::string("callback")));
    ASSERT_TRUE(h.ok()) << h.status();
    std::move(*h).then([&](const Result& r) {
      if (callbacks.fetch_add(1) == 0) callback_result.set_value(r);
    });
  }
  std::promise<Status> waited;
  std::thread waiter([&] { waited.set_value(held_back[5].wait()); });
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(accepted(client), 4u) << "--max-inflight should hold the echoes back";

  ASSERT_EQ(first.stop(SIGKILL, 5s), 128 + SIGKILL);
  std::optional<DaemonProcess> second;
  second.emplace(std::vector<std::string>{}, first.runtime_dir());
  ASSERT_TRUE(second->ready()) << second->log();

  for (auto& h : accepted_ones) EXPECT_EQ(h.wait_for(5s), Status::kDaemonLost);
  for (int i = 0; i < 5; ++i) {
    ASSERT_EQ(held_back[i].wait_for(5s), Status::kOk) << i;
    EXPECT_EQ(text(held_back[i].result().data), env + std::to_string(i));
  }
  auto w = waited.get_future();
  ASSERT_EQ(w.wait_for(5s), std::future_status::ready) << "wait() still blocked";
  waiter.join();
  EXPECT_EQ(w.get(), Status::kOk);
  EXPECT_EQ(text(held_back[5].result().data), env + "5");
  auto cr = callback_result.get_future();
  ASSERT_EQ(cr.wait_for(5s), std::future_status::ready) << "the callback never ran";
  EXPECT_EQ(cr.get().status, Status::kOk);
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(callbacks.load(), 1) << "a callback ran more than once";
  const ClientStats st = client.stats();
  EXPECT_EQ(st.reconnects, 1u);
  EXPECT_EQ(st.resubmitted, 7u);
  EXPECT_EQ(st.lost, 4u);
}

// Threads submit and wait without pause while the daemon is stopped (`sig`) and restarted:
// every continuation ends exactly once (ok, or kDaemonLost for one the old daemon had
// taken), no submit fails, and each echo that completed ok carries its own bytes.
void restart_while_submitting(int sig) {
  DaemonProcess first({"--workers", "2"});
  ASSERT_TRUE(first.ready()) << first.log();
  auto c = Client::connect(options_for(first));
  ASSERT_TRUE(c.ok()) << c.status();
  Client& client = **c;
  constexpr int kThreads = 4;
  std::atomic<bool> stop{false};
  struct Tally {
    std::uint64_t submitted = 0, ok = 0, lost = 0, wrong = 0, other = 0, submit_failed = 0;
    std::uint64_t callbacks = 0, callback_twice = 0;
    std::string first_error;
  };
  std::vector<Tally> tallies(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Tally& y = tallies[t];
      std::uint64_t n = 0;
      while (!stop.load()) {
        // A window of 16: echo with the thread and sequence number, waited for in order.
        std::vector<std::pair<Handle, std::string>> window;
        for (int i = 0; i < 16; ++i, ++n) {
          std::string e = "t" + std::to_string(t) + "#" + std::to_string(n) +
                          (n % 2 ? std::string(40, '.') : std::string());
          auto h = client.submit("echo", bytes(e));
          if (!h.ok()) {
            if (y.submit_failed++ == 0) y.first_error = h.status().ToString();
            continue;
          }
          ++y.submitted;
          window.emplace_back(std::move(*h), std::move(e));
        }
        for (auto& [h, e] : window) {
          const auto st = h.wait_for(10s);
          if (st == Status::kOk) {
            ++y.ok;
            if (text(h.result().data) != e) ++y.wrong;
          } else if (st == Status::kDaemonLost) {
            ++y.lost;
          } else {
            ++y.other;
          }
        }
      }
    });
  }
  std::this_thread::sleep_for(200ms);
  auto join_all = [&] {
    stop.store(true);
    for (auto& th : threads) th.join();
  };
  const int status = first.stop(sig, 10s);
  if (status != (sig == SIGKILL ? 128 + SIGKILL : 0)) {
    join_all();
    FAIL() << "the first daemon ended with " << status << "\n" << first.log();
  }
  std::this_thread::sleep_for(50ms);  // submissions pile up while no daemon listens
  std::optional<DaemonProcess> second;
  second.emplace(std::vector<std::string>{"--workers", "2"}, first.runtime_dir());
  if (!second->ready()) {
    join_all();
    FAIL() << "the second daemon did not start\n" << second->log();
  }
  std::this_thread::sleep_for(200ms);
  join_all();
  Tally sum;
  for (const auto& y : tallies) {
    sum.submitted += y.submitted;
    sum.ok += y.ok;
    sum.lost += y.lost;
    sum.wrong += y.wrong;
    sum.other += y.other;
    sum.submit_failed += y.submit_failed;
    if (sum.first_error.empty()) sum.first_error = y.first_error;
  }
  EXPECT_EQ(sum.submit_failed, 0u) << sum.first_error;
  EXPECT_EQ(sum.ok + sum.lost, sum.submitted) << "continuations without exactly one outcome";
  EXPECT_EQ(sum.wrong, 0u);
  EXPECT_EQ(sum.other, 0u);
  EXPECT_GT(sum.ok, 0u);
  const ClientStats cs = client.stats();
  EXPECT_EQ(cs.reconnects, 1u);
  EXPECT_EQ(cs.lost, sum.lost);
  std::printf(
      "restart (signal %d) while submitting: %llu submitted, %llu ok, %llu daemon lost, "
      "%llu resubmitted\n",
      sig, static_cast<unsigned long long>(sum.submitted), static_cast<unsigned long long>(sum.ok),
      static_cast<unsigned long long>(sum.lost), static_cast<unsigned long long>(cs.resubmitted));
  // And the client works on after it.
  auto h = client.submit("noop");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->wait_for(5s), Status::kOk);
}

TEST(Reconnect, ShouldGiveEveryContinuationOneOutcomeWhenKilledWhileSubmitting) {
  restart_while_submitting(SIGKILL);
}

TEST(Reconnect, ShouldGiveEveryContinuationOneOutcomeWhenStoppedWhileSubmitting) {
  restart_while_submitting(SIGTERM);
}

TEST(Reconnect, ShouldFailEverythingClearlyWhenNoDaemonIsBackWithinTheBound) {
  DaemonProcess first({"--workers", "1", "--max-inflight", "1"});
  ASSERT_TRUE(first.ready()) << first.log();
  ClientOptions co = options_for(first);
  co.reconnect_wait = 300ms;
  auto c = Client::connect(co);
  ASSERT_TRUE(c.ok()) << c.status();
  Client& client = **c;
  auto taken = client.submit("sleep", {}, kTenSeconds);
  ASSERT_TRUE(taken.ok()) << taken.status();
  ASSERT_TRUE(wait_accepted(client, 1));
  auto waiting = client.submit("noop");  // held back in the ring: never accepted
  ASSERT_TRUE(waiting.ok()) << waiting.status();

  ASSERT_EQ(first.stop(SIGKILL, 5s), 128 + SIGKILL);
  const auto killed = Clock::now();
  EXPECT_EQ(taken->wait_for(5s), Status::kDaemonLost);
  EXPECT_EQ(waiting->wait_for(5s), Status::kDaemonLost);
  EXPECT_LT(Clock::now() - killed, 2s) << "the never-accepted one waited past the bound";
  EXPECT_TRUE(client.daemon_lost());

  const auto t0 = Clock::now();
  auto after = client.submit("noop");
  const auto took = Clock::now() - t0;
  ASSERT_FALSE(after.ok());
  EXPECT_EQ(after.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(after.status().message().find("daemon lost"), std::string_view::npos) << after.status();
  EXPECT_NE(after.status().message().find("reconnect_wait"), std::string_view::npos)
      << after.status();
  EXPECT_GE(took, 250ms);
  EXPECT_LT(took, 2s);
  auto call = client.call("noop");
  EXPECT_FALSE(call.ok());
  EXPECT_EQ(client.stats().lost, 2u);
}

// Evicted (the same daemon, still running, says Goodbye with `disconnected`): the client
// stays lost rather than come back and undo the eviction.
TEST(Reconnect, ShouldNotReconnectWhenTheDaemonDisconnectedTheClient) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  ClientOptions co = options_for(daemon);
  co.name = "evicted";
  auto c = Client::connect(co);
  ASSERT_TRUE(c.ok()) << c.status();
  Client& client = **c;
  ASSERT_EQ(client.submit("noop").value().wait(), Status::kOk);
  auto stub = control_stub(daemon.runtime_dir());
  v1::EvictClientRequest eq;
  eq.set_pid(::getpid());
  v1::EvictClientResponse er;
  auto st = stub->EvictClient(ctx().get(), eq, &er);
  ASSERT_TRUE(st.ok()) << st.error_message();
  for (const auto until = Clock::now() + 5s; !client.daemon_lost() && Clock::now() < until;)
    std::this_thread::sleep_for(5ms);
  ASSERT_TRUE(client.daemon_lost());
  EXPECT_NE(client.lost_reason().find("evicted"), std::string::npos) << client.lost_reason();
  const auto t0 = Clock::now();
  EXPECT_FALSE(client.submit("noop").ok());
  EXPECT_LT(Clock::now() - t0, 1s) << "a client that will not reconnect waited for a daemon";
  v1::ListClientsResponse lr;
  ASSERT_TRUE(stub->ListClients(ctx().get(), {}, &lr).ok());
  EXPECT_EQ(lr.clients_size(), 0) << "the evicted client registered again";
  EXPECT_EQ(client.stats().reconnects, 0u);
}

TEST(ConnectWait, ShouldWaitForADaemonThatIsStarting) {
  char tmpl[] = "/tmp/insideout-wait-XXXXXX";
  const std::string parent = ::mkdtemp(tmpl);
  const std::string dir = parent + "/rt";
  ClientOptions co;
  co.runtime_dir = dir;
  co.wait = 10s;
  auto connected = std::async(std::launch::async, [&] { return Client::connect(co); });
  std::this_thread::sleep_for(300ms);
  ASSERT_EQ(connected.wait_for(0s), std::future_status::timeout) << "connected to nothing";
  {
    DaemonProcess daemon({}, dir);
    ASSERT_TRUE(daemon.ready()) << daemon.log();
    ASSERT_EQ(connected.wait_for(10s), std::future_status::ready);
    auto c = connected.get();
    ASSERT_TRUE(c.ok()) << c.status();
    auto h = (*c)->submit("noop");
    ASSERT_TRUE(h.ok()) << h.status();
    EXPECT_EQ(h->wait_for(5s), Status::kOk);
  }
  std::error_code ec;
  std::filesystem::remove_all(parent, ec);
}

TEST(ConnectWait, ShouldFailAfterTheBoundWithTheUsualErrorAndHowLongItWaited) {
  ClientOptions co;
  co.socket_path = "/tmp/insideout-no-such-dir-" + std::to_string(::getpid()) + "/daemon.sock";
  co.wait = 200ms;
  const auto t0 = Clock::now();
  auto c = Client::connect(co);
  const auto took = Clock::now() - t0;
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(c.status().message().find("no insideoutd at"), std::string_view::npos) << c.status();
  EXPECT_NE(c.status().message().find("ClientOptions::wait"), std::string_view::npos) << c.status();
  EXPECT_GE(took, 200ms);
  EXPECT_LT(took, 2s);
  // Without a wait it fails at once.
  co.wait = 0ms;
  const auto t1 = Clock::now();
  EXPECT_FALSE(Client::connect(co).ok());
  EXPECT_LT(Clock::now() - t1, 100ms);
}

TEST(CtlWait, ShouldWaitForTheControlSocketOfADaemonThatIsStarting) {
  char tmpl[] = "/tmp/insideout-ctlwait-XXXXXX";
  const std::string parent = ::mkdtemp(tmpl);
  const std::string dir = parent + "/rt";
  // No daemon and no wait: unreachable at once.
  const auto t0 = Clock::now();
  const Command none = run_command(ctl_args(dir, {"status"}));
  EXPECT_EQ(none.exit_code, 3) << none.err;
  EXPECT_LT(Clock::now() - t0, 2s);
  // --wait=1 and no daemon: unreachable after about a second.
  const auto t1 = Clock::now();
  const Command late = run_command(ctl_args(dir, {"--wait=1", "status"}));
  EXPECT_EQ(late.exit_code, 3) << late.err;
  EXPECT_GE(Clock::now() - t1, 900ms);
  // --wait=10 and a daemon that starts 300 ms later: answered.
  auto waited = std::async(std::launch::async, [&] {
    return run_command(ctl_args(dir, {"--wait=10", "status"}));
  });
  std::this_thread::sleep_for(300ms);
  {
    DaemonProcess daemon({}, dir);
    ASSERT_TRUE(daemon.ready()) << daemon.log();
    ASSERT_EQ(waited.wait_for(15s), std::future_status::ready);
    const Command r = waited.get();
    EXPECT_EQ(r.exit_code, 0) << r.err;
  }
  std::error_code ec;
  std::filesystem::remove_all(parent, ec);
}

}  // namespace
}  // namespace insideout::testing
