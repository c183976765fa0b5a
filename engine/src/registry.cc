#include "registry.h"

#include <algorithm>

namespace insideout::engine {

namespace {

bool name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '.' || c == '-';
}

// needs_buffer and kFnNeedsBuffer say the same thing: whichever was set wins.
void normalise(FunctionDef& d) {
  if (d.needs_buffer) d.flags |= kFnNeedsBuffer;
  d.needs_buffer = (d.flags & kFnNeedsBuffer) != 0;
}

}  // namespace

bool valid_function_name(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  if (name.front() == '.' || name.front() == '-' || name.front() == '_') return false;
  return std::all_of(name.begin(), name.end(), name_char);
}

std::size_t edit_distance(std::string_view a, std::string_view b, std::size_t limit) {
  // Optimal string alignment: insertions, deletions, substitutions and transpositions of
  // two neighbours ("chian" is one edit from "chain"). Names are short.
  if ((a.size() > b.size() ? a.size() - b.size() : b.size() - a.size()) > limit) return limit + 1;
  std::vector<std::size_t> prev2(b.size() + 1), prev(b.size() + 1), row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      row[j] =
          std::min({prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0u : 1u)});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        row[j] = std::min(row[j], prev2[j - 2] + 1);
    }
    std::swap(prev2, prev);
    std::swap(prev, row);
  }
  return std::min(prev[b.size()], limit + 1);
}

FunctionRegistry::FunctionRegistry()
    : owned_(kCapacity), slots_(new std::atomic<const FunctionDef*>[kCapacity]) {
  // Relaxed: nobody reads the table before it is shared (the scheduler's start()).
  for (std::uint32_t i = 0; i < kCapacity; ++i) slots_[i].store(nullptr, std::memory_order_relaxed);
}

FunctionRegistry::~FunctionRegistry() = default;

void FunctionRegistry::publish(std::uint32_t id, std::unique_ptr<FunctionDef> def) {
  const FunctionDef* raw = def.get();
  if (owned_[id] != nullptr) retired_.emplace_back(++retire_seq_, std::move(owned_[id]));
  owned_[id] = std::move(def);
  // G1: pairs with G2 in find(); the definition is complete before it is seen.
  slots_[id].store(raw, std::memory_order_release);
}

namespace {
FunctionRegistry::Result fail(FunctionRegistry::Error e, std::string why) {
  return {0, e, std::move(why)};
}
}  // namespace

std::uint32_t FunctionRegistry::add(FunctionDef def) { return add_checked(std::move(def)).id; }

FunctionRegistry::Result FunctionRegistry::add_checked(FunctionDef def) {
  if (!valid_function_name(def.name))
    return fail(Error::kInvalid, "invalid function name '" + def.name +
                                     "' (1-64 of [A-Za-z0-9_.-], starting with a letter or digit)");
  if (def.entry == nullptr)
    return fail(Error::kInvalid, "function '" + def.name + "' has no entry step");
  if ((def.flags & ~kFnKnownFlags) != 0)
    return fail(Error::kInvalid, "function '" + def.name + "' has unknown flags");
  normalise(def);
  std::lock_guard lock(mu_);
  auto it = ids_.find(def.name);
  std::uint32_t id;
  if (it != ids_.end()) {
    id = it->second;
    if (owned_[id] != nullptr)
      return fail(Error::kExists, "function '" + def.name + "' is registered already");
  } else {
    if (next_id_ >= kCapacity)
      return fail(Error::kFull,
                  "the function table is full (" + std::to_string(kCapacity - 1) + " names)");
    id = next_id_++;
    ids_.emplace(def.name, id);
  }
  publish(id, std::make_unique<FunctionDef>(std::move(def)));
  return {id, Error::kNone, {}};
}

FunctionRegistry::Result FunctionRegistry::replace(FunctionDef def) {
  if ((def.flags & ~kFnKnownFlags) != 0 || def.entry == nullptr)
    return fail(Error::kInvalid, "function '" + def.name + "': bad flags or no entry step");
  normalise(def);
  std::lock_guard lock(mu_);
  auto it = ids_.find(def.name);
  if (it == ids_.end() || owned_[it->second] == nullptr)
    return fail(Error::kNotFound, "function '" + def.name + "' is not registered");
  const std::uint32_t id = it->second;
  publish(id, std::make_unique<FunctionDef>(std::move(def)));
  return {id, Error::kNone, {}};
}

bool FunctionRegistry::remove(std::string_view name) {
  std::lock_guard lock(mu_);
  auto it = ids_.find(std::string(name));
  if (it == ids_.end() || owned_[it->second] == nullptr) return false;
  const std::uint32_t id = it->second;
  // Release: pairs with G2 like G1 (a reader that sees null needs nothing else).
  slots_[id].store(nullptr, std::memory_order_release);
  retired_.emplace_back(++retire_seq_, std::move(owned_[id]));
  return true;
}

std::optional<std::uint32_t> FunctionRegistry::id_of(std::string_view name) const {
  std::lock_guard lock(mu_);
  auto it = ids_.find(std::string(name));
  if (it == ids_.end() || owned_[it->second] == nullptr) return std::nullopt;
  return it->second;
}

std::vector<FunctionRegistry::Entry> FunctionRegistry::list() const {
  std::lock_guard lock(mu_);
  std::vector<Entry> out;
  for (std::uint32_t id = 1; id < next_id_; ++id) {
    if (owned_[id] != nullptr) out.push_back({id, *owned_[id]});
  }
  return out;
}

std::string FunctionRegistry::closest(std::string_view name) const {
  // A typo, not another function: at most a third of the name, and at most 3 edits.
  const std::size_t limit = std::clamp<std::size_t>(name.size() / 3, 1, 3);
  std::lock_guard lock(mu_);
  std::string best;
  std::size_t best_d = limit + 1;
  for (std::uint32_t id = 1; id < next_id_; ++id) {
    if (owned_[id] == nullptr) continue;
    const std::string& n = owned_[id]->name;
    const std::size_t d = edit_distance(name, n, limit);
    if (d < best_d || (d == best_d && !best.empty() && n < best)) {
      best_d = d;
      best = n;
    }
  }
  if (best_d <= limit) return best;
  // Or the function under a plugin's prefix: "compress" for "zstd.compress".
  for (std::uint32_t id = 1; id < next_id_; ++id) {
    if (owned_[id] == nullptr) continue;
    const std::string& n = owned_[id]->name;
    const auto dot = n.rfind('.');
    if (dot != std::string::npos && std::string_view(n).substr(dot + 1) == name) return n;
  }
  return {};
}

std::string FunctionRegistry::unknown_message(std::string_view name) const {
  std::string m = "unknown function '" + std::string(name) + "'";
  const std::string near = closest(name);
  if (!near.empty()) m += "; did you mean '" + near + "'?";
  return m;
}

std::size_t FunctionRegistry::retired() const {
  std::lock_guard lock(mu_);
  return retired_.size();
}

std::uint64_t FunctionRegistry::retire_mark() const {
  std::lock_guard lock(mu_);
  return retire_seq_;
}

void FunctionRegistry::reclaim(std::uint64_t mark) {
  // Waits for every ReadGuard taken before now: none of them can still use a definition
  // retired before `mark` once this returns.
  { std::unique_lock wait(readers_); }
  std::lock_guard lock(mu_);
  std::erase_if(retired_, [&](const auto& r) { return r.first <= mark; });
}

}  // namespace insideout::engine
