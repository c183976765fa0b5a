#include "insideout/shm/arena.h"

namespace insideout::shm {
namespace {

std::atomic_ref<std::uint32_t> link_of(Frame* f) noexcept {
  return std::atomic_ref<std::uint32_t>(f->fn);
}

}  // namespace

FrameArena::FrameArena(void* segment_base, const SegmentGeometry& g) noexcept
    : base_(static_cast<char*>(segment_base)),
      header_(reinterpret_cast<ArenaHeader*>(base_ + g.arena_off)),
      frames_(reinterpret_cast<Frame*>(base_ + g.frames_off)),
      count_(g.frame_count) {}

void FrameArena::initialize() noexcept {
  for (std::uint32_t i = 0; i < count_; ++i) {
    link_of(&frames_[i]).store(i + 1 < count_ ? i + 2 : 0, std::memory_order_relaxed);
  }
  header_->free_head.store(count_ ? 1 : 0, std::memory_order_release);
}

Frame* FrameArena::allocate() noexcept {
  // A1: pairs with F1 in free(); the popped frame's link is visible.
  std::uint64_t head = header_->free_head.load(std::memory_order_acquire);
  for (;;) {
    const auto idx1 = static_cast<std::uint32_t>(head);
    if (idx1 == 0 || idx1 > count_) return nullptr;  // empty (or a corrupt head: treat as empty)
    Frame* f = &frames_[idx1 - 1];
    // Relaxed: if f was taken meanwhile, the tag makes the CAS below fail.
    const std::uint32_t next = link_of(f).load(std::memory_order_relaxed);
    const std::uint64_t tag = (head >> 32) + 1;
    if (header_->free_head.compare_exchange_weak(
            head, (tag << 32) | next, std::memory_order_acquire, std::memory_order_acquire)) {
      return f;
    }
  }
}

std::size_t FrameArena::allocate(std::span<Frame*> out) noexcept {
  if (out.empty()) return 0;
  // A1, as in allocate(): the links of the whole chain were published by F1.
  std::uint64_t head = header_->free_head.load(std::memory_order_acquire);
  for (;;) {
    std::uint32_t next = static_cast<std::uint32_t>(head);
    std::size_t n = 0;
    // Walk up to out.size() links. If another thread pops or pushes meanwhile, the tag
    // in head changes and the CAS below fails, so a stale walk is never used.
    while (n < out.size() && next != 0 && next <= count_) {
      out[n] = &frames_[next - 1];
      next = link_of(out[n]).load(std::memory_order_relaxed);
      ++n;
    }
    if (n == 0) return 0;
    const std::uint64_t tag = (head >> 32) + 1;
    if (header_->free_head.compare_exchange_weak(
            head, (tag << 32) | next, std::memory_order_acquire, std::memory_order_acquire)) {
      return n;
    }
  }
}

void FrameArena::free(std::span<Frame* const> frames) noexcept {
  if (frames.empty()) return;
  // Chain them privately, then splice the chain in front of the list.
  for (std::size_t i = 0; i + 1 < frames.size(); ++i) {
    link_of(frames[i]).store(index_of(frames[i + 1]) + 1, std::memory_order_relaxed);
  }
  Frame* last = frames.back();
  const std::uint32_t first1 = index_of(frames.front()) + 1;
  std::uint64_t head = header_->free_head.load(std::memory_order_relaxed);
  for (;;) {
    link_of(last).store(static_cast<std::uint32_t>(head), std::memory_order_relaxed);
    const std::uint64_t tag = (head >> 32) + 1;
    // F1, as in free(Frame*): publishes every link of the chain.
    if (header_->free_head.compare_exchange_weak(
            head, (tag << 32) | first1, std::memory_order_release, std::memory_order_relaxed)) {
      return;
    }
  }
}

void FrameArena::free(Frame* f) noexcept {
  const std::uint32_t idx1 = index_of(f) + 1;
  std::uint64_t head = header_->free_head.load(std::memory_order_relaxed);
  for (;;) {
    link_of(f).store(static_cast<std::uint32_t>(head), std::memory_order_relaxed);
    const std::uint64_t tag = (head >> 32) + 1;
    // F1: pairs with A1; publishes the link written above.
    if (header_->free_head.compare_exchange_weak(
            head, (tag << 32) | idx1, std::memory_order_release, std::memory_order_relaxed)) {
      return;
    }
  }
}

}  // namespace insideout::shm
