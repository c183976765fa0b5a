#include "config.h"

#include <sched.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <limits>
#include <string>

#include "engine.h"

namespace insideout::daemon {

// Slot indices run from 0 to max_clients (the control plane's slot is the extra one).
static_assert(kMaxClientsLimit == std::numeric_limits<decltype(Task::client)>::max(),
              "kMaxClientsLimit must follow the width of Task::client");

absl::Status validate(const DaemonConfig& c) {
  auto bad = [](const std::string& m) { return absl::InvalidArgumentError(m); };
  if (c.max_clients == 0 || c.max_clients > kMaxClientsLimit) {
    return bad("--max-clients " + std::to_string(c.max_clients) + " is out of range: 1.." +
               std::to_string(kMaxClientsLimit) + " (a continuation names its client in 16 bits)");
  }
  if (c.max_connections == 0) return bad("--max-connections must be at least 1");
  if (c.max_connections_per_uid == 0) return bad("--max-connections-per-uid must be at least 1");
  if (c.hello_timeout.count() <= 0) return bad("--hello-timeout-ms must be positive");
  if (c.max_serial_bytes == 0 || c.max_serial_bytes_total < c.max_serial_bytes) {
    return bad("--max-serial-bytes must be positive and at most --max-serial-bytes-total");
  }
  if (c.max_control_submits == 0) return bad("--max-control-submits must be at least 1");
  return absl::OkStatus();
}

absl::Status check_pool_name(std::string_view n) {
  if (n.empty() || n.size() > 32)
    return absl::InvalidArgumentError("a pool name has 1 to 32 characters");
  for (char c : n) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') {
      return absl::InvalidArgumentError("pool name '" + std::string(n) +
                                        "': only letters, digits, '-' and '_'");
    }
  }
  return absl::OkStatus();
}

absl::Status check_pool_size(std::uint32_t size) {
  if (size == 0 || size > kMaxPoolWorkers) {
    return absl::InvalidArgumentError("size " + std::to_string(size) + " is out of range: 1.." +
                                      std::to_string(kMaxPoolWorkers));
  }
  return absl::OkStatus();
}

std::optional<std::vector<int>> parse_cpu_list(std::string_view text, std::string* error) {
  std::vector<int> out;
  auto parse_int = [&](std::string_view s, int* v) {
    const auto r = std::from_chars(s.data(), s.data() + s.size(), *v);
    return r.ec == std::errc() && r.ptr == s.data() + s.size() && *v >= 0 && *v < CPU_SETSIZE;
  };
  while (!text.empty()) {
    const auto comma = text.find(',');
    const std::string_view part = text.substr(0, comma);
    text = comma == std::string_view::npos ? std::string_view() : text.substr(comma + 1);
    const auto dash = part.find('-');
    int lo, hi;
    if (dash == std::string_view::npos) {
      if (!parse_int(part, &lo)) {
        *error = "bad CPU '" + std::string(part) + "'";
        return std::nullopt;
      }
      hi = lo;
    } else if (!parse_int(part.substr(0, dash), &lo) || !parse_int(part.substr(dash + 1), &hi) ||
               hi < lo) {
      *error = "bad CPU range '" + std::string(part) + "'";
      return std::nullopt;
    }
    for (int c = lo; c <= hi; ++c) out.push_back(c);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  if (out.empty()) {
    *error = "empty CPU list";
    return std::nullopt;
  }
  return out;
}

std::string format_cpu_list(const std::vector<int>& cpus) {
  std::string s;
  for (std::size_t i = 0; i < cpus.size();) {
    std::size_t j = i;
    while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) ++j;
    if (!s.empty()) s += ',';
    s += std::to_string(cpus[i]);
    if (j > i) s += '-' + std::to_string(cpus[j]);
    i = j + 1;
  }
  return s;
}

std::vector<int> allowed_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> out;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    for (int c = 0; c < CPU_SETSIZE; ++c) {
      if (CPU_ISSET(c, &set)) out.push_back(c);
    }
  }
  if (out.empty()) out.push_back(0);
  return out;
}

}  // namespace insideout::daemon
