#include "config_file.h"

#include <toml++/toml.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include "engine.h"
#include "insideout/shm/futex.h"

namespace insideout::daemon {
namespace {

std::uint32_t line_of(const toml::node& n) {
  return static_cast<std::uint32_t>(n.source().begin.line);
}

// Levenshtein distance, for "did you mean".
std::size_t distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

std::string unknown_key(const std::string& key, const std::vector<std::string>& known) {
  std::string best;
  std::size_t best_d = 3;  // suggest only close names
  for (const auto& k : known) {
    const std::size_t d = distance(key, k);
    if (d < best_d) best_d = d, best = k;
  }
  return "unknown key" + (best.empty() ? std::string() : " (did you mean '" + best + "'?)");
}

const char* type_name(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a float";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::table:
      return "a table";
    default:
      return "a date or time";
  }
}

// Reads one table's keys into their fields, recording each error with its line and key.
class Reader {
 public:
  Reader(std::vector<ConfigError>& errors, std::string prefix)
      : errors_(errors), prefix_(std::move(prefix)) {}

  using Handler = std::function<void(const toml::node&)>;
  void on(const std::string& key, Handler h) {
    handlers_.emplace(key, std::move(h));
    known_.push_back(key);
  }
  void run(const toml::table& t) {
    for (const auto& [k, v] : t) {
      const std::string key(k.str());
      current_ = prefix_ + key;
      auto it = handlers_.find(key);
      if (it == handlers_.end()) {
        error(v, unknown_key(key, known_));
        continue;
      }
      it->second(v);
    }
  }
  void error(const toml::node& n, std::string message) {
    errors_.push_back({line_of(n), current_, std::move(message)});
  }
  const std::string& current() const { return current_; }

  // Typed fields. Each returns false (after recording why) when the value is unusable.
  bool text(const toml::node& n, std::string* out) {
    if (!n.is_string())
      return error(n, std::string("expected a string, not ") + type_name(n)), false;
    *out = *n.value<std::string>();
    return true;
  }
  bool boolean(const toml::node& n, bool* out) {
    if (!n.is_boolean())
      return error(n, std::string("expected true or false, not ") + type_name(n)), false;
    *out = *n.value<bool>();
    return true;
  }
  template <typename T>
  bool integer(const toml::node& n, T* out, std::int64_t lo, std::int64_t hi) {
    if (!n.is_integer())
      return error(n, std::string("expected an integer, not ") + type_name(n)), false;
    const std::int64_t v = *n.value<std::int64_t>();
    if (v < lo || v > hi) {
      error(n, std::to_string(v) + " is out of range: " + std::to_string(lo) + ".." +
                   std::to_string(hi));
      return false;
    }
    *out = static_cast<T>(v);
    return true;
  }
  bool cpus(const toml::node& n, std::vector<int>* out) {
    std::string s;
    if (!text(n, &s)) return false;
    if (s.empty()) {  // the default: every allowed CPU
      out->clear();
      return true;
    }
    std::string err;
    auto list = parse_cpu_list(s, &err);
    if (!list) return error(n, err), false;
    *out = *list;
    return true;
  }
  bool strings(const toml::node& n, std::vector<std::string>* out) {
    const toml::array* a = n.as_array();
    if (a == nullptr)
      return error(n, std::string("expected an array of strings, not ") + type_name(n)), false;
    std::vector<std::string> v;
    for (const auto& e : *a) {
      if (!e.is_string())
        return error(e, std::string("expected strings, found ") + type_name(e)), false;
      v.push_back(*e.value<std::string>());
    }
    *out = std::move(v);
    return true;
  }
  bool one_of(const toml::node& n, std::string* out, const std::vector<std::string>& allowed) {
    std::string s;
    if (!text(n, &s)) return false;
    if (std::find(allowed.begin(), allowed.end(), s) == allowed.end()) {
      std::string list;
      for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
      error(n, "'" + s + "' is not one of " + list);
      return false;
    }
    *out = s;
    return true;
  }

