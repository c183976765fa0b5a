#include "daemon.h"

#include <cxxabi.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <ctime>
#include <thread>

#include "insideout/shm/paths.h"
#include "insideout/shm/segment.h"
#include "insideout/v1/continuation.pb.h"
#include "insideout/v1/wire.h"
#include "log.h"
#include "runtime_dir.h"
#include "segment_request.h"
#include "unix_listener.h"

namespace insideout::daemon {
namespace {

using shm::ErrorDetail;
using shm::Status;

std::uint64_t now_ns(clockid_t clock) {
  timespec ts{};
  clock_gettime(clock, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ull +
         static_cast<std::uint64_t>(ts.tv_nsec);
}

// A value that differs at every start, so that a client tells a restarted daemon from
// the one it knew (the pid and the start time may repeat: a container, a clock step).
std::uint64_t new_generation(std::uint64_t start_ns) {
  std::uint64_t g = 0;
  if (::getrandom(&g, sizeof(g), GRND_NONBLOCK) != static_cast<ssize_t>(sizeof(g)))
    g = start_ns ^ (std::uint64_t{static_cast<std::uint32_t>(::getpid())} << 32);
  return g == 0 ? 1 : g;
}

absl::Status errno_status(const std::string& what) {
  return absl::InternalError(what + ": " + std::strerror(errno));
}

// Twins across the wire: the frame's status and the protobuf enum share their numbers.
static_assert(static_cast<int>(Status::kOk) == v1::STATUS_OK);
static_assert(static_cast<int>(Status::kBackpressure) == v1::STATUS_BACKPRESSURE);
static_assert(static_cast<int>(Status::kDaemonLost) == v1::STATUS_DAEMON_LOST);
static_assert(static_cast<int>(Status::kResultTooLarge) == v1::STATUS_RESULT_TOO_LARGE);
static_assert(static_cast<int>(Status::kDraining) == v1::STATUS_DRAINING);
static_assert(static_cast<int>(Status::kFailed) == v1::STATUS_FAILED);
static_assert(v1::Status_MAX == static_cast<int>(Status::kFailed),
              "a Status value was added on one side of the wire only");

v1::Status to_proto(Status s) { return static_cast<v1::Status>(static_cast<int>(s)); }

std::string error_text(Status s, ErrorDetail d) {
  std::string t = shm::status_name(s);
  // kFunctionFailed says no more than kFailed; the function's message follows instead.
  if (d != ErrorDetail::kNone && d != ErrorDetail::kFunctionFailed)
    t += std::string(": ") + shm::detail_name(d);
  return t;
}

// Epoll user data: the fd itself, except for these fixed sources.
constexpr std::uint64_t kListenKey = 1ull << 40;
constexpr std::uint64_t kSignalKey = 2ull << 40;
constexpr std::uint64_t kTimerKey = 3ull << 40;
constexpr std::uint64_t kEventKey = 4ull << 40;

// test.hang (--enable-test-functions only): wedges its worker until the daemon shuts down,
// so that tests can see the watchdog stop. Release: pairs with the acquire load below.
std::atomic<bool> release_hang{false};
Step test_hang(Task&, StepContext&) {
  while (!release_hang.load(std::memory_order_acquire))
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  return Step::kComplete;
}

}  // namespace

// One slot more than max_clients: the control plane's own (open_local_client()).
Daemon::Daemon(DaemonConfig config)
    : config_(std::move(config)),
      plugins_(std::make_unique<PluginManager>(
          registry_, [this](std::uint8_t slot) { return plugin_drained_probe(slot); })),
      clients_(config_.max_clients + 1) {
  ClientFds::prepare();  // its one descriptor from the start, not the first client's
}

Daemon::~Daemon() {
  for (int fd : {listen_fd_, epoll_fd_, signal_fd_, timer_fd_, event_fd_}) {
    if (fd >= 0) ::close(fd);
  }
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

absl::Status Daemon::start() {
  // The engine's few log lines (a worker that could not be pinned) go to the daemon's log.
  engine::set_log_sink([](engine::LogLevel level, const std::string& message) {
    spdlog::log(level == engine::LogLevel::kError  ? spdlog::level::err
                : level == engine::LogLevel::kWarn ? spdlog::level::warn
                                                   : spdlog::level::info,
                message);
  });
  // Every connection is a descriptor: take all the kernel allows this process, so the
  // connection limits (not EMFILE) are what bounds them.
  rlimit nofile{};
  if (::getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    const rlim_t before = nofile.rlim_cur;
    nofile.rlim_cur = nofile.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &nofile) == 0) {
      spdlog::info("open-file limit raised from {} to {}", before, nofile.rlim_cur);
    } else {
      spdlog::warn("could not raise the open-file limit from {}: {}", before, std::strerror(errno));
      nofile.rlim_cur = before;
    }
  }
  if (nofile.rlim_cur != RLIM_INFINITY && nofile.rlim_cur < config_.max_connections + 64u) {
    spdlog::warn(
        "the open-file limit ({}) is below --max-connections ({}) plus the daemon's own "
        "descriptors: accept() may fail first (the listener then pauses until one is free)",
        nofile.rlim_cur, config_.max_connections);
  }
  runtime_dir_ = config_.runtime_dir.empty() ? shm::default_runtime_dir() : config_.runtime_dir;
  if (auto st = prepare_runtime_dir(runtime_dir_, config_.socket_mode); !st.ok()) return st;

  // Single instance: an flock on the lock file, held for the daemon's life. Opened
  // without following a link and truncated only once the lock is held.
  const std::string lock_path = runtime_dir_ + "/" + shm::kLockFileName;
  auto lock_fd = open_private_file(lock_path, O_RDWR, 0644);
  if (!lock_fd.ok()) return lock_fd.status();
  lock_fd_ = *lock_fd;
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    char buf[32] = {};
    const ssize_t n = ::pread(lock_fd_, buf, sizeof(buf) - 1, 0);
    std::string holder = n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : "?";
    while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) holder.pop_back();
    return absl::AlreadyExistsError("another insideoutd (pid " + holder + ") already runs in " +
                                    runtime_dir_);
  }
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(lock_fd_, 0) != 0 || ::pwrite(lock_fd_, pid.data(), pid.size(), 0) < 0) {
    return errno_status("writing " + lock_path);
  }

  // The registration socket; a stale one from a crashed daemon is ours to replace.
  const std::string path = socket_path();
  if (auto st = take_activated_sockets(); !st.ok()) return st;
  if (listen_fd_ < 0) {
    auto fd = listen_unix(path, SOCK_SEQPACKET, config_.socket_mode, 128);
    if (!fd.ok()) return fd.status();
    listen_fd_ = *fd;
  }

  // Signals arrive as readable data; the caller blocked them in every thread.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGHUP);
  signal_fd_ = ::signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
  if (signal_fd_ < 0) return errno_status("signalfd");
  timer_fd_ = ::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
  if (timer_fd_ < 0) return errno_status("timerfd_create");
  const auto hb = std::chrono::duration_cast<std::chrono::nanoseconds>(config_.heartbeat).count();
  itimerspec its{};
  its.it_interval.tv_sec = hb / 1'000'000'000;
  its.it_interval.tv_nsec = hb % 1'000'000'000;
  its.it_value = its.it_interval;
  ::timerfd_settime(timer_fd_, 0, &its, nullptr);
  event_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (event_fd_ < 0) return errno_status("eventfd");
  epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd_ < 0) return errno_status("epoll_create1");
  for (auto [fd, key] : {std::pair{listen_fd_, kListenKey},
                         {signal_fd_, kSignalKey},
                         {timer_fd_, kTimerKey},
                         {event_fd_, kEventKey}}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = key;
    if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) return errno_status("epoll_ctl");
  }

  register_builtins(registry_);
  if (config_.test_functions) {
    registry_.add({"test.hang",
                   "TEST ONLY (--enable-test-functions): never returns until the daemon stops; "
                   "wedges its worker",
                   engine_step<test_hang>});
    spdlog::warn("test functions enabled (test.hang): not for production");
  }
  effective_ = config_;
  for (const auto& dir : config_.plugin_dirs) plugins_->load_dir(dir);
  allowed_cpus_ = insideout::daemon::allowed_cpus();
  started_ = std::chrono::steady_clock::now();
  SchedulerConfig sc;
  sc.cpus = config_.cpus.empty() ? allowed_cpus() : config_.cpus;
  sc.workers = config_.workers;
  if (!config_.pin) sc.cpus.clear();
  if (sc.workers == 0 && sc.cpus.empty())
    sc.workers = static_cast<std::uint32_t>(allowed_cpus().size());
  sc.idle = config_.idle;
  sc.spin = config_.spin;
  sc.accept_batch = config_.accept_batch;
  sc.pool = 0;
  sc.long_step = config_.long_step;
  scheduler_ = make_scheduler(sc);
  {
    std::lock_guard lock(pools_mu_);
    pools_.push_back({"default", 0, scheduler_});
  }
  clients_.set_on_zombie([this] {
    const std::uint64_t one = 1;
    (void)!::write(event_fd_, &one, sizeof(one));
  });
  start_ns_ = now_ns(CLOCK_REALTIME);
  generation_ = new_generation(start_ns_);
  scheduler_->start();
  spdlog::info(
      "insideoutd {} (pid {}) on {}: {} workers{}, idle strategy {}, layout version {}", kVersion,
      ::getpid(), path, scheduler_->worker_count(),
      sc.cpus.empty() ? std::string(" (unpinned)") : " on CPUs " + format_cpu_list(sc.cpus),
      shm::idle_strategy_name(sc.idle), shm::kLayoutVersion);
  return absl::OkStatus();
}

