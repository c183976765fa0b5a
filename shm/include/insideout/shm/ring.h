// A bounded ring of 32-bit values (frame offsets) in shared memory: many producers, one
// consumer at a time, lock-free on both sides.
//
// Each slot is one 64-bit word: (sequence tag << 32) | value. A slot is free for
// position p when its tag is (uint32)p and holds a published item for position p when
// its tag is (uint32)(p + 1). A producer reserves positions by CAS on `tail` and
// publishes each slot with a single release store, so the consumer never reads the
// producers' tail: it reads the slot at its own head and checks the tag. That is what
// lets the daemon consume a ring that an untrusted client writes: garbage in a slot is at
// worst a wrong value (validated later) or "nothing ready", never a wild position.
//
// Memory ordering:
//   P1 (producer, slot store, release) pairs with C1 (consumer, slot load, acquire):
//      publishes the value and everything the producer wrote before it (the frame).
//   C2 (consumer, slot store "free for p + capacity", release) pairs with P0 (producer,
//      slot load, acquire): the producer reuses a slot only after the consumer is done
//      with it.
//   The tail CAS may be relaxed: it only arbitrates between producers; the slot
//   word carries all publication.
//   `head` in shared memory is a hint (release store, acquire load) for producers'
//   batch sizing and for statistics; correctness rests on the slot tags alone.
//
// A producer never loops on what the other side wrote: a slot whose tag is "ahead" of
// the reserved position means another producer published it, so the tail must have
// moved (its CAS is ordered before that slot's P1 store, which P0 acquired). A tail that
// has not moved means the slot was forged: try_push reports kCorrupt instead of
// reloading the same position forever. That is how the daemon pushes completions into a
// ring that a lying client may have scribbled over.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>

#include "insideout/shm/layout.h"

namespace insideout::shm {

// Bytes a ring of `capacity` slots takes: header plus slots.
constexpr std::size_t ring_bytes(std::uint32_t capacity) noexcept {
  return sizeof(RingHeader) + std::size_t{capacity} * sizeof(std::uint64_t);
}

// Writes the initial slot tags; call before the segment's version is published.
void ring_initialize(void* ring_base, std::uint32_t capacity) noexcept;

// A process-local view of a ring lying at `ring_base`.
class RingView {
 public:
  RingView() = default;
  RingView(void* ring_base, std::uint32_t capacity) noexcept
      : header_(static_cast<RingHeader*>(ring_base)),
        slots_(reinterpret_cast<std::atomic<std::uint64_t>*>(static_cast<char*>(ring_base) +
                                                             sizeof(RingHeader))),
        capacity_(capacity),
        mask_(capacity - 1) {}

  RingHeader* header() const noexcept { return header_; }
  std::atomic<std::uint64_t>& slot(std::uint64_t pos) const noexcept { return slots_[pos & mask_]; }
  std::uint32_t capacity() const noexcept { return capacity_; }

 private:
  RingHeader* header_ = nullptr;
  std::atomic<std::uint64_t>* slots_ = nullptr;
  std::uint32_t capacity_ = 0;
  std::uint64_t mask_ = 0;
};

// What a push found when it could not push everything.
enum class PushFailure : std::uint8_t {
  kNone,     // everything asked for was pushed
  kFull,     // the slot at the tail still holds the previous lap's item
  kCorrupt,  // a slot's tag is ahead of a tail nobody moved: the ring was forged
};

// Producer side. `tail` is the reservation counter: the ring's own (shared by the
// producers of one process) or one the producer keeps privately when it must not trust
// the shared one (the daemon producing completions for a client).
class RingProducer {
 public:
  RingProducer() = default;
  RingProducer(RingView view, std::atomic<std::uint64_t>* tail) noexcept
      : view_(view), tail_(tail) {}
  explicit RingProducer(RingView view) noexcept : RingProducer(view, &view.header()->tail) {}

  // Pushes one value; false when the ring is full or forged (*why says which).
  [[nodiscard]] bool try_push(std::uint32_t value, PushFailure* why = nullptr) noexcept;
  // Pushes up to values.size() values in one reservation; returns how many went in
  // (fewer: *why says why the rest did not).
  [[nodiscard]] std::size_t try_push_batch(std::span<const std::uint32_t> values,
                                           PushFailure* why = nullptr) noexcept;

  // Positions reserved so far (statistics).
  std::uint64_t tail() const noexcept { return tail_->load(std::memory_order_relaxed); }

 private:
  RingView view_;
  std::atomic<std::uint64_t>* tail_ = nullptr;
};

// Consumer side: one at a time per ring (the caller serialises). The consumer keeps its
// position privately; the shared `head` is only written, as a hint.
class RingConsumer {
 public:
  RingConsumer() = default;
  explicit RingConsumer(RingView view, std::uint64_t head = 0) noexcept
      : view_(view), head_(head) {}

  [[nodiscard]] bool try_pop(std::uint32_t* value) noexcept;
  // Pops up to out.size() ready values; returns how many.
  [[nodiscard]] std::size_t pop_batch(std::span<std::uint32_t> out) noexcept;
  // True when the next slot holds a published value (one load, no side effect).
  [[nodiscard]] bool ready() const noexcept;

  std::uint64_t head() const noexcept { return head_; }

