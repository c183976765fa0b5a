// Descriptors from clients and the coroutine servers, against a real insideoutd: the echo
// and HTTP example plugins answering real sockets on 127.0.0.1; a pipe handed over with
// Client::send_fd() and used by the built-ins read_fd and write_fd (and their errors: a
// bad id, end of file, EPIPE, the table's bound); a descriptor closed while a read_fd
// waits on it fails that continuation; a client that dies with a read_fd parked on a pipe
// leaves no descriptor, parked wait or segment behind in the daemon.
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "control_support.h"
#include "event_queue.h"
#include "insideout/client.hpp"
#include "support/daemon_process.h"

namespace insideout::testing {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

std::span<const std::byte> bytes(std::string_view s) { return std::as_bytes(std::span(s)); }
std::string text(std::span<const std::byte> b) {
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

// Open descriptors of process `pid`.
int count_fds(pid_t pid) {
  int n = 0;
  std::error_code ec;
  for (auto it = fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
       !ec && it != fs::directory_iterator(); it.increment(ec))
    ++n;
  return n;
}

// A port nobody listens on now (bound to 0 and released).
std::uint16_t free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

// Connects to 127.0.0.1:port, retrying while the server is not listening yet (5 s);
// -1 when it never was. 5 s receive timeout on the socket.
int connect_to(std::uint16_t port, std::chrono::milliseconds patience = 5000ms) {
  const auto until = std::chrono::steady_clock::now() + patience;
  for (;;) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0) {
      timeval tv{5, 0};
      ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
      return fd;
    }
    ::close(fd);
    if (std::chrono::steady_clock::now() >= until) return -1;
    std::this_thread::sleep_for(10ms);
  }
}

