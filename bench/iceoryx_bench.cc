// iceoryx: Eclipse iceoryx 2.0 (Debian's) typed publish/subscribe, zero-copy: a sample is
// loaned from RouDi's shared memory, written in place and published.
//
// This program starts its own RouDi (iox-roudi with a small temporary config, monitoring
// off) and stops it at exit. There is one RouDi per machine: where iox-roudi is missing
// or another RouDi is running (which we do not borrow), it says so and exits 77 (skipped).
// An iceoryx runtime cannot be forked, so both peers are forked children: the timed one
// (consumer or client) on cpu_for(0), the other (producer or echo server) on cpu_for(1).
// The timed child hands its figures back through shared memory; the parent prints them.
//
//   iceoryx_poll     subscribers poll take(): throughput_batch1, rtt_busy
//   iceoryx_waitset  subscribers sleep in a WaitSet: throughput_batch1, rtt_sleep
// iceoryx publishes one sample at a time, so batch1 only. Publishers wait while the
// subscriber's queue is full (WAIT_FOR_CONSUMER, BLOCK_PRODUCER): nothing is dropped.
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <fstream>

#include "channel_bench.h"
#include "iceoryx_hoofs/log/logmanager.hpp"
#include "iceoryx_posh/popo/publisher.hpp"
#include "iceoryx_posh/popo/subscriber.hpp"
#include "iceoryx_posh/popo/wait_set.hpp"
#include "iceoryx_posh/runtime/posh_runtime.hpp"

#ifndef BENCH_IOX_ROUDI
#define BENCH_IOX_ROUDI "iox-roudi"
#endif

namespace insideout::bench {
namespace {

inline constexpr int kSkipped = 77;
inline constexpr const char* kRoudiSocket = "/tmp/roudi";  // iceoryx 2.0's fixed name
inline constexpr std::size_t kMaxSamples = 200'000;

// What the timed child reports, in a mapping shared with the parent, which reads it after
// both children exited.
//
// Memory ordering: E1 (timed child: done store, release) pairs with E2 (other child: done
// load, acquire): the other child leaves only after the timed one has taken everything.
struct Report {
  StartGate gate;
  std::atomic<std::uint32_t> done{0};  // the timed child finished: the other may leave
  std::uint64_t elapsed_ns = 0;
  std::uint64_t count = 0;
  std::uint64_t samples[kMaxSamples];
};

// ---- RouDi ----

bool socket_answers(const char* path) {
  const int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path);
  const bool ok = fd >= 0 && connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  if (fd >= 0) close(fd);
  return ok;
}

class Roudi {
 public:
  // 0 when RouDi runs, kSkipped when it cannot be ours, 1 on error.
  int start(const Options& o) {
    if (socket_answers(kRoudiSocket)) {
      std::fprintf(stderr, "%s: skipped: another RouDi is running (%s)\n", o.program.c_str(),
                   kRoudiSocket);
      return kSkipped;
    }
    // RouDi removes these on a clean SIGTERM, but Debian's 2.0.3 aborts instead where a
    // registered process died without leaving (our peers, after a signal): then we do.
    // Nobody else uses them: no other RouDi answered.
    for (const char* f :
         {"/tmp/roudi", "/tmp/roudi.lock", "/tmp/iox-unique-roudi.lock", "/dev/shm/iceoryx_mgmt"}) {
      remove_at_exit(f);
    }
    if (const passwd* pw = getpwuid(geteuid())) {
      remove_at_exit(std::string("/dev/shm/") + pw->pw_name);  // the payload segment
    }
    const std::string base = "/tmp/insideout-bench-roudi-" + std::to_string(getpid());
    config_ = base + ".toml";
    log_ = base + ".log";
    remove_at_exit(config_);
    remove_at_exit(log_);
    // Two small mempools: a 64-byte message and its chunk header fit in 128 bytes.
    std::ofstream(config_) << "[general]\nversion = 1\n\n[[segment]]\n\n"
                              "[[segment.mempool]]\nsize = 128\ncount = 4096\n\n"
                              "[[segment.mempool]]\nsize = 1024\ncount = 64\n";
    pid_ = spawn(-1, [&]() -> int {
      // Our stdout is for rows only; RouDi's chatter goes to a log shown if it fails.
      const int log = open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
      if (log >= 0) {
        dup2(log, STDOUT_FILENO);
        dup2(log, STDERR_FILENO);
      }
      // -k 1: at SIGTERM, wait at most 1 s for registered processes that did not leave.
      execlp(BENCH_IOX_ROUDI, BENCH_IOX_ROUDI, "-c", config_.c_str(), "-m", "off", "-l", "error",
             "-k", "1", static_cast<char*>(nullptr));
      std::fprintf(stderr, "cannot run %s: %s\n", BENCH_IOX_ROUDI, std::strerror(errno));
      return kSkipped;
    });
    if (pid_ < 0) return 1;
    for (int ms = 0; ms < 10'000; ms += 5) {
      int status;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        std::fprintf(stderr, "%s: skipped: RouDi exited at start (another one running?):\n%s",
                     o.program.c_str(), read_log().c_str());
        return kSkipped;
      }
      if (socket_answers(kRoudiSocket)) return 0;
      detail::sleep_ms(5);
    }
    fail(o, ("RouDi did not come up in 10 s:\n" + read_log()).c_str());
    return 1;
  }

