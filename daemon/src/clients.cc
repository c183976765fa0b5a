#include "clients.h"

#include <unistd.h>

namespace insideout::daemon {

std::uint32_t ClientSlot::new_job(std::uint64_t tag, std::string env, std::int64_t deadline_ns) {
  std::lock_guard lock(jobs_mu);
  std::uint32_t job;
  if (!free_jobs.empty()) {
    job = free_jobs.back();
    free_jobs.pop_back();
  } else {
    job = static_cast<std::uint32_t>(jobs.size());
    jobs.push_back(std::make_unique<SerialJob>());
  }
  SerialJob& j = *jobs[job];
  j = SerialJob{};
  j.tag = tag;
  j.env = std::move(env);
  j.deadline_ns = deadline_ns;
  j.in_flight = true;
  return job;
}

ClientTable::ClientTable(std::uint32_t capacity) {
  slots_.reserve(capacity);
  for (std::uint32_t i = 0; i < capacity; ++i) {
    slots_.push_back(std::make_unique<ClientSlot>());
    slots_.back()->index = i;
  }
}

ClientSlot* ClientTable::reserve() {
  std::lock_guard lock(mu_);
  for (auto& s : slots_) {
    if (s->state.load(std::memory_order_acquire) != SlotState::kFree ||
        s->refs.load(std::memory_order_acquire) != 0) {
      continue;
    }
    s->draining.store(false, std::memory_order_relaxed);
    s->peek_head.store(0, std::memory_order_relaxed);
    s->faulted.store(false, std::memory_order_relaxed);
    s->fault_reason.clear();
    s->completion_tail.store(0, std::memory_order_relaxed);
    s->jobs.clear();
    s->free_jobs.clear();
    s->accepted = s->completed = s->failed = s->rejected = s->rejected_function = s->backpressure =
        s->dropped = s->refused = 0;
    s->has_segment = false;
    s->max_inflight = 0;
    s->max_timers = 0;
    s->timers.store(0, std::memory_order_relaxed);
    s->base = nullptr;
    s->doorbells = nullptr;
    s->controls = nullptr;
    s->bells = nullptr;
    s->name.clear();
    s->pool = 0;
    const std::uint32_t hw = high_water_.load(std::memory_order_relaxed);
    if (s->index + 1 > hw) high_water_.store(s->index + 1, std::memory_order_release);
    return s.get();
  }
  return nullptr;
}

void ClientTable::activate(ClientSlot& s) {
  if (s.has_segment) {
    s.base = static_cast<char*>(s.segment.base());
    s.doorbells = s.segment.doorbells();
    s.submit =
        shm::RingConsumer(shm::RingView(s.base + s.geom.submit_ring_off, s.geom.ring_capacity));
    s.completion =
        shm::RingProducer(shm::RingView(s.base + s.geom.completion_ring_off, s.geom.ring_capacity),
                          &s.completion_tail);
    s.controls = reinterpret_cast<shm::FrameControl*>(s.base + s.geom.controls_off);
    s.bells = reinterpret_cast<shm::ClientBells*>(s.base + s.geom.bells_off);
    // Sized by the frame count the daemon accepted (at most its ring limit), reused by
    // the slot's later clients when big enough.
    if (s.ctl_size < s.geom.frame_count) {
      s.ctl = std::make_unique<FrameCtl[]>(s.geom.frame_count);
      s.ctl_size = s.geom.frame_count;
    }
    for (std::uint32_t i = 0; i < s.geom.frame_count; ++i) {
      s.ctl[i].state.store(0, std::memory_order_relaxed);
      s.ctl[i].deadline_ns.store(0, std::memory_order_relaxed);
      s.ctl[i].wait.store(0, std::memory_order_relaxed);
    }
    for (auto& b : s.bells_seen) b.store(0, std::memory_order_relaxed);
    // The configured limit, never more than the ring holds.
    if (s.max_inflight == 0 || s.max_inflight > s.geom.ring_capacity)
      s.max_inflight = s.geom.ring_capacity;
  }
  s.refs.store(1, std::memory_order_relaxed);  // the connection's
  // S1: pairs with S2 in the workers; everything above is visible to them.
  s.state.store(SlotState::kActive, std::memory_order_release);
}

bool ClientTable::try_acquire(ClientSlot& s, std::uint32_t n) noexcept {
  std::uint32_t refs = s.refs.load(std::memory_order_relaxed);
  do {
    if (refs == 0) return false;
    // Relaxed: the reference only keeps the segment mapped; the caller saw the slot
    // active (S2) before, and release()'s acq_rel orders the last user's writes.
  } while (!s.refs.compare_exchange_weak(refs, refs + n, std::memory_order_relaxed));
  return true;
}

void ClientTable::release(ClientSlot& s, std::uint32_t n) noexcept {
  // acq_rel: the last releaser sees every other user's writes before the slot goes.
  if (s.refs.fetch_sub(n, std::memory_order_acq_rel) != n) return;
  // seq_cst: ordered before the registry's epoch snapshot (see Scheduler::epochs()).
  s.state.store(SlotState::kZombie, std::memory_order_seq_cst);
  if (on_zombie_) on_zombie_();
}

void ClientTable::reclaim(ClientSlot& s) noexcept {
  std::lock_guard lock(mu_);
  s.segment = shm::Segment();  // unmaps; the memfd is gone once the client closes its copy
  s.base = nullptr;
  s.doorbells = nullptr;
  s.has_segment = false;
  s.fds.close_all();
  if (s.bell_fd >= 0) ::close(s.bell_fd);
  s.bell_fd = -1;
  s.state.store(SlotState::kFree, std::memory_order_release);
}

std::uint32_t ClientTable::active_count() const noexcept {
  std::uint32_t n = 0;
  const std::uint32_t hw = high_water();
  for (std::uint32_t i = 0; i < hw; ++i) {
    if (slots_[i]->state.load(std::memory_order_relaxed) == SlotState::kActive) ++n;
  }
  return n;
}

}  // namespace insideout::daemon
