// A scheduler and one client slot in this process, without sockets: tests drive the
// rings and the arena directly, as a client would, and read completions back.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <climits>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>

#include "client_source.h"
#include "clients.h"
#include "engine.h"
#include "insideout/shm/arena.h"
#include "insideout/shm/bell.h"
#include "insideout/shm/futex.h"
#include "insideout/shm/ring.h"
#include "insideout/shm/segment.h"

namespace insideout::testing {

class InProcessDaemon {
 public:
  // `before_start` runs before the workers do: where a test installs hooks the workers
  // read (set after the start, they would race with them).
  explicit InProcessDaemon(std::uint32_t workers = 2, shm::SegmentRequest req = {},
                           shm::IdleStrategy idle = shm::IdleStrategy::kSpinThenBlock,
                           const std::function<void(InProcessDaemon&)>& before_start = {},
                           std::chrono::milliseconds long_step = std::chrono::seconds(1))
      : table_(8) {
    daemon::register_builtins(registry_);
    daemon::SchedulerConfig cfg;
    cfg.workers = workers;
    cfg.idle = idle;
    cfg.long_step = long_step;
    scheduler_ = std::make_unique<daemon::Scheduler>(
        cfg, registry_, std::make_unique<daemon::ClientSource>(table_, registry_, cfg.pool));
    slot_ = table_.reserve();
    EXPECT_TRUE(shm::SegmentGeometry::compute(req, &geom_));
    std::string err;
    slot_->segment = shm::Segment::create(geom_, 1, 1, 0, 1, &err);
    EXPECT_TRUE(slot_->segment.valid()) << err;
    slot_->geom = geom_;
    slot_->has_segment = true;
    EXPECT_TRUE(daemon::ClientSource::of(*scheduler_).attach_client(*slot_, &err)) << err;
    bell_ = shm::SubmitBell(scheduler_->bell_page(), slot_->bell_fd);
    table_.activate(*slot_);
    base_ = static_cast<char*>(slot_->segment.base());
    arena_ = shm::FrameArena(base_, geom_);
    submit_ = shm::RingProducer(shm::RingView(base_ + geom_.submit_ring_off, geom_.ring_capacity));
    completion_ =
        shm::RingConsumer(shm::RingView(base_ + geom_.completion_ring_off, geom_.ring_capacity));
    if (before_start) before_start(*this);
    scheduler_->start();
  }
  ~InProcessDaemon() {
    scheduler_->drain(std::chrono::seconds(5));
    scheduler_->stop();
  }

  std::uint32_t fn(const char* name) const { return *registry_.id_of(name); }
  shm::Frame* frame() {
    shm::Frame* f = arena_.allocate();
    if (f != nullptr) std::memset(static_cast<void*>(f), 0, sizeof(*f));
    return f;
  }
  std::uint32_t offset(const void* p) const {
    return static_cast<std::uint32_t>(static_cast<const char*>(p) - base_);
  }
  char* buffer(std::uint32_t index) const {
    return base_ + geom_.buffers_off + index * geom_.buffer_block_size;
  }
  bool push(std::uint32_t off) {
    if (!submit_.try_push(off)) return false;
    bell_.ring();
    return true;
  }
  bool push(shm::Frame* f) { return push(offset(f)); }
  // The next completed frame, or nullptr after `timeout`.
  shm::Frame* next(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      std::uint32_t off;
      if (completion_.try_pop(&off)) return reinterpret_cast<shm::Frame*>(base_ + off);
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) return nullptr;
      shm::event_wait(
          doorbells()->completion, [&] { return completion_.ready(); },
          std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - now));
    }
  }
  void release(shm::Frame* f) { arena_.free(f); }
  // What the daemon does when a client hangs up.
  void close_client() {
    slot_->state.store(daemon::SlotState::kClosing);
    daemon::ClientSource::of(*scheduler_).client_closing(*slot_);
    table_.release(*slot_);
  }

  shm::Doorbells* doorbells() const { return slot_->segment.doorbells(); }
  daemon::ClientSlot& slot() { return *slot_; }
  daemon::ClientTable& table() { return table_; }
  // More functions: from a before_start callback only (the registry is read-only once
  // the workers run).
  daemon::FunctionRegistry& registry() { return registry_; }
  daemon::Scheduler& scheduler() { return *scheduler_; }
  daemon::ClientSource& source() { return daemon::ClientSource::of(*scheduler_); }
  const shm::SegmentGeometry& geometry() const { return geom_; }
  char* base() const { return base_; }

 private:
  daemon::FunctionRegistry registry_;
  daemon::ClientTable table_;
  std::unique_ptr<daemon::Scheduler> scheduler_;
  daemon::ClientSlot* slot_ = nullptr;
  shm::SegmentGeometry geom_{};
  char* base_ = nullptr;
  shm::FrameArena arena_;
  shm::RingProducer submit_;
  shm::RingConsumer completion_;
  shm::SubmitBell bell_;
};

}  // namespace insideout::testing
