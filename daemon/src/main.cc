// insideoutd: the continuation scheduler daemon. Runs in the foreground; under systemd a
// Type=notify service (notify.h), logging to journald with priorities.
#include <signal.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>

#include "config.h"
#include "config_file.h"
#include "control.h"
#include "daemon.h"
#include "insideout/shm/layout.h"
#include "insideout/shm/paths.h"

namespace {

using insideout::daemon::DaemonConfig;

// Log lines for journald on stderr: "<N>" (the syslog priority, sd-daemon(3)) before
// each line, no timestamp (the journal has its own).
class JournalSink final : public spdlog::sinks::base_sink<std::mutex> {
 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    spdlog::memory_buf_t text;
    formatter_->format(msg, text);
    int prio = 6;
    switch (msg.level) {
      case spdlog::level::trace:
      case spdlog::level::debug:
        prio = 7;
        break;
      case spdlog::level::warn:
        prio = 4;
        break;
      case spdlog::level::err:
        prio = 3;
        break;
      case spdlog::level::critical:
        prio = 2;
        break;
      default:
        break;
    }
    std::fprintf(stderr, "<%d>%.*s", prio, static_cast<int>(text.size()), text.data());
  }
  void flush_() override { std::fflush(stderr); }
};

// $JOURNAL_STREAM names stderr's device and inode when systemd connected it to journald.
bool stderr_is_journal() {
  const char* js = std::getenv("JOURNAL_STREAM");
  struct stat st {};
  if (js == nullptr || ::fstat(2, &st) != 0) return false;
  unsigned long long dev = 0, ino = 0;
  if (std::sscanf(js, "%llu:%llu", &dev, &ino) != 2) return false;
  return dev == static_cast<unsigned long long>(st.st_dev) &&
         ino == static_cast<unsigned long long>(st.st_ino);
}

void set_up_logging(const DaemonConfig& c) {
  const bool journal = c.log_target == "journal" || (c.log_target == "auto" && stderr_is_journal());
  std::shared_ptr<spdlog::logger> logger;
  if (journal) {
    logger = std::make_shared<spdlog::logger>("insideoutd", std::make_shared<JournalSink>());
    spdlog::set_default_logger(logger);
    spdlog::set_pattern("%v");
  } else {
    logger = spdlog::stderr_color_mt("insideoutd");
    spdlog::set_default_logger(logger);
    spdlog::set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ %v");
  }
  spdlog::set_level(spdlog::level::from_str(c.log_level));
}

// The value of `--name VALUE` or `--name=VALUE` in argv, before CLI11 parses it: the file
// is read first so that the flags override it.
const char* find_flag(int argc, char** argv, const std::string& name) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == name && i + 1 < argc) return argv[i + 1];
    if (a.rfind(name + "=", 0) == 0) return argv[i] + name.size() + 1;
  }
  return nullptr;
}

// Parses the command line over `config` (the defaults, or the file's values): only the
// flags given change it. Returns -1 when the daemon should run, else the exit code
// (--help, --version, a bad flag: CLI11 printed why).
int parse_args(int argc, char** argv, DaemonConfig& config) {
  CLI::App app{
      "insideoutd: a continuation scheduler daemon. Client processes hand it continuations "
      "through shared memory; pinned workers run them.",
      "insideoutd"};
  std::string cpus = insideout::daemon::format_cpu_list(config.cpus),
              idle(insideout::shm::idle_strategy_name(config.idle)), log_level = config.log_level;
  unsigned spin_us = static_cast<unsigned>(config.spin.count()),
           drain_ms = static_cast<unsigned>(config.drain_timeout.count()),
           long_step_ms = static_cast<unsigned>(config.long_step.count());
  bool no_pin = !config.pin;
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
  std::string autosize;
  app.add_option("--autosize", autosize,
                 "MIN..MAX: the default pool sizes itself within these bounds, from measured "
                 "queueing delay and idleness (--workers is where it starts; MAX at most its "
                 "CPUs). The file's `autosize = { min, max, ... }` also sets the timings");
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
  unsigned hello_ms = static_cast<unsigned>(config.hello_timeout.count());
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
  bool no_control = !config.control;
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
  std::string event_backend = insideout::engine::event_backend_name(config.event_backend);
  app.add_option("--event-backend", event_backend,
                 "The event queue's kernel interface: auto (epoll, measured the faster: "
                 "docs/BENCHMARKS.md), epoll, or io_uring. Neither needs more than Linux 6.1")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "epoll", "io_uring"}));
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));
  app.add_option("--log-target", config.log_target,
                 "auto (journald with priorities when $JOURNAL_STREAM is stderr, i.e. under "
                 "systemd; else stderr), journal or stderr")
      ->check(CLI::IsMember({"auto", "journal", "stderr"}));
  std::string config_file, check_file;
  app.add_option("--config", config_file,
                 std::string("The configuration file (TOML; every key is a long option with '_' "
                             "for '-', plus [[pools]]; see deploy/insideoutd.toml). Default: ") +
                     insideout::daemon::kDefaultConfigPath +
                     " when it exists. Flags override the file; SIGHUP (systemctl reload) or "
                     "insideoutctl reload re-reads it")
      ->type_name("FILE");
  app.add_option("--check-config", check_file,
                 "Check FILE (every error with its line and key) and exit: 0 valid, 1 not")
      ->type_name("FILE");
  app.add_flag("--enable-test-functions", config.test_functions,
               "TEST ONLY: register test.hang, a function that wedges its worker until the "
               "daemon stops (the watchdog tests use it). Never in production");
  app.footer(
      "Under systemd (Type=notify): READY=1 once both sockets accept, STATUS= lines, "
      "RELOADING=1 on SIGHUP, STOPPING=1 on SIGTERM, and WATCHDOG=1 (WatchdogSec=) only while "
      "every pool's workers make progress. Sockets passed by systemd (FileDescriptorName= "
      "registration and control) are used instead of binding daemon.sock and control.sock.");
  app.set_version_flag("--version",
                       std::string("insideoutd ") + insideout::daemon::kVersion + " (layout " +
                           std::to_string(insideout::shm::kLayoutVersion) + ", protocol " +
                           std::to_string(insideout::shm::kProtocolVersion) + ")");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  config.log_level = log_level;

  if (!cpus.empty()) {
    std::string err;
    auto list = insideout::daemon::parse_cpu_list(cpus, &err);
    if (!list) {
      std::fprintf(stderr, "insideoutd: --cpus: %s\n", err.c_str());
      return 2;
    }
    config.cpus = *list;
  }
  if (!autosize.empty()) {
    insideout::engine::AutosizeConfig a;
    char tail = 0;
    if (std::sscanf(autosize.c_str(), "%u..%u%c", &a.min, &a.max, &tail) != 2) {
      std::fprintf(stderr, "insideoutd: --autosize: '%s' is not MIN..MAX, e.g. 1..4\n",
                   autosize.c_str());
      return 2;
    }
    if (config.autosize) {  // the file's timings stay
      a.grow_after = config.autosize->grow_after;
      a.shrink_after = config.autosize->shrink_after;
      a.target_delay = config.autosize->target_delay;
      a.interval = config.autosize->interval;
    }
    config.autosize = a;
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
  return -1;
}

