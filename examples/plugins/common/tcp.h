// What the echo and HTTP example plugins share: a descriptor owned by a coroutine frame,
// and a listening socket on 127.0.0.1.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <insideout/sdk.hpp>

namespace insideout_examples {

// A descriptor that belongs to a coroutine frame: closed through the context (which first
// fails any wait on it) when the frame goes, however the continuation ends (returned,
// failed, cancelled, cut off because its client left).
class OwnedFd {
 public:
  OwnedFd(insideout::CoContext c, int fd) noexcept : c_(c), fd_(fd) {}
  OwnedFd(const OwnedFd&) = delete;
  OwnedFd& operator=(const OwnedFd&) = delete;
  ~OwnedFd() {
    if (fd_ >= 0) c_.close(fd_);
  }
  int get() const noexcept { return fd_; }

 private:
  insideout::CoContext c_;
  int fd_;
};

// A non-blocking listening TCP socket on 127.0.0.1:port; -errno on failure.
inline int listen_loopback(std::uint16_t port) noexcept {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&a), sizeof(a)) != 0 || ::listen(fd, 512) != 0) {
    const int e = errno;
    ::close(fd);
    return -e;
  }
  return fd;
}

}  // namespace insideout_examples
