// unix_socket: a connected AF_UNIX SOCK_SEQPACKET pair per direction (socketpair(), so no
// file to remove). SEQPACKET keeps each 64-byte message a record, as a message protocol
// over a Unix socket would. A batch is one sendmmsg() of one record per message; the
// reader takes up to a batch in one recvmmsg(MSG_WAITFORONE). Spinning reads add
// MSG_DONTWAIT.
#include <sys/socket.h>

#include "channel_bench.h"

namespace insideout::bench {
namespace {

class SocketChannel {
 public:
  SocketChannel() {
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds_) != 0) throw_errno("socketpair");
  }
  ~SocketChannel() {
    close(fds_[0]);
    close(fds_[1]);
  }
  SocketChannel(const SocketChannel&) = delete;
  SocketChannel& operator=(const SocketChannel&) = delete;

  [[nodiscard]] bool send(std::span<const Msg> batch, Wait) {
    std::size_t done = 0;
    while (done < batch.size()) {
      const std::size_t n = prepare(const_cast<Msg*>(batch.data()) + done, batch.size() - done);
      const int r = sendmmsg(fds_[0], hdrs_, unsigned(n), 0);
      if (r < 0) {
        if (errno == EINTR) continue;
        return false;
      }
      done += std::size_t(r);
    }
    return true;
  }

  [[nodiscard]] std::size_t recv(std::span<Msg> out, Wait wait) {
    const int flags = MSG_WAITFORONE | (wait == Wait::kSpin ? MSG_DONTWAIT : 0);
    for (;;) {
      const std::size_t n = prepare(out.data(), out.size());
      const int r = recvmmsg(fds_[1], hdrs_, unsigned(n), flags, nullptr);
      if (r > 0) {
        for (int i = 0; i < r; ++i) {
          if (hdrs_[i].msg_len != sizeof(Msg)) return 0;
        }
        return std::size_t(r);
      }
      if (r == 0 || (errno != EAGAIN && errno != EINTR)) return 0;
      cpu_relax();
    }
  }

 private:
  // Points up to one batch of headers at consecutive messages; returns how many.
  std::size_t prepare(Msg* msgs, std::size_t count) {
    const std::size_t n = std::min(count, std::size(hdrs_));
    for (std::size_t i = 0; i < n; ++i) {
      iov_[i] = {&msgs[i], sizeof(Msg)};
      hdrs_[i] = {};
      hdrs_[i].msg_hdr.msg_iov = &iov_[i];
      hdrs_[i].msg_hdr.msg_iovlen = 1;
    }
    return n;
  }

  int fds_[2] = {-1, -1};  // [0] sends, [1] receives
  mmsghdr hdrs_[kBatches[3]];
  iovec iov_[kBatches[3]];
};

}  // namespace
}  // namespace insideout::bench

int main(int argc, char** argv) {
  using namespace insideout::bench;
  const Options o = parse_options(
      argc, argv, "Unix domain sockets (SOCK_SEQPACKET pairs): sendmmsg/recvmmsg batches.",
      channel_scenarios(true));
  pin_thread(cpu_for(0));
  const ChannelPeer p{.system = "unix_socket",
                      .throughput_msgs = o.pick(500'000, 200'000, 5'000),
                      .rtt_busy_samples = o.pick(100'000, 20'000, 200),
                      .rtt_sleep_samples = o.pick(20'000, 4'000, 50)};
  return run_channel_peer(o, p, [] { return SocketChannel(); }) == 0 ? 0 : 1;
}