bool send_all(int fd, std::string_view s) {
  while (!s.empty()) {
    const ssize_t n = ::send(fd, s.data(), s.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    s.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

// Reads exactly n bytes (or what came before EOF, an error or the 5 s timeout).
std::string recv_n(int fd, std::size_t n) {
  std::string out;
  char buf[4096];
  while (out.size() < n) {
    const ssize_t got = ::recv(fd, buf, std::min(sizeof(buf), n - out.size()), 0);
    if (got <= 0) break;
    out.append(buf, static_cast<std::size_t>(got));
  }
  return out;
}

// Reads one HTTP response (head and Content-Length body).
std::string http_response(int fd) {
  std::string in;
  char c;
  while (in.find("\r\n\r\n") == std::string::npos && ::recv(fd, &c, 1, 0) == 1) in += c;
  const auto cl = in.find("Content-Length: ");
  if (cl == std::string::npos) return in;
  const std::size_t len = std::stoul(in.substr(cl + 16));
  return in + recv_n(fd, len);
}

// The peer closed (recv sees EOF or a reset within 5 s).
bool closed_by_peer(int fd) {
  char c;
  return ::recv(fd, &c, 1, 0) <= 0;
}

// The example server plugins (echo.so, http.so) copied into a directory of their own.
class ServerPlugins {
 public:
  ServerPlugins() {
    char tmpl[] = "/tmp/insideout-server-plugins-XXXXXX";
    if (::mkdtemp(tmpl) != nullptr) path_ = tmpl;
    ::chmod(path_.c_str(), 0755);
#ifdef INSIDEOUT_SERVER_PLUGIN_DIR
    for (const char* n : {"echo.so", "http.so"}) {
      std::error_code ec;
      fs::copy_file(std::string(INSIDEOUT_SERVER_PLUGIN_DIR) + "/" + n, path_ + "/" + n, ec);
      EXPECT_FALSE(ec) << n << ": " << ec.message();
      ::chmod((path_ + "/" + n).c_str(), 0644);
    }
#endif
  }
  ~ServerPlugins() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

#ifdef INSIDEOUT_SERVER_PLUGIN_DIR
#define REQUIRE_SERVER_PLUGINS()
#else
#define REQUIRE_SERVER_PLUGINS() \
  GTEST_SKIP() << "SKIP: the example plugins are not built (INSIDEOUT_BUILD_EXAMPLES=OFF)"
#endif

std::unique_ptr<Client> connect_client(const DaemonProcess& d, const char* name = "fds") {
  ClientOptions o;
  o.runtime_dir = d.runtime_dir();
  o.name = name;
  auto c = Client::connect(o);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? std::move(*c) : nullptr;
}

TEST(ExampleServers, EchoShouldAnswerManyConnectionsAndCloseEverythingWhenItsClientLeaves) {
  REQUIRE_SERVER_PLUGINS();
  ServerPlugins dir;
  DaemonProcess daemon({"--workers", "2", "--plugin-dir", dir.path()});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  const int fds_before = count_fds(daemon.pid());
  auto client = connect_client(daemon);
  ASSERT_NE(client, nullptr);
  const std::uint16_t port = free_port();
  auto server = client->submit("echo.serve", {}, port);
  ASSERT_TRUE(server.ok()) << server.status();
  std::vector<int> conns;
  for (int i = 0; i < 8; ++i) {
    const int fd = connect_to(port);
    ASSERT_GE(fd, 0) << "echo.serve never listened on " << port << "\n" << daemon.log();
    conns.push_back(fd);
  }
  for (int round = 0; round < 3; ++round) {
    for (std::size_t i = 0; i < conns.size(); ++i) {
      const std::string msg = "message " + std::to_string(round) + " on " + std::to_string(i);
      ASSERT_TRUE(send_all(conns[i], msg));
      EXPECT_EQ(recv_n(conns[i], msg.size()), msg);
    }
  }
  // A larger message, in pieces.
  const std::string big(200000, 'x');
  std::thread writer([&] { send_all(conns[0], big); });
  EXPECT_EQ(recv_n(conns[0], big.size()), big);
  writer.join();
  // One connection hangs up: the others go on.
  ::close(conns.back());
  conns.pop_back();
  ASSERT_TRUE(send_all(conns[1], "still here"));
  EXPECT_EQ(recv_n(conns[1], 10), "still here");
  EXPECT_FALSE(server->done());  // it serves until its client leaves
  // The client leaves: the listening socket and every connection close.
  server->reset();
  client.reset();
  for (int fd : conns) {
    EXPECT_TRUE(closed_by_peer(fd));
    ::close(fd);
  }
  EXPECT_EQ(connect_to(port, 2000ms), -1) << "still listening after its client left";
  const auto until = std::chrono::steady_clock::now() + 10s;
  while (count_fds(daemon.pid()) > fds_before && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(20ms);
  EXPECT_LE(count_fds(daemon.pid()), fds_before);
  EXPECT_TRUE(daemon.alive());
}

TEST(ExampleServers, HttpShouldAnswerKeepAlive404AndGarbage) {
  REQUIRE_SERVER_PLUGINS();
  ServerPlugins dir;
  DaemonProcess daemon({"--workers", "2", "--plugin-dir", dir.path()});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto client = connect_client(daemon);
  ASSERT_NE(client, nullptr);
  const std::uint16_t port = free_port();
  auto server = client->submit("http.serve", {}, port);
  ASSERT_TRUE(server.ok()) << server.status();
  const int fd = connect_to(port);
  ASSERT_GE(fd, 0) << daemon.log();
  // Keep-alive: three requests on one connection, two of them pipelined.
  ASSERT_TRUE(send_all(fd, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  std::string r = http_response(fd);
  EXPECT_EQ(r.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << r;
  EXPECT_NE(r.find("\r\n\r\nhello from insideout\n"), std::string::npos) << r;
  EXPECT_EQ(r.find("Connection: close"), std::string::npos) << r;
  ASSERT_TRUE(send_all(fd, "GET /nope HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n"));
  r = http_response(fd);
  EXPECT_EQ(r.rfind("HTTP/1.1 404 Not Found\r\n", 0), 0u) << r;
  r = http_response(fd);
  EXPECT_EQ(r.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << r;
  // Connection: close is honoured.
  ASSERT_TRUE(send_all(fd, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
  r = http_response(fd);
  EXPECT_EQ(r.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << r;
  EXPECT_TRUE(closed_by_peer(fd));
  ::close(fd);
  // Garbage: 400, then the connection closes.
  const int g = connect_to(port);
  ASSERT_TRUE(send_all(g, "HELLO THERE\r\n\r\n"));
  r = http_response(g);
  EXPECT_EQ(r.rfind("HTTP/1.1 400 Bad Request\r\n", 0), 0u) << r;
  EXPECT_TRUE(closed_by_peer(g));
  ::close(g);
  // Headers past the bound: 431 and closed, whatever keeps coming.
  const int h = connect_to(port);
  ASSERT_TRUE(send_all(h, "GET / HTTP/1.1\r\nX-Long: " + std::string(10000, 'a')));
  r = http_response(h);
  EXPECT_EQ(r.rfind("HTTP/1.1 431 ", 0), 0u) << r;
  ::close(h);
  EXPECT_FALSE(server->done());
  EXPECT_TRUE(daemon.alive());
}

TEST(ExampleServers, ServeShouldFailClearlyWhenThePortIsTaken) {
  REQUIRE_SERVER_PLUGINS();
  ServerPlugins dir;
  DaemonProcess daemon({"--workers", "2", "--plugin-dir", dir.path()});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto client = connect_client(daemon);
  ASSERT_NE(client, nullptr);
  const int taken = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  ASSERT_EQ(::bind(taken, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  ASSERT_EQ(::listen(taken, 1), 0);
  ::getsockname(taken, reinterpret_cast<sockaddr*>(&a), &len);
  auto h = client->submit("echo.serve", {}, ntohs(a.sin_port));
  ASSERT_TRUE(h.ok());
  ASSERT_EQ(h->wait_for(10s), Status::kFailed);
  EXPECT_NE(h->result().message.find("Address already in use"), std::string::npos)
      << h->result().message;
  ::close(taken);
}

TEST(ClientFds, ReadFdAndWriteFdShouldMoveBytesThroughPipes) {
  DaemonProcess daemon({"--workers", "2"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto client = connect_client(daemon);
  ASSERT_NE(client, nullptr);
  int in[2], out[2];
  ASSERT_EQ(::pipe2(in, O_CLOEXEC), 0);
  ASSERT_EQ(::pipe2(out, O_CLOEXEC), 0);
  auto rid = client->send_fd(in[0]);
  ASSERT_TRUE(rid.ok()) << rid.status();
  auto wid = client->send_fd(out[1]);
  ASSERT_TRUE(wid.ok()) << wid.status();
  EXPECT_NE(*rid, *wid);

  ASSERT_EQ(::write(in[1], "hello", 5), 5);
  const std::string room(64, '\0');
  auto r = client->submit("read_fd", bytes(room), *rid);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->wait_for(10s), Status::kOk) << r->result().error();
  EXPECT_EQ(r->result().value, 5u);
  EXPECT_EQ(text(r->result().data), "hello");

  // A read_fd that waits: the bytes come later.
  auto later = client->submit("read_fd", bytes(room), *rid);
  ASSERT_TRUE(later.ok());
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(later->poll());
  ASSERT_EQ(::write(in[1], "later", 5), 5);
  ASSERT_EQ(later->wait_for(10s), Status::kOk) << later->result().error();
  EXPECT_EQ(text(later->result().data), "later");

  // write_fd writes all of a buffer larger than the pipe holds (64 KiB), in pieces.
  const std::string big(300000, 'z');
  auto w = client->submit("write_fd", bytes(big), *wid);
  ASSERT_TRUE(w.ok()) << w.status();
  std::string got;
  char buf[65536];
  while (got.size() < big.size()) {
    const ssize_t n = ::read(out[0], buf, sizeof(buf));
    ASSERT_GT(n, 0);
    got.append(buf, static_cast<std::size_t>(n));
  }
  ASSERT_EQ(w->wait_for(10s), Status::kOk) << w->result().error();
  EXPECT_EQ(w->result().value, big.size());
  EXPECT_EQ(got, big);

  // The serialized path too.
  ASSERT_EQ(::write(in[1], "serial", 6), 6);
  auto s = client->call("read_fd", std::string(16, '\0'), *rid);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->status, Status::kOk) << s->error;
  EXPECT_EQ(s->data, "serial");

  // Errors: a bad id, end of file, EPIPE.
  auto bad = client->submit("read_fd", bytes(room), 999);
  ASSERT_EQ(bad->wait_for(10s), Status::kInvalidArgument);
  EXPECT_NE(bad->result().message.find("no descriptor with id 999"), std::string::npos)
      << bad->result().error();
  ::close(in[1]);
  auto eof = client->submit("read_fd", bytes(room), *rid);
  ASSERT_EQ(eof->wait_for(10s), Status::kFailed);
  EXPECT_NE(eof->result().message.find("end of file"), std::string::npos) << eof->result().error();
  ::close(out[0]);
  auto pipe_gone = client->submit("write_fd", bytes("to nobody"), *wid);
  ASSERT_EQ(pipe_gone->wait_for(10s), Status::kFailed);
  EXPECT_NE(pipe_gone->result().message.find("EPIPE"), std::string::npos)
      << pipe_gone->result().error();
  // Closed in the daemon: the id is gone.
  EXPECT_TRUE(client->close_fd(*rid).ok());
  EXPECT_EQ(client->close_fd(*rid).code(), absl::StatusCode::kNotFound);
  ::close(in[0]);
  ::close(out[1]);
}

TEST(ClientFds, ShouldRefuseDirectoriesAndMoreThanTheBound) {
  DaemonProcess daemon({"--workers", "1", "--max-client-fds", "3"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto client = connect_client(daemon);
  ASSERT_NE(client, nullptr);
  const int dir = ::open("/tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  auto d = client->send_fd(dir);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("only sockets, pipes"), std::string::npos) << d.status();
  ::close(dir);
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  std::vector<std::uint32_t> ids;
  for (int i = 0; i < 3; ++i) {
    auto id = client->send_fd(p[0]);
    ASSERT_TRUE(id.ok()) << id.status();
    ids.push_back(*id);
  }
  auto over = client->send_fd(p[0]);
  ASSERT_FALSE(over.ok());
  EXPECT_NE(over.status().message().find("--max-client-fds"), std::string::npos) << over.status();
  // Closing one makes room again (nothing of the client runs: the number is freed).
  ASSERT_TRUE(client->close_fd(ids[1]).ok());
  auto again = client->send_fd(p[0]);
  EXPECT_TRUE(again.ok()) << again.status();
  ::close(p[0]);
  ::close(p[1]);
}

// The waits on both event queue backends: io_uring (skipped where the kernel refuses it)
// and epoll (the default). Neither needs more than Debian 12's 6.1.
class ClientFdsOnBackend : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    if (std::string(GetParam()) == "io_uring") {
      const std::string why = engine::probe_io_uring();
      if (!why.empty()) GTEST_SKIP() << "io_uring unavailable here: " << why;
    }
  }
};
INSTANTIATE_TEST_SUITE_P(Backends, ClientFdsOnBackend, ::testing::Values("io_uring", "epoll"));

TEST_P(ClientFdsOnBackend, ClosingADescriptorShouldFailTheContinuationWaitingOnIt) {
  DaemonProcess daemon({"--workers", "2", "--event-backend", GetParam()});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto client = connect_client(daemon);
  ASSERT_NE(client, nullptr);
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  auto id = client->send_fd(p[0]);
  ASSERT_TRUE(id.ok()) << id.status();
  const std::string room(32, '\0');
  auto h = client->submit("read_fd", bytes(room), *id);
  ASSERT_TRUE(h.ok());
  // Parked on the empty pipe.
  auto stub = control_stub(daemon.runtime_dir());
  const auto until = std::chrono::steady_clock::now() + 10s;
  for (;;) {
    v1::Stats s;
    ASSERT_TRUE(stub->GetStats(ctx().get(), {}, &s).ok());
    if (s.waits_parked() == 1) break;
    ASSERT_LT(std::chrono::steady_clock::now(), until) << "read_fd never parked";
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_FALSE(h->poll());
  ASSERT_TRUE(client->close_fd(*id).ok());
  ASSERT_EQ(h->wait_for(10s), Status::kFailed);
  EXPECT_NE(h->result().message.find("was closed"), std::string::npos) << h->result().error();
  // The client's own end is untouched (the daemon closed its copy only).
  ASSERT_EQ(::write(p[1], "x", 1), 1);
  char c;
  EXPECT_EQ(::read(p[0], &c, 1), 1);
  v1::Stats s;
  ASSERT_TRUE(stub->GetStats(ctx().get(), {}, &s).ok());
  EXPECT_EQ(s.waits_parked(), 0u);
  ::close(p[0]);
  ::close(p[1]);
}

// A child registers, hands over a pipe (both ends) and a socket, parks a read_fd on the
// pipe nobody writes, and dies: the daemon closes every descriptor of it, its wait
// ends, its segment goes.
TEST_P(ClientFdsOnBackend, AClientThatDiesShouldLeaveNoDescriptorWaitOrSegmentBehind) {
  DaemonProcess daemon({"--workers", "2", "--event-backend", GetParam()});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  // go: the parent lets the child start (once its own gRPC connection to the daemon is
  // counted); up: the child has parked its waits; down: closed when the child may die.
  int go[2], up[2], down[2];
  ASSERT_EQ(::pipe2(go, O_CLOEXEC), 0);
  ASSERT_EQ(::pipe2(up, O_CLOEXEC), 0);
  ASSERT_EQ(::pipe2(down, O_CLOEXEC), 0);
  const std::string dir = daemon.runtime_dir();
  const pid_t child = fork_child([&]() -> int {
    ::close(go[1]);
    char g;
    if (::read(go[0], &g, 1) != 1) return 7;
    ClientOptions o;
    o.runtime_dir = dir;
    auto c = Client::connect(o);
    if (!c.ok()) return 1;
    int p[2], sv[2];
    if (::pipe2(p, O_CLOEXEC) != 0 || ::socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) return 2;
    auto r = (*c)->send_fd(p[0]);
    if (!r.ok() || !(*c)->send_fd(p[1]).ok() || !(*c)->send_fd(sv[0]).ok()) return 3;
    const std::string room(32, '\0');
    auto h = (*c)->submit("read_fd", std::as_bytes(std::span(room)), *r);
    if (!h.ok()) return 4;
    auto s = (*c)->submit("read_fd", std::as_bytes(std::span(room)), 3);  // the socket
    if (!s.ok()) return 5;
    ::close(down[1]);
    if (::write(up[1], "r", 1) != 1) return 6;
    char c2;
    (void)::read(down[0], &c2, 1);  // until the parent has seen the waits
    ::_exit(0);
  });
  ::close(go[0]);
  ::close(up[1]);
  ::close(down[0]);
  // Forked before this thread made any other (gRPC's).
  auto stub = control_stub(dir);
  {
    v1::Stats s;
    ASSERT_TRUE(stub->GetStats(ctx().get(), {}, &s).ok());
  }
  const int before = count_fds(daemon.pid());
  ASSERT_EQ(::write(go[1], "g", 1), 1);
  ::close(go[1]);
  char c;
  ASSERT_EQ(::read(up[0], &c, 1), 1) << "the child failed";
  ::close(up[0]);
  auto until = std::chrono::steady_clock::now() + 10s;
  for (;;) {
    v1::Stats s;
    ASSERT_TRUE(stub->GetStats(ctx().get(), {}, &s).ok());
    if (s.waits_parked() == 2) break;
    ASSERT_LT(std::chrono::steady_clock::now(), until) << "the read_fds never parked";
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_GT(count_fds(daemon.pid()), before + 2);  // its three, its bell
  ::close(down[1]);                                // the child goes on and dies
  EXPECT_EQ(wait_child(child, 10s), 0);
  until = std::chrono::steady_clock::now() + 10s;
  while (count_fds(daemon.pid()) > before && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(20ms);
  EXPECT_LE(count_fds(daemon.pid()), before) << daemon.log();
  v1::Stats s;
  ASSERT_TRUE(stub->GetStats(ctx().get(), {}, &s).ok());
  EXPECT_EQ(s.waits_parked(), 0u);
  EXPECT_EQ(count_mapped_segments(daemon.pid()), 0);
  EXPECT_TRUE(daemon.alive());
}

}  // namespace
}  // namespace insideout::testing
