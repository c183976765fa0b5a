// Shared plumbing of the bench_* programs: options, clock, pinning, percentiles, CSV rows,
// forked peers, and the removal of named IPC objects on every way out.
//
// Every program prints rows `scenario,system,metric,value,unit` on stdout, no header, and
// its diagnostics on stderr. Counts are fixed per size (--smoke, --quick, full) and a
// watchdog bounds the wall time, so a broken peer fails the run instead of hanging it.
// Nothing here asserts a timing.
#pragma once

#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace insideout::bench {

inline constexpr std::size_t kCacheLine = 64;

// The message every IPC peer moves: 64 bytes; `seq` lets the receiver check order and loss.
struct Msg {
  std::uint64_t seq;
  std::uint64_t stamp_ns;
  std::uint8_t pad[48];
};
static_assert(sizeof(Msg) == 64);
static_assert(std::is_trivially_copyable_v<Msg>);

inline Msg make_msg(std::uint64_t seq) noexcept {
  Msg m{};
  m.seq = seq;
  return m;
}

// ---- clock and CPUs ----

inline std::uint64_t now_ns() noexcept {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::uint64_t(ts.tv_sec) * 1'000'000'000u + std::uint64_t(ts.tv_nsec);
}

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// The role-th CPU this process may run on (role 0: producer or client, 1: consumer or
// server), wrapped around when there are fewer. Read once, before anything is pinned.
inline int cpu_for(int role) {
  static const std::vector<int> cpus = [] {
    std::vector<int> v;
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
      for (int c = 0; c < CPU_SETSIZE; ++c) {
        if (CPU_ISSET(c, &set)) v.push_back(c);
      }
    }
    if (v.empty()) v.push_back(0);
    return v;
  }();
  return cpus[std::size_t(role) % cpus.size()];
}

inline bool pin_thread(int cpu) noexcept {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return pthread_setaffinity_np(pthread_self(), sizeof(set), &set) == 0;
}

// Spins until pred() holds; after a while it naps instead, for peers that take
// milliseconds to come up. The watchdog bounds it.
template <class Pred>
void spin_until(Pred&& pred) {
  for (std::uint64_t i = 0; !pred(); ++i) {
    if (i < 100'000) {
      cpu_relax();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }
}

// Futex wait and wake on a word that may be shared between processes (no
// FUTEX_PRIVATE_FLAG). Wait returns at once when *word != expected.
inline bool futex_wait(std::atomic<std::uint32_t>* word, std::uint32_t expected) noexcept {
  static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t));
  return syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAIT, expected, nullptr,
                 nullptr, 0) == 0;
}
inline void futex_wake(std::atomic<std::uint32_t>* word, int count = 1) noexcept {
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAKE, count, nullptr, nullptr,
          0);
}

// ---- rows ----

inline void emit(std::string_view scenario, std::string_view system, std::string_view metric,
                 double value, std::string_view unit) {
  std::printf("%.*s,%.*s,%.*s,%.3f,%.*s\n", int(scenario.size()), scenario.data(),
              int(system.size()), system.data(), int(metric.size()), metric.data(), value,
              int(unit.size()), unit.data());
  std::fflush(stdout);  // rows survive a later crash, and a fork never duplicates them
}

inline void emit_rate(std::string_view scenario, std::string_view system, std::uint64_t count,
                      std::uint64_t ns, bool tasks = false) {
  const double per_s = ns == 0 ? 0.0 : double(count) * 1e9 / double(ns);
  emit(scenario, system, tasks ? "tasks_per_s" : "msgs_per_s", per_s, tasks ? "task/s" : "msg/s");
}

// Nearest-rank percentile of sorted samples.
inline double percentile(const std::vector<std::uint64_t>& sorted, double p) {
  if (sorted.empty()) return 0.0;
  auto rank = std::size_t(std::ceil(p * double(sorted.size())));
  return double(sorted[std::clamp<std::size_t>(rank, 1, sorted.size()) - 1]);
}

