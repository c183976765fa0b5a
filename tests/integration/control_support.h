// Helpers of the control-plane tests: a gRPC stub on a daemon's control.sock, commands
// run to completion with a deadline, and what the kernel says about a thread.
#pragma once

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <poll.h>
#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "insideout/v1/scheduler.grpc.pb.h"
#include "support/daemon_process.h"

namespace insideout::testing {

inline std::unique_ptr<v1::Scheduler::Stub> control_stub(const std::string& runtime_dir) {
  return v1::Scheduler::NewStub(grpc::CreateChannel("unix:" + runtime_dir + "/control.sock",
                                                    grpc::InsecureChannelCredentials()));
}

inline std::unique_ptr<grpc::ClientContext> ctx(
    std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  auto c = std::make_unique<grpc::ClientContext>();
  c->set_deadline(std::chrono::system_clock::now() + timeout);
  return c;
}

// Runs argv[0] (searched in PATH) to completion, at most `timeout`; stdout and stderr
// apart. exit_code: the exit code, 128 + signal, or -1 when killed on timeout.
struct Command {
  int exit_code = -1;
  std::string out, err;
};
inline Command run_command(const std::vector<std::string>& args,
                           std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
  Command r;
  int out[2], err[2];
  if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) return r;
  const pid_t pid = ::fork();
  if (pid == 0) {
    std::vector<char*> argv;
    std::vector<std::string> copy = args;
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::dup2(out[1], 1);
    ::dup2(err[1], 2);
    const int devnull = ::open("/dev/null", O_RDONLY);
    ::dup2(devnull, 0);
    ::execvp(argv[0], argv.data());
    std::_Exit(127);
  }
  ::close(out[1]);
  ::close(err[1]);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  bool open_out = true, open_err = true;
  char buf[4096];
  while (open_out || open_err) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    pollfd p[2] = {{open_out ? out[0] : -1, POLLIN, 0}, {open_err ? err[0] : -1, POLLIN, 0}};
    if (::poll(p, 2, static_cast<int>(left.count())) <= 0) continue;
    for (int i = 0; i < 2; ++i) {
      if (p[i].revents == 0) continue;
      const ssize_t n = ::read(p[i].fd, buf, sizeof(buf));
      if (n <= 0) {
        (i == 0 ? open_out : open_err) = false;
      } else {
        (i == 0 ? r.out : r.err).append(buf, static_cast<std::size_t>(n));
      }
    }
  }
  ::close(out[0]);
  ::close(err[0]);
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - std::chrono::steady_clock::now());
  r.exit_code = wait_child(pid, std::max(left, std::chrono::milliseconds(100)));
  return r;
}

inline std::vector<std::string> ctl_args(const std::string& dir, std::vector<std::string> rest) {
  std::vector<std::string> a = {INSIDEOUTCTL_PATH, "--runtime-dir", dir};
  a.insert(a.end(), rest.begin(), rest.end());
  return a;
}

// ---- the kernel's view of a thread ----------------------------------------------------

inline std::vector<int> kernel_affinity(pid_t tid) {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> out;
  if (sched_getaffinity(tid, sizeof(set), &set) != 0) return out;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &set)) out.push_back(c);
  }
  return out;
}

inline std::string proc_status_field(pid_t pid, pid_t tid, const std::string& key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/task/" + std::to_string(tid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) {
      std::string v = line.substr(key.size() + 1);
      v.erase(0, v.find_first_not_of(" \t"));
      return v;
    }
  }
  return "";
}

// Field n (1-based, as proc(5) numbers them) of /proc/<pid>/task/<tid>/stat.
inline long proc_stat_field(pid_t pid, pid_t tid, int n) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/task/" + std::to_string(tid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto paren = s.rfind(')');
  if (paren == std::string::npos) return -999;
  std::istringstream ss(s.substr(paren + 1));
  std::string tok;
  for (int field = 3; ss >> tok; ++field) {
    if (field == n) return std::stol(tok);
  }
  return -999;
}

struct ThreadView {
  std::vector<int> cpus;
  long policy = -1, rt_priority = -1, nice = -99;
  bool operator==(const ThreadView&) const = default;
};
inline ThreadView kernel_view(pid_t pid, pid_t tid) {
  return {kernel_affinity(tid), proc_stat_field(pid, tid, 41), proc_stat_field(pid, tid, 40),
          proc_stat_field(pid, tid, 19)};
}

}  // namespace insideout::testing
