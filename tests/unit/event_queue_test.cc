// The event queue through the SDK, on both backends (epoll, and io_uring where this
// kernel allows it; nothing newer than Linux 6.1 is used by either): timers, descriptor
// readiness, I/O, timeouts, a descriptor closed under a waiter, signals, a TCP echo.
#include "event_queue.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "insideout/runtime.hpp"
#include "insideout/sdk.hpp"

namespace insideout {
namespace {

using namespace std::chrono_literals;

// Waits until fd ARG is readable (1 s at most): the IO_EV_* mask or -errno.
Continuation wait_readable(CoContext c) {
  const std::int64_t r = co_await c.readable(static_cast<int>(c.arg()), 1s);
  co_return static_cast<std::uint64_t>(r);
}

// Waits 30 ms for fd ARG to become readable (it does not): -ETIMEDOUT.
Continuation wait_short(CoContext c) {
  const std::int64_t r = co_await c.readable(static_cast<int>(c.arg()), 30ms);
  co_return static_cast<std::uint64_t>(r);
}

// Reads until 4 bytes have come or the peer hangs up; the sum of the bytes.
Continuation read_four(CoContext c) {
  std::array<std::byte, 4> buf{};
  std::size_t got = 0;
  while (got < buf.size()) {
    const std::int64_t n =
        co_await c.read(static_cast<int>(c.arg()), std::span(buf).subspan(got), 2s);
    if (n <= 0) co_return c.fail("read: " + std::string(n == 0 ? "eof" : std::strerror(-n)));
    got += static_cast<std::size_t>(n);
  }
  std::uint64_t sum = 0;
  for (auto b : buf) sum += static_cast<std::uint8_t>(b);
  co_return sum;
}

// Waits twice for fd ARG to be readable, reading nothing: a level, not an edge, so both
// resume on data that was there before either. The two IO_EV_* masks, first << 8 | second.
Continuation wait_readable_twice(CoContext c) {
  const std::int64_t a = co_await c.readable(static_cast<int>(c.arg()), 1s);
  if (a < 0) co_return c.fail(std::string("first wait: ") + std::strerror(static_cast<int>(-a)));
  const std::int64_t b = co_await c.readable(static_cast<int>(c.arg()), 1s);
  if (b < 0) co_return c.fail(std::string("second wait: ") + std::strerror(static_cast<int>(-b)));
  co_return static_cast<std::uint64_t>(a << 8 | b);
}

// Reads stream socket ARG to its end: one byte, a 50 ms sleep (meanwhile the peer sends
// its last bytes and shuts its side, both seen by the queue before the next read), then
// reads until 0. The bytes read.
Continuation read_to_end(CoContext c) {
  const int fd = static_cast<int>(c.arg());
  std::array<std::byte, 256> buf;
  std::int64_t n = co_await c.recv(fd, buf, 0, 2s);
  if (n <= 0) co_return c.fail("first read: " + std::to_string(n));
  std::uint64_t total = static_cast<std::uint64_t>(n);
  co_await c.sleep_for(50ms);
  while ((n = co_await c.recv(fd, buf, 0, 1s)) > 0) total += static_cast<std::uint64_t>(n);
  if (n < 0) co_return c.fail(std::string("read: ") + std::strerror(static_cast<int>(-n)));
  co_return total;
}

// Reads three datagrams from socket ARG: one, a 50 ms sleep (meanwhile two more are
// queued together), then the two. The sum of their lengths.
Continuation read_three_datagrams(CoContext c) {
  const int fd = static_cast<int>(c.arg());
  std::array<std::byte, 256> buf;
  std::uint64_t total = 0;
  for (int k = 0; k < 3; ++k) {
    if (k == 1) co_await c.sleep_for(50ms);
    const std::int64_t n = co_await c.recv(fd, buf, 0, 1s);
    if (n <= 0) co_return c.fail("datagram " + std::to_string(k) + ": " + std::to_string(n));
    total += static_cast<std::uint64_t>(n);
  }
  co_return total;
}

// Closes fd ARG through the event queue.
Continuation close_it(CoContext c) {
  co_return static_cast<std::uint64_t>(c.close(static_cast<int>(c.arg())));
}

Continuation wait_sigusr1(CoContext c) {
  const std::int64_t r = co_await c.signal(SIGUSR1, 2s);
  co_return static_cast<std::uint64_t>(r);
}

Continuation wait_sigterm(CoContext c) {  // not routable: refused at once
  const std::int64_t r = co_await c.signal(SIGTERM, 2s);
  co_return static_cast<std::uint64_t>(r);
}

// One echo connection: echoes until the peer hangs up.
Continuation echo_conn(CoContext c) {
  const int fd = static_cast<int>(c.arg());
  std::array<std::byte, 256> buf;
  for (;;) {
    const std::int64_t n = co_await c.recv(fd, buf, 0, 2s);
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

// Accepts ARG >> 32 connections on listening socket ARG & 0xffffffff, one echo each.
Continuation echo_server(CoContext c) {
  const int lfd = static_cast<int>(c.arg() & 0xFFFFFFFFu);
  const std::uint64_t n = c.arg() >> 32;
  for (std::uint64_t i = 0; i < n; ++i) {
    const std::int64_t fd = co_await c.accept(lfd, 2s);
    if (fd < 0) co_return c.fail("accept: " + std::string(std::strerror(static_cast<int>(-fd))));
    c.spawn<echo_conn>(static_cast<std::uint64_t>(fd));
  }
  co_return n;
}

// A non-blocking listening TCP socket on 127.0.0.1 (a port of the kernel's choosing, in
// *addr), or -1.
int loopback_listener(sockaddr_in* addr) {
  const int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  *addr = sockaddr_in{};
  addr->sin_family = AF_INET;
  addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof *addr;
  if (lfd < 0 || ::bind(lfd, reinterpret_cast<sockaddr*>(addr), len) != 0 ||
      ::listen(lfd, 64) != 0 || ::getsockname(lfd, reinterpret_cast<sockaddr*>(addr), &len) != 0)
    return -1;
  return lfd;
}

class EventQueueTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    if (std::string(GetParam()) == "io_uring") {
      const std::string why = engine::probe_io_uring();
      if (!why.empty()) GTEST_SKIP() << "io_uring unavailable here: " << why;
    }
    RuntimeOptions o;
    o.pools = {{"default", 2, {}}};
    o.pin = false;
    o.event_backend = GetParam();
    rt_ = std::make_unique<Runtime>(o);
    rt_->add("t.wait_readable", coroutine<wait_readable>);
    rt_->add("t.wait_short", coroutine<wait_short>);
    rt_->add("t.read_four", coroutine<read_four>);
    rt_->add("t.wait_readable_twice", coroutine<wait_readable_twice>);
    rt_->add("t.close_it", coroutine<close_it>);
    rt_->add("t.read_to_end", coroutine<read_to_end>);
    rt_->add("t.read_three_datagrams", coroutine<read_three_datagrams>);
    rt_->add("t.wait_sigusr1", coroutine<wait_sigusr1>);
    rt_->add("t.wait_sigterm", coroutine<wait_sigterm>);
    rt_->add("t.echo_server", coroutine<echo_server>);
  }
  void TearDown() override { rt_.reset(); }
  static std::array<int, 2> pair() {
    std::array<int, 2> sv{};
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv.data()), 0);
    return sv;
  }
  std::unique_ptr<Runtime> rt_;
};

