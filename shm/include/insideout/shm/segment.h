// A mapped client segment: an anonymous memfd (no name to guess or leak, gone when the
// daemon and the client have both closed it), mapped through Boost.Interprocess.
//
// The daemon creates the memfd, seals its size (a client that could shrink it would make
// the daemon fault on its next access), maps and initialises it, and passes the
// descriptor to the client over the registration socket; the client maps the same fd.
#pragma once

#include <boost/interprocess/mapped_region.hpp>
#include <cstddef>
#include <string>

#include "insideout/shm/layout.h"

namespace insideout::shm {

class Segment {
 public:
  Segment() = default;
  Segment(Segment&& other) noexcept;
  Segment& operator=(Segment&& other) noexcept;
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;
  ~Segment();

  // Daemon side: a sealed memfd of g.size bytes, mapped and initialised. On failure
  // returns an empty Segment and sets *error.
  static Segment create(const SegmentGeometry& g, std::uint32_t daemon_pid, std::uint32_t client_id,
                        std::uint64_t daemon_start_ns, std::uint64_t generation,
                        std::string* error);
  // Client side: maps `fd` (taking ownership) and checks magic, version and geometry.
  static Segment attach(int fd, std::string* error);

  bool valid() const noexcept { return region_.get_address() != nullptr; }
  void* base() const noexcept { return region_.get_address(); }
  std::size_t size() const noexcept { return region_.get_size(); }
  int fd() const noexcept { return fd_; }
  const SegmentGeometry& geometry() const noexcept { return geometry_; }
  SegmentHeader* header() const noexcept { return static_cast<SegmentHeader*>(base()); }
  Doorbells* doorbells() const noexcept {
    return reinterpret_cast<Doorbells*>(static_cast<char*>(base()) + geometry_.doorbells_off);
  }
  ClientCounters* counters() const noexcept {
    return reinterpret_cast<ClientCounters*>(static_cast<char*>(base()) + geometry_.counters_off);
  }
  void* at(std::uint32_t offset) const noexcept { return static_cast<char*>(base()) + offset; }

  // Closes the descriptor but keeps the mapping (the daemon, once the client has it).
  void close_fd() noexcept;

 private:
  boost::interprocess::mapped_region region_;
  int fd_ = -1;
  SegmentGeometry geometry_{};
};

}  // namespace insideout::shm
