// The segment's frames and buffers are finite (4,096 frames and 1 MiB of buffers by
// default): a program that submits more than fits waits for room (OnFull::kWait) rather
// than failing, and when room does not come the error names the option that raises it.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <string>
#include <thread>
#include <vector>

#include "insideout/client.hpp"
#include "support/daemon_process.h"

namespace insideout::testing {
namespace {

using namespace std::chrono_literals;

std::unique_ptr<Client> connect(const std::string& dir, ClientOptions co = {}) {
  co.runtime_dir = dir;
  auto c = Client::connect(co);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? std::move(*c) : nullptr;
}

// The loop a first program writes: many checksums over 300-byte environments, callbacks
// counting the results. 10,000 of them need ~5 MiB of buffers, five times the default.
TEST(SegmentRoom, ShouldWaitForBuffersSoTenThousandChecksumsOver300BytesAllComplete) {
  DaemonProcess daemon({"--workers", "2"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  ClientOptions o;
  o.full_timeout = 10s;
  auto c = connect(daemon.runtime_dir(), o);
  ASSERT_NE(c, nullptr);
  std::vector<std::byte> env(300, std::byte{7});
  std::atomic<int> ok{0};
  for (int i = 0; i < 10'000; ++i) {
    auto h = c->submit("checksum", env);
    ASSERT_TRUE(h.ok()) << "submission " << i << ": " << h.status();
    std::move(*h).then([&](const Result& r) { ok.fetch_add(r.ok() ? 1 : 0); });
  }
  EXPECT_TRUE(c->run_until([&] { return ok.load() == 10'000; }, 30s)) << ok.load();
  EXPECT_GT(c->stats().full_waits, 0u);  // it did run out of room, and waited
}

// The zero-copy path: allocate_buffer waits too, for buffers freed by another thread.
TEST(SegmentRoom, ShouldWaitInAllocateBufferUntilAnotherThreadFreesOne) {
  DaemonProcess daemon({"--workers", "1"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  ClientOptions o;
  o.segment.buffer_block_count = 4;  // 1 KiB of buffers
  o.full_timeout = 5s;
  auto c = connect(daemon.runtime_dir(), o);
  ASSERT_NE(c, nullptr);
  auto all = c->allocate_buffer(4 * 256);
  ASSERT_EQ(all.size(), 4u * 256);
  std::thread freer([&] {
    std::this_thread::sleep_for(200ms);
    c->free_buffer(all);
  });
  const auto t0 = std::chrono::steady_clock::now();
  auto b = c->allocate_buffer(300);
  const auto waited = std::chrono::steady_clock::now() - t0;
  freer.join();
  EXPECT_EQ(b.size(), 300u);
  EXPECT_GE(waited, 150ms);
  c->free_buffer(b);
}

TEST(SegmentRoom, ShouldNameTheOptionThatRaisesTheLimitWhenNoRoomComes) {
  DaemonProcess daemon({"--workers", "1"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  ClientOptions o;
  o.segment.buffer_block_count = 4;
  o.segment.frame_count = 8;
  o.full_timeout = 100ms;
  auto c = connect(daemon.runtime_dir(), o);
  ASSERT_NE(c, nullptr);
  // Buffers: all of them held by the caller; waiting gives up after full_timeout.
  auto all = c->allocate_buffer(4 * 256);
  ASSERT_FALSE(all.empty());
  auto b = c->allocate_buffer_or_error(300);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kDeadlineExceeded) << b.status();
  EXPECT_NE(b.status().message().find("segment.buffer_block_count"), std::string::npos)
      << b.status();
  EXPECT_TRUE(c->allocate_buffer(300).empty());
  auto big = c->allocate_buffer_or_error(5 * 256);  // more than the whole area: at once
  EXPECT_EQ(big.status().code(), absl::StatusCode::kResourceExhausted) << big.status();
  c->free_buffer(all);
  // Frames: handles held, so no frame comes back.
  std::vector<Handle> held;
  for (int i = 0; i < 8; ++i) held.push_back(c->submit("noop").value());
  auto h = c->submit("noop");
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().code(), absl::StatusCode::kDeadlineExceeded) << h.status();
  EXPECT_NE(h.status().message().find("segment.frame_count"), std::string::npos) << h.status();
  // Fail-fast: at once, with the same hint.
  ClientOptions f = o;
  f.on_full = OnFull::kFailFast;
  auto d = connect(daemon.runtime_dir(), f);
  ASSERT_NE(d, nullptr);
  auto all2 = d->allocate_buffer(4 * 256);
  auto e = d->allocate_buffer_or_error(1);
  EXPECT_EQ(e.status().code(), absl::StatusCode::kResourceExhausted) << e.status();
  EXPECT_NE(e.status().message().find("segment.buffer_block_count"), std::string::npos)
      << e.status();
}

}  // namespace
}  // namespace insideout::testing
