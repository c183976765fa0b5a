// The event queue's figures (issue 9), each beside its peer in the same run:
//   parked_100k   100,000 continuations parked in a real insideoutd on sleeps spread over
//                 2 s: the daemon's CPU while they wait, its resident bytes per parked
//                 continuation, and how late each wakes (seen by its client)
//   fd_wake       a byte's round trip through a descriptor a continuation waits on (the
//                 embedded runtime, each backend), beside a bare epoll loop thread
//   tcp_echo      64 connections of 64-byte ping-pong on 127.0.0.1 against a coroutine
//                 echo server (the SDK's accept/recv/send) and a Boost.Asio echo server,
//                 each on one thread of the same CPU, in rounds taken in turn:
//                 requests/s, p99, and each backend's ratio to Asio round by round
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio/buffer.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <chrono>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "bench_common.h"
#include "insideout/runtime.hpp"
#include "insideout/sdk.hpp"
#include "insideout_daemon.h"

namespace insideout::bench {
namespace {

// ---- parked_100k ---------------------------------------------------------------------

std::uint64_t rss_bytes(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  }
  return 0;
}

bool backend_works(const char* backend);

int parked(const Options& o, const char* backend) {
  if (!backend_works(backend)) return 0;
  const std::string system = std::string("insideout_") + backend;
  const std::uint64_t total = o.pick(100'000, 100'000, 4'000);
  constexpr unsigned kClients = 2;
  const std::uint64_t per = total / kClients;
  Daemon d(2, "", "spin-then-block",
           {"--max-timers", "0", "--max-inflight", "65536", "--event-backend", backend});
  if (!d.ok()) return 1;
  std::vector<std::unique_ptr<Client>> clients;
  for (unsigned i = 0; i < kClients; ++i) {
    // The clients block while they wait (a spinning client would take the CPU the
    // daemon's workers need, with a wake due every 20 us, and its lateness with it).
    ClientOptions co = d.client_options(shm::IdleStrategy::kBlock);
    co.segment.frame_count = 65536;
    co.segment.ring_capacity = 65536;
    co.segment.buffer_block_count = 16;
    auto c = d.connect(co);
    if (c == nullptr) return 1;
    clients.push_back(std::move(c));
  }
  auto sleep_id = clients[0]->function_id("sleep_until");
  if (!sleep_id.ok()) return 1;
  // Warm the daemon (its pools, the clients' first frames), then take its size.
  for (auto& c : clients) {
    auto h = c->submit(*sleep_id, {}, now_ns() + 1000);
    if (!h.ok() || h->wait() != Status::kOk) return 1;
  }
  detail::sleep_ms(100);
  const std::uint64_t rss0 = rss_bytes(d.pid());
  // Wakes spread over [start + 1 s, start + 3 s): all are parked well before the first.
  const std::uint64_t start = now_ns();
  const std::uint64_t first = start + 1'000'000'000, spread = 2'000'000'000;
  struct Parked {
    Handle h;
    std::uint64_t due;
  };
  std::vector<std::vector<Parked>> all(kClients);
  std::uint64_t rng = 0x9E3779B97F4A7C15ull;
  for (unsigned i = 0; i < kClients; ++i) {
    all[i].reserve(per);
    for (std::uint64_t k = 0; k < per; ++k) {
      rng ^= rng << 13;
      rng ^= rng >> 7;
      rng ^= rng << 17;
      const std::uint64_t due = first + rng % spread;
      auto h = clients[i]->submit(*sleep_id, {}, due);
      if (!h.ok()) {
        fail(o, std::string(h.status().message()).c_str());
        return 1;
      }
      all[i].push_back({std::move(*h), due});
    }
    std::sort(all[i].begin(), all[i].end(),
              [](const Parked& a, const Parked& b) { return a.due < b.due; });
  }
  const std::uint64_t parked_at = now_ns();
  if (parked_at + 200'000'000 > first) {
    fail(o, "submitting took too long to measure the parked window");
    return 1;
  }
  // The quiet window: everything parked, nothing due.
  detail::sleep_ms(100);
  const std::uint64_t cpu0 = process_cpu_ns(d.pid()), w0 = now_ns();
  const std::uint64_t rss1 = rss_bytes(d.pid());
  while (now_ns() + 100'000'000 < first) detail::sleep_ms(10);
  const std::uint64_t cpu1 = process_cpu_ns(d.pid()), w1 = now_ns();
  // Then every wake, as each client sees it (in due order; each thread waits on its own).
  std::vector<std::vector<std::uint64_t>> late(kClients);
  std::vector<std::thread> waiters;
  std::atomic<bool> bad{false};
  for (unsigned i = 0; i < kClients; ++i) {
    waiters.emplace_back([&, i] {
      late[i].reserve(per);
      for (auto& p : all[i]) {
        if (p.h.wait() != Status::kOk) bad = true;
        const std::uint64_t now = now_ns();
        late[i].push_back(now > p.due ? now - p.due : 0);
      }
    });
  }
  for (auto& t : waiters) t.join();
  if (bad) {
    fail(o, "a parked continuation did not complete ok");
    return 1;
  }
  std::vector<std::uint64_t> lateness;
  for (auto& v : late) lateness.insert(lateness.end(), v.begin(), v.end());
  std::sort(lateness.begin(), lateness.end());
  const char* sc = "parked_100k";
  emit(sc, system, "idle_cpu_pct", 100.0 * double(cpu1 - cpu0) / double(w1 - w0), "pct");
  emit(sc, system, "rss_per_parked",
       rss1 > rss0 ? double(rss1 - rss0) / double(per * kClients) : 0.0, "bytes");
  emit(sc, system, "late_p50", percentile(lateness, 0.50) * 1e-3, "us");
  emit(sc, system, "late_p99", percentile(lateness, 0.99) * 1e-3, "us");
  emit(sc, system, "late_max", double(lateness.back()) * 1e-3, "us");
  return 0;
}

// The event queue's own part of the lateness: the same wakes in the embedded runtime
// (no client, no completion delivery), each continuation noting how late it resumed.
std::vector<std::int64_t>* g_late = nullptr;
std::uint64_t g_base = 0;  // the instants are ARG's high bits after this

Continuation note_lateness(CoContext c) {
  const std::uint64_t due = g_base + (c.arg() >> 20), slot = c.arg() & 0xFFFFF;
  co_await c.sleep_until(std::chrono::steady_clock::time_point(std::chrono::nanoseconds(due)));
  (*g_late)[slot] = static_cast<std::int64_t>(now_ns()) - static_cast<std::int64_t>(due);
  co_return 0;
}

int parked_embedded(const Options& o, const char* backend) {
  if (!backend_works(backend)) return 0;
  const std::uint64_t total = o.pick(100'000, 100'000, 4'000);
  RuntimeOptions ro;
  ro.pools = {{"default", 2, {cpu_for(0), cpu_for(1)}}};
  ro.event_backend = backend;
  Runtime rt(ro);
  rt.add("bench.note_lateness", coroutine<note_lateness>);
  std::vector<std::int64_t> late(total, -1);
  g_late = &late;
  // Due instants within 2 s, a second from now; ARG packs the instant (after g_base)
  // above the slot's 20 bits.
  const std::uint64_t first = now_ns() + 1'000'000'000;
  g_base = first;
  std::uint64_t rng = 0x2545F4914F6CDD1Dull;
  std::vector<Runtime::Handle> hs;
  hs.reserve(total);
  for (std::uint64_t k = 0; k < total; ++k) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    const std::uint64_t after = rng % 2'000'000'000;
    hs.push_back(rt.submit("bench.note_lateness", (after << 20) | k));
  }
  for (auto& h : hs) {
    if (!h.wait().ok()) return 1;
  }
  g_late = nullptr;
  std::vector<std::uint64_t> ns;
  ns.reserve(total);
  for (auto v : late) ns.push_back(v < 0 ? 0 : static_cast<std::uint64_t>(v));
  std::sort(ns.begin(), ns.end());
  const std::string system = std::string("insideout_embedded_") + backend;
  emit("parked_100k", system, "late_p50", percentile(ns, 0.50) * 1e-3, "us");
  emit("parked_100k", system, "late_p99", percentile(ns, 0.99) * 1e-3, "us");
  emit("parked_100k", system, "late_max", double(ns.back()) * 1e-3, "us");
  return 0;
}

// ---- fd_wake -------------------------------------------------------------------------

// Echoes single bytes on descriptor ARG until it reads end of file.
Continuation byte_echo(CoContext c) {
  const int fd = static_cast<int>(c.arg());
  std::array<std::byte, 64> buf;
  for (;;) {
    const std::int64_t n = co_await c.read(fd, buf);
    if (n <= 0) break;
    if (co_await c.write(fd, std::span(buf).first(static_cast<std::size_t>(n))) <= 0) break;
  }
  co_return 0;
}

// One byte to `fd`, one back, `count` times, `gap` apart: the round trips in ns.
std::vector<std::uint64_t> byte_trips(int fd, std::uint64_t count) {
  std::vector<std::uint64_t> out;
  out.reserve(count);
  const std::uint64_t warm = count / 10 + 1;
  char b = 'x';
  for (std::uint64_t i = 0; i < warm + count; ++i) {
    const std::uint64_t until = now_ns() + 50'000;  // both sides fall asleep in between
    while (now_ns() < until) std::this_thread::sleep_for(std::chrono::microseconds(20));
    const std::uint64_t t0 = now_ns();
    if (::write(fd, &b, 1) != 1 || ::read(fd, &b, 1) != 1) return {};
    if (i >= warm) out.push_back(now_ns() - t0);
  }
  return out;
}

bool backend_works(const char* backend);

int fd_wake_insideout(const Options& o, const char* backend) {
  if (!backend_works(backend)) return 0;
  RuntimeOptions ro;
  ro.pools = {{"default", 1, {cpu_for(1)}}};
  ro.event_backend = backend;
  Runtime rt(ro);
  rt.add("bench.byte_echo", coroutine<byte_echo>);
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return 1;
  const int flags = ::fcntl(sv[1], F_GETFL);
  ::fcntl(sv[1], F_SETFL, flags | O_NONBLOCK);
  auto h = rt.submit("bench.byte_echo", static_cast<std::uint64_t>(sv[1]));
  pin_thread(cpu_for(0));
  auto trips = byte_trips(sv[0], o.pick(20'000, 5'000, 300));
  ::shutdown(sv[0], SHUT_WR);
  h.wait();
  ::close(sv[0]);
  ::close(sv[1]);
  if (trips.empty()) return 1;
  emit_latency("fd_wake", std::string("insideout_") + backend, std::move(trips));
  return 0;
}

int fd_wake_epoll(const Options& o) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return 1;
  std::thread loop([fd = sv[1]] {
    pin_thread(cpu_for(1));
    const int ep = ::epoll_create1(EPOLL_CLOEXEC);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    char buf[64];
    for (;;) {
      epoll_event got;
      if (::epoll_wait(ep, &got, 1, -1) != 1) continue;
      const ssize_t n = ::read(fd, buf, sizeof buf);
      if (n <= 0 || ::write(fd, buf, static_cast<std::size_t>(n)) != n) break;
    }
    ::close(ep);
  });
  pin_thread(cpu_for(0));
  auto trips = byte_trips(sv[0], o.pick(20'000, 5'000, 300));
  ::shutdown(sv[0], SHUT_WR);
  loop.join();
  ::close(sv[0]);
  ::close(sv[1]);
  if (trips.empty()) return 1;
  emit_latency("fd_wake", "epoll_thread", std::move(trips));
  return 0;
}

// ---- tcp_echo ------------------------------------------------------------------------

constexpr int kConns = 64;
constexpr std::size_t kMsg = 64;

Continuation echo_conn(CoContext c) {
  const int fd = static_cast<int>(c.arg());
  std::array<std::byte, 4096> buf;
  for (;;) {
    const std::int64_t n = co_await c.recv(fd, buf);
    if (n <= 0) break;
    std::size_t off = 0;
    while (off < static_cast<std::size_t>(n)) {
      const std::int64_t w =
          co_await c.send(fd, std::span(buf).subspan(off, static_cast<std::size_t>(n) - off));
      if (w <= 0) break;
      off += static_cast<std::size_t>(w);
    }
  }
  c.close(fd);
  co_return 0;
}

// Accepts ARG >> 32 connections on listening socket ARG & 0xffffffff.
Continuation echo_server(CoContext c) {
  const int lfd = static_cast<int>(c.arg() & 0xFFFFFFFFu);
  for (std::uint64_t i = 0; i < (c.arg() >> 32); ++i) {
    const std::int64_t fd = co_await c.accept(lfd);
    if (fd < 0) co_return c.fail("accept failed");
    const int one = 1;
    ::setsockopt(static_cast<int>(fd), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c.spawn<echo_conn>(static_cast<std::uint64_t>(fd));
  }
  co_return 0;
}

int listener(sockaddr_in* addr) {
  const int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  addr->sin_family = AF_INET;
  addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr->sin_port = 0;
  socklen_t len = sizeof *addr;
  if (lfd < 0 || ::bind(lfd, reinterpret_cast<sockaddr*>(addr), len) != 0 ||
      ::listen(lfd, 128) != 0 || ::getsockname(lfd, reinterpret_cast<sockaddr*>(addr), &len) != 0)
    return -1;
  return lfd;
}

// The load: kConns connections, each one 64-byte message in flight at a time, driven by
// one epoll thread for `ns`; requests per second and each request's round trip.
bool echo_load(const sockaddr_in& addr, std::uint64_t ns, std::uint64_t* requests,
               std::vector<std::uint64_t>* rtts) {
  struct Conn {
    int fd;
    std::size_t got = 0;
    std::uint64_t sent_at = 0;
  };
  std::vector<Conn> conns;
  const int ep = ::epoll_create1(EPOLL_CLOEXEC);
  char msg[kMsg];
  std::memset(msg, 'm', sizeof msg);
  for (int i = 0; i < kConns; ++i) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0)
      return false;
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
    conns.push_back({fd});
  }
  for (int i = 0; i < kConns; ++i) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u32 = static_cast<std::uint32_t>(i);
    ::epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev);
    conns[i].sent_at = now_ns();
    if (::send(conns[i].fd, msg, kMsg, MSG_NOSIGNAL) != static_cast<ssize_t>(kMsg)) return false;
  }
  const std::uint64_t t0 = now_ns(), warm = t0 + ns / 10, end = warm + ns;
  std::uint64_t done = 0;
  char buf[kMsg * 4];
  while (true) {
    epoll_event evs[64];
    const int n = ::epoll_wait(ep, evs, 64, 100);
    const std::uint64_t now = now_ns();
    if (now >= end) break;
    for (int k = 0; k < n; ++k) {
      Conn& c = conns[evs[k].data.u32];
      const ssize_t r = ::recv(c.fd, buf, sizeof buf, 0);
      if (r <= 0) return false;
      c.got += static_cast<std::size_t>(r);
      while (c.got >= kMsg) {
        c.got -= kMsg;
        if (now >= warm) {
          ++done;
          rtts->push_back(now - c.sent_at);
        }
        c.sent_at = now_ns();
        if (::send(c.fd, msg, kMsg, MSG_NOSIGNAL) != static_cast<ssize_t>(kMsg)) return false;
      }
    }
  }
  *requests = done * 1'000'000'000 / ns;
  for (auto& c : conns) ::close(c.fd);
  ::close(ep);
  return true;
}

