// The serialized path from a process that does not use libinsideout's C++ API: the
// registration protocol spoken directly (SOCK_SEQPACKET, protobuf), version checks, and
// what a client sees when no daemon listens.
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <xxhash.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <thread>

#include "insideout/client.hpp"
#include "integration/raw_protocol.h"
#include "integration/workload.h"
#include "support/daemon_process.h"

namespace insideout::testing {
namespace {

using namespace std::chrono_literals;

// Sends Hello and returns the Welcome (or fails the test).
v1::Welcome handshake(RawConnection& conn) {
  EXPECT_EQ(conn.send(hello_message()), 0);
  v1::DaemonMessage m;
  const auto st = conn.recv(&m, 5s);
  EXPECT_EQ(st, v1::RecvStatus::kOk);
  EXPECT_TRUE(m.has_welcome()) << m.DebugString();
  return m.welcome();
}

// Takes Results until `n` tags have one or `until` passes; every message must be a Result,
// and no tag may have two.
void collect_results(RawConnection& conn, std::size_t n,
                     std::chrono::steady_clock::time_point until,
                     std::map<std::uint64_t, v1::Result>* got) {
  while (got->size() < n && std::chrono::steady_clock::now() < until) {
    v1::DaemonMessage m;
    const auto st = conn.recv(&m, 1s);
    if (!st) continue;
    ASSERT_EQ(*st, v1::RecvStatus::kOk);
    ASSERT_TRUE(m.has_result()) << m.DebugString();
    EXPECT_FALSE(got->count(m.result().tag())) << "two results for tag " << m.result().tag();
    (*got)[m.result().tag()] = m.result();
  }
}

TEST(SerializedProtocol, ShouldServeContinuationsToAProcessThatSpeaksTheProtocolDirectly) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  RawConnection conn(daemon.socket_path());
  ASSERT_TRUE(conn.valid()) << conn.error();
  const v1::Welcome w = handshake(conn);
  EXPECT_EQ(w.protocol_version(), shm::kProtocolVersion);
  EXPECT_EQ(w.layout_version(), shm::kLayoutVersion);
  EXPECT_EQ(w.segment_size(), 0u) << "no segment was asked for";
  EXPECT_EQ(w.daemon_pid(), static_cast<std::uint32_t>(daemon.pid()));
  EXPECT_GE(w.workers(), 1u);
  EXPECT_NE(w.client_id(), 0u);
  std::map<std::string, v1::FunctionInfo> fns;
  for (const auto& f : w.functions()) fns[f.name()] = f;
  for (const char* name : {"noop", "echo", "checksum", "fanout", "chain", "sleep"}) {
    EXPECT_TRUE(fns.count(name)) << "Welcome lists no " << name;
  }
  EXPECT_EQ(fns["fanout"].max_arg(), 1ull << 30);

  std::string big(100'000, '\0');
  std::mt19937_64 rng(3);
  for (auto& ch : big) ch = static_cast<char>(rng());
  struct Want {
    v1::Status status;
    std::uint64_t value;
    std::string data;
    std::string error_has;
  };
  std::map<std::uint64_t, Want> want;
  auto submit = [&](std::uint64_t tag, const std::string& fn, const std::string& env,
                    std::uint64_t arg, Want w) {
    ASSERT_EQ(conn.send(submit_message(fn, env, arg, tag)), 0);
    want[tag] = std::move(w);
  };
  // All in flight at once; results come back in any order, matched by tag.
  submit(1, "echo", "hello, protocol", 0, {v1::STATUS_OK, 15, "hello, protocol", ""});
  submit(2, "checksum", big, 0, {v1::STATUS_OK, XXH3_64bits(big.data(), big.size()), "", ""});
  submit(3, "no-such-function", "x", 0, {v1::STATUS_UNKNOWN_FUNCTION, 0, "", "no-such-function"});
  submit(4, "echo", "", 0, {v1::STATUS_OK, 0, "", ""});
  submit(5, "checksum", "", 0, {v1::STATUS_OK, XXH3_64bits(nullptr, 0), "", ""});
  submit(6, "fanout", "", 1ull << 32,
         {v1::STATUS_INVALID_ARGUMENT, 0, "", "argument out of range"});
  submit(7, "chain", "", 1000, {v1::STATUS_OK, 1000, "", ""});
  submit(8, "fanout", "", 5000, {v1::STATUS_OK, 5000, "", ""});
  submit(9, "sleep", "", 1'000'000, {v1::STATUS_OK, 0, "", ""});
  submit(10, "noop", "", 0, {v1::STATUS_OK, 0, "", ""});
  submit(11, "echo", big, 0, {v1::STATUS_OK, big.size(), big, ""});
  submit(12, "chain", "", 0, {v1::STATUS_INVALID_ARGUMENT, 0, "", "argument out of range"});

  std::map<std::uint64_t, v1::Result> got;
  collect_results(conn, want.size(), std::chrono::steady_clock::now() + 10s, &got);
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [tag, w] : want) {
    SCOPED_TRACE("tag " + std::to_string(tag));
    ASSERT_TRUE(got.count(tag));
    const v1::Result& r = got[tag];
    EXPECT_EQ(r.status(), w.status) << r.error();
    EXPECT_EQ(r.value(), w.value);
    EXPECT_EQ(r.data(), w.data);
    if (w.status == v1::STATUS_OK) {
      EXPECT_TRUE(r.error().empty()) << r.error();
    } else {
      EXPECT_NE(r.error().find(w.error_has), std::string::npos) << r.error();
    }
  }
  // Nothing more comes: exactly one result each.
  v1::DaemonMessage extra;
  EXPECT_FALSE(conn.recv(&extra, 100ms).has_value()) << extra.DebugString();
}

std::int64_t monotonic_ns_from_now(std::chrono::nanoseconds d) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             (std::chrono::steady_clock::now() + d).time_since_epoch())
      .count();
}

