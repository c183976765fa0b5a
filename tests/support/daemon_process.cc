#include "support/daemon_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "insideout/client.hpp"

namespace insideout::testing {

const char* insideoutd_path() {
  const char* p = std::getenv("INSIDEOUT_TEST_DAEMON");
  return p != nullptr && *p != '\0' ? p : INSIDEOUTD_PATH;
}

DaemonProcess::DaemonProcess(std::vector<std::string> args, std::string runtime_dir) {
  char tmpl[] = "/tmp/insideout-test-XXXXXX";
  dir_ = runtime_dir.empty() ? ::mkdtemp(tmpl) : std::move(runtime_dir);
  log_path_ = dir_ + ".log";
  pid_ = ::fork();
  if (pid_ == 0) {
    std::vector<std::string> argv_s = {insideoutd_path(), "--runtime-dir", dir_, "--log-level",
                                       "debug"};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    FILE* log = std::fopen(log_path_.c_str(), "w");
    if (log != nullptr) ::dup2(fileno(log), 2);
    ::execv(argv[0], argv.data());
    std::_Exit(127);
  }
  // Ready once a client can register (bounded: 10 s).
  ClientOptions o;
  o.runtime_dir = dir_;
  o.want_segment = false;
  for (int i = 0; i < 1000 && !ready_; ++i) {
    if (::access(socket_path().c_str(), F_OK) == 0 && Client::connect(o).ok()) {
      ready_ = true;
      break;
    }
    int status;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

DaemonProcess::~DaemonProcess() {
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    int status;
    ::waitpid(pid_, &status, 0);
  }
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
  std::filesystem::remove(log_path_, ec);
}

int DaemonProcess::stop(int sig, std::chrono::milliseconds timeout) {
  if (pid_ <= 0) return -1;
  ::kill(pid_, sig);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  int status = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      return exit_status_;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return -2;  // still running
}

std::string DaemonProcess::log() const {
  std::ifstream in(log_path_);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool DaemonProcess::alive() {
  if (pid_ <= 0) return false;
  int status = 0;
  if (::waitpid(pid_, &status, WNOHANG) == pid_) {
    pid_ = -1;
    exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return false;
  }
  return true;
}

CommandResult run_insideoutd(const std::vector<std::string>& args,
                             std::chrono::milliseconds timeout) {
  CommandResult r;
  int out[2];
  if (::pipe2(out, O_CLOEXEC) != 0) return r;
  const pid_t pid = ::fork();
  if (pid == 0) {
    std::vector<std::string> argv_s = {insideoutd_path()};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::dup2(out[1], 1);
    ::dup2(out[1], 2);
    ::execv(argv[0], argv.data());
    std::_Exit(127);
  }
  ::close(out[1]);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  char buf[4096];
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    pollfd p{out[0], POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    const ssize_t n = ::read(out[0], buf, sizeof(buf));
    if (n <= 0) break;  // EOF: the command closed its output (it exited)
    r.output.append(buf, static_cast<std::size_t>(n));
  }
  ::close(out[0]);
  r.exit_code =
      wait_child(pid, std::chrono::duration_cast<std::chrono::milliseconds>(std::max(
                          deadline - std::chrono::steady_clock::now(),
                          std::chrono::steady_clock::duration(std::chrono::milliseconds(100)))));
  return r;
}

pid_t fork_child(const std::function<int()>& body) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid != 0) return pid;
  int rc = 99;
  try {
    rc = body();
  } catch (...) {
    rc = 99;
  }
  std::fflush(nullptr);
  std::_Exit(rc);
}

int wait_child(pid_t pid, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  int status = 0;
  for (;;) {
    const pid_t got = ::waitpid(pid, &status, WNOHANG);
    if (got == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (got < 0) return -1;
    if (std::chrono::steady_clock::now() >= deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec))
    out.push_back(e.path().filename().string());
  return out;
}

int count_mapped_segments(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/maps");
  std::string line;
  int n = 0;
  while (std::getline(in, line)) n += line.find("memfd:insideout-client-") != std::string::npos;
  return n;
}

}  // namespace insideout::testing
