#include "insideout/shm/layout.h"

#include <gtest/gtest.h>
#include <sys/mman.h>

#include <cstddef>
#include <string>

#include "insideout/shm/segment.h"

namespace insideout::shm {
namespace {

// These numbers are the wire format between processes built at different times: a
// change here must come with a kLayoutVersion bump.
TEST(Layout, ShouldPinTheSegmentHeader) {
  EXPECT_EQ(kLayoutVersion, 4u);
  EXPECT_EQ(sizeof(SegmentHeader), 128u);
  EXPECT_EQ(offsetof(SegmentHeader, magic), 0u);
  EXPECT_EQ(offsetof(SegmentHeader, layout_version), 8u);
  EXPECT_EQ(offsetof(SegmentHeader, header_size), 12u);
  EXPECT_EQ(offsetof(SegmentHeader, segment_size), 16u);
  EXPECT_EQ(offsetof(SegmentHeader, daemon_pid), 24u);
  EXPECT_EQ(offsetof(SegmentHeader, client_id), 28u);
  EXPECT_EQ(offsetof(SegmentHeader, daemon_start_ns), 32u);
  EXPECT_EQ(offsetof(SegmentHeader, heartbeat_ns), 40u);
  EXPECT_EQ(offsetof(SegmentHeader, state), 48u);
  EXPECT_EQ(offsetof(SegmentHeader, doorbells_off), 52u);
  EXPECT_EQ(offsetof(SegmentHeader, counters_off), 56u);
  EXPECT_EQ(offsetof(SegmentHeader, submit_ring_off), 60u);
  EXPECT_EQ(offsetof(SegmentHeader, submit_ring_capacity), 64u);
  EXPECT_EQ(offsetof(SegmentHeader, completion_ring_off), 68u);
  EXPECT_EQ(offsetof(SegmentHeader, completion_ring_capacity), 72u);
  EXPECT_EQ(offsetof(SegmentHeader, frames_off), 76u);
  EXPECT_EQ(offsetof(SegmentHeader, frame_count), 80u);
  EXPECT_EQ(offsetof(SegmentHeader, frame_size), 84u);
  EXPECT_EQ(offsetof(SegmentHeader, buffers_off), 88u);
  EXPECT_EQ(offsetof(SegmentHeader, buffer_block_size), 92u);
  EXPECT_EQ(offsetof(SegmentHeader, buffer_block_count), 96u);
  EXPECT_EQ(offsetof(SegmentHeader, messages_off), 100u);
  EXPECT_EQ(offsetof(SegmentHeader, generation), 104u);
  EXPECT_EQ(kMessageBytes, 128u);
  EXPECT_EQ(offsetof(SegmentHeader, reserved), 120u);
  EXPECT_EQ(offsetof(SegmentHeader, controls_off), 112u);
  EXPECT_EQ(offsetof(SegmentHeader, bells_off), 116u);
}

TEST(Layout, ShouldPinControlsBellsAndCancelEntries) {
  EXPECT_EQ(sizeof(FrameControl), 16u);
  EXPECT_EQ(offsetof(FrameControl, deadline_ns), 0u);
  EXPECT_EQ(kClientBells, 16u);
  EXPECT_EQ(sizeof(ClientBells), 128u);
  EXPECT_EQ(kSubmitCancel, 0x80000000u);
  SegmentGeometry g;
  ASSERT_TRUE(SegmentGeometry::compute(SegmentRequest{}, &g));
  EXPECT_EQ(g.controls_off % 64u, 0u);
  EXPECT_GE(g.controls_off, g.messages_off + 4096u * kMessageBytes);
  EXPECT_EQ(g.bells_off % 64u, 0u);
  EXPECT_GE(g.bells_off, g.controls_off + 4096u * 16u);
  EXPECT_GE(g.size, std::uint64_t{g.bells_off} + sizeof(ClientBells));
  // The largest rings and frame arena still lie below the cancel bit.
  ASSERT_TRUE(SegmentGeometry::compute(
      {.ring_capacity = 1u << 24, .frame_count = 1u << 24, .buffer_block_count = 1}, &g));
  EXPECT_LT(std::uint64_t{g.frames_off} + (std::uint64_t{1} << 24) * 64u,
            std::uint64_t{kSubmitCancel});
}

TEST(Layout, ShouldPinTheFrame) {
  EXPECT_EQ(sizeof(Frame), 64u);
  EXPECT_EQ(alignof(Frame), 64u);
  EXPECT_EQ(offsetof(Frame, fn), 0u);
  EXPECT_EQ(offsetof(Frame, flags), 4u);
  EXPECT_EQ(offsetof(Frame, status), 6u);
  EXPECT_EQ(offsetof(Frame, tag), 8u);
  EXPECT_EQ(offsetof(Frame, arg), 16u);
  EXPECT_EQ(offsetof(Frame, env_off), 24u);
  EXPECT_EQ(offsetof(Frame, env_len), 28u);
  EXPECT_EQ(offsetof(Frame, result), 32u);
  EXPECT_EQ(offsetof(Frame, result_len), 40u);
  EXPECT_EQ(offsetof(Frame, detail), 44u);
  EXPECT_EQ(offsetof(Frame, inline_data), 48u);
}

TEST(Layout, ShouldPinDoorbellsCountersAndRings) {
  EXPECT_EQ(sizeof(EventWord), 64u);
  EXPECT_EQ(offsetof(EventWord, seq), 0u);
  EXPECT_EQ(offsetof(EventWord, waiters), 4u);
  EXPECT_EQ(sizeof(Doorbells), 192u);
  EXPECT_EQ(offsetof(Doorbells, completion), 64u);
  EXPECT_EQ(offsetof(Doorbells, space), 128u);
  EXPECT_EQ(sizeof(PoolBell), 64u);
  EXPECT_EQ(offsetof(PoolBell, sleepers), 0u);
  EXPECT_EQ(offsetof(PoolBell, pool), 4u);
  EXPECT_EQ(sizeof(ClientCounters), 64u);
  EXPECT_EQ(sizeof(RingHeader), 128u);
  EXPECT_EQ(offsetof(RingHeader, head), 64u);
  EXPECT_EQ(sizeof(ArenaHeader), 64u);
}

TEST(Layout, ShouldComputeTheDefaultGeometry) {
  SegmentGeometry g;
  ASSERT_TRUE(SegmentGeometry::compute(SegmentRequest{}, &g));
  EXPECT_EQ(g.doorbells_off, 128u);
  EXPECT_EQ(g.counters_off, 320u);
  EXPECT_EQ(g.submit_ring_off, 384u);
  EXPECT_EQ(g.completion_ring_off, 384u + 128u + 4096u * 8u);
  EXPECT_EQ(g.frames_off % 64u, 0u);
  EXPECT_EQ(g.buffers_off, g.frames_off + 4096u * 64u);
  EXPECT_EQ(g.size % 4096u, 0u);
  EXPECT_GE(g.size, std::uint64_t{g.buffers_off} + 256u * 4096u);
}

TEST(Layout, ShouldRefuseImpossibleRequests) {
  SegmentGeometry g;
  EXPECT_FALSE(SegmentGeometry::compute({.ring_capacity = 1000}, &g));  // not a power of two
  EXPECT_FALSE(SegmentGeometry::compute({.ring_capacity = 0}, &g));
  EXPECT_FALSE(
      SegmentGeometry::compute({.ring_capacity = 64, .frame_count = 65}, &g));  // frames > ring
  EXPECT_FALSE(SegmentGeometry::compute(
      {.ring_capacity = 64, .frame_count = 64, .buffer_block_size = 100}, &g));
  EXPECT_FALSE(SegmentGeometry::compute({.ring_capacity = 64,
                                         .frame_count = 64,
                                         .buffer_block_size = 1u << 16,
                                         .buffer_block_count = 1u << 16},
                                        &g));
}

TEST(Layout, ShouldRejectOffsetOutsideArena) {
  SegmentGeometry g;
  ASSERT_TRUE(SegmentGeometry::compute({.ring_capacity = 64, .frame_count = 64}, &g));
  EXPECT_TRUE(g.frame_offset_valid(g.frames_off));
  EXPECT_TRUE(g.frame_offset_valid(g.frames_off + 63 * 64));
  EXPECT_FALSE(g.frame_offset_valid(g.frames_off + 64 * 64));  // one past the end
  EXPECT_FALSE(g.frame_offset_valid(g.frames_off - 64));
  EXPECT_FALSE(g.frame_offset_valid(g.frames_off + 32));  // misaligned
  EXPECT_FALSE(g.frame_offset_valid(0));
  EXPECT_FALSE(g.frame_offset_valid(0xFFFFFFFFu));
}

TEST(Layout, ShouldRejectBufferRangesOutsideTheBufferArea) {
  SegmentGeometry g;
  ASSERT_TRUE(SegmentGeometry::compute(
      {.ring_capacity = 64, .frame_count = 64, .buffer_block_size = 64, .buffer_block_count = 16},
      &g));
  const std::uint32_t end = g.buffers_off + 64 * 16;
  EXPECT_TRUE(g.buffer_range_valid(g.buffers_off, 64 * 16));
  EXPECT_TRUE(g.buffer_range_valid(end - 1, 1));
  EXPECT_FALSE(g.buffer_range_valid(end - 1, 2));
  EXPECT_FALSE(g.buffer_range_valid(g.frames_off, 64));
  EXPECT_FALSE(g.buffer_range_valid(0xFFFFFFF0u, 0x20u));  // wraps in 32 bits
  EXPECT_FALSE(g.buffer_range_valid(g.buffers_off, 0xFFFFFFFFu));
}

TEST(Segment, ShouldPublishTheVersionLastAndAttach) {
  SegmentGeometry g;
  ASSERT_TRUE(SegmentGeometry::compute({.ring_capacity = 64, .frame_count = 64}, &g));
  std::string err;
  Segment s = Segment::create(g, 42, 7, 123, 99, &err);
  ASSERT_TRUE(s.valid()) << err;
  EXPECT_EQ(s.header()->magic, kSegmentMagic);
  EXPECT_EQ(s.header()->layout_version.load(), kLayoutVersion);
  EXPECT_EQ(s.header()->daemon_pid, 42u);
  EXPECT_EQ(s.header()->client_id, 7u);
  EXPECT_EQ(s.header()->generation, 99u);
  const int dup = ::dup(s.fd());
  Segment c = Segment::attach(dup, &err);
  ASSERT_TRUE(c.valid()) << err;
  EXPECT_EQ(c.geometry().frames_off, g.frames_off);
  // Both mappings see the same memory.
  s.counters()->accepted.store(99);
  EXPECT_EQ(c.counters()->accepted.load(), 99u);
}

TEST(Segment, ShouldReportBothVersionsOnMismatch) {
  SegmentGeometry g;
  ASSERT_TRUE(SegmentGeometry::compute({.ring_capacity = 64, .frame_count = 64}, &g));
  std::string err;
  Segment s = Segment::create(g, 1, 1, 0, 1, &err);
  ASSERT_TRUE(s.valid());
  s.header()->layout_version.store(kLayoutVersion + 1);
  Segment c = Segment::attach(::dup(s.fd()), &err);
  EXPECT_FALSE(c.valid());
  EXPECT_NE(err.find(std::to_string(kLayoutVersion + 1)), std::string::npos) << err;
  EXPECT_NE(err.find(std::to_string(kLayoutVersion)), std::string::npos) << err;
  s.header()->layout_version.store(0);
  c = Segment::attach(::dup(s.fd()), &err);
  EXPECT_FALSE(c.valid());
  EXPECT_NE(err.find("not initialised"), std::string::npos) << err;
}

TEST(Segment, ShouldBeSealedAgainstShrinking) {
  SegmentGeometry g;
  ASSERT_TRUE(SegmentGeometry::compute({.ring_capacity = 64, .frame_count = 64}, &g));
  std::string err;
  Segment s = Segment::create(g, 1, 1, 0, 1, &err);
  ASSERT_TRUE(s.valid());
  // A client that could truncate the memfd would make the daemon fault on access.
  EXPECT_NE(::ftruncate(s.fd(), 0), 0);
}

}  // namespace
}  // namespace insideout::shm
