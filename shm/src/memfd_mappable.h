// Internal to shm/: what segment.cc and bell.cc share to map a memfd.
#pragma once

#include <boost/interprocess/detail/os_file_functions.hpp>
#include <cerrno>
#include <cstring>
#include <string>

namespace insideout::shm::detail {

// Makes a memfd mappable by boost::interprocess::mapped_region (the interface its
// file_mapping and shared_memory_object offer).
class MemfdMappable {
 public:
  explicit MemfdMappable(int fd) : fd_(fd) {}
  boost::interprocess::mapping_handle_t get_mapping_handle() const {
    return boost::interprocess::ipcdetail::mapping_handle_from_file_handle(fd_);
  }

 private:
  int fd_;
};

inline std::string errno_text(const char* what) {
  return std::string(what) + ": " + std::strerror(errno);
}

}  // namespace insideout::shm::detail
