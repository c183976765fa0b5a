#include "insideout/v1/wire.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

namespace insideout::v1 {

int send_message(int sock, const google::protobuf::MessageLite& msg, int fd) {
  if (fd < 0) return send_message(sock, msg, std::span<const int>());
  return send_message(sock, msg, std::span<const int>(&fd, 1));
}

int send_message(int sock, const google::protobuf::MessageLite& msg, std::span<const int> fds) {
  if (fds.size() > kMaxFds) return EINVAL;
  std::string bytes;
  if (!msg.SerializeToString(&bytes)) return EINVAL;
  if (bytes.size() > kMaxPacket) return EMSGSIZE;
  iovec iov{bytes.data(), bytes.size()};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)] = {};
  if (!fds.empty()) {
    mh.msg_control = control;
    mh.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  for (;;) {
    const ssize_t n = ::sendmsg(sock, &mh, MSG_NOSIGNAL);
    if (n >= 0) return 0;
    if (errno != EINTR) return errno;
  }
}

RecvStatus recv_message(int sock, google::protobuf::MessageLite* msg, int* fd, int* err) {
  if (fd) *fd = -1;
  std::vector<int> fds;
  const RecvStatus st = recv_message_fds(sock, msg, &fds, err);
  for (std::size_t i = 0; i < fds.size(); ++i) {
    if (i == 0 && fd != nullptr) {
      *fd = fds[0];
    } else {
      ::close(fds[i]);
    }
  }
  return st;
}

RecvStatus recv_message_fds(int sock, google::protobuf::MessageLite* msg, std::vector<int>* fds,
                            int* err) {
  fds->clear();
  std::vector<char> buf(kMaxPacket);
  iovec iov{buf.data(), buf.size()};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)] = {};
  mh.msg_control = control;
  mh.msg_controllen = sizeof(control);
  ssize_t n;
  do {
    n = ::recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (err) *err = errno;
    return errno == EAGAIN || errno == EWOULDBLOCK ? RecvStatus::kWouldBlock : RecvStatus::kError;
  }
  // Descriptors first, so that none leaks whatever the packet turns out to be. (More than
  // kMaxFds were cut off by the kernel and closed: MSG_CTRUNC.)
  for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c != nullptr; c = CMSG_NXTHDR(&mh, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int got;
      std::memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      fds->push_back(got);
    }
  }
  if (n == 0) return RecvStatus::kClosed;
  if ((mh.msg_flags & MSG_TRUNC) || !msg->ParseFromArray(buf.data(), static_cast<int>(n))) {
    return RecvStatus::kMalformed;
  }
  return RecvStatus::kOk;
}

}  // namespace insideout::v1
