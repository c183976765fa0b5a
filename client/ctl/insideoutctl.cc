// insideoutctl: the command line over insideoutd's control plane (insideout.v1.Scheduler
// on $INSIDEOUT_RUNTIME_DIR/control.sock), and a reader of its counters area.
//
// Exit codes: 0 done; 1 the daemon answered with an error; 2 bad usage; 3 the daemon
// cannot be reached. Errors go to stderr, one line each.
#include <fcntl.h>
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "insideout/shm/paths.h"
#include "insideout/shm/stats_area.h"
#include "insideout/v1/scheduler.grpc.pb.h"

namespace {

namespace v1 = insideout::v1;

constexpr int kOk = 0, kDaemonError = 1, kUsage = 2, kUnreachable = 3;

struct Options {
  std::string socket;
  std::string runtime_dir;
  bool json = false;
  unsigned timeout_ms = 5000;
  unsigned wait_s = 0;  // --wait: how long to wait for a daemon that is starting
};

std::string one_line(std::string s) {
  for (char& c : s) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return s;
}

int fail(int code, const std::string& what) {
  std::fprintf(stderr, "insideoutctl: %s\n", one_line(what).c_str());
  return code;
}

const char* code_name(grpc::StatusCode c) {
  switch (c) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    default:
      return "UNKNOWN";
  }
}

class Ctl {
 public:
  explicit Ctl(const Options& o) : o_(o) {
    dir_ = o.runtime_dir.empty() ? insideout::shm::default_runtime_dir() : o.runtime_dir;
    path_ = o.socket.empty() ? dir_ + "/control.sock" : o.socket;
  }

  const std::string& socket_path() const { return path_; }
  std::string stats_path() const { return dir_ + "/" + insideout::shm::kStatsFileName; }

  v1::Scheduler::Stub& stub() {
    if (!stub_) {
      if (o_.wait_s != 0) wait_for_socket();
      stub_ = v1::Scheduler::NewStub(
          grpc::CreateChannel("unix:" + path_, grpc::InsecureChannelCredentials()));
    }
    return *stub_;
  }

  // --wait: until the control socket accepts a connection (a daemon that is starting
  // has none yet, or refuses), with backoff, at most --wait seconds; then the call goes
  // ahead and fails as usual if there is still no daemon.
  void wait_for_socket() const {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path_.size() >= sizeof(addr.sun_path)) return;
    std::memcpy(addr.sun_path, path_.c_str(), path_.size() + 1);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(o_.wait_s);
    auto backoff = std::chrono::milliseconds(5);
    for (;;) {
      const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd < 0) return;
      const int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
      const int e = errno;
      ::close(fd);
      if (rc == 0 || (e != ENOENT && e != ECONNREFUSED)) return;
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) return;
      std::this_thread::sleep_for(std::min<std::chrono::nanoseconds>(backoff, deadline - now));
      backoff = std::min(backoff * 2, std::chrono::milliseconds(200));
    }
  }
  std::unique_ptr<grpc::ClientContext> context(unsigned timeout_ms = 0) const {
    auto c = std::make_unique<grpc::ClientContext>();
    c->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::milliseconds(timeout_ms ? timeout_ms : o_.timeout_ms));
    return c;
  }
  // Maps a failed call to an exit code and one line on stderr: UNAVAILABLE and a deadline
  // that passed without an answer mean the daemon cannot be reached (3); any other code
  // is the daemon's answer (1), printed with its name.
  int error(const grpc::Status& st) const {
    if (st.error_code() == grpc::StatusCode::UNAVAILABLE) {
      return fail(kUnreachable,
                  "UNAVAILABLE: cannot reach insideoutd at " + path_ + ": " + st.error_message());
    }
    if (st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED && !answered_deadline(st)) {
      return fail(kUnreachable, "DEADLINE_EXCEEDED: insideoutd at " + path_ +
                                    " did not answer in time (is it stopped or overloaded? "
                                    "--timeout-ms waits longer)");
    }
    return fail(kDaemonError, std::string(code_name(st.error_code())) + ": " + st.error_message());
  }

 private:
  // The daemon's own DEADLINE_EXCEEDED (Submit: no result in time) carries its words;
  // gRPC's, when our deadline passed with no answer, says only "Deadline Exceeded".
  static bool answered_deadline(const grpc::Status& st) {
    return !st.error_message().empty() && st.error_message() != "Deadline Exceeded";
  }

 public:
 private:
  Options o_;
  std::string dir_, path_;
  std::unique_ptr<v1::Scheduler::Stub> stub_;
};

void print_json(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions jo;
  jo.add_whitespace = false;
  jo.preserve_proto_field_names = true;
  jo.always_print_primitive_fields = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, jo);
  std::cout << out << "\n";
}

std::string policy_text(v1::Policy p) {
  switch (p) {
    case v1::POLICY_OTHER:
      return "other";
    case v1::POLICY_BATCH:
      return "batch";
    case v1::POLICY_IDLE:
      return "idle";
    case v1::POLICY_FIFO:
      return "fifo";
    case v1::POLICY_RR:
      return "rr";
    default:
      return "?";
  }
}

std::optional<v1::Policy> parse_policy(const std::string& s) {
  static const std::map<std::string, v1::Policy> m = {
      {"other", v1::POLICY_OTHER}, {"normal", v1::POLICY_OTHER}, {"batch", v1::POLICY_BATCH},
      {"idle", v1::POLICY_IDLE},   {"fifo", v1::POLICY_FIFO},    {"rr", v1::POLICY_RR}};
  std::string l;
  for (char c : s) l += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (l.rfind("sched_", 0) == 0) l = l.substr(6);
  auto it = m.find(l);
  if (it == m.end()) return std::nullopt;
  return it->second;
}

std::string state_text(v1::WorkerState s) {
  switch (s) {
    case v1::WORKER_STATE_RUNNING:
      return "running";
    case v1::WORKER_STATE_PARKED:
      return "parked";
    case v1::WORKER_STATE_STOPPED:
      return "stopped";
    default:
      return "?";
  }
}

std::string idle_text(v1::IdleStrategy s) {
  switch (s) {
    case v1::IDLE_STRATEGY_BLOCK:
      return "block";
    case v1::IDLE_STRATEGY_SPIN_THEN_BLOCK:
      return "spin-then-block";
    case v1::IDLE_STRATEGY_POLL:
      return "poll";
    default:
      return "?";
  }
}

std::string state_text(v1::DaemonState s) {
  switch (s) {
    case v1::DAEMON_STATE_SERVING:
      return "serving";
    case v1::DAEMON_STATE_DRAINING:
      return "draining (new work is refused; insideoutctl resume undoes it)";
    case v1::DAEMON_STATE_DRAINED:
      return "drained (nothing in flight; insideoutctl resume undoes it)";
    default:
      return "?";
  }
}

