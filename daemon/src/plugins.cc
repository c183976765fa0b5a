#include "plugins.h"

#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>
#include <thread>
#include <type_traits>
#include <utility>

#include "insideout/sdk/abi.h"

namespace insideout::daemon {

using engine::kFnKnownFlags;
using engine::kFnNeedsBuffer;
using engine::valid_function_name;

namespace {

// An entry step as the engine stores it. Once the engine's StepFn is io_step_fn this is
// the identity.
template <class To = StepFn>
To to_step_fn(io_step_fn f) {
  if constexpr (std::is_same_v<To, io_step_fn>) {
    return f;
  } else {
    // NOLINTNEXTLINE: until the engine speaks the C ABI (such a plugin cannot run yet)
    return reinterpret_cast<To>(reinterpret_cast<void (*)()>(f));
  }
}

std::string mode_text(mode_t m) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(m & 07777));
  return buf;
}

// Owner root or the daemon's user, writable by nobody else.
absl::Status check_owner_mode(const struct stat& st, const std::string& what) {
  const uid_t me = ::geteuid();
  if (st.st_uid != 0 && st.st_uid != me) {
    return absl::PermissionDeniedError(what + " is owned by uid " + std::to_string(st.st_uid) +
                                       ", not root or insideoutd's uid " + std::to_string(me));
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    return absl::PermissionDeniedError(what + " is writable by group or others (mode " +
                                       mode_text(st.st_mode) + ")");
  }
  return absl::OkStatus();
}

std::string version_text(std::uint32_t v) {
  return std::to_string(IO_SDK_VERSION_MAJOR(v)) + "." + std::to_string(v & 0xFFFFu);
}

struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
};

}  // namespace

bool valid_plugin_name(std::string_view name) {
  if (name.empty() || name.size() > 32) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
  });
}

struct PluginManager::Instance {
  std::string name;
  std::string version;
  std::string path;
  std::uint8_t slot = 0;
  std::uint32_t sdk_version = 0;
  void* handle = nullptr;
  FileKey file{};  // its entry in files_ while it holds one
  bool holds_file = false;
  const io_plugin_info* info = nullptr;
  std::vector<FunctionDef> defs;  // full names, plugin = slot
  std::chrono::system_clock::time_point loaded{};
  // Draining: true once nothing of it can run; the registry's retire mark at the swap.
  std::function<bool()> drained;
  std::uint64_t retire_mark = 0;
};

void PluginManager::close_instance(Instance& i, bool initialised) {
  if (initialised && i.info != nullptr && i.info->fini != nullptr) i.info->fini();
  if (i.handle != nullptr) ::dlclose(i.handle);
  i.handle = nullptr;
  i.info = nullptr;
  if (i.holds_file) {
    auto it = files_.find(i.file);
    if (it != files_.end() && --it->second.refs == 0) {
      ::close(it->second.fd);
      files_.erase(it);
    }
    i.holds_file = false;
  }
}

// What init() registers into: collected here, published only when init() succeeded.
struct PluginManager::Candidate {
  std::string prefix;
  std::uint8_t slot = 0;
  const FunctionRegistry* registry = nullptr;
  std::set<std::string> replaceable;  // names of the instance a reload replaces
  std::vector<FunctionDef> defs;
  std::string why;  // the first problem, for the log line

  void problem(std::string m) {
    if (why.empty()) why = std::move(m);
  }