std::shared_ptr<Scheduler> Daemon::find_pool(std::uint32_t id) const {
  std::lock_guard lock(pools_mu_);
  for (const auto& p : pools_) {
    if (p.id == id) return p.scheduler;
  }
  return nullptr;
}

std::int64_t Daemon::pool_id(std::string_view name) const {
  std::lock_guard lock(pools_mu_);
  for (const auto& p : pools_) {
    if (p.name == name) return p.id;
  }
  return -1;
}

std::int64_t Daemon::plugin_live(std::uint8_t slot) const {
  if (slot >= kMaxPluginSlots) return 0;
  std::int64_t sum = deleted_plugin_live_[slot].load(std::memory_order_relaxed);
  for (const auto& p : pools()) sum += p.scheduler->plugin_live(slot);
  return sum;
}

std::string Daemon::describe_step(io_step_fn step) const {
  // An entry step is a function's own; a later one is named by its symbol and library.
  for (const auto& e : registry_.list()) {
    if (e.def.entry == step) return "'" + e.def.name + "'";
  }
  Dl_info info{};
  if (::dladdr(reinterpret_cast<void*>(step), &info) != 0) {
    std::string where = info.dli_fname != nullptr ? info.dli_fname : "?";
    if (info.dli_sname == nullptr) return "a step in " + where;
    int status = 0;
    char* pretty = abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &status);
    std::string name = status == 0 && pretty != nullptr ? pretty : info.dli_sname;
    std::free(pretty);
    return name + " in " + where;
  }
  return "an unknown step";
}

std::shared_ptr<Scheduler> Daemon::make_scheduler(SchedulerConfig sc) {
  sc.tasks = &tasks_;
  sc.directory = this;
  sc.long_step = config_.long_step;
  sc.event_backend = config_.event_backend;
  const std::uint32_t id = sc.pool;
  const std::uint32_t pool = sc.pool;
  auto source = std::make_unique<ClientSource>(clients_, registry_, pool);
  ClientSource& src = *source;
  auto s = std::make_shared<Scheduler>(std::move(sc), registry_, std::move(source));
  // On the pool's timer thread: a step has run past --long-step-ms.
  s->set_long_step_sink(
      [this, id](std::uint32_t worker, io_step_fn step, std::chrono::milliseconds ran) {
        std::string pool = std::to_string(id);
        for (const auto& p : pools()) {
          if (p.id == id) pool = p.name;
        }
        spdlog::warn(
            "pool '{}' worker {}: {} has run for {} ms without returning (--long-step-ms {}); "
            "counted in insideoutctl workers (LONG)",
            pool, worker, describe_step(step), ran.count(), config_.long_step.count());
      });
  // Runs on a worker, before the job's reference on the slot is dropped: the result is
  // copied out here, so the loop never looks at a slot that may be gone.
  src.set_serial_sink([this](ClientSlot& slot, std::uint32_t job) { serial_done(slot, job); });
  // Runs on a worker that found a client's rings unusable: the loop disconnects it.
  src.set_fault_sink([this](ClientSlot& slot) {
    {
      std::lock_guard lock(evict_mu_);
      faulted_.push_back({slot.index, slot.id, slot.fault_reason});
    }
    const std::uint64_t one = 1;
    (void)!::write(event_fd_, &one, sizeof(one));
  });
  return s;
}

void Daemon::serial_done(ClientSlot& slot, std::uint32_t job) {
  {
    // The local client's sink is set before its first job (happens-before through the
    // scheduler's inject lock).
    if (&slot == local_slot_) return local_sink_(slot, job);
    Outgoing out;
    out.slot = slot.index;
    out.client_id = slot.id;
    {
      std::lock_guard lock(slot.jobs_mu);
      SerialJob& j = *slot.jobs[job];
      out.env_bytes = j.env.size();
      auto* r = out.msg.mutable_result();
      r->set_tag(j.tag);
      r->set_status(to_proto(j.status));
      if (j.status != Status::kOk)
        r->set_error(j.message.empty() ? error_text(j.status, j.detail)
                                       : error_text(j.status, j.detail) + ": " + j.message);
      r->set_value(j.value);
      r->set_data(std::move(j.data));
      j = SerialJob{};
      slot.free_jobs.push_back(job);
    }
    {
      std::lock_guard lock(outbox_mu_);
      outbox_.push_back(std::move(out));
    }
    const std::uint64_t one = 1;
    (void)!::write(event_fd_, &one, sizeof(one));
  }
}

std::vector<Daemon::PoolInfo> Daemon::pools() const {
  std::lock_guard lock(pools_mu_);
  return pools_;
}

SchedulerTotals Daemon::totals() const {
  std::lock_guard lock(pools_mu_);
  SchedulerTotals t = deleted_totals_;
  for (const auto& p : pools_) t += p.scheduler->totals();
  for (const auto& s : deleting_) t += s->totals();
  return t;
}

std::shared_ptr<Scheduler> Daemon::pool(const std::string& name) const {
  std::lock_guard lock(pools_mu_);
  for (const auto& p : pools_) {
    if (p.name == name) return p.scheduler;
  }
  return nullptr;
}

absl::StatusOr<std::shared_ptr<Scheduler>> Daemon::create_pool(const std::string& name,
                                                               SchedulerConfig sc) {
  std::lock_guard lock(pools_mu_);
  for (const auto& p : pools_) {
    if (p.name == name) return absl::AlreadyExistsError("pool '" + name + "' already exists");
  }
  sc.pool = next_pool_id_++;
  sc.thread_prefix = "io-" + name.substr(0, 7) + "-";
  auto s = make_scheduler(std::move(sc));
  s->start();
  if (paused_) s->pause();  // the daemon is drained: so is a pool made meanwhile
  PoolInfo info{name, s->config().pool, s};
  pools_.push_back(info);
  std::sort(pools_.begin() + 1, pools_.end(),
            [](const PoolInfo& a, const PoolInfo& b) { return a.name < b.name; });
  spdlog::info("pool '{}' created: {} workers{}", name, s->worker_count(),
               s->config().cpus.empty() ? std::string(" (unpinned)")
                                        : " on CPUs " + format_cpu_list(s->config().cpus));
  return s;
}