 private:
  std::vector<ConfigError>& errors_;
  std::string prefix_;
  std::string current_;
  std::map<std::string, Handler> handlers_;
  std::vector<std::string> known_;
};

constexpr std::int64_t kU32 = std::numeric_limits<std::uint32_t>::max();
const std::vector<std::string> kIdle = {"block", "spin-then-block", "poll"};
const std::vector<std::string> kPolicies = {"other", "batch", "idle", "fifo", "rr"};
const std::vector<std::string> kLevels = {"trace", "debug", "info", "warn", "error", "off"};

// `autosize = { min = 1, max = 4, grow_after_us = 1000, shrink_after_ms = 20,
// target_delay_us = 200, interval_us = 250 }`: min and max required, the rest optional.
void read_autosize(const toml::node& n, const std::string& prefix,
                   std::optional<engine::AutosizeConfig>* out, std::vector<ConfigError>& errors) {
  const toml::table* t = n.as_table();
  if (t == nullptr) {
    errors.push_back(
        {line_of(n), prefix,
         std::string("expected a table such as { min = 1, max = 4 }, not ") + type_name(n)});
    return;
  }
  Reader r(errors, prefix + ".");
  engine::AutosizeConfig c;
  c.grow_after = c.shrink_after = c.target_delay = c.interval = std::chrono::microseconds(0);
  bool has_min = false, has_max = false;
  auto us = [&](std::chrono::microseconds* f, std::int64_t scale) {
    return [&r, f, scale](const toml::node& v) {
      std::int64_t x;
      if (r.integer(v, &x, 1, 600'000'000 / scale)) *f = std::chrono::microseconds(x * scale);
    };
  };
  r.on("min", [&](const toml::node& v) { has_min = r.integer(v, &c.min, 1, kMaxPoolWorkers); });
  r.on("max", [&](const toml::node& v) { has_max = r.integer(v, &c.max, 1, kMaxPoolWorkers); });
  r.on("grow_after_us", us(&c.grow_after, 1));
  r.on("shrink_after_ms", us(&c.shrink_after, 1000));
  r.on("target_delay_us", us(&c.target_delay, 1));
  r.on("interval_us", us(&c.interval, 1));
  const std::size_t before = errors.size();
  r.run(*t);
  if (!has_min || !has_max) {
    if (errors.size() == before)
      errors.push_back(
          {line_of(n), prefix, "autosize needs min and max, e.g. { min = 1, max = 4 }"});
    return;
  }
  if (errors.size() == before) *out = engine::with_autosize_defaults(c);
}

// The bounds against the pool's CPUs (every allowed CPU when it names none).
void check_autosize_bounds(const std::optional<engine::AutosizeConfig>& a,
                           const std::vector<int>& cpus, std::uint32_t line, const std::string& key,
                           std::vector<ConfigError>& errors) {
  if (!a) return;
  const auto n = static_cast<std::uint32_t>(cpus.empty() ? allowed_cpus().size() : cpus.size());
  if (std::string why = engine::check_autosize(*a, n); !why.empty())
    errors.push_back({line, key, why});
}

void read_pool(const toml::table& t, std::size_t index, PoolConfig* p,
               std::vector<ConfigError>& errors) {
  Reader r(errors, "pools[" + std::to_string(index) + "].");
  bool has_name = false;
  r.on("name", [&](const toml::node& n) {
    if (!r.text(n, &p->name)) return;
    has_name = true;
    if (p->name == "default") {
      r.error(n, "the default pool is set by the top-level workers, cpus and idle keys");
    } else if (auto st = check_pool_name(p->name); !st.ok()) {
      r.error(n, std::string(st.message()));
    }
  });
  r.on("size", [&](const toml::node& n) { r.integer(n, &p->size, 1, kMaxPoolWorkers); });
  r.on("cpus", [&](const toml::node& n) { r.cpus(n, &p->cpus); });
  r.on("idle", [&](const toml::node& n) {
    std::string s;
    if (r.one_of(n, &s, kIdle)) p->idle = shm::parse_idle_strategy(s);
  });
  r.on("policy", [&](const toml::node& n) { r.one_of(n, &p->policy, kPolicies); });
  r.on("priority", [&](const toml::node& n) {
    int v;
    if (r.integer(n, &v, 0, 99)) p->priority = v;
  });
  r.on("nice", [&](const toml::node& n) {
    int v;
    if (r.integer(n, &v, -20, 19)) p->nice = v;
  });
  std::uint32_t autosize_line = 0;
  r.on("autosize", [&](const toml::node& n) {
    autosize_line = line_of(n);
    read_autosize(n, r.current(), &p->autosize, errors);
  });
  r.run(t);
  const std::uint32_t line = static_cast<std::uint32_t>(t.source().begin.line);
  const std::string at = "pools[" + std::to_string(index) + "]";
  check_autosize_bounds(p->autosize, p->cpus, autosize_line, at + ".autosize", errors);
  if (!has_name) errors.push_back({line, at + ".name", "every pool needs a name"});
  // The kernel's ranges, as SetThreadAttributes checks them: realtime 1..99, others 0.
  const bool rt = p->policy == "fifo" || p->policy == "rr";
  if (p->priority && !rt && *p->priority != 0) {
    errors.push_back({line, at + ".priority",
                      "priority " + std::to_string(*p->priority) +
                          " needs policy fifo or rr (other, batch and idle take 0; use nice)"});
  }
  if (rt && p->priority && *p->priority == 0) {
    errors.push_back(
        {line, at + ".priority", "policy " + p->policy + " needs a priority of 1..99"});
  }
  if (p->nice && rt) {
    errors.push_back(
        {line, at + ".nice", "nice applies to policies other and batch, not " + p->policy});
  }
}

}  // namespace