// WORKER (a number) or POOL (a name).
v1::Target parse_target(const std::string& s) {
  v1::Target t;
  if (!s.empty() && s.find_first_not_of("0123456789") == std::string::npos) {
    t.set_worker(static_cast<std::uint32_t>(std::stoul(s)));
  } else {
    t.set_pool(s);
  }
  return t;
}

void print_workers(const google::protobuf::RepeatedPtrField<v1::Worker>& ws) {
  std::printf("%-4s %-8s %-8s %-10s %-4s %-6s %-4s %-4s %-8s %6s %12s %10s %8s %6s\n", "ID", "POOL",
              "TID", "CPUS", "LAST", "POLICY", "PRIO", "NICE", "STATE", "QUEUE", "COMPLETED",
              "STEALS", "PARKS", "LONG");
  for (const auto& w : ws) {
    std::printf("%-4u %-8s %-8d %-10s %-4d %-6s %-4d %-4d %-8s %6u %12llu %10llu %8llu %6llu\n",
                w.id(), w.pool().c_str(), w.tid(), w.cpus().c_str(), w.last_cpu(),
                policy_text(w.policy()).c_str(), w.priority(), w.nice(),
                state_text(w.state()).c_str(), w.queue_depth(),
                static_cast<unsigned long long>(w.counters().completed()),
                static_cast<unsigned long long>(w.counters().steals()),
                static_cast<unsigned long long>(w.counters().parks()),
                static_cast<unsigned long long>(w.counters().long_steps()));
  }
}

// ---- the counters area, read directly -----------------------------------------------

class StatsMap {
 public:
  // nullopt and *err when the file is missing or not (yet) a counters area we know.
  static std::optional<StatsMap> open(const std::string& path, std::string* err) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      *err = path + ": " + std::strerror(errno);
      return std::nullopt;
    }
    struct stat st {};
    if (::fstat(fd, &st) != 0 ||
        static_cast<std::size_t>(st.st_size) < sizeof(insideout::shm::StatsArea)) {
      ::close(fd);
      *err = path + ": too small for a counters area";
      return std::nullopt;
    }
    void* m = ::mmap(nullptr, sizeof(insideout::shm::StatsArea), PROT_READ, MAP_SHARED, fd, 0);
    ::close(fd);
    if (m == MAP_FAILED) {
      *err = path + ": mmap: " + std::strerror(errno);
      return std::nullopt;
    }
    auto* a = static_cast<const insideout::shm::StatsArea*>(m);
    // V2: pairs with V1 in the daemon (ControlServer::start()).
    const std::uint32_t v = a->header.version.load(std::memory_order_acquire);
    if (a->header.magic != insideout::shm::kStatsMagic ||
        v != insideout::shm::kStatsLayoutVersion) {
      ::munmap(m, sizeof(insideout::shm::StatsArea));
      *err = path + (v == 0 ? ": not ready"
                            : ": counters layout version " + std::to_string(v) +
                                  ", this insideoutctl reads " +
                                  std::to_string(insideout::shm::kStatsLayoutVersion));
      return std::nullopt;
    }
    return StatsMap(a);
  }
  StatsMap(StatsMap&& o) noexcept : a_(o.a_) { o.a_ = nullptr; }
  StatsMap& operator=(StatsMap&& o) noexcept {
    std::swap(a_, o.a_);
    return *this;
  }
  ~StatsMap() {
    if (a_ != nullptr)
      ::munmap(const_cast<insideout::shm::StatsArea*>(a_), sizeof(insideout::shm::StatsArea));
  }
  const insideout::shm::StatsArea& area() const { return *a_; }

 private:
  explicit StatsMap(const insideout::shm::StatsArea* a) : a_(a) {}
  const insideout::shm::StatsArea* a_;
};

// The counters area as a Stats message (the same shape GetStats answers with).
v1::Stats stats_from_area(const insideout::shm::StatsArea& a) {
  constexpr auto r = std::memory_order_relaxed;  // independent statistics
  v1::Stats s;
  s.set_submitted(a.totals.submitted.load(r));
  s.set_completed(a.totals.completed.load(r));
  s.set_failed(a.totals.failed.load(r));
  (*s.mutable_failed_by_reason())["rejected"] = a.totals.rejected.load(r);
  s.set_steps(a.totals.steps.load(r));
  s.set_steals(a.totals.steals.load(r));
  s.set_parks(a.totals.parks.load(r));
  s.set_timer_parks(a.totals.timer_parks.load(r));
  s.set_backpressure(a.totals.backpressure.load(r));
  s.set_spawned(a.totals.spawned.load(r));
  s.set_clients_faulted(a.totals.faulted.load(r));
  s.set_clients(static_cast<std::uint32_t>(a.header.clients.load(r)));
  const std::uint32_t n = std::min(a.header.workers.load(r), insideout::shm::kStatsMaxWorkers);
  for (std::uint32_t i = 0; i < n; ++i)
    s.add_queue_depths(static_cast<std::uint32_t>(a.workers[i].queue_depth.load(r)));
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  const std::uint64_t now = static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ull +
                            static_cast<std::uint64_t>(ts.tv_nsec);
  s.set_uptime_seconds(static_cast<double>(now - a.header.start_realtime_ns) / 1e9);
  return s;
}

// Whether the daemon that writes the counters area still does: it refreshes the area
// every 100 ms (updated_realtime_ns), so figures older than kStaleAfter, or a pid that
// is gone, mean the daemon is not running (killed: it had no chance to remove the file)
// or not running any more than a stopped process does.
constexpr double kStaleAfterSeconds = 2.0;

struct Liveness {
  bool up = true;
  double age_seconds = 0;  // of the figures
  std::string why;         // when !up
};

Liveness liveness(const insideout::shm::StatsArea& a) {
  Liveness l;
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  const std::int64_t now = static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
  const auto updated =
      static_cast<std::int64_t>(a.header.updated_realtime_ns.load(std::memory_order_relaxed));
  l.age_seconds = std::max(0.0, static_cast<double>(now - updated) / 1e9);
  const auto pid = static_cast<pid_t>(a.header.pid);
  bool gone = pid <= 0 || (::kill(pid, 0) != 0 && errno == ESRCH);
  if (!gone) {  // a zombie (killed, not yet reaped by its parent) runs no more
    std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
    std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto paren = stat.rfind(')');
    gone = paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] == 'Z';
  }
  char age[32];
  std::snprintf(age, sizeof(age), "%.1f", l.age_seconds);
  if (gone) {
    l.up = false;
    l.why = "insideoutd is not running (pid " + std::to_string(pid) +
            " is gone); its last counters are " + age + " s old";
  } else if (l.age_seconds > kStaleAfterSeconds) {
    l.up = false;
    l.why = "insideoutd is not running: pid " + std::to_string(pid) +
            " has not refreshed its counters for " + age + " s (stopped or hung?)";
  }
  return l;
}