  ~Roudi() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);  // RouDi removes its shared memory and sockets on SIGTERM
      reap(pid_, std::chrono::seconds(5));
    }
  }

 private:
  std::string read_log() const {
    std::ifstream in(log_);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

  std::string config_;
  std::string log_;
  pid_t pid_ = -1;
};

// ---- the peers, in the children ----

using Publisher = iox::popo::Publisher<Msg>;
using Subscriber = iox::popo::Subscriber<Msg>;

void init_runtime(const std::string& role) {
  // Our stdout is for rows only; iceoryx's log goes to stderr as well, warnings and up.
  dup2(STDERR_FILENO, STDOUT_FILENO);
  iox::log::LogManager::GetLogManager().SetDefaultLogLevel(iox::log::LogLevel::kWarn,
                                                           iox::log::LogLevelOutput::kHideLogLevel);
  const std::string name = "insideout-bench-" + role + "-" + std::to_string(getpid());
  // The runtime's socket and lock file: its destructor removes them on exit(), we do on a
  // signal (from the parent's cleanup or the watchdog).
  remove_at_exit("/tmp/" + name);
  remove_at_exit("/tmp/" + name + ".lock");
  iox::runtime::PoshRuntime::initRuntime(
      iox::RuntimeName_t(iox::cxx::TruncateToCapacity, name.c_str()));
}

iox::capro::ServiceDescription topic(const std::string& instance, const char* event) {
  return {"InsideoutBench", iox::capro::IdString_t(iox::cxx::TruncateToCapacity, instance.c_str()),
          iox::capro::IdString_t(iox::cxx::TruncateToCapacity, event)};
}

iox::popo::PublisherOptions publisher_options() {
  iox::popo::PublisherOptions o;
  o.historyCapacity = 0;
  o.subscriberTooSlowPolicy = iox::popo::ConsumerTooSlowPolicy::WAIT_FOR_CONSUMER;
  return o;
}

iox::popo::SubscriberOptions subscriber_options() {
  iox::popo::SubscriberOptions o;
  o.queueCapacity = 256;
  o.queueFullPolicy = iox::popo::QueueFullPolicy::BLOCK_PRODUCER;
  return o;
}

// Polls up to 10 s for a condition of discovery.
template <class Pred>
bool await(Pred&& pred) {
  for (int ms = 0; ms < 10'000; ++ms) {
    if (pred()) return true;
    detail::sleep_ms(1);
  }
  return false;
}

bool await_subscribed(Subscriber& s) {
  return await([&] { return s.getSubscriptionState() == iox::SubscribeState::SUBSCRIBED; });
}

class Receiver {
 public:
  Receiver(const iox::capro::ServiceDescription& d, bool waitset) : sub_(d, subscriber_options()) {
    if (waitset) {
      ws_.emplace();
      ws_->attachState(sub_, iox::popo::SubscriberState::HAS_DATA).or_else([](auto) {
        std::fprintf(stderr, "bench_iceoryx: error: cannot attach to the WaitSet\n");
        std::exit(1);
      });
    }
  }
  ~Receiver() {
    if (ws_) ws_->detachState(sub_, iox::popo::SubscriberState::HAS_DATA);
  }
  Subscriber& subscriber() { return sub_; }

  // One sample, polling take() or sleeping in the WaitSet; false on error.
  bool take(Msg* out) {
    for (;;) {
      auto r = sub_.take();
      if (!r.has_error()) {
        *out = *r.value();
        return true;  // the sample goes back to RouDi's pool here
      }
      if (r.get_error() != iox::popo::ChunkReceiveResult::NO_CHUNK_AVAILABLE) return false;
      if (ws_) {
        ws_->wait();
      } else {
        cpu_relax();
      }
    }
  }

 private:
  Subscriber sub_;
  std::optional<iox::popo::WaitSet<>> ws_;
};

bool publish(Publisher& p, const Msg& m) {
  auto sample = p.loan();
  if (sample.has_error()) return false;
  *sample.value() = m;
  sample.value().publish();
  return true;
}

// ---- measurements, in the parent ----

// Forks the two peers of one measurement and waits for both.
template <class Timed, class Other>
bool run_pair(Timed&& timed, Other&& other) {
  const pid_t o = spawn(cpu_for(1), other, /*run_exit_handlers=*/true);
  const pid_t t = spawn(cpu_for(0), timed, /*run_exit_handlers=*/true);
  const bool t_ok = reap(t);
  const bool o_ok = reap(o, t_ok ? std::chrono::seconds(10) : std::chrono::seconds(1));
  return t_ok && o_ok;
}

