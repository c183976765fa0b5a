// The daemon's clients as a pool's source of work (engine/src/source.h): the trust
// boundary between the engine and the clients' segments. It drains the submit rings of
// the pool's clients fairly, copies and validates each descriptor once (frame_check.h),
// completes frames into the completion rings in batches, serves the serialized path,
// and fails a client whose rings make no sense (the fault sink disconnects it).
//
// Memory ordering: see ring.h for the rings; S2 (a slot's state, acquire) pairs with S1
// in ClientTable::activate(); the references a continuation holds on its slot are taken
// with ClientTable::try_acquire() (never revived from zero).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "clients.h"
#include "engine.h"
#include "source.h"

namespace insideout::daemon {

using engine::FunctionRegistry;
using engine::Outcome;
using engine::Scheduler;
using engine::Task;
using engine::Worker;

class ClientSource final : public engine::WorkSource {
 public:
  ClientSource(ClientTable& clients, const FunctionRegistry& registry, std::uint32_t pool);

  // engine::WorkSource
  bool poll(Worker& w) override;
  bool has_work() override;
  std::span<std::byte> env(const Task& t) override;
  bool gone(const Task& t) override;
  Outcome cut_off_reason(const Task& t) override;
  void complete(Worker& w, Task& t, const Outcome& o) override;
  void flush(Worker& w) override;
  bool park_begins(const Task& t) override;
  void park_ends(const Task& t) override;
  bool busy() const override;
  std::int64_t deadline_ns(const Task& t) override;
  void parked(const Task& t, std::uint64_t id) override;
  bool doorbell(const Task& t, std::uint32_t bell, std::uint64_t* key,
                std::uint64_t* value) override;
  bool doorbell_value(std::uint64_t key, std::uint64_t* value) override;

  // Cancels the continuation of frame `index` of `slot` (a client of this pool) if it is
  // in flight: parked, it resumes at once; queued, it is cut off when a worker takes it;
  // running, at its next step boundary. `by` is FrameCtl::kCancelByClient or
  // kCancelByOperator. True when it was in flight. Any thread.
  bool cancel_frame(ClientSlot& slot, std::uint32_t index, std::uint32_t by);
  // Cancels every continuation of `slot` in flight; returns how many. Any thread.
  std::uint32_t cancel_all(ClientSlot& slot, std::uint32_t by);
  // The serialized continuations in flight with `tag` (the connection's Cancel): as
  // cancel_frame(), by the job's own cancel bits and wait. How many were in flight.
  std::uint32_t cancel_serial(ClientSlot& slot, std::uint64_t tag, std::uint32_t by);
  int client_fd(const Task& t, std::uint32_t id) override;

  // A client of this pool registers: its bell eventfd is made (slot.bell_fd, closed when
  // the slot is reclaimed) and every worker's epoll set watches it. False (and *error)
  // when the kernel refuses a descriptor.
  bool attach_client(ClientSlot& slot, std::string* error);
  // The client hung up: its bell is no longer watched, its parked continuations (in any
  // pool: `pools` are all of them) resume at once and are cancelled.
  void client_closing(ClientSlot& slot);

  // The serialized path: a job in `slot.jobs[job]` runs `fn_id` with `arg`. Returns
  // false (and completes nothing) when fn_id is unknown or the argument out of range, or
  // the pool refuses work; the caller answers with *status and *detail.
  bool submit_serial(ClientSlot& slot, std::uint32_t job, std::uint32_t fn_id, std::uint64_t arg,
                     shm::Status* status, shm::ErrorDetail* detail);
  // Called on a worker when a serialized job has completed.
  void set_serial_sink(std::function<void(ClientSlot&, std::uint32_t job)> sink) {
    serial_sink_ = std::move(sink);
  }
  // Called on a worker (once per client) when a client's rings turned out unusable: the
  // daemon closes its connection. slot.fault_reason says why.
  void set_fault_sink(std::function<void(ClientSlot&)> sink) { fault_sink_ = std::move(sink); }
  // Tests only: runs in poll() between a client's state check and accepting from it, so
  // that a test can close the client in that window.
  void set_before_accept_hook(std::function<void(ClientSlot&)> hook) {
    before_accept_hook_ = std::move(hook);
  }

  // The source of a pool the daemon made (every pool's is a ClientSource).
  static ClientSource& of(Scheduler& s) { return static_cast<ClientSource&>(s.source()); }

 private:
  // Per worker: completed frames of one client not yet pushed to its completion ring,
  // and where its round of the clients starts. Each written by its worker only.
  struct alignas(shm::kCacheLine) PerWorker {
    static constexpr std::uint32_t kOutMax = 64;
    ClientSlot* out_client = nullptr;
    std::uint32_t out_n = 0, out_ok = 0, out_failed = 0;
    std::uint32_t out_offs[kOutMax];
    std::uint32_t client_cursor = 0;
    std::uint32_t accepted_batch = 0;
  };

  bool accept_from(Worker& w, ClientSlot& c);
  // A submit ring entry that cancels one of `c`'s frames (shm::kSubmitCancel).
  static bool is_cancel(const ClientSlot& c, std::uint32_t entry) noexcept;
  // While `c` is held back: takes the cancel entries at the head of its ring.
  bool take_cancels(ClientSlot& c);
  // While paused: completes what `c` submitted with kDraining, as accept_from() would
  // accept it (same budget, same in-flight bound). True when it took anything.
  bool refuse_from(Worker& w, ClientSlot& c);
  void accept_one(Worker& w, ClientSlot& c, std::uint32_t off);
  void complete_frame(Worker& w, ClientSlot& c, std::uint32_t off, shm::Status st,
                      shm::ErrorDetail d, std::uint64_t value, std::uint32_t result_len,
                      bool result_inline);
  void write_message(ClientSlot& c, std::uint32_t off, std::string_view msg);
  void fault_client(Worker& w, ClientSlot& c, std::string why);
  bool held_back(const ClientSlot& c) const noexcept;
  void release_client(ClientSlot& c, std::uint32_t n);
  PerWorker& per(const Worker& w) noexcept;
  // The control state of root task `t`'s frame; null for children and serialized jobs.
  FrameCtl* ctl_of(const Task& t) noexcept;
  // Notifies the event queue of the doorbells `c` rang since the last look; with
  // `only_look`, says whether any moved and notifies nothing.
  bool ring_bells(ClientSlot& c, bool only_look);

  ClientTable& clients_;
  const FunctionRegistry& registry_;
  const std::uint32_t pool_;
  std::unique_ptr<PerWorker[]> per_worker_;
  std::function<void(ClientSlot&, std::uint32_t)> serial_sink_;
  std::function<void(ClientSlot&)> fault_sink_;
  std::function<void(ClientSlot&)> before_accept_hook_;
};

}  // namespace insideout::daemon