void print_prometheus(const v1::Stats& s, const insideout::shm::StatsArea* a,
                      const Liveness* live) {
  if (live != nullptr) {
    std::printf(
        "# HELP insideout_up Whether insideoutd is running and refreshing its counters.\n"
        "# TYPE insideout_up gauge\ninsideout_up %d\n"
        "# HELP insideout_stats_age_seconds Seconds since insideoutd last refreshed these "
        "figures.\n# TYPE insideout_stats_age_seconds gauge\ninsideout_stats_age_seconds "
        "%.3f\n",
        live->up ? 1 : 0, live->age_seconds);
  } else {
    std::printf(
        "# HELP insideout_up Whether insideoutd is running.\n# TYPE insideout_up gauge\n"
        "insideout_up 1\n");
  }
  auto counter = [](const char* name, const char* help, std::uint64_t v) {
    std::printf("# HELP insideout_%s %s\n# TYPE insideout_%s counter\ninsideout_%s %llu\n", name,
                help, name, name, static_cast<unsigned long long>(v));
  };
  counter("submitted_total", "Continuations accepted from clients.", s.submitted());
  counter("completed_total", "Continuations completed.", s.completed());
  counter("failed_total", "Continuations that ended in an error.", s.failed());
  counter("steps_total", "Steps run.", s.steps());
  counter("steals_total", "Successful steals between workers.", s.steals());
  counter("parks_total", "Times a worker went to sleep.", s.parks());
  counter("timer_parks_total", "Continuations parked on a timer.", s.timer_parks());
  counter("backpressure_total", "Times a client's ring was left waiting (in-flight limit).",
          s.backpressure());
  counter("spawned_total", "Child continuations spawned.", s.spawned());
  counter("clients_faulted_total",
          "Clients failed and disconnected because their rings were unusable.",
          s.clients_faulted());
  std::printf(
      "# HELP insideout_failed_by_reason_total Failures and rejections by reason.\n"
      "# TYPE insideout_failed_by_reason_total counter\n");
  for (const auto& [k, v] : s.failed_by_reason()) {
    std::printf("insideout_failed_by_reason_total{reason=\"%s\"} %llu\n", k.c_str(),
                static_cast<unsigned long long>(v));
  }
  std::printf(
      "# HELP insideout_clients Registered clients.\n# TYPE insideout_clients "
      "gauge\ninsideout_clients %u\n",
      s.clients());
  std::printf(
      "# HELP insideout_uptime_seconds Seconds since the daemon started.\n# TYPE "
      "insideout_uptime_seconds "
      "gauge\ninsideout_uptime_seconds %.3f\n",
      s.uptime_seconds());
  std::printf(
      "# HELP insideout_queue_depth Continuations in a worker's run queue.\n"
      "# TYPE insideout_queue_depth gauge\n");
  for (int i = 0; i < s.queue_depths_size(); ++i) {
    std::printf("insideout_queue_depth{worker=\"%d\"} %u\n", i, s.queue_depths(i));
  }
  if (a != nullptr) {
    constexpr auto r = std::memory_order_relaxed;
    const std::uint32_t n = std::min(a->header.workers.load(r), insideout::shm::kStatsMaxWorkers);
    struct F {
      const char* name;
      std::atomic<std::uint64_t> insideout::shm::StatsWorker::*field;
    };
    for (const F& f : {F{"worker_completed_total", &insideout::shm::StatsWorker::completed},
                       F{"worker_steps_total", &insideout::shm::StatsWorker::steps},
                       F{"worker_steals_total", &insideout::shm::StatsWorker::steals},
                       F{"worker_parks_total", &insideout::shm::StatsWorker::parks}}) {
      std::printf("# TYPE insideout_%s counter\n", f.name);
      for (std::uint32_t i = 0; i < n; ++i) {
        std::printf("insideout_%s{worker=\"%u\"} %llu\n", f.name, i,
                    static_cast<unsigned long long>((a->workers[i].*f.field).load(r)));
      }
    }
  }
}

void print_stats_text(const v1::Stats& s) {
  std::printf(
      "uptime       %.1f s\nclients      %u\nsubmitted    %llu\ncompleted    %llu\nfailed       "
      "%llu\n"
      "steps        %llu\nsteals       %llu\nparks        %llu\nbackpressure %llu\n",
      s.uptime_seconds(), s.clients(), static_cast<unsigned long long>(s.submitted()),
      static_cast<unsigned long long>(s.completed()), static_cast<unsigned long long>(s.failed()),
      static_cast<unsigned long long>(s.steps()), static_cast<unsigned long long>(s.steals()),
      static_cast<unsigned long long>(s.parks()),
      static_cast<unsigned long long>(s.backpressure()));
  for (const auto& [k, v] : s.failed_by_reason())
    std::printf("failed[%s] %llu\n", k.c_str(), static_cast<unsigned long long>(v));
  std::printf("queue depths");
  for (auto d : s.queue_depths()) std::printf(" %u", d);
  std::printf("\n");
  if (const auto& h = s.continuation_latency(); h.count() != 0) {
    // Percentiles from the histogram: the upper bound of the bucket where each falls.
    auto pct = [&](double p) {
      const auto target = static_cast<std::uint64_t>(p * static_cast<double>(h.count()));
      std::uint64_t seen = 0;
      for (int i = 0; i < h.counts_size(); ++i) {
        seen += h.counts(i);
        if (seen > target)
          return i < h.bounds_ns_size() ? static_cast<double>(h.bounds_ns(i)) / 1e3 : -1.0;
      }
      return -1.0;
    };
    std::printf(
        "continuation latency (1 in 64 sampled): %llu samples, mean %.1f us, p50 < %.1f us, p99 < "
        "%.1f us\n",
        static_cast<unsigned long long>(h.count()),
        static_cast<double>(h.sum_ns()) / static_cast<double>(h.count()) / 1e3, pct(0.5),
        pct(0.99));
  }
  if (s.submit_latency().count() != 0) {
    std::printf("control Submit latency: %llu calls, mean %.1f us\n",
                static_cast<unsigned long long>(s.submit_latency().count()),
                static_cast<double>(s.submit_latency().sum_ns()) /
                    static_cast<double>(s.submit_latency().count()) / 1e3);
  }
}

// ---- usage --------------------------------------------------------------------------

