#include "client_fds.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace insideout::daemon {
namespace {

// The socket every tombstone points at: its peer is closed, so reads see end of file and
// writes fail with EPIPE; non-blocking, never closed. -1 when the kernel refused one (then
// a tombstone is a plain close: see ClientFds::remove()).
int dead_socket() {
  static const int fd = [] {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) return -1;
    ::close(sv[1]);
    return sv[0];
  }();
  return fd;
}

void retire(int fd, std::vector<int>& dead) {
  const int d = dead_socket();
  if (d >= 0 && ::dup3(d, fd, O_CLOEXEC) == fd) {
    dead.push_back(fd);
  } else {
    ::close(fd);
  }
}

}  // namespace

std::string check_client_fd(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return std::string("fstat: ") + std::strerror(errno);
  if (S_ISSOCK(st.st_mode) || S_ISFIFO(st.st_mode) || S_ISREG(st.st_mode)) return "";
  // An eventfd is an anonymous inode: recognised by its link text.
  char link[64] = {};
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  const ssize_t n = ::readlink(path.c_str(), link, sizeof(link) - 1);
  if (n > 0 && std::string_view(link, static_cast<std::size_t>(n)) == "anon_inode:[eventfd]")
    return "";
  return "only sockets, pipes, FIFOs, regular files and eventfds may be passed";
}

void ClientFds::prepare() { (void)dead_socket(); }

bool ClientFds::add(int fd, std::uint32_t limit, std::uint32_t* id, std::string* error) {
  if (std::string why = check_client_fd(fd); !why.empty()) {
    ::close(fd);
    *error = why;
    return false;
  }
  // Workers never block on it: non-blocking, except a regular file (always ready; the
  // flag means nothing there). The flag belongs to the open file description, which the
  // client shares (docs/PROTOCOL.md says so).
  struct stat st {};
  if (::fstat(fd, &st) == 0 && !S_ISREG(st.st_mode)) {
    const int fl = ::fcntl(fd, F_GETFL);
    if (fl < 0 || ::fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0) {
      *error = std::string("fcntl(O_NONBLOCK): ") + std::strerror(errno);
      ::close(fd);
      return false;
    }
  }
  std::lock_guard lock(mu_);
  std::size_t live = 0;
  for (int f : live_) live += f >= 0 ? 1 : 0;
  if (live + dead_.size() >= limit) {
    ::close(fd);
    *error = "too many descriptors: " + std::to_string(live) + " passed and " +
             std::to_string(dead_.size()) +
             " closed ones held until this client's continuations in flight finish (max " +
             std::to_string(limit) + ", insideoutd --max-client-fds)";
    return false;
  }
  auto free = std::find(live_.begin(), live_.end(), -1);
  if (free == live_.end()) free = live_.insert(live_.end(), -1);
  *free = fd;
  *id = static_cast<std::uint32_t>(free - live_.begin()) + 1;
  return true;
}

bool ClientFds::remove(std::uint32_t id) {
  std::lock_guard lock(mu_);
  if (id == 0 || id > live_.size() || live_[id - 1] < 0) return false;
  retire(live_[id - 1], dead_);
  live_[id - 1] = -1;
  return true;
}

std::vector<int> ClientFds::live() const {
  std::lock_guard lock(mu_);
  std::vector<int> out;
  for (int f : live_) {
    if (f >= 0) out.push_back(f);
  }
  return out;
}

void ClientFds::remove_all() {
  std::lock_guard lock(mu_);
  for (int& f : live_) {
    if (f >= 0) retire(f, dead_);
    f = -1;
  }
}

void ClientFds::reap() {
  std::lock_guard lock(mu_);
  for (int f : dead_) ::close(f);
  dead_.clear();
}

void ClientFds::close_all() {
  std::lock_guard lock(mu_);
  for (int f : live_) {
    if (f >= 0) ::close(f);
  }
  live_.clear();
  for (int f : dead_) ::close(f);
  dead_.clear();
}

int ClientFds::get(std::uint32_t id) const {
  std::lock_guard lock(mu_);
  if (id == 0 || id > live_.size()) return -1;
  return live_[id - 1];
}

std::uint32_t ClientFds::size() const {
  std::lock_guard lock(mu_);
  std::uint32_t n = static_cast<std::uint32_t>(dead_.size());
  for (int f : live_) n += f >= 0 ? 1 : 0;
  return n;
}

}  // namespace insideout::daemon