  static int add(void* host, const io_function_def* d) {
    auto& c = *static_cast<Candidate*>(host);
    if (d == nullptr || d->size < sizeof(io_function_def)) {
      c.problem("a function definition of " + std::to_string(d == nullptr ? 0 : d->size) +
                " bytes (ABI " + std::to_string(IO_SDK_ABI_VERSION) + " has " +
                std::to_string(sizeof(io_function_def)) + ")");
      return 1;
    }
    const std::string short_name = d->name == nullptr ? "" : d->name;
    const std::string full = c.prefix + "." + short_name;
    if (short_name.empty() || short_name.find('.') != std::string::npos ||
        !valid_function_name(full)) {
      c.problem("invalid function name '" + short_name +
                "' (1-64 of [A-Za-z0-9_-] with the plugin's prefix, no '.')");
      return 1;
    }
    if (d->entry == nullptr) {
      c.problem("function '" + full + "' has no entry step");
      return 1;
    }
    if ((d->flags & ~kFnKnownFlags) != 0) {
      c.problem("function '" + full + "' has unknown flags " + std::to_string(d->flags));
      return 1;
    }
    for (const auto& e : c.defs) {
      if (e.name == full) {
        c.problem("function '" + full + "' is registered twice");
        return 1;
      }
    }
    if (c.registry->id_of(full) && c.replaceable.count(full) == 0) {
      c.problem("function '" + full + "' is registered already");
      return 1;
    }
    FunctionDef def;
    def.name = full;
    def.help = d->help == nullptr ? "" : d->help;
    def.entry = to_step_fn(d->entry);
    def.flags = d->flags;
    def.needs_buffer = (d->flags & kFnNeedsBuffer) != 0;
    def.max_arg = d->max_arg == 0 ? ~std::uint64_t{0} : d->max_arg;
    def.plugin = c.slot;
    c.defs.push_back(std::move(def));
    return 0;
  }
  static void error(void* host, const char* msg) {
    static_cast<Candidate*>(host)->problem(msg == nullptr ? "(no message)" : msg);
  }
};

PluginManager::PluginManager(FunctionRegistry& registry, DrainProbe probe)
    : registry_(registry), probe_(std::move(probe)) {}

// Instances still loaded when the manager goes without shutdown() stay mapped: a worker
// might still run their code, and the process is ending anyway.
PluginManager::~PluginManager() {
  std::lock_guard lock(mu_);
  if (shut_down_) return;
  for (auto& i : loaded_) i->handle = nullptr;
  for (auto& i : draining_) i->handle = nullptr;
}

absl::Status PluginManager::refuse(const std::string& path, absl::Status why) const {
  spdlog::error("plugin {} refused: {}", path, std::string(why.message()));
  return why;
}

absl::Status PluginManager::check_directory(const std::string& dir) const {
  Fd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (d.fd < 0) {
    const int e = errno;
    const std::string m = "directory " + dir + ": " + std::strerror(e);
    return e == ENOENT ? absl::NotFoundError(m) : absl::FailedPreconditionError(m);
  }
  struct stat st {};
  if (::fstat(d.fd, &st) != 0)
    return absl::InternalError("fstat " + dir + ": " + std::strerror(errno));
  return check_owner_mode(st, "its directory " + dir);
}

std::uint8_t PluginManager::free_slot() const {
  for (unsigned s = 1; s <= 255; ++s) {
    auto uses = [&](const auto& v) {
      return std::any_of(v.begin(), v.end(), [&](const auto& i) { return i->slot == s; });
    };
    if (!uses(loaded_) && !uses(draining_)) return static_cast<std::uint8_t>(s);
  }
  return 0;
}

