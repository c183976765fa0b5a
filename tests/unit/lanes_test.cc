#include "lanes.h"

#include <gtest/gtest.h>

#include <vector>

namespace insideout::engine {
namespace {

std::vector<Task> tasks_of(std::uint16_t client, std::size_t n) {
  std::vector<Task> v(n);
  for (auto& t : v) t.client = client;
  return v;
}

TEST(Lanes, ShouldServeAnotherClientsTaskNextToAFlood) {
  LaneQueue q;
  auto flood = tasks_of(1, 10'000);
  for (auto& t : flood) q.push_back(&t);
  Task b{};
  b.client = 2;
  q.push_back(&b);
  // One of the flood at most before it, whatever the flood's size.
  Task* first = q.pop_front();
  Task* second = q.pop_front();
  EXPECT_TRUE(first == &b || second == &b);
  EXPECT_EQ(q.size(), 10'000u - 1);
}

TEST(Lanes, ShouldKeepEachClientsOrderAndLoseNothing) {
  LaneQueue q;
  auto a = tasks_of(0, 100), b = tasks_of(7, 50), c = tasks_of(300, 10);
  for (std::size_t i = 0; i < 100; ++i) {
    q.push_back(&a[i]);
    if (i < 50) q.push_back(&b[i]);
    if (i < 10) q.push_back(&c[i]);
  }
  std::size_t ia = 0, ib = 0, ic = 0;
  while (Task* t = q.pop_front()) {
    if (t->client == 0) {
      EXPECT_EQ(t, &a[ia++]);
    } else if (t->client == 7) {
      EXPECT_EQ(t, &b[ib++]);
    } else {
      EXPECT_EQ(t, &c[ic++]);
    }
  }
  EXPECT_EQ(ia, 100u);
  EXPECT_EQ(ib, 50u);
  EXPECT_EQ(ic, 10u);
  EXPECT_TRUE(q.empty());
  // Reused after emptying; drain_into hands everything over.
  q.push_back(&a[0]);
  q.push_back(&b[0]);
  EXPECT_EQ(q.front(), q.pop_front() == &a[0] ? &b[0] : &a[0]);
  std::vector<Task*> out;
  q.drain_into(&out);
  EXPECT_EQ(out.size(), 1u);
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.pop_front(), nullptr);
}

TEST(Lanes, ShouldTakeTurnsOneTaskPerClient) {
  LaneQueue q;
  auto a = tasks_of(1, 3), b = tasks_of(2, 3);
  for (int i = 0; i < 3; ++i) q.push_back(&a[i]);
  for (int i = 0; i < 3; ++i) q.push_back(&b[i]);
  std::vector<std::uint16_t> order;
  while (Task* t = q.pop_front()) order.push_back(t->client);
  EXPECT_EQ(order, (std::vector<std::uint16_t>{1, 2, 1, 2, 1, 2}));
}

TEST(Lanes, ShouldKeepALoneEmptiedLaneAndStillTakeTurnsWhenAnotherClientComes) {
  LaneQueue q;
  auto a = tasks_of(1, 4), b = tasks_of(2, 2);
  // A lone chain: one task in, one out, again and again (its lane stays).
  for (int i = 0; i < 3; ++i) {
    q.push_back(&a[i]);
    EXPECT_EQ(q.pop_front(), &a[i]);
    EXPECT_TRUE(q.empty());
    EXPECT_EQ(q.pop_front(), nullptr);
  }
  // Another client arrives while the kept lane is empty: turns as usual, nothing lost.
  q.push_back(&b[0]);
  q.push_back(&a[3]);
  q.push_back(&b[1]);
  std::vector<Task*> got;
  while (Task* t = q.pop_front()) got.push_back(t);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0], &b[0]);
  EXPECT_EQ(got[1], &a[3]);
  EXPECT_EQ(got[2], &b[1]);
  EXPECT_TRUE(q.empty());
}

}  // namespace
}  // namespace insideout::engine
