// What the echo and HTTP example plugins share: a descriptor owned by a coroutine frame,
// a listening socket on 127.0.0.1, and the accept loop.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <insideout/sdk.hpp>
#include <string>

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

// The accept loop of a server on 127.0.0.1:ARG: one child continuation Conn(fd) per
// connection, which any worker may take; runs until cancelled or its client leaves
// (the listening socket goes with the frame). `Name` prefixes its errors ("echo.serve").
template <auto Conn, const char* Name>
insideout::Continuation serve_loopback(insideout::CoContext c) {
  using insideout::Error;
  thread_local std::string msg;  // fail() copies it at once
  if (c.arg() == 0 || c.arg() > 65535) {
    msg = std::string(Name) + ": ARG is the port (1..65535)";
    co_return c.fail(msg, Error::kInvalidArgument);
  }
  const int lfd = listen_loopback(static_cast<std::uint16_t>(c.arg()));
  if (lfd < 0) {
    msg = std::string(Name) + ": listening on 127.0.0.1:" + std::to_string(c.arg()) + ": " +
          std::strerror(-lfd);
    co_return c.fail(msg);
  }
  OwnedFd listener(c, lfd);
  for (;;) {
    const std::int64_t fd = co_await c.accept(listener.get());
    if (fd >= 0) {
      c.spawn<Conn>(static_cast<std::uint64_t>(fd));
      continue;
    }
    if (fd == -ECANCELED || c.cancelled()) co_return c.fail("cancelled", Error::kCancelled);
    // Out of descriptors, or a connection reset before it was taken: the server goes on
    // (after a breath, so that a full table does not spin a worker).
    if (fd == -EMFILE || fd == -ENFILE || fd == -ENOBUFS || fd == -ENOMEM) {
      co_await c.sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    if (fd == -ECONNABORTED || fd == -EINTR || fd == -EPROTO) continue;
    msg = std::string(Name) + ": accept: " + std::strerror(static_cast<int>(-fd));
    co_return c.fail(msg);
  }
}

}  // namespace insideout_examples
