#include "work_queue.h"

#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <thread>
#include <vector>

#include "config.h"
#include "registry.h"
#include "task.h"

namespace insideout::engine {
namespace {

// Counts constructions and destructions, so that a queue that loses or duplicates an
// element shows up as an imbalance.
struct Counted {
  static inline std::atomic<long> live{0};
  Counted() { live.fetch_add(1); }
  ~Counted() { live.fetch_sub(1); }
  Task task{};
};

TEST(WorkQueue, ShouldBeFifoForItsOwner) {
  WorkQueue q(8);
  Task t[10];
  for (int i = 0; i < 8; ++i) EXPECT_TRUE(q.push(&t[i]));
  EXPECT_FALSE(q.push(&t[8])) << "full";
  for (int i = 0; i < 8; ++i) EXPECT_EQ(q.pop(), &t[i]);
  EXPECT_EQ(q.pop(), nullptr);
}

TEST(WorkQueue, ShouldLetAThiefTakeTheOlderHalf) {
  WorkQueue q(16);
  Task t[10];
  for (auto& x : t) ASSERT_TRUE(q.push(&x));
  Task* got[32];
  EXPECT_EQ(q.steal(got), 5u);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(got[i], &t[i]);
  EXPECT_EQ(q.pop(), &t[5]);
}

TEST(WorkQueue, ShouldHandEachElementToExactlyOneConsumer) {
  constexpr int kItems = 200'000;
  WorkQueue q(256);
  std::atomic<int> taken{0};
  std::atomic<bool> done{false};
  std::vector<std::thread> thieves;
  for (int i = 0; i < 3; ++i) {
    thieves.emplace_back([&] {
      Task* got[32];
      while (!done.load() || q.size() != 0) {
        const std::size_t n = q.steal(got);
        for (std::size_t k = 0; k < n; ++k) {
          delete reinterpret_cast<Counted*>(got[k]);
          taken.fetch_add(1);
        }
      }
    });
  }
  for (int i = 0; i < kItems; ++i) {
    auto* c = new Counted;
    while (!q.push(&c->task)) {
      if (Task* t = q.pop()) {
        delete reinterpret_cast<Counted*>(t);
        taken.fetch_add(1);
      }
    }
  }
  while (Task* t = q.pop()) {
    delete reinterpret_cast<Counted*>(t);
    taken.fetch_add(1);
  }
  done = true;
  for (auto& t : thieves) t.join();
  EXPECT_EQ(taken.load(), kItems);
  EXPECT_EQ(Counted::live.load(), 0) << "constructions and destructions balance";
}

TEST(TaskPool, ShouldRecycleTasksFreedOnAnotherThread) {
  TaskPool pool;
  constexpr int kTasks = 100'000;
  std::vector<Task*> handoff(kTasks);
  TaskPool::Cache a;
  for (int i = 0; i < kTasks; ++i) handoff[i] = pool.allocate(a);
  std::set<Task*> unique(handoff.begin(), handoff.end());
  EXPECT_EQ(unique.size(), static_cast<std::size_t>(kTasks));
  std::thread([&] {
    TaskPool::Cache b;
    for (Task* t : handoff) pool.free(b, t);
    pool.drain(b);
  }).join();
  const std::size_t reserved = pool.bytes_reserved();
  for (int i = 0; i < kTasks - 1000; ++i) pool.allocate(a);
  EXPECT_EQ(pool.bytes_reserved(), reserved) << "freed tasks are reused before new chunks";
  EXPECT_EQ(sizeof(Task), 32u);
}

TEST(Registry, ShouldRegisterTheBuiltins) {
  FunctionRegistry r;
  register_builtins(r);
  for (const char* name : {"noop", "echo", "checksum", "fanout", "chain", "sleep"}) {
    auto id = r.id_of(name);
    ASSERT_TRUE(id.has_value()) << name;
    ASSERT_NE(r.find(*id), nullptr);
    EXPECT_EQ(r.find(*id)->name, name);
  }
  EXPECT_EQ(r.find(0), nullptr);
  EXPECT_EQ(r.find(static_cast<std::uint32_t>(r.list().size()) + 1), nullptr);
  EXPECT_EQ(r.find(0xFFFFFFFFu), nullptr);
  EXPECT_FALSE(r.id_of("nope").has_value());
}

TEST(Config, ShouldParseCpuLists) {
  using daemon::allowed_cpus;
  using daemon::format_cpu_list;
  using daemon::parse_cpu_list;
  std::string err;
  EXPECT_EQ(parse_cpu_list("0-3,8", &err), (std::vector<int>{0, 1, 2, 3, 8}));
  EXPECT_EQ(parse_cpu_list("5,1,1", &err), (std::vector<int>{1, 5}));
  EXPECT_FALSE(parse_cpu_list("3-1", &err).has_value());
  EXPECT_FALSE(parse_cpu_list("a", &err).has_value());
  EXPECT_FALSE(parse_cpu_list("", &err).has_value());
  EXPECT_FALSE(parse_cpu_list("-1", &err).has_value());
  EXPECT_EQ(format_cpu_list({0, 1, 2, 3, 8, 10, 11}), "0-3,8,10-11");
  EXPECT_FALSE(allowed_cpus().empty());
}

}  // namespace
}  // namespace insideout::engine
