// The registration socket cannot be exhausted: connections are bounded in all and per
// uid, a connection that never says Hello is closed after a deadline, the listener does
// not spin when the daemon is out of descriptors, and the serialized path answers every
// continuation it accepted (queueing answers for a slow reader) within bounded memory.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "insideout/client.hpp"
#include "integration/raw_protocol.h"
#include "support/daemon_process.h"

namespace insideout::testing {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

v1::DaemonMessage expect_message(RawConnection& conn, std::chrono::milliseconds timeout = 5s) {
  v1::DaemonMessage m;
  const auto st = conn.recv(&m, timeout);
  EXPECT_TRUE(st.has_value()) << "nothing within " << timeout.count() << " ms";
  if (st) {
    EXPECT_EQ(*st, v1::RecvStatus::kOk);
  }
  return m;
}

// CPU time (user + system) the process has used, in clock ticks.
long cpu_ticks(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto paren = s.rfind(')');
  if (paren == std::string::npos) return -1;
  std::istringstream ss(s.substr(paren + 2));
  std::string tok;
  long utime = 0, stime = 0;
  for (int field = 3; ss >> tok; ++field) {
    if (field == 14) utime = std::stol(tok);
    if (field == 15) {
      stime = std::stol(tok);
      break;
    }
  }
  return utime + stime;
}

// This process may hold `n` descriptors (tests run as root and may raise the hard limit).
void allow_descriptors(rlim_t n) {
  rlimit r{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &r), 0);
  if (r.rlim_cur >= n) return;
  r.rlim_cur = n;
  if (r.rlim_max < n) r.rlim_max = n;
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &r), 0) << std::strerror(errno);
}

TEST(RegistrationLimits, ShouldAnswerEveryEchoOfAClientThatReadsOnlyAfterSendingThemAll) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  RawConnection conn(daemon.socket_path());
  ASSERT_TRUE(conn.valid()) << conn.error();
  ASSERT_EQ(conn.send(hello_message()), 0);
  ASSERT_TRUE(expect_message(conn).has_welcome());
  constexpr int kEchos = 4000;
  const std::string env(1024, 'e');
  for (int i = 0; i < kEchos; ++i) {
    // The daemon reads while the answers pile up unread: sends may block for a while.
    ASSERT_EQ(conn.send(submit_message("echo", env, 0, static_cast<std::uint64_t>(i + 1))), 0)
        << "echo " << i;
  }
  std::map<std::uint64_t, v1::Result> got;
  int backpressure = 0;
  const auto deadline = Clock::now() + 30s;
  while (got.size() < static_cast<std::size_t>(kEchos) && Clock::now() < deadline) {
    v1::DaemonMessage m;
    const auto st = conn.recv(&m, 2s);
    if (!st) continue;
    ASSERT_EQ(*st, v1::RecvStatus::kOk);
    ASSERT_TRUE(m.has_result()) << m.DebugString();
    const v1::Result& r = m.result();
    EXPECT_FALSE(got.count(r.tag())) << "two answers for tag " << r.tag();
    if (r.status() == v1::STATUS_BACKPRESSURE) {
      ++backpressure;
      EXPECT_NE(r.error().find("backpressure"), std::string::npos) << r.error();
    } else {
      EXPECT_EQ(r.status(), v1::STATUS_OK) << r.error();
      EXPECT_EQ(r.data(), env);
    }
    got[r.tag()] = r;
  }
  EXPECT_EQ(got.size(), static_cast<std::size_t>(kEchos))
      << "answers lost: " << kEchos - static_cast<int>(got.size()) << "\n"
      << daemon.log().substr(0, 4000);
  RecordProperty("backpressure_answers", backpressure);
  v1::DaemonMessage extra;
  EXPECT_FALSE(conn.recv(&extra, 100ms).has_value()) << extra.DebugString();
}