// Issue 9's deadlines and cancellation on the serialized path: a continuation past its
// deadline fails whether parked, running or still queued; a Cancel ends a parked or a
// running one; exactly one Result each; a Cancel of a tag with nothing in flight is
// ignored; and Client::call()'s timeout is the continuation's deadline.
TEST(SerializedProtocol, ShouldCutOffAtTheDeadlineAndOnCancelWithOneResultEach) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  RawConnection conn(daemon.socket_path());
  ASSERT_TRUE(conn.valid()) << conn.error();
  handshake(conn);
  const std::uint64_t kForever = 1ull << 40;   // a chain's steps: hours
  const std::uint64_t kLong = 60'000'000'000;  // a sleep of 60 s
  auto submit = [&](std::uint64_t tag, const char* fn, std::uint64_t arg, std::int64_t deadline) {
    v1::ClientMessage m = submit_message(fn, "", arg, tag);
    m.mutable_submit()->set_deadline_ns(deadline);
    ASSERT_EQ(conn.send(m), 0);
  };
  const auto start = std::chrono::steady_clock::now();
  submit(1, "sleep", kLong, monotonic_ns_from_now(150ms));     // parked past it
  submit(2, "chain", kForever, monotonic_ns_from_now(150ms));  // running past it
  submit(3, "noop", 0, monotonic_ns_from_now(-1ms));           // expired when queued
  submit(4, "sleep", 1'000'000, monotonic_ns_from_now(10s));   // done well before it
  submit(5, "sleep", kLong, 0);                                // parked, then cancelled
  submit(6, "chain", kForever, 0);                             // running, then cancelled
  std::this_thread::sleep_for(50ms);
  for (std::uint64_t tag : {5ull, 6ull, 99ull}) {  // 99: nothing in flight, ignored
    v1::ClientMessage m;
    m.mutable_cancel()->set_tag(tag);
    ASSERT_EQ(conn.send(m), 0);
  }
  submit(7, "noop", 0, 0);  // the connection still serves
  const std::map<std::uint64_t, v1::Status> want = {{1, v1::STATUS_DEADLINE_EXCEEDED},
                                                    {2, v1::STATUS_DEADLINE_EXCEEDED},
                                                    {3, v1::STATUS_DEADLINE_EXCEEDED},
                                                    {4, v1::STATUS_OK},
                                                    {5, v1::STATUS_CANCELLED},
                                                    {6, v1::STATUS_CANCELLED},
                                                    {7, v1::STATUS_OK}};
  std::map<std::uint64_t, v1::Result> got;
  collect_results(conn, want.size(), start + 20s, &got);
  // Promptly: nothing waited out its 60 s sleep or its endless chain.
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
  for (const auto& [tag, status] : want) {
    SCOPED_TRACE("tag " + std::to_string(tag));
    ASSERT_TRUE(got.count(tag)) << "no result";
    EXPECT_EQ(got[tag].status(), status) << got[tag].error();
  }
  EXPECT_NE(got[5].error().find("client"), std::string::npos) << got[5].error();
  v1::DaemonMessage extra;
  EXPECT_FALSE(conn.recv(&extra, 100ms).has_value()) << extra.DebugString();

  // The library's call(): its timeout ends the continuation in the daemon too.
  ClientOptions o;
  o.socket_path = daemon.socket_path();
  o.want_segment = false;
  auto c = Client::connect(o);
  ASSERT_TRUE(c.ok()) << c.status();
  const auto t0 = std::chrono::steady_clock::now();
  auto r = (*c)->call("sleep", "", kLong, 200ms);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, Status::kDeadlineExceeded) << r->error;
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
}

