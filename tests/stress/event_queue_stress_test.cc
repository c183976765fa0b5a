// The event queue under races, on both backends: readiness, a wait's own timeout, a
// close of the descriptor and a drain all race to end the same waits. Each continuation
// must have exactly one outcome (the Runtime's handle completes once, with a result the
// wait can have), and nothing may be left parked. Bounded: a fixed count, a few seconds.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "event_queue.h"
#include "insideout/runtime.hpp"
#include "insideout/sdk.hpp"

namespace insideout {
namespace {

using namespace std::chrono_literals;

// ARG: descriptor (low 32 bits), timeout in microseconds (high 32 bits). Waits three
// times in a row (readable, or its timeout), so a wait ends and another starts while
// writers and closers race it. The result packs each wait's outcome class.
Continuation racer(CoContext c) {
  const int fd = static_cast<int>(c.arg() & 0xFFFFFFFFu);
  const auto timeout = std::chrono::microseconds(c.arg() >> 32);
  std::uint64_t classes = 0;
  for (int i = 0; i < 3; ++i) {
    const std::int64_t r = co_await c.readable(fd, timeout);
    std::uint64_t k;
    if (r >= 0) {
      k = 1;  // ready
      char b;
      (void)!::read(fd, &b, 1);
    } else if (r == -ETIMEDOUT) {
      k = 2;
    } else if (r == -EBADF) {
      k = 3;
    } else if (r == -ECANCELED) {
      k = 4;
    } else {
      co_return c.fail("unexpected wait result " + std::to_string(r));
    }
    classes |= k << (8 * i);
    if (k >= 3) break;  // closed or cancelled: it stops
  }
  co_return classes;
}

Continuation closer(CoContext c) {
  co_return static_cast<std::uint64_t>(c.close(static_cast<int>(c.arg())));
}

class EventQueueStress : public ::testing::TestWithParam<const char*> {};

TEST_P(EventQueueStress, ShouldEndEveryWaitExactlyOnceWhileEventsTimeoutsAndClosesRace) {
  if (std::string(GetParam()) == "io_uring") {
    const std::string why = engine::probe_io_uring();
    if (!why.empty()) GTEST_SKIP() << "io_uring unavailable here: " << why;
  }
  RuntimeOptions o;
  o.pools = {{"default", 2, {}}};
  o.pin = false;
  o.event_backend = GetParam();
  Runtime rt(o);
  rt.add("t.racer", coroutine<racer>);
  rt.add("t.closer", coroutine<closer>);
  constexpr int kRounds = 10;
  constexpr int kPairs = 200;
  std::mt19937 rng(12345);
  int done = 0;
  for (int round = 0; round < kRounds; ++round) {
    std::vector<int> mine(kPairs), theirs(kPairs);
    std::vector<Runtime::Handle> hs;
    for (int i = 0; i < kPairs; ++i) {
      int sv[2];
      ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
      mine[i] = sv[0];
      theirs[i] = sv[1];
      const std::uint64_t timeout_us = 200 + rng() % 3000;
      hs.push_back(rt.submit("t.racer", (timeout_us << 32) | static_cast<std::uint32_t>(sv[0])));
    }
    // Writers and closers race the timeouts: a third of the pairs get bytes, a sixth are
    // closed under their waiter, the rest time out.
    std::vector<Runtime::Handle> closes;
    for (int i = 0; i < kPairs; ++i) {
      const unsigned what = rng() % 6;
      if (what < 2) {
        (void)!::write(theirs[i], "ab", 1 + what);
      } else if (what == 2) {
        closes.push_back(rt.submit("t.closer", static_cast<std::uint64_t>(mine[i])));
        mine[i] = -1;
      }
      if (i % 50 == 0) std::this_thread::sleep_for(200us);
    }
    for (auto& h : hs) {
      const auto r = h.wait();
      ASSERT_TRUE(r.ok()) << r.error();
      ASSERT_NE(r.value & 0xFF, 0u) << "a wait ended without an outcome";
      ++done;
    }
    for (auto& h : closes) ASSERT_TRUE(h.wait().ok());
    for (int i = 0; i < kPairs; ++i) {
      if (mine[i] >= 0) ::close(mine[i]);
      ::close(theirs[i]);
    }
  }
  EXPECT_EQ(done, kRounds * kPairs);
}

TEST_P(EventQueueStress, ShouldCancelEveryParkedWaitOnceWhenTheRuntimeStops) {
  if (std::string(GetParam()) == "io_uring") {
    const std::string why = engine::probe_io_uring();
    if (!why.empty()) GTEST_SKIP() << "io_uring unavailable here: " << why;
  }
  std::vector<int> fds;
  std::vector<Runtime::Handle> hs;
  {
    RuntimeOptions o;
    o.pools = {{"default", 2, {}}};
    o.pin = false;
    o.event_backend = GetParam();
    Runtime rt(o);
    rt.add("t.racer", coroutine<racer>);
    for (int i = 0; i < 500; ++i) {
      int sv[2];
      ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
      fds.push_back(sv[0]);
      fds.push_back(sv[1]);
      // Timeouts of about an hour: only the stop can end them.
      hs.push_back(rt.submit(
          "t.racer", (std::uint64_t{3'600'000'000} << 32) | static_cast<std::uint32_t>(sv[0])));
    }
    std::this_thread::sleep_for(50ms);
    for (auto& h : hs) EXPECT_FALSE(h.done());
    // ~Runtime would wait for them: stop() cancels every wait first.
    EXPECT_TRUE(rt.stop(std::chrono::seconds(10)));
  }
  for (auto& h : hs) {
    ASSERT_TRUE(h.done());
    const auto r = h.wait();
    // Cut off by the stop (the root is cancelled), exactly once.
    EXPECT_FALSE(r.ok());
  }
  for (int fd : fds) ::close(fd);
}

INSTANTIATE_TEST_SUITE_P(Backends, EventQueueStress, ::testing::Values("epoll", "io_uring"),
                         [](const auto& info) { return std::string(info.param); });

}  // namespace
}  // namespace insideout
