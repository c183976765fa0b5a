// insideoutd's configuration file: every key, every kind of error (with its line and
// key), and the effective configuration read back.
#include "config_file.h"

#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "engine.h"

namespace insideout::daemon {
namespace {

// The one error of `text`, formatted as --check-config prints it.
std::string one_error(const std::string& text) {
  const ConfigFile f = parse_config(text);
  EXPECT_EQ(f.errors.size(), 1u) << text;
  return f.errors.empty() ? "" : format_error("f.toml", f.errors.front());
}

TEST(ConfigFile, EmptyIsTheDefaults) {
  const ConfigFile f = parse_config("");
  EXPECT_TRUE(f.errors.empty());
  EXPECT_EQ(to_toml(f.config), to_toml(DaemonConfig{}));
}

TEST(ConfigFile, EveryKey) {
  const ConfigFile f = parse_config(R"(
runtime_dir = "/run/x"
workers = 3
cpus = "0-1"
pin = false
idle = "block"
spin_us = 7
max_clients = 10
max_connections = 20
max_connections_per_uid = 5
hello_timeout_ms = 100
max_serial_bytes = 1000
max_serial_bytes_total = 2000
max_control_submits = 9
drain_timeout_ms = 300
long_step_ms = 0
max_segment_mib = 8
max_inflight = 64
max_timers = 0
control = false
admin_group = "adm"
client_group = "users"
plugin_dirs = ["/a", "/b"]
log_level = "debug"
log_target = "journal"
enable_test_functions = true

[[pools]]
name = "fast"
size = 2
cpus = "1"
idle = "poll"
policy = "fifo"
priority = 10

[[pools]]
name = "bulk"
policy = "batch"
nice = 5
)");
  ASSERT_TRUE(f.errors.empty()) << format_error("f", f.errors.front());
  const DaemonConfig& c = f.config;
  EXPECT_EQ(c.runtime_dir, "/run/x");
  EXPECT_EQ(c.workers, 3u);
  EXPECT_EQ(c.cpus, (std::vector<int>{0, 1}));
  EXPECT_FALSE(c.pin);
  EXPECT_EQ(c.idle, shm::IdleStrategy::kBlock);
  EXPECT_EQ(c.spin.count(), 7);
  EXPECT_EQ(c.max_clients, 10u);
  EXPECT_EQ(c.max_connections, 20u);
  EXPECT_EQ(c.max_connections_per_uid, 5u);
  EXPECT_EQ(c.hello_timeout.count(), 100);
  EXPECT_EQ(c.max_serial_bytes, 1000u);
  EXPECT_EQ(c.max_serial_bytes_total, 2000u);
  EXPECT_EQ(c.max_control_submits, 9u);
  EXPECT_EQ(c.drain_timeout.count(), 300);
  EXPECT_EQ(c.long_step.count(), 0);
  EXPECT_EQ(c.max_segment_bytes, 8u << 20);
  EXPECT_EQ(c.max_inflight, 64u);
  EXPECT_EQ(c.max_timers, 0u);
  EXPECT_FALSE(c.control);
  EXPECT_EQ(c.admin_group, "adm");
  EXPECT_EQ(c.client_group, "users");
  EXPECT_EQ(c.plugin_dirs, (std::vector<std::string>{"/a", "/b"}));
  EXPECT_EQ(c.log_level, "debug");
  EXPECT_EQ(c.log_target, "journal");
  EXPECT_TRUE(c.test_functions);
  ASSERT_EQ(c.pools.size(), 2u);
  EXPECT_EQ(c.pools[0].name, "fast");
  EXPECT_EQ(c.pools[0].size, 2u);
  EXPECT_EQ(c.pools[0].cpus, std::vector<int>{1});
  EXPECT_EQ(c.pools[0].idle, shm::IdleStrategy::kPoll);
  EXPECT_EQ(c.pools[0].policy, "fifo");
  EXPECT_EQ(c.pools[0].priority, 10);
  EXPECT_EQ(c.pools[1].size, 1u);
  EXPECT_EQ(c.pools[1].nice, 5);
  // The effective configuration reads back to the same values.
  const ConfigFile again = parse_config(to_toml(c));
  ASSERT_TRUE(again.errors.empty()) << format_error("again", again.errors.front());
  EXPECT_EQ(to_toml(again.config), to_toml(c));
  EXPECT_EQ(again.config.pools, c.pools);
}

TEST(ConfigFile, SyntaxErrorHasItsLine) {
  EXPECT_EQ(one_error("workers = 2\nmax_clients = = 3\n").rfind("f.toml:2: ", 0), 0u);
}

TEST(ConfigFile, BadType) {
  EXPECT_EQ(one_error("workers = \"two\""), "f.toml:1: workers: expected an integer, not a string");
  EXPECT_EQ(one_error("\npin = 1"), "f.toml:2: pin: expected true or false, not an integer");
  EXPECT_EQ(one_error("plugin_dirs = \"/x\""),
            "f.toml:1: plugin_dirs: expected an array of strings, not a string");
  EXPECT_EQ(one_error("plugin_dirs = [\"/x\", 3]"),
            "f.toml:1: plugin_dirs: expected strings, found an integer");
  EXPECT_EQ(one_error("pools = 3"), "f.toml:1: pools: expected [[pools]] tables");
}

TEST(ConfigFile, UnknownKeyWithDidYouMean) {
  EXPECT_EQ(one_error("max_client = 3"),
            "f.toml:1: max_client: unknown key (did you mean 'max_clients'?)");
  EXPECT_EQ(one_error("colour = 3"), "f.toml:1: colour: unknown key");
  EXPECT_EQ(one_error("[[pools]]\nname = \"a\"\nsise = 2\n"),
            "f.toml:3: pools[0].sise: unknown key (did you mean 'size'?)");
}

TEST(ConfigFile, BadCpuList) {
  EXPECT_EQ(one_error("cpus = \"3-1\""), "f.toml:1: cpus: bad CPU range '3-1'");
  EXPECT_EQ(one_error("[[pools]]\nname = \"a\"\n[[pools]]\nname = \"b\"\ncpus = \"3-1\"\n"),
            "f.toml:5: pools[1].cpus: bad CPU range '3-1'");
  EXPECT_EQ(one_error("cpus = \"x\""), "f.toml:1: cpus: bad CPU 'x'");
}

TEST(ConfigFile, OutOfRange) {
  EXPECT_EQ(one_error("max_clients = 70000"),
            "f.toml:1: max_clients: 70000 is out of range: 1..65535");
  EXPECT_EQ(one_error("max_inflight = 0"), "f.toml:1: max_inflight: 0 is out of range: 1..65536");
  EXPECT_EQ(one_error("[[pools]]\nname = \"a\"\nnice = 20\n"),
            "f.toml:3: pools[0].nice: 20 is out of range: -20..19");
  EXPECT_EQ(one_error("[[pools]]\nname = \"a\"\nsize = 0\n"),
            "f.toml:3: pools[0].size: 0 is out of range: 1.." + std::to_string(kMaxPoolWorkers));
  // Checks across keys, as for the command line.
  EXPECT_NE(
      one_error("max_serial_bytes = 10\nmax_serial_bytes_total = 5\n").find("max-serial-bytes"),
      std::string::npos);
}

TEST(ConfigFile, Pools) {
  EXPECT_EQ(one_error("[[pools]]\nname = \"a\"\n[[pools]]\nname = \"a\"\n"),
            "f.toml:3: pools[1].name: duplicate pool 'a'");
  EXPECT_EQ(one_error("[[pools]]\nsize = 2\n"), "f.toml:1: pools[0].name: every pool needs a name");
  EXPECT_EQ(one_error("[[pools]]\nname = \"a b\"\n"),
            "f.toml:2: pools[0].name: pool name 'a b': only letters, digits, '-' and '_'");
  EXPECT_NE(one_error("[[pools]]\nname = \"default\"\n").find("top-level"), std::string::npos);
  EXPECT_EQ(one_error("[[pools]]\nname = \"a\"\npolicy = \"deadline\"\n"),
            "f.toml:3: pools[0].policy: 'deadline' is not one of other, batch, idle, fifo, rr");
  EXPECT_EQ(one_error("[[pools]]\nname = \"a\"\npolicy = \"batch\"\npriority = 5\n"),
            "f.toml:1: pools[0].priority: priority 5 needs policy fifo or rr (other, batch and "
            "idle take 0; use nice)");
  EXPECT_EQ(one_error("[[pools]]\nname = \"a\"\npolicy = \"rr\"\nnice = 1\n"),
            "f.toml:1: pools[0].nice: nice applies to policies other and batch, not rr");
  EXPECT_EQ(one_error("[[pools]]\nname = \"a\"\nidle = \"nap\"\n"),
            "f.toml:3: pools[0].idle: 'nap' is not one of block, spin-then-block, poll");
}

TEST(ConfigFile, BadEnum) {
  EXPECT_EQ(one_error("log_level = \"loud\""),
            "f.toml:1: log_level: 'loud' is not one of trace, debug, info, warn, error, off");
  EXPECT_EQ(one_error("idle = \"nap\""),
            "f.toml:1: idle: 'nap' is not one of block, spin-then-block, poll");
}

TEST(ConfigFile, EveryErrorIsReported) {
  const ConfigFile f = parse_config("workers = \"x\"\nfoo = 1\ncpus = \"2-1\"\n");
  ASSERT_EQ(f.errors.size(), 3u);
}

TEST(ConfigFile, UnreadableFile) {
  const ConfigFile f = load_config("/nonexistent/insideoutd.toml");
  ASSERT_EQ(f.errors.size(), 1u);
  EXPECT_EQ(format_error("/nonexistent/insideoutd.toml", f.errors[0]),
            "/nonexistent/insideoutd.toml: cannot read the file: No such file or directory");
}

TEST(ConfigFile, TheExampleIsValid) {
  const ConfigFile f = load_config(INSIDEOUT_EXAMPLE_CONFIG);
  for (const auto& e : f.errors) ADD_FAILURE() << format_error(INSIDEOUT_EXAMPLE_CONFIG, e);
  // Every key appears in the example (commented out or not).
  std::ifstream in(INSIDEOUT_EXAMPLE_CONFIG);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const ConfigFile all = parse_config(to_toml(DaemonConfig{}));
  for (const auto& key : all.keys)
    EXPECT_NE(text.find(key + " ="), std::string::npos) << "the example lacks " << key;
  for (const char* key : {"name =", "size =", "policy =", "priority =", "nice =", "[[pools]]"})
    EXPECT_NE(text.find(key), std::string::npos) << "the example lacks " << key;
}

TEST(ConfigFile, RestartKeys) {
  DaemonConfig a, b;
  b.max_clients = 5;
  b.workers = 3;         // live
  b.log_level = "warn";  // live
  b.pools.push_back({"p", 2, {}, {}, "", {}, {}});
  EXPECT_EQ(restart_keys(a, b), std::vector<std::string>{"max_clients"});
  a.pools = b.pools;
  b.pools[0].size = 4;  // live
  b.pools[0].idle = shm::IdleStrategy::kPoll;
  EXPECT_EQ(restart_keys(a, b), (std::vector<std::string>{"max_clients", "pools[p].idle"}));
}

}  // namespace
}  // namespace insideout::daemon

