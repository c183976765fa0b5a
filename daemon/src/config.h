// insideoutd's configuration: built-in defaults, overridden by the command line (and,
// later, by a TOML file: every field here is a knob the control plane may also turn).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "autosize.h"
#include "event_queue.h"
#include "insideout/shm/futex.h"
#include "insideout/shm/layout.h"

namespace insideout::daemon {

// A named pool the configuration file asks for (the control plane's CreatePool).
struct PoolConfig {
  std::string name;
  std::uint32_t size = 1;
  std::vector<int> cpus;                  // empty: every allowed CPU
  std::optional<shm::IdleStrategy> idle;  // unset: the daemon's --idle
  std::string policy;                     // other, batch, idle, fifo, rr; empty: inherited
  std::optional<int> priority, nice;
  // Set: the pool sizes itself within [min, max] (`size` is where it starts).
  std::optional<engine::AutosizeConfig> autosize;
  bool operator==(const PoolConfig&) const = default;
};

struct DaemonConfig {
  std::string runtime_dir;    // empty: shm::default_runtime_dir()
  std::uint32_t workers = 0;  // 0: one per CPU in `cpus`
  std::vector<int> cpus;      // empty: the CPUs in the process's affinity mask
  // Set: the default pool sizes itself within [min, max] (`workers` is where it starts).
  std::optional<engine::AutosizeConfig> autosize;
  bool pin = true;
  shm::IdleStrategy idle = shm::IdleStrategy::kSpinThenBlock;
  std::chrono::microseconds spin{50};
  std::uint32_t accept_batch = 64;
  // Registered clients at once (at most kMaxClientsLimit: Task::client is 16 bits).
  std::uint32_t max_clients = 1024;
  // Connections to daemon.sock at once, registered or not, in all and per uid.
  std::uint32_t max_connections = 4096;
  std::uint32_t max_connections_per_uid = 1024;
  // A connection that has not sent Hello within this is closed.
  std::chrono::milliseconds hello_timeout{5000};
  std::uint32_t max_serial_inflight = 4096;  // per connection
  // Serialized continuations' bytes (environments in, results waiting to be sent out)
  // per connection and over all connections: beyond them a submission is refused with
  // kBackpressure.
  std::uint64_t max_serial_bytes = 16u << 20;
  std::uint64_t max_serial_bytes_total = 256u << 20;
  // gRPC Submit calls waiting for their result at once.
  std::uint32_t max_control_submits = 1024;
  shm::SegmentRequest segment_defaults{};
  // Per client: what its segment may be (clamped field by field, then its total size),
  // how many of its continuations the daemon holds at once (the rest wait in its ring),
  // and how many may be parked on a timer at once. The segment is laid out on the
  // registration thread, so its size bounds that thread's work per Hello too.
  shm::SegmentRequest segment_max{1u << 16, 1u << 16, 1u << 16, 1u << 16};
  std::uint64_t max_segment_bytes = 256ull << 20;
  std::uint32_t max_inflight = 4096;
  std::uint32_t max_timers = 4096;
  std::uint32_t max_client_fds = 64;  // descriptors one client may hand over (PassFd)
  std::chrono::milliseconds drain_timeout{5000};
  // A step that runs this long is reported (log line, counter); 0: not watched.
  std::chrono::milliseconds long_step{1000};
  engine::EventBackendKind event_backend = engine::EventBackendKind::kAuto;
  std::chrono::milliseconds heartbeat{250};
  mode_t socket_mode = 0660;
  // Control plane (control.sock). Root and the daemon's own uid may always change things.
  bool control = true;
  std::string admin_group;   // its members may change things too
  std::string client_group;  // its members may read; empty: anyone who can open the socket
  std::chrono::milliseconds stats_interval{100};  // how often $RUNTIME/stats is refreshed
  // Every *.so in these directories is loaded as a plugin at start (see plugins.h).
  std::vector<std::string> plugin_dirs;
  // Named pools made at start (and on reload) through the control plane's own code.
  std::vector<PoolConfig> pools;
  std::string log_level = "info";
  std::string log_target = "auto";  // auto (journald under systemd), journal or stderr
  // The configuration file read (--config), not a key of it; empty: none.
  std::string config_file;
  // Test-only functions (test.hang); never in production.
  bool test_functions = false;
};

// The most clients the daemon can tell apart: a continuation names its client slot in
// 16 bits (Task::client), and the control plane's own slot takes one index.
inline constexpr std::uint32_t kMaxClientsLimit = 65535;

// OK, or INVALID_ARGUMENT naming the first field that is out of range and why.
absl::Status validate(const DaemonConfig& config);

// A pool's name: 1 to 32 letters, digits, '-' and '_'. Its size: 1..kMaxPoolWorkers.
absl::Status check_pool_name(std::string_view name);
absl::Status check_pool_size(std::uint32_t size);

// "0-3,8,10-11" -> {0,1,2,3,8,10,11}; nullopt (and *error) on a malformed list.
std::optional<std::vector<int>> parse_cpu_list(std::string_view text, std::string* error);
std::string format_cpu_list(const std::vector<int>& cpus);
// The CPUs this process may run on.
std::vector<int> allowed_cpus();

}  // namespace insideout::daemon