ConfigFile parse_config(std::string_view text, const DaemonConfig& base) {
  ConfigFile out;
  out.config = base;
  toml::table root;
  try {
    root = toml::parse(text);
  } catch (const toml::parse_error& e) {
    out.errors.push_back(
        {static_cast<std::uint32_t>(e.source().begin.line), "", std::string(e.description())});
    return out;
  }
  DaemonConfig& c = out.config;
  Reader r(out.errors, "");
  auto ms = [&](std::chrono::milliseconds* f, std::int64_t lo) {
    return [&r, f, lo](const toml::node& n) {
      std::int64_t v;
      if (r.integer(n, &v, lo, 24ll * 3600 * 1000)) *f = std::chrono::milliseconds(v);
    };
  };
  auto u32 = [&](std::uint32_t* f, std::int64_t lo, std::int64_t hi) {
    return [&r, f, lo, hi](const toml::node& n) { r.integer(n, f, lo, hi); };
  };
  r.on("runtime_dir", [&](const toml::node& n) { r.text(n, &c.runtime_dir); });
  r.on("workers", u32(&c.workers, 0, kMaxPoolWorkers));
  r.on("cpus", [&](const toml::node& n) { r.cpus(n, &c.cpus); });
  r.on("pin", [&](const toml::node& n) { r.boolean(n, &c.pin); });
  r.on("idle", [&](const toml::node& n) {
    std::string s;
    if (r.one_of(n, &s, kIdle)) c.idle = *shm::parse_idle_strategy(s);
  });
  r.on("spin_us", [&](const toml::node& n) {
    std::int64_t v;
    if (r.integer(n, &v, 0, 1'000'000)) c.spin = std::chrono::microseconds(v);
  });
  r.on("max_clients", u32(&c.max_clients, 1, kMaxClientsLimit));
  r.on("max_connections", u32(&c.max_connections, 1, kU32));
  r.on("max_connections_per_uid", u32(&c.max_connections_per_uid, 1, kU32));
  r.on("hello_timeout_ms", ms(&c.hello_timeout, 1));
  r.on("max_serial_bytes",
       [&](const toml::node& n) { r.integer(n, &c.max_serial_bytes, 1, std::int64_t{1} << 40); });
  r.on("max_serial_bytes_total", [&](const toml::node& n) {
    r.integer(n, &c.max_serial_bytes_total, 1, std::int64_t{1} << 40);
  });
  r.on("max_control_submits", u32(&c.max_control_submits, 1, kU32));
  r.on("drain_timeout_ms", ms(&c.drain_timeout, 0));
  r.on("long_step_ms", ms(&c.long_step, 0));
  r.on("max_segment_mib", [&](const toml::node& n) {
    std::uint64_t mib;
    if (r.integer(n, &mib, 1, 1 << 20)) c.max_segment_bytes = mib << 20;
  });
  r.on("max_inflight", u32(&c.max_inflight, 1, 1 << 16));
  r.on("max_timers", u32(&c.max_timers, 0, kU32));
  r.on("max_client_fds", u32(&c.max_client_fds, 0, 4096));
  r.on("event_backend", [&](const toml::node& n) {
    std::string v;
    if (r.one_of(n, &v, {"auto", "epoll", "io_uring"}))
      engine::parse_event_backend(v, &c.event_backend);
  });
  r.on("control", [&](const toml::node& n) { r.boolean(n, &c.control); });
  r.on("admin_group", [&](const toml::node& n) { r.text(n, &c.admin_group); });
  r.on("client_group", [&](const toml::node& n) { r.text(n, &c.client_group); });
  r.on("plugin_dirs", [&](const toml::node& n) { r.strings(n, &c.plugin_dirs); });
  r.on("log_level", [&](const toml::node& n) { r.one_of(n, &c.log_level, kLevels); });
  r.on("log_target", [&](const toml::node& n) {
    r.one_of(n, &c.log_target, {"auto", "journal", "stderr"});
  });
  r.on("enable_test_functions", [&](const toml::node& n) { r.boolean(n, &c.test_functions); });
  std::uint32_t autosize_line = 0;
  r.on("autosize", [&](const toml::node& n) {
    autosize_line = line_of(n);
    read_autosize(n, "autosize", &c.autosize, out.errors);
  });
  r.on("pools", [&](const toml::node& n) {
    const toml::array* a = n.as_array();
    if (a == nullptr || !a->is_array_of_tables()) {
      r.error(n, "expected [[pools]] tables");
      return;
    }
    c.pools.clear();
    std::set<std::string> names;
    for (std::size_t i = 0; i < a->size(); ++i) {
      PoolConfig p;
      read_pool(*a->get(i)->as_table(), i, &p, out.errors);
      if (!p.name.empty() && !names.insert(p.name).second) {
        out.errors.push_back({line_of(*a->get(i)), "pools[" + std::to_string(i) + "].name",
                              "duplicate pool '" + p.name + "'"});
      }
      c.pools.push_back(std::move(p));
    }
  });
  r.run(root);
  check_autosize_bounds(c.autosize, c.cpus, autosize_line, "autosize", out.errors);
  for (const auto& [k, v] : root) out.keys.emplace_back(k.str());
  // The checks across keys validate() makes for the command line, with file words.
  if (out.errors.empty()) {
    if (auto st = validate(c); !st.ok()) out.errors.push_back({0, "", std::string(st.message())});
  }
  return out;
}

