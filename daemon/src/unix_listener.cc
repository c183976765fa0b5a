#include "unix_listener.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "runtime_dir.h"

namespace insideout::daemon {

absl::StatusOr<int> listen_unix(const std::string& path, int type, mode_t mode, int backlog) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError("socket path too long: " + path);
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  // A socket left by a daemon that died is ours to replace; anything else is not.
  if (auto st = remove_stale(path, S_IFSOCK); !st.ok()) return st;
  const int fd = ::socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return absl::InternalError(std::string("socket: ") + std::strerror(errno));
  const mode_t old = ::umask(0777 & ~mode);
  const int rc = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  ::umask(old);
  if (rc != 0 || ::listen(fd, backlog) != 0) {
    const int e = errno;
    ::close(fd);
    return absl::InternalError((rc != 0 ? "binding " : "listen on ") + path + ": " +
                               std::strerror(e));
  }
  return fd;
}

}  // namespace insideout::daemon
