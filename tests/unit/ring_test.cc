#include "insideout/shm/ring.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <memory>
#include <thread>
#include <vector>

namespace insideout::shm {
namespace {

// A ring in anonymous shared memory, so that fork()ed children share it.
struct SharedRing {
  explicit SharedRing(std::uint32_t capacity) : capacity(capacity), bytes(ring_bytes(capacity)) {
    mem = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ring_initialize(mem, capacity);
  }
  ~SharedRing() { ::munmap(mem, bytes); }
  RingView view() const { return RingView(mem, capacity); }
  std::uint32_t capacity;
  std::size_t bytes;
  void* mem;
};

TEST(Ring, ShouldPopWhatWasPushedInOrder) {
  SharedRing r(8);
  RingProducer p(r.view());
  RingConsumer c(r.view());
  std::uint32_t v;
  EXPECT_FALSE(c.ready());
  EXPECT_FALSE(c.try_pop(&v));
  for (std::uint32_t i = 0; i < 8; ++i) EXPECT_TRUE(p.try_push(100 + i));
  EXPECT_FALSE(p.try_push(999)) << "a full ring refuses";
  for (std::uint32_t i = 0; i < 8; ++i) {
    ASSERT_TRUE(c.try_pop(&v));
    EXPECT_EQ(v, 100 + i);
  }
  EXPECT_FALSE(c.try_pop(&v));
}

TEST(Ring, ShouldWrapAroundManyLaps) {
  SharedRing r(4);
  RingProducer p(r.view());
  RingConsumer c(r.view());
  for (std::uint32_t i = 0; i < 10000; ++i) {
    ASSERT_TRUE(p.try_push(i));
    if (i % 3 == 0) {
      ASSERT_TRUE(p.try_push(i + 1'000'000));
    }
    std::uint32_t v;
    ASSERT_TRUE(c.try_pop(&v));
    EXPECT_EQ(v, i);
    if (i % 3 == 0) {
      ASSERT_TRUE(c.try_pop(&v));
      EXPECT_EQ(v, i + 1'000'000);
    }
  }
}

TEST(Ring, ShouldPushAndPopInBatches) {
  SharedRing r(64);
  RingProducer p(r.view());
  RingConsumer c(r.view());
  std::vector<std::uint32_t> in(100);
  for (std::uint32_t i = 0; i < 100; ++i) in[i] = i;
  std::size_t pushed = 0;
  while (pushed < 64) {
    const std::size_t n =
        p.try_push_batch(std::span<const std::uint32_t>(in).subspan(pushed, 64 - pushed + 10));
    ASSERT_GT(n, 0u);
    pushed += n;
  }
  EXPECT_EQ(pushed, 64u);
  EXPECT_EQ(p.try_push_batch(std::span<const std::uint32_t>(in).subspan(0, 8)), 0u) << "full";
  std::uint32_t out[40];
  EXPECT_EQ(c.pop_batch(out), 40u);
  for (std::uint32_t i = 0; i < 40; ++i) EXPECT_EQ(out[i], i);
  EXPECT_EQ(p.try_push_batch(std::span<const std::uint32_t>(in).subspan(64, 30)), 30u);
  std::vector<std::uint32_t> rest(64);
  EXPECT_EQ(c.pop_batch(rest), 54u);
  EXPECT_EQ(rest[0], 40u);
  EXPECT_EQ(rest[53], 93u);
}

TEST(Ring, ShouldIgnoreGarbageThatDoesNotCarryTheExpectedTag) {
  SharedRing r(16);
  RingConsumer c(r.view());
  // A hostile producer scribbles over every slot: values whose tags do not match the
  // consumer's position are "nothing ready", never a wild position.
  for (std::uint32_t i = 0; i < 16; ++i)
    r.view().slot(i).store(0xDEADBEEFCAFEBABEull ^ (i * 0x9E3779B97F4A7C15ull));
  std::uint32_t v;
  EXPECT_FALSE(c.try_pop(&v));
  EXPECT_EQ(c.head(), 0u);
  // A forged slot with the right tag is taken as a value: validation comes later.
  r.view().slot(0).store((std::uint64_t{1} << 32) | 1234);
  ASSERT_TRUE(c.try_pop(&v));
  EXPECT_EQ(v, 1234u);
}

// The daemon pushes completions with a tail of its own into a ring the client may forge.
// Whatever the slots say, a push ends at once: with kCorrupt for a tag ahead of a tail
// nobody moved, kFull for the previous lap's tag. Run in a child, so that a push that
// loops forever fails the test instead of hanging it.
TEST(Ring, ShouldReportForgedSlotsInsteadOfLoopingOnThem) {
  SharedRing r(8);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    std::atomic<std::uint64_t> private_tail{3};
    RingProducer p(r.view(), &private_tail);
    int failures = 0;
    // A tag "ahead": the slot at position 3 claims to hold position 3's item already.
    r.view().slot(3).store(ring_detail::make_word(4, 0));
    PushFailure why = PushFailure::kNone;
    failures += p.try_push(7, &why) ? 1 : 0;
    failures += why == PushFailure::kCorrupt ? 0 : 1;
    // Laps ahead.
    r.view().slot(3).store(ring_detail::make_word(3 + 8 * 1000, 0));
    failures += p.try_push(7, &why) ? 1 : 0;
    failures += why == PushFailure::kCorrupt ? 0 : 1;
    // A batch checks its last slot (positions 3..5 here): forged ahead.
    r.view().slot(3).store(ring_detail::make_word(3, 0));
    r.view().slot(5).store(ring_detail::make_word(5 + 8 * 7, 0));
    failures += p.try_push_batch(std::vector<std::uint32_t>{1, 2, 3}, &why) == 0 ? 0 : 1;
    failures += why == PushFailure::kCorrupt ? 0 : 1;
    // A tag behind: the previous lap's item still there (full), which is no loop either.
    r.view().slot(3).store(ring_detail::make_word(3 - 8 + 1, 0));
    r.view().slot(5).store(ring_detail::make_word(5, 0));
    failures += p.try_push(7, &why) ? 1 : 0;
    failures += why == PushFailure::kFull ? 0 : 1;
    failures += private_tail.load() == 3 ? 0 : 1;  // nothing was reserved
    // And an honest slot still takes the push.
    r.view().slot(3).store(ring_detail::make_word(3, 0));
    failures += p.try_push(7, &why) && why == PushFailure::kNone ? 0 : 1;
    ::_exit(failures);
  }
  int status = 0;
  for (int i = 0; i < 500 && ::waitpid(child, &status, WNOHANG) == 0; ++i) ::usleep(10'000);
  if (::waitpid(child, &status, WNOHANG) == 0) {
    ::kill(child, SIGKILL);
    ::waitpid(child, &status, 0);
    FAIL() << "a push into a forged ring did not return within 5 s";
  }
  EXPECT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "checks that failed in the child";
}

TEST(Ring, ShouldDeliverEveryValueOnceFromManyProducers) {
  constexpr std::uint32_t kProducers = 4, kPerProducer = 50'000;
  SharedRing r(256);
  std::vector<std::thread> producers;
  for (std::uint32_t p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      RingProducer prod(r.view());
      for (std::uint32_t i = 0; i < kPerProducer; ++i) {
        const std::uint32_t v = (p << 24) | i;
        while (!prod.try_push(v)) std::this_thread::yield();
      }
    });
  }
  RingConsumer c(r.view());
  std::vector<std::uint32_t> next(kProducers, 0);
  std::uint32_t got = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (got < kProducers * kPerProducer && std::chrono::steady_clock::now() < deadline) {
    std::uint32_t v;
    if (!c.try_pop(&v)) continue;
    const std::uint32_t p = v >> 24, i = v & 0xFFFFFF;
    ASSERT_LT(p, kProducers);
    ASSERT_EQ(i, next[p]) << "per-producer order and exactly-once";
    ++next[p];
    ++got;
  }
  for (auto& t : producers) t.join();
  EXPECT_EQ(got, kProducers * kPerProducer);
}

TEST(Ring, ShouldWorkBetweenTwoProcesses) {
  constexpr std::uint32_t kCount = 200'000;
  SharedRing r(1024);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    RingProducer p(r.view());
    std::uint32_t batch[16];
    for (std::uint32_t i = 0; i < kCount;) {
      std::uint32_t n = 0;
      while (n < 16 && i + n < kCount) {
        batch[n] = i + n;
        ++n;
      }
      i += static_cast<std::uint32_t>(p.try_push_batch(std::span<const std::uint32_t>(batch, n)));
    }
    ::_exit(0);
  }
  RingConsumer c(r.view());
  std::uint32_t expect = 0;
  std::uint32_t out[64];
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (expect < kCount && std::chrono::steady_clock::now() < deadline) {
    const std::size_t n = c.pop_batch(out);
    for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(out[i], expect++);
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  EXPECT_EQ(expect, kCount);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

}  // namespace
}  // namespace insideout::shm