TEST(SerializedProtocol, ShouldRefuseAMismatchedProtocolVersionNamingBothVersions) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  struct Case {
    std::uint32_t protocol, layout;
    std::string client_says, daemon_says;
  };
  const std::string dp = std::to_string(shm::kProtocolVersion),
                    dl = std::to_string(shm::kLayoutVersion);
  for (const Case& c : {Case{99, shm::kLayoutVersion, "protocol 99", "protocol " + dp},
                        Case{shm::kProtocolVersion, 77, "layout 77", "layout " + dl}}) {
    SCOPED_TRACE(c.client_says);
    RawConnection conn(daemon.socket_path());
    ASSERT_TRUE(conn.valid()) << conn.error();
    ASSERT_EQ(conn.send(hello_message(c.protocol, c.layout)), 0);
    v1::DaemonMessage m;
    ASSERT_EQ(conn.recv(&m, 5s), v1::RecvStatus::kOk);
    ASSERT_TRUE(m.has_refused()) << m.DebugString();
    const std::string& why = m.refused().reason();
    EXPECT_NE(why.find(c.client_says), std::string::npos) << why;
    EXPECT_NE(why.find(c.daemon_says), std::string::npos) << why;
    EXPECT_EQ(m.refused().daemon_protocol_version(), shm::kProtocolVersion);
    EXPECT_EQ(m.refused().daemon_layout_version(), shm::kLayoutVersion);
    // Then the daemon hangs up.
    v1::DaemonMessage after;
    EXPECT_EQ(conn.recv(&after, 5s), v1::RecvStatus::kClosed) << after.DebugString();
  }
  // And serves everyone else.
  RawConnection good(daemon.socket_path());
  ASSERT_TRUE(good.valid());
  handshake(good);
  EXPECT_TRUE(daemon.alive());
}

TEST(SerializedProtocol, ShouldAnswerAndHangUpOnAContinuationBeforeHello) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  RawConnection conn(daemon.socket_path());
  ASSERT_TRUE(conn.valid()) << conn.error();
  ASSERT_EQ(conn.send(submit_message("echo", "too early", 0, 42)), 0);
  v1::DaemonMessage m;
  ASSERT_EQ(conn.recv(&m, 5s), v1::RecvStatus::kOk);
  ASSERT_TRUE(m.has_result()) << m.DebugString();
  EXPECT_EQ(m.result().tag(), 42u);
  EXPECT_EQ(m.result().status(), v1::STATUS_INVALID_ARGUMENT);
  EXPECT_NE(m.result().error().find("Hello"), std::string::npos) << m.result().error();
  EXPECT_EQ(conn.recv(&m, 5s), v1::RecvStatus::kClosed);
  // The daemon is unharmed (a sanitized build catches a loop that kept using the
  // connection it had just closed): it serves the next caller.
  RawConnection next(daemon.socket_path());
  ASSERT_TRUE(next.valid()) << next.error();
  handshake(next);
  ASSERT_EQ(next.send(submit_message("echo", "after", 0, 7)), 0);
  ASSERT_EQ(next.recv(&m, 5s), v1::RecvStatus::kOk);
  ASSERT_TRUE(m.has_result()) << m.DebugString();
  EXPECT_EQ(m.result().data(), "after");
  EXPECT_TRUE(daemon.alive()) << daemon.log();
}

TEST(SerializedProtocol, ShouldReportUnavailableNamingTheSocketPathWhenNoDaemonRuns) {
  // A directory where no daemon ever ran ...
  char tmpl[] = "/tmp/insideout-nodaemon-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string empty_dir = tmpl;
  // ... and one whose daemon was killed, leaving its socket file behind.
  DaemonProcess dead;
  ASSERT_TRUE(dead.ready()) << dead.log();
  ASSERT_EQ(dead.stop(SIGKILL, 5s), 128 + SIGKILL);
  for (const std::string& dir : {empty_dir, dead.runtime_dir()}) {
    for (bool want_segment : {true, false}) {
      ClientOptions co;
      co.runtime_dir = dir;
      co.want_segment = want_segment;
      auto c = Client::connect(co);
      ASSERT_FALSE(c.ok());
      EXPECT_EQ(c.status().code(), absl::StatusCode::kUnavailable) << c.status();
      EXPECT_NE(c.status().message().find(dir + "/daemon.sock"), std::string::npos) << c.status();
    }
  }
  // INSIDEOUT_RUNTIME_DIR picks the directory when the options do not.
  ASSERT_EQ(::setenv("INSIDEOUT_RUNTIME_DIR", empty_dir.c_str(), 1), 0);
  auto c = Client::connect();
  ::unsetenv("INSIDEOUT_RUNTIME_DIR");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnavailable) << c.status();
  EXPECT_NE(c.status().message().find(empty_dir + "/daemon.sock"), std::string::npos) << c.status();
  std::filesystem::remove_all(empty_dir);
}

}  // namespace
}  // namespace insideout::testing
