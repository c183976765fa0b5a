// The embedded executor: the engine hosted in a program's own process. Its source of
// work is the program's submissions: each is a Job (the environment copied, the outcome
// written back) that a Handle waits on; continuation code sees the same io_ctx_ops as in
// the daemon.
#include "insideout/runtime.hpp"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>

#include "registry.h"
#include "scheduler.h"
#include "source.h"

namespace insideout {

using engine::Outcome;
using engine::Scheduler;
using engine::Task;
using engine::Worker;
using shm::ErrorDetail;
using shm::Status;

// Memory ordering: D1 (done.store, release, after every field of the outcome is written)
// pairs with D2 (done.load, acquire, in Handle::done()/wait()).
struct Runtime::Handle::Job {
  std::string env;
  Result result;
  std::atomic<std::uint32_t> done{0};
};

namespace {

std::vector<int> allowed_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (::sched_getaffinity(0, sizeof(set), &set) == 0) {
    for (int i = 0; i < CPU_SETSIZE; ++i) {
      if (CPU_ISSET(i, &set)) cpus.push_back(i);
    }
  }
  if (cpus.empty()) cpus.push_back(0);
  return cpus;
}

}  // namespace

// The jobs in flight, by index (Task::frame): shared by every pool's source, since a
// continuation may move between pools.
class JobTable {
 public:
  std::uint32_t put(std::shared_ptr<Runtime::Handle::Job> job) {
    std::lock_guard lock(mu_);
    ++in_flight_;
    if (!free_.empty()) {
      const std::uint32_t i = free_.back();
      free_.pop_back();
      jobs_[i] = std::move(job);
      return i;
    }
    jobs_.push_back(std::move(job));
    return static_cast<std::uint32_t>(jobs_.size() - 1);
  }
  Runtime::Handle::Job& at(std::uint32_t i) {
    std::lock_guard lock(mu_);  // the table may grow meanwhile; the job does not move
    return *jobs_[i];
  }
  std::shared_ptr<Runtime::Handle::Job> take(std::uint32_t i) {
    std::lock_guard lock(mu_);
    auto job = std::move(jobs_[i]);
    free_.push_back(i);
    --in_flight_;
    return job;
  }
  bool busy() const {
    std::lock_guard lock(mu_);
    return in_flight_ != 0;
  }

 private:
  mutable std::mutex mu_;
  std::vector<std::shared_ptr<Runtime::Handle::Job>> jobs_;
  std::vector<std::uint32_t> free_;
  std::size_t in_flight_ = 0;
};

// A pool's source: the program's submissions arrive through Scheduler::accept_external().
class RuntimeSource final : public engine::WorkSource {
 public:
  explicit RuntimeSource(JobTable& jobs) : jobs_(jobs) {}
  bool poll(Worker&) override { return false; }
  bool has_work() override { return false; }
  std::span<std::byte> env(const Task& t) override {
    auto& e = jobs_.at(t.frame).env;
    return std::as_writable_bytes(std::span(e.data(), e.size()));
  }
  bool gone(const Task&) override { return false; }
  Outcome cut_off_reason(const Task&) override {
    return {Status::kCancelled, ErrorDetail::kShutdown};
  }
  void complete(Worker&, Task& t, const Outcome& o) override {
    auto job = jobs_.take(t.frame);
    Runtime::Result& r = job->result;
    r.status = static_cast<std::uint16_t>(o.status);
    r.detail = static_cast<std::uint32_t>(o.detail);
    r.value = o.value;
    if (o.result_is_env) r.data = job->env.substr(0, o.result_len);
    r.message = std::string(o.message);
    job->done.store(1, std::memory_order_release);  // D1: pairs with D2
    job->done.notify_all();
    sched_->notify_drain();
  }
  void flush(Worker&) override {}
  bool park_begins(const Task&) override { return true; }
  void park_ends(const Task&) override {}
  bool busy() const override { return jobs_.busy(); }

 private:
  JobTable& jobs_;
};

