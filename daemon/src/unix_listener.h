// A listening Unix socket at a path: a stale socket of the daemon's own uid there is
// replaced (anything else is refused, see remove_stale()), and the socket is created
// with `mode` (under a umask, so there is no window with wider permissions).
#pragma once

#include <sys/types.h>

#include <string>

#include "absl/status/statusor.h"

namespace insideout::daemon {

// `type` is SOCK_STREAM or SOCK_SEQPACKET; the fd is close-on-exec and non-blocking.
absl::StatusOr<int> listen_unix(const std::string& path, int type, mode_t mode, int backlog);

}  // namespace insideout::daemon
