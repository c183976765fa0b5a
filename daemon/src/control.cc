#include "control.h"

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
#include "config_file.h"
#include "control_checks.h"
#include "control_service.h"
#include "daemon.h"
#include "engine.h"
#include "insideout/shm/layout.h"
#include "insideout/shm/stats_area.h"
#include "insideout/v1/scheduler.grpc.pb.h"
#include "runtime_dir.h"
#include "thread_attrs.h"
#include "unix_listener.h"

namespace insideout::daemon {
namespace {

using grpc::ServerContext;
using grpc::Status;
using grpc::StatusCode;

constexpr const char* kDefaultPool = "default";

Status invalid(const std::string& m) { return Status(StatusCode::INVALID_ARGUMENT, m); }

// absl's codes are gRPC's, one to one.
Status to_grpc(const absl::Status& st) {
  return Status(static_cast<StatusCode>(st.code()), std::string(st.message()));
}

StatusCode code_for_errno(int e) {
  switch (e) {
    case EINVAL:
      return StatusCode::INVALID_ARGUMENT;
    case EPERM:
    case EACCES:
      return StatusCode::PERMISSION_DENIED;
    case ESRCH:
      return StatusCode::NOT_FOUND;
    default:
      return StatusCode::INTERNAL;
  }
}

std::string errno_name(int e) {
  switch (e) {
    case EINVAL:
      return "EINVAL";
    case EPERM:
      return "EPERM";
    case ESRCH:
      return "ESRCH";
    case EACCES:
      return "EACCES";
    default:
      return "errno " + std::to_string(e);
  }
}

const char* status_proto_name(int s) { return v1::Status_Name(static_cast<v1::Status>(s)).c_str(); }

// Latency histogram of the Submit call (relaxed counters: statistics only).
struct Histogram {
  static constexpr std::uint64_t kBounds[] = {10'000,     100'000,     1'000'000,
                                              10'000'000, 100'000'000, 1'000'000'000};
  static constexpr std::size_t kBuckets = std::size(kBounds) + 1;
  std::atomic<std::uint64_t> counts[kBuckets]{};
  std::atomic<std::uint64_t> count{0}, sum{0};

  void add(std::uint64_t ns) {
    std::size_t i = 0;
    while (i < std::size(kBounds) && ns >= kBounds[i]) ++i;
    counts[i].fetch_add(1, std::memory_order_relaxed);
    count.fetch_add(1, std::memory_order_relaxed);
    sum.fetch_add(ns, std::memory_order_relaxed);
  }
  void to_proto(v1::Histogram* h) const {
    for (auto b : kBounds) h->add_bounds_ns(b);
    for (const auto& c : counts) h->add_counts(c.load(std::memory_order_relaxed));
    h->set_count(count.load(std::memory_order_relaxed));
    h->set_sum_ns(sum.load(std::memory_order_relaxed));
  }
};

}  // namespace

// ---- the service --------------------------------------------------------------------

class SchedulerService final : public v1::Scheduler::Service {
 public:
  SchedulerService(ControlServer& server, Daemon& daemon) : server_(server), daemon_(daemon) {}

  void open_local_client() {
    local_ =
        daemon_.open_local_client("control-plane", [this](ClientSlot& slot, std::uint32_t job) {
          Outcome o;
          std::uint64_t tag;
          {
            std::lock_guard lock(slot.jobs_mu);
            SerialJob& j = *slot.jobs[job];
            tag = j.tag;
            o.status = static_cast<int>(j.status);
            o.detail = j.detail;
            o.value = j.value;
            o.data = std::move(j.data);
            o.message = std::move(j.message);
            j = SerialJob{};
            slot.free_jobs.push_back(job);
          }
          std::lock_guard lock(waiters_mu_);
          auto it = waiters_.find(tag);
          if (it == waiters_.end()) return;  // the caller gave up waiting
          it->second.set_value(std::move(o));
          waiters_.erase(it);
        });
  }
  // The daemon stops: Submit calls waiting for a result return now (their continuations
  // are cut off by the drain that follows) rather than holding the server's shutdown
  // for their whole timeout, and new ones are refused.
  void stopping() {
    stopping_.store(true, std::memory_order_relaxed);
    for (const auto& p : daemon_.pools()) p.scheduler->set_autosize(std::nullopt);
    std::lock_guard lock(waiters_mu_);
    for (auto& [tag, p] : waiters_) {
      Outcome o;
      o.shutdown = true;
      p.set_value(std::move(o));
    }
    waiters_.clear();
  }

  Status GetInfo(ServerContext* ctx, const v1::GetInfoRequest*, v1::GetInfoResponse* out) override {
    if (auto st = check(ctx, false); !st.ok()) return st;
    out->set_version(kVersion);
    out->set_layout_version(shm::kLayoutVersion);
    out->set_protocol_version(shm::kProtocolVersion);
    out->set_uptime_seconds(uptime());
    out->set_cpus_online(static_cast<std::uint32_t>(sysconf(_SC_NPROCESSORS_ONLN)));
    out->set_cpus_allowed(format_cpu_list(daemon_.allowed_cpus()));
    out->set_pid(static_cast<std::uint32_t>(getpid()));
    out->set_runtime_dir(daemon_.runtime_dir());
    out->set_workers(daemon_.scheduler().worker_count());
    out->set_clients(static_cast<std::uint32_t>(daemon_.client_infos().size()));
    switch (daemon_.drain_state()) {
      case Daemon::DrainState::kServing:
        out->set_state(v1::DAEMON_STATE_SERVING);
        break;
      case Daemon::DrainState::kDraining:
        out->set_state(v1::DAEMON_STATE_DRAINING);
        break;
      case Daemon::DrainState::kDrained:
        out->set_state(v1::DAEMON_STATE_DRAINED);
        break;
    }
    return Status::OK;
  }

  Status ListPools(ServerContext* ctx, const v1::ListPoolsRequest*,
                   v1::ListPoolsResponse* out) override {
    if (auto st = check(ctx, false); !st.ok()) return st;
    for (const auto& p : daemon_.pools()) describe_pool(p, out->add_pools());
    return Status::OK;
  }

  Status ListWorkers(ServerContext* ctx, const v1::ListWorkersRequest* req,
                     v1::ListWorkersResponse* out) override {
    if (auto st = check(ctx, false); !st.ok()) return st;
    const auto pools = daemon_.pools();
    if (!req->pool().empty() && std::none_of(pools.begin(), pools.end(), [&](const auto& p) {
          return p.name == req->pool();
        })) {
      return invalid("unknown pool '" + req->pool() + "' (the pools are " + pool_names(pools) +
                     ")");
    }
    for (const auto& p : pools) {
      if (!req->pool().empty() && p.name != req->pool()) continue;
      const std::uint32_t n = p.scheduler->worker_count();
      for (std::uint32_t i = 0; i < n; ++i) describe({p.scheduler, p.name, i}, out->add_workers());
    }
    return Status::OK;
  }

