// The registration protocol spoken by hand, as a caller that does not link libinsideout
// would: SOCK_SEQPACKET to daemon.sock, one protobuf message per packet (wire.h).
#pragma once

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>
#include <string>

#include "insideout/shm/layout.h"
#include "insideout/v1/continuation.pb.h"
#include "insideout/v1/wire.h"

namespace insideout::testing {

class RawConnection {
 public:
  // Connects to `socket_path`; valid() says whether it did (error() says why not).
  explicit RawConnection(const std::string& socket_path) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (socket_path.size() >= sizeof(addr.sun_path)) {
      error_ = "path too long";
      return;
    }
    std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size() + 1);
    fd_ = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd_ >= 0 && ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      error_ = std::strerror(errno);
      ::close(fd_);
      fd_ = -1;
    }
  }
  ~RawConnection() {
    if (fd_ >= 0) ::close(fd_);
  }
  RawConnection(const RawConnection&) = delete;
  RawConnection& operator=(const RawConnection&) = delete;

  bool valid() const { return fd_ >= 0; }
  const std::string& error() const { return error_; }
  int fd() const { return fd_; }

  // 0 or an errno value.
  int send(const v1::ClientMessage& m) { return v1::send_message(fd_, m); }

  // One message within `timeout`: kOk (in *m), kClosed, kError, kMalformed; nullopt when
  // nothing came in time. A passed descriptor is closed.
  std::optional<v1::RecvStatus> recv(v1::DaemonMessage* m, std::chrono::milliseconds timeout) {
    pollfd p{fd_, POLLIN, 0};
    const int n = ::poll(&p, 1, static_cast<int>(timeout.count()));
    if (n <= 0) return std::nullopt;
    int fd = -1;
    const v1::RecvStatus st = v1::recv_message(fd_, m, &fd);
    if (fd >= 0) ::close(fd);
    return st;
  }

 private:
  int fd_ = -1;
  std::string error_;
};

inline v1::ClientMessage hello_message(std::uint32_t protocol = shm::kProtocolVersion,
                                       std::uint32_t layout = shm::kLayoutVersion,
                                       bool want_segment = false) {
  v1::ClientMessage m;
  auto* h = m.mutable_hello();
  h->set_protocol_version(protocol);
  h->set_layout_version(layout);
  h->set_want_segment(want_segment);
  h->set_client_name("raw");
  return m;
}

inline v1::ClientMessage submit_message(const std::string& function, const std::string& env,
                                        std::uint64_t arg, std::uint64_t tag) {
  v1::ClientMessage m;
  auto* c = m.mutable_submit();
  c->set_function(function);
  c->set_env(env);
  c->set_arg(arg);
  c->set_tag(tag);
  return m;
}

}  // namespace insideout::testing