// Emits p50, p99 and p999 of nanosecond samples, in microseconds (or ns with kNs).
enum class Unit { kUs, kNs };
inline void emit_latency(std::string_view scenario, std::string_view system,
                         std::vector<std::uint64_t> samples_ns, Unit unit = Unit::kUs) {
  std::sort(samples_ns.begin(), samples_ns.end());
  const double scale = unit == Unit::kUs ? 1e-3 : 1.0;
  const char* u = unit == Unit::kUs ? "us" : "ns";
  emit(scenario, system, "p50", percentile(samples_ns, 0.50) * scale, u);
  emit(scenario, system, "p99", percentile(samples_ns, 0.99) * scale, u);
  emit(scenario, system, "p999", percentile(samples_ns, 0.999) * scale, u);
}

// Round trips time_round_trips(count, ...) makes, warm-up included: what an echo server
// must answer.
inline std::uint64_t trips_with_warmup(std::uint64_t count) { return count / 10 + 1 + count; }

// Times `count` round trips after count / 10 + 1 unrecorded warm-up ones, sleeping `gap`
// after each (none: back to back). round_trip(i) does trip i and returns false on error.
// Returns the samples in ns, or nothing when a trip failed.
template <class RoundTrip>
std::optional<std::vector<std::uint64_t>> time_round_trips(std::uint64_t count,
                                                           std::chrono::microseconds gap,
                                                           RoundTrip&& round_trip) {
  prctl(PR_SET_TIMERSLACK, 1UL);  // so the gap is what we ask for, not 50 us more
  const std::uint64_t warmup = trips_with_warmup(count) - count;
  std::vector<std::uint64_t> samples;
  samples.reserve(count);
  for (std::uint64_t i = 0; i < warmup + count; ++i) {
    const std::uint64_t t0 = now_ns();
    if (!round_trip(i)) return std::nullopt;
    const std::uint64_t t1 = now_ns();
    if (i >= warmup) samples.push_back(t1 - t0);
    if (gap.count() != 0) std::this_thread::sleep_for(gap);
  }
  return samples;
}

// ---- cleanup of named objects and children, on every way out ----
//
// A process registers what it creates under a name (socket files, temporary configs) and
// the children it starts. Each entry belongs to the process that made it: at exit, on
// SIGINT, SIGTERM, SIGHUP and on the watchdog's SIGALRM, a process stops its own children
// and removes its own files, never those of its parent (forked children inherit a copy of
// the table and the handlers). Fixed arrays, so the handler needs no allocation.

namespace detail {
struct Registry {
  struct Path {
    pid_t owner;
    char path[108];  // sizeof(sockaddr_un::sun_path)
  };
  struct Child {
    pid_t owner;
    pid_t pid;
  };
  pid_t main_pid = 0;  // the program's own process, which reports a signal
  Path paths[16] = {};
  Child children[8] = {};
};
inline Registry& registry() {
  static Registry r;
  return r;
}

inline void sleep_ms(int ms) noexcept {
  timespec ts{0, long(ms) * 1'000'000};
  nanosleep(&ts, nullptr);
}

// Async-signal-safe: kill, waitpid, nanosleep and unlink only. Runs twice at worst (a
// signal during the exit handler), which finds nothing left to do.
inline void run_cleanup() noexcept {
  Registry& r = registry();
  const pid_t self = getpid();
  // Children in reverse order of start (a peer before the daemon it talks to): SIGTERM,
  // a grace of up to 3 s, then SIGKILL.
  for (int i = int(std::size(r.children)) - 1; i >= 0; --i) {
    Registry::Child& c = r.children[i];
    if (c.owner != self || c.pid <= 0) continue;
    kill(c.pid, SIGTERM);
    int status;
    int waited = 0;
    while (waitpid(c.pid, &status, WNOHANG) == 0 && waited < 3000) {
      sleep_ms(5);
      waited += 5;
    }
    if (waited >= 3000) {
      kill(c.pid, SIGKILL);
      waitpid(c.pid, &status, 0);
    }
    c.pid = 0;
  }
  for (Registry::Path& p : r.paths) {
    if (p.owner == self && p.path[0] != '\0') unlink(p.path);
    if (p.owner == self) p.path[0] = '\0';
  }
}

inline void on_fatal_signal(int sig) {
  if (registry().main_pid == getpid()) {
    const char* msg = sig == SIGALRM ? "bench: error: watchdog expired, cleaning up\n"
                                     : "bench: error: interrupted, cleaning up\n";
    ssize_t ignored = write(STDERR_FILENO, msg, std::strlen(msg));
    (void)ignored;
  }
  run_cleanup();
  _exit(sig == SIGALRM ? 3 : 128 + sig);
}
}  // namespace detail

