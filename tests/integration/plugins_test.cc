// Plugins from the outside: loaded at start from --plugin-dir, every refusal (with its
// one log line and nothing loaded), loaded, reloaded and unloaded live over gRPC and
// insideoutctl, the closest-name suggestions, and a client finding a function loaded
// after it connected. The test plugins are tests/plugins/*.cc, built with
// insideout_add_plugin() and copied here into fresh directories with the modes needed.
//
// These tests load, list and unload plugins without running their code, so they pass
// with or without the engine speaking the plugin ABI; plugins_run_test.cc runs it.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "insideout/client.hpp"
#include "insideout/sdk/abi.h"
#include "integration/control_support.h"
#include "integration/plugin_support.h"
#include "support/daemon_process.h"

namespace insideout::testing {
namespace {

// The SDK these tests and insideoutd are built with, as the daemon writes it.
const std::string kSdk = std::to_string(IO_SDK_VERSION_MAJOR(IO_SDK_VERSION)) + "." +
                         std::to_string(IO_SDK_VERSION & 0xFFFFu);

using namespace std::chrono_literals;

std::size_t count_of(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto p = text.find(what); p != std::string::npos; p = text.find(what, p + 1)) ++n;
  return n;
}

std::vector<v1::Function> functions_of(v1::Scheduler::Stub& stub) {
  v1::ListFunctionsResponse r;
  auto st = stub.ListFunctions(ctx().get(), {}, &r);
  EXPECT_TRUE(st.ok()) << st.error_message();
  return {r.functions().begin(), r.functions().end()};
}

const v1::Function* find_fn(const std::vector<v1::Function>& fs, const std::string& name) {
  for (const auto& f : fs) {
    if (f.name() == name) return &f;
  }
  return nullptr;
}

std::vector<std::string> plugin_function_names(v1::Scheduler::Stub& stub) {
  std::vector<std::string> out;
  for (const auto& f : functions_of(stub)) {
    if (!f.plugin().empty()) out.push_back(f.name());
  }
  return out;
}

TEST(Plugins, ShouldLoadEveryPluginOfThePluginDirAtStart) {
  PluginDir dir({"good"});
  DaemonProcess daemon({"--workers", "1", "--plugin-dir", dir.path()});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto stub = control_stub(daemon.runtime_dir());
  const auto fs = functions_of(*stub);
  const v1::Function* add = find_fn(fs, "good.add");
  ASSERT_NE(add, nullptr) << daemon.log();
  EXPECT_EQ(add->plugin(), "good");
  EXPECT_NE(add->help().find("returns ARG"), std::string::npos);
  ASSERT_NE(find_fn(fs, "good.hello"), nullptr);
  ASSERT_NE(find_fn(fs, "noop"), nullptr);
  EXPECT_EQ(find_fn(fs, "noop")->plugin(), "");

  v1::ListPluginsResponse pl;
  ASSERT_TRUE(stub->ListPlugins(ctx().get(), {}, &pl).ok());
  ASSERT_EQ(pl.plugins_size(), 1);
  EXPECT_EQ(pl.plugins(0).name(), "good");
  EXPECT_EQ(pl.plugins(0).version(), "1.0");
  EXPECT_EQ(pl.plugins(0).path(), dir.file("good"));
  EXPECT_EQ(pl.plugins(0).sdk_version(), kSdk);
  EXPECT_FALSE(pl.plugins(0).draining());
  EXPECT_GE(pl.plugins(0).slot(), 1u);
  EXPECT_EQ(pl.plugins(0).functions_size(), 3);
  EXPECT_EQ(count_of(daemon.log(), "plugin 'good' 1.0 loaded from " + dir.file("good")), 1u)
      << daemon.log();
}

// Each bad library beside a good one: one log line each naming the file and why, nothing
// of it loaded, and the good one loaded all the same.
TEST(Plugins, ShouldRefuseEachBadPluginWithOneLogLineAndLoadNothingOfIt) {
  PluginDir dir({"good", "bad_abi", "bad_sdk", "init_fails", "dup_function", "no_entry"});
  dir.add("dup_name", "z_dup_name");  // loaded after good.so (name order)
  DaemonProcess daemon({"--workers", "1", "--plugin-dir", dir.path()});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  const std::string log = daemon.log();
  struct Case {
    const char* file;
    std::string why;
  };
  for (const Case& c : {
           Case{"bad_abi", "it speaks plugin ABI 99; insideoutd speaks ABI 1"},
           Case{"bad_sdk", "built with SDK 2.3; insideoutd has SDK " + std::string(kSdk) +
                               " (the major versions differ)"},
           Case{"init_fails", "init failed (returned 1): no licence key in /etc/init_fails.conf"},
           Case{"z_dup_name", "a plugin named 'good' is loaded already"},
           Case{"dup_function",
                "init failed (returned 1): function 'dup_function.twice' is registered twice"},
           Case{"no_entry", "no entry point insideout_plugin_v1"},
       }) {
    const std::string line = "plugin " + dir.file(c.file) + " refused: ";
    EXPECT_EQ(count_of(log, line), 1u) << c.file << "\n" << log;
    EXPECT_EQ(count_of(log, line + c.why), 1u) << c.file << "\n" << log;
  }
  EXPECT_EQ(count_of(log, "refused"), 6u) << log;
  auto stub = control_stub(daemon.runtime_dir());
  EXPECT_EQ(plugin_function_names(*stub),
            (std::vector<std::string>{"good.add", "good.hello", "good.slow"}));
  const auto fs = functions_of(*stub);
  EXPECT_EQ(find_fn(fs, "init_fails.early"), nullptr) << "a failed init left a function behind";
  v1::ListPluginsResponse pl;
  ASSERT_TRUE(stub->ListPlugins(ctx().get(), {}, &pl).ok());
  ASSERT_EQ(pl.plugins_size(), 1);
  EXPECT_EQ(pl.plugins(0).name(), "good");
  // Nothing of a refused library stays mapped in the daemon.
  const std::string maps = read_file("/proc/" + std::to_string(daemon.pid()) + "/maps");
  for (const char* f :
       {"bad_abi", "bad_sdk", "init_fails", "z_dup_name", "dup_function", "no_entry"})
    EXPECT_EQ(maps.find(dir.file(f)), std::string::npos) << f << " is still mapped";
  EXPECT_NE(maps.find(dir.file("good")), std::string::npos);
}

TEST(Plugins, ShouldRefuseAPluginWritableByOthers) {
  PluginDir dir({"good"});
  ASSERT_EQ(::chmod(dir.file("good").c_str(), 0666), 0);
  DaemonProcess daemon({"--workers", "1", "--plugin-dir", dir.path()});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  EXPECT_EQ(count_of(daemon.log(), "plugin " + dir.file("good") +
                                       " refused: the file is writable by group or others "
                                       "(mode 0666)"),
            1u)
      << daemon.log();
  auto stub = control_stub(daemon.runtime_dir());
  EXPECT_TRUE(plugin_function_names(*stub).empty());
}

TEST(Plugins, ShouldRefuseAPluginDirectoryWritableByOthers) {
  PluginDir dir({"good"});
  ASSERT_EQ(::chmod(dir.path().c_str(), 0777), 0);
  DaemonProcess daemon({"--workers", "1", "--plugin-dir", dir.path()});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  EXPECT_EQ(count_of(daemon.log(), "plugin directory " + dir.path() + " refused: its directory " +
                                       dir.path() + " is writable by group or others (mode 0777)"),
            1u)
      << daemon.log();
  auto stub = control_stub(daemon.runtime_dir());
  EXPECT_TRUE(plugin_function_names(*stub).empty());
  // LoadPlugin checks the directory too.
  v1::LoadPluginRequest q;
  q.set_path(dir.file("good"));
  v1::LoadPluginResponse r;
  const auto st = stub->LoadPlugin(ctx().get(), q, &r);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
  EXPECT_NE(st.error_message().find("writable by group or others (mode 0777)"), std::string::npos)
      << st.error_message();
}

TEST(Plugins, ShouldRefuseAPluginThatIsASymbolicLink) {
  PluginDir dir({"good"});
  const std::string link = dir.path() + "/link.so";
  ASSERT_EQ(::symlink(dir.file("good").c_str(), link.c_str()), 0);
  DaemonProcess daemon({"--workers", "1"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto stub = control_stub(daemon.runtime_dir());
  v1::LoadPluginRequest q;
  q.set_path(link);
  v1::LoadPluginResponse r;
  const auto st = stub->LoadPlugin(ctx().get(), q, &r);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
  EXPECT_EQ(count_of(daemon.log(), "plugin " + link + " refused: it is a symbolic link"), 1u)
      << daemon.log();
}

TEST(Plugins, ShouldLoadReloadAndUnloadLiveOverGrpcKeepingIds) {
  PluginDir dir({"good", "good_v2", "dup_name", "bad_abi"});
  DaemonProcess daemon({"--workers", "2"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto stub = control_stub(daemon.runtime_dir());
  EXPECT_TRUE(plugin_function_names(*stub).empty());

  v1::LoadPluginRequest lq;
  lq.set_path(dir.file("good"));
  v1::LoadPluginResponse lr;
  auto st = stub->LoadPlugin(ctx().get(), lq, &lr);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(lr.plugin().name(), "good");
  EXPECT_EQ(lr.plugin().version(), "1.0");
  const std::uint32_t id = find_fn(functions_of(*stub), "good.add")->id();
  EXPECT_GT(id, 6u) << "after the built-ins";

  // The same plugin twice, or another library named "good": ALREADY_EXISTS.
  st = stub->LoadPlugin(ctx().get(), lq, &lr);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ALREADY_EXISTS) << st.error_message();
  lq.set_path(dir.file("dup_name"));
  st = stub->LoadPlugin(ctx().get(), lq, &lr);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ALREADY_EXISTS) << st.error_message();
  lq.set_path(dir.file("bad_abi"));
  st = stub->LoadPlugin(ctx().get(), lq, &lr);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
  lq.set_path("relative/good.so");
  st = stub->LoadPlugin(ctx().get(), lq, &lr);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();

  // Reload with another version: same ids, new version, the old instance gone or going.
  v1::ReloadPluginRequest rq;
  rq.set_name("good");
  rq.set_path(dir.file("good_v2"));
  v1::ReloadPluginResponse rr;
  st = stub->ReloadPlugin(ctx(15s).get(), rq, &rr);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(rr.plugin().version(), "2.0");
  EXPECT_TRUE(rr.old_unloaded()) << "nothing ran the old code, so it unloads at once";
  EXPECT_EQ(find_fn(functions_of(*stub), "good.add")->id(), id) << "a reload keeps ids";
  v1::ListPluginsResponse pl;
  ASSERT_TRUE(stub->ListPlugins(ctx().get(), {}, &pl).ok());
  ASSERT_EQ(pl.plugins_size(), 1);
  EXPECT_EQ(pl.plugins(0).version(), "2.0");
  EXPECT_EQ(pl.plugins(0).path(), dir.file("good_v2"));

  // A reload refused (another plugin's library) leaves the loaded one as it was.
  rq.set_path(dir.file("bad_abi"));
  st = stub->ReloadPlugin(ctx().get(), rq, &rr);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
  ASSERT_TRUE(stub->ListPlugins(ctx().get(), {}, &pl).ok());
  ASSERT_EQ(pl.plugins_size(), 1);
  EXPECT_EQ(pl.plugins(0).version(), "2.0");

  v1::UnloadPluginRequest uq;
  uq.set_name("good");
  v1::UnloadPluginResponse ur;
  st = stub->UnloadPlugin(ctx().get(), uq, &ur);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_TRUE(ur.unloaded());
  EXPECT_TRUE(plugin_function_names(*stub).empty());
  ASSERT_TRUE(stub->ListPlugins(ctx().get(), {}, &pl).ok());
  EXPECT_EQ(pl.plugins_size(), 0);
  st = stub->UnloadPlugin(ctx().get(), uq, &ur);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND) << st.error_message();
  const std::string maps = read_file("/proc/" + std::to_string(daemon.pid()) + "/maps");
  EXPECT_EQ(maps.find(dir.file("good")), std::string::npos) << "unloaded, still mapped";
  EXPECT_EQ(maps.find(dir.file("good_v2")), std::string::npos) << "unloaded, still mapped";

  // Loaded again after an unload: its names get their old ids back.
  lq.set_path(dir.file("good"));
  ASSERT_TRUE(stub->LoadPlugin(ctx().get(), lq, &lr).ok());
  EXPECT_EQ(find_fn(functions_of(*stub), "good.add")->id(), id);
}

TEST(Plugins, ShouldDriveLoadReloadUnloadAndListsFromInsideoutctl) {
  PluginDir dir({"good", "good_v2"});
  DaemonProcess daemon({"--workers", "1"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  const std::string rt = daemon.runtime_dir();
  auto r = run_command(ctl_args(rt, {"plugin", "load", dir.file("good")}));
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("loaded plugin 'good' 1.0"), std::string::npos) << r.out;
  r = run_command(ctl_args(rt, {"plugins"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("good"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("good.add good.hello good.slow"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("loaded"), std::string::npos) << r.out;
  r = run_command(ctl_args(rt, {"functions"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("good.add"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("(built-in)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("returns 7"), std::string::npos) << r.out;
  r = run_command(ctl_args(rt, {"functions", "--json"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("\"plugin\":\"good\""), std::string::npos) << r.out;
  r = run_command(ctl_args(rt, {"plugin", "load", dir.file("good")}));
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_NE(r.err.find("loaded already"), std::string::npos) << r.err;
  r = run_command(ctl_args(rt, {"plugin", "reload", "good", dir.file("good_v2")}));
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("reloaded plugin 'good' 2.0"), std::string::npos) << r.out;
  r = run_command(ctl_args(rt, {"plugin", "reload", "good"}));  // from its own path again
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  r = run_command(ctl_args(rt, {"plugin", "unload", "good"}));
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("unloaded plugin 'good'"), std::string::npos) << r.out;
  r = run_command(ctl_args(rt, {"plugin", "unload", "good"}));
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_NE(r.err.find("no plugin named 'good'"), std::string::npos) << r.err;
  r = run_command(ctl_args(rt, {"plugin", "frobnicate", "good"}));
  EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
}

TEST(Plugins, ShouldSuggestTheClosestFunctionName) {
  PluginDir dir({"good"});
  DaemonProcess daemon({"--workers", "1", "--plugin-dir", dir.path()});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto stub = control_stub(daemon.runtime_dir());
  // gRPC Submit.
  v1::SubmitRequest q;
  q.set_function("good.ad");
  v1::SubmitResponse r;
  auto st = stub->Submit(ctx().get(), q, &r);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(st.error_message(), "unknown function 'good.ad'; did you mean 'good.add'?");
  q.set_function("hello");  // the plugin's function without its prefix
  st = stub->Submit(ctx().get(), q, &r);
  EXPECT_EQ(st.error_message(), "unknown function 'hello'; did you mean 'good.hello'?");
  q.set_function("completely_different");
  st = stub->Submit(ctx().get(), q, &r);
  EXPECT_EQ(st.error_message(), "unknown function 'completely_different'");
  // insideoutctl submit says the same.
  auto c = run_command(ctl_args(daemon.runtime_dir(), {"submit", "chian"}));
  EXPECT_EQ(c.exit_code, 1);
  EXPECT_NE(c.err.find("did you mean 'chain'?"), std::string::npos) << c.err;
  // The serialized path and the client library.
  ClientOptions o;
  o.runtime_dir = daemon.runtime_dir();
  auto client = Client::connect(o);
  ASSERT_TRUE(client.ok()) << client.status();
  auto res = (*client)->call("nop");
  ASSERT_TRUE(res.ok()) << res.status();
  EXPECT_EQ(res->status, Status::kUnknownFunction);
  EXPECT_EQ(res->error, "unknown function 'nop'; did you mean 'noop'?");
  auto id = (*client)->function_id("echoo");
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(id.status().message().find("did you mean 'echo'?"), std::string::npos) << id.status();
  id = (*client)->function_id("good.hell");
  ASSERT_FALSE(id.ok());
  EXPECT_NE(id.status().message().find("did you mean 'good.hello'?"), std::string::npos)
      << id.status();
}

TEST(Plugins, ShouldLetAConnectedClientFindAFunctionLoadedAfterIt) {
  PluginDir dir({"good"});
  DaemonProcess daemon({"--workers", "1"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  ClientOptions o;
  o.runtime_dir = daemon.runtime_dir();
  auto client = Client::connect(o);
  ASSERT_TRUE(client.ok()) << client.status();
  auto id = (*client)->function_id("good.add");
  EXPECT_EQ(id.status().code(), absl::StatusCode::kNotFound) << id.status();

  auto stub = control_stub(daemon.runtime_dir());
  v1::LoadPluginRequest lq;
  lq.set_path(dir.file("good"));
  v1::LoadPluginResponse lr;
  ASSERT_TRUE(stub->LoadPlugin(ctx().get(), lq, &lr).ok());
  id = (*client)->function_id("good.add");
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(*id, find_fn(functions_of(*stub), "good.add")->id());
  // Remembered: the same answer again (and the built-ins still from the Welcome).
  EXPECT_EQ((*client)->function_id("good.add").value(), *id);
  EXPECT_TRUE((*client)->function_id("noop").ok());
  // Unloaded: a fresh name is not found, with the daemon's suggestion.
  v1::UnloadPluginRequest uq;
  uq.set_name("good");
  v1::UnloadPluginResponse ur;
  ASSERT_TRUE(stub->UnloadPlugin(ctx().get(), uq, &ur).ok());
  auto gone = (*client)->function_id("good.hello");
  EXPECT_EQ(gone.status().code(), absl::StatusCode::kNotFound) << gone.status();
}

// LoadPlugin, UnloadPlugin and ReloadPlugin are admin only; the lists are not.
TEST(Plugins, ShouldLetOnlyAdminsLoadUnloadAndReload) {
  PluginDir dir({"good"});
  DaemonProcess daemon({"--workers", "1", "--client-group", "65534", "--plugin-dir", dir.path()});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  ASSERT_EQ(::chmod(daemon.runtime_dir().c_str(), 0711), 0);  // nobody may reach the socket
  auto as_nobody = [&](std::vector<std::string> args) {
    auto a = std::vector<std::string>{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                      "--"};
    auto rest = ctl_args(daemon.runtime_dir(), std::move(args));
    a.insert(a.end(), rest.begin(), rest.end());
    return run_command(a);
  };
  for (const auto& args :
       std::vector<std::vector<std::string>>{{"plugin", "load", dir.file("good")},
                                             {"plugin", "unload", "good"},
                                             {"plugin", "reload", "good"}}) {
    const Command r = as_nobody(args);
    EXPECT_EQ(r.exit_code, 1) << args[1] << ": " << r.out << r.err;
    EXPECT_NE(r.err.find("PERMISSION_DENIED"), std::string::npos) << args[1] << ": " << r.err;
  }
  Command r = as_nobody({"plugins"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("good"), std::string::npos) << r.out;
  r = as_nobody({"functions"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("good.add"), std::string::npos) << r.out;
  auto stub = control_stub(daemon.runtime_dir());
  EXPECT_EQ(plugin_function_names(*stub).size(), 3u) << "still loaded";
}

}  // namespace
}  // namespace insideout::testing
