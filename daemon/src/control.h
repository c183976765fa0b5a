// The control plane: the gRPC service insideout.v1.Scheduler (plus grpc.health.v1.Health
// and server reflection) on $INSIDEOUT_RUNTIME_DIR/control.sock, and the counters area
// $INSIDEOUT_RUNTIME_DIR/stats.
//
// gRPC (1.51) does not tell a handler who is calling over a Unix socket, so the server
// owns the listening socket: an accept thread takes each connection, reads the peer's
// uid/gid/pid with SO_PEERCRED, remembers them by descriptor and hands the descriptor to
// gRPC (AddInsecureChannelFromFd), whose calls then name it as their peer ("fd:N").
//
// Changes to threads are serialized by one mutex and applied all or nothing: every
// argument is checked first; if the kernel refuses a thread, the threads already
// changed get their previous values back and the error names the thread and the reason.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "config.h"
#include "peer_cred.h"

namespace grpc {
class Server;
}

namespace insideout::shm {
struct StatsArea;
}

namespace insideout::daemon {

class Daemon;
class SchedulerService;
struct ServiceDeleter {
  void operator()(SchedulerService* s) const noexcept;
};

class ControlServer {
 public:
  explicit ControlServer(Daemon& daemon);
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  // On the daemon's loop thread, after Daemon::start() and before Daemon::run().
  absl::Status start();
  // Stops serving, removes control.sock and the stats file. Idempotent.
  void stop();

  // Makes the configuration's pools real, or changes them from `old` (Daemon::reload()),
  // through the same handlers as CreatePool, ResizePool, SetAffinity and
  // SetThreadAttributes. Loop thread or a reload, after start().
  absl::Status apply_pools(const DaemonConfig& next, const DaemonConfig& old);

  std::string socket_path() const;
  std::string stats_path() const;

  // Who is calling, from a gRPC peer string ("fd:N").
  PeerCred peer(const std::string& grpc_peer) const;
  bool may_admin(const PeerCred& p) const;
  bool may_read(const PeerCred& p) const;

 private:
  void accept_loop();
  void publish_loop();
  void publish_once();

  Daemon& daemon_;
  std::unique_ptr<SchedulerService, ServiceDeleter> service_;
  std::unique_ptr<grpc::Server> server_;
  int listen_fd_ = -1;
  bool activated_ = false;  // listen_fd_ came from systemd: control.sock is not ours to unlink
  int stop_fd_ = -1;        // eventfd: wakes the accept and publish threads
  std::thread accept_thread_;
  std::thread publish_thread_;
  std::atomic<bool> stopping_{false};
  bool stopped_ = false;
  gid_t admin_gid_ = static_cast<gid_t>(-1);
  gid_t client_gid_ = static_cast<gid_t>(-1);

  mutable std::mutex peers_mu_;
  std::unordered_map<int, PeerCred> peers_;  // by descriptor, under peers_mu_

  shm::StatsArea* stats_ = nullptr;
  int stats_fd_ = -1;
};

}  // namespace insideout::daemon