inline void install_cleanup() {
  detail::registry().main_pid = getpid();
  struct sigaction sa {};
  sa.sa_handler = detail::on_fatal_signal;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGALRM}) sigaction(sig, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a vanished peer shows up as EPIPE, not as a silent death
  std::atexit([] { detail::run_cleanup(); });
}

inline void arm_watchdog(unsigned seconds) { alarm(seconds); }

// Removes `path` when this process ends (and now, if a stale one is in the way).
inline void remove_at_exit(const std::string& path) {
  unlink(path.c_str());
  for (auto& p : detail::registry().paths) {
    if (p.path[0] == '\0') {
      p.owner = getpid();
      std::snprintf(p.path, sizeof(p.path), "%s", path.c_str());
      return;
    }
  }
}

// ---- options ----

enum class Size { kFull, kQuick, kSmoke };

struct Options {
  std::string program;
  std::string scenario = "all";
  Size size = Size::kFull;

  bool wants(std::string_view name) const { return scenario == "all" || scenario == name; }
  // A count for this size.
  std::uint64_t pick(std::uint64_t full, std::uint64_t quick, std::uint64_t smoke) const {
    return size == Size::kFull ? full : size == Size::kQuick ? quick : smoke;
  }
};

// Parses --scenario NAME|all, --quick, --smoke and --help; exits on --help or a bad
// argument. A scenario this program does not have is not an error (bench.sh asks every
// program for every scenario): it notes it on stderr and exits 0 without rows.
inline Options parse_options(int argc, char** argv, std::string_view about,
                             const std::vector<std::string>& scenarios) {
  Options o;
  o.program = argc > 0 ? argv[0] : "bench";
  if (auto slash = o.program.rfind('/'); slash != std::string::npos) o.program.erase(0, slash + 1);
  auto usage = [&](FILE* f) {
    std::fprintf(f,
                 "usage: %s [--scenario NAME|all] [--quick | --smoke] [--help]\n%.*s\n"
                 "Prints CSV rows scenario,system,metric,value,unit (no header) on stdout.\n"
                 "  --quick  small counts; --smoke  tiny counts (a second or two)\nscenarios:",
                 o.program.c_str(), int(about.size()), about.data());
    for (const auto& s : scenarios) std::fprintf(f, " %s", s.c_str());
    std::fprintf(f, "\n");
  };
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a == "--help" || a == "-h") {
      usage(stdout);
      std::exit(0);
    } else if (a == "--quick") {
      o.size = Size::kQuick;
    } else if (a == "--smoke") {
      o.size = Size::kSmoke;
    } else if (a == "--scenario" && i + 1 < argc) {
      o.scenario = argv[++i];
    } else if (a.starts_with("--scenario=")) {
      o.scenario = std::string(a.substr(11));
    } else {
      usage(stderr);
      std::exit(2);
    }
  }
  if (o.scenario != "all" &&
      std::find(scenarios.begin(), scenarios.end(), o.scenario) == scenarios.end()) {
    std::fprintf(stderr, "%s: no scenario %s here\n", o.program.c_str(), o.scenario.c_str());
    std::exit(0);
  }
  install_cleanup();
  arm_watchdog(unsigned(o.pick(900, 120, 30)));
  return o;
}

