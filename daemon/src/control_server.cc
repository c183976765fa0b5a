// The control plane's server: control.sock (an accept thread that reads each peer's
// credentials before gRPC sees the connection), the gRPC server, and the counters area
// $INSIDEOUT_RUNTIME_DIR/stats refreshed by the publish thread. The service's handlers
// are in control.cc.
#include <fcntl.h>
#include <grp.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/server_posix.h>
#include <poll.h>
#include <sched.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <future>
#include <map>
#include <optional>
#include <sstream>
#include <vector>

#include "config.h"
#include "control.h"
#include "control_service.h"
#include "daemon.h"
#include "engine.h"
#include "insideout/shm/layout.h"
#include "insideout/shm/stats_area.h"
#include "runtime_dir.h"
#include "unix_listener.h"

namespace insideout::daemon {
namespace {

constexpr const char* kControlSocketName = "control.sock";

std::uint64_t realtime_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000u +
         static_cast<std::uint64_t>(ts.tv_nsec);
}

}  // namespace

// ---- the server ---------------------------------------------------------------------

ControlServer::ControlServer(Daemon& daemon) : daemon_(daemon) {}

ControlServer::~ControlServer() { stop(); }

std::string ControlServer::socket_path() const {
  return daemon_.runtime_dir() + "/" + kControlSocketName;
}
std::string ControlServer::stats_path() const {
  return daemon_.runtime_dir() + "/" + shm::kStatsFileName;
}

absl::Status ControlServer::start() {
  const auto& cfg = daemon_.config();
  if (!cfg.admin_group.empty()) {
    auto g = lookup_group(cfg.admin_group);
    if (!g) return absl::InvalidArgumentError("unknown admin group '" + cfg.admin_group + "'");
    admin_gid_ = *g;
  }
  if (!cfg.client_group.empty()) {
    auto g = lookup_group(cfg.client_group);
    if (!g) return absl::InvalidArgumentError("unknown client group '" + cfg.client_group + "'");
    client_gid_ = *g;
  }

  // The counters area.
  const std::string sp = stats_path();
  // A stale area of a daemon that died is ours to replace; O_EXCL (with O_CREAT) never
  // follows a link, so the file opened is the one made here.
  if (auto st = remove_stale(sp, S_IFREG); !st.ok()) return st;
  stats_fd_ = ::open(sp.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0640);
  if (stats_fd_ < 0) return absl::InternalError("creating " + sp + ": " + std::strerror(errno));
  ::fchmod(stats_fd_, 0640);
  if (client_gid_ != static_cast<gid_t>(-1))
    (void)!::fchown(stats_fd_, static_cast<uid_t>(-1), client_gid_);
  if (::ftruncate(stats_fd_, sizeof(shm::StatsArea)) != 0) {
    return absl::InternalError("sizing " + sp + ": " + std::strerror(errno));
  }
  void* m =
      ::mmap(nullptr, sizeof(shm::StatsArea), PROT_READ | PROT_WRITE, MAP_SHARED, stats_fd_, 0);
  if (m == MAP_FAILED) return absl::InternalError("mapping " + sp + ": " + std::strerror(errno));
  stats_ = static_cast<shm::StatsArea*>(m);  // zero-filled by ftruncate
  stats_->header.magic = shm::kStatsMagic;
  stats_->header.max_workers = shm::kStatsMaxWorkers;
  stats_->header.pid = static_cast<std::uint32_t>(::getpid());
  stats_->header.start_realtime_ns =
      realtime_ns() -
      static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                     std::chrono::steady_clock::now() - daemon_.started())
                                     .count());
  publish_once();
  // V1: pairs with V2 in readers (insideoutctl): the area is initialised.
  stats_->header.version.store(shm::kStatsLayoutVersion, std::memory_order_release);

  // The socket: ours, so that SO_PEERCRED can be read for each connection.
  // The socket: ours, so that SO_PEERCRED can be read for each connection; or the one
  // systemd passed (socket activation), whose mode and group its unit sets.
  const std::string path = socket_path();
  listen_fd_ = daemon_.take_activated_control_fd();
  activated_ = listen_fd_ >= 0;
  if (!activated_) {
    auto fd = listen_unix(path, SOCK_STREAM, cfg.socket_mode, 64);
    if (!fd.ok()) return fd.status();
    listen_fd_ = *fd;
    ::chmod(path.c_str(), cfg.socket_mode);
    if (client_gid_ != static_cast<gid_t>(-1))
      (void)!::chown(path.c_str(), static_cast<uid_t>(-1), client_gid_);
  }
  stop_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (stop_fd_ < 0) return absl::InternalError(std::string("eventfd: ") + std::strerror(errno));

  service_ = make_service(*this, daemon_);
  open_local_client(*service_);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.RegisterService(as_grpc_service(*service_));
  server_ = builder.BuildAndStart();
  if (!server_) return absl::InternalError("could not start the gRPC server");
  if (auto* h = server_->GetHealthCheckService()) {
    h->SetServingStatus(true);
    h->SetServingStatus("insideout.v1.Scheduler", true);
  }
  accept_thread_ = std::thread([this] { accept_loop(); });
  publish_thread_ = std::thread([this] { publish_loop(); });
  spdlog::info("control plane on {} (mode {:o}{}{}), counters in {}", path, cfg.socket_mode,
               cfg.admin_group.empty() ? "" : ", admin group " + cfg.admin_group,
               cfg.client_group.empty() ? "" : ", client group " + cfg.client_group, sp);
  return absl::OkStatus();
}

absl::Status ControlServer::apply_pools(const DaemonConfig& next, const DaemonConfig& old) {
  return service_apply_pools(*service_, next, old);
}