absl::Status Daemon::delete_pool(const std::string& name) {
  if (name == "default") return absl::FailedPreconditionError("the default pool cannot be deleted");
  std::shared_ptr<Scheduler> victim;
  {
    std::lock_guard lock(pools_mu_);
    auto it = std::find_if(pools_.begin(), pools_.end(),
                           [&](const PoolInfo& p) { return p.name == name; });
    if (it == pools_.end()) return absl::NotFoundError("no pool named '" + name + "'");
    std::string users;
    {
      std::lock_guard ilock(info_mu_);
      for (const auto& [id, info] : infos_) {
        if (info.pool != name) continue;
        users += (users.empty() ? "" : ", ") + std::to_string(id) + " (pid " +
                 std::to_string(info.pid) + (info.name.empty() ? "" : ", " + info.name) + ")";
      }
    }
    if (!users.empty()) {
      return absl::FailedPreconditionError("pool '" + name +
                                           "' still has registered clients: " + users);
    }
    victim = it->scheduler;
    pools_.erase(it);
    deleting_.push_back(victim);
  }
  // No client can name it any more; what its departed clients left in flight finishes.
  const bool drained = victim->drain(config_.drain_timeout);
  victim->stop();
  // Continuations that moved in from other pools carry on in the default pool.
  for (Task* t : victim->take_leftovers()) {
    if (!scheduler_->adopt(t))
      spdlog::warn("pool '{}': a continuation moved into it was lost", name);
  }
  for (std::uint32_t slot = 1; slot < kMaxPluginSlots; ++slot) {
    deleted_plugin_live_[slot].fetch_add(victim->plugin_live(static_cast<std::uint8_t>(slot)),
                                         std::memory_order_relaxed);
  }
  {
    std::lock_guard lock(pools_mu_);
    deleted_totals_ += victim->totals();
    std::erase(deleting_, victim);
  }
  spdlog::info("pool '{}' deleted{}", name, drained ? "" : " (its drain timed out)");
  return absl::OkStatus();
}

bool Daemon::drain(std::chrono::milliseconds timeout) {
  std::vector<PoolInfo> all;
  {
    std::lock_guard lock(pools_mu_);  // a concurrent Resume takes effect wholly before or after
    paused_ = true;
    all = pools_;
    for (const auto& p : all) p.scheduler->pause();
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  bool idle = true;
  for (const auto& p : all) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    idle = p.scheduler->wait_idle(std::max(left, std::chrono::milliseconds(0))) && idle;
  }
  return idle;
}

bool Daemon::resume() {
  std::vector<PoolInfo> all;
  bool was = false;
  {
    std::lock_guard lock(pools_mu_);
    was = paused_;
    paused_ = false;
    all = pools_;
    for (const auto& p : all) p.scheduler->resume();
  }
  return was;
}

Daemon::DrainState Daemon::drain_state() const {
  std::vector<PoolInfo> all;
  {
    std::lock_guard lock(pools_mu_);
    if (!paused_) return DrainState::kServing;
    all = pools_;
  }
  for (const auto& p : all) {
    if (p.scheduler->busy()) return DrainState::kDraining;
  }
  return DrainState::kDrained;
}

void Daemon::request_stop() {
  stop_requested_.store(true, std::memory_order_release);  // read after the eventfd wakes the loop
  const std::uint64_t one = 1;
  (void)!::write(event_fd_, &one, sizeof(one));
}

absl::Status Daemon::take_activated_sockets() {
  char** names = nullptr;
  // Unsets $LISTEN_FDS and friends: nothing the daemon starts takes them.
  const int n = sd_listen_fds_with_names(1, &names);
  if (n < 0) return absl::InternalError(std::string("sd_listen_fds: ") + std::strerror(-n));
  absl::Status st;
  for (int i = 0; i < n; ++i) {
    const int fd = SD_LISTEN_FDS_START + i;
    const std::string name = names != nullptr && names[i] != nullptr ? names[i] : "";
    const bool reg = name == "registration", ctl = name == "control";
    const int type = reg ? SOCK_SEQPACKET : SOCK_STREAM;
    if (st.ok() && !reg && !ctl) {
      st = absl::InvalidArgumentError(
          "systemd passed a socket named '" + name +
          "': insideoutd takes FileDescriptorName=registration (daemon.sock) and control "
          "(control.sock)");
    } else if (st.ok() && sd_is_socket_unix(fd, type, 1, nullptr, 0) <= 0) {
      st = absl::InvalidArgumentError(
          "the socket systemd passed as '" + name + "' (fd " + std::to_string(fd) +
          ") is not a listening Unix " + (reg ? "SOCK_SEQPACKET" : "SOCK_STREAM") +
          " socket (ListenSequentialPacket= for registration, ListenStream= for control)");
    } else if (st.ok()) {
      ::fcntl(fd, F_SETFD, FD_CLOEXEC);
      ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
      if (reg) {
        listen_fd_ = fd;
        activated_ = true;
      } else {
        activated_control_fd_ = fd;
      }
      continue;
    }
    ::close(fd);
  }
  if (names != nullptr) {
    for (int i = 0; i < n; ++i) std::free(names[i]);
    std::free(names);
  }
  if (st.ok() && n > 0 && listen_fd_ < 0)
    st = absl::InvalidArgumentError(
        "systemd passed sockets but none named 'registration' (FileDescriptorName=)");
  if (st.ok() && n > 0)
    spdlog::info("socket activation: daemon.sock{} from systemd",
                 activated_control_fd_ >= 0 ? " and control.sock" : "");
  return st;
}

int Daemon::take_activated_control_fd() { return std::exchange(activated_control_fd_, -1); }

DaemonConfig Daemon::effective_config() const {
  std::lock_guard lock(effective_mu_);
  return effective_;
}

void Daemon::set_effective_config(DaemonConfig config) {
  std::lock_guard lock(effective_mu_);
  effective_ = std::move(config);
}

absl::StatusOr<std::vector<std::string>> Daemon::reload() {
  std::lock_guard lock(reload_mu_);
  notify_.reloading();
  absl::StatusOr<std::vector<std::string>> r =
      reload_hook_ ? reload_hook_()
                   : absl::FailedPreconditionError("nothing to reload (no configuration file)");
  if (r.ok()) {
    for (const auto& key : *r) spdlog::warn("reload: needs a restart: {}", key);
    spdlog::info("configuration reloaded");
    std::lock_guard elock(effective_mu_);
    reload_error_.clear();
  } else {
    spdlog::error("reload refused, the configuration is unchanged: {}",
                  std::string(r.status().message()));
    notify_.status("reload refused: " + std::string(r.status().message()));
    std::lock_guard elock(effective_mu_);
    reload_error_ = std::string(r.status().message());
  }
  notify_.ready();
  return r;
}

