#include "peer_cred.h"

#include <grp.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>

namespace insideout::daemon {

std::optional<gid_t> lookup_group(const std::string& name) {
  if (name.empty()) return std::nullopt;
  group g{};
  group* out = nullptr;
  std::vector<char> buf(16384);
  if (getgrnam_r(name.c_str(), &g, buf.data(), buf.size(), &out) == 0 && out != nullptr)
    return out->gr_gid;
  char* end = nullptr;
  const unsigned long v = std::strtoul(name.c_str(), &end, 10);
  if (end != nullptr && *end == '\0' && end != name.c_str()) return static_cast<gid_t>(v);
  return std::nullopt;
}

bool in_group(const PeerCred& p, gid_t g) {
  if (g == static_cast<gid_t>(-1)) return false;
  return p.gid == g || std::find(p.groups.begin(), p.groups.end(), g) != p.groups.end();
}

bool peer_groups(int fd, std::vector<gid_t>* out) {
  std::vector<gid_t> g(64);
  for (int tries = 0; tries < 4; ++tries) {
    socklen_t len = static_cast<socklen_t>(g.size() * sizeof(gid_t));
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, g.data(), &len) == 0) {
      g.resize(len / sizeof(gid_t));
      *out = std::move(g);
      return true;
    }
    if (errno != ERANGE) return false;
    g.resize(len / sizeof(gid_t) + 1);  // the kernel said how much it needs
  }
  return false;
}

}  // namespace insideout::daemon