TEST_P(EventQueueTest, ShouldResumeAWaiterWhenItsDescriptorBecomesReadable) {
  auto [a, b] = pair();
  auto h = rt_->submit("t.wait_readable", static_cast<std::uint64_t>(a));
  std::this_thread::sleep_for(20ms);
  EXPECT_FALSE(h.done()) << "resumed before anything was written";
  ASSERT_EQ(::write(b, "x", 1), 1);
  const auto r = h.wait();
  ASSERT_TRUE(r.ok()) << r.error();
  EXPECT_EQ(static_cast<std::int64_t>(r.value) & IO_EV_READ, IO_EV_READ);
  ::close(a);
  ::close(b);
}

TEST_P(EventQueueTest, ShouldTimeOutAWaitNothingWakes) {
  auto [a, b] = pair();
  const auto start = std::chrono::steady_clock::now();
  const auto r = rt_->call("t.wait_short", static_cast<std::uint64_t>(a));
  const auto took = std::chrono::steady_clock::now() - start;
  ASSERT_TRUE(r.ok()) << r.error();
  EXPECT_EQ(static_cast<std::int64_t>(r.value), -ETIMEDOUT);
  EXPECT_GE(took, 30ms);
  ::close(a);
  ::close(b);
}

TEST_P(EventQueueTest, ShouldReadWhatArrivesInPiecesAcrossWaits) {
  auto [a, b] = pair();
  auto h = rt_->submit("t.read_four", static_cast<std::uint64_t>(a));
  const unsigned char bytes[4] = {1, 2, 3, 4};
  for (unsigned char byte : bytes) {
    std::this_thread::sleep_for(5ms);
    ASSERT_EQ(::write(b, &byte, 1), 1);
  }
  const auto r = h.wait();
  ASSERT_TRUE(r.ok()) << r.error();
  EXPECT_EQ(r.value, 10u);
  ::close(a);
  ::close(b);
}

