// insideoutd: the continuation scheduler daemon. Runs in the foreground (systemd
// Type=notify later); logs to stderr.
#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <memory>
#include <string>

#include "config.h"
#include "control.h"
#include "daemon.h"
#include "insideout/shm/layout.h"
#include "insideout/shm/paths.h"

int main(int argc, char** argv) {
  using insideout::daemon::DaemonConfig;
  DaemonConfig config;
  CLI::App app{
      "insideoutd: a continuation scheduler daemon. Client processes hand it continuations "
      "through shared memory; pinned workers run them.",
      "insideoutd"};
  std::string cpus, idle = "spin-then-block", log_level = "info";
  unsigned spin_us = 50, drain_ms = 5000, long_step_ms = 1000;
  bool no_pin = false;
  app.add_option(
      "--runtime-dir", config.runtime_dir,
      "Directory for daemon.sock and the lock (default: $INSIDEOUT_RUNTIME_DIR, else "
      "/run/insideout "
      "as root, else $XDG_RUNTIME_DIR/insideout). Created if missing, 0700 (0710 when the socket's "
      "group may connect, so that it can reach the socket); refused if it is a "
      "symbolic link, another user's, or writable by the group or others");
  app.add_option("-w,--workers", config.workers, "Worker threads (default: one per allowed CPU)");
  app.add_option("--cpus", cpus,
                 "CPUs to pin workers to, e.g. 0-3,8 (default: the process's affinity mask)");
  app.add_flag("--no-pin", no_pin, "Do not pin workers to CPUs");
  app.add_option("--idle", idle, "What idle workers do: block, spin-then-block or poll")
      ->check(CLI::IsMember({"block", "spin-then-block", "poll"}));
  app.add_option("--spin-us", spin_us,
                 "How long spin-then-block spins before it sleeps, in microseconds");
  app.add_option("--max-clients", config.max_clients,
                 "Most clients registered at once, 1..65535 (default 1024)");
  app.add_option("--max-connections", config.max_connections,
                 "Most connections to daemon.sock at once, registered or not (default 4096)");
  app.add_option("--max-connections-per-uid", config.max_connections_per_uid,
                 "Most connections to daemon.sock at once from one user (default 1024)");
  unsigned hello_ms = 5000;
  app.add_option("--hello-timeout-ms", hello_ms,
                 "How long a new connection may take to send Hello before it is closed");
  app.add_option("--max-serial-bytes", config.max_serial_bytes,
                 "Most bytes of serialized continuations (environments and unsent results) one "
                 "connection may have in the daemon; beyond it submissions get backpressure "
                 "(default 16 MiB)");
  app.add_option("--max-serial-bytes-total", config.max_serial_bytes_total,
                 "The same bound over all connections (default 256 MiB)");
  app.add_option("--max-control-submits", config.max_control_submits,
                 "Most gRPC Submit calls waiting for a result at once; more are refused with "
                 "RESOURCE_EXHAUSTED (default 1024)");
  app.add_option("--drain-timeout-ms", drain_ms, "How long SIGTERM waits for in-flight work");
  app.add_option("--long-step-ms", long_step_ms,
                 "Report a step that runs longer than this (a log line with its function and "
                 "worker, the long_steps counter); 0: do not watch")
      ->capture_default_str();
  std::uint64_t segment_mib = config.max_segment_bytes >> 20;
  app.add_option("--max-segment-mib", segment_mib,
                 "Largest shared-memory segment one client may ask for, in MiB")
      ->capture_default_str();
  app.add_option("--max-inflight", config.max_inflight,
                 "Continuations of one client the daemon holds at once; the rest wait in the "
                 "client's ring")
      ->capture_default_str()
      ->check(CLI::Range(1u, 1u << 16));
  app.add_option("--max-timers", config.max_timers,
                 "Continuations of one client parked on a timer at once (0: no limit); past it "
                 "a sleep fails with BACKPRESSURE")
      ->capture_default_str();
  app.add_option("--max-client-fds", config.max_client_fds,
                 "Descriptors one client may hand over (Client::send_fd) at once; past it "
                 "PassFd fails")
      ->capture_default_str()
      ->check(CLI::Range(0u, 4096u));
  bool no_control = false;
  app.add_option(
      "--admin-group", config.admin_group,
      "Group whose members may change the daemon over control.sock (root and the daemon's own user "
      "always may)");
  app.add_option(
      "--client-group", config.client_group,
      "Group whose members may read the daemon's state over control.sock (default: anyone who can "
      "open the socket, mode 0660); control.sock and the stats file get this group");
  app.add_flag("--no-control", no_control,
               "Do not serve the gRPC control plane (control.sock, stats)");
  app.add_option("--plugin-dir", config.plugin_dirs,
                 "Load every *.so in DIR as a plugin at start (repeatable). A plugin whose file "
                 "or directory is writable by group or others, or owned by anyone but root or "
                 "insideoutd's user, is refused (one log line each), as is one of another ABI "
                 "or SDK major version, with a name already taken, or whose init fails")
      ->type_name("DIR");
  std::string event_backend = "auto";
  app.add_option("--event-backend", event_backend,
                 "The event queue's kernel interface: auto (io_uring where the kernel allows it, "
                 "else epoll), epoll, or io_uring. Neither needs more than Linux 6.1")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "epoll", "io_uring"}));
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));
  app.set_version_flag("--version",
                       std::string("insideoutd ") + insideout::daemon::kVersion + " (layout " +
                           std::to_string(insideout::shm::kLayoutVersion) + ", protocol " +
                           std::to_string(insideout::shm::kProtocolVersion) + ")");
  CLI11_PARSE(app, argc, argv);

  auto logger = spdlog::stderr_color_mt("insideoutd");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ %v");
  spdlog::set_level(spdlog::level::from_str(log_level));

  if (!cpus.empty()) {
    std::string err;
    auto list = insideout::daemon::parse_cpu_list(cpus, &err);
    if (!list) {
      std::fprintf(stderr, "insideoutd: --cpus: %s\n", err.c_str());
      return 2;
    }
    config.cpus = *list;
  }
  config.pin = !no_pin;
  config.max_segment_bytes = segment_mib << 20;
  config.control = !no_control;
  config.idle = *insideout::shm::parse_idle_strategy(idle);
  config.spin = std::chrono::microseconds(spin_us);
  config.drain_timeout = std::chrono::milliseconds(drain_ms);
  config.long_step = std::chrono::milliseconds(long_step_ms);
  config.hello_timeout = std::chrono::milliseconds(hello_ms);
  insideout::engine::parse_event_backend(event_backend, &config.event_backend);
  if (auto st = insideout::daemon::validate(config); !st.ok()) {
    std::fprintf(stderr, "insideoutd: %s\n", std::string(st.message()).c_str());
    return 2;
  }

  // Every thread inherits this mask; the daemon reads these signals from a signalfd.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGHUP);
  // The signals continuations may wait on (the SDK's signal()): the event queue reads
  // them from its signalfd, so no thread may take them.
  const sigset_t routed = insideout::engine::routable_signals();
  for (int s = 1; s < NSIG; ++s) {
    if (sigismember(&routed, s) == 1) sigaddset(&mask, s);
  }
  pthread_sigmask(SIG_BLOCK, &mask, nullptr);
  signal(SIGPIPE, SIG_IGN);

  insideout::daemon::Daemon daemon(config);
  if (auto st = daemon.start(); !st.ok()) {
    spdlog::error("cannot start: {}", std::string(st.message()));
    return 1;
  }
  std::unique_ptr<insideout::daemon::ControlServer> control;
  if (config.control) {
    control = std::make_unique<insideout::daemon::ControlServer>(daemon);
    if (auto st = control->start(); !st.ok()) {
      spdlog::error("cannot start the control plane: {}", std::string(st.message()));
      control->stop();
      return 1;
    }
    daemon.set_shutdown_hook([&control] { control->stop(); });
  }
  return daemon.run();
}
