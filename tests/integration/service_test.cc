// insideoutd as a systemd service, against a real insideoutd: the sd_notify messages on a
// NOTIFY_SOCKET the test listens on (READY=1, STATUS=, RELOADING=1 with MONOTONIC_USEC,
// STOPPING=1, WATCHDOG=1 while healthy and none while every worker is wedged), socket
// activation through systemd-socket-activate, and configuration reloads (under load, and
// an invalid file that changes nothing).
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <deque>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "insideout/client.hpp"
#include "integration/control_support.h"
#include "support/daemon_process.h"

namespace insideout::testing {
namespace {

using namespace std::chrono_literals;

// A NOTIFY_SOCKET: a datagram socket the daemon's sd_notify() writes to.
class NotifySocket {
 public:
  NotifySocket() {
    char tmpl[] = "/tmp/io-notify-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    path_ = dir_ + "/notify";
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::snprintf(a.sun_path, sizeof(a.sun_path), "%s", path_.c_str());
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0) << std::strerror(errno);
    ::setenv("NOTIFY_SOCKET", path_.c_str(), 1);
  }
  ~NotifySocket() {
    ::unsetenv("NOTIFY_SOCKET");
    ::close(fd_);
    std::filesystem::remove_all(dir_);
  }
  // Waits at most `timeout` for a message for which `want` is true; every message read
  // meanwhile is kept in messages().
  bool wait_for(const std::function<bool(const std::string&)>& want,
                std::chrono::milliseconds timeout) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          until - std::chrono::steady_clock::now());
      if (left.count() <= 0) return false;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      char buf[4096];
      const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) continue;
      messages_.emplace_back(buf, static_cast<std::size_t>(n));
      if (want(messages_.back())) return true;
    }
  }
  bool wait_for(const std::string& prefix, std::chrono::milliseconds timeout) {
    return wait_for([&](const std::string& m) { return m.rfind(prefix, 0) == 0; }, timeout);
  }
  // Every message that arrives within `d`.
  std::vector<std::string> collect(std::chrono::milliseconds d) {
    const std::size_t from = messages_.size();
    wait_for([](const std::string&) { return false; }, d);
    return {messages_.begin() + static_cast<std::ptrdiff_t>(from), messages_.end()};
  }
  const std::vector<std::string>& messages() const { return messages_; }
  std::string all() const {
    std::string s;
    for (const auto& m : messages_) s += "[" + m + "] ";
    return s;
  }

 private:
  std::string dir_, path_;
  int fd_ = -1;
  std::vector<std::string> messages_;
};

// The daemon's environment says: watchdog every `usec` for any pid.
struct WatchdogEnv {
  explicit WatchdogEnv(std::chrono::microseconds usec) {
    ::setenv("WATCHDOG_USEC", std::to_string(usec.count()).c_str(), 1);
    ::unsetenv("WATCHDOG_PID");
  }
  ~WatchdogEnv() { ::unsetenv("WATCHDOG_USEC"); }
};

std::string write_file(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
  return path;
}

std::string temp_config() {
  char tmpl[] = "/tmp/io-config-XXXXXX";
  return std::string(::mkdtemp(tmpl)) + "/insideoutd.toml";
}

bool answers(const std::string& socket, int type) {
  const int fd = ::socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof(a.sun_path), "%s", socket.c_str());
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
  ::close(fd);
  return ok;
}

