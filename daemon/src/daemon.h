// insideoutd as a whole: the runtime directory and its single-instance lock, the
// registration socket and its event loop (connections, serialized continuations,
// signals, heartbeat, reclaiming segments), and the scheduler it feeds.
#pragma once

#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "client_source.h"
#include "clients.h"
#include "config.h"
#include "engine.h"
#include "insideout/v1/continuation.pb.h"
#include "notify.h"
#include "plugins.h"

namespace insideout::daemon {

inline constexpr const char* kVersion = "0.1.0";

class Daemon : public PoolDirectory {
 public:
  explicit Daemon(DaemonConfig config);
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // Prepares the runtime directory, takes the lock, binds the socket, starts the
  // workers. SIGINT, SIGTERM and SIGHUP must already be blocked in every thread.
  absl::Status start();
  // Serves until SIGTERM or SIGINT (or request_stop()), then drains and cleans up.
  // Returns the process exit code.
  int run();
  void request_stop();

  const std::string& runtime_dir() const { return runtime_dir_; }
  std::string socket_path() const { return runtime_dir_ + "/daemon.sock"; }
  // The default pool's scheduler (it always exists).
  Scheduler& scheduler() { return *scheduler_; }

  // ---- Pools (named groups of workers, one Scheduler each); any thread. ------------
  struct PoolInfo {
    std::string name;
    std::uint32_t id = 0;
    std::shared_ptr<Scheduler> scheduler;
  };
  // Every pool, "default" first, then by name.
  std::vector<PoolInfo> pools() const;
  // The counts over the daemon's life: every pool's, deleted ones' included.
  SchedulerTotals totals() const;
  // nullptr when there is no such pool.
  std::shared_ptr<Scheduler> pool(const std::string& name) const;
  // Starts a pool's workers (config.pool and thread_prefix are filled in here).
  // ALREADY_EXISTS if the name is taken; the caller validated everything else.
  absl::StatusOr<std::shared_ptr<Scheduler>> create_pool(const std::string& name,
                                                         SchedulerConfig config);
  // FAILED_PRECONDITION for "default" or while clients are registered to it (naming
  // them), NOT_FOUND for an unknown pool; otherwise no new client can name it from now
  // on, and its work is drained (bounded by the drain timeout) and its workers stopped.
  absl::Status delete_pool(const std::string& name);

  // ---- For the control plane (control.cc); any thread unless noted. ----------------
  struct ClientInfo {
    std::uint32_t id = 0;
    std::uint32_t slot = 0;
    pid_t pid = 0;
    uid_t uid = 0;
    gid_t gid = 0;
    std::string name;
    std::string pool;
    bool has_segment = false;
  };
  // The registered clients (not the local one), a snapshot.
  std::vector<ClientInfo> client_infos() const;
  ClientTable& clients() { return clients_; }
  FunctionRegistry& registry() { return registry_; }
  PluginManager& plugins() { return *plugins_; }
  const DaemonConfig& config() const { return config_; }
  // The CPUs the daemon may use (its affinity mask at start).
  const std::vector<int>& allowed_cpus() const { return allowed_cpus_; }
  std::chrono::steady_clock::time_point started() const { return started_; }
  // Closes every connection of process `pid` on the loop thread; returns how many
  // registered clients it has (0: nothing to do).
  std::uint32_t evict(pid_t pid);
  // Control plane: cancels client `client_id`'s continuations in flight (all, or the one
  // of the frame at `frame_offset`); returns how many were in flight.
  absl::StatusOr<std::uint32_t> cancel(std::uint32_t client_id,
                                       std::optional<std::uint32_t> frame_offset);
  // Loop thread, after start() and before run(): a client slot with no connection, for
  // serialized continuations submitted from inside the daemon (the gRPC Submit call).
  // `sink` runs on a worker when one of its jobs completed (see set_serial_sink()).
  ClientSlot* open_local_client(std::string name,
                                std::function<void(ClientSlot&, std::uint32_t)> sink);
  // Drain by the control plane (any thread): every pool refuses new work with kDraining
  // and cuts parked continuations off; waits at most `timeout` for the rest. True when
  // nothing is left in flight. resume() undoes it (false if it was serving already).
  enum class DrainState { kServing, kDraining, kDrained };
  bool drain(std::chrono::milliseconds timeout);
  bool resume();
  DrainState drain_state() const;
  // Runs first in shutdown(), on the loop thread (the control plane stops there).
  void set_shutdown_hook(std::function<void()> hook) { shutdown_hook_ = std::move(hook); }

