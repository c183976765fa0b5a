// The scheduler under load, in-process so ThreadSanitizer sees every thread: several
// submitter threads against blocking workers (the park/wake path runs constantly),
// mixed work, every completion counted exactly once.
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

void run_mixed(shm::IdleStrategy idle, int total) {
  InProcessDaemon d(2, {}, idle);
  const std::uint32_t fns[] = {d.fn("noop"), d.fn("chain"), d.fn("fanout"), d.fn("echo"),
                               d.fn("sleep")};
  std::mutex mu;  // one consumer of the completion ring at a time
  std::atomic<int> submitted{0}, completed{0}, bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&, t] {
      std::uint32_t rng = 77u * (t + 1);
      while (submitted.load() < total) {
        Frame* f;
        {
          std::lock_guard lock(mu);
          f = d.frame();
        }
        if (f != nullptr) {
          rng = rng * 1103515245 + 12345;
          const std::uint32_t k = (rng >> 16) % 5;
          f->fn = fns[k];
          f->arg = k == 1 ? 5 : k == 2 ? 50 : k == 4 ? 1000 : 0;
          f->flags = k == 3 ? shm::kFrameEnvInline : 0;
          f->env_len = k == 3 ? 8 : 0;
          if (submitted.fetch_add(1) >= total) {
            submitted.fetch_sub(1);
            std::lock_guard lock(mu);
            d.release(f);
            break;
          }
          while (!d.push(f)) std::this_thread::yield();
        }
        std::lock_guard lock(mu);
        if (Frame* c = d.next(std::chrono::milliseconds(f == nullptr ? 5 : 0))) {
          if (c->status != static_cast<std::uint16_t>(Status::kOk)) bad.fetch_add(1);
          completed.fetch_add(1);
          d.release(c);
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (completed.load() < submitted.load() && std::chrono::steady_clock::now() < deadline) {
    if (Frame* c = d.next(std::chrono::milliseconds(100))) {
      if (c->status != static_cast<std::uint16_t>(Status::kOk)) bad.fetch_add(1);
      completed.fetch_add(1);
      d.release(c);
    }
  }
  EXPECT_EQ(completed.load(), total);
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(d.next(std::chrono::milliseconds(20)), nullptr) << "no duplicate completions";
}

TEST(SchedulerStress, ShouldCompleteMixedWorkExactlyOnceWithBlockingWorkers) {
  run_mixed(shm::IdleStrategy::kBlock, 30'000);
}

TEST(SchedulerStress, ShouldCompleteMixedWorkExactlyOnceWithSpinningWorkers) {
  run_mixed(shm::IdleStrategy::kSpinThenBlock, 30'000);
}

TEST(SchedulerStress, ShouldRunLargeFanoutsAndChainsConcurrently) {
  InProcessDaemon d(2);
  std::vector<Frame*> frames;
  for (int i = 0; i < 8; ++i) {
    Frame* f = d.frame();
    f->fn = i % 2 ? d.fn("fanout") : d.fn("chain");
    f->arg = i % 2 ? 200'000 : 100'000;
    ASSERT_TRUE(d.push(f));
    frames.push_back(f);
  }
  for (int i = 0; i < 8; ++i) {
    Frame* f = d.next(std::chrono::seconds(60));
    ASSERT_NE(f, nullptr);
    EXPECT_EQ(f->status, static_cast<std::uint16_t>(Status::kOk));
    EXPECT_EQ(f->result, f->arg);
  }
}

}  // namespace
}  // namespace insideout