inline void fail(const Options& o, const char* what) {
  std::fprintf(stderr, "%s: error: %s\n", o.program.c_str(), what);
}
inline void fail_errno(const Options& o, const char* what) {
  std::fprintf(stderr, "%s: error: %s: %s\n", o.program.c_str(), what, std::strerror(errno));
}

// ---- forked peers ----

// Shared memory for the two processes of a measurement, mapped before fork.
template <class T>
class Shared {
 public:
  Shared() {
    void* p = mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    ptr_ = new (p) T();
  }
  ~Shared() {
    ptr_->~T();
    munmap(ptr_, sizeof(T));
  }
  Shared(const Shared&) = delete;
  Shared& operator=(const Shared&) = delete;
  T* operator->() const noexcept { return ptr_; }
  T& operator*() const noexcept { return *ptr_; }

 private:
  T* ptr_;
};

// Both sides set up, then the timed side opens the gate and starts its clock, so that
// neither fork nor set-up is measured.
//
// Memory ordering:
//   R1 (ready store, release) pairs with R2 (ready load, acquire): the waiting side's
//      set-up happens before the clock starts.
//   G1 (go store, release) pairs with G2 (go load, acquire).
struct StartGate {
  std::atomic<std::uint32_t> ready{0};
  std::atomic<std::uint32_t> go{0};

  void arrive_and_wait() {
    ready.store(1, std::memory_order_release);                            // R1
    spin_until([&] { return go.load(std::memory_order_acquire) != 0; });  // G2
  }
  void wait_and_open() {
    spin_until([&] { return ready.load(std::memory_order_acquire) != 0; });  // R2
    go.store(1, std::memory_order_release);                                  // G1
  }
};

// Forks a child pinned to `cpu` (-1: not pinned) that runs body() and exits with its result. With
// `run_exit_handlers` it leaves through std::exit (libraries that tidy up in static
// destructors, like iceoryx's runtime); else through _exit. Returns the pid, or -1.
template <class Body>
pid_t spawn(int cpu, Body&& body, bool run_exit_handlers = false) {
  std::fflush(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid != 0) {
    if (pid > 0) {
      for (auto& c : detail::registry().children) {
        if (c.pid == 0) {
          c = {getpid(), pid};
          break;
        }
      }
    }
    return pid;
  }
  prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the parent
  if (getppid() != parent) _exit(1);
  if (cpu >= 0) pin_thread(cpu);
  int rc = 1;
  try {
    rc = body();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_child: error: %s\n", e.what());
  }
  std::fflush(nullptr);
  if (run_exit_handlers) std::exit(rc);
  _exit(rc);
}

// Waits for a child at most `timeout`, then kills it. True when it exited with 0.
inline bool reap(pid_t pid, std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
  if (pid <= 0) return false;
  int status = 0;
  const std::uint64_t deadline = now_ns() + std::uint64_t(timeout.count()) * 1'000'000u;
  pid_t r;
  while ((r = waitpid(pid, &status, WNOHANG)) == 0 && now_ns() < deadline) detail::sleep_ms(1);
  if (r == 0) {
    std::fprintf(stderr, "bench: error: child %d timed out, killing it\n", int(pid));
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
  }
  for (auto& c : detail::registry().children) {
    if (c.pid == pid) c.pid = 0;
  }
  return r == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

// The thread counts of the dispatch scenarios: 1, 2 and every CPU, without repeats.
inline std::vector<unsigned> dispatch_thread_counts() {
  std::vector<unsigned> v{1, 2};
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  if (hw > 2) v.push_back(hw);
  return v;
}

inline std::string dispatch_scenario(unsigned threads) {
  return "dispatch_threads" + std::to_string(threads);
}

inline std::vector<std::string> dispatch_scenarios() {
  std::vector<std::string> v;
  for (unsigned t : dispatch_thread_counts()) v.push_back(dispatch_scenario(t));
  return v;
}

}  // namespace insideout::bench