void Daemon::service_tick() {
  const auto now = std::chrono::steady_clock::now();
  if (const auto interval = notify_.watchdog_interval(); interval.count() > 0) {
    std::vector<ProgressWatch::Pool> all;
    for (const auto& p : pools()) all.push_back({p.name, p.scheduler});
    const std::string stuck = progress_.stuck_pool(all, now, interval);
    if (!stuck.empty()) {
      if (stuck != stuck_pool_) {
        spdlog::error(
            "pool '{}': every worker has been inside one step for over {} ms: no longer "
            "feeding the watchdog (systemd restarts the daemon)",
            stuck, interval.count() / 1000);
        notify_.status("pool '" + stuck + "' stuck: every worker inside one step");
      }
    } else if (now - last_watchdog_ >= interval / 2) {
      last_watchdog_ = now;
      notify_.watchdog();
    }
    stuck_pool_ = stuck;
    if (!stuck.empty()) return;
  }
  std::uint32_t workers = 0;
  const auto all = pools();
  for (const auto& p : all) workers += p.scheduler->worker_count();
  const auto t = totals();
  // Once nothing is in flight, submitted == completed + failed (scheduler.h).
  const std::uint64_t done = t.completed + t.failed;
  const std::uint64_t in_flight = t.submitted > done ? t.submitted - done : 0;
  std::string status = std::to_string(client_infos().size()) + " clients, " +
                       std::to_string(all.size()) + " pools, " + std::to_string(workers) +
                       " workers, " + std::to_string(in_flight) + " continuations in flight";
  {
    std::lock_guard lock(effective_mu_);
    if (!reload_error_.empty()) status += "; last reload refused: " + reload_error_;
  }
  notify_.status(status);
}

int Daemon::run() {
  // Both sockets listen (the control plane started before run()) and segments can be
  // made: systemd may start what depends on us.
  notify_.ready();
  service_tick();
  epoll_event events[64];
  for (;;) {
    // Draining plugin instances are reaped every 10 ms (their probes are cheap).
    const bool plugins_draining = plugins_->draining();
    const int timeout = !zombies_.empty() ? 1 : plugins_draining ? 10 : -1;
    const int n = ::epoll_wait(epoll_fd_, events, 64, timeout);
    if (n < 0 && errno != EINTR) {
      spdlog::error("epoll_wait: {}", std::strerror(errno));
      break;
    }
    bool stop = false;
    for (int i = 0; i < n; ++i) {
      const std::uint64_t key = events[i].data.u64;
      if (key == kListenKey) {
        on_accept();
      } else if (key == kSignalKey) {
        signalfd_siginfo si{};
        while (::read(signal_fd_, &si, sizeof(si)) == sizeof(si)) {
          if (si.ssi_signo == SIGHUP) {
            spdlog::info("SIGHUP: reloading the configuration");
            (void)reload();
          } else {
            spdlog::info("{} received: draining", strsignal(static_cast<int>(si.ssi_signo)));
            notify_.stopping();
            stop = true;
          }
        }
      } else if (key == kTimerKey) {
        std::uint64_t ticks;
        (void)!::read(timer_fd_, &ticks, sizeof(ticks));
        heartbeat();
        service_tick();
        sweep_connections();
      } else if (key == kEventKey) {
        std::uint64_t v;
        (void)!::read(event_fd_, &v, sizeof(v));
        flush_outbox();
        std::vector<pid_t> evict;
        {
          std::lock_guard lock(evict_mu_);
          evict.swap(evictions_);
        }
        for (pid_t pid : evict) {
          std::vector<int> fds;
          for (auto& [fd, c] : conns_) {
            if (c.cred.pid == pid) fds.push_back(fd);
          }
          for (int fd : fds) {
            send_farewell(fd, "evicted by the control plane");
            close_conn(fd, "evicted by the control plane");
          }
        }
        std::vector<Faulted> faulted;
        {
          std::lock_guard lock(evict_mu_);
          faulted.swap(faulted_);
        }
        for (const Faulted& f : faulted) {
          auto it = slot_conn_.find(f.slot);
          if (it == slot_conn_.end()) continue;  // gone already
          auto cit = conns_.find(it->second);
          if (cit == conns_.end() || cit->second.slot == nullptr || cit->second.slot->id != f.id)
            continue;
          const std::string why = "failed: " + f.reason;
          send_farewell(it->second, why);
          close_conn(it->second, why.c_str());
        }
        if (stop_requested_.load(std::memory_order_acquire)) stop = true;
      } else {
        const int fd = static_cast<int>(key);
        auto it = conns_.find(fd);
        if (it == conns_.end()) continue;
        if (events[i].events & EPOLLOUT) on_writable(it->second);
        it = conns_.find(fd);
        if (it != conns_.end() && (events[i].events & EPOLLIN)) on_readable(it->second);
        it = conns_.find(fd);
        if (it != conns_.end() && (events[i].events & (EPOLLHUP | EPOLLERR | EPOLLRDHUP))) {
          close_conn(fd, "hung up");
        }
      }
    }
    reclaim_zombies();
    if (plugins_draining) plugins_->reap();
    if (stop) break;
  }
  shutdown();
  return 0;
}

void Daemon::on_accept() {
  for (int i = 0; i < 256; ++i) {  // bounded: a connection storm cannot hold the loop
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      const int e = errno;
      if (e == EAGAIN || e == EWOULDBLOCK) return;
      if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) return pause_listener(e);
      if (e != EINTR && e != ECONNABORTED) spdlog::warn("accept: {}", std::strerror(e));
      continue;
    }
    Conn c;
    c.fd = fd;
    c.opened = std::chrono::steady_clock::now();
    socklen_t len = sizeof(c.cred);
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &c.cred, &len) != 0) {
      spdlog::warn("SO_PEERCRED: {}; refusing the connection", std::strerror(errno));
      ::close(fd);
      continue;
    }
    if (conns_.size() >= config_.max_connections) {
      refuse_connection(fd, c.cred,
                        "too many connections (max " + std::to_string(config_.max_connections) +
                            ", --max-connections)");
      continue;
    }
    std::uint32_t& mine = uid_conns_[c.cred.uid];
    if (mine >= config_.max_connections_per_uid) {
      refuse_connection(fd, c.cred,
                        "too many connections from uid " + std::to_string(c.cred.uid) + " (max " +
                            std::to_string(config_.max_connections_per_uid) +
                            ", --max-connections-per-uid)");
      continue;
    }
    ++mine;
    auto [it, fresh] = conns_.emplace(fd, std::move(c));
    watch(it->second, EPOLLIN | EPOLLRDHUP);
  }
}

void Daemon::refuse_connection(int fd, const ucred& cred, const std::string& why) {
  v1::DaemonMessage m;
  auto* r = m.mutable_refused();
  r->set_reason(why);
  r->set_daemon_protocol_version(shm::kProtocolVersion);
  r->set_daemon_layout_version(shm::kLayoutVersion);
  (void)v1::send_message(fd, m);  // best effort: a fresh socket has room for it
  ::close(fd);
  // One line per second at most: a flood of connections must not flood the log.
  ++refused_;
  const auto now = std::chrono::steady_clock::now();
  if (now - last_refuse_log_ >= std::chrono::seconds(1)) {
    spdlog::warn("refused a connection from pid {} uid {}: {} ({} refused since the last line)",
                 cred.pid, cred.uid, why, refused_);
    refused_ = 0;
    last_refuse_log_ = now;
  }
}

void Daemon::pause_listener(int err) {
  // Level-triggered, the listener would wake the loop again at once for a connection it
  // cannot take: leave it out of epoll until a descriptor may be free again.
  if (listen_paused_ || listen_fd_ < 0) return;
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, listen_fd_, nullptr);
  listen_paused_ = true;
  ++accept_errors_;
  const auto now = std::chrono::steady_clock::now();
  if (now - last_accept_log_ >= std::chrono::seconds(10)) {
    rlimit nofile{};
    ::getrlimit(RLIMIT_NOFILE, &nofile);
    spdlog::warn(
        "accept: {} ({} open connections, open-file limit {}): not accepting until a "
        "connection closes or {} ms pass ({} such pauses since the last line)",
        std::strerror(err), conns_.size(), nofile.rlim_cur, config_.heartbeat.count(),
        accept_errors_);
    accept_errors_ = 0;
    last_accept_log_ = now;
  }
}

void Daemon::resume_listener() {
  if (!listen_paused_ || listen_fd_ < 0) return;
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kListenKey;
  if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd_, &ev) == 0) listen_paused_ = false;
}