TEST(Service, ShouldTellSystemdReadyStatusReloadingAndStopping) {
  NotifySocket notify;
  const std::string config = temp_config();
  write_file(config, "log_level = \"info\"\n");
  WatchdogEnv wd(2s);
  DaemonProcess daemon({"--workers", "2", "--no-pin", "--config", config});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  ASSERT_TRUE(notify.wait_for("READY=1", 10s)) << notify.all();
  // READY=1 came once both sockets listen.
  EXPECT_TRUE(answers(daemon.socket_path(), SOCK_SEQPACKET));
  EXPECT_TRUE(answers(daemon.runtime_dir() + "/control.sock", SOCK_STREAM));
  ASSERT_TRUE(notify.wait_for("STATUS=", 5s)) << notify.all();
  EXPECT_NE(notify.messages().back().find("2 workers"), std::string::npos) << notify.all();
  EXPECT_NE(notify.messages().back().find("continuations in flight"), std::string::npos);
  EXPECT_TRUE(notify.wait_for("WATCHDOG=1", 5s)) << "healthy: fed " << notify.all();

  // SIGHUP: RELOADING=1 with the monotonic time, then READY=1 again.
  timespec before{};
  ::clock_gettime(CLOCK_MONOTONIC, &before);
  ASSERT_EQ(::kill(daemon.pid(), SIGHUP), 0);
  ASSERT_TRUE(notify.wait_for("RELOADING=1", 10s)) << notify.all() << daemon.log();
  const std::string& reloading = notify.messages().back();
  const auto at = reloading.find("\nMONOTONIC_USEC=");
  ASSERT_NE(at, std::string::npos) << reloading;
  const std::uint64_t usec = std::stoull(reloading.substr(at + 16));
  EXPECT_GE(usec, static_cast<std::uint64_t>(before.tv_sec) * 1'000'000u);
  EXPECT_TRUE(notify.wait_for("READY=1", 10s)) << notify.all();

  EXPECT_EQ(daemon.stop(SIGTERM), 0) << daemon.log();
  EXPECT_TRUE(notify.wait_for("STOPPING=1", 1s)) << notify.all();
  std::filesystem::remove_all(std::filesystem::path(config).parent_path());
}

