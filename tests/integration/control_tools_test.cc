// The control plane from the outside: clients listed and evicted, the serialized Submit,
// insideoutctl's exit codes, JSON and the counters area read directly (and as
// Prometheus text), health and shutdown, a Python client generated from the .proto by
// stock tooling, and `insideoutctl top` in a real terminal (tmux).
#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "insideout/client.hpp"
#include "integration/control_support.h"
#include "integration/raw_protocol.h"
#include "support/daemon_process.h"

namespace insideout::testing {
namespace {

using namespace std::chrono_literals;

TEST(ControlTools, ShouldListAClientAndEvictIt) {
  DaemonProcess daemon({"--workers", "2"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  ClientOptions o;
  o.runtime_dir = daemon.runtime_dir();
  o.name = "listed";
  auto client = Client::connect(o);
  ASSERT_TRUE(client.ok()) << client.status();
  for (int i = 0; i < 10; ++i) ASSERT_EQ((*client)->submit("noop").value().wait(), Status::kOk);

  auto stub = control_stub(daemon.runtime_dir());
  v1::ListClientsResponse lr;
  ASSERT_TRUE(stub->ListClients(ctx().get(), {}, &lr).ok());
  ASSERT_EQ(lr.clients_size(), 1);
  EXPECT_EQ(lr.clients(0).pid(), ::getpid());
  EXPECT_EQ(lr.clients(0).uid(), ::getuid());
  EXPECT_EQ(lr.clients(0).name(), "listed");
  EXPECT_EQ(lr.clients(0).pool(), "default");
  EXPECT_EQ(lr.clients(0).counters().completed(), 10u);

  v1::EvictClientRequest eq;
  eq.set_pid(::getpid());
  v1::EvictClientResponse er;
  auto st = stub->EvictClient(ctx().get(), eq, &er);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(er.evicted(), 1u);
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (!(*client)->daemon_lost() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(5ms);
  EXPECT_TRUE((*client)->daemon_lost()) << "the evicted client did not notice";
  ASSERT_TRUE(stub->ListClients(ctx().get(), {}, &lr).ok());
  EXPECT_EQ(lr.clients_size(), 0);

  eq.set_pid(::getpid());
  EXPECT_EQ(stub->EvictClient(ctx().get(), eq, &er).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST(ControlTools, ShouldRegisterClientsOnlyInAPoolThatExists) {
  DaemonProcess daemon({"--workers", "1"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  for (const char* pool : {"default", "no-such-pool"}) {
    SCOPED_TRACE(pool);
    RawConnection raw(daemon.socket_path());
    ASSERT_TRUE(raw.valid()) << raw.error();
    auto hello = hello_message();
    hello.mutable_hello()->set_pool(pool);
    hello.mutable_hello()->set_want_segment(false);
    ASSERT_EQ(raw.send(hello), 0);
    v1::DaemonMessage m;
    ASSERT_EQ(raw.recv(&m, 5s), v1::RecvStatus::kOk);
    if (std::string(pool) == "default") {
      EXPECT_TRUE(m.has_welcome()) << m.DebugString();
    } else {
      ASSERT_TRUE(m.has_refused()) << m.DebugString();
      EXPECT_NE(m.refused().reason().find("unknown pool 'no-such-pool'"), std::string::npos)
          << m.DebugString();
    }
  }
}

TEST(ControlTools, ShouldRunASerializedContinuationThroughSubmit) {
  DaemonProcess daemon({"--workers", "2"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto stub = control_stub(daemon.runtime_dir());
  v1::SubmitRequest q;
  q.set_function("echo");
  q.set_env("over grpc");
  v1::SubmitResponse r;
  auto st = stub->Submit(ctx().get(), q, &r);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(r.status(), 1);
  EXPECT_EQ(r.data(), "over grpc");
  q.set_function("chain");
  q.set_arg(1000);
  ASSERT_TRUE(stub->Submit(ctx().get(), q, &r).ok());
  EXPECT_EQ(r.status_name(), "STATUS_OK");
  EXPECT_EQ(r.value(), 1000u);
  q.set_function("no-such-function");
  EXPECT_EQ(stub->Submit(ctx().get(), q, &r).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  auto c = run_command(ctl_args(daemon.runtime_dir(), {"submit", "echo", "from the shell"}));
  EXPECT_EQ(c.exit_code, 0) << c.err;
  EXPECT_NE(c.out.find("from the shell"), std::string::npos) << c.out;

  // The call's timeout is the continuation's deadline: a 60 s sleep ends at 200 ms with
  // the continuation's own DEADLINE_EXCEEDED, and the daemon runs nothing on for it.
  q.set_function("sleep");
  q.set_arg(60'000'000'000);
  q.set_timeout_ms(200);
  const auto t0 = std::chrono::steady_clock::now();
  st = stub->Submit(ctx().get(), q, &r);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(r.status_name(), "STATUS_DEADLINE_EXCEEDED") << r.error();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  v1::GetStatsRequest sq;
  v1::Stats stats;
  ASSERT_TRUE(stub->GetStats(ctx().get(), sq, &stats).ok());
  EXPECT_EQ(stats.waits_parked(), 0u) << "the sleep is still parked";
}

TEST(ControlTools, ShouldExitWithCodesAScriptCanRelyOn) {
  DaemonProcess daemon({"--workers", "2"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  const std::string dir = daemon.runtime_dir();
  auto r = run_command(ctl_args(dir, {"status"}));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("workers 2"), std::string::npos) << r.out;
  r = run_command(ctl_args(dir, {"workers", "--json"}));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.front(), '{');
  EXPECT_NE(r.out.find("\"name\":\"io-w1\""), std::string::npos) << r.out;
  for (const char* read : {"status", "pools", "workers", "clients", "stats"}) {
    r = run_command(ctl_args(dir, {read, "--json"}));
    EXPECT_EQ(r.exit_code, 0) << read << ": " << r.err;
    EXPECT_EQ(r.out.substr(0, 1), "{") << read;
  }
  r = run_command(ctl_args(dir, {"pin"}));  // usage
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  r = run_command(ctl_args(dir, {"pin", "7", "0"}));  // the daemon refuses: no worker 7
  EXPECT_EQ(r.exit_code, 1) << r.err;
  r = run_command(ctl_args(dir, {"--help"}));
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("top"), std::string::npos);
  r = run_command(ctl_args(dir, {"pin", "--help"}));
  EXPECT_EQ(r.exit_code, 0);
  // INSIDEOUT_RUNTIME_DIR is honoured, --socket overrides it.
  r = run_command({"env", "INSIDEOUT_RUNTIME_DIR=" + dir, INSIDEOUTCTL_PATH, "status"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = run_command({INSIDEOUTCTL_PATH, "--socket", dir + "/control.sock", "status"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = run_command({INSIDEOUTCTL_PATH, "--socket", dir + "/nothing-here.sock", "status"});
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
}

TEST(ControlTools, ShouldPublishCountersReadableWithoutTheDaemonAndAsPrometheusText) {
  DaemonProcess daemon({"--workers", "2"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  const std::string dir = daemon.runtime_dir();
  struct stat st {};
  ASSERT_EQ(::stat((dir + "/stats").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0640u);
  ClientOptions o;
  o.runtime_dir = dir;
  auto client = Client::connect(o);
  ASSERT_TRUE(client.ok()) << client.status();
  for (int i = 0; i < 500; ++i) ASSERT_EQ((*client)->submit("noop").value().wait(), Status::kOk);

  // The counters area alone: the daemon is stopped (SIGSTOP), so it cannot answer.
  std::this_thread::sleep_for(300ms);  // a refresh (every 100 ms) after the last completion
  ASSERT_EQ(::kill(daemon.pid(), SIGSTOP), 0);
  auto r = run_command(ctl_args(dir, {"stats", "--json"}), 10s);
  auto p = run_command(ctl_args(dir, {"stats", "--prometheus"}), 10s);
  ::kill(daemon.pid(), SIGCONT);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("\"completed\":\"500\""), std::string::npos) << r.out;
  EXPECT_EQ(p.exit_code, 0) << p.err;
  EXPECT_NE(p.out.find("# TYPE insideout_completed_total counter"), std::string::npos) << p.out;
  EXPECT_NE(p.out.find("insideout_completed_total 500\n"), std::string::npos) << p.out;
  EXPECT_NE(p.out.find("insideout_queue_depth{worker=\"1\"}"), std::string::npos) << p.out;

  // The same numbers over gRPC, once and streamed.
  auto stub = control_stub(dir);
  v1::Stats s;
  ASSERT_TRUE(stub->GetStats(ctx().get(), {}, &s).ok());
  EXPECT_EQ(s.completed(), 500u);
  EXPECT_EQ(s.queue_depths_size(), 2);
  v1::WatchStatsRequest wq;
  wq.set_interval_ms(50);
  grpc::ClientContext wc;
  wc.set_deadline(std::chrono::system_clock::now() + 10s);
  auto reader = stub->WatchStats(&wc, wq);
  int n = 0;
  while (n < 3 && reader->Read(&s)) ++n;
  EXPECT_EQ(n, 3);
  wc.TryCancel();
  reader->Finish();
}

TEST(ControlTools, ShouldServeHealthAndRemoveItsFilesOnShutdown) {
  DaemonProcess daemon({"--workers", "1"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  const std::string dir = daemon.runtime_dir();
  struct stat st {};
  ASSERT_EQ(::stat((dir + "/control.sock").c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  // grpc.health.v1.Health, called by its generic method name (no generated stub here).
  auto ch =
      grpc::CreateChannel("unix:" + dir + "/control.sock", grpc::InsecureChannelCredentials());
  grpc::GenericStub generic(ch);
  // An empty HealthCheckRequest is zero bytes; SERVING is field 1 = 1: 08 01.
  grpc::ByteBuffer req, resp;
  grpc::Slice empty("", 0);
  req = grpc::ByteBuffer(&empty, 1);
  grpc::ClientContext hc;
  hc.set_deadline(std::chrono::system_clock::now() + 5s);
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  grpc::Status hs;
  generic.UnaryCall(&hc, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &req, &resp,
                    [&](grpc::Status s) {
                      std::lock_guard l(mu);
                      hs = s;
                      done = true;
                      cv.notify_all();
                    });
  {
    std::unique_lock l(mu);
    ASSERT_TRUE(cv.wait_for(l, 10s, [&] { return done; }));
  }
  ASSERT_TRUE(hs.ok()) << hs.error_message();
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(resp.Dump(&slices).ok());
  std::string bytes;
  for (auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  EXPECT_EQ(bytes, std::string("\x08\x01", 2));

  auto r = run_command(ctl_args(dir, {"shutdown"}));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  const auto deadline = std::chrono::steady_clock::now() + 15s;
  while (daemon.alive() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(10ms);
  ASSERT_FALSE(daemon.alive()) << daemon.log();
  EXPECT_EQ(daemon.exit_status(), 0) << daemon.log();
  EXPECT_TRUE(list_dir(dir).empty()) << ::testing::PrintToString(list_dir(dir));
}

TEST(ControlTools, ShouldServeAPythonClientGeneratedFromTheProtoByStockTools) {
  DaemonProcess daemon({"--workers", "2"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  const std::string gen = daemon.runtime_dir() + "-py";
  std::filesystem::create_directories(gen);
  auto r = run_command({"protoc", "-I", INSIDEOUT_PROTO_DIR, "--python_out=" + gen,
                        "--grpc_out=" + gen, "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin",
                        std::string(INSIDEOUT_PROTO_DIR) + "/insideout/v1/scheduler.proto"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // Debian's python3 (python3-grpcio, python3-protobuf), whatever else is on PATH.
  const int cpu = [] {
    cpu_set_t set;
    CPU_ZERO(&set);
    sched_getaffinity(0, sizeof(set), &set);
    int last = 0;
    for (int c = 0; c < CPU_SETSIZE; ++c) {
      if (CPU_ISSET(c, &set)) last = c;
    }
    return last;
  }();
  r = run_command({"/usr/bin/python3", INSIDEOUT_PY_CLIENT, gen,
                   daemon.runtime_dir() + "/control.sock", "1", std::to_string(cpu)},
                  30s);
  std::filesystem::remove_all(gen);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("workers 2"), std::string::npos) << r.out;
  // The kernel agrees with what the Python client asked for.
  auto stub = control_stub(daemon.runtime_dir());
  v1::ListWorkersResponse lw;
  ASSERT_TRUE(stub->ListWorkers(ctx().get(), {}, &lw).ok());
  ASSERT_EQ(lw.workers_size(), 2);
  EXPECT_EQ(kernel_affinity(lw.workers(1).tid()), std::vector<int>{cpu});
  EXPECT_NE(r.out.find("pinned tid " + std::to_string(lw.workers(1).tid())), std::string::npos)
      << r.out;
}

TEST(ControlTools, ShouldShowTheWorkersInTopInARealTerminalAndQuitOnQ) {
  DaemonProcess daemon({"--workers", "2"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto stub = control_stub(daemon.runtime_dir());
  v1::ListWorkersResponse lw;
  ASSERT_TRUE(stub->ListWorkers(ctx().get(), {}, &lw).ok());
  ASSERT_EQ(lw.workers_size(), 2);
  const std::string sock = "io-top-" + std::to_string(::getpid());  // a tmux server of our own
  const std::string cmd =
      std::string(INSIDEOUTCTL_PATH) + " --runtime-dir " + daemon.runtime_dir() + " top";
  auto r = run_command({"tmux", "-L", sock, "-f", "/dev/null", "new-session", "-d", "-s", "top",
                        "-x", "150", "-y", "40", cmd});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::string screen;
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < deadline) {
    r = run_command({"tmux", "-L", sock, "capture-pane", "-p", "-t", "top"});
    screen = r.out;
    if (screen.find("io-w1") != std::string::npos) break;
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_NE(screen.find("io-w0"), std::string::npos) << screen;
  EXPECT_NE(screen.find("io-w1"), std::string::npos) << screen;
  EXPECT_NE(screen.find(std::to_string(lw.workers(1).tid())), std::string::npos) << screen;
  EXPECT_NE(screen.find("default"), std::string::npos) << screen;
  EXPECT_NE(screen.find("STEALS"), std::string::npos) << screen;

  // It refreshes: the uptime it shows changes within a couple of seconds.
  const auto up = [](const std::string& s) { return s.substr(s.find(" up "), 12); };
  ASSERT_NE(screen.find(" up "), std::string::npos) << screen;
  const std::string first = up(screen);
  bool changed = false;
  for (int i = 0; i < 40 && !changed; ++i) {
    std::this_thread::sleep_for(100ms);
    r = run_command({"tmux", "-L", sock, "capture-pane", "-p", "-t", "top"});
    changed = r.out.find(" up ") != std::string::npos && up(r.out) != first;
  }
  EXPECT_TRUE(changed) << "top did not refresh";

  run_command({"tmux", "-L", sock, "send-keys", "-t", "top", "q"});
  bool gone = false;
  for (int i = 0; i < 50 && !gone; ++i) {
    std::this_thread::sleep_for(100ms);
    gone = run_command({"tmux", "-L", sock, "has-session", "-t", "top"}).exit_code != 0;
  }
  if (!gone) run_command({"tmux", "-L", sock, "kill-server"});
  EXPECT_TRUE(gone) << "top did not quit on q";
}

}  // namespace
}  // namespace insideout::testing