void ControlServer::stop() {
  if (stopped_) return;
  stopped_ = true;
  stopping_.store(true, std::memory_order_relaxed);
  if (service_) service_stopping(*service_);
  if (stop_fd_ >= 0) {
    const std::uint64_t one = 1;
    (void)!::write(stop_fd_, &one, sizeof(one));
  }
  if (accept_thread_.joinable()) accept_thread_.join();
  if (publish_thread_.joinable()) publish_thread_.join();
  if (listen_fd_ >= 0) {
    ::close(listen_fd_);
    listen_fd_ = -1;
    if (!activated_) ::unlink(socket_path().c_str());
  }
  if (server_) {
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    server_->Wait();
  }
  if (stats_ != nullptr) {
    ::munmap(stats_, sizeof(shm::StatsArea));
    stats_ = nullptr;
    ::unlink(stats_path().c_str());
  }
  if (stats_fd_ >= 0) ::close(stats_fd_);
  if (stop_fd_ >= 0) ::close(stop_fd_);
  stats_fd_ = stop_fd_ = -1;
}

void ControlServer::accept_loop() {
  pthread_setname_np(pthread_self(), "io-ctl-accept");
  for (;;) {
    pollfd p[2] = {{listen_fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
    if (::poll(p, 2, -1) < 0 && errno != EINTR) return;
    if (p[1].revents != 0 || stopping_.load(std::memory_order_relaxed)) return;
    if (p[0].revents == 0) continue;
    for (;;) {
      const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (fd < 0) break;
      ucred cred{};
      socklen_t len = sizeof(cred);
      if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
        spdlog::warn("control: SO_PEERCRED: {}; refusing the connection", std::strerror(errno));
        ::close(fd);
        continue;
      }
      PeerCred pc{cred.pid, cred.uid, cred.gid, {}, true};
      if (!peer_groups(fd, &pc.groups)) {
        spdlog::warn("control: SO_PEERGROUPS: {}; refusing the connection", std::strerror(errno));
        ::close(fd);
        continue;
      }
      if (!may_read(pc)) {
        spdlog::warn("control: refused pid {} uid {}: not in the client group", cred.pid, cred.uid);
        ::close(fd);
        continue;
      }
      {
        // Recorded before gRPC sees the descriptor, so every call on it finds its peer.
        std::lock_guard lock(peers_mu_);
        peers_[fd] = pc;
      }
      spdlog::debug("control: connection fd {} from pid {} uid {} gid {}", fd, cred.pid, cred.uid,
                    cred.gid);
      grpc::AddInsecureChannelFromFd(server_.get(), fd);  // gRPC owns it now
    }
  }
}

PeerCred ControlServer::peer(const std::string& grpc_peer) const {
  // "fd:N" for channels added from a descriptor.
  const auto pos = grpc_peer.rfind("fd:");
  if (pos == std::string::npos) return {};
  const int fd = std::atoi(grpc_peer.c_str() + pos + 3);
  std::lock_guard lock(peers_mu_);
  auto it = peers_.find(fd);
  return it == peers_.end() ? PeerCred{} : it->second;
}

bool ControlServer::may_admin(const PeerCred& p) const {
  if (!p.known) return false;
  return p.uid == 0 || p.uid == ::geteuid() || in_group(p, admin_gid_);
}

bool ControlServer::may_read(const PeerCred& p) const {
  if (!p.known) return false;
  if (client_gid_ == static_cast<gid_t>(-1)) return true;  // the socket's mode decides
  return may_admin(p) || in_group(p, client_gid_);
}

void ControlServer::publish_loop() {
  pthread_setname_np(pthread_self(), "io-ctl-stats");
  const int ms = static_cast<int>(daemon_.config().stats_interval.count());
  for (;;) {
    pollfd p{stop_fd_, POLLIN, 0};
    ::poll(&p, 1, std::max(ms, 1));
    if (stopping_.load(std::memory_order_relaxed)) return;
    publish_once();
  }
}

void ControlServer::publish_once() {
  // Relaxed stores throughout: independent statistics (see stats_area.h).
  constexpr auto r = std::memory_order_relaxed;
  // Every pool: totals summed, workers listed pool after pool (default first).
  const auto pools = daemon_.pools();
  const SchedulerTotals t = daemon_.totals();
  auto& k = stats_->totals;
  k.submitted.store(t.submitted, r);
  k.completed.store(t.completed, r);
  k.failed.store(t.failed, r);
  k.rejected.store(t.rejected, r);
  k.steps.store(t.steps, r);
  k.steals.store(t.steals, r);
  k.parks.store(t.parks, r);
  k.timer_parks.store(t.timer_parks, r);
  k.backpressure.store(t.backpressure, r);
  k.spawned.store(t.spawned, r);
  k.faulted.store(t.faulted, r);
  std::uint32_t n = 0;
  for (const auto& p : pools) {
    const Scheduler& s = *p.scheduler;
    for (std::uint32_t i = 0; i < s.worker_count() && n < shm::kStatsMaxWorkers; ++i, ++n) {
      const Worker& w = s.worker(i);
      auto& o = stats_->workers[n];
      o.tid.store(static_cast<std::uint64_t>(w.tid.load(r)), r);
      o.steps.store(w.stats.steps.load(r), r);
      o.completed.store(w.stats.completed.load(r), r);
      o.failed.store(w.stats.failed.load(r), r);
      o.steals.store(w.stats.steals.load(r), r);
      o.parks.store(w.stats.parks.load(r), r);
      o.accepted.store(w.stats.accepted.load(r), r);
      o.queue_depth.store(w.queue.size(), r);
    }
  }
  stats_->header.workers.store(n, r);
  stats_->header.clients.store(daemon_.client_infos().size(), r);
  stats_->header.updated_realtime_ns.store(realtime_ns(), r);
}

}  // namespace insideout::daemon
