// Drain is a state the control plane shows and undoes: while drained, work offered on
// any path (a client's ring, the serialized protocol, gRPC Submit) is refused at once
// with STATUS_DRAINING, clients still register, and Resume serves again. Also the
// control plane's Submit: a bounded number wait at once, and shutdown does not wait
// for them.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "insideout/client.hpp"
#include "integration/control_support.h"
#include "integration/raw_protocol.h"
#include "support/daemon_process.h"

namespace insideout::testing {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

v1::DaemonState state_of(v1::Scheduler::Stub& stub) {
  v1::GetInfoResponse r;
  const auto st = stub.GetInfo(ctx().get(), {}, &r);
  EXPECT_TRUE(st.ok()) << st.error_message();
  return r.state();
}

v1::Result serialized(RawConnection& conn, const std::string& fn, const std::string& env,
                      std::uint64_t arg, std::uint64_t tag) {
  EXPECT_EQ(conn.send(submit_message(fn, env, arg, tag)), 0);
  v1::DaemonMessage m;
  const auto st = conn.recv(&m, 5s);
  EXPECT_EQ(st, v1::RecvStatus::kOk);
  EXPECT_TRUE(m.has_result()) << m.DebugString();
  EXPECT_EQ(m.result().tag(), tag);
  return m.result();
}

TEST(Drain, ShouldRefuseWorkWithDrainingWhileDrainedAndServeAgainAfterResume) {
  DaemonProcess daemon({"--workers", "2"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto stub = control_stub(daemon.runtime_dir());
  EXPECT_EQ(state_of(*stub), v1::DAEMON_STATE_SERVING);

  v1::DrainRequest dq;
  dq.set_timeout_ms(5000);
  v1::DrainResponse dr;
  auto st = stub->Drain(ctx().get(), dq, &dr);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_TRUE(dr.drained());
  EXPECT_EQ(state_of(*stub), v1::DAEMON_STATE_DRAINED);
  const Command status = run_command(ctl_args(daemon.runtime_dir(), {"status"}));
  EXPECT_EQ(status.exit_code, 0) << status.err;
  EXPECT_NE(status.out.find("state drained"), std::string::npos) << status.out;

  // A new client still registers; what it submits is refused at once, not stranded.
  ClientOptions co;
  co.runtime_dir = daemon.runtime_dir();
  auto c = Client::connect(co);
  ASSERT_TRUE(c.ok()) << c.status();
  std::vector<Handle> hs;
  for (int i = 0; i < 100; ++i) {
    auto h = (*c)->submit(i % 2 ? "noop" : "echo", std::as_bytes(std::span("drained", 7)));
    ASSERT_TRUE(h.ok()) << h.status();
    hs.push_back(std::move(*h));
  }
  for (auto& h : hs) {
    const auto got = h.wait_for(5s);
    ASSERT_TRUE(got.has_value()) << "a handle submitted while drained never completed";
    EXPECT_EQ(*got, Status::kDraining) << h.result().error();
  }
  EXPECT_NE(std::string(shm::status_name(Status::kDraining)), "unknown status");

  // The serialized protocol says so too (not "invalid argument: shutting down").
  RawConnection raw(daemon.socket_path());
  ASSERT_TRUE(raw.valid()) << raw.error();
  ASSERT_EQ(raw.send(hello_message()), 0);
  v1::DaemonMessage m;
  ASSERT_EQ(raw.recv(&m, 5s), v1::RecvStatus::kOk);
  ASSERT_TRUE(m.has_welcome()) << m.DebugString();
  const v1::Result r = serialized(raw, "echo", "hi", 0, 1);
  EXPECT_EQ(r.status(), v1::STATUS_DRAINING) << r.error();
  EXPECT_NE(r.error().find("resume"), std::string::npos) << r.error();

  // And gRPC Submit.
  v1::SubmitRequest sq;
  sq.set_function("echo");
  sq.set_env("hi");
  v1::SubmitResponse sr;
  st = stub->Submit(ctx().get(), sq, &sr);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(sr.status(), v1::STATUS_DRAINING) << sr.error();
  EXPECT_EQ(sr.status_name(), "STATUS_DRAINING");

  // Resume: everything works again, on the same connections.
  const Command resumed = run_command(ctl_args(daemon.runtime_dir(), {"resume"}));
  EXPECT_EQ(resumed.exit_code, 0) << resumed.err;
  EXPECT_NE(resumed.out.find("resumed"), std::string::npos) << resumed.out;
  EXPECT_EQ(state_of(*stub), v1::DAEMON_STATE_SERVING);
  auto h = (*c)->submit("noop");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->wait_for(5s), Status::kOk) << h->result().error();
  const v1::Result r2 = serialized(raw, "echo", "again", 0, 2);
  EXPECT_EQ(r2.status(), v1::STATUS_OK) << r2.error();
  EXPECT_EQ(r2.data(), "again");
  sr.Clear();
  st = stub->Submit(ctx().get(), sq, &sr);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(sr.status(), v1::STATUS_OK) << sr.error();
}

TEST(Drain, ShouldCutParkedWorkOffWithDrainingAndShowDrainingUntilItEnds) {
  DaemonProcess daemon({"--workers", "2"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto stub = control_stub(daemon.runtime_dir());
  ClientOptions co;
  co.runtime_dir = daemon.runtime_dir();
  auto c = Client::connect(co);
  ASSERT_TRUE(c.ok()) << c.status();
  // A long sleep (parked: cut off) and a chain that runs on (it finishes).
  auto sleeping = (*c)->submit("sleep", {}, 60'000'000'000ull).value();
  auto marker = (*c)->submit("noop").value();
  ASSERT_EQ(marker.wait_for(5s), Status::kOk);
  v1::DrainResponse dr;
  auto st = stub->Drain(ctx().get(), {}, &dr);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_TRUE(dr.drained());
  const auto got = sleeping.wait_for(5s);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(*got, Status::kDraining) << sleeping.result().error();
  EXPECT_EQ(state_of(*stub), v1::DAEMON_STATE_DRAINED);
  v1::ResumeResponse rr;
  st = stub->Resume(ctx().get(), {}, &rr);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_TRUE(rr.was_draining());
  st = stub->Resume(ctx().get(), {}, &rr);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_FALSE(rr.was_draining()) << "a second resume changes nothing";
}

TEST(Drain, ShouldLetOnlyAdminsResume) {
  DaemonProcess daemon({"--client-group", "65534"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  ASSERT_EQ(::chmod(daemon.runtime_dir().c_str(), 0711), 0);  // nobody may reach the socket
  auto a =
      std::vector<std::string>{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"};
  auto rest = ctl_args(daemon.runtime_dir(), {"resume"});
  a.insert(a.end(), rest.begin(), rest.end());
  const Command r = run_command(a);
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_NE(r.err.find("PERMISSION_DENIED"), std::string::npos) << r.err;
}

TEST(Drain, ShouldLetAMemberOfTheAdminGroupBySupplementaryGroupResume) {
  // Membership as the kernel told at accept (SO_PEERGROUPS): 4242 is not nobody's
  // primary group, only a supplementary one.
  DaemonProcess daemon({"--client-group", "65534", "--admin-group", "4242"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  ASSERT_EQ(::chmod(daemon.runtime_dir().c_str(), 0711), 0);
  auto a =
      std::vector<std::string>{"setpriv", "--reuid=65534", "--regid=65534", "--groups=4242", "--"};
  auto rest = ctl_args(daemon.runtime_dir(), {"resume"});
  a.insert(a.end(), rest.begin(), rest.end());
  const Command r = run_command(a);
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("serving"), std::string::npos) << r.out;
}

TEST(ControlSubmit, ShouldRefuseSubmitsBeyondItsCapWithResourceExhausted) {
  DaemonProcess daemon({"--max-control-submits", "2"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto stub = control_stub(daemon.runtime_dir());
  auto sleep_call = [&] {
    v1::SubmitRequest q;
    q.set_function("sleep");
    q.set_arg(3'000'000'000ull);
    v1::SubmitResponse r;
    return stub->Submit(ctx(20s).get(), q, &r);
  };
  auto first = std::async(std::launch::async, sleep_call);
  auto second = std::async(std::launch::async, sleep_call);
  // Both are waiting once both sleeps are parked.
  const auto until = Clock::now() + 5s;
  for (;;) {
    v1::Stats s;
    ASSERT_TRUE(stub->GetStats(ctx().get(), {}, &s).ok());
    if (s.timer_parks() >= 2 || Clock::now() > until) break;
    std::this_thread::sleep_for(10ms);
  }
  const grpc::Status third = sleep_call();
  EXPECT_EQ(third.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << third.error_message();
  EXPECT_NE(third.error_message().find("max 2"), std::string::npos) << third.error_message();
  EXPECT_TRUE(first.get().ok());
  EXPECT_TRUE(second.get().ok());
}

TEST(ControlSubmit, ShouldNotHoldShutdownForAWaitingSubmit) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto stub = control_stub(daemon.runtime_dir());
  auto waiting = std::async(std::launch::async, [&] {
    v1::SubmitRequest q;
    q.set_function("sleep");
    q.set_arg(50'000'000'000ull);  // 50 s
    q.set_timeout_ms(60'000);
    v1::SubmitResponse r;
    return stub->Submit(ctx(90s).get(), q, &r);
  });
  const auto until = Clock::now() + 5s;
  for (;;) {
    v1::Stats s;
    ASSERT_TRUE(stub->GetStats(ctx().get(), {}, &s).ok());
    if (s.timer_parks() >= 1 || Clock::now() > until) break;
    std::this_thread::sleep_for(10ms);
  }
  const auto t0 = Clock::now();
  EXPECT_EQ(daemon.stop(SIGTERM, 30s), 0) << daemon.log();
  EXPECT_LT(Clock::now() - t0, 10s) << "shutdown waited for the Submit call";
  ASSERT_EQ(waiting.wait_for(10s), std::future_status::ready);
  const grpc::Status st = waiting.get();
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
}

}  // namespace
}  // namespace insideout::testing