TEST(Service, ShouldStopFeedingTheWatchdogOnlyWhileEveryWorkerIsWedged) {
  NotifySocket notify;
  WatchdogEnv wd(2s);
  DaemonProcess daemon(
      {"--workers", "2", "--no-pin", "--enable-test-functions", "--drain-timeout-ms", "200"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  ASSERT_TRUE(notify.wait_for("WATCHDOG=1", 5s)) << "healthy and idle: fed " << notify.all();
  auto stub = control_stub(daemon.runtime_dir());
  // One wedged worker of two: the pool still makes progress, the watchdog is fed.
  auto hang = [&] {
    v1::SubmitRequest q;
    q.set_function("test.hang");
    v1::SubmitResponse r;
    auto st = stub->Submit(ctx(300ms).get(), q, &r);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << st.error_message();
  };
  hang();
  notify.collect(2500ms);  // past the watchdog interval with one worker in test.hang
  EXPECT_TRUE(notify.wait_for("WATCHDOG=1", 3s)) << "one worker of two wedged: still fed";
  // Both wedged: the pings stop once they have been stuck for the interval.
  hang();
  ASSERT_TRUE(notify.wait_for(
      [](const std::string& m) { return m.find("STATUS=pool 'default' stuck") == 0; }, 10s))
      << notify.all() << daemon.log();
  for (const auto& m : notify.collect(3s)) EXPECT_NE(m, "WATCHDOG=1") << "fed while wedged";
  EXPECT_NE(daemon.log().find("no longer feeding the watchdog"), std::string::npos);
  EXPECT_TRUE(daemon.alive()) << "the loop and the other threads still run";
  // Its other threads answer: the control plane still serves.
  v1::GetInfoResponse info;
  EXPECT_TRUE(stub->GetInfo(ctx().get(), {}, &info).ok());
  daemon.stop(SIGKILL);
}

TEST(Service, ShouldNotWatchWithoutWatchdogUsec) {
  NotifySocket notify;
  DaemonProcess daemon({"--workers", "1", "--no-pin"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  ASSERT_TRUE(notify.wait_for("READY=1", 10s)) << notify.all();
  for (const auto& m : notify.collect(1500ms)) EXPECT_NE(m, "WATCHDOG=1");
  EXPECT_EQ(daemon.stop(SIGTERM), 0) << daemon.log();
}

// systemd-socket-activate binds the socket and passes it as fd 3 ($LISTEN_FDS,
// $LISTEN_FDNAMES); insideoutd serves it instead of binding its own.
const char* kSocketActivate = "/usr/bin/systemd-socket-activate";

TEST(Service, ShouldServeBothSocketsSystemdPasses) {
  if (::access(kSocketActivate, X_OK) != 0) {
    GTEST_SKIP() << "SKIP: " << kSocketActivate << " is missing (Debian package systemd)";
  }
  char tmpl[] = "/tmp/io-activate-XXXXXX";
  const std::string dir = ::mkdtemp(tmpl);
  ::chmod(dir.c_str(), 0700);
  const std::string sock = dir + "/daemon.sock";
  const std::string control = dir + "/control.sock";
  const std::string log = dir + "/log";
  // Two of them, nested, as one takes one socket type: the outer binds control.sock
  // (stream) and passes it on; the inner adds daemon.sock (seqpacket) and names both.
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    ::execl(kSocketActivate, kSocketActivate, "-l", control.c_str(), "--fdname=control",
            kSocketActivate, "--seqpacket", "-l", sock.c_str(), "--fdname=control:registration",
            insideoutd_path(), "--runtime-dir", dir.c_str(), "--workers", "1", "--no-pin",
            static_cast<char*>(nullptr));
    std::_Exit(127);
  }
  auto read_log = [&] {
    std::ifstream in(log);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  };
  // The outer one execs on the first connection to control.sock, which stays queued.
  for (int i = 0; i < 200 && !answers(control, SOCK_STREAM); ++i) std::this_thread::sleep_for(25ms);
  // daemon.sock exists before the daemon runs; a client that connects early is queued.
  ClientOptions co;
  co.runtime_dir = dir;
  co.name = "activated";
  std::unique_ptr<Client> c;
  const auto until = std::chrono::steady_clock::now() + 15s;
  while (c == nullptr && std::chrono::steady_clock::now() < until) {
    auto r = Client::connect(co);
    if (r.ok())
      c = std::move(*r);
    else
      std::this_thread::sleep_for(50ms);
  }
  ASSERT_NE(c, nullptr) << read_log();
  {
    auto h = c->submit("chain", {}, 10);
    ASSERT_TRUE(h.ok()) << h.status();
    ASSERT_EQ(h->wait(), Status::kOk);
    EXPECT_EQ(h->result().value, 10u);
  }
  c.reset();  // after its handles
  EXPECT_NE(read_log().find("socket activation: daemon.sock and control.sock from systemd"),
            std::string::npos)
      << read_log();
  // The control plane answers on the socket it was given.
  v1::GetInfoResponse info;
  auto st = control_stub(dir)->GetInfo(ctx().get(), {}, &info);
  EXPECT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(info.runtime_dir(), dir);
  ::kill(pid, SIGTERM);
  EXPECT_EQ(wait_child(pid, 15s), 0) << read_log();
  // The sockets are systemd's: the daemon leaves them for its successor.
  EXPECT_TRUE(std::filesystem::exists(sock));
  EXPECT_TRUE(std::filesystem::exists(control));
  std::filesystem::remove_all(dir);
}

TEST(Service, ShouldRefuseAPassedSocketOfTheWrongType) {
  if (::access(kSocketActivate, X_OK) != 0) {
    GTEST_SKIP() << "SKIP: " << kSocketActivate << " is missing (Debian package systemd)";
  }
  char tmpl[] = "/tmp/io-activate-XXXXXX";
  const std::string dir = ::mkdtemp(tmpl);
  ::chmod(dir.c_str(), 0700);
  const std::string sock = dir + "/daemon.sock";
  // A stream socket where a seqpacket one belongs.
  int out[2];
  ASSERT_EQ(::pipe(out), 0);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(out[1], 1);
    ::dup2(out[1], 2);
    ::execl(kSocketActivate, kSocketActivate, "-l", sock.c_str(), "--fdname=registration",
            insideoutd_path(), "--runtime-dir", dir.c_str(), "--workers", "1",
            static_cast<char*>(nullptr));
    std::_Exit(127);
  }
  ::close(out[1]);
  // systemd-socket-activate starts the daemon on the first connection.
  std::this_thread::sleep_for(300ms);
  for (int i = 0; i < 100 && !answers(sock, SOCK_STREAM); ++i) std::this_thread::sleep_for(50ms);
  const int rc = wait_child(pid, 15s);
  std::string text;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(out[0], buf, sizeof(buf))) > 0) text.append(buf, static_cast<std::size_t>(n));
  ::close(out[0]);
  EXPECT_EQ(rc, 1) << text;
  EXPECT_NE(text.find("is not a listening Unix SOCK_SEQPACKET socket"), std::string::npos) << text;
  std::filesystem::remove_all(dir);
}

