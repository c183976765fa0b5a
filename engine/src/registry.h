// The function registry: names to ids to step functions. Filled before the workers
// start (built-ins now, plugins later) and read-only afterwards, so lookups take no lock.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "task.h"

namespace insideout::engine {

struct FunctionDef {
  std::string name;
  std::string help;
  StepFn entry = nullptr;
  bool needs_buffer = false;  // the environment must be a buffer in the client's segment
  std::uint64_t max_arg = ~std::uint64_t{0};
  std::uint32_t flags = 0;  // IO_FN_* (sdk/abi.h)
  std::uint8_t plugin = 0;  // the plugin slot of its code (0: built-in); see task.h
};

class FunctionRegistry {
 public:
  // Returns the new id (ids start at 1; 0 is never valid). Names must be unique.
  std::uint32_t add(FunctionDef def);
  const FunctionDef* find(std::uint32_t id) const noexcept {
    return id >= 1 && id <= defs_.size() ? &defs_[id - 1] : nullptr;
  }
  std::optional<std::uint32_t> id_of(std::string_view name) const noexcept;
  std::span<const FunctionDef> all() const noexcept { return defs_; }

 private:
  std::vector<FunctionDef> defs_;
};

// noop, echo, checksum, fanout, chain, sleep.
void register_builtins(FunctionRegistry& registry);

}  // namespace insideout::engine
