// The frame arena: fixed-size 64-byte frames in the client's segment, handed out and
// taken back by the client alone (the daemon only reads and completes frames it is
// given), with no heap allocation per continuation.
//
// A lock-free stack of frame indices (Treiber) whose head carries an ABA tag: the head
// word is (tag << 32) | (index + 1), 0 meaning empty; a free frame's first word holds
// the next index + 1.
//
// Memory ordering:
//   F1 (free: CAS on free_head, release) pairs with A1 (allocate: load of free_head,
//      acquire): the allocator sees the link written into the freed frame.
//   The link word is read and written through atomic_ref (relaxed): a popper may read
//   the link of a frame that another thread has just taken; the tag makes its CAS fail.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>

#include "insideout/shm/layout.h"

namespace insideout::shm {

class FrameArena {
 public:
  FrameArena() = default;
  FrameArena(void* segment_base, const SegmentGeometry& g) noexcept;

  // Links every frame into the free list. Called once by whoever creates the segment.
  void initialize() noexcept;

  [[nodiscard]] Frame* allocate() noexcept;
  void free(Frame* f) noexcept;
  // Takes up to out.size() frames in one CAS; returns how many.
  [[nodiscard]] std::size_t allocate(std::span<Frame*> out) noexcept;
  // Gives frames back in one CAS.
  void free(std::span<Frame* const> frames) noexcept;

  Frame* frame_at(std::uint32_t offset) const noexcept {
    return reinterpret_cast<Frame*>(base_ + offset);
  }
  std::uint32_t offset_of(const Frame* f) const noexcept {
    return static_cast<std::uint32_t>(reinterpret_cast<const char*>(f) - base_);
  }
  std::uint32_t index_of(const Frame* f) const noexcept {
    return static_cast<std::uint32_t>(f - frames_);
  }
  Frame* frame(std::uint32_t index) const noexcept { return frames_ + index; }
  std::uint32_t frame_count() const noexcept { return count_; }

 private:
  char* base_ = nullptr;
  ArenaHeader* header_ = nullptr;
  Frame* frames_ = nullptr;
  std::uint32_t count_ = 0;
};

}  // namespace insideout::shm