std::size_t edit_distance(const std::string& a, const std::string& b) {
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

// When the command line names a command that does not exist (at the top, or under a
// command that takes one, like `pool`): "unknown command 'statuss' (did you mean
// 'status'?)". Empty when the parse failed for another reason.
std::string unknown_command(const CLI::App& app, int argc, char** argv) {
  const CLI::App* at = &app;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--") return "";
    if (a.rfind("-", 0) == 0) {
      // An option of `at` that takes a value in the next word: skip that word.
      if (a.find('=') == std::string::npos) {
        const CLI::Option* opt = at->get_option_no_throw(a);
        if (opt != nullptr && opt->get_type_size_max() > 0) ++i;
      }
      continue;
    }
    const auto subs = at->get_subcommands([](const CLI::App*) { return true; });
    const auto sub =
        std::find_if(subs.begin(), subs.end(), [&](const CLI::App* s) { return s->check_name(a); });
    if (sub != subs.end()) {
      at = *sub;
      continue;
    }
    if (subs.empty()) return "";  // a positional argument of a command
    std::string best;
    std::size_t best_d = std::string::npos;
    for (const CLI::App* s : subs) {
      const std::size_t d = edit_distance(a, s->get_name());
      if (d < best_d) {
        best_d = d;
        best = s->get_name();
      }
    }
    std::string where = at == &app ? "" : " of '" + at->get_name() + "'";
    std::string msg = "unknown command '" + a + "'" + where;
    if (!best.empty() && best_d <= std::max<std::size_t>(2, a.size() / 3))
      msg += " (did you mean '" + best + "'?)";
    return msg;
  }
  return "";
}

// ---- top ----------------------------------------------------------------------------

// The terminal as top found it, restored on every way out: the destructor on a return,
// the handler on a signal that ends the process (Ctrl-C, SIGTERM, a hang-up, an abort).
// Restoring is a write(2) and a tcsetattr(3), both async-signal-safe.
termios g_saved_termios{};
volatile std::sig_atomic_t g_termios_saved = 0;
volatile std::sig_atomic_t g_screen_taken = 0;
// Attributes off (ESC also ends a sequence cut short), show the cursor, leave the
// alternate screen.
constexpr char kLeaveScreen[] = "\x1b[0m\x1b[?25h\x1b[?1049l";
constexpr int kEndingSignals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGABRT};

void restore_terminal() noexcept {
  if (g_screen_taken != 0) {
    g_screen_taken = 0;
    (void)!::write(1, kLeaveScreen, sizeof(kLeaveScreen) - 1);
  }
  if (g_termios_saved != 0) {
    g_termios_saved = 0;
    ::tcsetattr(0, TCSANOW, &g_saved_termios);
  }
}

extern "C" void restore_terminal_and_die(int sig) {
  restore_terminal();
  // SA_RESETHAND put the default action back: end as the signal says (128 + sig).
  ::raise(sig);
}

class RawTerminal {
 public:
  RawTerminal() {
    struct sigaction sa {};
    sa.sa_handler = restore_terminal_and_die;
    sa.sa_flags = SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    for (std::size_t i = 0; i < std::size(kEndingSignals); ++i)
      ::sigaction(kEndingSignals[i], &sa, &old_actions_[i]);
    if (::isatty(0) && ::tcgetattr(0, &g_saved_termios) == 0) {
      termios t = g_saved_termios;
      t.c_lflag &= static_cast<tcflag_t>(~(ICANON | ECHO));
      t.c_cc[VMIN] = 0;
      t.c_cc[VTIME] = 0;
      if (::tcsetattr(0, TCSANOW, &t) == 0) g_termios_saved = 1;
    }
    std::fputs("\x1b[?1049h\x1b[?25l", stdout);  // alternate screen, hide the cursor
    std::fflush(stdout);
    g_screen_taken = 1;
  }
  ~RawTerminal() {
    std::fflush(stdout);
    restore_terminal();
    for (std::size_t i = 0; i < std::size(kEndingSignals); ++i)
      ::sigaction(kEndingSignals[i], &old_actions_[i], nullptr);
  }
  RawTerminal(const RawTerminal&) = delete;
  RawTerminal& operator=(const RawTerminal&) = delete;

 private:
  struct sigaction old_actions_[std::size(kEndingSignals)]{};
};

// Returns the failed call's status (printed once the terminal is restored), or OK.
grpc::Status top_loop(Ctl& ctl, unsigned interval_ms, unsigned iterations) {
  RawTerminal term;
  std::map<std::uint32_t, std::uint64_t> last_completed;
  auto last_t = std::chrono::steady_clock::now();
  for (unsigned it = 0; iterations == 0 || it < iterations; ++it) {
    v1::ListWorkersResponse ws;
    v1::ListPoolsResponse ps;
    v1::GetInfoResponse info;
    auto st = ctl.stub().ListWorkers(ctl.context().get(), {}, &ws);
    if (st.ok()) st = ctl.stub().ListPools(ctl.context().get(), {}, &ps);
    if (st.ok()) st = ctl.stub().GetInfo(ctl.context().get(), {}, &info);
    if (!st.ok()) return st;
    const auto now = std::chrono::steady_clock::now();
    const double dt = std::max(1e-3, std::chrono::duration<double>(now - last_t).count());
    last_t = now;
    std::string out = "\x1b[H\x1b[2J";
    char line[512];
    std::snprintf(line, sizeof(line),
                  "insideoutd %s  pid %u  up %.0f s  CPUs %s of %u  workers %u  clients %u    (q "
                  "quits)\r\n\r\n",
                  info.version().c_str(), info.pid(), info.uptime_seconds(),
                  info.cpus_allowed().c_str(), info.cpus_online(), info.workers(), info.clients());
    out += line;
    out +=
        "\x1b[7mPOOL       SIZE  AUTO      CPUS        IDLE             POLICY  CLIENTS\x1b[0m\r\n";
    for (const auto& p : ps.pools()) {
      const std::string autosize =
          p.autosize().enabled()
              ? std::to_string(p.autosize().min()) + ".." + std::to_string(p.autosize().max())
              : "-";
      std::snprintf(line, sizeof(line), "%-10s %4u  %-8s  %-10s  %-15s  %-6s  %7u\r\n",
                    p.name().c_str(), p.size(), autosize.c_str(), p.cpus().c_str(),
                    idle_text(p.idle()).c_str(), policy_text(p.attributes().policy()).c_str(),
                    p.clients());
      out += line;
    }
    out +=
        "\r\n\x1b[7mWORKER POOL       TID      CPUS     LAST POLICY PRIO NICE STATE    QUEUE     "
        "RATE/s     STEALS\x1b[0m\r\n";
    for (const auto& w : ws.workers()) {
      const std::uint64_t done = w.counters().completed() + w.counters().failed();
      const auto prev = last_completed.find(w.id());
      const double rate =
          prev == last_completed.end() ? 0.0 : static_cast<double>(done - prev->second) / dt;
      last_completed[w.id()] = done;
      std::snprintf(line, sizeof(line),
                    "io-w%-2u %-10s %-8d %-8s %4d %-6s %4d %4d %-8s %5u %10.0f %10llu\r\n", w.id(),
                    w.pool().c_str(), w.tid(), w.cpus().c_str(), w.last_cpu(),
                    policy_text(w.policy()).c_str(), w.priority(), w.nice(),
                    state_text(w.state()).c_str(), w.queue_depth(), rate,
                    static_cast<unsigned long long>(w.counters().steals()));
      out += line;
    }
    std::fwrite(out.data(), 1, out.size(), stdout);
    std::fflush(stdout);
    // Wait for the next refresh, or a key.
    const auto until = now + std::chrono::milliseconds(interval_ms);
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          until - std::chrono::steady_clock::now());
      if (left.count() <= 0) break;
      pollfd p{0, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      char c = 0;
      const ssize_t n = ::read(0, &c, 1);
      if (n == 0) {  // stdin closed: no more keys will come; keep refreshing until the deadline
        std::this_thread::sleep_for(left);
        break;
      }
      if (n == 1 && (c == 'q' || c == 'Q')) return grpc::Status::OK;
    }
  }
  return grpc::Status::OK;
}