  // ---- Configuration reload (SIGHUP, the Reload RPC); under systemd. ----------------
  // What a reload does (main.cc: re-read the file, apply what changes live); set before
  // run(). Its error refuses the reload and the daemon keeps its configuration.
  // The hook returns the changed keys that need a restart.
  using ReloadHook = std::function<absl::StatusOr<std::vector<std::string>>()>;
  void set_reload_hook(ReloadHook hook) { reload_hook_ = std::move(hook); }
  // Runs the hook (one reload at a time, any thread), telling systemd RELOADING=1 then
  // READY=1, and STATUS= the refusal if it failed.
  absl::StatusOr<std::vector<std::string>> reload();
  // The configuration in effect (what GetConfig returns): the start's, then each
  // successful reload's live changes.
  DaemonConfig effective_config() const;
  void set_effective_config(DaemonConfig config);
  // The control socket systemd passed (FileDescriptorName=control), once; -1: none.
  int take_activated_control_fd();
  Notifier& notifier() { return notify_; }

 private:
  // One connection to daemon.sock, on the loop thread only.
  //
  // The serialized path's accounting: a submission is accepted only while the connection
  // has fewer than max_serial_inflight jobs and `bytes` (environments of its running
  // jobs plus every packet waiting in `out`) stays within max_serial_bytes, and the
  // daemon's total within max_serial_bytes_total; otherwise it is answered with
  // kBackpressure. Every answer goes through `out` when the socket is full, and a job
  // counts as in flight until its answer has been written to the socket, so none is
  // lost to EAGAIN. A connection whose `out` reached max_serial_bytes has stopped
  // reading: the daemon stops reading it too (no EPOLLIN) until it has caught up.
  struct Conn {
    struct Packet {
      std::string bytes;  // one serialized DaemonMessage
      bool job = false;   // the answer of an accepted job (counted in serial_inflight)
    };
    int fd = -1;
    ucred cred{};
    std::chrono::steady_clock::time_point opened{};
    ClientSlot* slot = nullptr;
    std::shared_ptr<Scheduler> sched;  // the pool it registered to
    std::uint32_t serial_inflight = 0;
    std::uint64_t bytes = 0;
    std::uint64_t out_bytes = 0;
    std::deque<Packet> out;
    std::uint32_t events = 0;  // what epoll watches for it
  };

  void on_accept();
  void refuse_connection(int fd, const ucred& cred, const std::string& why);
  void pause_listener(int err);
  void resume_listener();
  void on_readable(Conn& c);
  void on_writable(Conn& c);
  void on_hello(Conn& c, const v1::Hello& hello);
  void on_submit(Conn& c, const v1::Continuation& cont);
  void on_lookup(Conn& c, const v1::Lookup& lookup);
  // Client descriptors (client_fds.h): `fd` is the one the packet carried, or -1.
  void on_pass_fd(Conn& c, const v1::PassFd& pass, int fd);
  void on_close_fd(Conn& c, const v1::CloseFd& req);
  // The probe PluginManager polls: nothing of plugin instance `slot` can run any more.
  std::function<bool()> plugin_drained_probe(std::uint8_t slot);
  // Sends `m` on `c`, or queues it when the socket is full. False when the connection
  // failed (and was closed): `c` is gone then.
  bool send_to(Conn& c, const v1::DaemonMessage& m, bool job);
  // Writes what `c` has queued; false when the connection failed (and was closed).
  bool flush_conn(Conn& c);
  void watch(Conn& c, std::uint32_t events);
  // Tells a client the daemon disconnects it on purpose (Goodbye.disconnected), so that
  // it does not reconnect.
  void send_farewell(int fd, const std::string& why);
  void close_conn(int fd, const char* why);
  void flush_outbox();
  void heartbeat();
  // Closes connections that sent no Hello in time; re-arms a paused listener.
  void sweep_connections();
  void reclaim_zombies();
  // Heartbeat: STATUS= and, while every pool makes progress, WATCHDOG=1.
  void service_tick();
  // Takes the sockets systemd passed ($LISTEN_FDS); OK with none.
  absl::Status take_activated_sockets();
  void shutdown();
  void serial_done(ClientSlot& slot, std::uint32_t job);
  std::shared_ptr<Scheduler> make_scheduler(SchedulerConfig sc);
  // What a long-step report calls a step: its function's name, or symbol and library.
  std::string describe_step(io_step_fn step) const;

