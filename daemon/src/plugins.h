// Plugins: shared libraries that speak the C ABI of <insideout/sdk/abi.h>, loaded into
// the function registry at start (insideoutd --plugin-dir) and loaded, unloaded and
// reloaded live by the control plane.
//
// Trust: plugin code runs in the daemon with its rights, so a library is loaded only
// when neither it nor its directory can be written by anyone but root and the daemon's
// user. The file is opened O_NOFOLLOW relative to its checked directory, fstat'ed, and
// loaded through /proc/self/fd/N: the file checked is the file loaded.
//
// Each loaded library is an instance with a slot (1..255, Task flags' high byte in the
// engine). An instance's functions are named "plugin.function". Unload and reload take
// its functions out of the registry (a reload swaps in the new instance's under the same
// ids), then the instance drains: it is unloaded (fini(), dlclose) only once its slot's
// probe says nothing of it can run any more (every worker passed a quiescent point since
// the swap and no live task carries the slot). reap() does that; the daemon's loop calls
// it, and unload()/reload() call it for a bounded while themselves.
//
// Every refusal is one log line naming the file and the reason, and leaves nothing
// loaded: functions are published only after init() succeeded, and the library is
// dlclose'd.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine.h"

namespace insideout::daemon {

struct PluginInfo {
  std::string name;
  std::string version;
  std::string path;  // as given (the directory entry or the LoadPlugin path)
  std::uint8_t slot = 0;
  std::uint32_t sdk_version = 0;
  std::vector<std::string> functions;  // full names
  bool draining = false;               // unloaded or replaced, waiting for its work to end
  std::chrono::system_clock::time_point loaded{};
};

class PluginManager {
 public:
  // Called right after instance `slot`'s functions left the registry (on any thread);
  // returns a predicate, polled by reap(), that is true once nothing of the instance can
  // run any more.
  using DrainProbe = std::function<std::function<bool()>(std::uint8_t slot)>;

  PluginManager(FunctionRegistry& registry, DrainProbe probe);
  ~PluginManager();
  PluginManager(const PluginManager&) = delete;
  PluginManager& operator=(const PluginManager&) = delete;

  // Loads every *.so in `dir` (name order). Each refusal is logged; returns how many
  // loaded. A directory that fails the checks loads nothing (one log line).
  // `only_new`: skip libraries a loaded instance came from (a rescan on reload).
  std::size_t load_dir(const std::string& dir, bool only_new = false);
  // One library; the error (also logged) says why it was refused.
  absl::StatusOr<PluginInfo> load(const std::string& path);
  // NOT_FOUND for an unknown plugin. Its functions are unknown from now on; the library
  // is unloaded once drained. Waits up to `wait` for that: true when it was unloaded,
  // false when it still drains (reap() finishes it).
  absl::StatusOr<bool> unload(const std::string& name,
                              std::chrono::milliseconds wait = std::chrono::milliseconds(1000));
  // Loads `path` (empty: the loaded instance's path) as the new code of plugin `name`:
  // it must have that name. Functions of both keep their ids; the new instance's only
  // functions are added, the old one's only functions removed. On refusal the old
  // instance stays as it was.
  // `old_unloaded` as unload() says.
  struct Reloaded {
    PluginInfo plugin;
    bool old_unloaded = false;
  };
  absl::StatusOr<Reloaded> reload(const std::string& name, const std::string& path,
                                  std::chrono::milliseconds wait = std::chrono::milliseconds(1000));
  // Loaded instances first (by name), then draining ones.
  std::vector<PluginInfo> list() const;
  // Unloads the instances that have drained; returns how many still drain.
  std::size_t reap();
  // Whether some instance is draining (the loop then reaps often).
  bool draining() const;
  // At shutdown, once no worker runs: fini() and dlclose every instance.
  void shutdown();

 private:
  struct Instance;
  struct Candidate;
  using FileKey = std::pair<dev_t, ino_t>;
  struct OpenFile {
    int fd = -1;
    std::uint32_t refs = 0;  // instances of this file (one dlopen handle each)
  };

  // Opens, checks and initialises a library; its functions are not published yet.
  // `replacing`: the instance a reload replaces (its plugin and function names are not
  // "taken").
  absl::StatusOr<std::unique_ptr<Instance>> open_checked(const std::string& path,
                                                         const Instance* replacing)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status refuse(const std::string& path, absl::Status why) const;
  absl::Status check_directory(const std::string& dir) const;
  std::uint8_t free_slot() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void retire(std::unique_ptr<Instance> inst) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::size_t reap_locked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Reaps until no instance of `name` drains or `wait` passed; true when none drains.
  bool wait_drained(const std::string& name, std::chrono::milliseconds wait);
  static PluginInfo info_of(const Instance& i, bool draining);
  // fini() (when init() ran) and dlclose; lets go of its file.
  void close_instance(Instance& i, bool initialised) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  FunctionRegistry& registry_;
  DrainProbe probe_;
  mutable std::mutex mu_;
  std::vector<std::unique_ptr<Instance>> loaded_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<Instance>> draining_ ABSL_GUARDED_BY(mu_);
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  // The libraries' files by device and inode, each open once (see open_checked()).
  std::map<FileKey, OpenFile> files_ ABSL_GUARDED_BY(mu_);
};

// Plugin names: 1-32 of [a-z0-9_].
bool valid_plugin_name(std::string_view name);

}  // namespace insideout::daemon