// ---- plugins and functions ----------------------------------------------------------

int list_plugins(Ctl& ctl, bool json) {
  v1::ListPluginsResponse r;
  if (auto st = ctl.stub().ListPlugins(ctl.context().get(), {}, &r); !st.ok()) return ctl.error(st);
  if (json) return print_json(r), kOk;
  std::printf("%-16s %-10s %4s %-5s %-9s %s\n", "PLUGIN", "VERSION", "SLOT", "SDK", "STATE",
              "FUNCTIONS / PATH");
  for (const auto& p : r.plugins()) {
    std::string fns;
    for (const auto& f : p.functions()) fns += (fns.empty() ? "" : " ") + f;
    std::printf("%-16s %-10s %4u %-5s %-9s %s\n%38s%s\n", p.name().c_str(), p.version().c_str(),
                p.slot(), p.sdk_version().c_str(), p.draining() ? "draining" : "loaded",
                fns.c_str(), "", p.path().c_str());
  }
  return kOk;
}

int list_functions(Ctl& ctl, bool json) {
  v1::ListFunctionsResponse r;
  if (auto st = ctl.stub().ListFunctions(ctl.context().get(), {}, &r); !st.ok())
    return ctl.error(st);
  if (json) return print_json(r), kOk;
  std::printf("%-5s %-28s %-12s %-12s %s\n", "ID", "FUNCTION", "PLUGIN", "FLAGS", "HELP");
  for (const auto& f : r.functions()) {
    std::string flags;
    if (f.flags() & 1u) flags += "buffer";
    if (f.flags() & 2u) flags += flags.empty() ? "output" : ",output";
    std::printf("%-5u %-28s %-12s %-12s %s\n", f.id(), f.name().c_str(),
                f.plugin().empty() ? "(built-in)" : f.plugin().c_str(),
                flags.empty() ? "-" : flags.c_str(), f.help().c_str());
  }
  return kOk;
}

// The daemon resolves nothing relative to the caller's directory: send an absolute path.
std::string absolute_path(const std::string& p) {
  if (p.empty() || p.front() == '/') return p;
  std::error_code ec;
  auto a = std::filesystem::absolute(p, ec);
  return ec ? p : a.lexically_normal().string();
}

int plugin_command(Ctl& ctl, bool json, const std::string& verb, const std::string& arg,
                   const std::string& path) {
  auto& stub = ctl.stub();
  // Unload and reload wait up to about a second for the old code to drain.
  if (verb == "load") {
    v1::LoadPluginRequest q;
    q.set_path(absolute_path(arg));
    v1::LoadPluginResponse r;
    if (auto st = stub.LoadPlugin(ctl.context(15000).get(), q, &r); !st.ok()) return ctl.error(st);
    if (json) return print_json(r), kOk;
    std::printf("loaded plugin '%s' %s (slot %u): %d function(s)\n", r.plugin().name().c_str(),
                r.plugin().version().c_str(), r.plugin().slot(), r.plugin().functions_size());
    return kOk;
  }
  if (verb == "unload") {
    v1::UnloadPluginRequest q;
    q.set_name(arg);
    v1::UnloadPluginResponse r;
    if (auto st = stub.UnloadPlugin(ctl.context(15000).get(), q, &r); !st.ok())
      return ctl.error(st);
    if (json) return print_json(r), kOk;
    std::printf(r.unloaded() ? "unloaded plugin '%s'\n"
                             : "plugin '%s': functions withdrawn; its library is unloaded once "
                               "its running continuations finish (see insideoutctl plugins)\n",
                arg.c_str());
    return kOk;
  }
  v1::ReloadPluginRequest q;
  q.set_name(arg);
  q.set_path(absolute_path(path));
  v1::ReloadPluginResponse r;
  if (auto st = stub.ReloadPlugin(ctl.context(15000).get(), q, &r); !st.ok()) return ctl.error(st);
  if (json) return print_json(r), kOk;
  std::printf("reloaded plugin '%s' %s (slot %u)%s\n", r.plugin().name().c_str(),
              r.plugin().version().c_str(), r.plugin().slot(),
              r.old_unloaded() ? "; the old code is unloaded"
                               : "; the old code still finishes running continuations");
  return kOk;
}