  Status SetAffinity(ServerContext* ctx, const v1::SetAffinityRequest* req,
                     v1::SetAffinityResponse* out) override {
    if (auto st = check(ctx, true); !st.ok()) return st;
    std::vector<WorkerRef> ids;
    if (auto st = targets(req->target(), &ids); !st.ok()) return st;
    auto cpus = check_cpus(req->cpus(), daemon_.allowed_cpus());
    if (!cpus.ok()) return to_grpc(cpus.status());
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int c : *cpus) CPU_SET(c, &set);
    std::lock_guard lock(change_mu_);
    struct Done {
      pid_t tid;
      cpu_set_t old;
    };
    std::vector<Done> done;
    for (const WorkerRef& id : ids) {
      const pid_t tid = id.scheduler->worker(id.index).tid.load(std::memory_order_relaxed);
      Done d{tid, {}};
      CPU_ZERO(&d.old);
      int e = 0;
      if (tid == 0) {
        e = ESRCH;
      } else if (sched_getaffinity(tid, sizeof(d.old), &d.old) != 0 ||
                 sched_setaffinity(tid, sizeof(set), &set) != 0) {
        e = errno;
      }
      if (e != 0) {
        for (auto& r : done) sched_setaffinity(r.tid, sizeof(r.old), &r.old);  // roll back
        return Status(code_for_errno(e), "worker " + id.text() + " (tid " + std::to_string(tid) +
                                             "): sched_setaffinity: " + errno_name(e) + " (" +
                                             std::strerror(e) + "); nothing was changed");
      }
      done.push_back(d);
    }
    spdlog::info("control: workers {} pinned to CPUs {}", ids_text(ids), format_cpu_list(*cpus));
    for (const WorkerRef& id : ids) describe(id, out->add_workers());
    return Status::OK;
  }

  Status SetThreadAttributes(ServerContext* ctx, const v1::SetThreadAttributesRequest* req,
                             v1::SetThreadAttributesResponse* out) override {
    if (auto st = check(ctx, true); !st.ok()) return st;
    std::vector<WorkerRef> ids;
    if (auto st = targets(req->target(), &ids); !st.ok()) return st;
    const auto& a = req->attributes();
    const absl::StatusOr<int> checked = check_thread_attributes(a);
    if (!checked.ok()) return to_grpc(checked.status());
    const int policy = *checked;
    std::lock_guard lock(change_mu_);
    // Work out every thread's new attributes first: nothing changes unless all are valid.
    struct Plan {
      WorkerRef id;
      pid_t tid;
      ThreadAttr old, next;
    };
    std::vector<Plan> plans;
    for (const WorkerRef& id : ids) {
      const pid_t tid = id.scheduler->worker(id.index).tid.load(std::memory_order_relaxed);
      Plan p{id, tid, {}, {}};
      int e = tid == 0 ? ESRCH : 0;
      if (e == 0 && !get_attr(tid, &p.old, &e)) {
      }
      if (e != 0) {
        return Status(code_for_errno(e), "worker " + id.text() + " (tid " + std::to_string(tid) +
                                             "): reading its attributes: " + errno_name(e) +
                                             "; nothing was changed");
      }
      p.next = p.old;
      if (policy >= 0) p.next.policy = policy;
      if (a.has_priority()) {
        p.next.priority = a.priority();
      } else if (policy >= 0 && realtime(policy) != realtime(p.old.policy)) {
        p.next.priority = realtime(policy) ? 1 : 0;
      }
      if (a.has_nice()) p.next.nice = a.nice();
      if (auto st = check_priority(p.next.policy, p.next.priority); !st.ok()) return to_grpc(st);
      plans.push_back(p);
    }
    for (std::size_t i = 0; i < plans.size(); ++i) {
      int e = 0;
      const char* what = "";
      if (!set_attr(plans[i].tid, plans[i].next, &e, &what)) {
        // Roll back this thread (it may be half-changed) and every one before it.
        for (std::size_t j = 0; j <= i; ++j) {
          int e2;
          const char* w2;
          if (!set_attr(plans[j].tid, plans[j].old, &e2, &w2)) {
            spdlog::error("control: rolling back worker {}: {}: {}", plans[j].id.text(), w2,
                          std::strerror(e2));
          }
        }
        return Status(code_for_errno(e), "worker " + plans[i].id.text() + " (tid " +
                                             std::to_string(plans[i].tid) + "): " + what + ": " +
                                             errno_name(e) + " (" + std::strerror(e) + ")" +
                                             (e == EPERM && realtime(plans[i].next.policy)
                                                  ? ", a realtime policy needs CAP_SYS_NICE"
                                                  : "") +
                                             "; nothing was changed");
      }
    }
    spdlog::info("control: workers {} set to {} priority {} nice {}", ids_text(ids),
                 v1::Policy_Name(to_proto_policy(plans.front().next.policy)),
                 plans.front().next.priority, plans.front().next.nice);
    for (const WorkerRef& id : ids) describe(id, out->add_workers());
    return Status::OK;
  }

  Status CreatePool(ServerContext* ctx, const v1::CreatePoolRequest* req,
                    v1::CreatePoolResponse* out) override {
    if (auto st = check(ctx, true); !st.ok()) return st;
    const v1::Pool& p = req->pool();
    // Everything is checked before anything starts.
    if (auto st = check_pool_name(p.name()); !st.ok()) return to_grpc(st);
    if (auto st = check_pool_size(p.size()); !st.ok()) return to_grpc(st);
    SchedulerConfig sc;
    sc.workers = p.size();
    const auto& allowed = daemon_.allowed_cpus();
    if (p.cpus().empty()) {
      sc.cpus = allowed;
    } else {
      auto cpus = check_cpus(p.cpus(), allowed);
      if (!cpus.ok()) return to_grpc(cpus.status());
      sc.cpus = *std::move(cpus);
    }
    if (!daemon_.config().pin) sc.cpus.clear();
    const auto idle = check_idle(p.idle(), daemon_.config().idle);
    if (!idle.ok()) return to_grpc(idle.status());
    sc.idle = *idle;
    sc.spin = daemon_.config().spin;
    sc.accept_batch = daemon_.config().accept_batch;
    PoolAttr attr;
    if (p.has_attributes()) {
      auto planned = plan_pool_attributes(p.attributes());
      if (!planned.ok()) return to_grpc(planned.status());
      attr = *planned;
    }
    std::optional<engine::AutosizeConfig> autosize;
    if (p.autosize().enabled()) {
      auto a = check_autosize_request(p.autosize(), cpu_count(sc.cpus));
      if (!a.ok()) return to_grpc(a.status());
      autosize = *a;
      sc.workers = std::clamp(sc.workers, autosize->min, autosize->max);
    }
    std::lock_guard lock(change_mu_);
    auto made = daemon_.create_pool(p.name(), sc);
    if (!made.ok())
      return Status(static_cast<StatusCode>(made.status().code()),
                    std::string(made.status().message()));
    // Attributes last: if the kernel refuses them, the pool goes away again.
    const std::uint32_t n = (*made)->worker_count();
    for (std::uint32_t i = 0; i < n; ++i) {
      if (auto st = apply_pool_attr(attr, {*made, p.name(), i}); !st.ok()) {
        (void)daemon_.delete_pool(p.name());
        return Status(st.error_code(), st.error_message() + "; the pool was not created");
      }
    }
    pool_attrs_[p.name()] = attr;
    if (autosize) start_autosize(*made, p.name(), *autosize);
    for (const auto& info : daemon_.pools()) {
      if (info.name == p.name()) describe_pool(info, out->mutable_pool());
    }
    return Status::OK;
  }

