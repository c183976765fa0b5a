// The function registry changed live: ids stable per name, lock-free find() during
// replace/remove, retired definitions freed only at reclaim(), and the closest-name
// suggestions.
#include "registry.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

namespace insideout::engine {
namespace {

io_step one(io_task*, io_ctx*) { return IO_STEP_COMPLETE; }
io_step two(io_task*, io_ctx*) { return IO_STEP_COMPLETE; }

FunctionDef def(const char* name, StepFn fn = one) {
  FunctionDef d;
  d.name = name;
  d.entry = fn;
  return d;
}

TEST(FunctionRegistry, ShouldKeepANamesIdAcrossReplaceRemoveAndAddAgain) {
  FunctionRegistry r;
  const std::uint32_t a = r.add(def("p.a"));
  const std::uint32_t b = r.add(def("p.b"));
  ASSERT_NE(a, 0u);
  ASSERT_EQ(b, a + 1);
  EXPECT_EQ(r.add(def("p.a")), 0u) << "a name is registered once";
  EXPECT_EQ(r.add_checked(def("p.a")).error, FunctionRegistry::Error::kExists);

  ASSERT_TRUE(r.replace(def("p.a", two)).ok());
  EXPECT_EQ(r.find(a)->entry, &two);
  EXPECT_EQ(*r.id_of("p.a"), a);

  EXPECT_TRUE(r.remove("p.a"));
  EXPECT_EQ(r.find(a), nullptr) << "an unloaded name's id is unknown";
  EXPECT_FALSE(r.id_of("p.a").has_value());
  EXPECT_FALSE(r.remove("p.a"));
  EXPECT_EQ(r.replace(def("p.a")).error, FunctionRegistry::Error::kNotFound);

  EXPECT_EQ(r.add(def("p.c")), b + 1) << "new names get new ids";
  EXPECT_EQ(r.add(def("p.a")), a) << "a name registered again gets its id back";
  EXPECT_EQ(r.list().size(), 3u);
}

TEST(FunctionRegistry, ShouldRefuseBadNamesFlagsAndMissingEntries) {
  FunctionRegistry r;
  EXPECT_EQ(r.add_checked(def("")).error, FunctionRegistry::Error::kInvalid);
  EXPECT_EQ(r.add_checked(def("has space")).error, FunctionRegistry::Error::kInvalid);
  EXPECT_EQ(r.add_checked(def(".dot")).error, FunctionRegistry::Error::kInvalid);
  EXPECT_EQ(r.add_checked(def(std::string(65, 'a').c_str())).error,
            FunctionRegistry::Error::kInvalid);
  EXPECT_EQ(r.add_checked(def("ok", nullptr)).error, FunctionRegistry::Error::kInvalid);
  FunctionDef f = def("flags");
  f.flags = 1u << 7;
  EXPECT_EQ(r.add_checked(f).error, FunctionRegistry::Error::kInvalid);
  EXPECT_TRUE(r.list().empty());
}

TEST(FunctionRegistry, ShouldKeepNeedsBufferAndItsFlagInStep) {
  FunctionRegistry r;
  FunctionDef a = def("a");
  a.needs_buffer = true;
  FunctionDef b = def("b");
  b.flags = kFnNeedsBuffer | kFnOutput;
  const auto ia = r.add(a), ib = r.add(b);
  EXPECT_EQ(r.find(ia)->flags, kFnNeedsBuffer);
  EXPECT_TRUE(r.find(ib)->needs_buffer);
  EXPECT_EQ(r.find(ib)->flags, kFnNeedsBuffer | kFnOutput);
}

TEST(FunctionRegistry, ShouldFreeRetiredDefinitionsOnlyAtReclaim) {
  FunctionRegistry r;
  const auto id = r.add(def("x"));
  const FunctionDef* old = r.find(id);
  ASSERT_TRUE(r.replace(def("x", two)).ok());
  EXPECT_EQ(r.retired(), 1u);
  EXPECT_EQ(old->entry, &one) << "a retired definition stays readable until reclaim()";
  const auto mark = r.retire_mark();
  ASSERT_TRUE(r.remove("x"));
  EXPECT_EQ(r.retired(), 2u);
  r.reclaim(mark);
  EXPECT_EQ(r.retired(), 1u) << "only what was retired before the mark";
  r.reclaim(r.retire_mark());
  EXPECT_EQ(r.retired(), 0u);
}

TEST(FunctionRegistry, ShouldWaitForReadGuardsBeforeReclaiming) {
  FunctionRegistry r;
  const auto id = r.add(def("x"));
  std::atomic<bool> reclaimed{false};
  std::thread reclaimer;
  {
    FunctionRegistry::ReadGuard guard(r);
    const FunctionDef* d = r.find(id);
    ASSERT_TRUE(r.replace(def("x", two)).ok());
    const auto mark = r.retire_mark();
    reclaimer = std::thread([&] {
      r.reclaim(mark);
      reclaimed.store(true);
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_FALSE(reclaimed.load()) << "reclaim() ran while a reader held the old definition";
    EXPECT_EQ(d->entry, &one);
  }
  reclaimer.join();
  EXPECT_TRUE(reclaimed.load());
  EXPECT_EQ(r.retired(), 0u);
}

// Readers on many threads while a writer swaps and removes: find() returns null or a
// complete definition of that name, never anything else.
TEST(FunctionRegistry, ShouldServeLockFreeReadersDuringLiveChanges) {
  FunctionRegistry r;
  const auto id = r.add(def("live.fn"));
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> bad{0}, seen{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 3; ++t) {
    readers.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) {
        FunctionRegistry::ReadGuard guard(r);
        const FunctionDef* d = r.find(id);
        if (d == nullptr) continue;
        if (d->name != "live.fn" || (d->entry != &one && d->entry != &two)) bad.fetch_add(1);
        seen.fetch_add(1, std::memory_order_relaxed);
      }
    });
  }
  // The readers are running before the changes start (else a fast writer could finish
  // before any reader looked).
  for (int i = 0; i < 5000 && seen.load() == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const std::uint64_t before = seen.load();
  for (int i = 0; i < 2000; ++i) {
    if (i % 10 == 9) {
      r.remove("live.fn");
      EXPECT_EQ(r.add(def("live.fn")), id);
    } else {
      ASSERT_TRUE(r.replace(def("live.fn", i % 2 ? one : two)).ok());
    }
    if (i % 100 == 0) r.reclaim(r.retire_mark());
  }
  stop.store(true);
  for (auto& t : readers) t.join();
  EXPECT_EQ(bad.load(), 0u);
  EXPECT_GT(before, 0u);
}

TEST(FunctionRegistry, ShouldSuggestTheClosestRegisteredName) {
  FunctionRegistry r;
  register_builtins(r);
  r.add(def("zstd.compress"));
  r.add(def("zstd.decompress"));
  EXPECT_EQ(r.closest("zstd.compres"), "zstd.compress");
  EXPECT_EQ(r.closest("zstd.decompres"), "zstd.decompress");
  EXPECT_EQ(r.closest("nop"), "noop");
  EXPECT_EQ(r.closest("chian"), "chain") << "a transposition is one edit";
  EXPECT_EQ(r.closest("compress"), "zstd.compress") << "the name without its plugin";
  EXPECT_EQ(r.closest("something_else"), "");
  EXPECT_EQ(r.closest("x"), "");
  EXPECT_EQ(r.unknown_message("zstd.compres"),
            "unknown function 'zstd.compres'; did you mean 'zstd.compress'?");
  EXPECT_EQ(r.unknown_message("frobnicate"), "unknown function 'frobnicate'");
  r.remove("zstd.compress");
  EXPECT_EQ(r.closest("zstd.compres"), "zstd.decompress") << "only registered names";
}

TEST(FunctionRegistry, ShouldMeasureEditDistance) {
  EXPECT_EQ(edit_distance("kitten", "sitting", 5), 3u);
  EXPECT_EQ(edit_distance("abc", "abc", 2), 0u);
  EXPECT_EQ(edit_distance("ab", "ba", 2), 1u);
  EXPECT_EQ(edit_distance("", "abc", 5), 3u);
  EXPECT_EQ(edit_distance("a", "abcdefgh", 2), 3u) << "stops counting past the limit";
}

}  // namespace
}  // namespace insideout::engine
