// The kernel interface under the event queue (event_queue.h): one-shot readiness watches
// of descriptors, each with a token, and a descriptor that is readable while any fired.
// Called under EventQueue::mu_ only, so a backend needs no locking of its own.
#pragma once

#include <errno.h>

#include <cstdint>
#include <memory>

#include "event_queue.h"

namespace insideout::engine {

// A poll() report of a watch the kernel dropped without an event: arm it again.
inline constexpr std::uint32_t kCancelledWatch = 1u << 31;

class EventQueue::Backend {
 public:
  virtual ~Backend() = default;
  virtual EventBackendKind kind() const noexcept = 0;
  virtual int notify_fd() const noexcept = 0;
  // How workers watch notify_fd(): edge-triggered with EPOLLEXCLUSIVE (one sleeper wakes
  // per notification, nothing is read back), or level-triggered without (a nested epoll
  // set: the kernel refuses EPOLLEXCLUSIVE for it).
  virtual bool edge_triggered() const noexcept = 0;
  // Watches `fd` for `events` (EPOLLIN/EPOLLOUT/..., one shot) under `token`: 0 or -errno.
  virtual int arm(int fd, std::uint32_t events, std::uint64_t token) = 0;
  // Whether descriptors are registered once, edge-triggered for everything, for as long
  // as the queue knows them (register_fd() until forget()), with readiness recorded
  // while nobody waits: a wait then costs no system call. False: each wait arms a
  // one-shot watch (arm()) and ends it (disarm()).
  virtual bool persistent() const noexcept { return false; }
  // persistent() only: registers `fd` for `events` (EPOLLIN/EPOLLOUT; hang-ups and errors
  // always), edge-triggered, under `token`, or changes what an earlier call registered
  // (`again`): 0 or -errno.
  virtual int register_fd(int, std::uint32_t, std::uint64_t, bool) { return -ENOTSUP; }
  // Stops the watch `token` on `fd` (it may still be reported: the queue checks tokens).
  virtual void disarm(int fd, std::uint64_t token) = 0;
  // `fd` is about to be closed.
  virtual void forget(int fd) = 0;
  // Whether poll() may find something (false only when it surely finds nothing).
  virtual bool maybe_ready() const noexcept = 0;
  // What fired since the last call (non-blocking): tokens and their EPOLL* events.
  virtual int poll(std::uint64_t* tokens, std::uint32_t* revents, int n) = 0;
};

// kAuto: the default backend where the kernel allows it (docs/ARCHITECTURE.md).
std::unique_ptr<EventQueue::Backend> make_event_backend(EventBackendKind kind);

}  // namespace insideout::engine