TEST_P(EventQueueTest, ShouldResumeEveryWaitOnADescriptorThatIsReadyAlready) {
  auto [a, b] = pair();
  ASSERT_EQ(::write(b, "x", 1), 1);
  const auto r = rt_->call("t.wait_readable_twice", static_cast<std::uint64_t>(a));
  ASSERT_TRUE(r.ok()) << r.error();
  EXPECT_EQ(r.value >> 8 & IO_EV_READ, static_cast<std::uint64_t>(IO_EV_READ)) << r.value;
  EXPECT_EQ(r.value & IO_EV_READ, static_cast<std::uint64_t>(IO_EV_READ)) << r.value;
  ::close(a);
  ::close(b);
}

// A descriptor one continuation waited on, closed with close(2) rather than through the
// queue, and its number given to a new socket that another continuation waits on: the
// second wait watches the new socket (the epoll backend registers descriptors once).
TEST_P(EventQueueTest, ShouldWatchTheNewFileBehindAReusedDescriptorNumber) {
  auto [a, b] = pair();
  ASSERT_EQ(::write(b, "x", 1), 1);
  const auto first = rt_->call("t.wait_readable", static_cast<std::uint64_t>(a));
  ASSERT_TRUE(first.ok()) << first.error();
  ASSERT_EQ(static_cast<std::int64_t>(first.value) & IO_EV_READ, IO_EV_READ);
  ::close(a);
  ::close(b);
  auto [c, d] = pair();
  ASSERT_EQ(c, a) << "the kernel did not reuse the number; the test needs it";
  auto h = rt_->submit("t.wait_readable", static_cast<std::uint64_t>(c));
  std::this_thread::sleep_for(20ms);
  EXPECT_FALSE(h.done()) << "resumed before anything was written";
  ASSERT_EQ(::write(d, "y", 1), 1);
  const auto r = h.wait();
  ASSERT_TRUE(r.ok()) << r.error();
  EXPECT_EQ(static_cast<std::int64_t>(r.value) & IO_EV_READ, IO_EV_READ)
      << "the wait did not see the new socket (-ETIMEDOUT: it watched the old one)";
  ::close(c);
  ::close(d);
}

// A short read of a stream socket emptied it, so the SDK's next read waits without
// trying. When the peer's last bytes and its shutdown came together, the read that took
// the bytes took the end of file too and no edge follows: the registration must remember
// that the peer has shut its side, or the next read would wait for nothing.
TEST_P(EventQueueTest, ShouldSeeTheEndOfAStreamThatCameWithItsLastBytes) {
  auto [a, b] = pair();
  auto h = rt_->submit("t.read_to_end", static_cast<std::uint64_t>(a));
  std::this_thread::sleep_for(10ms);  // parked on an empty socket: registered
  ASSERT_EQ(::write(b, "x", 1), 1);
  std::this_thread::sleep_for(10ms);  // the continuation sleeps now
  ASSERT_EQ(::write(b, "yz", 2), 2);
  ASSERT_EQ(::shutdown(b, SHUT_WR), 0);
  const auto r = h.wait();
  ASSERT_TRUE(r.ok()) << r.error() << " (-ETIMEDOUT: the end of file was lost)";
  EXPECT_EQ(r.value, 3u);
  ::close(a);
  ::close(b);
}

