// Live resizing under load, in-process so ThreadSanitizer sees every thread: submitters
// keep a mix of noop/chain/fanout/sleep continuations flowing while another thread grows
// and shrinks the pool; every continuation completes exactly once with its result.
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <thread>
#include <vector>

#include "support/in_process.h"

namespace insideout {
namespace {

using shm::Frame;
using shm::Status;
using testing::InProcessDaemon;

void run_resizing(shm::IdleStrategy idle, int total) {
  InProcessDaemon d(1, {}, idle);
  const std::uint32_t fns[] = {d.fn("noop"), d.fn("chain"), d.fn("fanout"), d.fn("sleep")};
  std::mutex mu;  // one user of the arena and the completion ring at a time
  std::vector<std::atomic<int>> seen(static_cast<std::size_t>(total));
  std::atomic<int> submitted{0}, completed{0}, bad{0}, dup{0};
  std::atomic<bool> done{false};
  std::atomic<int> resizes{0};
  auto take = [&](Frame* c) {
    const auto tag = static_cast<std::size_t>(c->tag);
    const std::uint32_t k = static_cast<std::uint32_t>(c->tag % 4);
    const std::uint64_t want = k == 1 || k == 2 ? c->arg : 0;
    if (c->status != static_cast<std::uint16_t>(Status::kOk) || c->result != want) bad.fetch_add(1);
    if (tag >= seen.size() || seen[tag].fetch_add(1) != 0) dup.fetch_add(1);
    completed.fetch_add(1);
    d.release(c);
  };
  std::thread resizer([&] {
    const std::uint32_t sizes[] = {2, 1, 3, 1, 2, 4, 2, 1};
    for (std::size_t i = 0; !done.load(); ++i) {
      d.scheduler().resize(sizes[i % std::size(sizes)]);
      resizes.fetch_add(1);
      std::this_thread::sleep_for(std::chrono::microseconds(300));
    }
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&] {
      for (;;) {
        Frame* f;
        {
          std::lock_guard lock(mu);
          f = d.frame();
        }
        if (f != nullptr) {
          const int n = submitted.fetch_add(1);
          if (n >= total) {
            submitted.fetch_sub(1);
            std::lock_guard lock(mu);
            d.release(f);
            break;
          }
          const std::uint32_t k = static_cast<std::uint32_t>(n) % 4;
          f->fn = fns[k];
          f->arg = k == 1 ? 5 : k == 2 ? 100 : k == 3 ? 200'000 : 0;
          f->tag = static_cast<std::uint64_t>(n);
          while (!d.push(f)) std::this_thread::yield();
        }
        std::lock_guard lock(mu);
        if (Frame* c = d.next(std::chrono::milliseconds(f == nullptr ? 5 : 0))) take(c);
      }
    });
  }
  for (auto& t : threads) t.join();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (completed.load() < total && std::chrono::steady_clock::now() < deadline) {
    if (Frame* c = d.next(std::chrono::milliseconds(100))) take(c);
  }
  done.store(true);
  resizer.join();
  EXPECT_EQ(completed.load(), total);
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(dup.load(), 0);
  EXPECT_GT(resizes.load(), 8) << "the pool was resized while work ran";
  EXPECT_EQ(d.next(std::chrono::milliseconds(20)), nullptr) << "no duplicate completions";
  const auto t = d.scheduler().totals();
  EXPECT_EQ(t.completed, static_cast<std::uint64_t>(total));
}

TEST(ResizeStress, ShouldCompleteEveryContinuationOnceWhileBlockingWorkersComeAndGo) {
  run_resizing(shm::IdleStrategy::kBlock, 100'000);
}

TEST(ResizeStress, ShouldCompleteEveryContinuationOnceWhileSpinningWorkersComeAndGo) {
  run_resizing(shm::IdleStrategy::kSpinThenBlock, 100'000);
}

TEST(ResizeStress, ShouldKeepTheWorkerCountWithinBounds) {
  InProcessDaemon d(2);
  EXPECT_EQ(d.scheduler().resize(0), 1u);
  EXPECT_EQ(d.scheduler().worker_count(), 1u);
  EXPECT_EQ(d.scheduler().resize(3), 3u);
  EXPECT_EQ(d.scheduler().worker_count(), 3u);
  for (std::uint32_t i = 0; i < 3; ++i) EXPECT_NE(d.scheduler().worker(i).tid.load(), 0);
  EXPECT_EQ(d.scheduler().resize(1), 1u);
  Frame* f = d.frame();
  f->fn = d.fn("chain");
  f->arg = 1000;
  ASSERT_TRUE(d.push(f));
  Frame* c = d.next();
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->result, 1000u);
}

}  // namespace
}  // namespace insideout
