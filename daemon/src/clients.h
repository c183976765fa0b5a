// The daemon's table of registered clients. Slots are preallocated and never freed while
// the daemon runs, so a worker may read a slot it found in the table at any time.
//
// A slot's segment stays mapped while its reference count is non-zero (one reference
// for the connection, one per accepted continuation not yet completed) and then for a
// grace period: the last release turns the slot into a zombie, and the registry thread
// unmaps it only after every worker has passed a quiescent point (Scheduler::epochs()),
// because a worker may have read the slot as active just before and still be peeking
// at its ring.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "client_fds.h"
#include "insideout/shm/layout.h"
#include "insideout/shm/ring.h"
#include "insideout/shm/segment.h"

namespace insideout::daemon {

enum class SlotState : std::uint32_t { kFree, kActive, kClosing, kZombie };

// A continuation that came as a protobuf descriptor (no frame): its environment and
// result live here, in daemon memory.
struct SerialJob {
  std::uint64_t tag = 0;
  std::string env;
  std::string data;     // result bytes
  std::string message;  // the function's failure message, if it gave one
  std::uint64_t value = 0;
  shm::Status status = shm::Status::kPending;
  shm::ErrorDetail detail = shm::ErrorDetail::kNone;
  // While in flight, under ClientSlot::jobs_mu (read by workers at step boundaries, by
  // the event queue when it parks, written by the connection's Cancel): the deadline
  // (CLOCK_MONOTONIC ns, 0: none), FrameCtl::kCancelBy* bits, and the wait it is parked
  // in (EventQueue::WaitId; 0: none), as FrameCtl keeps them for frames.
  std::int64_t deadline_ns = 0;
  std::uint32_t cancel = 0;
  std::uint64_t wait = 0;
  bool in_flight = false;  // accepted by a pool, its Result not yet taken
};

// A frame's daemon-private control state (ClientSlot::ctl[i] for frame i): what the
// daemon copied when it accepted the frame, and whether it was cancelled.
struct FrameCtl {
  enum : std::uint32_t {
    kInFlight = 1u << 0,         // accepted, not yet completed
    kCancelByClient = 1u << 1,   // Handle::cancel()
    kCancelByOperator = 1u << 2  // insideoutctl cancel
  };
  // C1: set (fetch_or) by a canceller before it cancels the wait; read by gone() (C2).
  std::atomic<std::uint32_t> state{0};
  // Copied at accept (relaxed: the task's hand-over between workers publishes it, and a
  // canceller on another thread does not read it).
  std::atomic<std::int64_t> deadline_ns{0};
  // The event queue's WaitId while the continuation is parked in its home pool's queue;
  // 0 otherwise (stored under the queue's lock by parked()/park_ends()).
  std::atomic<std::uint64_t> wait{0};
};

struct alignas(shm::kCacheLine) ClientSlot {
  // Memory ordering: state is stored with release by the registry thread after every
  // field below is set (S1) and loaded with acquire by workers (S2).
  std::atomic<SlotState> state{SlotState::kFree};
  std::atomic<std::uint32_t> refs{0};
  std::atomic<bool> draining{false};        // the drain lock: one consumer of the submit ring
  std::atomic<std::uint64_t> peek_head{0};  // consumer position, for peeks without the lock
  // Set once (exchange) by the worker that found the client's rings unusable: no worker
  // reads its rings or pushes to them again, and the daemon closes its connection.
  std::atomic<bool> faulted{false};
  std::string fault_reason;  // written by that worker before it tells the daemon

  shm::RingConsumer submit;                                                // under `draining`
  alignas(shm::kCacheLine) std::atomic<std::uint64_t> completion_tail{0};  // daemon-side, trusted
  shm::RingProducer completion;

  std::mutex jobs_mu;
  std::vector<std::unique_ptr<SerialJob>> jobs;
  std::vector<std::uint32_t> free_jobs;

