#include "insideout/shm/paths.h"

#include <unistd.h>

#include <cstdlib>

namespace insideout::shm {

std::string default_runtime_dir() {
  if (const char* d = std::getenv("INSIDEOUT_RUNTIME_DIR"); d != nullptr && *d != '\0') return d;
  if (::geteuid() == 0) return "/run/insideout";
  if (const char* x = std::getenv("XDG_RUNTIME_DIR"); x != nullptr && *x != '\0') {
    return std::string(x) + "/insideout";
  }
  return "/tmp/insideout-" + std::to_string(::geteuid());
}

}  // namespace insideout::shm
