// The event queue's two backends: epoll, and io_uring through liburing.
#include <errno.h>
#include <liburing.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstring>
#include <stdexcept>
#include <string>

#include "event_backend.h"

namespace insideout::engine {

namespace {

// What kAuto picks where io_uring works: epoll, measured faster for descriptor waits
// (docs/ARCHITECTURE.md and docs/BENCHMARKS.md, "The event queue").
constexpr bool kDefaultIsUring = false;

// epoll: one epoll set of the waited descriptors, itself the notify descriptor (an epoll
// descriptor is readable while its set has events). The kernel refuses EPOLLEXCLUSIVE
// for a nested epoll descriptor, so every sleeping worker wakes on an event and one
// harvests it (the io_uring backend's eventfd wakes one). Descriptors are registered
// once, edge-triggered (persistent(), as Go's netpoller and tokio do): a wait whose
// descriptor is not ready costs no epoll_ctl, and a harvest empties the set, so the
// nested descriptor stops waking sleepers. The timerfd and the signalfd keep one-shot
// watches (arm()).
class EpollBackend final : public EventQueue::Backend {
 public:
  EpollBackend() : epfd_(::epoll_create1(EPOLL_CLOEXEC)) {
    if (epfd_ < 0) throw std::runtime_error(std::string("epoll_create1: ") + std::strerror(errno));
  }
  ~EpollBackend() override { ::close(epfd_); }
  EventBackendKind kind() const noexcept override { return EventBackendKind::kEpoll; }
  bool edge_triggered() const noexcept override { return false; }
  bool maybe_ready() const noexcept override { return true; }  // only epoll_wait() can tell
  int notify_fd() const noexcept override { return epfd_; }
  int arm(int fd, std::uint32_t events, std::uint64_t token) override {
    epoll_event ev{};
    ev.events = events | EPOLLONESHOT;
    ev.data.u64 = token;
    // A descriptor waited on before keeps its (disabled, one-shot) registration: MOD
    // re-enables it in one call; a new one needs ADD.
    if (::epoll_ctl(epfd_, EPOLL_CTL_MOD, fd, &ev) == 0) return 0;
    if (errno != ENOENT) return -errno;
    return ::epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) == 0 ? 0 : -errno;
  }
  bool persistent() const noexcept override { return true; }
  int register_fd(int fd, std::uint32_t events, std::uint64_t token, bool again) override {
    epoll_event ev{};
    ev.events = events | EPOLLRDHUP | EPOLLET;
    ev.data.u64 = token;
    if (::epoll_ctl(epfd_, again ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev) == 0) return 0;
    // A new registration of a number still in the set under an older token (a descriptor
    // the queue forgot was reused): MOD takes the new token and reports what is ready
    // now. A change of one that left the set (closed with close(2)): ADD.
    if (again ? errno != ENOENT : errno != EEXIST) return -errno;
    return ::epoll_ctl(epfd_, again ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &ev) == 0 ? 0 : -errno;
  }
  // A registration outlives its waits (the queue ignores readiness nobody waits for).
  void disarm(int, std::uint64_t) override {}
  void forget(int fd) override { (void)::epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr); }
  int poll(std::uint64_t* tokens, std::uint32_t* revents, int n) override {
    epoll_event evs[64];
    const int got = ::epoll_wait(epfd_, evs, n < 64 ? n : 64, 0);
    for (int k = 0; k < got; ++k) {
      tokens[k] = evs[k].data.u64;
      revents[k] = evs[k].events;
    }
    return got < 0 ? 0 : got;
  }

 private:
  int epfd_;
};