ConfigFile load_config(const std::string& path, const DaemonConfig& base) {
  std::ifstream in(path);
  if (!in) {
    ConfigFile out;
    out.config = base;
    out.errors.push_back({0, "", "cannot read the file: " + std::string(std::strerror(errno))});
    return out;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_config(ss.str(), base);
}

std::string format_error(const std::string& path, const ConfigError& e) {
  std::string s = path + ":";
  if (e.line != 0) s += std::to_string(e.line) + ":";
  s += " ";
  if (!e.key.empty()) s += e.key + ": ";
  return s + e.message;
}

namespace {

std::string quoted(const std::string& s) {
  std::ostringstream o;
  o << toml::value<std::string>(s);
  return o.str();
}

std::string autosize_toml(const engine::AutosizeConfig& a) {
  return "{ min = " + std::to_string(a.min) + ", max = " + std::to_string(a.max) +
         ", grow_after_us = " + std::to_string(a.grow_after.count()) +
         ", shrink_after_ms = " + std::to_string(a.shrink_after.count() / 1000) +
         ", target_delay_us = " + std::to_string(a.target_delay.count()) +
         ", interval_us = " + std::to_string(a.interval.count()) + " }";
}

}  // namespace

std::string to_toml(const DaemonConfig& c) {
  std::ostringstream o;
  auto line = [&](const char* k, const std::string& v) { o << k << " = " << v << "\n"; };
  auto num = [](auto v) { return std::to_string(v); };
  auto b = [](bool v) { return std::string(v ? "true" : "false"); };
  line("runtime_dir", quoted(c.runtime_dir));
  line("workers", num(c.workers));
  line("cpus", quoted(format_cpu_list(c.cpus)));
  if (c.autosize) line("autosize", autosize_toml(*c.autosize));
  line("pin", b(c.pin));
  line("idle", quoted(std::string(shm::idle_strategy_name(c.idle))));
  line("spin_us", num(c.spin.count()));
  line("max_clients", num(c.max_clients));
  line("max_connections", num(c.max_connections));
  line("max_connections_per_uid", num(c.max_connections_per_uid));
  line("hello_timeout_ms", num(c.hello_timeout.count()));
  line("max_serial_bytes", num(c.max_serial_bytes));
  line("max_serial_bytes_total", num(c.max_serial_bytes_total));
  line("max_control_submits", num(c.max_control_submits));
  line("drain_timeout_ms", num(c.drain_timeout.count()));
  line("long_step_ms", num(c.long_step.count()));
  line("max_segment_mib", num(c.max_segment_bytes >> 20));
  line("max_inflight", num(c.max_inflight));
  line("max_timers", num(c.max_timers));
  line("max_client_fds", num(c.max_client_fds));
  line("event_backend", quoted(engine::event_backend_name(c.event_backend)));
  line("control", b(c.control));
  line("admin_group", quoted(c.admin_group));
  line("client_group", quoted(c.client_group));
  std::string dirs = "[";
  for (const auto& d : c.plugin_dirs) dirs += (dirs.size() > 1 ? ", " : "") + quoted(d);
  line("plugin_dirs", dirs + "]");
  line("log_level", quoted(c.log_level));
  line("log_target", quoted(c.log_target));
  line("enable_test_functions", b(c.test_functions));
  for (const auto& p : c.pools) {
    o << "\n[[pools]]\n";
    line("name", quoted(p.name));
    line("size", num(p.size));
    if (!p.cpus.empty()) line("cpus", quoted(format_cpu_list(p.cpus)));
    if (p.idle) line("idle", quoted(std::string(shm::idle_strategy_name(*p.idle))));
    if (!p.policy.empty()) line("policy", quoted(p.policy));
    if (p.priority) line("priority", num(*p.priority));
    if (p.nice) line("nice", num(*p.nice));
    if (p.autosize) line("autosize", autosize_toml(*p.autosize));
  }
  return o.str();
}

std::vector<std::string> restart_keys(const DaemonConfig& a, const DaemonConfig& b) {
  std::vector<std::string> out;
  auto diff = [&](const char* key, bool differs) {
    if (differs) out.emplace_back(key);
  };
  diff("runtime_dir", a.runtime_dir != b.runtime_dir);
  diff("pin", a.pin != b.pin);
  diff("idle", a.idle != b.idle);
  diff("spin_us", a.spin != b.spin);
  diff("max_clients", a.max_clients != b.max_clients);
  diff("max_connections", a.max_connections != b.max_connections);
  diff("max_connections_per_uid", a.max_connections_per_uid != b.max_connections_per_uid);
  diff("hello_timeout_ms", a.hello_timeout != b.hello_timeout);
  diff("max_serial_bytes", a.max_serial_bytes != b.max_serial_bytes);
  diff("max_serial_bytes_total", a.max_serial_bytes_total != b.max_serial_bytes_total);
  diff("max_control_submits", a.max_control_submits != b.max_control_submits);
  diff("drain_timeout_ms", a.drain_timeout != b.drain_timeout);
  diff("long_step_ms", a.long_step != b.long_step);
  diff("max_segment_mib", a.max_segment_bytes != b.max_segment_bytes);
  diff("max_inflight", a.max_inflight != b.max_inflight);
  diff("max_timers", a.max_timers != b.max_timers);
  diff("max_client_fds", a.max_client_fds != b.max_client_fds);
  diff("event_backend", a.event_backend != b.event_backend);
  diff("control", a.control != b.control);
  diff("admin_group", a.admin_group != b.admin_group);
  diff("client_group", a.client_group != b.client_group);
  diff("log_target", a.log_target != b.log_target);
  diff("enable_test_functions", a.test_functions != b.test_functions);
  // A pool's idle strategy is fixed when its workers start.
  for (const auto& p : b.pools) {
    for (const auto& q : a.pools) {
      if (q.name == p.name && q.idle != p.idle) out.push_back("pools[" + p.name + "].idle");
    }
  }
  return out;
}

}  // namespace insideout::daemon