  DaemonConfig config_;
  std::string runtime_dir_;
  FunctionRegistry registry_;
  std::unique_ptr<PluginManager> plugins_;
  ClientTable clients_;
  // Every pool's tasks: a continuation may move between pools (SchedulerConfig::tasks).
  TaskPool tasks_;
  // PoolDirectory, for continuations that move between pools.
  std::shared_ptr<Scheduler> find_pool(std::uint32_t id) const override;
  std::int64_t pool_id(std::string_view name) const override;
  // Plugin tasks counted by pools since deleted (Scheduler::plugin_live()).
  std::atomic<std::int64_t> deleted_plugin_live_[kMaxPluginSlots] = {};

 public:
  // Tasks of plugin slot `slot` that may still run: the sum over every pool.
  std::int64_t plugin_live(std::uint8_t slot) const;

 private:
  std::shared_ptr<Scheduler> scheduler_;  // the default pool's
  // Pools by name, under pools_mu_ (taken before info_mu_). A deleted pool's scheduler
  // lives on while a zombie's snapshot still holds it.
  mutable std::mutex pools_mu_;
  std::vector<PoolInfo> pools_;
  // Pools being deleted (still counted live) and what deleted ones counted.
  std::vector<std::shared_ptr<Scheduler>> deleting_;
  SchedulerTotals deleted_totals_;
  std::uint32_t next_pool_id_ = 1;

  int lock_fd_ = -1;
  int listen_fd_ = -1;
  int epoll_fd_ = -1;
  int signal_fd_ = -1;
  int timer_fd_ = -1;
  int event_fd_ = -1;  // outbox, zombies and request_stop()
  std::atomic<bool> stop_requested_{false};
  // Drained by the control plane; under pools_mu_ with the pools' pause()/resume(), so
  // a pool created meanwhile starts paused too.
  bool paused_ = false;
  std::uint32_t next_client_id_ = 1;
  std::uint64_t start_ns_ = 0;
  std::uint64_t generation_ = 0;  // new at every start: Welcome and segment header
  std::unordered_map<int, Conn> conns_;
  std::unordered_map<uid_t, std::uint32_t> uid_conns_;  // connections per peer uid
  std::uint64_t serial_bytes_ = 0;                      // every Conn::bytes summed
  // The listener is out of epoll while accept() fails for want of descriptors
  // (EMFILE/ENFILE); a closed connection or the heartbeat puts it back.
  bool listen_paused_ = false;
  std::chrono::steady_clock::time_point last_accept_log_{};
  std::uint64_t accept_errors_ = 0;  // since the last log line about them
  std::chrono::steady_clock::time_point last_refuse_log_{};
  std::uint64_t refused_ = 0;  // connections refused since the last log line about them
  std::unordered_map<std::uint32_t, int> slot_conn_;  // slot index -> connection fd

  struct Outgoing {
    std::uint32_t slot = 0;
    std::uint32_t client_id = 0;
    std::uint64_t env_bytes = 0;  // the job's environment, counted in Conn::bytes until now
    v1::DaemonMessage msg;
  };
  std::mutex outbox_mu_;
  std::vector<Outgoing> outbox_;  // serialized results, from the workers

  struct Zombie {
    ClientSlot* slot;
    // Every pool's workers' epochs when the slot became a zombie.
    std::vector<std::pair<std::shared_ptr<Scheduler>, std::vector<std::uint64_t>>> epochs;
  };
  std::vector<Zombie> zombies_;

  // Control plane.
  std::vector<int> allowed_cpus_;
  std::chrono::steady_clock::time_point started_{};
  ClientSlot* local_slot_ = nullptr;
  std::function<void(ClientSlot&, std::uint32_t)> local_sink_;
  std::function<void()> shutdown_hook_;
  // systemd: notify messages, the progress-fed watchdog, socket activation, reloads.
  Notifier notify_;
  ProgressWatch progress_;
  std::chrono::steady_clock::time_point last_watchdog_{};
  std::string stuck_pool_;  // the pool that stopped the watchdog, once logged
  ReloadHook reload_hook_;
  std::mutex reload_mu_;  // one reload at a time
  mutable std::mutex effective_mu_;
  DaemonConfig effective_;    // under effective_mu_
  std::string reload_error_;  // under effective_mu_: why the last reload was refused
  bool activated_ = false;    // daemon.sock came from systemd: it is not ours to unlink
  int activated_control_fd_ = -1;
  mutable std::mutex info_mu_;
  std::unordered_map<std::uint32_t, ClientInfo> infos_;  // by client id, under info_mu_
  std::mutex evict_mu_;
  std::vector<pid_t> evictions_;  // under evict_mu_; the loop closes them
  struct Faulted {
    std::uint32_t slot = 0, id = 0;
    std::string reason;
  };
  std::vector<Faulted> faulted_;  // under evict_mu_: clients whose rings proved unusable
};

}  // namespace insideout::daemon