// io_uring: IORING_OP_POLL_ADD per watch, completions announced on an eventfd (what the
// workers' epoll sets hold, with EPOLLEXCLUSIVE). Nothing newer than Linux 5.6 is used.
class UringBackend final : public EventQueue::Backend {
 public:
  UringBackend() {
    if (const int e = ::io_uring_queue_init(kEntries, &ring_, 0); e < 0)
      throw std::runtime_error(std::string("io_uring_queue_init: ") + std::strerror(-e));
    efd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (efd_ < 0 || ::io_uring_register_eventfd(&ring_, efd_) < 0) {
      const int e = errno;
      if (efd_ >= 0) ::close(efd_);
      ::io_uring_queue_exit(&ring_);
      throw std::runtime_error(std::string("io_uring eventfd: ") + std::strerror(e));
    }
  }
  ~UringBackend() override {
    ::io_uring_queue_exit(&ring_);
    ::close(efd_);
  }
  EventBackendKind kind() const noexcept override { return EventBackendKind::kIoUring; }
  bool edge_triggered() const noexcept override { return true; }
  // The completion ring's tail is published (release) before the eventfd is signalled, so a
  // worker woken by the eventfd sees the completion here.
  // Called without the queue's lock, so both words are read atomically (acquire on the
  // tail: pairs with the kernel's release when it posts; relaxed on the head: it only
  // moves under the lock, in poll()'s io_uring_cq_advance(), itself an atomic store).
  bool maybe_ready() const noexcept override {
    return __atomic_load_n(ring_.cq.ktail, __ATOMIC_ACQUIRE) !=
           __atomic_load_n(ring_.cq.khead, __ATOMIC_RELAXED);
  }
  int notify_fd() const noexcept override { return efd_; }
  int arm(int fd, std::uint32_t events, std::uint64_t token) override {
    io_uring_sqe* sqe = sqe_();
    ::io_uring_prep_poll_add(sqe, fd, events & ~static_cast<std::uint32_t>(EPOLLONESHOT));
    ::io_uring_sqe_set_data64(sqe, token);
    const int e = ::io_uring_submit(&ring_);
    return e < 0 ? e : 0;  // a bad descriptor comes back as a completion with res < 0
  }
  void disarm(int, std::uint64_t token) override {
    io_uring_sqe* sqe = sqe_();
    ::io_uring_prep_poll_remove(sqe, token);
    ::io_uring_sqe_set_data64(sqe, kRemoveToken);
    (void)::io_uring_submit(&ring_);
  }
  void forget(int) override {}  // a poll holds its file: disarm() ended every watch
  int poll(std::uint64_t* tokens, std::uint32_t* revents, int n) override {
    // The eventfd is edge-triggered in the workers' sets (each completion posts one
    // edge), so it is never read: nothing ready costs one load, no system call.
    if (::io_uring_cq_ready(&ring_) == 0) return 0;
    io_uring_cqe* cqes[64];
    const unsigned got = ::io_uring_peek_batch_cqe(&ring_, cqes, n < 64 ? n : 64);
    int k = 0;
    for (unsigned j = 0; j < got; ++j) {
      const std::uint64_t token = ::io_uring_cqe_get_data64(cqes[j]);
      const int res = cqes[j]->res;
      if (token == kRemoveToken) continue;  // a removal's own completion
      tokens[k] = token;
      // -ECANCELED: a removal's victim (its wait has ended: the queue drops the stale
      // token), or a watch cancelled by the kernel because the thread that submitted it
      // exited (a retired worker): the queue arms that one again (kCancelledWatch).
      revents[k] = res == -ECANCELED ? kCancelledWatch
                   : res < 0         ? static_cast<std::uint32_t>(EPOLLERR)
                                     : static_cast<std::uint32_t>(res);
      ++k;
    }
    ::io_uring_cq_advance(&ring_, got);
    return k;  // more than a batch: the harvesting worker comes back for the rest
  }

 private:
  static constexpr unsigned kEntries = 256;
  static constexpr std::uint64_t kRemoveToken = ~std::uint64_t{0} - 2;
  io_uring_sqe* sqe_() {
    io_uring_sqe* sqe = ::io_uring_get_sqe(&ring_);
    if (sqe == nullptr) {  // the submission queue is full: hand it to the kernel
      (void)::io_uring_submit(&ring_);
      sqe = ::io_uring_get_sqe(&ring_);
    }
    return sqe;
  }
  io_uring ring_{};
  int efd_ = -1;
};

}  // namespace

std::string probe_io_uring() {
  io_uring ring{};
  if (const int e = ::io_uring_queue_init(2, &ring, 0); e < 0)
    return std::string("io_uring_setup: ") + std::strerror(-e);
  std::string why;
  if (io_uring_probe* p = ::io_uring_get_probe_ring(&ring); p != nullptr) {
    if (!::io_uring_opcode_supported(p, IORING_OP_POLL_ADD) ||
        !::io_uring_opcode_supported(p, IORING_OP_POLL_REMOVE))
      why = "io_uring lacks POLL_ADD/POLL_REMOVE";
    ::io_uring_free_probe(p);
  } else {
    why = "io_uring has no opcode probe (Linux < 5.6)";
  }
  ::io_uring_queue_exit(&ring);
  return why;
}

std::unique_ptr<EventQueue::Backend> make_event_backend(EventBackendKind kind) {
  if (kind == EventBackendKind::kEpoll) return std::make_unique<EpollBackend>();
  if (kind == EventBackendKind::kIoUring) return std::make_unique<UringBackend>();
  static const std::string why = probe_io_uring();  // once per process
  if (kDefaultIsUring && why.empty()) return std::make_unique<UringBackend>();
  return std::make_unique<EpollBackend>();
}

}  // namespace insideout::engine