std::string pool_toml(std::uint32_t size) {
  return "[[pools]]\nname = \"burst\"\nsize = " + std::to_string(size) + "\n";
}

TEST(Service, ShouldResizeAPoolOnReloadUnderLoadWithoutLosingAContinuation) {
  const std::string config = temp_config();
  write_file(config, pool_toml(1));
  DaemonProcess daemon({"--workers", "1", "--no-pin", "--config", config});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto stub = control_stub(daemon.runtime_dir());
  ClientOptions co;
  co.runtime_dir = daemon.runtime_dir();
  co.pool = "burst";
  auto connected = Client::connect(co);
  ASSERT_TRUE(connected.ok()) << connected.status() << daemon.log();
  auto c = std::move(*connected);
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> submitted{0}, ok{0}, failed{0}, lost{0};
  std::thread submitter([&] {
    std::deque<Handle> inflight;
    auto settle = [&](Handle& h) {
      auto s = h.wait_for(10s);
      if (!s) return (void)lost.fetch_add(1);
      (*s == Status::kOk && h.result().value == 20 ? ok : failed).fetch_add(1);
    };
    while (!stop.load()) {
      auto h = c->submit("chain", {}, 20);
      if (!h.ok()) {
        failed.fetch_add(1);
        continue;
      }
      submitted.fetch_add(1);
      inflight.push_back(std::move(*h));
      while (inflight.size() > 64) {
        settle(inflight.front());
        inflight.pop_front();
      }
    }
    for (auto& h : inflight) settle(h);
  });
  auto pool_size = [&] {
    v1::ListPoolsResponse r;
    EXPECT_TRUE(stub->ListPools(ctx().get(), {}, &r).ok());
    for (const auto& p : r.pools())
      if (p.name() == "burst") return p.size();
    return 0u;
  };
  for (std::uint32_t size : {3u, 1u, 2u, 1u}) {
    std::this_thread::sleep_for(100ms);
    write_file(config, pool_toml(size));
    ASSERT_EQ(::kill(daemon.pid(), SIGHUP), 0);
    const auto until = std::chrono::steady_clock::now() + 10s;
    while (pool_size() != size && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(20ms);
    EXPECT_EQ(pool_size(), size) << daemon.log();
  }
  // The Reload RPC does the same.
  write_file(config, pool_toml(2));
  v1::ReloadResponse rr;
  auto st = stub->Reload(ctx().get(), {}, &rr);
  EXPECT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(pool_size(), 2u);
  std::this_thread::sleep_for(100ms);
  stop.store(true);
  submitter.join();
  EXPECT_GT(submitted.load(), 100u);
  EXPECT_EQ(ok.load(), submitted.load()) << "every continuation completed exactly once";
  EXPECT_EQ(failed.load(), 0u);
  EXPECT_EQ(lost.load(), 0u);
  v1::ListClientsResponse lc;
  ASSERT_TRUE(stub->ListClients(ctx().get(), {}, &lc).ok());
  ASSERT_EQ(lc.clients_size(), 1);
  EXPECT_EQ(lc.clients(0).counters().accepted(), submitted.load());
  EXPECT_EQ(lc.clients(0).counters().completed(), submitted.load());
  c.reset();
  EXPECT_EQ(daemon.stop(SIGTERM), 0) << daemon.log();
  std::filesystem::remove_all(std::filesystem::path(config).parent_path());
}

TEST(Service, ShouldRefuseAnInvalidFileOnReloadAndKeepItsConfiguration) {
  NotifySocket notify;
  const std::string config = temp_config();
  write_file(config, "log_level = \"info\"\n" + pool_toml(2));
  DaemonProcess daemon({"--workers", "1", "--no-pin", "--config", config});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto stub = control_stub(daemon.runtime_dir());
  v1::GetConfigResponse before;
  ASSERT_TRUE(stub->GetConfig(ctx().get(), {}, &before).ok());
  EXPECT_EQ(before.path(), config);
  EXPECT_NE(before.toml().find("name = 'burst'\nsize = 2\n"), std::string::npos) << before.toml();

  write_file(config, pool_toml(3) + "[[pools]]\nname = \"x\"\ncpus = \"3-1\"\n");
  v1::ReloadResponse rr;
  auto st = stub->Reload(ctx().get(), {}, &rr);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find(config + ":6: pools[1].cpus: bad CPU range '3-1'"),
            std::string::npos)
      << st.error_message();
  auto ctl = run_command({INSIDEOUTCTL_PATH, "--runtime-dir", daemon.runtime_dir(), "reload"});
  EXPECT_EQ(ctl.exit_code, 1) << ctl.out << ctl.err;
  EXPECT_NE(ctl.err.find("INVALID_ARGUMENT"), std::string::npos) << ctl.err;
  EXPECT_NE(ctl.err.find("bad CPU range '3-1'"), std::string::npos) << ctl.err;
  ASSERT_EQ(::kill(daemon.pid(), SIGHUP), 0);
  ASSERT_TRUE(notify.wait_for(
      [](const std::string& m) { return m.find("STATUS=reload refused: ") == 0; }, 10s))
      << notify.all();
  EXPECT_NE(daemon.log().find("reload refused, the configuration is unchanged"), std::string::npos);
  v1::GetConfigResponse after;
  ASSERT_TRUE(stub->GetConfig(ctx().get(), {}, &after).ok());
  EXPECT_EQ(after.toml(), before.toml());
  v1::ListPoolsResponse pools;
  ASSERT_TRUE(stub->ListPools(ctx().get(), {}, &pools).ok());
  ASSERT_EQ(pools.pools_size(), 2);
  EXPECT_EQ(pools.pools(1).size(), 2u);

  // A key only a restart applies is named, and the rest still applies.
  write_file(config, "max_clients = 7\n" + pool_toml(1));
  st = stub->Reload(ctx().get(), {}, &rr);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(rr.needs_restart_size(), 1);
  EXPECT_EQ(rr.needs_restart(0), "max_clients");
  ASSERT_TRUE(stub->ListPools(ctx().get(), {}, &pools).ok());
  EXPECT_EQ(pools.pools(1).size(), 1u);
  EXPECT_NE(daemon.log().find("needs a restart: max_clients"), std::string::npos);
  // insideoutctl config prints the effective configuration.
  auto out = run_command({INSIDEOUTCTL_PATH, "--runtime-dir", daemon.runtime_dir(), "config"});
  EXPECT_EQ(out.exit_code, 0) << out.err;
  EXPECT_NE(out.out.find("max_clients = 1024"), std::string::npos) << out.out;
  EXPECT_NE(out.out.find("size = 1"), std::string::npos) << out.out;
  EXPECT_EQ(daemon.stop(SIGTERM), 0) << daemon.log();
  std::filesystem::remove_all(std::filesystem::path(config).parent_path());
}

