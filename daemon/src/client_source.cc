#include "client_source.h"

#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <variant>

#include "frame_check.h"
#include "insideout/shm/futex.h"
#include "insideout/shm/ring.h"

namespace insideout::daemon {

using engine::kTaskEnvInline;
using engine::kTaskOutput;
using engine::kTaskSerial;
using engine::with_plugin_slot;
using shm::ErrorDetail;
using shm::Status;

namespace {

std::int64_t monotonic_ns() noexcept {
  timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

constexpr std::uint64_t kBellMask = (std::uint64_t{1} << 63) - 1;  // the counted bits

}  // namespace

// Task flags of this source (the engine passes them through): kTaskEnvInline,
// kTaskSerial and kTaskOutput say where a root task's environment is.

ClientSource::ClientSource(ClientTable& clients, const FunctionRegistry& registry,
                           std::uint32_t pool)
    : clients_(clients),
      registry_(registry),
      pool_(pool),
      per_worker_(std::make_unique<PerWorker[]>(engine::kMaxPoolWorkers)) {}

ClientSource::PerWorker& ClientSource::per(const Worker& w) noexcept {
  return per_worker_[w.index];
}

bool ClientSource::has_work() {
  const std::uint32_t hw = clients_.high_water();
  const bool waiting = sched_->events().waiting();
  for (std::uint32_t i = 0; i < hw; ++i) {
    ClientSlot& c = clients_.slot(i);
    // A doorbell rung while its ring woke nobody: poll() notifies it.
    if (waiting && c.state.load(std::memory_order_acquire) == SlotState::kActive && c.has_segment &&
        c.pool == pool_ && !c.faulted.load(std::memory_order_relaxed) && ring_bells(c, true)) {
      return true;
    }
    // A client accept_from() would refuse is no work: its held-back items wait for one
    // of its continuations to complete, on a worker that is awake to complete it.
    if (c.state.load(std::memory_order_acquire) != SlotState::kActive || !c.has_segment ||
        c.pool != pool_ || c.faulted.load(std::memory_order_relaxed) || held_back(c)) {
      continue;
    }
    const std::uint64_t head = c.peek_head.load(std::memory_order_relaxed);
    shm::RingView view(c.base + c.geom.submit_ring_off, c.geom.ring_capacity);
    const std::uint64_t word = view.slot(head).load(std::memory_order_seq_cst);
    if (static_cast<std::uint32_t>(word >> 32) == static_cast<std::uint32_t>(head + 1)) return true;
  }
  return false;
}

std::span<std::byte> ClientSource::env(const Task& t) {
  ClientSlot& c = clients_.slot(t.client);
  if (t.flags & kTaskSerial) {
    SerialJob* job;
    {
      std::lock_guard lock(c.jobs_mu);  // the table may grow meanwhile; the job does not move
      job = c.jobs[t.frame].get();
    }
    return std::as_writable_bytes(std::span(job->env.data(), job->env.size()));
  }
  const auto len = static_cast<std::uint32_t>(t.w1 >> 32);
  if (t.flags & kTaskEnvInline) {
    return {reinterpret_cast<std::byte*>(c.frame(t.frame)->inline_data), len};
  }
  const auto off = static_cast<std::uint32_t>(t.w1);
  return {reinterpret_cast<std::byte*>(c.base + off), len};
}

FrameCtl* ClientSource::ctl_of(const Task& t) noexcept {
  if (t.flags & (engine::kTaskChild | kTaskSerial)) return nullptr;
  ClientSlot& c = clients_.slot(t.client);
  if (!c.has_segment || c.ctl == nullptr) return nullptr;
  return &c.ctl[c.frame_index(t.frame)];
}

bool ClientSource::gone(const Task& t) {
  if (clients_.slot(t.client).state.load(std::memory_order_relaxed) == SlotState::kClosing)
    return true;
  if (t.flags & kTaskSerial) {
    // The serialized path's deadline and cancel, under the slot's job lock (its steps are
    // not the ring's fast path).
    ClientSlot& c = clients_.slot(t.client);
    std::lock_guard lock(c.jobs_mu);
    const SerialJob& j = *c.jobs[t.frame];
    return j.cancel != 0 || (j.deadline_ns != 0 && monotonic_ns() >= j.deadline_ns);
  }
  const FrameCtl* f = ctl_of(t);
  if (f == nullptr) return false;
  // C2: pairs with C1 in cancel_frame() (relaxed: the event queue's lock orders it where
  // a park must not miss it; elsewhere the next step boundary looks again).
  if (f->state.load(std::memory_order_relaxed) &
      (FrameCtl::kCancelByClient | FrameCtl::kCancelByOperator))
    return true;
  const std::int64_t d = f->deadline_ns.load(std::memory_order_relaxed);
  return d != 0 && monotonic_ns() >= d;
}

std::int64_t ClientSource::deadline_ns(const Task& t) {
  if (t.flags & kTaskSerial) {
    ClientSlot& c = clients_.slot(t.client);
    std::lock_guard lock(c.jobs_mu);
    return c.jobs[t.frame]->deadline_ns;
  }
  const FrameCtl* f = ctl_of(t);
  return f == nullptr ? 0 : f->deadline_ns.load(std::memory_order_relaxed);
}

void ClientSource::parked(const Task& t, std::uint64_t id) {
  // Only waits in the client's home pool are recorded: a WaitId means nothing to another
  // pool's queue (a continuation that moved is cancelled when its wait ends).
  if ((t.flags & kTaskSerial) && !(t.flags & engine::kTaskChild)) {
    ClientSlot& c = clients_.slot(t.client);
    if (c.pool != pool_) return;
    std::lock_guard lock(c.jobs_mu);  // under the queue's lock too
    c.jobs[t.frame]->wait = id;
    return;
  }
  FrameCtl* f = ctl_of(t);
  if (f != nullptr && clients_.slot(t.client).pool == pool_)
    f->wait.store(id, std::memory_order_relaxed);  // under the queue's lock
}

bool ClientSource::cancel_frame(ClientSlot& c, std::uint32_t index, std::uint32_t by) {
  if (!c.has_segment || c.ctl == nullptr || index >= c.geom.frame_count) return false;
  FrameCtl& f = c.ctl[index];
  // C1: pairs with C2 in gone().
  const std::uint32_t prev = f.state.fetch_or(by, std::memory_order_seq_cst);
  if (!(prev & FrameCtl::kInFlight)) return false;  // done: accept_one() resets the bits
  // Parked: resume it now. The event queue's lock orders this with a park in progress:
  // either that park finished before our cancel() took the lock (then `wait` holds its
  // id, read again below), or it begins after and its admission sees the bit (C2) and
  // refuses. cancel() of a stale id is a no-op (the id's generation).
  engine::EventQueue& q = sched_->events();
  const std::uint64_t id = f.wait.load(std::memory_order_relaxed);
  if (q.cancel(id)) return true;  // takes the queue's lock even for id 0
  const std::uint64_t again = f.wait.load(std::memory_order_relaxed);
  if (again != 0 && again != id) q.cancel(again);
  return true;
}

std::uint32_t ClientSource::cancel_serial(ClientSlot& c, std::uint64_t tag, std::uint32_t by) {
  std::vector<std::uint32_t> hit;
  std::vector<std::uint64_t> waits;
  {
    std::lock_guard lock(c.jobs_mu);
    // Bounded by the jobs in flight (--max-serial-inflight per connection).
    for (std::uint32_t i = 0; i < c.jobs.size(); ++i) {
      SerialJob& j = *c.jobs[i];
      if (!j.in_flight || j.tag != tag) continue;
      j.cancel |= by;  // seen by gone() at the next step boundary or admission
      hit.push_back(i);
      waits.push_back(j.wait);
    }
  }
  // As cancel_frame(): the queue's lock orders this with a park in progress; a park that
  // finished meanwhile left its id in the job, read again.
  engine::EventQueue& q = sched_->events();
  for (std::size_t k = 0; k < hit.size(); ++k) {
    if (q.cancel(waits[k])) continue;
    std::uint64_t again = 0;
    {
      std::lock_guard lock(c.jobs_mu);
      const SerialJob& j = *c.jobs[hit[k]];
      if (j.in_flight && j.tag == tag) again = j.wait;
    }
    if (again != 0 && again != waits[k]) q.cancel(again);
  }
  return static_cast<std::uint32_t>(hit.size());
}

std::uint32_t ClientSource::cancel_all(ClientSlot& c, std::uint32_t by) {
  if (!c.has_segment || c.ctl == nullptr) return 0;
  std::uint32_t n = 0;
  // Bounded by the frame count the daemon accepted.
  for (std::uint32_t i = 0; i < c.geom.frame_count; ++i) {
    if (c.ctl[i].state.load(std::memory_order_relaxed) & FrameCtl::kInFlight)
      n += cancel_frame(c, i, by) ? 1 : 0;
  }
  return n;
}

bool ClientSource::doorbell(const Task& t, std::uint32_t bell, std::uint64_t* key,
                            std::uint64_t* value) {
  if (bell >= shm::kClientBells || ctl_of(t) == nullptr) return false;
  const ClientSlot& c = clients_.slot(t.client);
  *key = (std::uint64_t{c.index} << 32) | bell;
  // Acquire: pairs with the client's release fetch_add in Client::ring().
  *value = c.bells->count[bell].load(std::memory_order_acquire) & kBellMask;
  return true;
}

bool ClientSource::doorbell_value(std::uint64_t key, std::uint64_t* value) {
  const auto index = static_cast<std::uint32_t>(key >> 32);
  const auto bell = static_cast<std::uint32_t>(key);
  if (index >= clients_.high_water() || bell >= shm::kClientBells) return false;
  ClientSlot& c = clients_.slot(index);
  if (c.state.load(std::memory_order_acquire) != SlotState::kActive || c.bells == nullptr)
    return false;
  *value = c.bells->count[bell].load(std::memory_order_acquire) & kBellMask;
  return true;
}

bool ClientSource::ring_bells(ClientSlot& c, bool only_look) {
  bool moved = false;
  for (std::uint32_t b = 0; b < shm::kClientBells; ++b) {
    // Acquire: pairs with the client's release fetch_add in Client::ring().
    const std::uint64_t now = c.bells->count[b].load(std::memory_order_acquire) & kBellMask;
    std::uint64_t seen = c.bells_seen[b].load(std::memory_order_relaxed);
    if (now == seen) continue;
    moved = true;
    if (only_look) break;
    // One notifier per value: whoever moves bells_seen notifies (a later ring is seen by
    // a later look, since the client rings its pool bell after each bump).
    if (!c.bells_seen[b].compare_exchange_strong(seen, now, std::memory_order_relaxed)) continue;
    sched_->events().notify_key((std::uint64_t{c.index} << 32) | b, static_cast<std::int64_t>(now));
  }
  return moved;
}

bool ClientSource::park_begins(const Task& t) {
  // Each client's parked continuations are bounded (--max-timers): the timer heap, and
  // the sweep when a client leaves, are bounded by the clients times that.
  ClientSlot& c = clients_.slot(t.client);
  if (c.max_timers != 0 && c.timers.load(std::memory_order_relaxed) >= c.max_timers) return false;
  // Relaxed: changed under the scheduler's timer lock only; read above as a bound.
  c.timers.fetch_add(1, std::memory_order_relaxed);
  return true;
}

int ClientSource::client_fd(const Task& t, std::uint32_t id) {
  ClientSlot& c = clients_.slot(t.client);
  // A client on its way out has no descriptors (its continuations are being cut off).
  if (c.state.load(std::memory_order_acquire) != SlotState::kActive) return -1;
  return c.fds.get(id);
}

void ClientSource::park_ends(const Task& t) {
  clients_.slot(t.client).timers.fetch_sub(1, std::memory_order_relaxed);
  if (FrameCtl* f = ctl_of(t)) f->wait.store(0, std::memory_order_relaxed);  // under its lock
}

bool ClientSource::poll(Worker& w) {
  if (sched_->draining()) return false;
  const std::uint32_t hw = clients_.high_water();
  if (hw == 0) return false;
  const std::uint32_t start = per(w).client_cursor++ % hw;
  // Doorbells matter only while something waits in the event queue (a relaxed hint: a
  // ring before a wait began is seen by the wait's own look, StepContext::park_doorbell()).
  const bool waiting = sched_->events().waiting();
  for (std::uint32_t i = 0; i < hw; ++i) {
    ClientSlot& c = clients_.slot((start + i) % hw);
    // S2: pairs with S1 in ClientTable::activate().
    if (c.state.load(std::memory_order_acquire) != SlotState::kActive || !c.has_segment ||
        c.pool != pool_ || c.faulted.load(std::memory_order_relaxed)) {
      continue;
    }
    if (waiting) ring_bells(c, false);
    // A peek without the lock: is the slot at the consumer's position published?
    const std::uint64_t head = c.peek_head.load(std::memory_order_relaxed);
    shm::RingView view(c.base + c.geom.submit_ring_off, c.geom.ring_capacity);
    const std::uint64_t word = view.slot(head).load(std::memory_order_relaxed);
    if (static_cast<std::uint32_t>(word >> 32) != static_cast<std::uint32_t>(head + 1)) continue;
    if (c.draining.exchange(true, std::memory_order_acquire)) continue;  // another worker drains it
    if (before_accept_hook_) before_accept_hook_(c);
    const bool got = sched_->paused() ? refuse_from(w, c) : accept_from(w, c);
    c.draining.store(false, std::memory_order_release);
    if (got) return true;
  }
  return false;
}

bool ClientSource::accept_from(Worker& w, ClientSlot& c) {
  // The client may have at most max_inflight continuations in the daemon; the rest wait
  // in its ring (backpressure it sees as a full ring).
  if (held_back(c)) {
    // Cancels at the head of the ring need no room: a client at its limit (all of its
    // continuations parked, say) can still cancel them.
    if (take_cancels(c)) return true;
    c.backpressure.fetch_add(1, std::memory_order_relaxed);
    w.stats.backpressure.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  const std::uint32_t refs = c.refs.load(std::memory_order_relaxed);
  const std::uint32_t inflight = refs > 0 ? refs - 1 : 0;
  std::uint32_t budget = std::min(sched_->config().accept_batch, c.max_inflight - inflight);
  std::uint32_t offs[256];
  budget = std::min<std::uint32_t>(budget, 256);
  // One reference per continuation it may accept, taken before any can complete, and
  // only from a slot that still has one: a client that hung up after poll_clients() saw
  // it active may have dropped its last reference already (its slot is a zombie).
  if (!clients_.try_acquire(c, budget)) return false;
  const std::size_t n = c.submit.pop_batch(std::span<std::uint32_t>(offs, budget));
  c.peek_head.store(c.submit.head(), std::memory_order_relaxed);
  if (n < budget) release_client(c, budget - static_cast<std::uint32_t>(n));
  if (n == 0) return false;
  per(w).accepted_batch = 0;
  // The frames were last written by the client's core: fetch their lines together
  // rather than one miss at a time (out-of-range offsets are harmless to prefetch).
  for (std::size_t i = 0; i < n; ++i) __builtin_prefetch(c.base + (offs[i] % c.geom.size));
  for (std::size_t i = 0; i < n; ++i) accept_one(w, c, offs[i]);
  // Relaxed: statistics, counted once per batch.
  c.accepted.fetch_add(per(w).accepted_batch, std::memory_order_relaxed);
  w.stats.accepted.store(w.stats.accepted.load(std::memory_order_relaxed) + per(w).accepted_batch,
                         std::memory_order_relaxed);
  // The client may be waiting for room in its ring.
  shm::event_notify(c.doorbells->space);
  return true;
}

bool ClientSource::is_cancel(const ClientSlot& c, std::uint32_t entry) noexcept {
  return (entry & shm::kSubmitCancel) && (entry & ~shm::kSubmitCancel) < c.geom.frame_count;
}

bool ClientSource::take_cancels(ClientSlot& c) {
  bool took = false;
  // Bounded by the accept batch, whatever the client wrote; under c.draining.
  for (std::uint32_t i = 0; i < sched_->config().accept_batch; ++i) {
    const std::uint64_t head = c.submit.head();
    shm::RingView view(c.base + c.geom.submit_ring_off, c.geom.ring_capacity);
    const std::uint64_t word = view.slot(head).load(std::memory_order_relaxed);
    if (static_cast<std::uint32_t>(word >> 32) != static_cast<std::uint32_t>(head + 1) ||
        !(static_cast<std::uint32_t>(word) & shm::kSubmitCancel)) {
      break;
    }
    std::uint32_t entry = 0;
    if (!c.submit.try_pop(&entry)) break;  // its acquire pairs with the client's push
    c.peek_head.store(c.submit.head(), std::memory_order_relaxed);
    // The client may have rewritten the slot since the peek: only a cancel is taken here.
    if (is_cancel(c, entry)) {
      cancel_frame(c, entry & ~shm::kSubmitCancel, FrameCtl::kCancelByClient);
    } else {
      c.rejected.fetch_add(1, std::memory_order_relaxed);
      c.dropped.fetch_add(1, std::memory_order_relaxed);
    }
    took = true;
  }
  if (took) shm::event_notify(c.doorbells->space);
  return took;
}

bool ClientSource::refuse_from(Worker& w, ClientSlot& c) {
  // Each refusal is a completion in the client's ring: take no more than accept_from()
  // would (the completion ring has room for what the client may have in flight).
  if (held_back(c)) return false;
  const std::uint32_t refs = c.refs.load(std::memory_order_relaxed);
  const std::uint32_t inflight = refs > 0 ? refs - 1 : 0;
  std::uint32_t offs[256];
  const std::uint32_t budget =
      std::min<std::uint32_t>({sched_->config().accept_batch, c.max_inflight - inflight, 256});
  // One reference each, as if accepted, and only from a live slot (see accept_from()):
  // complete_frame() takes them over, an offset that is no frame drops its own.
  if (!clients_.try_acquire(c, budget)) return false;
  const std::size_t n = c.submit.pop_batch(std::span<std::uint32_t>(offs, budget));
  c.peek_head.store(c.submit.head(), std::memory_order_relaxed);
  if (n < budget) release_client(c, budget - static_cast<std::uint32_t>(n));
  if (n == 0) return false;
  for (std::size_t i = 0; i < n; ++i) {
    if (is_cancel(c, offs[i])) {  // what it cancels was accepted before the pause
      cancel_frame(c, offs[i] & ~shm::kSubmitCancel, FrameCtl::kCancelByClient);
      release_client(c, 1);
      continue;
    }
    if (!c.geom.frame_offset_valid(offs[i])) {
      c.rejected.fetch_add(1, std::memory_order_relaxed);
      c.dropped.fetch_add(1, std::memory_order_relaxed);
      w.stats.rejected.fetch_add(1, std::memory_order_relaxed);
      w.stats.failed.fetch_add(1, std::memory_order_relaxed);  // dropped: ends here
      release_client(c, 1);
      continue;
    }
    c.refused.fetch_add(1, std::memory_order_relaxed);
    w.stats.refused.fetch_add(1, std::memory_order_relaxed);
    complete_frame(w, c, offs[i], Status::kDraining, ErrorDetail::kNone, 0, 0, false);
  }
  shm::event_notify(c.doorbells->space);  // the client may be waiting for room in its ring
  return true;
}

void ClientSource::accept_one(Worker& w, ClientSlot& c, std::uint32_t off) {
  if (is_cancel(c, off)) {
    // A cancel: no continuation of its own. (One with an index out of range is counted
    // below as an offset that is no frame.)
    cancel_frame(c, off & ~shm::kSubmitCancel, FrameCtl::kCancelByClient);
    release_client(c, 1);
    return;
  }
  if (!c.geom.frame_offset_valid(off)) {
    // No frame to complete: count it and drop the reference taken for it.
    c.rejected.fetch_add(1, std::memory_order_relaxed);
    c.dropped.fetch_add(1, std::memory_order_relaxed);
    w.stats.rejected.fetch_add(1, std::memory_order_relaxed);
    w.stats.failed.fetch_add(1, std::memory_order_relaxed);  // dropped: ends here
    release_client(c, 1);
    return;
  }
  // Copy the descriptor out once; only the copy is used from here on.
  shm::Frame f;
  std::memcpy(&f, c.base + off, sizeof(f));
  auto reject = [&](Status st, ErrorDetail d) {
    // ClientCounters keeps unknown function ids apart from bad offsets, lengths and flags.
    (st == Status::kUnknownFunction ? c.rejected_function : c.rejected)
        .fetch_add(1, std::memory_order_relaxed);
    w.stats.rejected.fetch_add(1, std::memory_order_relaxed);
    complete_frame(w, c, off, st, d, 0, 0, false);  // takes over the reference
  };
  const FrameCheck checked = check_frame(f, c.geom, registry_);
  if (const auto* e = std::get_if<FrameError>(&checked)) return reject(e->status, e->detail);
  const ValidFrame& v = std::get<ValidFrame>(checked);
  // The deadline is copied once (the ring's acquire made the client's store visible);
  // the state's store also clears a cancel meant for an earlier submission.
  FrameCtl& fc = c.ctl[c.frame_index(off)];
  const std::int64_t deadline =
      c.controls[c.frame_index(off)].deadline_ns.load(std::memory_order_relaxed);
  fc.deadline_ns.store(deadline, std::memory_order_relaxed);
  fc.wait.store(0, std::memory_order_relaxed);
  if (deadline != 0 && monotonic_ns() >= deadline) {  // expired while queued
    fc.state.store(0, std::memory_order_relaxed);
    ++per(w).accepted_batch;  // accepted, and failed at once
    return complete_frame(w, c, off, Status::kDeadlineExceeded, ErrorDetail::kNone, 0, 0, false);
  }
  // Seen by C1 of a later cancel: one in this ring comes after this on this worker; the
  // operator's reads it as in flight from now on.
  fc.state.store(FrameCtl::kInFlight, std::memory_order_seq_cst);
  Task* t = sched_->new_task(w);
  t->fn = v.def->entry;
  t->w0 = v.arg;
  t->w1 = v.env;
  t->frame = off;
  t->client = static_cast<std::uint16_t>(c.index);
  t->flags = with_plugin_slot(v.task_flags, v.def->plugin);
  if (v.def->flags & IO_FN_OUTPUT) t->flags |= kTaskOutput;
  ++per(w).accepted_batch;
  sched_->accept(w, t);
}

bool ClientSource::submit_serial(ClientSlot& c, std::uint32_t job, std::uint32_t fn_id,
                                 std::uint64_t arg, Status* status, ErrorDetail* detail) {
  const FunctionDef* def = registry_.find(fn_id);
  if (def == nullptr) {
    *status = Status::kUnknownFunction;
    *detail = ErrorDetail::kUnknownFunction;
    return false;
  }
  if (arg > def->max_arg) {
    *status = Status::kInvalidArgument;
    *detail = ErrorDetail::kArgumentOutOfRange;
    return false;
  }
  if (sched_->draining()) {  // a pool being deleted or a daemon stopping
    *status = Status::kCancelled;
    *detail = ErrorDetail::kShutdown;
    return false;
  }
  if (sched_->paused()) {  // drained by the control plane
    *status = Status::kDraining;
    *detail = ErrorDetail::kNone;
    return false;
  }
  c.refs.fetch_add(1, std::memory_order_relaxed);
  c.accepted.fetch_add(1, std::memory_order_relaxed);
  Task* t = sched_->new_external_task();
  t->fn = def->entry;
  t->w0 = arg;
  t->w1 = 0;
  t->frame = job;
  t->client = static_cast<std::uint16_t>(c.index);
  t->flags = with_plugin_slot(kTaskSerial, def->plugin);
  if (def->flags & IO_FN_OUTPUT) t->flags |= kTaskOutput;
  sched_->accept_external(t);
  return true;
}

void ClientSource::complete(Worker& w, Task& t, const Outcome& o) {
  ClientSlot& c = clients_.slot(t.client);
  if (t.flags & kTaskSerial) {
    auto& by = w.stats.failed_by[static_cast<std::size_t>(o.status) % engine::kStatusSlots];
    if (o.status != Status::kOk)
      by.store(by.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    (o.status == Status::kOk ? c.completed : c.failed).fetch_add(1, std::memory_order_relaxed);
    auto& counter = o.status == Status::kOk ? w.stats.completed : w.stats.failed;
    counter.store(counter.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    SerialJob* job;
    {
      std::lock_guard lock(c.jobs_mu);
      job = c.jobs[t.frame].get();
    }
    job->status = o.status;
    job->detail = o.detail;
    job->value = o.value;
    if (!o.message.empty()) job->message = std::string(o.message);
    if (o.result_is_env) job->data = job->env.substr(0, o.result_len);
    if (serial_sink_) serial_sink_(c, t.frame);
    release_client(c, 1);
  } else {
    // Before the completion is visible: a cancel from now on finds it done.
    if (FrameCtl* f = ctl_of(t)) f->state.store(0, std::memory_order_relaxed);
    const bool inline_result = o.result_is_env && (t.flags & kTaskEnvInline);
    if (!o.message.empty()) write_message(c, t.frame, o.message);
    complete_frame(w, c, t.frame, o.status, o.detail, o.value, o.result_len,
                   inline_result);  // takes the reference
  }
}

Outcome ClientSource::cut_off_reason(const Task& t) {
  const ClientSlot& c = clients_.slot(t.client);
  // The daemon stopping closes every connection after its drain timeout: that is a
  // shutdown, not a client that went away.
  if (sched_->shutting_down()) return {Status::kCancelled, ErrorDetail::kShutdown};
  if (c.state.load(std::memory_order_relaxed) == SlotState::kClosing)
    return {Status::kCancelled, ErrorDetail::kClientGone};
  if (t.flags & kTaskSerial) {
    std::lock_guard lock(const_cast<ClientSlot&>(c).jobs_mu);
    const SerialJob& j = *c.jobs[t.frame];
    if (j.cancel & FrameCtl::kCancelByOperator)
      return {Status::kCancelled, ErrorDetail::kCancelledByOperator};
    if (j.cancel & FrameCtl::kCancelByClient)
      return {Status::kCancelled, ErrorDetail::kCancelledByClient};
    if (j.deadline_ns != 0 && monotonic_ns() >= j.deadline_ns)
      return {Status::kDeadlineExceeded, ErrorDetail::kNone};
  }
  if (const FrameCtl* f = ctl_of(t)) {
    const std::uint32_t st = f->state.load(std::memory_order_relaxed);
    if (st & FrameCtl::kCancelByOperator)
      return {Status::kCancelled, ErrorDetail::kCancelledByOperator};
    if (st & FrameCtl::kCancelByClient)
      return {Status::kCancelled, ErrorDetail::kCancelledByClient};
    const std::int64_t d = f->deadline_ns.load(std::memory_order_relaxed);
    if (d != 0 && monotonic_ns() >= d) return {Status::kDeadlineExceeded, ErrorDetail::kNone};
  }
  if (sched_->draining())  // a pool being deleted
    return {Status::kCancelled, ErrorDetail::kShutdown};
  if (sched_->paused()) return {Status::kDraining, ErrorDetail::kNone};
  return {Status::kCancelled, ErrorDetail::kShutdown};
}

void ClientSource::release_client(ClientSlot& c, std::uint32_t n) {
  clients_.release(c, n);
  if (sched_->draining() || sched_->paused()) sched_->notify_drain();
}

void ClientSource::write_message(ClientSlot& c, std::uint32_t off, std::string_view msg) {
  char* slot = c.message(off);
  const std::size_t n = std::min<std::size_t>(msg.size(), shm::kMessageBytes - 1);
  std::memcpy(slot, msg.data(), n);
  slot[n] = '\0';
}

void ClientSource::complete_frame(Worker& w, ClientSlot& c, std::uint32_t off, Status st,
                                  ErrorDetail d, std::uint64_t value, std::uint32_t result_len,
                                  bool result_inline) {
  shm::Frame* f = c.frame(off);
  f->result = value;
  f->result_len = result_len;
  f->detail = static_cast<std::uint32_t>(d);
  if (result_inline) f->flags = static_cast<std::uint16_t>(f->flags | shm::kFrameResultInline);
  f->status = static_cast<std::uint16_t>(st);
  // Completions are pushed in batches per client (one ring reservation, one doorbell,
  // one reference drop): see flush().
  if (per(w).out_client != &c || per(w).out_n == PerWorker::kOutMax) flush(w);
  per(w).out_client = &c;
  per(w).out_offs[per(w).out_n++] = off;
  if (st == Status::kOk) {
    ++per(w).out_ok;
  } else {
    ++per(w).out_failed;
    auto& by = w.stats.failed_by[static_cast<std::size_t>(st) % engine::kStatusSlots];
    by.store(by.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }
}

void ClientSource::flush(Worker& w) {
  PerWorker& p = per(w);
  if (p.out_n == 0) return;
  ClientSlot& c = *p.out_client;
  const std::span<const std::uint32_t> offs(p.out_offs, p.out_n);
  // Relaxed: statistics. Counted before the ring's release stores publish the frames, so
  // whoever has seen a completion also sees it counted (tests compare the counts then).
  if (p.out_ok) c.completed.fetch_add(p.out_ok, std::memory_order_relaxed);
  if (p.out_failed) c.failed.fetch_add(p.out_failed, std::memory_order_relaxed);
  w.stats.completed.store(w.stats.completed.load(std::memory_order_relaxed) + p.out_ok,
                          std::memory_order_relaxed);
  w.stats.failed.store(w.stats.failed.load(std::memory_order_relaxed) + p.out_failed,
                       std::memory_order_relaxed);
  std::size_t pushed = 0;
  shm::PushFailure why = shm::PushFailure::kNone;
  // Bounded whatever the client wrote: each round pushes at least one or stops.
  while (pushed < offs.size() && !c.faulted.load(std::memory_order_relaxed)) {
    // The ring's release stores publish the frames' results (P1 in ring.h).
    const std::size_t n = c.completion.try_push_batch(offs.subspan(pushed), &why);
    if (n == 0) break;
    pushed += n;
  }
  if (pushed < offs.size() && !c.faulted.load(std::memory_order_relaxed)) {
    // An honest client cannot fill its completion ring (it has no more frames than
    // slots), nor write a tag ahead of the daemon's own position: these are lost.
    fault_client(w, c,
                 why == shm::PushFailure::kCorrupt
                     ? "its completion ring is forged (a slot's tag is ahead of the daemon's "
                       "position)"
                     : "its completion ring is full (frames submitted twice, or a forged ring)");
  }
  if (pushed != 0) shm::event_notify(c.doorbells->completion, INT32_MAX);
  const std::uint32_t n = p.out_n;
  p.out_n = p.out_ok = p.out_failed = 0;
  p.out_client = nullptr;
  release_client(c, n);
}

void ClientSource::fault_client(Worker& w, ClientSlot& c, std::string why) {
  if (c.faulted.exchange(true, std::memory_order_relaxed)) return;  // one report per client
  w.stats.faulted.fetch_add(1, std::memory_order_relaxed);
  spdlog::warn("client {} (pid {}): {}; its completions are dropped and it is disconnected", c.id,
               c.pid, why);
  c.fault_reason = std::move(why);  // read by the daemon after the sink's hand-over
  if (fault_sink_) fault_sink_(c);
}

bool ClientSource::held_back(const ClientSlot& c) const noexcept {
  // At most max_inflight continuations of one client in the daemon; the rest wait in its
  // ring (backpressure it sees as a full ring). refs counts the connection's too.
  const std::uint32_t refs = c.refs.load(std::memory_order_relaxed);
  return (refs > 0 ? refs - 1 : 0) >= c.max_inflight;
}

bool ClientSource::attach_client(ClientSlot& slot, std::string* error) {
  if (slot.bell_fd < 0) {
    slot.bell_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (slot.bell_fd < 0) {
      *error = std::string("eventfd: ") + std::strerror(errno);
      return false;
    }
  }
  return sched_->watch(slot.bell_fd, error);
}

void ClientSource::client_closing(ClientSlot& slot) {
  // The client may keep its copy of the bell open: without this its writes would still
  // wake the pool.
  if (slot.bell_fd >= 0) sched_->unwatch(slot.bell_fd);
  sched_->cancel_parked_if([&](const Task& t) { return t.client == slot.index; });
}

bool ClientSource::busy() const {
  const std::uint32_t hw = clients_.high_water();
  for (std::uint32_t i = 0; i < hw; ++i) {
    ClientSlot& c = clients_.slot(i);
    const SlotState st = c.state.load(std::memory_order_acquire);
    if (st == SlotState::kFree || st == SlotState::kZombie || c.pool != pool_) continue;
    // Active slots hold one reference for the connection; closing ones may hold none.
    const std::uint32_t base = st == SlotState::kActive ? 1 : 0;
    if (c.refs.load(std::memory_order_acquire) > base) return true;
  }
  return false;
}

}  // namespace insideout::daemon