TEST(RegistrationLimits, ShouldRefuseSerializedWorkBeyondTheConnectionsByteBound) {
  // 1 MiB per connection; each sleep carries 100 KiB: ten fit, the rest are refused at
  // submission with backpressure, and every one gets exactly one answer.
  DaemonProcess daemon({"--max-serial-bytes", std::to_string(1 << 20)});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  RawConnection conn(daemon.socket_path());
  ASSERT_TRUE(conn.valid()) << conn.error();
  ASSERT_EQ(conn.send(hello_message()), 0);
  ASSERT_TRUE(expect_message(conn).has_welcome());
  const std::string env(100 * 1024, 's');
  constexpr int kSleeps = 20;
  for (int i = 0; i < kSleeps; ++i) {
    ASSERT_EQ(
        conn.send(submit_message("sleep", env, 300'000'000, static_cast<std::uint64_t>(i + 1))), 0);
  }
  std::map<std::uint64_t, v1::Result> got;
  const auto deadline = Clock::now() + 20s;
  while (got.size() < kSleeps && Clock::now() < deadline) {
    v1::DaemonMessage m;
    if (conn.recv(&m, 1s) != v1::RecvStatus::kOk) continue;
    ASSERT_TRUE(m.has_result()) << m.DebugString();
    EXPECT_FALSE(got.count(m.result().tag()));
    got[m.result().tag()] = m.result();
  }
  ASSERT_EQ(got.size(), static_cast<std::size_t>(kSleeps));
  int ok = 0, refused = 0;
  for (const auto& [tag, r] : got) {
    if (r.status() == v1::STATUS_OK) {
      ++ok;
    } else {
      ++refused;
      EXPECT_EQ(r.status(), v1::STATUS_BACKPRESSURE) << r.error();
      EXPECT_NE(r.error().find("bytes"), std::string::npos) << r.error();
    }
  }
  EXPECT_GE(ok, 9);
  EXPECT_LE(ok, 10);
  EXPECT_EQ(ok + refused, kSleeps);
}