TEST(Service, ShouldCheckAConfigurationFile) {
  const std::string config = temp_config();
  write_file(config, "workers = 2\n[[pools]]\nname = \"a\"\ncpus = \"3-1\"\nsise = 1\n");
  auto r = run_insideoutd({"--check-config", config});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find(config + ":4: pools[0].cpus: bad CPU range '3-1'"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find(config + ":5: pools[0].sise: unknown key (did you mean 'size'?)"),
            std::string::npos)
      << r.output;
  write_file(config, "workers = 2\n");
  r = run_insideoutd({"--check-config", config});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  // A file the daemon cannot start with stops it before anything is made.
  write_file(config, "worker = 2\n");
  r = run_insideoutd({"--config", config, "--runtime-dir", "/dev/null/never"});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("did you mean 'workers'"), std::string::npos) << r.output;
  std::filesystem::remove_all(std::filesystem::path(config).parent_path());
}

TEST(Service, ShouldLogWithJournalPrioritiesForJournald) {
  // An error (the runtime directory cannot be made) and info lines, as journald reads
  // them: "<N>" first, no timestamp.
  auto r = run_insideoutd({"--log-target", "journal", "--runtime-dir", "/dev/null/never"});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("<3>cannot start: "), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("<"), 0u) << r.output;
  // Not under systemd: the usual stderr lines, which start with the date.
  r = run_insideoutd({"--log-target", "stderr", "--runtime-dir", "/dev/null/never"});
  EXPECT_EQ(r.output.find("<3>"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(" error cannot start: "), std::string::npos) << r.output;
}

}  // namespace
}  // namespace insideout::testing