int instance = 0;

bool throughput(const Options& o, const char* system, bool waitset) {
  const std::string id = std::to_string(getpid()) + "-" + std::to_string(instance++);
  const std::uint64_t total = o.pick(1'000'000, 200'000, 2'000);
  Shared<Report> r;
  const bool ok = run_pair(
      [&]() -> int {
        init_runtime("consumer");
        Receiver rx(topic(id, "data"), waitset);
        if (!await_subscribed(rx.subscriber())) return 1;
        r->gate.wait_and_open();
        const std::uint64_t t0 = now_ns();
        Msg m;
        std::uint64_t n = 0;
        while (n < total && rx.take(&m) && m.seq == n) ++n;
        r->elapsed_ns = now_ns() - t0;
        r->count = n;
        r->done.store(1, std::memory_order_release);  // E1: pairs with E2
        return n == total ? 0 : 1;
      },
      [&]() -> int {
        init_runtime("producer");
        Publisher pub(topic(id, "data"), publisher_options());
        if (!await([&] { return pub.hasSubscribers(); })) return 1;
        r->gate.arrive_and_wait();
        for (std::uint64_t i = 0; i < total; ++i) {
          if (!publish(pub, make_msg(i))) return 1;
        }
        // Stay until the consumer has taken everything: leaving may tear down the port.
        spin_until([&] { return r->done.load(std::memory_order_acquire) != 0; });  // E2
        return 0;
      });
  if (!ok) {
    fail(o, (std::string(system) + " throughput_batch1: failed").c_str());
    return false;
  }
  emit_rate(throughput_scenario(1), system, r->count, r->elapsed_ns);
  return true;
}

bool rtt(const Options& o, const char* system, const char* scenario, bool waitset,
         std::chrono::microseconds gap, std::uint64_t count) {
  const std::string id = std::to_string(getpid()) + "-" + std::to_string(instance++);
  count = std::min<std::uint64_t>(count, kMaxSamples);
  Shared<Report> r;
  const bool ok = run_pair(
      [&]() -> int {
        init_runtime("client");
        Publisher ping(topic(id, "ping"), publisher_options());
        Receiver pong(topic(id, "pong"), waitset);
        if (!await_subscribed(pong.subscriber()) || !await([&] { return ping.hasSubscribers(); })) {
          return 1;
        }
        r->gate.wait_and_open();
        auto samples = time_round_trips(count, gap, [&](std::uint64_t i) {
          Msg m;
          return publish(ping, make_msg(i)) && pong.take(&m) && m.seq == i;
        });
        if (samples) {
          std::copy(samples->begin(), samples->end(), r->samples);
          r->count = samples->size();
        }
        r->done.store(1, std::memory_order_release);  // E1: pairs with E2
        return samples ? 0 : 1;
      },
      [&]() -> int {
        init_runtime("server");
        Receiver ping(topic(id, "ping"), waitset);
        Publisher pong(topic(id, "pong"), publisher_options());
        if (!await_subscribed(ping.subscriber()) || !await([&] { return pong.hasSubscribers(); })) {
          return 1;
        }
        r->gate.arrive_and_wait();
        Msg m;
        for (std::uint64_t i = 0; i < trips_with_warmup(count); ++i) {
          if (!ping.take(&m) || !publish(pong, m)) return 1;
        }
        spin_until([&] { return r->done.load(std::memory_order_acquire) != 0; });  // E2
        return 0;
      });
  if (!ok) {
    fail(o, (std::string(system) + " " + scenario + ": failed").c_str());
    return false;
  }
  emit_latency(scenario, system, std::vector<std::uint64_t>(r->samples, r->samples + r->count));
  return true;
}

}  // namespace
}  // namespace insideout::bench

int main(int argc, char** argv) {
  using namespace insideout::bench;
  const Options o = parse_options(
      argc, argv,
      "Eclipse iceoryx publish/subscribe through its own RouDi: polling (iceoryx_poll) and "
      "WaitSet (iceoryx_waitset) subscribers.\nExits 77 when RouDi cannot be started.",
      {throughput_scenario(1), "rtt_busy", "rtt_sleep"});
  Roudi roudi;
  if (const int rc = roudi.start(o); rc != 0) return rc;
  int failures = 0;
  if (o.wants(throughput_scenario(1))) {
    failures += !throughput(o, "iceoryx_poll", false);
    failures += !throughput(o, "iceoryx_waitset", true);
  }
  if (o.wants("rtt_busy")) {
    failures += !rtt(o, "iceoryx_poll", "rtt_busy", false, std::chrono::microseconds(0),
                     o.pick(100'000, 20'000, 200));
  }
  if (o.wants("rtt_sleep")) {
    failures += !rtt(o, "iceoryx_waitset", "rtt_sleep", true, kSleepGap, o.pick(20'000, 4'000, 50));
  }
  return failures == 0 ? 0 : 1;
}