  // Set at registration, constant while active.
  std::uint32_t index = 0;
  std::uint32_t id = 0;
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  std::string name;
  bool has_segment = false;
  shm::Segment segment;
  shm::SegmentGeometry geom{};
  char* base = nullptr;
  shm::Doorbells* doorbells = nullptr;
  // The daemon's end of the client's eventfd (its "submit" bell, see shm/bell.h); closed
  // when the slot is reclaimed.
  int bell_fd = -1;
  std::uint32_t max_inflight = 0;  // 0 until activate(): then at most the ring capacity
  std::uint32_t max_timers = 0;    // continuations parked on a timer at once; 0: no limit
  std::atomic<std::uint32_t> timers{0};
  std::uint32_t pool = 0;  // the pool (SchedulerConfig::pool) whose workers serve it
  // Per frame (geom.frame_count, the daemon's clamp), made and reset by activate().
  std::unique_ptr<FrameCtl[]> ctl;
  std::uint32_t ctl_size = 0;
  shm::FrameControl* controls = nullptr;  // in the segment: client-written
  shm::ClientBells* bells = nullptr;      // in the segment: client-written
  // The doorbell counters last notified to the pool's event queue (CAS: one notifier each).
  std::atomic<std::uint64_t> bells_seen[shm::kClientBells] = {};
  // Descriptors it handed over (PassFd), at most max_fds; closed by reclaim().
  ClientFds fds;
  std::uint32_t max_fds = 0;

  // Daemon-side statistics (relaxed: counters only).
  std::atomic<std::uint64_t> accepted{0};
  std::atomic<std::uint64_t> completed{0};
  std::atomic<std::uint64_t> failed{0};
  std::atomic<std::uint64_t> rejected{0};           // bad offset, length, flags or argument
  std::atomic<std::uint64_t> rejected_function{0};  // unknown function id
  std::atomic<std::uint64_t> dropped{0};  // offsets that are not frames (also in rejected)
  std::atomic<std::uint64_t> refused{0};  // frames completed with kDraining, never accepted
  std::atomic<std::uint64_t> backpressure{0};

  // A serialized job slot (reused when one is free), its environment copied in.
  std::uint32_t new_job(std::uint64_t tag, std::string env, std::int64_t deadline_ns = 0);

  shm::Frame* frame(std::uint32_t off) const noexcept {
    return reinterpret_cast<shm::Frame*>(base + off);
  }
  std::uint32_t frame_index(std::uint32_t off) const noexcept {
    return (off - geom.frames_off) / static_cast<std::uint32_t>(sizeof(shm::Frame));
  }
  // The message slot of the frame at `off` (a valid frame offset).
  char* message(std::uint32_t off) const noexcept {
    const std::uint32_t index = (off - geom.frames_off) / sizeof(shm::Frame);
    return reinterpret_cast<char*>(base + geom.messages_off) +
           std::size_t{index} * shm::kMessageBytes;
  }
};

class ClientTable {
 public:
  explicit ClientTable(std::uint32_t capacity);

  std::uint32_t capacity() const noexcept { return static_cast<std::uint32_t>(slots_.size()); }
  // Slots [0, high_water()) may be in use.
  std::uint32_t high_water() const noexcept { return high_water_.load(std::memory_order_acquire); }
  ClientSlot& slot(std::uint32_t i) noexcept { return *slots_[i]; }

  // Registry thread: a free slot, reset, not yet active; nullptr when full.
  ClientSlot* reserve();
  // Registry thread: publishes a reserved slot (S1).
  void activate(ClientSlot& s);
  // Takes n references, but only while the slot still holds one (CAS from non-zero): a
  // slot whose last reference is gone is a zombie on its way out, never revived.
  [[nodiscard]] bool try_acquire(ClientSlot& s, std::uint32_t n) noexcept;
  // Drops one reference; the last one makes the slot a zombie and calls on_zombie.
  void release(ClientSlot& s, std::uint32_t n = 1) noexcept;
  // Registry thread, after the grace period: unmaps a zombie's segment and frees it.
  void reclaim(ClientSlot& s) noexcept;
  void set_on_zombie(std::function<void()> f) { on_zombie_ = std::move(f); }
  std::uint32_t active_count() const noexcept;

 private:
  std::vector<std::unique_ptr<ClientSlot>> slots_;
  std::atomic<std::uint32_t> high_water_{0};
  std::mutex mu_;  // reserve() and reclaim()
  std::function<void()> on_zombie_;
};

}  // namespace insideout::daemon