bool backend_works(const char* backend) {
  if (std::string_view(backend) != "io_uring") return true;
  RuntimeOptions probe;
  probe.pools = {{"default", 1, {}}};
  probe.event_backend = backend;
  try {
    Runtime rt(probe);
  } catch (const std::exception&) {
    return false;  // no usable io_uring here: only the epoll rows print
  }
  return true;
}

// One round of one system: requests/s into `rps`, each request's round trip into `rtts`.
bool echo_round_insideout(const char* backend, std::uint64_t ns, std::uint64_t* rps,
                          std::vector<std::uint64_t>* rtts) {
  sockaddr_in addr{};
  const int lfd = listener(&addr);
  if (lfd < 0) return false;
  RuntimeOptions ro;
  ro.pools = {{"default", 1, {cpu_for(1)}}};
  ro.event_backend = backend;
  Runtime rt(ro);
  rt.add("bench.echo_server", coroutine<echo_server>);
  auto h = rt.submit("bench.echo_server", (std::uint64_t{kConns} << 32) | std::uint32_t(lfd));
  const bool ok = echo_load(addr, ns, rps, rtts);
  h.wait();
  rt.stop();  // the connections' continuations end with their sockets
  ::close(lfd);
  return ok;
}

bool echo_round_asio(std::uint64_t ns, std::uint64_t* rps, std::vector<std::uint64_t>* rtts) {
  namespace asio = boost::asio;
  using asio::ip::tcp;
  asio::io_context io(1);
  tcp::acceptor acc(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(acc.local_endpoint().port());
  struct Session : std::enable_shared_from_this<Session> {
    explicit Session(tcp::socket s) : sock(std::move(s)) {}
    tcp::socket sock;
    std::array<char, 4096> buf;
    void read() {
      sock.async_read_some(asio::buffer(buf), [self = shared_from_this()](auto ec, std::size_t n) {
        if (!ec) self->write(n);
      });
    }
    void write(std::size_t n) {
      asio::async_write(sock, asio::buffer(buf.data(), n),
                        [self = shared_from_this()](auto ec, std::size_t) {
                          if (!ec) self->read();
                        });
    }
  };
  std::function<void()> accept = [&] {
    acc.async_accept([&](auto ec, tcp::socket s) {
      if (ec) return;
      s.set_option(tcp::no_delay(true));
      std::make_shared<Session>(std::move(s))->read();
      accept();
    });
  };
  accept();
  std::thread server([&] {
    pin_thread(cpu_for(1));
    io.run();
  });
  const bool ok = echo_load(addr, ns, rps, rtts);
  io.stop();
  server.join();
  return ok;
}

// The systems take turns, a short round each, so that the machine's slow drifts (other
// guests, frequency) fall on all of them alike: requests/s is the median of a system's
// rounds, p99 that of all its requests, and each insideout backend's ratio to Asio the
// median of the rounds' ratios. The rows are printed after the last round.
int tcp_echo(const Options& o) {
  struct System {
    std::string name;
    const char* backend;  // nullptr: Asio
    std::vector<double> rps;
    std::vector<std::uint64_t> rtts;
  };
  std::vector<System> systems = {{"asio", nullptr, {}, {}}, {"insideout_epoll", "epoll", {}, {}}};
  if (backend_works("io_uring")) systems.push_back({"insideout_io_uring", "io_uring", {}, {}});
  const std::uint64_t rounds = o.pick(9, 7, 1);
  const std::uint64_t ns = o.pick(1'000'000'000, 300'000'000, 200'000'000);
  pin_thread(cpu_for(0));
  for (std::uint64_t round = 0; round < rounds; ++round) {
    for (auto& s : systems) {
      std::uint64_t rps = 0;
      const bool ok = s.backend == nullptr ? echo_round_asio(ns, &rps, &s.rtts)
                                           : echo_round_insideout(s.backend, ns, &rps, &s.rtts);
      if (!ok) return 1;
      s.rps.push_back(static_cast<double>(rps));
    }
  }
  // Each round's ratio to Asio's (a round's systems saw the same machine), median.
  for (std::size_t k = 1; k < systems.size(); ++k) {
    std::vector<double> ratio;
    for (std::size_t r = 0; r < rounds; ++r) ratio.push_back(systems[k].rps[r] / systems[0].rps[r]);
    std::sort(ratio.begin(), ratio.end());
    emit("tcp_echo", systems[k].name, "round_ratio_to_asio", ratio[ratio.size() / 2], "x");
  }
  for (auto& s : systems) {
    if (s.rtts.empty()) return 1;
    std::sort(s.rps.begin(), s.rps.end());
    std::sort(s.rtts.begin(), s.rtts.end());
    emit("tcp_echo", s.name, "requests_per_s", s.rps[s.rps.size() / 2], "req/s");
    emit("tcp_echo", s.name, "p99", percentile(s.rtts, 0.99) * 1e-3, "us");
  }
  return 0;
}

}  // namespace
}  // namespace insideout::bench

int main(int argc, char** argv) {
  using namespace insideout::bench;
  const Options o = parse_options(argc, argv, "The event queue beside bare epoll and Boost.Asio.",
                                  {"parked_100k", "fd_wake", "tcp_echo"});
  int rc = 0;
  if (o.wants("fd_wake")) {
    rc |= fd_wake_epoll(o);
    rc |= fd_wake_insideout(o, "epoll");
    rc |= fd_wake_insideout(o, "io_uring");
  }
  if (o.wants("tcp_echo")) rc |= tcp_echo(o);
  if (o.wants("parked_100k")) {
    rc |= parked(o, "epoll");
    rc |= parked(o, "io_uring");
    rc |= parked_embedded(o, "epoll");
    rc |= parked_embedded(o, "io_uring");
  }
  if (rc != 0) fail(o, "a measurement failed");
  return rc;
}
