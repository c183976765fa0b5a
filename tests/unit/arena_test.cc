#include "insideout/shm/arena.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <set>
#include <thread>
#include <vector>

namespace insideout::shm {
namespace {

struct SharedArena {
  explicit SharedArena(std::uint32_t frames) {
    EXPECT_TRUE(SegmentGeometry::compute({.ring_capacity = 1u << 12,
                                          .frame_count = frames,
                                          .buffer_block_size = 64,
                                          .buffer_block_count = 1},
                                         &g));
    mem = ::mmap(nullptr, g.size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    arena = FrameArena(mem, g);
    arena.initialize();
  }
  ~SharedArena() { ::munmap(mem, g.size); }
  SegmentGeometry g{};
  void* mem;
  FrameArena arena;
};

TEST(Arena, ShouldHandOutEveryFrameOnceThenRunDry) {
  SharedArena a(64);
  std::set<Frame*> seen;
  for (int i = 0; i < 64; ++i) {
    Frame* f = a.arena.allocate();
    ASSERT_NE(f, nullptr);
    EXPECT_TRUE(a.g.frame_offset_valid(a.arena.offset_of(f)));
    EXPECT_TRUE(seen.insert(f).second) << "handed out twice";
  }
  EXPECT_EQ(a.arena.allocate(), nullptr);
  a.arena.free(*seen.begin());
  EXPECT_EQ(a.arena.allocate(), *seen.begin());
}

// Every frame a thread holds is its alone: it stamps the frame and checks the stamp
// before it frees it. Allocations and frees balance.
TEST(Arena, ShouldNeverShareAFrameBetweenThreads) {
  SharedArena a(256);
  std::atomic<long> live{0};
  std::atomic<bool> clash{false};
  std::vector<std::thread> threads;
  for (std::uint32_t t = 1; t <= 4; ++t) {
    threads.emplace_back([&, t] {
      std::vector<Frame*> held;
      for (int i = 0; i < 100'000; ++i) {
        if (held.size() < 32 && (i % 3 != 0)) {
          if (Frame* f = a.arena.allocate()) {
            live.fetch_add(1);
            f->tag = t;
            f->arg = static_cast<std::uint64_t>(i);
            held.push_back(f);
          }
        } else if (!held.empty()) {
          Frame* f = held.back();
          held.pop_back();
          if (f->tag != t) clash = true;
          live.fetch_sub(1);
          a.arena.free(f);
        }
      }
      for (Frame* f : held) {
        if (f->tag != t) clash = true;
        live.fetch_sub(1);
        a.arena.free(f);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_FALSE(clash.load());
  EXPECT_EQ(live.load(), 0);
  int n = 0;
  while (a.arena.allocate() != nullptr) ++n;
  EXPECT_EQ(n, 256) << "every frame is back";
}

TEST(Arena, ShouldNeverShareAFrameBetweenTwoProcesses) {
  SharedArena a(128);
  auto work = [&](std::uint64_t me) {
    std::vector<Frame*> held;
    int clashes = 0;
    for (int i = 0; i < 100'000; ++i) {
      if (held.size() < 48 && (i & 1)) {
        if (Frame* f = a.arena.allocate()) {
          f->tag = me;
          held.push_back(f);
        }
      } else if (!held.empty()) {
        clashes += held.back()->tag != me;
        a.arena.free(held.back());
        held.pop_back();
      }
    }
    for (Frame* f : held) {
      clashes += f->tag != me;
      a.arena.free(f);
    }
    return clashes;
  };
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) ::_exit(work(2) == 0 ? 0 : 1);
  EXPECT_EQ(work(1), 0);
  int status = 0;
  ::waitpid(child, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  int n = 0;
  while (a.arena.allocate() != nullptr) ++n;
  EXPECT_EQ(n, 128);
}

}  // namespace
}  // namespace insideout::shm

namespace insideout::shm {
namespace {

TEST(Arena, ShouldHandOutBatchesWithoutOverlap) {
  SharedArena a(100);
  std::set<Frame*> seen;
  Frame* got[32];
  std::size_t total = 0;
  for (;;) {
    const std::size_t n = a.arena.allocate(std::span<Frame*>(got, 32));
    if (n == 0) break;
    for (std::size_t i = 0; i < n; ++i) EXPECT_TRUE(seen.insert(got[i]).second);
    total += n;
  }
  EXPECT_EQ(total, 100u);
  for (Frame* f : seen) a.arena.free(f);
  std::atomic<int> clashes{0};
  std::vector<std::thread> threads;
  for (std::uint64_t t = 1; t <= 3; ++t) {
    threads.emplace_back([&, t] {
      Frame* mine[16];
      for (int round = 0; round < 20'000; ++round) {
        const std::size_t n = a.arena.allocate(std::span<Frame*>(mine, 1 + round % 16));
        for (std::size_t i = 0; i < n; ++i) mine[i]->tag = t;
        for (std::size_t i = 0; i < n; ++i) {
          clashes += mine[i]->tag != t;
          a.arena.free(mine[i]);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(clashes.load(), 0);
  std::size_t back = 0;
  while (a.arena.allocate() != nullptr) ++back;
  EXPECT_EQ(back, 100u);
}

}  // namespace
}  // namespace insideout::shm

namespace insideout::shm {
namespace {

TEST(Arena, ShouldTakeBackABatchInOneGo) {
  SharedArena a(64);
  Frame* got[64];
  ASSERT_EQ(a.arena.allocate(std::span<Frame*>(got, 64)), 64u);
  EXPECT_EQ(a.arena.allocate(), nullptr);
  a.arena.free(std::span<Frame* const>(got, 40));
  a.arena.free(std::span<Frame* const>(got + 40, 24));
  std::set<Frame*> seen;
  while (Frame* f = a.arena.allocate()) EXPECT_TRUE(seen.insert(f).second);
  EXPECT_EQ(seen.size(), 64u);
}

}  // namespace
}  // namespace insideout::shm