// A datagram socket's short read says nothing of the next datagram: the SDK tries it.
TEST_P(EventQueueTest, ShouldReadDatagramsQueuedTogetherWithoutWaitingForMore) {
  std::array<int, 2> sv{};
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv.data()), 0);
  auto h = rt_->submit("t.read_three_datagrams", static_cast<std::uint64_t>(sv[0]));
  std::this_thread::sleep_for(10ms);
  ASSERT_EQ(::send(sv[1], "a", 1, 0), 1);
  std::this_thread::sleep_for(10ms);  // the continuation sleeps now
  ASSERT_EQ(::send(sv[1], "bb", 2, 0), 2);
  ASSERT_EQ(::send(sv[1], "ccc", 3, 0), 3);
  const auto r = h.wait();
  ASSERT_TRUE(r.ok()) << r.error() << " (-110: the third datagram was never tried)";
  EXPECT_EQ(r.value, 6u);
  ::close(sv[0]);
  ::close(sv[1]);
}

TEST_P(EventQueueTest, ShouldFailAWaiterCleanlyWhenItsDescriptorIsClosed) {
  auto [a, b] = pair();
  auto h = rt_->submit("t.wait_readable", static_cast<std::uint64_t>(a));
  std::this_thread::sleep_for(100ms);  // parked by now (if not, it parks on a closed fd: EBADF)
  const auto closed = rt_->call("t.close_it", static_cast<std::uint64_t>(a));
  ASSERT_TRUE(closed.ok()) << closed.error();
  EXPECT_EQ(closed.value, 0u);
  const auto r = h.wait();
  ASSERT_TRUE(r.ok()) << r.error();
  const auto v = static_cast<std::int64_t>(r.value);
  // Parked: -EBADF from close_fd(). io_uring reports a poll on a closed descriptor as an
  // error event, epoll refuses to arm it: either way the waiter ends, and promptly.
  EXPECT_TRUE(v == -EBADF || (v >= 0 && (v & IO_EV_ERROR))) << v;
  EXPECT_EQ(::fcntl(a, F_GETFD), -1) << "the descriptor is still open";
  ::close(b);
}