void Daemon::watch(Conn& c, std::uint32_t events) {
  if (c.events == events) return;
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = static_cast<std::uint64_t>(c.fd);
  ::epoll_ctl(epoll_fd_, c.events == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, c.fd, &ev);
  c.events = events;
}

void Daemon::sweep_connections() {
  resume_listener();
  const auto now = std::chrono::steady_clock::now();
  std::vector<int> late;
  for (const auto& [fd, c] : conns_) {
    if (c.slot == nullptr && now - c.opened >= config_.hello_timeout) late.push_back(fd);
  }
  if (late.empty()) return;
  std::string pids;
  for (std::size_t i = 0; i < late.size() && i < 8; ++i) {
    const auto& c = conns_[late[i]];
    pids +=
        (i ? ", " : "") + std::to_string(c.cred.pid) + " (uid " + std::to_string(c.cred.uid) + ")";
  }
  spdlog::warn("closing {} connection{} that sent no Hello within {} ms: pid {}{}", late.size(),
               late.size() == 1 ? "" : "s", config_.hello_timeout.count(), pids,
               late.size() > 8 ? ", ..." : "");
  for (int fd : late) close_conn(fd, "sent no Hello in time");
}

void Daemon::on_readable(Conn& c) {
  // A handler may close the connection, which frees `c`: keep the fd, and look again.
  const int fd = c.fd;
  for (int i = 0; i < 64; ++i) {  // bounded: one chatty client cannot hold the loop
    if (c.out_bytes >= config_.max_serial_bytes) {
      // It does not read its answers: read nothing more from it until it has caught up
      // (its own sends block meanwhile), so refusals cannot pile up either.
      watch(c, (c.events & ~std::uint32_t{EPOLLIN}) | EPOLLOUT);
      return;
    }
    v1::ClientMessage msg;
    int err = 0;
    std::vector<int> fds;
    const v1::RecvStatus got = v1::recv_message_fds(fd, &msg, &fds, &err);
    // Only PassFd carries a descriptor (one); any other is closed at once.
    int passed = -1;
    for (int f : fds) {
      if (got == v1::RecvStatus::kOk && msg.has_pass_fd() && passed < 0) {
        passed = f;
      } else {
        ::close(f);
      }
    }
    switch (got) {
      case v1::RecvStatus::kOk:
        break;
      case v1::RecvStatus::kWouldBlock:
        return;
      case v1::RecvStatus::kClosed:
        return close_conn(fd, "closed");
      case v1::RecvStatus::kError:
        return close_conn(fd, std::strerror(err));
      case v1::RecvStatus::kMalformed:
        return close_conn(fd, "sent a malformed message");
    }
    if (msg.has_hello()) {
      on_hello(c, msg.hello());
    } else if (msg.has_submit()) {
      on_submit(c, msg.submit());
    } else if (msg.has_lookup()) {
      on_lookup(c, msg.lookup());
    } else if (msg.has_pass_fd()) {
      on_pass_fd(c, msg.pass_fd(), passed);
    } else if (msg.has_close_fd()) {
      on_close_fd(c, msg.close_fd());
    } else if (msg.has_cancel()) {
      // No answer of its own: the continuation's Result says how it ended.
      if (c.slot != nullptr)
        ClientSource::of(*c.sched).cancel_serial(*c.slot, msg.cancel().tag(),
                                                 FrameCtl::kCancelByClient);
    } else {
      return close_conn(fd, "sent an empty message");
    }
    if (conns_.find(fd) == conns_.end()) return;
  }
}

void Daemon::on_writable(Conn& c) {
  if (!flush_conn(c)) return;
  std::uint32_t ev = c.events;
  if (c.out.empty()) ev &= ~std::uint32_t{EPOLLOUT};
  // Caught up (half the bound, so it does not flap): read its submissions again.
  if (c.out_bytes <= config_.max_serial_bytes / 2) ev |= EPOLLIN;
  watch(c, ev);
}

bool Daemon::send_to(Conn& c, const v1::DaemonMessage& m, bool job) {
  Conn::Packet p;
  p.job = job;
  if (!m.SerializeToString(&p.bytes) || p.bytes.size() > v1::kMaxPacket) {
    // Only a result can be this large (an echo of a full packet): say so instead.
    v1::DaemonMessage small;
    auto* r = small.mutable_result();
    r->set_tag(m.result().tag());
    r->set_status(to_proto(Status::kResultTooLarge));
    r->set_error(error_text(Status::kResultTooLarge, ErrorDetail::kNone));
    p.bytes = small.SerializeAsString();
  }
  c.bytes += p.bytes.size();
  c.out_bytes += p.bytes.size();
  serial_bytes_ += p.bytes.size();
  c.out.push_back(std::move(p));
  if (c.out.size() > 1) return true;  // behind others: EPOLLOUT is armed already
  if (!flush_conn(c)) return false;
  if (!c.out.empty()) watch(c, c.events | EPOLLOUT);
  return true;
}

bool Daemon::flush_conn(Conn& c) {
  while (!c.out.empty()) {
    Conn::Packet& p = c.out.front();
    // One packet per send on SOCK_SEQPACKET; it goes whole or not at all.
    const ssize_t n = ::send(c.fd, p.bytes.data(), p.bytes.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
      const int e = errno;
      close_conn(c.fd, e == EPIPE || e == ECONNRESET ? "hung up" : std::strerror(e));
      return false;
    }
    c.bytes -= p.bytes.size();
    c.out_bytes -= p.bytes.size();
    serial_bytes_ -= p.bytes.size();
    if (p.job) --c.serial_inflight;  // answered: only now may it make room for another
    c.out.pop_front();
  }
  return true;
}

