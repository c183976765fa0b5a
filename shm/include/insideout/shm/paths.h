// Where the daemon's sockets live, agreed by the daemon, the client library and
// insideoutctl: $INSIDEOUT_RUNTIME_DIR, else /run/insideout for root, else
// $XDG_RUNTIME_DIR/insideout, else /tmp/insideout-<uid>.
#pragma once

#include <string>

namespace insideout::shm {

std::string default_runtime_dir();
inline constexpr const char* kDaemonSocketName = "daemon.sock";
inline constexpr const char* kLockFileName = "insideoutd.lock";

}  // namespace insideout::shm
