#include "segment_request.h"

#include <algorithm>

namespace insideout::daemon {
namespace {

std::uint32_t pick(std::uint32_t asked, std::uint32_t def, std::uint32_t max) {
  if (asked == 0) return def;
  return asked < max ? asked : max;
}

}  // namespace

shm::SegmentRequest clamp_segment_request(const v1::SegmentRequest& asked,
                                          const shm::SegmentRequest& d,
                                          const shm::SegmentRequest& mx) noexcept {
  shm::SegmentRequest r;
  r.ring_capacity = pick(asked.ring_capacity(), d.ring_capacity, mx.ring_capacity);
  r.frame_count =
      pick(asked.frame_count(), std::min(d.frame_count, r.ring_capacity), mx.frame_count);
  r.buffer_block_size = pick(asked.buffer_block_size(), d.buffer_block_size, mx.buffer_block_size);
  r.buffer_block_count =
      pick(asked.buffer_block_count(), d.buffer_block_count, mx.buffer_block_count);
  return r;
}

}  // namespace insideout::daemon
