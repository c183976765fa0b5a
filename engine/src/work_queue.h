// A worker's run queue: a bounded FIFO ring of Task pointers that only its owner pushes
// to, and that the owner and thieves pop from by CAS on head. FIFO keeps yield fair (a
// yielded continuation runs after what was already queued); thieves take the oldest
// work, up to half the queue at a time.
//
// Memory ordering:
//   Q1 (push: tail store, release) pairs with Q2 (pop/steal: tail load, acquire): the
//      slots and the tasks they point to are visible to whoever pops them.
//   Q3 (pop/steal: head CAS, acq_rel) pairs with Q4 (push: head load, acquire): the
//      owner reuses a slot only after the consumer that claimed it moved head past it.
//   Slots are relaxed atomics: a popper may read a slot whose claim it then loses; it
//   never uses that value.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <span>

#include "insideout/shm/layout.h"
#include "task.h"

namespace insideout::engine {

class WorkQueue {
 public:
  explicit WorkQueue(std::uint32_t capacity = 1024)
      : slots_(new std::atomic<Task*>[capacity]), capacity_(capacity), mask_(capacity - 1) {}

  // Owner only. False when the ring is full (the owner then keeps the task aside).
  [[nodiscard]] bool push(Task* t) noexcept {
    const std::uint64_t tail = tail_.load(std::memory_order_relaxed);  // only the owner writes it
    if (tail - cached_head_ >= capacity_) {
      cached_head_ = head_.load(std::memory_order_acquire);  // Q4: pairs with Q3
      if (tail - cached_head_ >= capacity_) return false;
    }
    slots_[tail & mask_].store(t, std::memory_order_relaxed);
    tail_.store(tail + 1, std::memory_order_release);  // Q1: pairs with Q2
    return true;
  }

  // Any thread.
  Task* pop() noexcept {
    std::uint64_t head = head_.load(std::memory_order_relaxed);
    for (;;) {
      const std::uint64_t tail = tail_.load(std::memory_order_acquire);  // Q2: pairs with Q1
      if (head >= tail) return nullptr;
      Task* t = slots_[head & mask_].load(std::memory_order_relaxed);
      // Q3: pairs with Q4; on failure `head` is reloaded and we retry.
      if (head_.compare_exchange_weak(head, head + 1, std::memory_order_acq_rel,
                                      std::memory_order_relaxed)) {
        return t;
      }
    }
  }

  // A thief takes up to half of the queue (at most out.size()); returns how many.
  std::size_t steal(std::span<Task*> out) noexcept {
    std::uint64_t head = head_.load(std::memory_order_relaxed);
    for (;;) {
      const std::uint64_t tail = tail_.load(std::memory_order_acquire);  // Q2
      if (head >= tail) return 0;
      std::uint64_t n = (tail - head + 1) / 2;
      if (n > out.size()) n = out.size();
      for (std::uint64_t i = 0; i < n; ++i)
        out[i] = slots_[(head + i) & mask_].load(std::memory_order_relaxed);
      if (head_.compare_exchange_weak(head, head + n, std::memory_order_acq_rel,  // Q3
                                      std::memory_order_relaxed)) {
        return static_cast<std::size_t>(n);
      }
    }
  }

  // Approximate: for wake decisions and statistics only.
  std::uint64_t size() const noexcept {
    const std::uint64_t t = tail_.load(std::memory_order_relaxed);
    const std::uint64_t h = head_.load(std::memory_order_relaxed);
    return t > h ? t - h : 0;
  }
  std::uint32_t capacity() const noexcept { return capacity_; }

 private:
  alignas(shm::kCacheLine) std::atomic<std::uint64_t> head_{0};
  alignas(shm::kCacheLine) std::atomic<std::uint64_t> tail_{0};
  std::uint64_t cached_head_ = 0;  // owner's last view of head_
  std::unique_ptr<std::atomic<Task*>[]> slots_;
  std::uint32_t capacity_;
  std::uint64_t mask_;
};

}  // namespace insideout::engine
