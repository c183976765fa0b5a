// A private insideoutd for one measurement: the one built beside the running bench
// program, in a runtime directory of its own, stopped and removed on every way out
// (bench_common.h's registry), driven only through its command line and the public
// client API so that the benchmarks keep working whatever the daemon does inside.
#pragma once

#include <sys/types.h>
#include <time.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "bench_common.h"
#include "insideout/client.hpp"

namespace insideout::bench {

inline std::string daemon_path() {
  std::error_code ec;
  auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  return (self.parent_path() / "insideoutd").string();
}

class Daemon {
 public:
  // `workers` 0: the daemon's default (one per allowed CPU). `cpus` empty: --no-pin, or
  // with `pin_default` the daemon's own default (pinned to its affinity mask). `extra`:
  // more flags, e.g. {"--max-clients", "1100"}.
  Daemon(unsigned workers, const std::string& cpus, const char* idle,
         std::vector<std::string> extra = {}, bool pin_default = false) {
    char tmpl[] = "/tmp/insideout-bench-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    std::vector<std::string> args = {daemon_path(), "--runtime-dir", dir_,  "--idle",
                                     idle,          "--log-level",   "warn"};
    if (workers != 0) {
      args.push_back("--workers");
      args.push_back(std::to_string(workers));
    }
    if (!cpus.empty()) {
      args.push_back("--cpus");
      args.push_back(cpus);
    } else if (!pin_default) {
      args.push_back("--no-pin");
    }
    for (auto& a : extra) args.push_back(std::move(a));
    pid_ = spawn(-1, [&] {
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      return 127;
    });
    ClientOptions o;
    o.runtime_dir = dir_;
    o.want_segment = false;
    for (int i = 0; i < 2000; ++i) {
      if (Client::connect(o).ok()) {
        ok_ = true;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  ~Daemon() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      reap(pid_, std::chrono::seconds(10));
    }
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  bool ok() const { return ok_; }
  pid_t pid() const { return pid_; }
  const std::string& runtime_dir() const { return dir_; }

  // The daemon's peak resident set (VmHWM), in bytes.
  std::uint64_t peak_rss() const {
    std::ifstream in("/proc/" + std::to_string(pid_) + "/status");
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
    }
    return 0;
  }

  ClientOptions client_options(shm::IdleStrategy idle = shm::IdleStrategy::kSpinThenBlock) const {
    ClientOptions o;
    o.runtime_dir = dir_;
    o.name = "bench";
    o.idle = idle;
    o.spin = std::chrono::microseconds(200);
    return o;
  }

  std::unique_ptr<Client> connect(ClientOptions o) const {
    auto c = Client::connect(std::move(o));
    if (!c.ok()) {
      std::fprintf(stderr, "insideout_bench: %s\n", std::string(c.status().message()).c_str());
      return nullptr;
    }
    return std::move(*c);
  }
  std::unique_ptr<Client> connect(
      shm::IdleStrategy idle = shm::IdleStrategy::kSpinThenBlock) const {
    return connect(client_options(idle));
  }

 private:
  std::string dir_;
  pid_t pid_ = -1;
  bool ok_ = false;
};

// CPU time (user + system, all threads, exited ones included) another process has used,
// in ns: its process CPU clock, which the kernel keeps to the nanosecond. /proc/<pid>/stat
// counts in clock ticks (10 ms), too coarse for "under 0.5% of a core" over a second or
// two, so it is only the fallback. Returns 0 when neither can be read.
inline std::uint64_t process_cpu_ns(pid_t pid) {
  clockid_t clock;
  timespec ts;
  if (clock_getcpuclockid(pid, &clock) == 0 && clock_gettime(clock, &ts) == 0) {
    return std::uint64_t(ts.tv_sec) * 1'000'000'000u + std::uint64_t(ts.tv_nsec);
  }
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto paren = stat.rfind(')');  // the command name may hold spaces
  if (paren == std::string::npos) return 0;
  std::vector<std::string> fields;
  std::string field;
  for (std::size_t i = paren + 2; i <= stat.size(); ++i) {
    if (i == stat.size() || stat[i] == ' ') {
      fields.push_back(field);
      field.clear();
    } else {
      field += stat[i];
    }
  }
  // After the name: state is field 3; utime and stime are fields 14 and 15.
  if (fields.size() < 13) return 0;
  const std::uint64_t ticks = std::stoull(fields[11]) + std::stoull(fields[12]);
  return ticks * 1'000'000'000u / std::uint64_t(::sysconf(_SC_CLK_TCK));
}

}  // namespace insideout::bench