TEST(RegistrationLimits, ShouldRefuseAConnectionBeyondThePerUidLimitSayingWhy) {
  DaemonProcess daemon({"--max-connections-per-uid", "3"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  std::this_thread::sleep_for(200ms);  // the readiness probe's connection is gone
  std::vector<std::unique_ptr<RawConnection>> held;
  for (int i = 0; i < 3; ++i) {
    held.push_back(std::make_unique<RawConnection>(daemon.socket_path()));
    ASSERT_TRUE(held.back()->valid()) << held.back()->error();
  }
  // Give the daemon time to accept them (they never send Hello).
  std::this_thread::sleep_for(200ms);
  RawConnection fourth(daemon.socket_path());
  ASSERT_TRUE(fourth.valid()) << fourth.error();
  const v1::DaemonMessage m = expect_message(fourth);
  ASSERT_TRUE(m.has_refused()) << m.DebugString();
  EXPECT_NE(
      m.refused().reason().find("too many connections from uid " + std::to_string(::getuid())),
      std::string::npos)
      << m.refused().reason();
  EXPECT_NE(m.refused().reason().find("max 3"), std::string::npos) << m.refused().reason();
  v1::DaemonMessage after;
  EXPECT_EQ(fourth.recv(&after, 5s), v1::RecvStatus::kClosed);

  // One goes away: there is room for a client again.
  held.pop_back();
  std::this_thread::sleep_for(200ms);
  RawConnection fifth(daemon.socket_path());
  ASSERT_TRUE(fifth.valid());
  ASSERT_EQ(fifth.send(hello_message()), 0);
  EXPECT_TRUE(expect_message(fifth).has_welcome());
}

TEST(RegistrationLimits, ShouldCloseConnectionsThatSendNoHelloWhileAProperClientRegisters) {
  constexpr int kIdle = 2000;
  allow_descriptors(kIdle + 256);
  DaemonProcess daemon({"--hello-timeout-ms", "2000", "--max-connections-per-uid", "4096"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  std::vector<std::unique_ptr<RawConnection>> idle;
  for (int i = 0; i < kIdle; ++i) {
    idle.push_back(std::make_unique<RawConnection>(daemon.socket_path()));
    ASSERT_TRUE(idle.back()->valid()) << "connection " << i << ": " << idle.back()->error();
  }
  // Meanwhile a real client registers and works.
  ClientOptions co;
  co.runtime_dir = daemon.runtime_dir();
  auto c = Client::connect(co);
  ASSERT_TRUE(c.ok()) << c.status() << "\n" << daemon.log().substr(0, 4000);
  auto h = (*c)->submit("noop");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->wait_for(5s), Status::kOk);

  // Every silent one is closed once its deadline has passed.
  int closed = 0;
  for (auto& conn : idle) {
    v1::DaemonMessage m;
    closed += conn->recv(&m, 10s) == v1::RecvStatus::kClosed;
  }
  EXPECT_EQ(closed, kIdle) << daemon.log().substr(0, 4000);
  EXPECT_NE(daemon.log().find("sent no Hello within 2000 ms"), std::string::npos);
  // The registered client is not one of them.
  auto h2 = (*c)->submit("noop");
  ASSERT_TRUE(h2.ok()) << h2.status();
  EXPECT_EQ(h2->wait_for(5s), Status::kOk);
  EXPECT_FALSE((*c)->daemon_lost()) << (*c)->lost_reason();
}

TEST(RegistrationLimits, ShouldNotSpinWhenOutOfDescriptorsAndAcceptAgainOnceOneIsFree) {
  // The daemon runs under a low hard limit (it raises its soft limit to the hard one),
  // set by a wrapper: this process may not raise its own hard limit again.
  const std::string wrapper = "/tmp/insideout-lowfd-" + std::to_string(::getpid()) + ".sh";
  {
    std::ofstream w(wrapper);
    w << "#!/bin/sh\nulimit -n 128 || exit 99\nexec '" << insideoutd_path() << "' \"$@\"\n";
  }
  ASSERT_EQ(::chmod(wrapper.c_str(), 0700), 0);
  const char* outer = std::getenv("INSIDEOUT_TEST_DAEMON");
  const std::string restore = outer != nullptr ? outer : "";
  ASSERT_EQ(::setenv("INSIDEOUT_TEST_DAEMON", wrapper.c_str(), 1), 0);
  auto daemon = std::make_unique<DaemonProcess>(
      std::vector<std::string>{"--hello-timeout-ms", "60000", "--workers", "1"});
  if (restore.empty()) {
    ::unsetenv("INSIDEOUT_TEST_DAEMON");
  } else {
    ::setenv("INSIDEOUT_TEST_DAEMON", restore.c_str(), 1);
  }
  ::unlink(wrapper.c_str());
  ASSERT_TRUE(daemon->ready()) << daemon->log();
  // More connections than it has descriptors: the rest wait in the backlog (128 deep,
  // so that a blocking connect() never waits for room).
  std::vector<std::unique_ptr<RawConnection>> conns;
  for (int i = 0; i < 150; ++i) {
    conns.push_back(std::make_unique<RawConnection>(daemon->socket_path()));
    ASSERT_TRUE(conns.back()->valid()) << conns.back()->error();
  }
  std::this_thread::sleep_for(300ms);
  const long t0 = cpu_ticks(daemon->pid());
  std::this_thread::sleep_for(1s);
  const long used = cpu_ticks(daemon->pid()) - t0;
  // A spinning loop burns ~100 ticks a second; an idle one next to nothing.
  EXPECT_LT(used, 20) << "the daemon used " << used << " ticks in 1 s with its listener full";
  EXPECT_NE(daemon->log().find("not accepting until a connection closes"), std::string::npos)
      << daemon->log().substr(0, 4000);
  // Free descriptors: the daemon takes connections again, and a client registers.
  conns.clear();
  ClientOptions co;
  co.runtime_dir = daemon->runtime_dir();
  std::unique_ptr<Client> client;
  for (int i = 0; i < 50 && !client; ++i) {
    auto c = Client::connect(co);
    if (c.ok())
      client = std::move(*c);
    else
      std::this_thread::sleep_for(100ms);
  }
  ASSERT_TRUE(client) << daemon->log().substr(0, 4000);
  auto h = client->submit("noop");
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->wait_for(5s), Status::kOk);
}

TEST(RegistrationLimits, ShouldRefuseMaxClientsBeyondWhatATaskCanName) {
  const CommandResult r =
      run_insideoutd({"--max-clients", "70000", "--runtime-dir", "/nonexistent"});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--max-clients 70000 is out of range: 1..65535"), std::string::npos)
      << r.output;
}

}  // namespace
}  // namespace insideout::testing