 private:
  RingView view_;
  std::uint64_t head_ = 0;
};

// ---- inline implementation (hot path) ----

namespace ring_detail {
constexpr std::uint32_t tag_of(std::uint64_t word) noexcept {
  return static_cast<std::uint32_t>(word >> 32);
}
constexpr std::uint64_t make_word(std::uint64_t tag_pos, std::uint32_t value) noexcept {
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(tag_pos)) << 32) | value;
}
}  // namespace ring_detail

inline bool RingProducer::try_push(std::uint32_t value, PushFailure* why) noexcept {
  std::uint64_t pos = tail_->load(std::memory_order_relaxed);
  for (;;) {
    auto& slot = view_.slot(pos);
    // P0: pairs with C2 in RingConsumer::pop_batch(); the slot is ours only once freed.
    const std::uint32_t tag = ring_detail::tag_of(slot.load(std::memory_order_acquire));
    const auto diff = static_cast<std::int32_t>(tag - static_cast<std::uint32_t>(pos));
    if (diff == 0) {
      // Relaxed: the CAS only arbitrates between producers; P1 publishes.
      if (tail_->compare_exchange_weak(pos, pos + 1, std::memory_order_relaxed)) {
        // P1: pairs with C1; publishes the value and the frame written before it.
        slot.store(ring_detail::make_word(pos + 1, value), std::memory_order_release);
        if (why != nullptr) *why = PushFailure::kNone;
        return true;
      }
    } else if (diff < 0) {
      if (why != nullptr) *why = PushFailure::kFull;  // the previous lap's item is still there
      return false;
    } else {
      // Another producer moved on, or the slot was forged: only the tail can tell.
      const std::uint64_t now = tail_->load(std::memory_order_relaxed);
      if (now == pos) {
        if (why != nullptr) *why = PushFailure::kCorrupt;
        return false;
      }
      pos = now;
    }
  }
}

inline std::size_t RingProducer::try_push_batch(std::span<const std::uint32_t> values,
                                                PushFailure* why) noexcept {
  if (why != nullptr) *why = PushFailure::kNone;
  if (values.empty()) return 0;
  std::uint64_t pos = tail_->load(std::memory_order_relaxed);
  for (;;) {
    // Size the batch from the head hint, then confirm with the tag of its last slot: the
    // consumer frees in order, so a free last slot means every slot before it is free.
    // (A forged hint or forged tags cost the forger its own ring, nothing more: n stays
    // within values.size() and every slot written lies inside the ring.)
    const std::uint64_t head = view_.header()->head.load(std::memory_order_acquire);
    std::uint64_t room = view_.capacity() - std::min<std::uint64_t>(pos - head, view_.capacity());
    std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(room, values.size()));
    if (n == 0) n = 1;  // the hint may lag: let the tag decide for one slot
    const std::uint64_t last = pos + n - 1;
    // P0 for the whole batch, see try_push().
    const std::uint32_t tag = ring_detail::tag_of(view_.slot(last).load(std::memory_order_acquire));
    const auto diff = static_cast<std::int32_t>(tag - static_cast<std::uint32_t>(last));
    if (diff == 0) {
      if (tail_->compare_exchange_weak(pos, pos + n, std::memory_order_relaxed)) {
        for (std::size_t i = 0; i < n; ++i) {
          // P1 for each slot of the batch.
          view_.slot(pos + i).store(ring_detail::make_word(pos + i + 1, values[i]),
                                    std::memory_order_release);
        }
        if (n < values.size() && why != nullptr) *why = PushFailure::kFull;
        return n;
      }
    } else if (diff < 0) {
      if (n == 1) {
        if (why != nullptr) *why = PushFailure::kFull;
        return 0;
      }
      return try_push(values[0], why) ? 1 : 0;
    } else {
      const std::uint64_t now = tail_->load(std::memory_order_relaxed);
      if (now == pos) {  // see try_push()
        if (why != nullptr) *why = PushFailure::kCorrupt;
        return 0;
      }
      pos = now;
    }
  }
}

inline bool RingConsumer::ready() const noexcept {
  return ring_detail::tag_of(view_.slot(head_).load(std::memory_order_acquire)) ==
         static_cast<std::uint32_t>(head_ + 1);
}

inline bool RingConsumer::try_pop(std::uint32_t* value) noexcept {
  return pop_batch(std::span<std::uint32_t>(value, 1)) == 1;
}

inline std::size_t RingConsumer::pop_batch(std::span<std::uint32_t> out) noexcept {
  std::size_t n = 0;
  while (n < out.size()) {
    auto& slot = view_.slot(head_);
    // C1: pairs with P1; the value and the producer's writes before it are visible.
    const std::uint64_t word = slot.load(std::memory_order_acquire);
    if (ring_detail::tag_of(word) != static_cast<std::uint32_t>(head_ + 1)) break;
    out[n++] = static_cast<std::uint32_t>(word);
    // C2: pairs with P0; hands the slot to the producer of the next lap.
    slot.store(ring_detail::make_word(head_ + view_.capacity(), 0), std::memory_order_release);
    ++head_;
  }
  if (n != 0) {
    // Hint for producers' batch sizing; pairs with the acquire load in try_push_batch().
    view_.header()->head.store(head_, std::memory_order_release);
  }
  return n;
}

}  // namespace insideout::shm