absl::StatusOr<std::unique_ptr<PluginManager::Instance>> PluginManager::open_checked(
    const std::string& path, const Instance* replacing) {
  if (shut_down_) return absl::UnavailableError("insideoutd is shutting down");
  const auto slash = path.rfind('/');
  const std::string dir =
      slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  // The directory, then the file relative to the very directory checked.
  Fd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (d.fd < 0) {
    const int e = errno;
    const std::string m = "directory " + dir + ": " + std::strerror(e);
    return e == ENOENT ? absl::NotFoundError(m) : absl::FailedPreconditionError(m);
  }
  struct stat st {};
  if (::fstat(d.fd, &st) != 0)
    return absl::InternalError("fstat " + dir + ": " + std::strerror(errno));
  if (auto s = check_owner_mode(st, "its directory " + dir); !s.ok()) return s;
  Fd f(::openat(d.fd, base.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (f.fd < 0) {
    const int e = errno;
    if (e == ELOOP) return absl::PermissionDeniedError("it is a symbolic link");
    if (e == ENOENT) return absl::NotFoundError("no such file");
    return absl::FailedPreconditionError(std::string("open: ") + std::strerror(e));
  }
  if (::fstat(f.fd, &st) != 0)
    return absl::InternalError(std::string("fstat: ") + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) return absl::FailedPreconditionError("not a regular file");
  if (auto s = check_owner_mode(st, "the file"); !s.ok()) return s;

  const std::uint8_t slot = free_slot();
  if (slot == 0) return absl::ResourceExhaustedError("255 plugin instances are loaded or draining");
  auto inst = std::make_unique<Instance>();
  inst->path = path;
  inst->slot = slot;
  // The descriptor checked is the file loaded (a rename meanwhile changes nothing). glibc
  // knows a library by every name it was opened under and returns it for that name
  // again, and it opens a file it has mapped already (same device and inode) as that
  // library: so one file gets one descriptor, open while any instance of it is loaded,
  // and "/proc/self/fd/N" names nothing else meanwhile.
  inst->file = {st.st_dev, st.st_ino};
  auto [fit, fresh] = files_.try_emplace(inst->file, OpenFile{f.fd, 0});
  if (fresh) f.fd = -1;  // files_ owns it now
  ++fit->second.refs;
  inst->holds_file = true;
  // From here on every refusal unloads the library.
  struct Closer {
    PluginManager* m;
    Instance* i;
    ~Closer() {
      if (i != nullptr) m->close_instance(*i, false);
    }
  } closer{this, inst.get()};
  const std::string via = "/proc/self/fd/" + std::to_string(fit->second.fd);
  inst->handle = ::dlopen(via.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (inst->handle == nullptr) {
    const char* e = ::dlerror();
    return absl::FailedPreconditionError(std::string("dlopen: ") + (e ? e : "failed"));
  }
  auto entry = reinterpret_cast<io_plugin_entry_fn>(::dlsym(inst->handle, IO_PLUGIN_ENTRY_SYMBOL));
  if (entry == nullptr)
    return absl::FailedPreconditionError(std::string("no entry point ") + IO_PLUGIN_ENTRY_SYMBOL +
                                         " (not an insideout plugin, or built without "
                                         "INSIDEOUT_PLUGIN)");
  const io_plugin_info* info = entry();
  if (info == nullptr) return absl::FailedPreconditionError("its entry point returned nothing");
  if (info->abi_version != IO_SDK_ABI_VERSION)
    return absl::FailedPreconditionError(
        "it speaks plugin ABI " + std::to_string(info->abi_version) + "; insideoutd speaks ABI " +
        std::to_string(IO_SDK_ABI_VERSION));
  if (info->size < sizeof(io_plugin_info))
    return absl::FailedPreconditionError(
        "its plugin info is " + std::to_string(info->size) + " bytes, fewer than ABI " +
        std::to_string(IO_SDK_ABI_VERSION) + "'s " + std::to_string(sizeof(io_plugin_info)));
  if (IO_SDK_VERSION_MAJOR(info->sdk_version) != IO_SDK_VERSION_MAJOR(IO_SDK_VERSION))
    return absl::FailedPreconditionError("built with SDK " + version_text(info->sdk_version) +
                                         "; insideoutd has SDK " + version_text(IO_SDK_VERSION) +
                                         " (the major versions differ)");
  const std::string name = info->name == nullptr ? "" : info->name;
  if (!valid_plugin_name(name))
    return absl::InvalidArgumentError("invalid plugin name '" + name + "' (1-32 of [a-z0-9_])");
  if (replacing != nullptr && name != replacing->name)
    return absl::InvalidArgumentError("it is plugin '" + name + "', not '" + replacing->name + "'");
  if (replacing == nullptr) {
    for (const auto& l : loaded_) {
      if (l->name == name)
        return absl::AlreadyExistsError("a plugin named '" + name + "' is loaded already (from " +
                                        l->path + ")");
    }
  }
  if (info->init == nullptr) return absl::FailedPreconditionError("it has no init function");
  inst->name = name;
  inst->version = info->version == nullptr ? "" : info->version;
  inst->sdk_version = info->sdk_version;
  inst->info = info;

  Candidate c;
  c.prefix = name;
  c.slot = slot;
  c.registry = &registry_;
  if (replacing != nullptr) {
    for (const auto& def : replacing->defs) c.replaceable.insert(def.name);
  }
  io_registrar r{};
  r.size = sizeof r;
  r.host = &c;
  r.add = &Candidate::add;
  r.error = &Candidate::error;
  const int rc = info->init(&r);
  if (rc != 0 || !c.why.empty()) {
    // init ran: its fini() releases what it took.
    closer.i = nullptr;
    close_instance(*inst, true);
    return absl::FailedPreconditionError(
        "init failed" + (rc != 0 ? " (returned " + std::to_string(rc) + ")" : std::string()) +
        ": " + (c.why.empty() ? std::string("it gave no reason") : c.why));
  }
  inst->defs = std::move(c.defs);
  inst->loaded = std::chrono::system_clock::now();
  closer.i = nullptr;
  return inst;
}

absl::StatusOr<PluginInfo> PluginManager::load(const std::string& path) {
  std::lock_guard lock(mu_);
  auto inst = open_checked(path, nullptr);
  if (!inst.ok()) return refuse(path, inst.status());
  Instance& i = **inst;
  // Publish every function, or none (a name taken meanwhile withdraws the others).
  std::vector<std::string> added;
  for (const auto& def : i.defs) {
    auto r = registry_.add_checked(def);
    if (!r.ok()) {
      for (const auto& n : added) registry_.remove(n);
      close_instance(i, true);
      return refuse(path, r.error == FunctionRegistry::Error::kExists
                              ? absl::AlreadyExistsError(r.why)
                              : absl::FailedPreconditionError(r.why));
    }
    added.push_back(def.name);
  }
  spdlog::info("plugin '{}' {} loaded from {} (slot {}): {} function{}", i.name, i.version, path,
               i.slot, i.defs.size(), i.defs.size() == 1 ? "" : "s");
  PluginInfo out = info_of(i, false);
  loaded_.push_back(std::move(*inst));
  return out;
}

std::size_t PluginManager::load_dir(const std::string& dir, bool only_new) {
  if (auto s = check_directory(dir); !s.ok()) {
    spdlog::error("plugin directory {} refused: {}", dir, std::string(s.message()));
    return 0;
  }
  std::vector<std::string> names;
  if (DIR* d = ::opendir(dir.c_str()); d != nullptr) {
    while (const dirent* e = ::readdir(d)) {
      const std::string n = e->d_name;
      if (n.size() > 3 && n.compare(n.size() - 3, 3, ".so") == 0) names.push_back(n);
    }
    ::closedir(d);
  }
  std::sort(names.begin(), names.end());
  if (only_new) {
    const auto loaded = list();
    std::erase_if(names, [&](const std::string& n) {
      return std::any_of(loaded.begin(), loaded.end(),
                         [&](const PluginInfo& p) { return p.path == dir + "/" + n; });
    });
  }
  std::size_t loaded = 0;
  for (const auto& n : names) loaded += load(dir + "/" + n).ok() ? 1 : 0;
  spdlog::info("plugin directory {}: {} of {} loaded", dir, loaded, names.size());
  return loaded;
}

void PluginManager::retire(std::unique_ptr<Instance> inst) {
  inst->retire_mark = registry_.retire_mark();
  inst->drained = probe_ ? probe_(inst->slot) : [] { return true; };
  draining_.push_back(std::move(inst));
}

absl::StatusOr<bool> PluginManager::unload(const std::string& name,
                                           std::chrono::milliseconds wait) {
  {
    std::lock_guard lock(mu_);
    auto it = std::find_if(loaded_.begin(), loaded_.end(),
                           [&](const auto& i) { return i->name == name; });
    if (it == loaded_.end()) return absl::NotFoundError("no plugin named '" + name + "' is loaded");
    std::unique_ptr<Instance> inst = std::move(*it);
    loaded_.erase(it);
    for (const auto& def : inst->defs) registry_.remove(def.name);
    spdlog::info("plugin '{}' (slot {}): functions withdrawn, draining", name, inst->slot);
    retire(std::move(inst));
  }
  return wait_drained(name, wait);
}

absl::StatusOr<PluginManager::Reloaded> PluginManager::reload(const std::string& name,
                                                              const std::string& path,
                                                              std::chrono::milliseconds wait) {
  Reloaded out;
  {
    std::lock_guard lock(mu_);
    auto it = std::find_if(loaded_.begin(), loaded_.end(),
                           [&](const auto& i) { return i->name == name; });
    if (it == loaded_.end()) return absl::NotFoundError("no plugin named '" + name + "' is loaded");
    const std::string from = path.empty() ? (*it)->path : path;
    auto fresh = open_checked(from, it->get());
    if (!fresh.ok()) return refuse(from, fresh.status());
    std::unique_ptr<Instance> old = std::move(*it);
    Instance& n = **fresh;
    // Swap: same names keep their ids; the new code serves every new continuation.
    std::set<std::string> kept;
    for (const auto& def : n.defs) {
      auto r = registry_.replace(def);
      if (r.error == FunctionRegistry::Error::kNotFound) r = registry_.add_checked(def);
      if (!r.ok()) spdlog::warn("plugin '{}' reload: {}", name, r.why);
      kept.insert(def.name);
    }
    for (const auto& def : old->defs) {
      if (kept.count(def.name) == 0) registry_.remove(def.name);
    }
    spdlog::info("plugin '{}' reloaded from {}: {} {} (slot {}) replaces {} (slot {}), draining",
                 name, from, n.version,
                 n.defs.size() == 1 ? "1 function" : std::to_string(n.defs.size()) + " functions",
                 n.slot, old->version, old->slot);
    out.plugin = info_of(n, false);
    *it = std::move(*fresh);
    retire(std::move(old));
  }
  out.old_unloaded = wait_drained(name, wait);
  return out;
}

std::size_t PluginManager::reap() {
  std::lock_guard lock(mu_);
  return reap_locked();
}

std::size_t PluginManager::reap_locked() {
  for (auto it = draining_.begin(); it != draining_.end();) {
    Instance& i = **it;
    // First wait out every ReadGuard held now (reclaim(0) frees nothing): a thread that
    // read an old definition outside the workers (the serialized path, gRPC Submit) has
    // handed its task to the engine before the probe looks.
    registry_.reclaim(0);
    if (!i.drained()) {
      ++it;
      continue;
    }
    registry_.reclaim(i.retire_mark);
    close_instance(i, true);
    spdlog::info("plugin '{}' {} (slot {}) unloaded: nothing of it runs any more", i.name,
                 i.version, i.slot);
    it = draining_.erase(it);
  }
  return draining_.size();
}

bool PluginManager::wait_drained(const std::string& name, std::chrono::milliseconds wait) {
  const auto until = std::chrono::steady_clock::now() + wait;
  for (;;) {
    {
      std::lock_guard lock(mu_);
      reap_locked();
      if (std::none_of(draining_.begin(), draining_.end(),
                       [&](const auto& i) { return i->name == name; }))
        return true;
    }
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

bool PluginManager::draining() const {
  std::lock_guard lock(mu_);
  return !draining_.empty();
}

PluginInfo PluginManager::info_of(const Instance& i, bool draining) {
  PluginInfo p;
  p.name = i.name;
  p.version = i.version;
  p.path = i.path;
  p.slot = i.slot;
  p.sdk_version = i.sdk_version;
  for (const auto& d : i.defs) p.functions.push_back(d.name);
  p.draining = draining;
  p.loaded = i.loaded;
  return p;
}

std::vector<PluginInfo> PluginManager::list() const {
  std::lock_guard lock(mu_);
  std::vector<PluginInfo> out;
  for (const auto& i : loaded_) out.push_back(info_of(*i, false));
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  for (const auto& i : draining_) out.push_back(info_of(*i, true));
  return out;
}

void PluginManager::shutdown() {
  std::lock_guard lock(mu_);
  if (shut_down_) return;
  shut_down_ = true;
  for (auto& i : draining_) close_instance(*i, true);
  for (auto& i : loaded_) close_instance(*i, true);
  draining_.clear();
  loaded_.clear();
}

}  // namespace insideout::daemon
