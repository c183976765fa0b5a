// Starts a real insideoutd in a fresh runtime directory of its own and stops it, so
// integration tests can run in parallel and leave nothing behind.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <string>
#include <vector>

namespace insideout::testing {

// The insideoutd under test: $INSIDEOUT_TEST_DAEMON when set (another build of it, e.g.
// under a sanitizer, or an older one to see a test fail), else the one built here.
const char* insideoutd_path();

class DaemonProcess {
 public:
  // Starts insideoutd with `args` and waits until its socket accepts registrations. The
  // runtime directory is a fresh one, or `runtime_dir` (a successor on a dead daemon's).
  explicit DaemonProcess(std::vector<std::string> args = {}, std::string runtime_dir = {});
  ~DaemonProcess();  // SIGKILL if still running; removes the runtime directory

  const std::string& runtime_dir() const { return dir_; }
  std::string socket_path() const { return dir_ + "/daemon.sock"; }
  pid_t pid() const { return pid_; }
  bool ready() const { return ready_; }
  // Sends `sig` and waits for exit; returns the exit status (or 128 + signal).
  int stop(int sig, std::chrono::milliseconds timeout = std::chrono::seconds(15));
  // The daemon's stderr so far.
  std::string log() const;
  // True while the process runs; reaps it (and remembers how it ended) once it has exited.
  bool alive();
  // How it ended (exit code or 128 + signal), once stop() or alive() saw it go; else -1.
  int exit_status() const { return exit_status_; }

 private:
  std::string dir_;
  std::string log_path_;
  pid_t pid_ = -1;
  bool ready_ = false;
  int exit_status_ = -1;
};

// What a finished command printed and how it ended.
struct CommandResult {
  int exit_code = -1;  // exit code, 128 + signal, or -1 when it was killed on timeout
  std::string output;  // stdout and stderr together
};
// Runs insideoutd with `args` (no --runtime-dir added) to completion, at most `timeout`.
CommandResult run_insideoutd(const std::vector<std::string>& args,
                             std::chrono::milliseconds timeout = std::chrono::seconds(10));

// Forks a child that runs `body` and _exit()s with its return value (99 if it threw), so
// no destructor or atexit handler of the parent runs twice. Fork before the parent
// creates any thread (a Client has threads).
pid_t fork_child(const std::function<int()>& body);
// Waits for a child at most `timeout`; SIGKILLs and reaps it when it overstays. Returns
// its exit code, 128 + signal, or -1 on timeout.
int wait_child(pid_t pid, std::chrono::milliseconds timeout);

// Files left in a directory (names), for "nothing left behind" checks.
std::vector<std::string> list_dir(const std::string& dir);
// memfd segments a process still maps ("memfd:insideout-client-N" in /proc/<pid>/maps).
int count_mapped_segments(pid_t pid);

}  // namespace insideout::testing
