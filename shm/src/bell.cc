#include "insideout/shm/bell.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/interprocess/detail/os_file_functions.hpp>
#include <boost/interprocess/exceptions.hpp>
#include <cerrno>
#include <cstring>
#include <utility>

#include "insideout/shm/futex.h"
#include "memfd_mappable.h"

namespace insideout::shm {
namespace {

using detail::errno_text;
using detail::MemfdMappable;

}  // namespace

BellPage::BellPage(BellPage&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {
  region_.swap(other.region_);
}

BellPage& BellPage::operator=(BellPage&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    region_ = boost::interprocess::mapped_region();
    region_.swap(other.region_);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

BellPage::~BellPage() {
  if (fd_ >= 0) ::close(fd_);
}

BellPage BellPage::create(std::uint32_t pool, std::string* error) {
  BellPage b;
  const std::string name = "insideout-pool-" + std::to_string(pool);
  b.fd_ = ::memfd_create(name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (b.fd_ < 0) {
    *error = errno_text("memfd_create");
    return BellPage();
  }
  if (::ftruncate(b.fd_, kPoolBellBytes) != 0) {
    *error = errno_text("ftruncate");
    return BellPage();
  }
  try {
    b.region_ = boost::interprocess::mapped_region(
        MemfdMappable(b.fd_), boost::interprocess::read_write, 0, kPoolBellBytes);
  } catch (const boost::interprocess::interprocess_exception& e) {
    *error = std::string("mapping the pool bell: ") + e.what();
    return BellPage();
  }
  // From here on nobody, the daemon included, can make a writable mapping or write():
  // only the mapping above writes the page. Every client gets a read-only view.
  if (::fcntl(b.fd_, F_ADD_SEALS,
              F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL) != 0) {
    *error = errno_text("sealing the pool bell (F_SEAL_FUTURE_WRITE needs Linux 5.1)");
    return BellPage();
  }
  PoolBell* p = b.page();
  p->pool = pool;
  p->sleepers.store(0, std::memory_order_relaxed);  // published by the fd's passing
  return b;
}

BellPage BellPage::attach(int fd, std::string* error) {
  BellPage b;
  struct stat st {};
  if (::fstat(fd, &st) != 0 || st.st_size < static_cast<off_t>(sizeof(PoolBell))) {
    *error = "the pool bell is not a page";
    ::close(fd);
    return b;
  }
  try {
    b.region_ = boost::interprocess::mapped_region(
        MemfdMappable(fd), boost::interprocess::read_only, 0, sizeof(PoolBell));
  } catch (const boost::interprocess::interprocess_exception& e) {
    *error = std::string("mapping the pool bell: ") + e.what();
  }
  ::close(fd);  // the mapping keeps the page
  return b;
}

bool SubmitBell::ring() const noexcept {
  // N1 of the bell: pairs with the worker's announcement B1 in Scheduler::park(); orders
  // the ring slot's publication before this load.
  if (page_ == nullptr || load_after_fence(page_->sleepers) == 0) return false;
  const std::uint64_t one = 1;
  // EAGAIN (a count at its maximum) still leaves the eventfd readable: nothing is lost.
  (void)!::write(fd_, &one, sizeof(one));
  return true;
}

}  // namespace insideout::shm