TEST_P(EventQueueTest, ShouldResumeASignalWaiter) {
  // Routed signals are blocked in every thread: this one's mask is inherited by the
  // workers the Runtime made (SetUp ran on this thread, but made them before the block,
  // so make a fresh Runtime after blocking).
  sigset_t set, old;
  sigemptyset(&set);
  sigaddset(&set, SIGUSR1);
  ASSERT_EQ(pthread_sigmask(SIG_BLOCK, &set, &old), 0);
  rt_.reset();
  SetUp();
  auto h = rt_->submit("t.wait_sigusr1");
  std::this_thread::sleep_for(20ms);
  EXPECT_FALSE(h.done());
  ASSERT_EQ(::kill(::getpid(), SIGUSR1), 0);
  const auto r = h.wait();
  ASSERT_TRUE(r.ok()) << r.error();
  EXPECT_EQ(static_cast<std::int64_t>(r.value), SIGUSR1);
  // A signal that is not routed to the event queue is refused, not waited for forever.
  const auto term = rt_->call("t.wait_sigterm");
  ASSERT_TRUE(term.ok()) << term.error();
  EXPECT_EQ(static_cast<std::int64_t>(term.value), -EINVAL);
  rt_.reset();
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

TEST_P(EventQueueTest, ShouldServeTcpEchoToSeveralConnections) {
  sockaddr_in addr{};
  const int lfd = loopback_listener(&addr);
  ASSERT_GE(lfd, 0);
  constexpr int kConns = 8;
  auto server = rt_->submit("t.echo_server", (std::uint64_t{kConns} << 32) | lfd);
  std::vector<std::thread> clients;
  std::atomic<int> good{0};
  for (int i = 0; i < kConns; ++i) {
    clients.emplace_back([&, i] {
      const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return;
      timeval tv{2, 0};
      ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      bool ok = true;
      for (int round = 0; round < 20 && ok; ++round) {
        const std::string msg = "hello " + std::to_string(i) + "/" + std::to_string(round);
        ok = ::send(fd, msg.data(), msg.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(msg.size());
        std::string back(msg.size(), '\0');
        std::size_t got = 0;
        while (ok && got < back.size()) {
          const ssize_t n = ::recv(fd, back.data() + got, back.size() - got, 0);
          ok = n > 0;
          if (ok) got += static_cast<std::size_t>(n);
        }
        ok = ok && back == msg;
      }
      if (ok) good.fetch_add(1);
      ::close(fd);
    });
  }
  for (auto& t : clients) t.join();
  const auto r = server.wait();
  ASSERT_TRUE(r.ok()) << r.error();
  EXPECT_EQ(good.load(), kConns);
  ::close(lfd);
}

// Connections that send a few hundred bytes in chunks and shut their side at once after
// the last: every byte comes back, then the end of file (the server's close). Short and
// full reads (the server reads 256 bytes at a time) and ends of file close behind the
// last bytes, on four threads at once. (The end of file that the read of the last bytes
// takes with them is pinned down by ShouldSeeTheEndOfAStreamThatCameWithItsLastBytes.)
TEST_P(EventQueueTest, ShouldEchoEveryByteThenEndEachConnectionThatShutsItsSide) {
  sockaddr_in addr{};
  const int lfd = loopback_listener(&addr);
  ASSERT_GE(lfd, 0);
  constexpr int kThreads = 4, kPerThread = 16;
  auto server = rt_->submit("t.echo_server", (std::uint64_t{kThreads * kPerThread} << 32) | lfd);
  std::atomic<int> good{0};
  std::vector<std::string> why(kThreads);
  std::vector<std::thread> clients;
  for (int i = 0; i < kThreads; ++i) {
    clients.emplace_back([&, i] {
      std::uint32_t seed = 0x9E3779B9u * static_cast<std::uint32_t>(i + 1);
      auto next = [&] { return seed = seed * 1664525u + 1013904223u; };
      for (int k = 0; k < kPerThread; ++k) {
        const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
          why[i] = "connect failed";
          ::close(fd);
          return;
        }
        timeval tv{2, 0};
        ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        std::string msg(1 + next() % 600, '\0');
        for (char& ch : msg) ch = static_cast<char>('a' + next() % 26);
        // One to three chunks, the shutdown right after the last.
        std::size_t sent = 0;
        const std::size_t cut = next() % 3 == 0 ? msg.size() : msg.size() / 2;
        for (std::size_t end : {cut, msg.size()}) {
          if (end > sent)
            sent +=
                static_cast<std::size_t>(::send(fd, msg.data() + sent, end - sent, MSG_NOSIGNAL));
        }
        ::shutdown(fd, SHUT_WR);
        std::string back;
        char buf[512];
        ssize_t n;
        while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0)
          back.append(buf, static_cast<std::size_t>(n));
        ::close(fd);
        if (n != 0 || back != msg) {
          why[i] = "connection " + std::to_string(k) + ": " + std::to_string(back.size()) + " of " +
                   std::to_string(msg.size()) + " bytes back, then " +
                   (n == 0 ? "end of file" : "no end of file within 2 s");
          return;
        }
        good.fetch_add(1);
      }
    });
  }
  for (auto& t : clients) t.join();
  for (const auto& w : why) EXPECT_TRUE(w.empty()) << w;
  EXPECT_EQ(good.load(), kThreads * kPerThread);
  const auto r = server.wait();
  ASSERT_TRUE(r.ok()) << r.error();
  ::close(lfd);
}

INSTANTIATE_TEST_SUITE_P(Backends, EventQueueTest, ::testing::Values("epoll", "io_uring"),
                         [](const auto& info) { return std::string(info.param); });

TEST(EventQueueOptions, ShouldRefuseAnUnknownBackend) {
  RuntimeOptions o;
  o.event_backend = "kqueue";
  EXPECT_THROW(Runtime{o}, std::invalid_argument);
}

}  // namespace
}  // namespace insideout
