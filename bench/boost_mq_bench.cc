// boost_mq: a Boost.Interprocess message_queue per direction, 64-byte messages, 512 deep.
// It has no batch call: a batch is a loop of send(), and the reader drains up to a batch
// with try_receive() after the first message. Spinning readers poll try_receive().
//
// The queue is created, mapped, and its name removed before fork(): both processes keep
// the mapping (its process-shared mutex and conditions included) and nothing named
// outlives a crash.
#include <boost/interprocess/ipc/message_queue.hpp>
#include <memory>

#include "channel_bench.h"

namespace insideout::bench {
namespace {

namespace bip = boost::interprocess;

inline constexpr std::size_t kDepth = 512;

class BoostMq {
 public:
  BoostMq() {
    static std::atomic<int> counter{0};
    const std::string name = "insideout-bench-" + std::to_string(getpid()) + "-" +
                             std::to_string(counter.fetch_add(1, std::memory_order_relaxed));
    bip::message_queue::remove(name.c_str());
    q_ = std::make_unique<bip::message_queue>(bip::create_only, name.c_str(), kDepth, sizeof(Msg));
    bip::message_queue::remove(name.c_str());
  }

  [[nodiscard]] bool send(std::span<const Msg> batch, Wait) {
    for (const Msg& m : batch) q_->send(&m, sizeof(Msg), 0);
    return true;
  }

  [[nodiscard]] std::size_t recv(std::span<Msg> out, Wait wait) {
    bip::message_queue::size_type got = 0;
    unsigned prio = 0;
    if (wait == Wait::kSpin) {
      while (!q_->try_receive(&out[0], sizeof(Msg), got, prio)) cpu_relax();
    } else {
      q_->receive(&out[0], sizeof(Msg), got, prio);
    }
    if (got != sizeof(Msg)) return 0;
    std::size_t n = 1;
    while (n < out.size() && q_->try_receive(&out[n], sizeof(Msg), got, prio)) {
      if (got != sizeof(Msg)) return 0;
      ++n;
    }
    return n;
  }

 private:
  std::unique_ptr<bip::message_queue> q_;
};

}  // namespace
}  // namespace insideout::bench

int main(int argc, char** argv) {
  using namespace insideout::bench;
  const Options o = parse_options(
      argc, argv, "Boost.Interprocess message_queue, 64-byte messages; batches are send loops.",
      channel_scenarios(true));
  pin_thread(cpu_for(0));
  const ChannelPeer p{.system = "boost_mq",
                      .throughput_msgs = o.pick(1'000'000, 200'000, 5'000),
                      .rtt_busy_samples = o.pick(100'000, 20'000, 200),
                      .rtt_sleep_samples = o.pick(20'000, 4'000, 50)};
  return run_channel_peer(o, p, [] { return BoostMq(); }) == 0 ? 0 : 1;
}