int run_top(Ctl& ctl, unsigned interval_ms, unsigned iterations) {
  const grpc::Status st = top_loop(ctl, interval_ms, iterations);
  return st.ok() ? kOk : ctl.error(st);
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{
      "insideoutctl: inspect and retune insideoutd over its control plane (control.sock).\n"
      "Exit codes: 0 done, 1 the daemon refused, 2 bad usage, 3 daemon unreachable.",
      "insideoutctl"};
  app.require_subcommand(1);
  app.add_option("--socket", o.socket,
                 "Control socket (default: $INSIDEOUT_RUNTIME_DIR/control.sock)");
  app.add_option("--runtime-dir", o.runtime_dir,
                 "Runtime directory (default: $INSIDEOUT_RUNTIME_DIR, else /run/insideout "
                 "as root, else $XDG_RUNTIME_DIR/insideout)");
  app.add_option("--timeout-ms", o.timeout_ms, "Deadline of each call");
  app.add_flag("--wait{5}", o.wait_s,
               "Wait up to SECONDS (--wait alone: 5) for a daemon that is starting: its "
               "control socket missing or refusing; then fail as usual (exit 3)");
  auto json_flag = [&](CLI::App* s) {
    s->add_flag("--json", o.json, "Print JSON (one object, proto field names)");
  };

  auto* status = app.add_subcommand("status", "Version, uptime, CPUs, workers and clients");
  json_flag(status);
  auto* pools = app.add_subcommand("pools", "List the worker pools");
  json_flag(pools);
  std::string pool_filter;
  auto* workers = app.add_subcommand(
      "workers", "List the workers: tid, CPUs, policy, priority, nice, state, counters");
  json_flag(workers);
  workers->add_option("--pool", pool_filter, "Only this pool");

  std::string target, cpus;
  auto* pin = app.add_subcommand(
      "pin", "Pin a worker (a number) or every worker of a pool (a name) to CPUs");
  pin->add_option("target", target, "WORKER or POOL")->required();
  pin->add_option("cpus", cpus, "CPU list, e.g. 0-3,8")->required();

  std::string policy;
  std::optional<int> priority, nice;
  auto* attr =
      app.add_subcommand("attr", "Set a worker's or a pool's scheduling policy, priority and nice");
  attr->add_option("target", target, "WORKER or POOL")->required();
  attr->add_option("--policy", policy, "other, batch, idle, fifo or rr");
  attr->add_option("--priority", priority, "Realtime priority (fifo, rr: 1..99)");
  attr->add_option("--nice", nice, "Nice value, -20..19");

  auto* pool = app.add_subcommand("pool", "Create, resize, autosize or delete a named pool");
  pool->require_subcommand(1);
  std::string pool_name, pool_idle;
  unsigned pool_size = 0;
  auto* pcreate = pool->add_subcommand("create", "Create a pool");
  pcreate->add_option("name", pool_name)->required();
  pcreate->add_option("--cpus", cpus, "CPU list (default: every CPU the daemon may use)");
  pcreate->add_option("--size", pool_size, "Workers")->required();
  pcreate->add_option("--policy", policy, "other, batch, idle, fifo or rr");
  pcreate->add_option("--priority", priority, "Realtime priority");
  pcreate->add_option("--nice", nice, "Nice value");
  pcreate->add_option("--idle", pool_idle, "block, spin-then-block or poll");
  std::string create_autosize;
  pcreate->add_option("--autosize", create_autosize,
                      "MIN..MAX: the pool sizes itself within these bounds (--size is where it "
                      "starts)");
  auto* presize = pool->add_subcommand(
      "resize",
      "Change a pool's number of workers (refused for a pool that sizes itself: turn autosize "
      "off first, or change its bounds)");
  presize->add_option("name", pool_name)->required();
  presize->add_option("size", pool_size)->required();
  unsigned auto_min = 0, auto_max = 0, auto_grow_us = 0, auto_shrink_ms = 0, auto_delay_us = 0,
           auto_interval_us = 0;
  bool auto_off = false;
  auto* pautosize = pool->add_subcommand(
      "autosize",
      "Let a pool size itself within MIN..MAX: it doubles after every worker has been busy "
      "with work waiting (two tasks per worker, or longer than the target delay) for "
      "--grow-after-us, and gives back half of its idle workers after --shrink-after-ms of "
      "idleness; --off keeps the current size");
  pautosize->add_option("name", pool_name, "The pool (default for the default pool)")->required();
  auto* amin = pautosize->add_option("--min", auto_min, "The fewest workers (at least 1)");
  auto* amax = pautosize->add_option("--max", auto_max, "The most workers (at most its CPUs)");
  pautosize->add_option("--grow-after-us", auto_grow_us, "Congestion this long grows (1000)");
  pautosize->add_option("--shrink-after-ms", auto_shrink_ms, "Idleness this long shrinks (20)");
  pautosize->add_option("--target-delay-us", auto_delay_us,
                        "Queueing delay that counts as congestion (200)");
  pautosize->add_option("--interval-us", auto_interval_us,
                        "Sampling period while the pool is awake (250)");
  auto* aoff = pautosize->add_flag("--off", auto_off, "Stop sizing itself; keep the current size");
  aoff->excludes(amin)->excludes(amax);
  auto* pdelete = pool->add_subcommand("delete", "Delete a pool");
  pdelete->add_option("name", pool_name)->required();

  auto* clients =
      app.add_subcommand("clients", "List registered clients: pid, uid, pool, in flight, counters");
  json_flag(clients);
  int evict_pid = 0;
  auto* evict = app.add_subcommand("evict", "Disconnect every client of a process");
  evict->add_option("pid", evict_pid)->required();
  std::uint32_t cancel_client = 0;
  std::int64_t cancel_frame = -1;
  auto* cancel = app.add_subcommand(
      "cancel",
      "Cancel a client's continuations in flight (queued or parked at once, running after "
      "their step): all, or one by its frame offset");
  cancel->add_option("client", cancel_client, "The client's id (insideoutctl clients)")->required();
  cancel->add_option("--frame", cancel_frame,
                     "The frame's offset in the client's segment (Client::offset_of)");

  bool watch = false, prometheus = false, rpc = false;
  unsigned interval_ms = 1000, count = 0;
  auto* stats = app.add_subcommand(
      "stats", "Counters, read from the counters area ($INSIDEOUT_RUNTIME_DIR/stats)");
  json_flag(stats);
  stats->add_flag("--watch", watch, "Print again every interval (WatchStats with --rpc)");
  stats->add_flag("--prometheus", prometheus, "Prometheus text format");
  stats->add_flag("--rpc", rpc, "Ask the daemon (GetStats) instead of reading the counters area");
  stats->add_option("--interval-ms", interval_ms, "With --watch");
  stats->add_option("--count", count, "With --watch: stop after this many (0: until interrupted)");

  std::string function, env;
  std::uint64_t arg = 0;
  auto* submit =
      app.add_subcommand("submit", "Run a continuation through the control plane (the slow path)");
  json_flag(submit);
  submit->add_option("function", function)->required();
  submit->add_option("env", env, "Environment bytes");
  submit->add_option("--arg", arg, "Scalar argument");

  unsigned drain_ms = 0;
  auto* drain = app.add_subcommand(
      "drain",
      "Stop taking work from clients (new work is refused with 'draining') and wait for what "
      "is in flight; undone by resume");
  drain->add_option("--timeout-ms", drain_ms,
                    "At most this long (default: the daemon's drain timeout)");
  auto* resume =
      app.add_subcommand("resume", "Take work from clients again after a drain (admin only)");
  auto* shutdown = app.add_subcommand("shutdown", "Drain and stop the daemon");
  auto* reload = app.add_subcommand(
      "reload",
      "Re-read the daemon's configuration file and apply what changes live, as SIGHUP does "
      "(admin only); prints the changed keys that need a restart");
  auto* config = app.add_subcommand(
      "config", "Print the daemon's effective configuration, as a TOML file it would read");

  auto* plugins = app.add_subcommand("plugins", "List loaded plugins (and those still draining)");
  json_flag(plugins);
  auto* functions =
      app.add_subcommand("functions", "List every function: id, plugin, flags and help");
  json_flag(functions);
  std::string plugin_arg, plugin_path;
  auto* plugin = app.add_subcommand("plugin", "Load, unload or reload a plugin (admin only)");
  plugin->require_subcommand(1);
  auto* pl_load = plugin->add_subcommand("load", "Load a plugin library");
  pl_load->add_option("path", plugin_arg, "The library (.so)")->required();
  json_flag(pl_load);
  auto* pl_unload = plugin->add_subcommand(
      "unload", "Withdraw a plugin's functions; its library goes once nothing of it runs");
  pl_unload->add_option("name", plugin_arg, "The plugin's name")->required();
  json_flag(pl_unload);
  auto* pl_reload = plugin->add_subcommand("reload",
                                           "Replace a plugin's code: new continuations run the new "
                                           "library, running ones finish on the old");
  pl_reload->add_option("name", plugin_arg, "The plugin's name")->required();
  pl_reload->add_option("path", plugin_path,
                        "The new library (default: the path it was loaded from)");
  json_flag(pl_reload);

  unsigned top_iterations = 0;
  auto* top = app.add_subcommand(
      "top", "A live view of pools and workers, refreshed every second; q quits");
  top->add_option("--interval-ms", interval_ms, "Refresh interval");
  top->add_option("--iterations", top_iterations, "Stop after this many refreshes (0: until q)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::string msg = unknown_command(app, argc, argv);
    if (msg.empty()) msg = e.what();
    return fail(kUsage, msg + " (see --help)");
  }

  Ctl ctl(o);
  auto& stub = ctl.stub();

  if (*status) {
    v1::GetInfoResponse r;
    if (auto st = stub.GetInfo(ctl.context().get(), {}, &r); !st.ok()) return ctl.error(st);
    if (o.json) return print_json(r), kOk;
    std::printf(
        "insideoutd %s (layout %u, protocol %u), pid %u, up %.1f s\nruntime dir %s\nCPUs online "
        "%u, allowed "
        "%s\nworkers %u, clients %u\nstate %s\n",
        r.version().c_str(), r.layout_version(), r.protocol_version(), r.pid(), r.uptime_seconds(),
        r.runtime_dir().c_str(), r.cpus_online(), r.cpus_allowed().c_str(), r.workers(),
        r.clients(), state_text(r.state()).c_str());
    return kOk;
  }
  if (*pools) {
    v1::ListPoolsResponse r;
    if (auto st = stub.ListPools(ctl.context().get(), {}, &r); !st.ok()) return ctl.error(st);
    if (o.json) return print_json(r), kOk;
    std::printf("%-12s %5s %-10s %-12s %-16s %-6s %4s %4s %7s\n", "POOL", "SIZE", "AUTO", "CPUS",
                "IDLE", "POLICY", "PRIO", "NICE", "CLIENTS");
    for (const auto& p : r.pools()) {
      const std::string autosize =
          p.autosize().enabled()
              ? std::to_string(p.autosize().min()) + ".." + std::to_string(p.autosize().max())
              : "-";
      std::printf("%-12s %5u %-10s %-12s %-16s %-6s %4d %4d %7u\n", p.name().c_str(), p.size(),
                  autosize.c_str(), p.cpus().c_str(), idle_text(p.idle()).c_str(),
                  policy_text(p.attributes().policy()).c_str(), p.attributes().priority(),
                  p.attributes().nice(), p.clients());
    }
    return kOk;
  }
  if (*workers) {
    v1::ListWorkersRequest q;
    q.set_pool(pool_filter);
    v1::ListWorkersResponse r;
    if (auto st = stub.ListWorkers(ctl.context().get(), q, &r); !st.ok()) return ctl.error(st);
    if (o.json) return print_json(r), kOk;
    print_workers(r.workers());
    return kOk;
  }
  if (*pin) {
    v1::SetAffinityRequest q;
    *q.mutable_target() = parse_target(target);
    q.set_cpus(cpus);
    v1::SetAffinityResponse r;
    if (auto st = stub.SetAffinity(ctl.context().get(), q, &r); !st.ok()) return ctl.error(st);
    print_workers(r.workers());
    return kOk;
  }
  if (*attr) {
    v1::SetThreadAttributesRequest q;
    *q.mutable_target() = parse_target(target);
    if (!policy.empty()) {
      auto p = parse_policy(policy);
      if (!p)
        return fail(kUsage,
                    "--policy: '" + policy + "' is not one of other, batch, idle, fifo, rr");
      q.mutable_attributes()->set_policy(*p);
    }
    if (priority) q.mutable_attributes()->set_priority(*priority);
    if (nice) q.mutable_attributes()->set_nice(*nice);
    if (policy.empty() && !priority && !nice)
      return fail(kUsage, "attr: give --policy, --priority or --nice");
    v1::SetThreadAttributesResponse r;
    if (auto st = stub.SetThreadAttributes(ctl.context().get(), q, &r); !st.ok())
      return ctl.error(st);
    print_workers(r.workers());
    return kOk;
  }
  if (*pool) {
    grpc::Status st;
    if (*pcreate) {
      v1::CreatePoolRequest q;
      auto* p = q.mutable_pool();
      p->set_name(pool_name);
      p->set_cpus(cpus);
      p->set_size(pool_size);
      if (!policy.empty()) {
        auto pp = parse_policy(policy);
        if (!pp)
          return fail(kUsage,
                      "--policy: '" + policy + "' is not one of other, batch, idle, fifo, rr");
        p->mutable_attributes()->set_policy(*pp);
      }
      if (priority) p->mutable_attributes()->set_priority(*priority);
      if (nice) p->mutable_attributes()->set_nice(*nice);
      if (!pool_idle.empty() && pool_idle != "block" && pool_idle != "spin-then-block" &&
          pool_idle != "poll") {
        return fail(kUsage,
                    "--idle: '" + pool_idle + "' is not one of block, spin-then-block, poll");
      }
      if (pool_idle == "block") p->set_idle(v1::IDLE_STRATEGY_BLOCK);
      if (pool_idle == "spin-then-block") p->set_idle(v1::IDLE_STRATEGY_SPIN_THEN_BLOCK);
      if (pool_idle == "poll") p->set_idle(v1::IDLE_STRATEGY_POLL);
      if (!create_autosize.empty()) {
        unsigned lo = 0, hi = 0;
        char tail = 0;
        if (std::sscanf(create_autosize.c_str(), "%u..%u%c", &lo, &hi, &tail) != 2)
          return fail(kUsage, "--autosize: '" + create_autosize + "' is not MIN..MAX, e.g. 1..4");
        p->mutable_autosize()->set_enabled(true);
        p->mutable_autosize()->set_min(lo);
        p->mutable_autosize()->set_max(hi);
      }
      v1::CreatePoolResponse r;
      st = stub.CreatePool(ctl.context().get(), q, &r);
    } else if (*pautosize) {
      if (!auto_off && (amin->count() == 0 || amax->count() == 0))
        return fail(kUsage, "pool autosize: give --min and --max, or --off");
      v1::SetPoolAutosizeRequest q;
      q.set_name(pool_name);
      if (!auto_off) {
        auto* a = q.mutable_autosize();
        a->set_enabled(true);
        a->set_min(auto_min);
        a->set_max(auto_max);
        a->set_grow_after_us(auto_grow_us);
        a->set_shrink_after_ms(auto_shrink_ms);
        a->set_target_delay_us(auto_delay_us);
        a->set_interval_us(auto_interval_us);
      }
      v1::SetPoolAutosizeResponse r;
      st = stub.SetPoolAutosize(ctl.context().get(), q, &r);
    } else if (*presize) {
      v1::ResizePoolRequest q;
      q.set_name(pool_name);
      q.set_size(pool_size);
      v1::ResizePoolResponse r;
      st = stub.ResizePool(ctl.context().get(), q, &r);
    } else {
      v1::DeletePoolRequest q;
      q.set_name(pool_name);
      v1::DeletePoolResponse r;
      st = stub.DeletePool(ctl.context().get(), q, &r);
    }
    return st.ok() ? kOk : ctl.error(st);
  }
  if (*clients) {
    v1::ListClientsResponse r;
    if (auto st = stub.ListClients(ctl.context().get(), {}, &r); !st.ok()) return ctl.error(st);
    if (o.json) return print_json(r), kOk;
    std::printf("%-5s %-8s %-6s %-10s %-16s %9s %12s %12s %8s\n", "ID", "PID", "UID", "POOL",
                "NAME", "INFLIGHT", "ACCEPTED", "COMPLETED", "FAILED");
    for (const auto& c : r.clients()) {
      std::printf("%-5u %-8d %-6u %-10s %-16s %9llu %12llu %12llu %8llu\n", c.id(), c.pid(),
                  c.uid(), c.pool().c_str(), c.name().c_str(),
                  static_cast<unsigned long long>(c.in_flight()),
                  static_cast<unsigned long long>(c.counters().accepted()),
                  static_cast<unsigned long long>(c.counters().completed()),
                  static_cast<unsigned long long>(c.counters().failed()));
    }
    return kOk;
  }
  if (*evict) {
    v1::EvictClientRequest q;
    q.set_pid(evict_pid);
    v1::EvictClientResponse r;
    if (auto st = stub.EvictClient(ctl.context().get(), q, &r); !st.ok()) return ctl.error(st);
    std::printf("evicted %u client(s) of pid %d\n", r.evicted(), evict_pid);
    return kOk;
  }
  if (*cancel) {
    v1::CancelRequest q;
    q.set_client_id(cancel_client);
    if (cancel_frame >= 0) q.set_frame_offset(static_cast<std::uint32_t>(cancel_frame));
    v1::CancelResponse r;
    if (auto st = stub.Cancel(ctl.context().get(), q, &r); !st.ok()) return ctl.error(st);
    std::printf("cancelled %u continuation(s) of client %u\n", r.cancelled(), cancel_client);
    return kOk;
  }
  if (*stats) {
    auto show = [&](const v1::Stats& s, const insideout::shm::StatsArea* a,
                    const Liveness* live = nullptr) {
      if (prometheus) {
        print_prometheus(s, a, live);
      } else if (o.json) {
        print_json(s);
      } else {
        print_stats_text(s);
      }
      std::fflush(stdout);
    };
    if (rpc && watch) {
      v1::WatchStatsRequest q;
      q.set_interval_ms(interval_ms);
      grpc::ClientContext c;
      auto reader = stub.WatchStats(&c, q);
      v1::Stats s;
      unsigned n = 0;
      while (reader->Read(&s)) {
        show(s, nullptr);
        if (count != 0 && ++n >= count) {
          c.TryCancel();
          break;
        }
      }
      auto st = reader->Finish();
      return st.ok() || st.error_code() == grpc::StatusCode::CANCELLED ? kOk : ctl.error(st);
    }
    std::optional<StatsMap> area;
    if (!rpc) {
      std::string err;
      area = StatsMap::open(ctl.stats_path(), &err);
      if (!area && ::access(ctl.socket_path().c_str(), F_OK) != 0) {
        return fail(kUnreachable, "cannot read the counters area: " + err);
      }
    }
    for (unsigned n = 0;; ++n) {
      if (area) {
        const Liveness live = liveness(area->area());
        if (!live.up) {
          // Prometheus still gets figures to scrape, saying the daemon is down and how old
          // they are; everyone gets exit code 3 and one line saying why.
          if (prometheus) show(stats_from_area(area->area()), &area->area(), &live);
          return fail(kUnreachable, live.why + " (" + ctl.stats_path() + ")");
        }
        show(stats_from_area(area->area()), &area->area(), &live);
      } else {
        v1::Stats s;
        if (auto st = stub.GetStats(ctl.context().get(), {}, &s); !st.ok()) return ctl.error(st);
        show(s, nullptr);
      }
      if (!watch || (count != 0 && n + 1 >= count)) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(interval_ms));
    }
    return kOk;
  }
  if (*submit) {
    v1::SubmitRequest q;
    q.set_function(function);
    q.set_env(env);
    q.set_arg(arg);
    v1::SubmitResponse r;
    if (auto st = stub.Submit(ctl.context(15000).get(), q, &r); !st.ok()) return ctl.error(st);
    if (o.json) return print_json(r), kOk;
    if (r.status() != 1) return fail(kDaemonError, r.status_name() + ": " + r.error());
    std::printf("%s value %llu%s%s\n", r.status_name().c_str(),
                static_cast<unsigned long long>(r.value()), r.data().empty() ? "" : " data ",
                r.data().c_str());
    return kOk;
  }
  if (*drain) {
    v1::DrainRequest q;
    q.set_timeout_ms(drain_ms);
    v1::DrainResponse r;
    if (auto st = stub.Drain(ctl.context(70000).get(), q, &r); !st.ok()) return ctl.error(st);
    if (!r.drained()) return fail(kDaemonError, "drain timed out with work in flight");
    std::printf("drained\n");
    return kOk;
  }
  if (*resume) {
    v1::ResumeResponse r;
    if (auto st = stub.Resume(ctl.context().get(), {}, &r); !st.ok()) return ctl.error(st);
    std::printf(r.was_draining() ? "resumed\n" : "serving (it was not drained)\n");
    return kOk;
  }
  if (*shutdown) {
    v1::ShutdownResponse r;
    if (auto st = stub.Shutdown(ctl.context().get(), {}, &r); !st.ok()) return ctl.error(st);
    std::printf("shutting down\n");
    return kOk;
  }
  if (*reload) {
    v1::ReloadResponse r;
    if (auto st = stub.Reload(ctl.context(70000).get(), {}, &r); !st.ok()) return ctl.error(st);
    std::printf("reloaded\n");
    for (const auto& k : r.needs_restart()) std::printf("needs a restart: %s\n", k.c_str());
    return kOk;
  }
  if (*config) {
    v1::GetConfigResponse r;
    if (auto st = stub.GetConfig(ctl.context().get(), {}, &r); !st.ok()) return ctl.error(st);
    if (!r.path().empty())
      std::printf("# from %s, with the command line's flags and the control plane's live changes\n",
                  r.path().c_str());
    std::fputs(r.toml().c_str(), stdout);
    return kOk;
  }
  if (*top) return run_top(ctl, interval_ms, top_iterations);
  if (*plugins) return list_plugins(ctl, o.json);
  if (*functions) return list_functions(ctl, o.json);
  if (*plugin) {
    const std::string verb = *pl_load ? "load" : *pl_unload ? "unload" : "reload";
    return plugin_command(ctl, o.json, verb, plugin_arg, plugin_path);
  }
  return fail(kUsage, "no command (see --help)");
}
