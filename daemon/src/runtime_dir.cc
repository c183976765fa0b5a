#include "runtime_dir.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

namespace insideout::daemon {
namespace {

std::string octal(mode_t m) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0%03o", static_cast<unsigned>(m & 07777));
  return buf;
}

const char* kind(mode_t m) {
  switch (m & S_IFMT) {
    case S_IFDIR:
      return "a directory";
    case S_IFLNK:
      return "a symbolic link";
    case S_IFREG:
      return "a regular file";
    case S_IFSOCK:
      return "a socket";
    case S_IFIFO:
      return "a FIFO";
    default:
      return "a device";
  }
}

absl::Status errno_error(const std::string& what, int e) {
  return absl::FailedPreconditionError(what + ": " + std::strerror(e));
}

}  // namespace

std::string describe_file(const struct stat& st) {
  return std::string(kind(st.st_mode)) + ", owner uid " + std::to_string(st.st_uid) + ", mode " +
         octal(st.st_mode);
}

absl::Status prepare_runtime_dir(const std::string& dir, mode_t socket_mode) {
  if (dir.empty()) return absl::InvalidArgumentError("empty runtime directory");
  const uid_t me = ::geteuid();
  // Parents are the administrator's (/run, $XDG_RUNTIME_DIR, /tmp); only the last
  // component is the daemon's own.
  const std::filesystem::path p(dir);
  if (p.has_parent_path()) {
    std::error_code ec;
    std::filesystem::create_directories(p.parent_path(), ec);
    if (ec) {
      return absl::FailedPreconditionError("creating the parent of runtime directory " + dir +
                                           ": " + ec.message());
    }
  }
  // A connection needs search permission on the directory; nobody else may write there.
  mode_t want = 0700;
  if (socket_mode & 0060) want |= 0010;
  if (socket_mode & 0006) want |= 0001;
  bool created = false;
  if (::mkdir(dir.c_str(), 0700) == 0) {
    created = true;
  } else if (errno != EEXIST) {
    return errno_error("creating runtime directory " + dir, errno);
  }
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0)
    return errno_error("inspecting runtime directory " + dir, errno);
  const std::string hint =
      "; refusing to use it (choose another with --runtime-dir or $INSIDEOUT_RUNTIME_DIR)";
  if (S_ISLNK(st.st_mode)) {
    return absl::FailedPreconditionError("runtime directory " + dir + " is a symbolic link (" +
                                         describe_file(st) + ")" + hint);
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError("runtime directory " + dir + " is not a directory (" +
                                         describe_file(st) + ")" + hint);
  }
  if (st.st_uid != me) {
    return absl::FailedPreconditionError("runtime directory " + dir + " belongs to another user (" +
                                         describe_file(st) + "; insideoutd runs as uid " +
                                         std::to_string(me) + ")" + hint);
  }
  if (st.st_mode & (S_IWGRP | S_IWOTH)) {
    return absl::FailedPreconditionError("runtime directory " + dir +
                                         " is writable by the group or others (" +
                                         describe_file(st) + ")" + hint);
  }
  // A directory made just now gets its mode whatever the umask; one that existed keeps
  // the mode its owner gave it (it passed the checks above).
  if (created && ::chmod(dir.c_str(), want) != 0)
    return errno_error("setting the mode of runtime directory " + dir, errno);
  return absl::OkStatus();
}

absl::StatusOr<int> open_private_file(const std::string& path, int flags, mode_t mode) {
  const int fd = ::open(path.c_str(), flags | O_CREAT | O_NOFOLLOW | O_CLOEXEC, mode);
  if (fd < 0) {
    const int e = errno;
    if (e == ELOOP) {
      return absl::FailedPreconditionError(path + " is a symbolic link; refusing to follow it");
    }
    return errno_error("opening " + path, e);
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    return errno_error("inspecting " + path, e);
  }
  std::string why;
  if (!S_ISREG(st.st_mode)) {
    why = "is not a regular file";
  } else if (st.st_uid != ::geteuid()) {
    why = "belongs to another user";
  } else if (st.st_nlink != 1) {
    why = "has " + std::to_string(st.st_nlink) + " links";
  }
  if (!why.empty()) {
    ::close(fd);
    return absl::FailedPreconditionError(path + " " + why + " (" + describe_file(st) +
                                         "); refusing to use it");
  }
  return fd;
}

absl::Status remove_stale(const std::string& path, mode_t type) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return errno_error("inspecting " + path, errno);
  }
  if ((st.st_mode & S_IFMT) != type || st.st_uid != ::geteuid()) {
    return absl::FailedPreconditionError(path + " is in the way (" + describe_file(st) +
                                         "): expected " + kind(type) + " of uid " +
                                         std::to_string(::geteuid()) + "; not removing it");
  }
  if (::unlink(path.c_str()) != 0 && errno != ENOENT)
    return errno_error("removing stale " + path, errno);
  return absl::OkStatus();
}

}  // namespace insideout::daemon