// Reads the configuration file, if any: --config FILE, else the default path when it
// exists. False (errors printed) when it is invalid.
bool read_file(const std::string& path, DaemonConfig* config) {
  auto file = insideout::daemon::load_config(path);
  for (const auto& e : file.errors)
    std::fprintf(stderr, "%s\n", insideout::daemon::format_error(path, e).c_str());
  if (!file.errors.empty()) return false;
  *config = std::move(file.config);
  config->config_file = path;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace insideout::daemon;
  if (const char* check = find_flag(argc, argv, "--check-config")) {
    DaemonConfig c;
    if (!read_file(check, &c)) return 1;
    std::printf("%s: OK\n", check);
    return 0;
  }
  DaemonConfig config;
  std::string path;
  if (const char* p = find_flag(argc, argv, "--config")) {
    path = p;
  } else if (::access(kDefaultConfigPath, F_OK) == 0) {
    path = kDefaultConfigPath;
  }
  if (!path.empty() && !read_file(path, &config)) return 2;
  if (const int rc = parse_args(argc, argv, config); rc >= 0) return rc;
  set_up_logging(config);
  if (!path.empty()) spdlog::info("configuration from {}", path);

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
    // The file's pools, through the control plane's own code.
    DaemonConfig none = config;
    none.pools.clear();
    none.autosize.reset();
    if (auto st = control->apply_pools(config, none); !st.ok()) {
      spdlog::error("cannot make the configured pools: {}", std::string(st.message()));
      control->stop();
      return 1;
    }
  } else if (!config.pools.empty() || config.autosize) {
    spdlog::error("[[pools]] and autosize need the control plane (control = true)");
    return 1;
  }
  // SIGHUP, systemctl reload and insideoutctl reload: the file again, the same flags over
  // it, then what changes live; the rest is logged as needing a restart.
  daemon.set_reload_hook([&]() -> absl::StatusOr<std::vector<std::string>> {
    if (path.empty()) {
      return absl::FailedPreconditionError(std::string("no configuration file (no --config, and ") +
                                           kDefaultConfigPath + " did not exist at start)");
    }
    auto file = load_config(path);
    if (!file.errors.empty()) {
      std::string why;
      for (const auto& e : file.errors) why += (why.empty() ? "" : "; ") + format_error(path, e);
      return absl::InvalidArgumentError(why);
    }
    DaemonConfig next = std::move(file.config);
    if (parse_args(argc, argv, next) >= 0)
      return absl::InvalidArgumentError("the command line no longer applies over the file");
    next.config_file = path;
    DaemonConfig current = daemon.effective_config();
    std::vector<std::string> restart = restart_keys(current, next);
    if (control) {
      if (auto st = control->apply_pools(next, current); !st.ok()) return st;
    } else if (next.pools != current.pools) {
      restart.emplace_back("pools (the control plane is off)");
    }
    spdlog::set_level(spdlog::level::from_str(next.log_level));
    for (const auto& dir : next.plugin_dirs) daemon.plugins().load_dir(dir, /*only_new=*/true);
    // What changed live; the rest keeps its running value.
    current.workers = next.workers;
    current.cpus = next.cpus;
    current.autosize = next.autosize;
    current.pools = next.pools;
    current.log_level = next.log_level;
    current.plugin_dirs = next.plugin_dirs;
    daemon.set_effective_config(std::move(current));
    return restart;
  });
  return daemon.run();
}