namespace insideout::daemon {
namespace {

TEST(ConfigFile, ShouldReadAutosizeForTheDefaultPoolAndNamedPools) {
  const ConfigFile f = parse_config(R"(
cpus = "0"
autosize = { min = 1, max = 1, grow_after_us = 500, shrink_after_ms = 50 }
[[pools]]
name = "burst"
cpus = "0"
autosize = { min = 1, max = 1 }
)");
  ASSERT_TRUE(f.errors.empty()) << format_error("f.toml", f.errors.front());
  ASSERT_TRUE(f.config.autosize.has_value());
  EXPECT_EQ(f.config.autosize->grow_after, std::chrono::microseconds(500));
  EXPECT_EQ(f.config.autosize->shrink_after, std::chrono::milliseconds(50));
  EXPECT_EQ(f.config.autosize->target_delay, engine::AutosizeConfig{}.target_delay);
  ASSERT_EQ(f.config.pools.size(), 1u);
  ASSERT_TRUE(f.config.pools[0].autosize.has_value());
  EXPECT_EQ(f.config.pools[0].autosize->max, 1u);
  // Read back from the effective configuration.
  const ConfigFile again = parse_config(to_toml(f.config));
  EXPECT_TRUE(again.errors.empty());
  EXPECT_EQ(again.config.autosize, f.config.autosize);
  EXPECT_EQ(again.config.pools, f.config.pools);
}

TEST(ConfigFile, ShouldRefuseBadAutosizeWithClearErrors) {
  EXPECT_EQ(one_error("cpus = \"0\"\nautosize = { min = 2, max = 1 }\n"),
            "f.toml:2: autosize: autosize min 2 is above max 1");
  EXPECT_EQ(one_error("cpus = \"0\"\nautosize = { min = 1, max = 2 }\n"),
            "f.toml:2: autosize: autosize max 2 is above the pool's 1 CPU");
  EXPECT_EQ(one_error("autosize = { min = 0, max = 1 }\n"),
            "f.toml:1: autosize.min: 0 is out of range: 1..256");
  EXPECT_EQ(one_error("autosize = { max = 1 }\n"),
            "f.toml:1: autosize: autosize needs min and max, e.g. { min = 1, max = 4 }");
  EXPECT_EQ(one_error("autosize = 3\n"),
            "f.toml:1: autosize: expected a table such as { min = 1, max = 4 }, not an integer");
  EXPECT_EQ(one_error("[[pools]]\nname = \"a\"\ncpus = \"0\"\nautosize = { min = 1, max = 3 }\n"),
            "f.toml:4: pools[0].autosize: autosize max 3 is above the pool's 1 CPU");
  EXPECT_EQ(one_error("autosize = { min = 1, max = 1, grow_afer_us = 5 }\n"),
            "f.toml:1: autosize.grow_afer_us: unknown key (did you mean 'grow_after_us'?)");
}

}  // namespace
}  // namespace insideout::daemon
