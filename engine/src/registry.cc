#include "registry.h"

namespace insideout::engine {

std::uint32_t FunctionRegistry::add(FunctionDef def) {
  defs_.push_back(std::move(def));
  return static_cast<std::uint32_t>(defs_.size());
}

std::optional<std::uint32_t> FunctionRegistry::id_of(std::string_view name) const noexcept {
  for (std::size_t i = 0; i < defs_.size(); ++i) {
    if (defs_[i].name == name) return static_cast<std::uint32_t>(i + 1);
  }
  return std::nullopt;
}

}  // namespace insideout::engine