void Daemon::on_hello(Conn& c, const v1::Hello& hello) {
  auto refuse = [&](const std::string& why) {
    v1::DaemonMessage m;
    auto* r = m.mutable_refused();
    r->set_reason(why);
    r->set_daemon_protocol_version(shm::kProtocolVersion);
    r->set_daemon_layout_version(shm::kLayoutVersion);
    v1::send_message(c.fd, m);
    spdlog::warn("refused pid {} uid {}: {}", c.cred.pid, c.cred.uid, why);
    close_conn(c.fd, "refused");
  };
  if (c.slot != nullptr) return refuse("a second Hello on one connection");
  if (hello.protocol_version() != shm::kProtocolVersion ||
      hello.layout_version() != shm::kLayoutVersion) {
    return refuse(
        "version mismatch: client speaks protocol " + std::to_string(hello.protocol_version()) +
        " layout " + std::to_string(hello.layout_version()) + ", daemon protocol " +
        std::to_string(shm::kProtocolVersion) + " layout " + std::to_string(shm::kLayoutVersion));
  }
  const std::string pool_name = hello.pool().empty() ? "default" : hello.pool();
  // Under pools_mu_ until the client is in infos_: DeletePool cannot miss it.
  std::unique_lock pools_lock(pools_mu_);
  auto pit = std::find_if(pools_.begin(), pools_.end(),
                          [&](const PoolInfo& p) { return p.name == pool_name; });
  if (pit == pools_.end()) {
    std::string known;
    for (const auto& p : pools_) known += (known.empty() ? "'" : ", '") + p.name + "'";
    pools_lock.unlock();
    return refuse("unknown pool '" + pool_name + "' (the pools are " + known + ")");
  }
  const PoolInfo pool = *pit;
  // slot_conn_ holds the registered connections (the control plane's slot is not one).
  ClientSlot* slot = slot_conn_.size() < config_.max_clients ? clients_.reserve() : nullptr;
  if (slot == nullptr) pools_lock.unlock();
  if (slot == nullptr)
    return refuse("too many clients (max " + std::to_string(config_.max_clients) + ")");
  slot->id = next_client_id_++;
  slot->pid = c.cred.pid;
  slot->uid = c.cred.uid;
  slot->gid = c.cred.gid;
  slot->name = hello.client_name();
  slot->pool = pool.id;
  int seg_fd = -1;
  if (hello.want_segment()) {
    const shm::SegmentRequest r =
        clamp_segment_request(hello.segment(), config_.segment_defaults, config_.segment_max);
    shm::SegmentGeometry g;
    if (!shm::SegmentGeometry::compute(r, &g)) {
      clients_.reclaim(*slot);
      pools_lock.unlock();
      return refuse(
          "bad segment request: ring capacity must be a power of two, frames at most the ring "
          "capacity, buffer blocks a multiple of 64 bytes");
    }
    if (g.size > config_.max_segment_bytes) {
      clients_.reclaim(*slot);
      pools_lock.unlock();
      return refuse("segment of " + std::to_string(g.size) + " bytes asked for; the limit is " +
                    std::to_string(config_.max_segment_bytes) + " (insideoutd --max-segment-mib)");
    }
    std::string err;
    slot->segment = shm::Segment::create(g, static_cast<std::uint32_t>(::getpid()), slot->id,
                                         start_ns_, generation_, &err);
    if (!slot->segment.valid()) {
      clients_.reclaim(*slot);
      pools_lock.unlock();
      return refuse("could not create the segment: " + err);
    }
    slot->geom = g;
    slot->has_segment = true;
    seg_fd = slot->segment.fd();
    if (!ClientSource::of(*pool.scheduler).attach_client(*slot, &err)) {
      clients_.reclaim(*slot);
      pools_lock.unlock();
      return refuse("could not make the client's bell: " + err);
    }
  }
  slot->max_inflight = config_.max_inflight;
  slot->max_timers = config_.max_timers;
  slot->max_fds = config_.max_client_fds;
  clients_.activate(*slot);
  c.slot = slot;
  c.sched = pool.scheduler;
  slot_conn_[slot->index] = c.fd;
  {
    std::lock_guard lock(info_mu_);
    infos_[slot->id] = ClientInfo{slot->id,  slot->index, slot->pid, slot->uid,
                                  slot->gid, slot->name,  pool_name, slot->has_segment};
  }
  pools_lock.unlock();

  v1::DaemonMessage m;
  auto* w = m.mutable_welcome();
  w->set_protocol_version(shm::kProtocolVersion);
  w->set_layout_version(shm::kLayoutVersion);
  w->set_client_id(slot->id);
  w->set_segment_size(slot->has_segment ? slot->geom.size : 0);
  w->set_daemon_pid(static_cast<std::uint32_t>(::getpid()));
  w->set_daemon_version(kVersion);
  w->set_workers(pool.scheduler->worker_count());
  for (const auto& [id, def] : registry_.list()) {
    auto* f = w->add_functions();
    f->set_name(def.name);
    f->set_id(id);
    f->set_needs_buffer(def.needs_buffer);
    f->set_help(def.help);
    f->set_max_arg(def.max_arg);
  }
  w->set_lookup(true);
  w->set_generation(generation_);
  w->set_max_client_fds(config_.max_client_fds);
  // The segment, the pool's bell page (mapped read-only) and the client's bell eventfd.
  const int fds[] = {seg_fd, pool.scheduler->bell_fd(), slot->bell_fd};
  if (const int err = v1::send_message(
          c.fd, m, seg_fd >= 0 ? std::span<const int>(fds) : std::span<const int>());
      err != 0) {
    spdlog::warn("welcome to pid {}: {}", c.cred.pid, std::strerror(err));
    return close_conn(c.fd, "could not be welcomed");
  }
  // The client holds its own descriptor now; the daemon keeps only the mapping.
  slot->segment.close_fd();
  spdlog::info("client {} registered to pool '{}': pid {} uid {} gid {}{}{}", slot->id, pool_name,
               c.cred.pid, c.cred.uid, c.cred.gid, slot->name.empty() ? "" : " name " + slot->name,
               slot->has_segment ? ", segment " + std::to_string(slot->geom.size) + " bytes"
                                 : ", serialized only");
}

void Daemon::on_submit(Conn& c, const v1::Continuation& cont) {
  // Answers to refused submissions are queued like results (they count in the
  // connection's bytes, and a connection over its bound is no longer read).
  auto answer = [&](Status st, ErrorDetail d, const std::string& why) {
    v1::DaemonMessage m;
    auto* r = m.mutable_result();
    r->set_tag(cont.tag());
    r->set_status(to_proto(st));
    r->set_error(why.empty() ? error_text(st, d) : why);
    send_to(c, m, false);
  };
  if (c.slot == nullptr) {
    const int fd = c.fd;  // answer() may close the connection, and `c` with it
    answer(Status::kInvalidArgument, ErrorDetail::kNone, "send Hello first");
    if (conns_.count(fd) != 0) close_conn(fd, "submitted before Hello");
    return;
  }
  const auto id = registry_.id_of(cont.function());
  if (!id)
    return answer(Status::kUnknownFunction, ErrorDetail::kUnknownFunction,
                  registry_.unknown_message(cont.function()));
  {
    FunctionRegistry::ReadGuard guard(registry_);
    const FunctionDef* def = registry_.find(*id);
    if (def == nullptr)  // unloaded just now
      return answer(Status::kUnknownFunction, ErrorDetail::kUnknownFunction,
                    registry_.unknown_message(cont.function()));
    if (def->needs_buffer && cont.env().empty())
      return answer(Status::kInvalidArgument, ErrorDetail::kBufferRequired, "");
  }
  const std::uint64_t env = cont.env().size();
  std::string full;
  if (c.serial_inflight >= config_.max_serial_inflight) {
    full = std::to_string(c.serial_inflight) + " serialized continuations in flight (max " +
           std::to_string(config_.max_serial_inflight) + ")";
  } else if (c.bytes + env > config_.max_serial_bytes) {
    full = std::to_string(c.bytes) + " bytes of serialized continuations and unread answers " +
           "on this connection (max " + std::to_string(config_.max_serial_bytes) + ")";
  } else if (serial_bytes_ + env > config_.max_serial_bytes_total) {
    full = std::to_string(serial_bytes_) +
           " bytes of serialized continuations in the daemon (max " +
           std::to_string(config_.max_serial_bytes_total) + ")";
  }
  if (!full.empty()) {
    c.slot->backpressure.fetch_add(1, std::memory_order_relaxed);
    return answer(Status::kBackpressure, ErrorDetail::kNone, "backpressure: " + full);
  }
  ClientSlot& s = *c.slot;
  const std::uint32_t job = s.new_job(cont.tag(), cont.env(), cont.deadline_ns());
  Status st;
  ErrorDetail d;
  bool accepted;
  {
    // submit_serial() reads the function's definition: not reclaimed meanwhile.
    FunctionRegistry::ReadGuard guard(registry_);
    accepted = ClientSource::of(*c.sched).submit_serial(s, job, *id, cont.arg(), &st, &d);
  }
  if (!accepted) {
    {
      std::lock_guard lock(s.jobs_mu);
      s.jobs[job]->in_flight = false;
      s.free_jobs.push_back(job);
    }
    if (d == ErrorDetail::kArgumentOutOfRange) {
      return answer(st, d,
                    error_text(st, d) + " (" + std::to_string(cont.arg()) + "; '" +
                        cont.function() + "' takes at most " +
                        std::to_string(registry_.find(*id)->max_arg) + ")");
    }
    return answer(st, d,
                  st == Status::kDraining
                      ? "draining: insideoutd takes no work until `insideoutctl resume`"
                  : st == Status::kUnknownFunction ? registry_.unknown_message(cont.function())
                                                   : "");
  }
  ++c.serial_inflight;
  c.bytes += env;
  serial_bytes_ += env;
}

