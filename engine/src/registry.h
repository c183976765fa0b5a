// The function registry: names to ids to step functions, changed live (plugins loaded,
// reloaded and unloaded while workers run) and read by the workers without a lock.
//
// Ids are stable per name for the daemon's lifetime: the first registration of a name
// gives it the next id (ids start at 1; 0 is never valid), and a later registration of
// the same name (a reload, or a load after an unload) gets the same id back, so ids that
// clients cached keep working across a reload. An unloaded name's id is unknown until
// the name is registered again; an id never names another function. At most kCapacity
// names are ever known.
//
// Memory ordering:
//   G1 (slots_[id].store, release, in publish()) pairs with G2 (slots_[id].load,
//      acquire, in find()): a reader that sees a definition sees it fully built.
//   A definition, once published, is immutable. A replaced or removed one is retired,
//   not freed: reclaim() frees what was retired before a grace period that the caller
//   establishes (every worker passed a quiescent point since, see PluginManager), and
//   readers outside the workers (the serialized path, the control plane) hold a
//   ReadGuard, which reclaim() waits out.
//   Writers (add, replace, remove) are serialized by mu_; so are name lookups.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "task.h"

namespace insideout::engine {

// Values of FunctionDef::flags, the plugin ABI's (insideout/sdk/abi.h IO_FN_*).
inline constexpr std::uint32_t kFnNeedsBuffer = 1u << 0;  // IO_FN_NEEDS_BUFFER
inline constexpr std::uint32_t kFnOutput = 1u << 1;       // IO_FN_OUTPUT
inline constexpr std::uint32_t kFnKnownFlags = kFnNeedsBuffer | kFnOutput;

struct FunctionDef {
  std::string name;
  std::string help;
  StepFn entry = nullptr;
  bool needs_buffer = false;  // the environment must be a buffer in the client's segment
  std::uint64_t max_arg = ~std::uint64_t{0};
  std::uint32_t flags = 0;  // kFn* (IO_FN_*); kFnNeedsBuffer and needs_buffer agree
  std::uint8_t plugin = 0;  // the plugin slot of its code (0: built-in, else 1..255); task.h
};

class FunctionRegistry {
 public:
  static constexpr std::uint32_t kCapacity = 4096;  // names ever registered

  // One function as listed (a copy).
  struct Entry {
    std::uint32_t id = 0;
    FunctionDef def;
  };

  FunctionRegistry();
  ~FunctionRegistry();
  FunctionRegistry(const FunctionRegistry&) = delete;
  FunctionRegistry& operator=(const FunctionRegistry&) = delete;

  // What add_checked() and replace() did (the engine has no absl: a code and a reason).
  enum class Error { kNone, kInvalid, kExists, kNotFound, kFull };
  struct Result {
    std::uint32_t id = 0;
    Error error = Error::kNone;
    std::string why;
    bool ok() const noexcept { return error == Error::kNone; }
  };

  // Registers a function; returns its id, or 0 when the name is registered already, is
  // not a valid name, or the table is full (see add_checked() for why).
  std::uint32_t add(FunctionDef def);
  Result add_checked(FunctionDef def);
  // Swaps the definition of a registered name (same id); the old one is retired.
  Result replace(FunctionDef def);
  // Makes the name's id unknown; the old definition is retired. False if not registered.
  bool remove(std::string_view name);

  // Lock-free, any thread; the result stays valid until the caller's next quiescent
  // point (workers) or while it holds a ReadGuard (other threads).
  const FunctionDef* find(std::uint32_t id) const noexcept {
    if (id == 0 || id >= kCapacity) return nullptr;
    // G2: pairs with G1 in publish().
    return slots_[id].load(std::memory_order_acquire);
  }
  // Registered names only; takes mu_.
  std::optional<std::uint32_t> id_of(std::string_view name) const;
  // Every registered function, by id.
  std::vector<Entry> list() const;
  // The registered name nearest to `name` by edit distance, when near enough to be a
  // likely typo (at most a third of its length, at least 1, at most 3); empty otherwise.
  std::string closest(std::string_view name) const;
  // "unknown function 'zstd.compres'; did you mean 'zstd.compress'?"
  std::string unknown_message(std::string_view name) const;

  // Held by threads other than the workers around a find() and the use of its result.
  class ReadGuard {
   public:
    explicit ReadGuard(const FunctionRegistry& r) : lock_(r.readers_) {}

   private:
    std::shared_lock<std::shared_mutex> lock_;
  };
  // How many retired definitions wait for reclaim().
  std::size_t retired() const;
  // Returns a token naming everything retired so far; reclaim(token) frees those
  // definitions. The caller passes a token only once every worker has passed a
  // quiescent point since retire_mark() returned; reclaim() itself waits for every
  // ReadGuard held at that moment.
  std::uint64_t retire_mark() const;
  void reclaim(std::uint64_t mark);

 private:
  void publish(std::uint32_t id, std::unique_ptr<FunctionDef> def);

  mutable std::mutex mu_;
  std::unordered_map<std::string, std::uint32_t> ids_;  // every name ever
  std::uint32_t next_id_ = 1;
  // Owns the published definitions (by id) and the retired ones (with their mark).
  std::vector<std::unique_ptr<FunctionDef>> owned_;
  std::vector<std::pair<std::uint64_t, std::unique_ptr<FunctionDef>>> retired_;
  std::uint64_t retire_seq_ = 0;
  mutable std::shared_mutex readers_;
  std::unique_ptr<std::atomic<const FunctionDef*>[]> slots_;
};

// The edit (Levenshtein) distance between two names; stops counting past `limit`
// (returns limit + 1 then).
std::size_t edit_distance(std::string_view a, std::string_view b, std::size_t limit);
// Function names: 1-64 of [A-Za-z0-9_.-], starting with a letter or digit.
bool valid_function_name(std::string_view name);

// noop, echo, checksum, fanout, chain, sleep.
void register_builtins(FunctionRegistry& registry);

}  // namespace insideout::engine
