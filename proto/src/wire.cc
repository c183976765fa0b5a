#include "insideout/v1/wire.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

namespace insideout::v1 {

int send_message(int sock, const google::protobuf::MessageLite& msg, int fd) {
  std::string bytes;
  if (!msg.SerializeToString(&bytes)) return EINVAL;
  if (bytes.size() > kMaxPacket) return EMSGSIZE;
  iovec iov{bytes.data(), bytes.size()};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  if (fd >= 0) {
    mh.msg_control = control;
    mh.msg_controllen = sizeof(control);
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &fd, sizeof(int));
  }
  for (;;) {
    const ssize_t n = ::sendmsg(sock, &mh, MSG_NOSIGNAL);
    if (n >= 0) return 0;
    if (errno != EINTR) return errno;
  }
}

RecvStatus recv_message(int sock, google::protobuf::MessageLite* msg, int* fd, int* err) {
  if (fd) *fd = -1;
  std::vector<char> buf(kMaxPacket);
  iovec iov{buf.data(), buf.size()};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
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
  if (n == 0) return RecvStatus::kClosed;
  for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c != nullptr; c = CMSG_NXTHDR(&mh, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      int got;
      std::memcpy(&got, CMSG_DATA(c), sizeof(int));
      if (fd) {
        *fd = got;
      } else {
        ::close(got);
      }
    }
  }
  if ((mh.msg_flags & MSG_TRUNC) || !msg->ParseFromArray(buf.data(), static_cast<int>(n))) {
    return RecvStatus::kMalformed;
  }
  return RecvStatus::kOk;
}

}  // namespace insideout::v1
