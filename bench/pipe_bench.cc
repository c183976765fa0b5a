// pipe: an anonymous pipe per direction. A batch is one writev() with one iovec per
// message; the reader takes what is there, up to a batch, in one read(). A pipe is a
// byte stream, so a read that ends inside a message is completed with further reads.
// Spinning reads use O_NONBLOCK, set on the read end only when the mode changes.
#include <sys/uio.h>

#include "channel_bench.h"

namespace insideout::bench {
namespace {

class PipeChannel {
 public:
  PipeChannel() {
    if (pipe2(fds_, O_CLOEXEC) != 0) throw_errno("pipe2");
  }
  ~PipeChannel() {
    close(fds_[0]);
    close(fds_[1]);
  }
  PipeChannel(const PipeChannel&) = delete;
  PipeChannel& operator=(const PipeChannel&) = delete;

  [[nodiscard]] bool send(std::span<const Msg> batch, Wait) {
    iovec iov[kBatches[3]];
    std::size_t n = std::min(batch.size(), std::size(iov));
    for (std::size_t i = 0; i < n; ++i) iov[i] = {const_cast<Msg*>(&batch[i]), sizeof(Msg)};
    iovec* first = iov;
    while (n != 0) {
      ssize_t w = writev(fds_[1], first, int(n));
      if (w < 0) {
        if (errno == EINTR) continue;
        return false;
      }
      // A large writev may be split; skip what went in and go on with the rest.
      while (n != 0 && std::size_t(w) >= first->iov_len) {
        w -= ssize_t(first->iov_len);
        ++first;
        --n;
      }
      if (n != 0) {
        first->iov_base = static_cast<char*>(first->iov_base) + w;
        first->iov_len -= std::size_t(w);
      }
    }
    return true;
  }

  [[nodiscard]] std::size_t recv(std::span<Msg> out, Wait wait) {
    if (!set_nonblocking(wait == Wait::kSpin)) return 0;
    auto* bytes = reinterpret_cast<char*>(out.data());
    const ssize_t got = read_some(bytes, out.size_bytes());
    if (got <= 0) return 0;
    std::size_t have = std::size_t(got);
    while (have % sizeof(Msg) != 0) {  // finish the message the read ended in
      const ssize_t more = read_some(bytes + have, sizeof(Msg) - have % sizeof(Msg));
      if (more <= 0) return 0;
      have += std::size_t(more);
    }
    return have / sizeof(Msg);
  }

 private:
  // One read that returns data: retries EINTR, and EAGAIN when non-blocking (spinning).
  ssize_t read_some(char* p, std::size_t len) {
    for (;;) {
      const ssize_t r = read(fds_[0], p, len);
      if (r >= 0) return r;
      if (errno == EAGAIN) {
        cpu_relax();
      } else if (errno != EINTR) {
        return -1;
      }
    }
  }

  // O_NONBLOCK belongs to the open file (shared with the other process after fork), but
  // only this process reads this pipe, so its own record of the mode is accurate.
  bool set_nonblocking(bool on) {
    if (on == nonblocking_) return true;
    const int flags = fcntl(fds_[0], F_GETFL);
    if (flags < 0 || fcntl(fds_[0], F_SETFL, on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK) != 0) {
      return false;
    }
    nonblocking_ = on;
    return true;
  }

  int fds_[2] = {-1, -1};
  bool nonblocking_ = false;
};

}  // namespace
}  // namespace insideout::bench

int main(int argc, char** argv) {
  using namespace insideout::bench;
  const Options o =
      parse_options(argc, argv, "Anonymous pipes: writev batches, blocking or O_NONBLOCK reads.",
                    channel_scenarios(true));
  pin_thread(cpu_for(0));
  const ChannelPeer p{.system = "pipe",
                      .throughput_msgs = o.pick(2'000'000, 400'000, 5'000),
                      .rtt_busy_samples = o.pick(100'000, 20'000, 200),
                      .rtt_sleep_samples = o.pick(20'000, 4'000, 50)};
  return run_channel_peer(o, p, [] { return PipeChannel(); }) == 0 ? 0 : 1;
}