  Status ResizePool(ServerContext* ctx, const v1::ResizePoolRequest* req,
                    v1::ResizePoolResponse* out) override {
    if (auto st = check(ctx, true); !st.ok()) return st;
    const std::string name = req->name().empty() ? kDefaultPool : req->name();
    std::lock_guard lock(change_mu_);
    const auto pools = daemon_.pools();
    const Daemon::PoolInfo* it = nullptr;
    if (auto st = find_pool(pools, name, &it); !st.ok()) return st;
    if (auto st = check_pool_size(req->size()); !st.ok()) return to_grpc(st);
    if (const auto a = it->scheduler->autosize()) {
      return Status(StatusCode::FAILED_PRECONDITION,
                    "pool '" + name + "' sizes itself (autosize " + std::to_string(a->min) + ".." +
                        std::to_string(a->max) +
                        "): change its bounds, or turn it off first (insideoutctl pool autosize " +
                        name + " --off)");
    }
    const std::uint32_t before = it->scheduler->worker_count();
    const std::uint32_t after = resize_locked(it->scheduler, name, req->size());
    if (after != req->size())
      return Status(StatusCode::UNAVAILABLE, "pool '" + name + "' is shutting down");
    spdlog::info("control: pool '{}' resized from {} to {} workers", name, before, after);
    describe_pool(*it, out->mutable_pool());
    return Status::OK;
  }

  Status SetPoolAutosize(ServerContext* ctx, const v1::SetPoolAutosizeRequest* req,
                         v1::SetPoolAutosizeResponse* out) override {
    if (auto st = check(ctx, true); !st.ok()) return st;
    const std::string name = req->name().empty() ? kDefaultPool : req->name();
    std::lock_guard lock(change_mu_);
    const auto pools = daemon_.pools();
    const Daemon::PoolInfo* it = nullptr;
    if (auto st = find_pool(pools, name, &it); !st.ok()) return st;
    if (!req->autosize().enabled()) {
      if (it->scheduler->autosize()) {
        it->scheduler->set_autosize(std::nullopt);
        spdlog::info("control: pool '{}' no longer sizes itself (kept at {} workers)", name,
                     it->scheduler->worker_count());
      }
    } else {
      auto a = check_autosize_request(req->autosize(), cpu_count(it->scheduler->config().cpus));
      if (!a.ok()) return to_grpc(a.status());
      start_autosize(it->scheduler, name, *a);
    }
    describe_pool(*it, out->mutable_pool());
    return Status::OK;
  }

  Status DeletePool(ServerContext* ctx, const v1::DeletePoolRequest* req,
                    v1::DeletePoolResponse*) override {
    if (auto st = check(ctx, true); !st.ok()) return st;
    std::lock_guard lock(change_mu_);
    const absl::Status st = daemon_.delete_pool(req->name());
    if (!st.ok()) return Status(static_cast<StatusCode>(st.code()), std::string(st.message()));
    pool_attrs_.erase(req->name());
    return Status::OK;
  }

