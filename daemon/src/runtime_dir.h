// The runtime directory and the files the daemon makes in it (the lock, the sockets,
// the counters area), created so that no other user can swap one of them for a symbolic
// link or a file of their own: the directory is made with mkdir() and then inspected
// with lstat() (a real directory, owned by the daemon's effective uid, writable by no
// one else), each file is opened with O_NOFOLLOW and inspected with fstat(), and a
// stale entry is removed only when it is of the expected type and ours.
//
// The /tmp/insideout-<uid> fallback is predictable, so another user may create it first:
// then the daemon refuses to start (and says how to choose another directory) rather
// than serving from a directory someone else controls.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace insideout::daemon {

// Creates `dir` (its parents as needed) with mode 0700, plus search permission for the
// group and others where `socket_mode` lets them connect to a socket in it, and checks
// it: FAILED_PRECONDITION naming the path, its owner and its mode when it is a symbolic
// link, not a directory, owned by another user, or writable by the group or others.
absl::Status prepare_runtime_dir(const std::string& dir, mode_t socket_mode);

// Opens `path` (O_CREAT, never following a symbolic link, close-on-exec) with `flags`
// (O_RDWR and the like) and `mode`; FAILED_PRECONDITION when it is a symbolic link, not
// a regular file, owned by another user or has more than one link.
absl::StatusOr<int> open_private_file(const std::string& path, int flags, mode_t mode);

// Makes room for a file of type `type` (S_IFSOCK or S_IFREG) at `path`: OK when nothing
// is there or a stale one of that type, owned by the daemon's euid, was removed;
// FAILED_PRECONDITION (and nothing removed) for anything else.
absl::Status remove_stale(const std::string& path, mode_t type);

// "owner uid 65534, mode 0777, a directory": what lstat() says, for error messages.
std::string describe_file(const struct stat& st);

}  // namespace insideout::daemon