void Daemon::on_lookup(Conn& c, const v1::Lookup& lookup) {
  if (c.slot == nullptr) return close_conn(c.fd, "looked up a function before Hello");
  v1::DaemonMessage m;
  auto* r = m.mutable_lookup_result();
  r->set_tag(lookup.tag());
  // Bounded: names are at most a packet, the table kCapacity names.
  if (const auto id = registry_.id_of(lookup.name())) {
    FunctionRegistry::ReadGuard guard(registry_);
    if (const FunctionDef* def = registry_.find(*id)) {
      r->set_found(true);
      auto* f = r->mutable_function();
      f->set_name(def->name);
      f->set_id(*id);
      f->set_needs_buffer(def->needs_buffer);
      f->set_help(def->help);
      f->set_max_arg(def->max_arg);
    }
  }
  if (!r->found()) r->set_suggestion(registry_.closest(lookup.name()));
  send_to(c, m, false);
}

void Daemon::on_pass_fd(Conn& c, const v1::PassFd& pass, int fd) {
  if (c.slot == nullptr) {
    if (fd >= 0) ::close(fd);
    return close_conn(c.fd, "passed a descriptor before Hello");
  }
  ClientSlot& s = *c.slot;
  v1::DaemonMessage m;
  auto* r = m.mutable_fd_result();
  r->set_tag(pass.tag());
  std::string why;
  std::uint32_t id = 0;
  if (fd < 0) {
    why = "PassFd carried no descriptor (send one as SCM_RIGHTS with the packet)";
  } else {
    // Closed descriptors' numbers are held while a continuation may still use them; with
    // none in flight (only the connection's reference) they can go.
    if (s.refs.load(std::memory_order_acquire) == 1) s.fds.reap();
    if (s.fds.add(fd, s.max_fds, &id, &why)) r->set_id(id);
  }
  if (!why.empty()) {
    r->set_error(why);
    spdlog::debug("client {}: descriptor refused: {}", s.id, why);
  }
  send_to(c, m, false);
}

void Daemon::on_close_fd(Conn& c, const v1::CloseFd& req) {
  if (c.slot == nullptr) return close_conn(c.fd, "closed a descriptor before Hello");
  ClientSlot& s = *c.slot;
  v1::DaemonMessage m;
  auto* r = m.mutable_fd_result();
  r->set_tag(req.tag());
  r->set_id(req.id());
  const int fd = s.fds.get(req.id());
  if (fd < 0) {
    r->set_error("no descriptor with id " + std::to_string(req.id()));
  } else {
    // Waits on it fail (EBADF) before its number is retired, and once more after, for a
    // continuation that parked on it in between.
    for (const auto& p : pools()) p.scheduler->events().fail_fd(fd);
    s.fds.remove(req.id());
    for (const auto& p : pools()) p.scheduler->events().fail_fd(fd);
  }
  send_to(c, m, false);
}

std::function<bool()> Daemon::plugin_drained_probe(std::uint8_t slot) {
  // Every pool's workers pass a quiescent point after the registry swap: a worker that
  // read the old definition has then counted its task in plugin_live().
  std::vector<std::pair<std::shared_ptr<Scheduler>, std::vector<std::uint64_t>>> snap;
  for (const auto& p : pools()) {
    snap.emplace_back(p.scheduler, p.scheduler->epochs());
    p.scheduler->wake_all();  // parked workers pass a quiescent point on waking
  }
  return [this, snap = std::move(snap), slot] {
    for (const auto& [sched, epochs] : snap) {
      if (!sched->quiescent_since(epochs)) return false;
    }
    return plugin_live(slot) == 0;  // every pool, deleted ones too
  };
}

void Daemon::flush_outbox() {
  std::vector<Outgoing> done;
  {
    std::lock_guard lock(outbox_mu_);
    done.swap(outbox_);
  }
  for (auto& out : done) {
    auto it = slot_conn_.find(out.slot);
    if (it == slot_conn_.end()) continue;  // the client left; its result goes nowhere
    auto cit = conns_.find(it->second);
    if (cit == conns_.end() || cit->second.slot == nullptr || cit->second.slot->id != out.client_id)
      continue;
    Conn& c = cit->second;
    // The environment is gone with the job; the answer is counted until it is sent.
    c.bytes -= out.env_bytes;
    serial_bytes_ -= out.env_bytes;
    send_to(c, out.msg, true);
  }
}

void Daemon::send_farewell(int fd, const std::string& why) {
  // Best effort: a client that does not read it still sees the hang-up.
  v1::DaemonMessage m;
  m.mutable_goodbye()->set_reason("insideoutd disconnected this client: " + why);
  m.mutable_goodbye()->set_disconnected(true);
  (void)v1::send_message(fd, m);
}

void Daemon::close_conn(int fd, const char* why) {
  auto it = conns_.find(fd);
  if (it == conns_.end()) return;
  Conn c = std::move(it->second);
  conns_.erase(it);
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
  ::close(fd);
  serial_bytes_ -= c.bytes;
  if (!c.out.empty())
    spdlog::debug("connection fd {} closed with {} answers unsent", fd, c.out.size());
  if (auto u = uid_conns_.find(c.cred.uid); u != uid_conns_.end() && --u->second == 0)
    uid_conns_.erase(u);
  resume_listener();  // a descriptor is free again
  if (c.slot != nullptr) {
    ClientSlot& s = *c.slot;
    spdlog::info(
        "client {} (pid {}) {}: {} accepted, {} completed, {} failed, {} rejected, {} unknown "
        "functions",
        s.id, s.pid, why, s.accepted.load(), s.completed.load(), s.failed.load(), s.rejected.load(),
        s.rejected_function.load());
    slot_conn_.erase(s.index);
    {
      std::lock_guard lock(info_mu_);
      infos_.erase(s.id);
    }
    // Stop reading its rings, cancel what it has parked, drop the connection's reference;
    // the slot is reclaimed once its last continuation has completed.
    s.state.store(SlotState::kClosing, std::memory_order_seq_cst);
    Scheduler& home = c.sched ? *c.sched : *scheduler_;
    ClientSource::of(home).client_closing(s);
    // Its continuations may have moved to other pools and parked there.
    for (const auto& p : pools()) {
      if (p.scheduler.get() != &home)
        p.scheduler->cancel_parked_if([&](const Task& t) { return t.client == s.index; });
    }
    // Its descriptors: its waits are cancelled above, its files released now; their
    // numbers are closed when the slot is reclaimed (client_fds.h).
    for (int f : s.fds.live()) {
      for (const auto& p : pools()) p.scheduler->events().fail_fd(f);
    }
    s.fds.remove_all();
    clients_.release(s);
  }
}

void Daemon::heartbeat() {
  const std::uint64_t now = now_ns(CLOCK_MONOTONIC);
  const std::uint32_t hw = clients_.high_water();
  for (std::uint32_t i = 0; i < hw; ++i) {
    ClientSlot& s = clients_.slot(i);
    if (s.state.load(std::memory_order_acquire) != SlotState::kActive || !s.has_segment) continue;
    // Relaxed: liveness and statistics only.
    s.segment.header()->heartbeat_ns.store(now, std::memory_order_relaxed);
    shm::ClientCounters* k = s.segment.counters();
    k->accepted.store(s.accepted.load(std::memory_order_relaxed), std::memory_order_relaxed);
    k->completed.store(s.completed.load(std::memory_order_relaxed), std::memory_order_relaxed);
    k->failed.store(s.failed.load(std::memory_order_relaxed), std::memory_order_relaxed);
    k->rejected_invalid.store(s.rejected.load(std::memory_order_relaxed),
                              std::memory_order_relaxed);
    k->rejected_function.store(s.rejected_function.load(std::memory_order_relaxed),
                               std::memory_order_relaxed);
    k->backpressure.store(s.backpressure.load(std::memory_order_relaxed),
                          std::memory_order_relaxed);
  }
}