  Status ListClients(ServerContext* ctx, const v1::ListClientsRequest*,
                     v1::ListClientsResponse* out) override {
    if (auto st = check(ctx, false); !st.ok()) return st;
    auto infos = daemon_.client_infos();
    std::sort(infos.begin(), infos.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
    for (const auto& i : infos) {
      auto* c = out->add_clients();
      c->set_id(i.id);
      c->set_pid(i.pid);
      c->set_uid(i.uid);
      c->set_gid(i.gid);
      c->set_name(i.name);
      c->set_pool(i.pool);
      c->set_has_segment(i.has_segment);
      // The slot is never freed while the daemon runs; its counters are atomics. If the
      // client left since the snapshot, these are its last (or a successor's) numbers.
      ClientSlot& s = daemon_.clients().slot(i.slot);
      // From the counters, not the reference count: a completion is counted before the
      // ring publishes it, while its reference is dropped after, so a client that saw all
      // its completions would still see some in flight. Rejected frames were never
      // accepted but end as failures; dropped offsets (not frames) end as nothing.
      auto n = [](const std::atomic<std::uint64_t>& v) {
        return static_cast<std::int64_t>(v.load(std::memory_order_relaxed));
      };
      const std::int64_t in_flight = n(s.accepted) + n(s.rejected) + n(s.rejected_function) +
                                     n(s.refused) - n(s.dropped) - n(s.completed) - n(s.failed);
      c->set_in_flight(in_flight > 0 ? static_cast<std::uint64_t>(in_flight) : 0);
      auto* k = c->mutable_counters();
      k->set_accepted(s.accepted.load(std::memory_order_relaxed));
      k->set_completed(s.completed.load(std::memory_order_relaxed));
      k->set_failed(s.failed.load(std::memory_order_relaxed));
      k->set_rejected(s.rejected.load(std::memory_order_relaxed));
      k->set_rejected_function(s.rejected_function.load(std::memory_order_relaxed));
      k->set_backpressure(s.backpressure.load(std::memory_order_relaxed));
    }
    return Status::OK;
  }

  Status EvictClient(ServerContext* ctx, const v1::EvictClientRequest* req,
                     v1::EvictClientResponse* out) override {
    if (auto st = check(ctx, true); !st.ok()) return st;
    if (req->pid() <= 0) return invalid("pid must be positive");
    const std::uint32_t n = daemon_.evict(req->pid());
    if (n == 0)
      return Status(StatusCode::NOT_FOUND, "no client with pid " + std::to_string(req->pid()));
    spdlog::info("control: evicting pid {} ({} connections)", req->pid(), n);
    out->set_evicted(n);
    return Status::OK;
  }

  Status Cancel(ServerContext* ctx, const v1::CancelRequest* req,
                v1::CancelResponse* out) override {
    if (auto st = check(ctx, true); !st.ok()) return st;
    std::optional<std::uint32_t> frame;
    if (req->has_frame_offset()) frame = req->frame_offset();
    auto n = daemon_.cancel(req->client_id(), frame);
    if (!n.ok()) {
      const auto code = n.status().code() == absl::StatusCode::kNotFound ? StatusCode::NOT_FOUND
                        : n.status().code() == absl::StatusCode::kInvalidArgument
                            ? StatusCode::INVALID_ARGUMENT
                            : StatusCode::FAILED_PRECONDITION;
      return Status(code, std::string(n.status().message()));
    }
    spdlog::info("control: cancelled {} continuation(s) of client {}", *n, req->client_id());
    out->set_cancelled(*n);
    return Status::OK;
  }

  Status GetStats(ServerContext* ctx, const v1::GetStatsRequest*, v1::Stats* out) override {
    if (auto st = check(ctx, false); !st.ok()) return st;
    stats(out);
    return Status::OK;
  }

  Status WatchStats(ServerContext* ctx, const v1::WatchStatsRequest* req,
                    grpc::ServerWriter<v1::Stats>* w) override {
    if (auto st = check(ctx, false); !st.ok()) return st;
    const auto interval = std::chrono::milliseconds(
        req->interval_ms() == 0 ? 1000 : std::max(10u, req->interval_ms()));
    for (;;) {
      v1::Stats s;
      stats(&s);
      if (!w->Write(s)) return Status::OK;  // the caller went away
      // The synchronous API tells a handler of a cancelled stream nothing until it looks,
      // so the wait between two updates looks every 20 ms (only while someone watches).
      const auto until = std::chrono::steady_clock::now() + interval;
      while (std::chrono::steady_clock::now() < until) {
        if (ctx->IsCancelled() || stopping_.load(std::memory_order_relaxed)) return Status::OK;
        std::this_thread::sleep_for(
            std::min<std::chrono::milliseconds>(interval, std::chrono::milliseconds(20)));
      }
    }
  }

  Status Submit(ServerContext* ctx, const v1::SubmitRequest* req,
                v1::SubmitResponse* out) override {
    if (auto st = check(ctx, false); !st.ok()) return st;
    if (local_ == nullptr)
      return Status(StatusCode::UNAVAILABLE, "no client slot for the control plane");
    auto sched = daemon_.pool(req->pool().empty() ? kDefaultPool : req->pool());
    if (sched == nullptr)
      return invalid("unknown pool '" + req->pool() + "' (the pools are " +
                     pool_names(daemon_.pools()) + ")");
    const FunctionRegistry& reg = daemon_.registry();
    const auto id = reg.id_of(req->function());
    if (!id) return invalid(reg.unknown_message(req->function()));
    {
      FunctionRegistry::ReadGuard guard(reg);
      const FunctionDef* def = reg.find(*id);
      if (def == nullptr) return invalid(reg.unknown_message(req->function()));
      if (def->needs_buffer && req->env().empty())
        return invalid("function '" + req->function() + "' needs an environment");
    }
    const auto t0 = std::chrono::steady_clock::now();
    const std::uint64_t tag = next_tag_.fetch_add(1, std::memory_order_relaxed);
    std::future<Outcome> fut;
    {
      // The cap and the shutdown check under the lock stopping() takes: no call can
      // start waiting after stopping() has released the waiters.
      std::lock_guard lock(waiters_mu_);
      if (stopping_.load(std::memory_order_relaxed))
        return Status(StatusCode::UNAVAILABLE, "insideoutd is shutting down");
      const std::uint32_t max = daemon_.config().max_control_submits;
      if (waiters_.size() >= max) {
        return Status(StatusCode::RESOURCE_EXHAUSTED,
                      std::to_string(waiters_.size()) +
                          " Submit calls are waiting for their results (max " +
                          std::to_string(max) + ", --max-control-submits); try again later");
      }
      fut = waiters_[tag].get_future();
    }
    // The call's timeout (default 10 s) and the caller's own gRPC deadline, whichever is
    // sooner, are the continuation's deadline: past it the daemon cuts it off, it does
    // not run on for nobody.
    auto timeout = std::chrono::milliseconds(req->timeout_ms() == 0 ? 10000 : req->timeout_ms());
    const auto caller = ctx->deadline();
    if (caller != std::chrono::system_clock::time_point::max()) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          caller - std::chrono::system_clock::now());
      timeout = std::max(std::chrono::milliseconds(1), std::min(timeout, left));
    }
    const std::int64_t deadline_ns =
        std::chrono::duration_cast<std::chrono::nanoseconds>((t0 + timeout).time_since_epoch())
            .count();
    ClientSlot& s = *local_;
    const std::uint32_t job = s.new_job(tag, req->env(), deadline_ns);
    shm::Status st;
    shm::ErrorDetail d;
    bool accepted;
    {
      FunctionRegistry::ReadGuard guard(reg);  // submit_serial() reads the definition
      accepted = ClientSource::of(*sched).submit_serial(s, job, *id, req->arg(), &st, &d);
    }
    if (!accepted) {
      {
        std::lock_guard lock(s.jobs_mu);
        s.jobs[job]->in_flight = false;
        s.free_jobs.push_back(job);
      }
      {
        std::lock_guard lock(waiters_mu_);
        waiters_.erase(tag);
      }
      if (st == shm::Status::kDraining) {
        // Not an error of the call: the daemon said no for now, with its own status.
        out->set_status(static_cast<int>(st));
        out->set_status_name(status_proto_name(static_cast<int>(st)));
        out->set_error("draining: insideoutd takes no work until `insideoutctl resume`");
        return Status::OK;
      }
      if (st == shm::Status::kCancelled && d == shm::ErrorDetail::kShutdown)
        return Status(StatusCode::UNAVAILABLE, "insideoutd is shutting down");
      std::string why =
          std::string("rejected: ") + shm::status_name(st) + ": " + shm::detail_name(d);
      if (d == shm::ErrorDetail::kArgumentOutOfRange) {
        why += " (" + std::to_string(req->arg()) + "; '" + req->function() + "' takes at most " +
               std::to_string(reg.find(*id)->max_arg) + ")";
      }
      return invalid(why);
    }
    // The result comes by the deadline (the daemon cuts the continuation off there) or
    // soon after (a step running at the deadline finishes first): waited for in slices,
    // so that a caller who cancels the call cancels the continuation too.
    const auto give_up = t0 + timeout + std::chrono::seconds(1);
    bool cancelled = false;
    while (fut.wait_for(std::chrono::milliseconds(20)) != std::future_status::ready) {
      if (!cancelled && ctx->IsCancelled()) {
        cancelled = true;
        ClientSource::of(*sched).cancel_serial(s, tag, FrameCtl::kCancelByClient);
      }
      if (std::chrono::steady_clock::now() < give_up) continue;
      std::lock_guard lock(waiters_mu_);
      if (waiters_.erase(tag) != 0) {
        return Status(StatusCode::DEADLINE_EXCEEDED,
                      "no result within " + std::to_string(timeout.count()) + " ms");
      }
      break;  // it came just now
    }
    if (cancelled) return Status(StatusCode::CANCELLED, "the call was cancelled");
    Outcome o = fut.get();
    if (o.shutdown) {
      return Status(StatusCode::UNAVAILABLE,
                    "insideoutd is shutting down; the continuation was cut off");
    }
    latency_.add(static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0)
            .count()));
    out->set_status(o.status);
    out->set_status_name(status_proto_name(o.status));
    if (o.status != static_cast<int>(shm::Status::kOk)) {
      out->set_error(
          std::string(shm::status_name(static_cast<shm::Status>(o.status))) +
          (o.detail != shm::ErrorDetail::kNone && o.detail != shm::ErrorDetail::kFunctionFailed
               ? std::string(": ") + shm::detail_name(o.detail)
               : "") +
          (o.message.empty() ? "" : ": " + o.message));
    }
    out->set_value(o.value);
    out->set_data(std::move(o.data));
    return Status::OK;
  }

  Status Drain(ServerContext* ctx, const v1::DrainRequest* req, v1::DrainResponse* out) override {
    if (auto st = check(ctx, true); !st.ok()) return st;
    auto timeout = req->timeout_ms() == 0 ? daemon_.config().drain_timeout
                                          : std::chrono::milliseconds(req->timeout_ms());
    timeout = std::min<std::chrono::milliseconds>(timeout, std::chrono::seconds(60));
    const PeerCred p = server_.peer(ctx->peer());
    spdlog::info(
        "control: draining (at most {} ms), requested by pid {} uid {}; new work is refused "
        "with 'draining' until resume",
        timeout.count(), p.pid, p.uid);
    out->set_drained(daemon_.drain(timeout));
    return Status::OK;
  }

  Status Resume(ServerContext* ctx, const v1::ResumeRequest*, v1::ResumeResponse* out) override {
    if (auto st = check(ctx, true); !st.ok()) return st;
    const PeerCred p = server_.peer(ctx->peer());
    const bool was = daemon_.resume();
    spdlog::info("control: {} by pid {} uid {}", was ? "resumed" : "resume (already serving)",
                 p.pid, p.uid);
    out->set_was_draining(was);
    return Status::OK;
  }

  // ---- Plugins: thin over PluginManager (plugins.h). -------------------------------
  Status ListPlugins(ServerContext* ctx, const v1::ListPluginsRequest*,
                     v1::ListPluginsResponse* out) override {
    if (auto st = check(ctx, false); !st.ok()) return st;
    for (const auto& p : daemon_.plugins().list()) to_proto(p, out->add_plugins());
    return Status::OK;
  }

  Status LoadPlugin(ServerContext* ctx, const v1::LoadPluginRequest* req,
                    v1::LoadPluginResponse* out) override {
    if (auto st = check(ctx, true); !st.ok()) return st;
    if (req->path().empty() || req->path().front() != '/')
      return invalid("the plugin's path must be absolute, not '" + req->path() + "'");
    const PeerCred p = server_.peer(ctx->peer());
    spdlog::info("control: loading plugin {} (pid {} uid {})", req->path(), p.pid, p.uid);
    auto info = daemon_.plugins().load(req->path());
    if (!info.ok()) return to_grpc(info.status());
    to_proto(*info, out->mutable_plugin());
    return Status::OK;
  }

  Status UnloadPlugin(ServerContext* ctx, const v1::UnloadPluginRequest* req,
                      v1::UnloadPluginResponse* out) override {
    if (auto st = check(ctx, true); !st.ok()) return st;
    const PeerCred p = server_.peer(ctx->peer());
    spdlog::info("control: unloading plugin '{}' (pid {} uid {})", req->name(), p.pid, p.uid);
    auto done = daemon_.plugins().unload(req->name());
    if (!done.ok()) return to_grpc(done.status());
    out->set_unloaded(*done);
    return Status::OK;
  }

  Status ReloadPlugin(ServerContext* ctx, const v1::ReloadPluginRequest* req,
                      v1::ReloadPluginResponse* out) override {
    if (auto st = check(ctx, true); !st.ok()) return st;
    if (!req->path().empty() && req->path().front() != '/')
      return invalid("the plugin's path must be absolute, not '" + req->path() + "'");
    const PeerCred p = server_.peer(ctx->peer());
    spdlog::info("control: reloading plugin '{}'{} (pid {} uid {})", req->name(),
                 req->path().empty() ? "" : " from " + req->path(), p.pid, p.uid);
    auto r = daemon_.plugins().reload(req->name(), req->path());
    if (!r.ok()) return to_grpc(r.status());
    to_proto(r->plugin, out->mutable_plugin());
    out->set_old_unloaded(r->old_unloaded);
    return Status::OK;
  }

  Status ListFunctions(ServerContext* ctx, const v1::ListFunctionsRequest*,
                       v1::ListFunctionsResponse* out) override {
    if (auto st = check(ctx, false); !st.ok()) return st;
    std::map<std::uint32_t, std::string> plugin_of;  // by slot
    for (const auto& p : daemon_.plugins().list()) plugin_of[p.slot] = p.name;
    for (const auto& [id, def] : daemon_.registry().list()) {
      auto* f = out->add_functions();
      f->set_name(def.name);
      f->set_id(id);
      if (def.plugin != 0) f->set_plugin(plugin_of[def.plugin]);
      f->set_help(def.help);
      f->set_flags(def.flags);
      f->set_max_arg(def.max_arg);
    }
    return Status::OK;
  }

  Status Shutdown(ServerContext* ctx, const v1::ShutdownRequest*, v1::ShutdownResponse*) override {
    if (auto st = check(ctx, true); !st.ok()) return st;
    const PeerCred p = server_.peer(ctx->peer());
    spdlog::info("control: shutdown requested by pid {} uid {}", p.pid, p.uid);
    daemon_.request_stop();
    return Status::OK;
  }

  Status Reload(ServerContext* ctx, const v1::ReloadRequest*, v1::ReloadResponse* out) override {
    if (auto st = check(ctx, true); !st.ok()) return st;
    const PeerCred p = server_.peer(ctx->peer());
    spdlog::info("control: reload requested by pid {} uid {}", p.pid, p.uid);
    auto r = daemon_.reload();
    if (!r.ok()) return to_grpc(r.status());
    for (const auto& k : *r) out->add_needs_restart(k);
    return Status::OK;
  }

  Status GetConfig(ServerContext* ctx, const v1::GetConfigRequest*,
                   v1::GetConfigResponse* out) override {
    if (auto st = check(ctx, false); !st.ok()) return st;
    const DaemonConfig c = live_config();
    out->set_toml(to_toml(c));
    out->set_path(c.config_file);
    return Status::OK;
  }

  // The effective configuration with the pools as they are now: sizes and self-sizing
  // changed through this service, pools created or deleted here. A self-sizing pool's
  // size stays where it starts (its count moves all the time); a pool made here is
  // written with what its scheduler knows (name, size, CPUs, idle strategy, autosize).
  DaemonConfig live_config() const {
    DaemonConfig c = daemon_.effective_config();
    std::vector<PoolConfig> pools;
    for (const auto& live : daemon_.pools()) {
      const Scheduler& s = *live.scheduler;
      const auto autosize = s.autosize();
      if (live.name == kDefaultPool) {
        c.autosize = autosize;
        if (!autosize && s.worker_count() != (c.workers != 0 ? c.workers : cpu_count(c.cpus)))
          c.workers = s.worker_count();
        continue;
      }
      auto it = std::find_if(c.pools.begin(), c.pools.end(),
                             [&](const PoolConfig& p) { return p.name == live.name; });
      PoolConfig p;
      if (it != c.pools.end()) {
        p = *it;
      } else {
        p.name = live.name;
        p.cpus = s.config().cpus;
        p.idle = s.config().idle;
      }
      p.autosize = autosize;
      if (!autosize) p.size = s.worker_count();
      pools.push_back(std::move(p));
    }
    c.pools = std::move(pools);
    return c;
  }

  // The pools a configuration asks for, through the handlers above (as an admin would
  // call them): the default pool's size and CPUs, then each [[pools]] entry, created when
  // new, else resized, re-pinned and given its attributes where they differ from `old`.
  // Every CPU list is checked before anything changes. Pools the file no longer names
  // are kept (clients may be registered to them).
  absl::Status apply_pools(const DaemonConfig& next, const DaemonConfig& old) {
    auto absl_of = [](const Status& st) {
      return absl::Status(static_cast<absl::StatusCode>(st.error_code()), st.error_message());
    };
    const auto& allowed = daemon_.allowed_cpus();
    for (const auto& p : next.pools) {
      if (p.cpus.empty()) continue;
      if (auto c = check_cpus(format_cpu_list(p.cpus), allowed); !c.ok())
        return absl::InvalidArgumentError("pool '" + p.name +
                                          "': " + std::string(c.status().message()));
    }
    // The default pool's CPUs are checked only when they change: at start they are what
    // the command line gave (--cpus may name CPUs outside the mask insideoutd inherited).
    if (!next.cpus.empty() && next.cpus != old.cpus) {
      if (auto c = check_cpus(format_cpu_list(next.cpus), allowed); !c.ok())
        return absl::InvalidArgumentError("cpus: " + std::string(c.status().message()));
    }
    auto cpus_text = [&](const std::vector<int>& c) {
      return format_cpu_list(c.empty() ? allowed : c);
    };
    auto size_of = [&](const DaemonConfig& c) -> std::uint32_t {
      return c.workers != 0
                 ? c.workers
                 : static_cast<std::uint32_t>(c.cpus.empty() ? allowed.size() : c.cpus.size());
    };
    // Autosize off before a resize (ResizePool refuses a pool that sizes itself), on
    // after the pool has its size.
    auto set_autosize = [&](const std::string& name,
                            const std::optional<engine::AutosizeConfig>& a) -> absl::Status {
      v1::SetPoolAutosizeRequest req;
      req.set_name(name);
      if (a) *req.mutable_autosize() = autosize_proto(*a);
      v1::SetPoolAutosizeResponse resp;
      if (auto st = SetPoolAutosize(nullptr, &req, &resp); !st.ok())
        return absl_of(Status(st.error_code(), "pool '" + name + "': " + st.error_message()));
      return absl::OkStatus();
    };
    // The default pool.
    if (!next.autosize && old.autosize) {
      if (auto st = set_autosize(kDefaultPool, std::nullopt); !st.ok()) return st;
    }
    // Autosize turned off: the pool takes the file's size again (it is wherever the
    // controller left it).
    if (!next.autosize && (size_of(next) != size_of(old) || old.autosize)) {
      v1::ResizePoolRequest req;
      req.set_name(kDefaultPool);
      req.set_size(size_of(next));
      v1::ResizePoolResponse resp;
      if (auto st = ResizePool(nullptr, &req, &resp); !st.ok()) return absl_of(st);
    }
    if (next.cpus != old.cpus && next.pin) {
      v1::SetAffinityRequest req;
      req.mutable_target()->set_pool(kDefaultPool);
      req.set_cpus(cpus_text(next.cpus));
      v1::SetAffinityResponse resp;
      if (auto st = SetAffinity(nullptr, &req, &resp); !st.ok()) return absl_of(st);
    }
    if (next.autosize && next.autosize != old.autosize) {
      if (auto st = set_autosize(kDefaultPool, next.autosize); !st.ok()) return st;
    }
    for (const auto& p : next.pools) {
      const PoolConfig* before = nullptr;
      for (const auto& q : old.pools) {
        if (q.name == p.name) before = &q;
      }
      v1::ThreadAttributes attrs;
      attrs.set_policy(policy_of(p.policy));
      if (p.priority) attrs.set_priority(*p.priority);
      if (p.nice) attrs.set_nice(*p.nice);
      const bool has_attrs = !p.policy.empty() || p.priority || p.nice;
      if (daemon_.pool(p.name) == nullptr) {
        v1::CreatePoolRequest req;
        auto* pool = req.mutable_pool();
        pool->set_name(p.name);
        pool->set_size(p.size);
        if (!p.cpus.empty()) pool->set_cpus(format_cpu_list(p.cpus));
        if (p.idle) pool->set_idle(idle_of(*p.idle));
        if (has_attrs) *pool->mutable_attributes() = attrs;
        if (p.autosize) *pool->mutable_autosize() = autosize_proto(*p.autosize);
        v1::CreatePoolResponse resp;
        if (auto st = CreatePool(nullptr, &req, &resp); !st.ok())
          return absl_of(Status(st.error_code(), "pool '" + p.name + "': " + st.error_message()));
        continue;
      }
      // Autosize the file turned off (one set live by SetPoolAutosize stays, as a live
      // resize does): off first, then the file's size.
      const bool turned_off = !p.autosize && daemon_.pool(p.name)->autosize().has_value() &&
                              (before == nullptr || before->autosize);
      if (turned_off) {
        if (auto st = set_autosize(p.name, std::nullopt); !st.ok()) return st;
      }
      if (!p.autosize && (before == nullptr || before->size != p.size || turned_off)) {
        v1::ResizePoolRequest req;
        req.set_name(p.name);
        req.set_size(p.size);
        v1::ResizePoolResponse resp;
        if (auto st = ResizePool(nullptr, &req, &resp); !st.ok()) return absl_of(st);
      }
      if ((before == nullptr || before->cpus != p.cpus) && next.pin) {
        v1::SetAffinityRequest req;
        req.mutable_target()->set_pool(p.name);
        req.set_cpus(cpus_text(p.cpus));
        v1::SetAffinityResponse resp;
        if (auto st = SetAffinity(nullptr, &req, &resp); !st.ok()) return absl_of(st);
      }
      if (has_attrs && (before == nullptr || before->policy != p.policy ||
                        before->priority != p.priority || before->nice != p.nice)) {
        v1::SetThreadAttributesRequest req;
        req.mutable_target()->set_pool(p.name);
        *req.mutable_attributes() = attrs;
        v1::SetThreadAttributesResponse resp;
        if (auto st = SetThreadAttributes(nullptr, &req, &resp); !st.ok()) return absl_of(st);
        // Workers a later resize starts take them too.
        auto planned = plan_pool_attributes(attrs);
        std::lock_guard lock(change_mu_);
        if (planned.ok()) pool_attrs_[p.name] = *planned;
      }
      if (p.autosize && (before == nullptr || before->autosize != p.autosize)) {
        if (auto st = set_autosize(p.name, p.autosize); !st.ok()) return st;
      }
    }
    for (const auto& q : old.pools) {
      const bool kept = std::any_of(next.pools.begin(), next.pools.end(),
                                    [&](const PoolConfig& p) { return p.name == q.name; });
      if (!kept && daemon_.pool(q.name) != nullptr)
        spdlog::warn(
            "pool '{}' is no longer in the configuration: kept (insideoutctl pool "
            "delete {} removes it)",
            q.name, q.name);
    }
    return absl::OkStatus();
  }

 private:
  static v1::Policy policy_of(const std::string& p) {
    if (p == "other") return v1::POLICY_OTHER;
    if (p == "batch") return v1::POLICY_BATCH;
    if (p == "idle") return v1::POLICY_IDLE;
    if (p == "fifo") return v1::POLICY_FIFO;
    if (p == "rr") return v1::POLICY_RR;
    return v1::POLICY_UNSPECIFIED;
  }
  static v1::Autosize autosize_proto(const engine::AutosizeConfig& a) {
    v1::Autosize o;
    o.set_enabled(true);
    o.set_min(a.min);
    o.set_max(a.max);
    o.set_grow_after_us(static_cast<std::uint32_t>(a.grow_after.count()));
    o.set_shrink_after_ms(static_cast<std::uint32_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(a.shrink_after).count()));
    o.set_target_delay_us(static_cast<std::uint32_t>(a.target_delay.count()));
    o.set_interval_us(static_cast<std::uint32_t>(a.interval.count()));
    return o;
  }
  static v1::IdleStrategy idle_of(shm::IdleStrategy s) {
    switch (s) {
      case shm::IdleStrategy::kBlock:
        return v1::IDLE_STRATEGY_BLOCK;
      case shm::IdleStrategy::kSpinThenBlock:
        return v1::IDLE_STRATEGY_SPIN_THEN_BLOCK;
      default:
        return v1::IDLE_STRATEGY_POLL;
    }
  }

  struct Outcome {
    bool shutdown = false;  // released by stopping(): no result will come
    int status = 0;
    shm::ErrorDetail detail = shm::ErrorDetail::kNone;
    std::uint64_t value = 0;
    std::string data;
    std::string message;  // the function's failure message, if it gave one
  };

  static void to_proto(const PluginInfo& p, v1::Plugin* out) {
    out->set_name(p.name);
    out->set_version(p.version);
    out->set_path(p.path);
    out->set_slot(p.slot);
    out->set_sdk_version(std::to_string(p.sdk_version >> 16) + "." +
                         std::to_string(p.sdk_version & 0xFFFFu));
    for (const auto& f : p.functions) out->add_functions(f);
    out->set_draining(p.draining);
    out->set_loaded_unix_ms(
        std::chrono::duration_cast<std::chrono::milliseconds>(p.loaded.time_since_epoch()).count());
  }

  // ctx == nullptr: the daemon itself (apply_pools(), for its configuration file).
  Status check(ServerContext* ctx, bool admin) const {
    if (ctx == nullptr) return Status::OK;
    const PeerCred p = server_.peer(ctx->peer());
    if (admin ? server_.may_admin(p) : server_.may_read(p)) return Status::OK;
    return Status(
        StatusCode::PERMISSION_DENIED,
        p.known ? "uid " + std::to_string(p.uid) + " (pid " + std::to_string(p.pid) + ") may not " +
                      (admin ? "change the daemon: root, its owner and the admin group may"
                             : "read the daemon's state: the client group may")
                : std::string("unknown peer"));
  }

  double uptime() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - daemon_.started())
        .count();
  }

  // A worker of a pool: a number in a Target names a worker of the default pool.
  struct WorkerRef {
    std::shared_ptr<Scheduler> scheduler;
    std::string pool;
    std::uint32_t index = 0;
    std::string text() const {
      return pool == kDefaultPool ? std::to_string(index) : pool + "/" + std::to_string(index);
    }
  };
  // The pool named `name` among `pools`, or NOT_FOUND naming the pools there are.
  static Status find_pool(const std::vector<Daemon::PoolInfo>& pools, const std::string& name,
                          const Daemon::PoolInfo** out) {
    auto it =
        std::find_if(pools.begin(), pools.end(), [&](const auto& p) { return p.name == name; });
    if (it == pools.end()) {
      return Status(StatusCode::NOT_FOUND,
                    "no pool named '" + name + "' (the pools are " + pool_names(pools) + ")");
    }
    *out = &*it;
    return Status::OK;
  }
  static std::string pool_names(const std::vector<Daemon::PoolInfo>& pools) {
    std::string t;
    for (const auto& p : pools) t += (t.empty() ? "'" : ", '") + p.name + "'";
    return t;
  }

  Status apply_pool_attr(const PoolAttr& pa, const WorkerRef& id) const {
    if (pa.policy < 0 && !pa.priority && !pa.nice) return Status::OK;
    const pid_t tid = id.scheduler->worker(id.index).tid.load(std::memory_order_relaxed);
    ThreadAttr a;
    int e = tid == 0 ? ESRCH : 0;
    const char* what = "reading its attributes";
    if (e == 0 && get_attr(tid, &a, &e)) {
      if (pa.policy >= 0) a.policy = pa.policy;
      a.priority = pa.priority ? *pa.priority : (realtime(a.policy) ? std::max(a.priority, 1) : 0);
      if (pa.nice) a.nice = *pa.nice;
      if (set_attr(tid, a, &e, &what)) return Status::OK;
    }
    return Status(code_for_errno(e), "worker " + id.text() + " (tid " + std::to_string(tid) +
                                         "): " + what + ": " + errno_name(e) + " (" +
                                         std::strerror(e) + ")");
  }

  Status targets(const v1::Target& t, std::vector<WorkerRef>* ids) const {
    switch (t.target_case()) {
      case v1::Target::kWorker: {
        const std::uint32_t n = daemon_.scheduler().worker_count();
        if (t.worker() >= n) {
          return invalid("unknown worker " + std::to_string(t.worker()) + " (workers are 0.." +
                         std::to_string(n - 1) + ")");
        }
        ids->push_back({daemon_.pool(kDefaultPool), kDefaultPool, t.worker()});
        return Status::OK;
      }
      case v1::Target::kPool: {
        auto s = daemon_.pool(t.pool());
        if (s == nullptr)
          return invalid("unknown pool '" + t.pool() + "' (the pools are " +
                         pool_names(daemon_.pools()) + ")");
        const std::uint32_t n = s->worker_count();
        for (std::uint32_t i = 0; i < n; ++i) ids->push_back({s, t.pool(), i});
        return Status::OK;
      }
      default:
        return invalid("name a worker or a pool");
    }
  }

  static std::string ids_text(const std::vector<WorkerRef>& ids) {
    std::string t;
    for (const auto& id : ids) {
      if (!t.empty()) t += ',';
      t += id.text();
    }
    return t;
  }

  // The CPUs a pool may use: its list, or every CPU the daemon may use (unpinned).
  std::uint32_t cpu_count(const std::vector<int>& cpus) const {
    return static_cast<std::uint32_t>(cpus.empty() ? daemon_.allowed_cpus().size() : cpus.size());
  }

  static absl::StatusOr<engine::AutosizeConfig> check_autosize_request(const v1::Autosize& a,
                                                                       std::uint32_t cpus) {
    engine::AutosizeConfig c;
    c.min = a.min();
    c.max = a.max();
    c.grow_after = std::chrono::microseconds(a.grow_after_us());
    c.shrink_after = std::chrono::milliseconds(a.shrink_after_ms());
    c.target_delay = std::chrono::microseconds(a.target_delay_us());
    c.interval = std::chrono::microseconds(a.interval_us());
    c = engine::with_autosize_defaults(c);
    if (std::string why = engine::check_autosize(c, cpus); !why.empty())
      return absl::InvalidArgumentError(why);
    return c;
  }

  // Resizes a pool and gives new workers the pool's attributes. Under change_mu_.
  std::uint32_t resize_locked(const std::shared_ptr<Scheduler>& s, const std::string& name,
                              std::uint32_t n) {
    const std::uint32_t before = s->worker_count();
    const std::uint32_t after = s->resize(n);
    // New workers take the pool's attributes (set at creation or since, for the pool).
    auto at = pool_attrs_.find(name);
    for (std::uint32_t i = before; i < after && at != pool_attrs_.end(); ++i) {
      if (auto st = apply_pool_attr(at->second, {s, name, i}); !st.ok()) {
        spdlog::warn("control: pool '{}': {}", name, st.error_message());
      }
    }
    return after;
  }

  // Starts (or restarts, with new bounds) a pool's controller. Under change_mu_. Its
  // resizes take change_mu_ too, so they never interleave with a change to the pool's
  // threads; when the lock is busy (a change in progress, or this very call stopping the
  // old controller) it skips that decision and looks again at its next sample.
  void start_autosize(const std::shared_ptr<Scheduler>& s, const std::string& name,
                      const engine::AutosizeConfig& a) {
    if (stopping_.load(std::memory_order_relaxed)) return;
    const std::uint32_t now = s->worker_count();
    if (now < a.min || now > a.max) resize_locked(s, name, std::clamp(now, a.min, a.max));
    // Not owning: the hook lives in the scheduler's controller, which stops before the
    // scheduler goes and before this service does (stopping()).
    Scheduler* raw = s.get();
    s->set_autosize(a, [this, raw, name](std::uint32_t n) {
      std::unique_lock lock(change_mu_, std::try_to_lock);
      if (!lock.owns_lock() || stopping_.load(std::memory_order_relaxed)) return false;
      const std::uint32_t before = raw->worker_count();
      resize_locked(std::shared_ptr<Scheduler>(std::shared_ptr<Scheduler>(), raw), name, n);
      spdlog::debug("autosize: pool '{}' from {} to {} workers", name, before, n);
      return true;
    });
    spdlog::info("control: pool '{}' sizes itself within {}..{} workers (now {})", name, a.min,
                 a.max, s->worker_count());
  }

  void describe_pool(const Daemon::PoolInfo& info, v1::Pool* p) const {
    const SchedulerConfig& cfg = info.scheduler->config();
    p->set_name(info.name);
    p->set_cpus(format_cpu_list(cfg.cpus));
    p->set_size(info.scheduler->worker_count());
    switch (cfg.idle) {
      case shm::IdleStrategy::kBlock:
        p->set_idle(v1::IDLE_STRATEGY_BLOCK);
        break;
      case shm::IdleStrategy::kSpinThenBlock:
        p->set_idle(v1::IDLE_STRATEGY_SPIN_THEN_BLOCK);
        break;
      case shm::IdleStrategy::kPoll:
        p->set_idle(v1::IDLE_STRATEGY_POLL);
        break;
    }
    if (info.scheduler->worker_count() > 0) {
      ThreadAttr a;
      int e;
      const pid_t tid = info.scheduler->worker(0).tid.load(std::memory_order_relaxed);
      if (tid != 0 && get_attr(tid, &a, &e)) {
        p->mutable_attributes()->set_policy(to_proto_policy(a.policy));
        p->mutable_attributes()->set_priority(a.priority);
        p->mutable_attributes()->set_nice(a.nice);
      }
    }
    std::uint32_t clients = 0;
    for (const auto& c : daemon_.client_infos()) clients += c.pool == info.name;
    p->set_clients(clients);
    if (const auto a = info.scheduler->autosize()) {
      auto* o = p->mutable_autosize();
      *o = autosize_proto(*a);
      if (const auto k = info.scheduler->autosize_counters()) {
        o->set_grows(k->grows);
        o->set_shrinks(k->shrinks);
        o->set_last_delay_ns(k->last_delay_ns);
      }
    }
  }

  void describe(const WorkerRef& id, v1::Worker* out) const {
    const Worker& w = id.scheduler->worker(id.index);
    const pid_t tid = w.tid.load(std::memory_order_relaxed);
    out->set_id(id.index);
    out->set_pool(id.pool);
    out->set_tid(tid);
    out->set_name(id.scheduler->config().thread_prefix + std::to_string(id.index));
    out->set_queue_depth(static_cast<std::uint32_t>(w.queue.size()));
    if (tid != 0) {
      out->set_cpus(format_cpu_list(thread_affinity(tid)));
      out->set_last_cpu(last_cpu(tid));
      ThreadAttr a;
      int e;
      if (get_attr(tid, &a, &e)) {
        out->set_policy(to_proto_policy(a.policy));
        out->set_priority(a.priority);
        out->set_nice(a.nice);
      }
      out->set_state(w.parked.load(std::memory_order_relaxed) ? v1::WORKER_STATE_PARKED
                                                              : v1::WORKER_STATE_RUNNING);
    } else {
      out->set_state(v1::WORKER_STATE_STOPPED);
    }
    const WorkerStats& s = w.stats;
    auto* k = out->mutable_counters();
    k->set_steps(s.steps.load(std::memory_order_relaxed));
    k->set_accepted(s.accepted.load(std::memory_order_relaxed));
    k->set_completed(s.completed.load(std::memory_order_relaxed));
    k->set_failed(s.failed.load(std::memory_order_relaxed));
    k->set_rejected(s.rejected.load(std::memory_order_relaxed));
    k->set_steals(s.steals.load(std::memory_order_relaxed));
    k->set_parks(s.parks.load(std::memory_order_relaxed));
    k->set_timer_parks(s.timer_parks.load(std::memory_order_relaxed));
    k->set_backpressure(s.backpressure.load(std::memory_order_relaxed));
    k->set_spawned(s.spawned.load(std::memory_order_relaxed));
    k->set_long_steps(s.long_steps.load(std::memory_order_relaxed));
  }

  void stats(v1::Stats* out) const {
    const auto pools = daemon_.pools();
    const SchedulerTotals t = daemon_.totals();
    out->set_submitted(t.submitted);
    out->set_completed(t.completed);
    out->set_failed(t.failed);
    out->set_steals(t.steals);
    out->set_parks(t.parks);
    out->set_timer_parks(t.timer_parks);
    out->set_backpressure(t.backpressure);
    out->set_steps(t.steps);
    out->set_spawned(t.spawned);
    out->set_clients_faulted(t.faulted);
    std::uint64_t waits = 0;
    for (const auto& p : pools) waits += p.scheduler->events().size();
    out->set_waits_parked(waits);
    // Reasons: the workers' totals, and the registered clients' own counters.
    std::uint64_t unknown_fn = 0, invalid_frames = 0;
    const auto infos = daemon_.client_infos();
    for (const auto& i : infos) {
      ClientSlot& s = daemon_.clients().slot(i.slot);
      unknown_fn += s.rejected_function.load(std::memory_order_relaxed);
      invalid_frames += s.rejected.load(std::memory_order_relaxed);
    }
    auto& reasons = *out->mutable_failed_by_reason();
    reasons["step_failed_or_cancelled"] = t.failed - std::min(t.failed, t.rejected + t.refused);
    reasons["rejected"] = t.rejected;
    reasons["rejected_unknown_function_current_clients"] = unknown_fn;
    reasons["rejected_invalid_current_clients"] = invalid_frames;
    // Every completion that was not OK, by its status (STATUS_CANCELLED, ...).
    for (std::size_t k = 0; k < kStatusSlots; ++k) {
      if (t.failed_by[k] != 0) reasons[status_proto_name(static_cast<int>(k))] = t.failed_by[k];
    }
    auto* h = out->mutable_continuation_latency();
    std::vector<std::uint64_t> counts(LatencyHistogram::kBuckets, 0);
    std::uint64_t count = 0, sum = 0;
    for (const auto& p : pools) {
      const LatencyHistogram& l = p.scheduler->latency();
      for (std::size_t k = 0; k < LatencyHistogram::kBuckets; ++k)
        counts[k] += l.counts[k].load(std::memory_order_relaxed);
      count += l.count.load(std::memory_order_relaxed);
      sum += l.sum_ns.load(std::memory_order_relaxed);
    }
    // Bucket k holds [2^k, 2^(k+1)) ns: bounds 2^(k+1) for all but the last.
    for (std::size_t k = 0; k + 1 < LatencyHistogram::kBuckets; ++k)
      h->add_bounds_ns(std::uint64_t{2} << k);
    for (auto c : counts) h->add_counts(c);
    h->set_count(count);
    h->set_sum_ns(sum);
    for (const auto& p : pools) {
      const std::uint32_t n = p.scheduler->worker_count();
      for (std::uint32_t i = 0; i < n; ++i)
        out->add_queue_depths(static_cast<std::uint32_t>(p.scheduler->worker(i).queue.size()));
    }
    out->set_clients(static_cast<std::uint32_t>(infos.size()));
    latency_.to_proto(out->mutable_submit_latency());
    out->set_uptime_seconds(uptime());
  }

  ControlServer& server_;
  Daemon& daemon_;
  ClientSlot* local_ = nullptr;
  std::mutex change_mu_;                        // one change to threads at a time
  std::map<std::string, PoolAttr> pool_attrs_;  // under change_mu_
  std::atomic<bool> stopping_{false};
  std::atomic<std::uint64_t> next_tag_{1};
  std::mutex waiters_mu_;
  std::map<std::uint64_t, std::promise<Outcome>> waiters_;
  Histogram latency_;
};

// ---- what the server needs of the service (control_service.h) --------------------

void ServiceDeleter::operator()(SchedulerService* s) const noexcept { delete s; }

std::unique_ptr<SchedulerService, ServiceDeleter> make_service(ControlServer& server,
                                                               Daemon& daemon) {
  return std::unique_ptr<SchedulerService, ServiceDeleter>(new SchedulerService(server, daemon));
}
grpc::Service* as_grpc_service(SchedulerService& s) { return &s; }
void open_local_client(SchedulerService& s) { s.open_local_client(); }
void service_stopping(SchedulerService& s) { s.stopping(); }
absl::Status service_apply_pools(SchedulerService& s, const DaemonConfig& next,
                                 const DaemonConfig& old) {
  return s.apply_pools(next, old);
}

}  // namespace insideout::daemon
