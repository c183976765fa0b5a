// fuzz_registration: what a client's first packets reach before any scheduler does.
//
// Input: one control byte, then the bytes of one SOCK_SEQPACKET packet.
//   control bit 0: pass a descriptor with the packet (SCM_RIGHTS), as a client may
//   control bit 1: pass two in one message (more than the receiver's room for one)
//   control bit 2: receive as the client library does (it takes the descriptor), else
//                  as the daemon does (it closes whatever came)
// The packet goes through v1::recv_message() (the registration socket's framing and the
// protobuf decoding of ClientMessage). A decoded Hello that asks for a segment is
// clamped as on_hello() does (clamp_segment_request() with the daemon's default limits)
// and laid out (shm::SegmentGeometry::compute()); a small enough layout is initialized
// in memory and read back with shm::check_segment(), as a client would.
//
// Invariants: no descriptor leaks whichever way the packet came; a packet that arrived
// decodes or is kMalformed; an accepted layout stays within the limits, its regions are
// aligned, in order, disjoint and inside the segment; a segment the daemon initializes
// passes the client's check with the same geometry.
#include <fcntl.h>
#include <google/protobuf/stubs/logging.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "config.h"
#include "fuzz_check.h"
#include "insideout/shm/layout.h"
#include "insideout/shm/ring.h"
#include "insideout/v1/continuation.pb.h"
#include "insideout/v1/wire.h"
#include "segment_request.h"
namespace {

namespace shm = insideout::shm;
namespace v1 = insideout::v1;

// The lowest free descriptor number: it changes if a descriptor leaked.
int lowest_free_fd() {
  const int fd = ::dup(0);
  ::close(fd);
  return fd;
}

void send_packet(int sock, const std::uint8_t* data, std::size_t size, int nfds) {
  iovec iov{const_cast<std::uint8_t*>(data), size};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(2 * sizeof(int))] = {};
  int fds[2] = {-1, -1};
  if (nfds > 0) {
    for (int i = 0; i < nfds; ++i) fds[i] = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    mh.msg_control = control;
    mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
    std::memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
  }
  FUZZ_CHECK(::sendmsg(sock, &mh, MSG_NOSIGNAL) == static_cast<ssize_t>(size));
  for (int i = 0; i < nfds; ++i) ::close(fds[i]);  // the receiver holds its own copies now
}

void check_layout(const shm::SegmentRequest& r, const shm::SegmentRequest& max,
                  const shm::SegmentGeometry& g) {
  FUZZ_CHECK(r.ring_capacity <= max.ring_capacity && r.frame_count <= max.frame_count);
  FUZZ_CHECK(r.buffer_block_size <= max.buffer_block_size);
  FUZZ_CHECK(r.buffer_block_count <= max.buffer_block_count);
  FUZZ_CHECK(g.ring_capacity != 0 && (g.ring_capacity & (g.ring_capacity - 1)) == 0);
  FUZZ_CHECK(g.frame_count != 0 && g.frame_count <= g.ring_capacity);
  FUZZ_CHECK(g.buffer_block_size != 0 && g.buffer_block_size % shm::kCacheLine == 0);
  const std::uint64_t ring = shm::ring_bytes(g.ring_capacity);
  FUZZ_CHECK(g.doorbells_off >= sizeof(shm::SegmentHeader));
  FUZZ_CHECK(g.counters_off >= g.doorbells_off + sizeof(shm::Doorbells));
  FUZZ_CHECK(g.submit_ring_off >= g.counters_off + sizeof(shm::ClientCounters));
  FUZZ_CHECK(g.completion_ring_off >= g.submit_ring_off + ring);
  FUZZ_CHECK(g.arena_off >= g.completion_ring_off + ring);
  FUZZ_CHECK(g.frames_off >= g.arena_off + sizeof(shm::ArenaHeader));
  FUZZ_CHECK(g.buffers_off >= std::uint64_t{g.frames_off} + std::uint64_t{g.frame_count} * 64);
  FUZZ_CHECK(std::uint64_t{g.buffers_off} +
                 std::uint64_t{g.buffer_block_size} * g.buffer_block_count <=
             g.size);
  for (std::uint64_t off : {g.doorbells_off, g.counters_off, g.submit_ring_off,
                            g.completion_ring_off, g.arena_off, g.frames_off, g.buffers_off}) {
    FUZZ_CHECK(off % shm::kCacheLine == 0);
  }
  FUZZ_CHECK(g.size % 4096 == 0 && g.size <= 0xFFFFFFFFull);
}

// Lays a small segment out in memory, as Segment::create() does, and reads it back as a
// client does.
void round_trip(const shm::SegmentGeometry& g) {
  if (g.size > (1u << 18)) return;  // fuzzing speed: the layout was checked above
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  std::unique_ptr<void, Free> mem(std::aligned_alloc(4096, g.size));
  std::memset(mem.get(), 0, g.size);
  shm::initialize_segment(mem.get(), g, 1, 2, 3, 4);
  shm::SegmentGeometry back{};
  FUZZ_CHECK(shm::check_segment(mem.get(), g.size, &back) == shm::CheckResult::kOk);
  FUZZ_CHECK(std::memcmp(&back, &g, sizeof(g)) == 0);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Invalid UTF-8 in a string field is a refusal like any other; its log line per input
  // would drown libFuzzer's output.
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0 || size - 1 > v1::kMaxPacket) return -1;
  const std::uint8_t control = data[0];
  ++data;
  --size;
  const int before = lowest_free_fd();
  int sv[2];
  FUZZ_CHECK(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0);
  // Big enough for any packet the daemon accepts.
  const int buf = static_cast<int>(2 * v1::kMaxPacket);
  ::setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
  ::setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
  send_packet(sv[0], data, size, control & 2 ? 2 : (control & 1));

  v1::ClientMessage msg;
  int fd = -1, err = 0;
  const bool as_client = control & 4;
  const v1::RecvStatus st = v1::recv_message(sv[1], &msg, as_client ? &fd : nullptr, &err);
  if (fd >= 0) ::close(fd);
  ::close(sv[0]);
  ::close(sv[1]);
  FUZZ_CHECK(lowest_free_fd() == before);
  // An empty packet reads as end of stream (recvmsg returns 0): the daemon hangs up,
  // which is what it does for a client that closed.
  if (size == 0) {
    FUZZ_CHECK(st == v1::RecvStatus::kClosed);
    return 0;
  }
  FUZZ_CHECK(st == v1::RecvStatus::kOk || st == v1::RecvStatus::kMalformed);
  if (st != v1::RecvStatus::kOk) return 0;

  if (msg.has_hello() && msg.hello().want_segment()) {
    const insideout::daemon::DaemonConfig config;
    const shm::SegmentRequest r = insideout::daemon::clamp_segment_request(
        msg.hello().segment(), config.segment_defaults, config.segment_max);
    shm::SegmentGeometry g;
    if (shm::SegmentGeometry::compute(r, &g)) {
      check_layout(r, config.segment_max, g);
      round_trip(g);
    }
  }
  if (msg.has_submit()) {
    // What on_submit() copies into daemon memory is bounded by the packet.
    FUZZ_CHECK(msg.submit().env().size() <= size && msg.submit().function().size() <= size);
  }
  return 0;
}