struct Runtime::Impl : engine::PoolDirectory {
  engine::FunctionRegistry registry;
  engine::TaskPool tasks;
  JobTable jobs;
  struct Pool {
    std::string name;
    std::shared_ptr<Scheduler> sched;
  };
  std::vector<Pool> pools;  // fixed once made
  std::once_flag started;

  std::shared_ptr<Scheduler> find_pool(std::uint32_t id) const override {
    return id < pools.size() ? pools[id].sched : nullptr;
  }
  std::int64_t pool_id(std::string_view name) const override {
    for (std::size_t i = 0; i < pools.size(); ++i) {
      if (pools[i].name == name) return static_cast<std::int64_t>(i);
    }
    return -1;
  }
  void start() {
    std::call_once(started, [&] {
      for (auto& p : pools) p.sched->start();
    });
  }
};

std::string Runtime::Result::error() const {
  if (ok()) return "";
  std::string t = shm::status_name(static_cast<Status>(status));
  const auto d = static_cast<ErrorDetail>(detail);
  if (d != ErrorDetail::kNone && d != ErrorDetail::kFunctionFailed)
    t += std::string(": ") + shm::detail_name(d);
  if (!message.empty()) t += ": " + message;
  return t;
}

Runtime::Handle::Handle(std::shared_ptr<Job> job) noexcept : job_(std::move(job)) {}
Runtime::Handle::Handle(Handle&&) noexcept = default;
Runtime::Handle& Runtime::Handle::operator=(Handle&&) noexcept = default;
Runtime::Handle::~Handle() = default;

bool Runtime::Handle::done() const noexcept {
  return job_ == nullptr || job_->done.load(std::memory_order_acquire) != 0;  // D2
}

Runtime::Result Runtime::Handle::wait() {
  if (job_ == nullptr) return {};
  job_->done.wait(0, std::memory_order_acquire);  // D2: pairs with D1
  return job_->result;
}

Runtime::Runtime(RuntimeOptions options) : impl_(std::make_unique<Impl>()) {
  engine::register_builtins(impl_->registry);
  if (options.pools.empty()) options.pools.push_back({"default", 0, {}});
  const std::vector<int> allowed = allowed_cpus();
  engine::EventBackendKind backend;
  if (!engine::parse_event_backend(options.event_backend, &backend))
    throw std::invalid_argument("event_backend '" + options.event_backend +
                                "': expected auto, epoll or io_uring");
  for (std::size_t i = 0; i < options.pools.size(); ++i) {
    const auto& p = options.pools[i];
    engine::SchedulerConfig sc;
    sc.pool = static_cast<std::uint32_t>(i);
    sc.cpus = p.cpus.empty() ? allowed : p.cpus;
    sc.workers = p.workers != 0 ? p.workers : static_cast<std::uint32_t>(sc.cpus.size());
    if (!options.pin) sc.cpus.clear();
    sc.tasks = &impl_->tasks;
    sc.directory = impl_.get();
    sc.thread_prefix = "io-" + p.name.substr(0, 7) + "-";
    sc.event_backend = backend;
    impl_->pools.push_back(
        {p.name, std::make_shared<Scheduler>(std::move(sc), impl_->registry,
                                             std::make_unique<RuntimeSource>(impl_->jobs))});
  }
}

bool Runtime::stop(std::chrono::milliseconds timeout) {
  for (auto& p : impl_->pools) p.sched->begin_drain(true);
  bool idle = true;
  for (auto& p : impl_->pools) idle = p.sched->wait_idle(timeout) && idle;
  return idle;
}

Runtime::~Runtime() {
  for (auto& p : impl_->pools) p.sched->wait_idle(std::chrono::hours(1));
  for (auto& p : impl_->pools) p.sched->drain(std::chrono::milliseconds(0));
  for (auto& p : impl_->pools) p.sched->stop();
}

bool Runtime::add(std::string name, io_step_fn entry, std::uint32_t flags, std::string help,
                  std::uint64_t max_arg) {
  if (impl_->registry.id_of(name)) return false;
  engine::FunctionDef def;
  def.name = std::move(name);
  def.help = std::move(help);
  def.entry = entry;
  def.flags = flags;
  def.needs_buffer = (flags & IO_FN_NEEDS_BUFFER) != 0;
  if (max_arg != 0) def.max_arg = max_arg;
  impl_->registry.add(std::move(def));
  return true;
}

