#include "insideout/shm/segment.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/interprocess/detail/os_file_functions.hpp>
#include <boost/interprocess/exceptions.hpp>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include "memfd_mappable.h"

namespace insideout::shm {
namespace {

using detail::errno_text;
using detail::MemfdMappable;

bool map(int fd, std::size_t size, boost::interprocess::mapped_region* out, std::string* error) {
  try {
    *out = boost::interprocess::mapped_region(MemfdMappable(fd), boost::interprocess::read_write, 0,
                                              size);
    return true;
  } catch (const boost::interprocess::interprocess_exception& e) {
    *error = std::string("mapping the segment: ") + e.what();
    return false;
  }
}

}  // namespace

Segment::Segment(Segment&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), geometry_(other.geometry_) {
  region_.swap(other.region_);
}

Segment& Segment::operator=(Segment&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    region_ = boost::interprocess::mapped_region();
    region_.swap(other.region_);
    fd_ = std::exchange(other.fd_, -1);
    geometry_ = other.geometry_;
  }
  return *this;
}

Segment::~Segment() {
  if (fd_ >= 0) ::close(fd_);
}

void Segment::close_fd() noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

Segment Segment::create(const SegmentGeometry& g, std::uint32_t daemon_pid, std::uint32_t client_id,
                        std::uint64_t daemon_start_ns, std::uint64_t generation,
                        std::string* error) {
  Segment s;
  const std::string name = "insideout-client-" + std::to_string(client_id);
  const int fd = ::memfd_create(name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) {
    *error = errno_text("memfd_create");
    return s;
  }
  s.fd_ = fd;
  if (::ftruncate(fd, static_cast<off_t>(g.size)) != 0) {
    *error = errno_text("ftruncate");
    return Segment();
  }
  // The client must not shrink the file under the daemon's mapping.
  if (::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    *error = errno_text("sealing the segment");
    return Segment();
  }
  if (!map(fd, g.size, &s.region_, error)) return Segment();
  s.geometry_ = g;
  initialize_segment(s.base(), g, daemon_pid, client_id, daemon_start_ns, generation);
  return s;
}

Segment Segment::attach(int fd, std::string* error) {
  Segment s;
  s.fd_ = fd;
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    *error = errno_text("fstat on the segment");
    return Segment();
  }
  if (st.st_size < static_cast<off_t>(sizeof(SegmentHeader))) {
    *error = "the segment is smaller than its header";
    return Segment();
  }
  if (!map(fd, static_cast<std::size_t>(st.st_size), &s.region_, error)) return Segment();
  const auto* h = static_cast<const SegmentHeader*>(s.base());
  switch (check_segment(s.base(), s.size(), &s.geometry_)) {
    case CheckResult::kOk:
      return s;
    case CheckResult::kNotReady:
      *error = "the segment is not initialised yet";
      break;
    case CheckResult::kBadMagic:
      *error = "the segment has a bad magic number";
      break;
    case CheckResult::kVersionMismatch:
      *error = "segment layout version " + std::to_string(h->layout_version.load()) +
               ", this library speaks " + std::to_string(kLayoutVersion);
      break;
    case CheckResult::kGeometryMismatch:
      *error = "the segment header disagrees with its size";
      break;
  }
  return Segment();
}

}  // namespace insideout::shm