void Daemon::reclaim_zombies() {
  const std::uint32_t hw = clients_.high_water();
  bool fresh = false;
  for (std::uint32_t i = 0; i < hw; ++i) {
    ClientSlot& s = clients_.slot(i);
    if (s.state.load(std::memory_order_seq_cst) != SlotState::kZombie) continue;
    bool known = false;
    for (const auto& z : zombies_) known |= z.slot == &s;
    if (!known) {
      Zombie z{&s, {}};
      for (const auto& p : pools()) z.epochs.emplace_back(p.scheduler, p.scheduler->epochs());
      zombies_.push_back(std::move(z));
      fresh = true;
    }
  }
  if (fresh) {
    for (const auto& p : pools())
      p.scheduler->wake_all();  // parked workers pass a quiescent point on waking
  }
  for (auto it = zombies_.begin(); it != zombies_.end();) {
    bool quiet = true;
    for (const auto& [sched, epochs] : it->epochs) quiet = quiet && sched->quiescent_since(epochs);
    if (quiet) {
      spdlog::debug("client {}: segment unmapped", it->slot->id);
      clients_.reclaim(*it->slot);
      it = zombies_.erase(it);
    } else {
      ++it;
    }
  }
}

void Daemon::shutdown() {
  if (shutdown_hook_) shutdown_hook_();
  // No new clients; existing ones are told the daemon is draining.
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, listen_fd_, nullptr);
  ::close(listen_fd_);
  listen_fd_ = -1;
  // A socket systemd passed stays: it queues connections for the next daemon.
  if (!activated_) ::unlink(socket_path().c_str());
  const std::uint32_t hw = clients_.high_water();
  for (std::uint32_t i = 0; i < hw; ++i) {
    ClientSlot& s = clients_.slot(i);
    if (s.state.load(std::memory_order_acquire) == SlotState::kActive && s.has_segment) {
      s.segment.header()->state.store(static_cast<std::uint32_t>(shm::SegmentState::kDraining),
                                      std::memory_order_release);
    }
  }
  // Every pool drains at once (their deadlines overlap), the default one last; test.hang
  // steps return once the drain has timed out.
  const auto all = pools();
  for (const auto& p : all) p.scheduler->begin_drain(/*shutdown=*/true);
  bool drained = true;
  for (auto it = all.rbegin(); it != all.rend(); ++it)
    drained = it->scheduler->drain(config_.drain_timeout) && drained;
  if (!drained)
    spdlog::warn("drain timed out after {} ms; stopping with work in flight",
                 config_.drain_timeout.count());
  release_hang.store(true, std::memory_order_release);  // pairs with test_hang()'s load
  flush_outbox();
  // Goodbye to everyone, then let their slots go.
  std::vector<int> fds;
  for (auto& [fd, c] : conns_) fds.push_back(fd);
  for (int fd : fds) {
    auto& c = conns_[fd];
    // What is still queued goes first if the socket takes it; then Goodbye.
    if (!flush_conn(c)) continue;
    if (!c.out.empty())
      spdlog::warn("client pid {}: {} answers not read before shutdown", c.cred.pid, c.out.size());
    v1::DaemonMessage m;
    m.mutable_goodbye()->set_reason("insideoutd is shutting down");
    v1::send_message(fd, m);
    if (c.slot != nullptr && c.slot->has_segment) {
      c.slot->segment.header()->state.store(static_cast<std::uint32_t>(shm::SegmentState::kClosed),
                                            std::memory_order_release);
    }
    close_conn(fd, "disconnected at shutdown");
  }
  for (const auto& p : all) p.scheduler->stop();
  plugins_->shutdown();  // no worker runs plugin code any more
  // Workers are gone: every zombie may be unmapped now.
  for (std::uint32_t i = 0; i < clients_.high_water(); ++i) {
    ClientSlot& s = clients_.slot(i);
    if (s.state.load(std::memory_order_acquire) != SlotState::kFree) clients_.reclaim(s);
  }
  zombies_.clear();
  // Every pool's counts, deleted ones' included (the definitions: scheduler.h).
  const SchedulerTotals t = totals();
  spdlog::info(
      "stopped: {} submitted ({} accepted, {} rejected, {} refused while drained), {} completed, "
      "{} failed, {} steps, {} steals",
      t.submitted, t.accepted, t.rejected, t.refused, t.completed, t.failed, t.steps, t.steals);
  ::unlink((runtime_dir_ + "/" + shm::kLockFileName).c_str());
}

// ---- for the control plane ---------------------------------------------------------

std::vector<Daemon::ClientInfo> Daemon::client_infos() const {
  std::lock_guard lock(info_mu_);
  std::vector<ClientInfo> out;
  out.reserve(infos_.size());
  for (const auto& [id, info] : infos_) out.push_back(info);
  return out;
}

std::uint32_t Daemon::evict(pid_t pid) {
  std::uint32_t n = 0;
  {
    std::lock_guard lock(info_mu_);
    for (const auto& [id, info] : infos_) n += info.pid == pid;
  }
  if (n == 0) return 0;
  {
    std::lock_guard lock(evict_mu_);
    evictions_.push_back(pid);
  }
  const std::uint64_t one = 1;
  (void)!::write(event_fd_, &one, sizeof(one));
  return n;
}

absl::StatusOr<std::uint32_t> Daemon::cancel(std::uint32_t client_id,
                                             std::optional<std::uint32_t> frame_offset) {
  const std::string unknown =
      "no client with id " + std::to_string(client_id) + " (insideoutctl clients lists them)";
  std::string pool_name;
  {
    std::lock_guard lock(info_mu_);
    auto it = infos_.find(client_id);
    if (it == infos_.end()) return absl::NotFoundError(unknown);
    pool_name = it->second.pool;
  }
  // pools_mu_ is taken before info_mu_ elsewhere (registration): not inside it.
  const std::int64_t pid = pool_id(pool_name);
  std::shared_ptr<Scheduler> sched = pid < 0 ? nullptr : find_pool(static_cast<std::uint32_t>(pid));
  if (sched == nullptr) return absl::NotFoundError(unknown);
  // While its info is listed the slot is this client's (close_conn() removes it first).
  std::lock_guard lock(info_mu_);
  auto it = infos_.find(client_id);
  if (it == infos_.end()) return absl::NotFoundError(unknown);
  ClientSlot& s = clients_.slot(it->second.slot);
  if (!s.has_segment) {
    return absl::FailedPreconditionError("client " + std::to_string(client_id) +
                                         " has no segment: serialized calls are not cancellable");
  }
  ClientSource& src = ClientSource::of(*sched);
  if (!frame_offset) return src.cancel_all(s, FrameCtl::kCancelByOperator);
  if (!s.geom.frame_offset_valid(*frame_offset)) {
    return absl::InvalidArgumentError("offset " + std::to_string(*frame_offset) +
                                      " is no frame of client " + std::to_string(client_id) +
                                      " (frames lie at " + std::to_string(s.geom.frames_off) +
                                      " + 64 * i, i < " + std::to_string(s.geom.frame_count) + ")");
  }
  return src.cancel_frame(s, s.frame_index(*frame_offset), FrameCtl::kCancelByOperator) ? 1u : 0u;
}

ClientSlot* Daemon::open_local_client(std::string name,
                                      std::function<void(ClientSlot&, std::uint32_t)> sink) {
  if (local_slot_ != nullptr) return local_slot_;
  ClientSlot* slot = clients_.reserve();
  if (slot == nullptr) return nullptr;
  slot->id = next_client_id_++;
  slot->pid = ::getpid();
  slot->uid = ::getuid();
  slot->gid = ::getgid();
  slot->name = std::move(name);
  slot->pool = 0;
  local_sink_ = std::move(sink);
  clients_.activate(*slot);  // no segment: workers never look at its rings
  local_slot_ = slot;
  return slot;
}

}  // namespace insideout::daemon