bool Runtime::add_plugin(const io_plugin_info* info, std::string* error) {
  auto fail = [&](std::string why) {
    if (error != nullptr) *error = std::move(why);
    return false;
  };
  if (info == nullptr) return fail("no plugin info");
  if (info->abi_version != IO_SDK_ABI_VERSION || info->size < sizeof(io_plugin_info))
    return fail("plugin ABI " + std::to_string(info->abi_version) + ", this runtime speaks " +
                std::to_string(IO_SDK_ABI_VERSION));
  if (IO_SDK_VERSION_MAJOR(info->sdk_version) != IO_SDK_VERSION_MAJOR(IO_SDK_VERSION))
    return fail("plugin built with SDK major version " +
                std::to_string(IO_SDK_VERSION_MAJOR(info->sdk_version)));
  struct Host {
    Runtime* rt;
    std::string prefix;
    std::string error;
  } host{this, std::string(info->name) + ".", {}};
  io_registrar r{};
  r.size = sizeof r;
  r.host = &host;
  r.add = [](void* h, const io_function_def* d) -> int {
    auto& host = *static_cast<Host*>(h);
    if (d == nullptr || d->name == nullptr || d->entry == nullptr) return 1;
    if (!host.rt->add(host.prefix + d->name, d->entry, d->flags, d->help ? d->help : "",
                      d->max_arg)) {
      host.error = "function name already taken: " + host.prefix + d->name;
      return 1;
    }
    return 0;
  };
  r.error = [](void* h, const char* msg) { static_cast<Host*>(h)->error = msg ? msg : ""; };
  if (info->init(&r) != 0)
    return fail(host.error.empty() ? "the plugin's init failed" : host.error);
  return true;
}

Runtime::Handle Runtime::submit(std::string_view function, std::uint64_t arg,
                                std::span<const std::byte> env) {
  auto job = std::make_shared<Handle::Job>();
  auto fail_now = [&](Status st, ErrorDetail d, std::string msg) {
    job->result.status = static_cast<std::uint16_t>(st);
    job->result.detail = static_cast<std::uint32_t>(d);
    job->result.message = std::move(msg);
    job->done.store(1, std::memory_order_release);
    return Handle(std::move(job));
  };
  const auto id = impl_->registry.id_of(function);
  if (!id) {
    return fail_now(Status::kUnknownFunction, ErrorDetail::kUnknownFunction,
                    impl_->registry.unknown_message(function));
  }
  const engine::FunctionDef& def = *impl_->registry.find(*id);
  if (arg > def.max_arg) {
    return fail_now(Status::kInvalidArgument, ErrorDetail::kArgumentOutOfRange,
                    "'" + def.name + "' takes at most " + std::to_string(def.max_arg));
  }
  if (impl_->pools.front().sched->draining())
    return fail_now(Status::kDraining, ErrorDetail::kShutdown, "the runtime is stopped");
  impl_->start();
  job->env.assign(reinterpret_cast<const char*>(env.data()), env.size());
  Handle h(job);
  Scheduler& s = *impl_->pools.front().sched;
  Task* t = s.new_external_task();
  t->fn = def.entry;
  t->w0 = arg;
  t->w1 = 0;
  t->frame = impl_->jobs.put(std::move(job));
  t->client = 0;
  t->flags = engine::with_plugin_slot(0, def.plugin);
  if (def.flags & IO_FN_OUTPUT) t->flags |= engine::kTaskOutput;
  s.accept_external(t);
  return h;
}

std::vector<std::string> Runtime::functions() const {
  std::vector<std::string> names;
  for (const auto& [id, def] : impl_->registry.list()) names.push_back(def.name);
  return names;
}

std::uint32_t Runtime::workers(std::string_view pool) const {
  const auto id = impl_->pool_id(pool);
  return id < 0 ? 0 : impl_->pools[static_cast<std::size_t>(id)].sched->worker_count();
}

}  // namespace insideout
