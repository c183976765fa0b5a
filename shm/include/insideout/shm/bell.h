// The pool bell (PoolBell in layout.h): how a client wakes a sleeping pool.
//
// BellPage is the page itself: the daemon creates one per pool (a memfd, sealed so that
// no writable mapping of it can ever be made again once the daemon has its own) and
// passes it to each client of the pool, which maps it read-only. SubmitBell is the
// client's side: after pushing work it reads the pool's sleepers count and, only when a
// worker sleeps, writes the eventfd the daemon gave this client. A client can ring its
// own eventfd at will (costing the daemon a wake-up, as submitting would) but can touch
// neither the page nor another client's descriptor.
#pragma once

#include <boost/interprocess/mapped_region.hpp>
#include <string>

#include "insideout/shm/layout.h"

namespace insideout::shm {

class BellPage {
 public:
  BellPage() = default;
  BellPage(BellPage&& other) noexcept;
  BellPage& operator=(BellPage&& other) noexcept;
  BellPage(const BellPage&) = delete;
  BellPage& operator=(const BellPage&) = delete;
  ~BellPage();

  // Daemon side: a sealed memfd (F_SEAL_FUTURE_WRITE once mapped) of kPoolBellBytes.
  static BellPage create(std::uint32_t pool, std::string* error);
  // Client side: maps `fd` read-only (taking ownership of it) and closes it.
  static BellPage attach(int fd, std::string* error);

  bool valid() const noexcept { return region_.get_address() != nullptr; }
  PoolBell* page() const noexcept { return static_cast<PoolBell*>(region_.get_address()); }
  int fd() const noexcept { return fd_; }  // the daemon's, to pass to clients; -1 on a client

 private:
  boost::interprocess::mapped_region region_;
  int fd_ = -1;
};

class SubmitBell {
 public:
  SubmitBell() = default;
  SubmitBell(const PoolBell* page, int fd) noexcept : page_(page), fd_(fd) {}

  // Call after publishing work in the submit ring. Returns true when it made the
  // syscall (a worker of the pool had announced that it sleeps).
  bool ring() const noexcept;

 private:
  const PoolBell* page_ = nullptr;
  int fd_ = -1;
};

}  // namespace insideout::shm
