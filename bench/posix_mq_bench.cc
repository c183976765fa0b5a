// posix_mq: a POSIX message queue per direction, 64-byte messages, 512 deep (or the
// system's msg_max where we may not exceed it). POSIX mq has no batch call: a batch is a
// loop of mq_send(), and the reader drains up to a batch with non-blocking receives after
// the first. The queue's name is removed right after it is opened, before fork(): the
// descriptors stay valid in both processes and nothing named outlives a crash.
//
// Separate descriptors for sending, blocking and non-blocking receiving: O_NONBLOCK belongs
// to an open queue description, which fork() shares with the other process.
#include <mqueue.h>

#include <atomic>
#include <fstream>

#include "channel_bench.h"

namespace insideout::bench {
namespace {

inline constexpr long kDepth = 512;

class PosixMq {
 public:
  PosixMq() {
    static std::atomic<int> counter{0};
    const std::string name = "/insideout-bench-" + std::to_string(getpid()) + "-" +
                             std::to_string(counter.fetch_add(1, std::memory_order_relaxed));
    mq_attr attr{};
    attr.mq_maxmsg = kDepth;
    attr.mq_msgsize = sizeof(Msg);
    tx_ = mq_open(name.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600, &attr);
    if (tx_ < 0 && (errno == EINVAL || errno == EMFILE || errno == ENOMEM)) {
      attr.mq_maxmsg = system_msg_max();  // unprivileged: at most fs.mqueue.msg_max
      tx_ = mq_open(name.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600, &attr);
    }
    if (tx_ < 0) throw_errno("mq_open");
    rx_block_ = mq_open(name.c_str(), O_RDONLY | O_CLOEXEC);
    rx_spin_ = mq_open(name.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    mq_unlink(name.c_str());
    if (rx_block_ < 0 || rx_spin_ < 0) {
      close_all();
      throw_errno("mq_open");
    }
  }
  ~PosixMq() { close_all(); }
  PosixMq(const PosixMq&) = delete;
  PosixMq& operator=(const PosixMq&) = delete;

  [[nodiscard]] bool send(std::span<const Msg> batch, Wait) {
    for (const Msg& m : batch) {
      while (mq_send(tx_, reinterpret_cast<const char*>(&m), sizeof(Msg), 0) != 0) {
        if (errno != EINTR) return false;
      }
    }
    return true;
  }

  [[nodiscard]] std::size_t recv(std::span<Msg> out, Wait wait) {
    std::size_t n = 0;
    while (n == 0) {
      const ssize_t r = mq_receive(wait == Wait::kSpin ? rx_spin_ : rx_block_,
                                   reinterpret_cast<char*>(&out[0]), sizeof(Msg), nullptr);
      if (r == ssize_t(sizeof(Msg))) {
        n = 1;
      } else if (r >= 0 || (errno != EAGAIN && errno != EINTR)) {
        return 0;
      }
    }
    while (n < out.size() && mq_receive(rx_spin_, reinterpret_cast<char*>(&out[n]), sizeof(Msg),
                                        nullptr) == ssize_t(sizeof(Msg))) {
      ++n;
    }
    return n;
  }

 private:
  static long system_msg_max() {
    long v = 10;
    std::ifstream("/proc/sys/fs/mqueue/msg_max") >> v;
    return std::clamp(v, 1L, kDepth);
  }
  void close_all() {
    for (mqd_t q : {tx_, rx_block_, rx_spin_}) {
      if (q >= 0) mq_close(q);
    }
  }

  mqd_t tx_ = -1;
  mqd_t rx_block_ = -1;
  mqd_t rx_spin_ = -1;
};

}  // namespace
}  // namespace insideout::bench

int main(int argc, char** argv) {
  using namespace insideout::bench;
  const Options o = parse_options(
      argc, argv, "POSIX message queues (mq_open), 64-byte messages; batches are send loops.",
      channel_scenarios(true));
  pin_thread(cpu_for(0));
  const ChannelPeer p{.system = "posix_mq",
                      .throughput_msgs = o.pick(500'000, 200'000, 5'000),
                      .rtt_busy_samples = o.pick(100'000, 20'000, 200),
                      .rtt_sleep_samples = o.pick(20'000, 4'000, 50)};
  return run_channel_peer(o, p, [] { return PosixMq(); }) == 0 ? 0 : 1;
}
