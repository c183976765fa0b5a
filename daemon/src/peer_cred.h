// Who is on the other end of a Unix socket, and whether a group admits them: the
// control plane's answers to "may this caller read / change things".
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

namespace insideout::daemon {

// Who connected, as the kernel told at accept (SO_PEERCRED, SO_PEERGROUPS): the
// credentials of the connecting process when it connected, which later changes to that
// process (or its pid's reuse) cannot alter.
struct PeerCred {
  pid_t pid = 0;
  uid_t uid = static_cast<uid_t>(-1);
  gid_t gid = static_cast<gid_t>(-1);
  std::vector<gid_t> groups;  // supplementary groups
  bool known = false;
};

// A group by name, or by number.
std::optional<gid_t> lookup_group(const std::string& name);
// The peer's primary group, or one of its supplementary groups as captured at accept.
bool in_group(const PeerCred& p, gid_t g);
// The supplementary groups of a socket's peer at connect time (SO_PEERGROUPS, Linux
// 4.13); false when the kernel cannot say.
bool peer_groups(int fd, std::vector<gid_t>* out);

}  // namespace insideout::daemon
