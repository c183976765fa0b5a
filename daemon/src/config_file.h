// insideoutd's configuration file (TOML, default /etc/insideout/insideoutd.toml): every
// key is a long command-line option with '_' for '-' (the flags override the file), plus
// [[pools]] tables for named pools. deploy/insideoutd.toml lists every key.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "config.h"

namespace insideout::daemon {

inline constexpr const char* kDefaultConfigPath = "/etc/insideout/insideoutd.toml";

struct ConfigError {
  std::uint32_t line = 0;  // 0: the file as a whole
  std::string key;         // "pools[1].cpus"; empty for a syntax error
  std::string message;
};

struct ConfigFile {
  DaemonConfig config;              // the defaults, with what the file sets
  std::vector<std::string> keys;    // the top-level keys the file sets
  std::vector<ConfigError> errors;  // empty: the file is valid
};

// Parses `text` over `base` (normally DaemonConfig{}): syntax, types, ranges, unknown
// keys (with a did-you-mean), pools (names, sizes, CPU lists, policies, duplicates).
ConfigFile parse_config(std::string_view text, const DaemonConfig& base = {});
// Reads and parses `path`; an unreadable file is one error.
ConfigFile load_config(const std::string& path, const DaemonConfig& base = {});
// "FILE:12: pools[1].cpus: bad CPU range '3-1'".
std::string format_error(const std::string& path, const ConfigError& e);

// The configuration as a file that parse_config() reads back to the same values.
std::string to_toml(const DaemonConfig& config);

// The keys whose values differ and that only a restart applies ("max_clients",
// "pools[fast].idle"). Pools' size, CPUs and attributes, new pools, the log level and
// the plugin directories change live (Daemon::reload()).
std::vector<std::string> restart_keys(const DaemonConfig& running, const DaemonConfig& next);

}  // namespace insideout::daemon
