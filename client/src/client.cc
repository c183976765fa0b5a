#include "insideout/client.hpp"

#include <sched.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <condition_variable>
#include <cstring>
#include <future>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <utility>

#include "insideout/shm/arena.h"
#include "insideout/shm/bell.h"
#include "insideout/shm/paths.h"
#include "insideout/shm/ring.h"
#include "insideout/shm/segment.h"
#include "insideout/v1/continuation.pb.h"
#include "insideout/v1/wire.h"

namespace insideout {
namespace detail {
struct Session;
}
namespace {

// A frame's life on the client side. Transitions are atomic exchanges and CASes, so
// that the handle and the draining thread agree on who frees the frame and who runs
// what (see Impl::complete()).
enum FrameStateValue : std::uint8_t {
  kFree = 0,
  kInFlight = 1,
  kDone = 2,
  kDetached = 3,  // the handle let go: whoever sees the completion frees the frame
  kCallback = 4,  // run `callback` on completion, then free
  kAwaited = 5,   // resume `coro` on completion
  kMoved = 6,     // resubmitted to the next daemon: see moved_to (Impl::move_orphan())
};

struct FrameState {
  std::atomic<std::uint8_t> state{kFree};
  std::span<std::byte> owned_buffer;  // a buffer submit() allocated for the environment
  std::function<void(const Result&)> callback;
  std::coroutine_handle<> coro;
  // Where a never-accepted continuation went after a restart; set before kMoved (M1).
  detail::Session* moved_to = nullptr;
  std::uint32_t moved_idx = 0;
};

// A first-fit allocator of contiguous blocks in the segment's buffer area; process-local
// (only the client allocates buffers).
class BlockAllocator {
 public:
  void init(std::uint32_t blocks) {
    used_.assign(blocks, false);
    hint_ = 0;
  }
  // Returns the first block index or -1.
  long allocate(std::uint32_t n) {
    std::lock_guard lock(mu_);
    const std::size_t total = used_.size();
    if (n == 0 || n > total) return -1;
    for (std::size_t pass = 0; pass < 2; ++pass) {
      std::size_t i = pass == 0 ? hint_ : 0;
      const std::size_t end = pass == 0 ? total : hint_;
      while (i + n <= total && i < end + n) {
        std::size_t run = 0;
        while (run < n && !used_[i + run]) ++run;
        if (run == n) {
          for (std::size_t k = 0; k < n; ++k) used_[i + k] = true;
          hint_ = (i + n) % total;
          return static_cast<long>(i);
        }
        i += run + 1;
      }
    }
    return -1;
  }
  void free(std::uint32_t first, std::uint32_t n) {
    std::lock_guard lock(mu_);
    for (std::uint32_t k = 0; k < n && first + k < used_.size(); ++k) used_[first + k] = false;
  }

 private:
  std::mutex mu_;
  std::vector<bool> used_;
  std::size_t hint_ = 0;
};

Status from_proto(v1::Status s) { return static_cast<Status>(static_cast<int>(s)); }

}  // namespace

std::string Result::error() const {
  if (status == Status::kOk) return "";
  std::string t = shm::status_name(status);
  if (detail != ErrorDetail::kNone && detail != ErrorDetail::kFunctionFailed)
    t += std::string(": ") + shm::detail_name(detail);
  if (!message.empty()) t += ": " + message;
  return t;
}

namespace detail {

// One registration with one daemon: its socket, segment, rings and the client-side state
// of each frame. A Client has one current Session; after a restart it gets a new one and
// keeps the old ones (mapped, never written by a daemon again) until it is destroyed, so
// that handles, frames and results of the old segment stay readable.
struct Session {
  int sock = -1;
  std::uint32_t client_id = 0;
  std::uint64_t generation = 0;
  std::vector<FunctionInfo> functions;
  bool daemon_lookup = false;        // the daemon answers Lookup (Welcome.lookup)
  std::uint32_t max_client_fds = 0;  // Welcome.max_client_fds: 0 when the daemon takes none
  // Functions learned after the Welcome (Lookup), by name: ids are the daemon's.
  mutable std::mutex learned_mu;
  std::unordered_map<std::string, FunctionInfo> learned;

  shm::Segment segment;
  bool has_segment = false;
  char* base = nullptr;
  shm::Doorbells* doorbells = nullptr;
  shm::FrameArena arena;
  shm::RingProducer submit;
  // Tells the pool that the submit ring has work (a syscall only while a worker sleeps).
  shm::BellPage bell_page;
  int bell_page_fd = -1;  // until bell_page maps it
  int bell_fd = -1;
  shm::SubmitBell bell;
  std::unique_ptr<FrameState[]> states;
  BlockAllocator buffers;
  shm::FrameControl* controls = nullptr;  // per frame: the deadline (layout 4)
  shm::ClientBells* bells = nullptr;

  // Completion ring: one drainer at a time.
  std::mutex drain_mu;
  shm::RingConsumer completion;
  std::atomic<std::uint64_t> peek_head{0};  // the drainer's position, for lock-free peeks

  // The daemon of this session is gone. L1: stored (seq_cst) by Impl::sweep() before its
  // fence F2 and its scan of the frames; loaded after the fence F1 in Client::submit():
  // either the sweep sees a frame that was pushed, or the submitter sees `lost` and
  // settles its frame itself (Impl::after_lost_push()). Loaded with acquire by waiters.
  std::atomic<bool> lost{false};
  // The sweep is over (release; acquire by after_lost_push()).
  std::atomic<bool> swept{false};
  // Under Impl::orphans_mu: the never-accepted frames were moved or failed.
  bool orphans_settled = false;
  std::chrono::steady_clock::time_point lost_at{};
  // The daemon said it disconnected this client on purpose (Goodbye.disconnected): no
  // reconnection. Written and read by the monitor thread only.
  bool disconnected = false;

  Session() = default;
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  ~Session() {
    if (bell_page_fd >= 0) ::close(bell_page_fd);
    if (bell_fd >= 0) ::close(bell_fd);
    if (sock >= 0) ::close(sock);
  }

  const shm::SegmentGeometry& geometry() const { return segment.geometry(); }

  std::uint32_t index_of(std::uint32_t off) const {
    return (off - geometry().frames_off) / static_cast<std::uint32_t>(sizeof(Frame));
  }

  // Writes frame idx's control slot; the ring's release store publishes it (P1).
  void set_control(std::uint32_t idx, const SubmitOptions& o) {
    std::int64_t ns = 0;
    if (o.deadline) {
      ns = std::chrono::duration_cast<std::chrono::nanoseconds>(o.deadline->time_since_epoch())
               .count();
      if (ns <= 0) ns = 1;  // 0 means none: a deadline at the clock's start has passed
    }
    controls[idx].deadline_ns.store(ns, std::memory_order_relaxed);
  }

  bool owns_frame(const Frame* f) const {
    if (!has_segment) return false;
    const char* p = reinterpret_cast<const char*>(f);
    const char* first = base + geometry().frames_off;
    return p >= first && p < first + std::size_t{geometry().frame_count} * sizeof(Frame);
  }

  bool completion_ready() const {
    const std::uint64_t head = peek_head.load(std::memory_order_relaxed);
    shm::RingView v(base + geometry().completion_ring_off, geometry().ring_capacity);
    return static_cast<std::uint32_t>(v.slot(head).load(std::memory_order_acquire) >> 32) ==
           static_cast<std::uint32_t>(head + 1);
  }

  bool ring_has_room() const {
    shm::RingView v(base + geometry().submit_ring_off, geometry().ring_capacity);
    const std::uint64_t tail = v.header()->tail.load(std::memory_order_relaxed);
    return static_cast<std::uint32_t>(v.slot(tail).load(std::memory_order_acquire) >> 32) ==
           static_cast<std::uint32_t>(tail);
  }

  // A function's name by this daemon's id, and the other way round; empty / nullopt
  // when this daemon did not tell.
  std::string name_of(std::uint32_t id) const {
    for (const auto& f : functions)
      if (f.id == id) return f.name;
    std::lock_guard l(learned_mu);
    for (const auto& [name, f] : learned)
      if (f.id == id) return name;
    return {};
  }
  std::optional<std::uint32_t> id_of(std::string_view name) const {
    for (const auto& f : functions)
      if (f.name == name) return f.id;
    std::lock_guard l(learned_mu);
    if (auto it = learned.find(std::string(name)); it != learned.end()) return it->second.id;
    return std::nullopt;
  }
};

}  // namespace detail

using detail::Session;

namespace {

// Registers with the daemon at `path`: Hello, then Welcome with the segment, the pool's
// bell page and this client's bell eventfd. *connect_errno is set when connect() itself
// failed (ENOENT, ECONNREFUSED: no daemon yet), else 0.
absl::StatusOr<std::unique_ptr<Session>> open_session(const ClientOptions& options,
                                                      const std::string& path, int* connect_errno) {
  *connect_errno = 0;
  auto s = std::make_unique<Session>();
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path))
    return absl::InvalidArgumentError("socket path too long: " + path);
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  s->sock = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (s->sock < 0) return absl::InternalError(std::string("socket: ") + std::strerror(errno));
  if (::connect(s->sock, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    *connect_errno = errno;
    return absl::UnavailableError(
        "no insideoutd at " + path + ": " + std::strerror(*connect_errno) +
        " (is the daemon running? INSIDEOUT_RUNTIME_DIR selects its directory)");
  }
  v1::ClientMessage hello_msg;
  auto* hello = hello_msg.mutable_hello();
  hello->set_protocol_version(shm::kProtocolVersion);
  hello->set_layout_version(shm::kLayoutVersion);
  hello->set_want_segment(options.want_segment);
  hello->set_client_name(options.name);
  hello->set_pool(options.pool);
  hello->mutable_segment()->set_ring_capacity(options.segment.ring_capacity);
  hello->mutable_segment()->set_frame_count(options.segment.frame_count);
  hello->mutable_segment()->set_buffer_block_size(options.segment.buffer_block_size);
  hello->mutable_segment()->set_buffer_block_count(options.segment.buffer_block_count);
  if (int e = v1::send_message(s->sock, hello_msg); e != 0) {
    // Refused at the door (a connection limit): the daemon said why before it closed.
    timeval brief{0, 100'000};
    ::setsockopt(s->sock, SOL_SOCKET, SO_RCVTIMEO, &brief, sizeof(brief));
    v1::DaemonMessage early;
    if (v1::recv_message(s->sock, &early) == v1::RecvStatus::kOk && early.has_refused()) {
      return absl::ResourceExhaustedError("insideoutd refused the connection: " +
                                          early.refused().reason());
    }
    return absl::UnavailableError("sending Hello to " + path + ": " + std::strerror(e));
  }
  // A daemon that accepts and then never answers must not hang us: bound the handshake.
  timeval tv{5, 0};
  ::setsockopt(s->sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  v1::DaemonMessage reply;
  std::vector<int> fds;
  int err = 0;
  // The segment, the pool's bell page and this client's bell eventfd (see shm/bell.h).
  const v1::RecvStatus got = v1::recv_message_fds(s->sock, &reply, &fds, &err);
  int fd = -1;
  for (std::size_t i = 0; i < fds.size(); ++i) {
    if (i == 0) {
      fd = fds[i];
    } else if (i == 1) {
      s->bell_page_fd = fds[i];  // closed by ~Session unless mapped
    } else if (i == 2) {
      s->bell_fd = fds[i];  // closed by ~Session
    } else {
      ::close(fds[i]);
    }
  }
  auto fail = [&](absl::Status st) {
    if (fd >= 0) ::close(fd);
    return st;
  };
  if (got != v1::RecvStatus::kOk)
    return fail(absl::UnavailableError("no answer to Hello from " + path + " within 5 s"));
  tv = timeval{0, 0};
  ::setsockopt(s->sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (reply.has_refused()) {
    return fail(absl::FailedPreconditionError("insideoutd refused the registration: " +
                                              reply.refused().reason()));
  }
  if (!reply.has_welcome()) return fail(absl::InternalError("unexpected answer to Hello"));
  const auto& w = reply.welcome();
  s->client_id = w.client_id();
  s->generation = w.generation();
  s->daemon_lookup = w.lookup();
  s->max_client_fds = w.max_client_fds();
  for (const auto& f : w.functions()) {
    s->functions.push_back({f.name(), f.id(), f.needs_buffer(), f.max_arg(), f.help()});
  }
  if (!options.want_segment) {
    if (fd >= 0) ::close(fd);
    return s;
  }
  if (fd < 0) return absl::InternalError("the daemon sent no segment");
  std::string why;
  s->segment = shm::Segment::attach(std::exchange(fd, -1), &why);
  if (!s->segment.valid()) return absl::FailedPreconditionError("segment from insideoutd: " + why);
  if (s->segment.header()->generation != s->generation) {
    return absl::FailedPreconditionError("the segment's generation " +
                                         std::to_string(s->segment.header()->generation) +
                                         " is not the Welcome's " + std::to_string(s->generation));
  }
  if (s->bell_page_fd < 0 || s->bell_fd < 0)
    return absl::InternalError("the daemon sent no pool bell");
  // attach() takes the descriptor and closes it once mapped.
  s->bell_page = shm::BellPage::attach(std::exchange(s->bell_page_fd, -1), &why);
  if (!s->bell_page.valid())
    return absl::FailedPreconditionError("pool bell from insideoutd: " + why);
  s->bell = shm::SubmitBell(s->bell_page.page(), s->bell_fd);
  const auto& g = s->segment.geometry();
  s->has_segment = true;
  s->base = static_cast<char*>(s->segment.base());
  s->doorbells = s->segment.doorbells();
  s->arena = shm::FrameArena(s->base, g);
  s->controls = reinterpret_cast<shm::FrameControl*>(s->base + g.controls_off);
  s->bells = reinterpret_cast<shm::ClientBells*>(s->base + g.bells_off);
  s->submit = shm::RingProducer(shm::RingView(s->base + g.submit_ring_off, g.ring_capacity));
  s->completion =
      shm::RingConsumer(shm::RingView(s->base + g.completion_ring_off, g.ring_capacity));
  s->states.reset(new FrameState[g.frame_count]);
  s->buffers.init(g.buffer_block_count);
  return s;
}

}  // namespace

struct Client::Impl {
  ClientOptions options;
  std::string socket_path;

  // Every session this client had, the current one last; kept until the Client goes.
  std::mutex sessions_mu;
  std::condition_variable sessions_cv;  // a new session, a permanent loss or closing
  std::vector<std::unique_ptr<Session>> sessions;
  // The session submissions go to. Release store when a new one is ready (R1) after its
  // moved frames are set up; acquire loads (R2) see them.
  std::atomic<Session*> current{nullptr};
  // No reconnection will come (reconnect off, or the daemon disconnected this client).
  std::atomic<bool> given_up{false};

  // Why the daemon was lost, for messages.
  mutable std::mutex lost_mu;
  std::string lost_reason;
  std::atomic<bool> closing{false};
  std::thread monitor;
  std::atomic<std::thread::id> monitor_id{};  // its own, stored as it starts
  std::atomic<bool> monitor_done{false};      // release at its end; acquire by ~Client

  // Never-accepted frames of lost sessions, waiting for the next daemon.
  std::mutex orphans_mu;
  std::vector<std::pair<Session*, std::uint32_t>> orphans;

  // Serialized calls waiting for their Result.
  std::mutex calls_mu;
  std::uint64_t next_tag = 1;
  std::unordered_map<std::uint64_t, std::promise<SerialResult>> calls;
  // Lookups by name waiting for their LookupResult (under calls_mu, tags from next_tag).
  std::unordered_map<std::uint64_t, std::promise<v1::LookupResult>> lookups;
  // PassFd and CloseFd waiting for their FdResult (under calls_mu, tags from next_tag).
  std::unordered_map<std::uint64_t, std::promise<v1::FdResult>> fd_results;
  std::mutex send_mu;

  std::thread dispatcher;
  std::atomic<bool> stop_dispatcher{false};

  // Statistics (relaxed).
  std::atomic<std::uint64_t> submitted{0}, completed{0}, full_fail_fast{0}, full_waits{0};
  std::atomic<std::uint64_t> reconnects{0}, resubmitted{0}, lost_count{0};

  Session* cur() const { return current.load(std::memory_order_acquire); }  // R2

  std::string reason() const {
    std::lock_guard l(lost_mu);
    return lost_reason;
  }

  // The session to submit to: the current one, or, while the daemon is away, the next
  // one within options.reconnect_wait. nullptr when none came.
  Session* live_session() {
    Session* s = cur();
    if (!s->lost.load(std::memory_order_acquire)) return s;
    if (given_up.load(std::memory_order_acquire)) return nullptr;
    // A callback the sweep runs (on the monitor thread) must not wait for the monitor to
    // reconnect: it fails at once.
    if (std::this_thread::get_id() == monitor_id.load(std::memory_order_relaxed)) return nullptr;
    std::unique_lock l(sessions_mu);
    sessions_cv.wait_for(l, options.reconnect_wait, [&] {
      return !cur()->lost.load(std::memory_order_acquire) ||
             given_up.load(std::memory_order_acquire) || closing.load(std::memory_order_acquire);
    });
    s = cur();
    return s->lost.load(std::memory_order_acquire) ? nullptr : s;
  }

  absl::Status lost_error() const {
    return absl::UnavailableError("daemon lost: " + reason() +
                                  (options.reconnect && !given_up.load(std::memory_order_acquire)
                                       ? " (no daemon back within ClientOptions::reconnect_wait, " +
                                             std::to_string(options.reconnect_wait.count()) + " ms)"
                                       : std::string()));
  }

  // Resets a frame's client-side state before it goes back to the arena.
  void release_state(Session& s, std::uint32_t idx) {
    FrameState& st = s.states[idx];
    if (!st.owned_buffer.empty()) {
      free_buffer(s, st.owned_buffer);
      st.owned_buffer = {};
    }
    if (st.callback) st.callback = nullptr;
    st.coro = nullptr;
    st.state.store(kFree, std::memory_order_relaxed);
  }

  void free_frame(Session& s, std::uint32_t idx) {
    release_state(s, idx);
    s.arena.free(s.arena.frame(idx));
  }

  void free_buffer(Session& s, std::span<std::byte> b) {
    const auto& g = s.geometry();
    const std::uint32_t off =
        static_cast<std::uint32_t>(reinterpret_cast<char*>(b.data()) - s.base);
    const std::uint32_t first = (off - g.buffers_off) / g.buffer_block_size;
    const auto n =
        static_cast<std::uint32_t>((b.size() + g.buffer_block_size - 1) / g.buffer_block_size);
    s.buffers.free(first, n);
  }

  // A buffer of `bytes` in `s`, without waiting; empty when there is no room.
  std::span<std::byte> try_buffer(Session& s, std::size_t bytes) {
    const auto& g = s.geometry();
    const std::uint64_t n = (bytes + g.buffer_block_size - 1) / g.buffer_block_size;
    if (bytes == 0 || n > g.buffer_block_count) return {};
    const long first = s.buffers.allocate(static_cast<std::uint32_t>(n));
    if (first < 0) return {};
    return {reinterpret_cast<std::byte*>(s.base + g.buffers_off +
                                         static_cast<std::size_t>(first) * g.buffer_block_size),
            bytes};
  }

  // The session whose segment holds `p` (a buffer or a frame), or nullptr.
  Session* owner_of(const void* p) {
    std::lock_guard l(sessions_mu);
    for (auto& s : sessions) {
      const char* c = static_cast<const char*>(p);
      if (s->has_segment && c >= s->base && c < s->base + s->geometry().size) return s.get();
    }
    return nullptr;
  }

  // Whether a completed frame's result data is its environment buffer (see result_of()).
  static bool result_in_env(const Session& s, std::uint32_t idx) {
    const Frame* f = s.arena.frame(idx);
    return !(f->flags & shm::kFrameResultInline) && f->result_len != 0 &&
           !(f->flags & shm::kFrameEnvInline);
  }

  // Under OnFull::kWait, retries `take` until it succeeds, the daemon is lost or
  // options.full_timeout passes; false then. Completions drained here free the frames of
  // let-go handles and the buffers of finished continuations and wake it at once; frames
  // and buffers freed by other threads are seen within a slice (1 ms).
  template <class Take>
  bool wait_for_room(Session& s, Take&& take) {
    if (take()) return true;
    if (options.on_full != OnFull::kWait) return false;
    const auto deadline = std::chrono::steady_clock::now() + options.full_timeout;
    full_waits.fetch_add(1, std::memory_order_relaxed);
    for (;;) {
      poll(s);
      if (take()) return true;
      if (s.lost.load(std::memory_order_acquire)) return false;  // L2
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) return false;
      const auto slice =
          std::min<std::chrono::nanoseconds>(deadline - now, std::chrono::milliseconds(1));
      shm::event_wait(
          s.doorbells->completion,
          [&] { return s.completion_ready() || s.lost.load(std::memory_order_acquire); }, slice);
    }
  }

  // How to ask for more of the segment, for error messages.
  static std::string frames_hint(const Session& s) {
    return "all " + std::to_string(s.arena.frame_count()) +
           " frames are in use (a frame is held until its handle is waited on and released, "
           "or let go); raise ClientOptions::segment.frame_count";
  }
  static std::string buffers_hint(const Session& s, std::size_t bytes) {
    const auto& g = s.geometry();
    const std::uint64_t total = std::uint64_t{g.buffer_block_size} * g.buffer_block_count;
    return "no room for " + std::to_string(bytes) + " bytes in the segment's buffers (" +
           std::to_string(total) + " bytes: " + std::to_string(g.buffer_block_count) +
           " blocks of " + std::to_string(g.buffer_block_size) +
           "); raise ClientOptions::segment.buffer_block_count (the segment is at most "
           "insideoutd --max-segment-mib)";
  }

  static Result result_of(const Session& s, std::uint32_t idx) {
    const Frame* f = s.arena.frame(idx);
    Result r;
    r.status = static_cast<Status>(f->status);
    r.detail = static_cast<ErrorDetail>(f->detail);
    r.value = f->result;
    const auto& g = s.geometry();
    if ((f->flags & shm::kFrameResultInline) && f->result_len <= shm::kInlineCapacity) {
      r.data = {reinterpret_cast<const std::byte*>(f->inline_data), f->result_len};
    } else if (f->result_len != 0 && !(f->flags & shm::kFrameEnvInline) &&
               g.buffer_range_valid(f->env_off, f->result_len)) {
      r.data = {reinterpret_cast<const std::byte*>(s.base + f->env_off), f->result_len};
    }
    if (r.detail == ErrorDetail::kFunctionFailed) {
      // The function's own words, NUL-terminated in the frame's message slot.
      const char* m = reinterpret_cast<const char*>(s.base + g.messages_off) +
                      std::size_t{idx} * shm::kMessageBytes;
      r.message.assign(m, ::strnlen(m, shm::kMessageBytes - 1));
    }
    return r;
  }

  // Takes every ready completion; returns how many. Callbacks and coroutines run after
  // the drain lock is released.
  std::size_t drain(Session& s, std::unique_lock<std::mutex>& lock) {
    std::uint32_t offs[256];
    std::vector<std::uint32_t> notify;
    std::vector<Frame*> detached;  // freed together, in one CAS
    std::size_t total = 0;
    const auto& g = s.geometry();
    for (;;) {
      const std::size_t n = s.completion.pop_batch(std::span<std::uint32_t>(offs, 256));
      if (n == 0) break;
      total += n;
      // The daemon's core wrote these frames; whoever reads the results and frees the
      // frames next will find their lines here.
      for (std::size_t i = 0; i < n; ++i) __builtin_prefetch(s.base + (offs[i] % g.size), 1);
      for (std::size_t i = 0; i < n; ++i) {
        if (!g.frame_offset_valid(offs[i])) continue;
        const std::uint32_t idx = s.index_of(offs[i]);
        // Until the exchange below publishes kDone, only the drainer touches owned_buffer:
        // a buffer submit() copied the environment into goes back now unless the result
        // lives in it, so that a caller holding handles does not hold buffers too.
        if (FrameState& st = s.states[idx]; !st.owned_buffer.empty() && !result_in_env(s, idx)) {
          free_buffer(s, st.owned_buffer);
          st.owned_buffer = {};
        }
        const std::uint8_t prev = s.states[idx].state.exchange(kDone, std::memory_order_acq_rel);
        switch (prev) {
          case kInFlight:
            break;
          case kDetached:
            release_state(s, idx);
            detached.push_back(s.arena.frame(idx));
            break;
          case kCallback:
          case kAwaited:
            notify.push_back(idx);
            break;
          default:
            s.states[idx].state.store(prev, std::memory_order_relaxed);
            break;  // not ours: ignore
        }
      }
    }
    s.arena.free(std::span<Frame* const>(detached));
    s.peek_head.store(s.completion.head(), std::memory_order_relaxed);
    completed.fetch_add(total, std::memory_order_relaxed);
    lock.unlock();
    if (total != 0) {
      // Other threads of this process may be waiting for what we took.
      shm::event_notify(s.doorbells->completion, INT_MAX);
    }
    run_notifications(s, notify);
    return total;
  }

  void run_notifications(Session& s, const std::vector<std::uint32_t>& notify) {
    for (std::uint32_t idx : notify) {
      FrameState& st = s.states[idx];
      if (st.coro) {
        auto c = st.coro;
        st.coro = nullptr;
        c.resume();
      } else if (st.callback) {
        auto cb = std::move(st.callback);
        st.callback = nullptr;
        cb(result_of(s, idx));
        free_frame(s, idx);
      }
    }
  }

  std::size_t poll(Session& s) {
    if (!s.has_segment || s.lost.load(std::memory_order_acquire)) return 0;
    std::unique_lock lock(s.drain_mu, std::try_to_lock);
    if (!lock.owns_lock()) return 0;
    return drain(s, lock);
  }
  std::size_t poll() { return poll(*cur()); }

  // Completes frame `idx` of `s` here, without a daemon (kDaemonLost and the like): the
  // status in the frame, then the state; returns whether a callback or coroutine waits.
  bool complete_locally(Session& s, std::uint32_t idx, Status st,
                        std::vector<std::uint32_t>* notify) {
    Frame* f = s.arena.frame(idx);
    f->status = static_cast<std::uint16_t>(st);
    f->detail = 0;
    f->result_len = 0;
    f->flags = static_cast<std::uint16_t>(f->flags & ~shm::kFrameResultInline);
    if (st == Status::kDaemonLost) lost_count.fetch_add(1, std::memory_order_relaxed);
    const std::uint8_t prev = s.states[idx].state.exchange(kDone, std::memory_order_acq_rel);
    if (prev == kDetached) {
      free_frame(s, idx);
    } else if (prev == kCallback || prev == kAwaited) {
      notify->push_back(idx);
      return true;
    }
    return false;
  }

  // The frames still in `s`'s submit ring: pushed and never taken by the daemon. A slot
  // the daemon took holds the tag of the next lap (C2 in ring.h), so the tags tell
  // exactly, whatever the daemon's `head` hint says. A slot reserved but not yet
  // published belongs to a submitter between its CAS and its store: waited for briefly.
  std::vector<std::uint32_t> unaccepted(Session& s) {
    std::vector<std::uint32_t> out;
    const auto& g = s.geometry();
    shm::RingView v(s.base + g.submit_ring_off, g.ring_capacity);
    // One slot: "published" and "consumed" have the same tag; count them all as taken.
    if (g.ring_capacity < 2) return out;
    const std::uint64_t tail = v.header()->tail.load(std::memory_order_acquire);
    const std::uint64_t first = tail > g.ring_capacity ? tail - g.ring_capacity : 0;
    for (std::uint64_t p = first; p < tail; ++p) {
      std::uint64_t word = v.slot(p).load(std::memory_order_acquire);
      for (int spins = 0; static_cast<std::uint32_t>(word >> 32) == static_cast<std::uint32_t>(p) &&
                          spins < 10'000;
           ++spins) {
        std::this_thread::yield();
        word = v.slot(p).load(std::memory_order_acquire);
      }
      if (static_cast<std::uint32_t>(word >> 32) != static_cast<std::uint32_t>(p + 1)) continue;
      const auto off = static_cast<std::uint32_t>(word);
      if (g.frame_offset_valid(off)) out.push_back(s.index_of(off));
    }
    return out;
  }

  // The daemon of `s` is gone: takes what it completed, keeps what it never accepted
  // for the next daemon (or fails it when there will be none) and fails what it had
  // accepted with kDaemonLost. Serialized calls and lookups in flight fail too.
  void sweep(Session& s, std::string why) {
    {
      std::lock_guard l(lost_mu);
      lost_reason = std::move(why);
    }
    s.lost_at = std::chrono::steady_clock::now();
    s.lost.store(true, std::memory_order_seq_cst);  // L1
    shm::full_barrier();                            // F2: pairs with F1 in submit
    std::vector<std::uint32_t> notify;
    if (s.has_segment) {
      // What the daemon completed before it went (its completions precede its Goodbye
      // or its death) is a result, not a loss: take it first. drain() unlocks.
      {
        std::unique_lock lock(s.drain_mu);
        drain(s, lock);
      }
      std::vector<char> keep(s.arena.frame_count(), 0);
      if (options.reconnect && !given_up.load(std::memory_order_acquire)) {
        for (std::uint32_t idx : unaccepted(s)) keep[idx] = 1;
      }
      std::lock_guard olock(orphans_mu);
      std::lock_guard lock(s.drain_mu);
      for (std::uint32_t i = 0; i < s.arena.frame_count(); ++i) {
        const std::uint8_t st = s.states[i].state.load(std::memory_order_acquire);
        if (st != kInFlight && st != kCallback && st != kAwaited && st != kDetached) continue;
        if (keep[i]) {
          orphans.emplace_back(&s, i);
        } else {
          complete_locally(s, i, Status::kDaemonLost, &notify);
        }
      }
      // Wake every waiter of this process: they see `lost`.
      s.doorbells->completion.seq.fetch_add(1, std::memory_order_release);
      shm::futex_wake(&s.doorbells->completion.seq, INT_MAX);
      s.doorbells->space.seq.fetch_add(1, std::memory_order_release);
      shm::futex_wake(&s.doorbells->space.seq, INT_MAX);
    }
    s.swept.store(true, std::memory_order_release);
    run_notifications(s, notify);
    std::lock_guard l(calls_mu);
    for (auto& [tag, p] : calls) {
      SerialResult r;
      r.status = Status::kDaemonLost;
      r.error = "daemon lost: " + reason();
      p.set_value(std::move(r));
    }
    calls.clear();
    for (auto& [tag, p] : lookups) p.set_value(v1::LookupResult{});  // not found; lost is set
    lookups.clear();
    for (auto& [tag, p] : fd_results) {
      v1::FdResult r;
      r.set_error("daemon lost: " + reason());
      p.set_value(std::move(r));
    }
    fd_results.clear();
  }

  // Copies frame `idx` of the lost session `from` (and its environment) into `to`, hands
  // its handle, callback or coroutine over and returns the new index; nullopt when `to`
  // has no room or does not know the function (the caller fails it).
  std::optional<std::uint32_t> copy_frame(Session& from, std::uint32_t idx, Session& to,
                                          Status* why) {
    const Frame src = *from.arena.frame(idx);
    *why = Status::kDaemonLost;
    const std::string name = from.name_of(src.fn);
    std::optional<std::uint32_t> fn = name.empty() ? std::nullopt : to.id_of(name);
    if (!fn) {
      *why = Status::kUnknownFunction;
      return std::nullopt;
    }
    std::span<std::byte> env;
    if (!(src.flags & shm::kFrameEnvInline) && src.env_len != 0) {
      if (!from.geometry().buffer_range_valid(src.env_off, src.env_len)) {
        *why = Status::kInvalidArgument;
        return std::nullopt;
      }
      env = try_buffer(to, src.env_len);
      if (env.empty()) return std::nullopt;
      std::memcpy(env.data(), from.base + src.env_off, src.env_len);
    }
    Frame* f = to.arena.allocate();
    if (f == nullptr) {
      if (!env.empty()) free_buffer(to, env);
      return std::nullopt;
    }
    std::memcpy(static_cast<void*>(f), &src, sizeof(Frame));
    f->fn = *fn;
    f->flags = static_cast<std::uint16_t>(src.flags & shm::kFrameKnownFlags);
    f->status = 0;
    f->detail = 0;
    f->result = 0;
    f->result_len = 0;
    if (!env.empty())
      f->env_off = static_cast<std::uint32_t>(reinterpret_cast<char*>(env.data()) - to.base);
    const std::uint32_t ni = to.arena.index_of(f);
    to.states[ni].owned_buffer = env;
    // Its deadline goes along (CLOCK_MONOTONIC: the same on the next daemon).
    to.controls[ni].deadline_ns.store(
        from.controls[idx].deadline_ns.load(std::memory_order_relaxed), std::memory_order_relaxed);
    return ni;
  }

  // Hands the never-accepted frame (`from`, idx) to `to` (not yet or already current)
  // and pushes it; on no room, fails it with kDaemonLost. Under orphans_mu.
  void move_orphan(Session& from, std::uint32_t idx, Session* to,
                   std::vector<std::pair<Session*, std::uint32_t>>* notify) {
    Status why = Status::kDaemonLost;
    std::optional<std::uint32_t> ni;
    if (to != nullptr) ni = copy_frame(from, idx, *to, &why);
    if (!ni) {
      std::vector<std::uint32_t> n;
      complete_locally(from, idx, why, &n);
      for (auto i : n) notify->emplace_back(&from, i);
      return;
    }
    FrameState& os = from.states[idx];
    FrameState& ns = to->states[*ni];
    ns.state.store(kInFlight, std::memory_order_relaxed);
    os.moved_to = to;
    os.moved_idx = *ni;
    // M1: publishes moved_to/moved_idx and the new frame to Handle::resolve() (acquire);
    // acquires a callback or coroutine stored before a then()/co_await CAS.
    const std::uint8_t prev = os.state.exchange(kMoved, std::memory_order_acq_rel);
    if (prev == kCallback) {
      ns.callback = std::move(os.callback);
      ns.state.store(kCallback, std::memory_order_release);
    } else if (prev == kAwaited) {
      ns.coro = std::exchange(os.coro, nullptr);
      ns.state.store(kAwaited, std::memory_order_release);
    } else if (prev == kDetached) {
      ns.state.store(kDetached, std::memory_order_release);
    }
    Frame* f = to->arena.frame(*ni);
    if (!to->submit.try_push(to->arena.offset_of(f))) {
      // Full (other submitters came first): fail it rather than wait under the lock.
      std::vector<std::uint32_t> n;
      complete_locally(*to, *ni, Status::kDaemonLost, &n);
      for (auto i : n) notify->emplace_back(to, i);
      return;
    }
    resubmitted.fetch_add(1, std::memory_order_relaxed);
  }

  // Moves (to `to`) or fails (to == nullptr) every orphan of `from`. Under orphans_mu.
  void settle_orphans(Session& from, Session* to,
                      std::vector<std::pair<Session*, std::uint32_t>>* notify) {
    std::size_t moved = 0;
    for (auto it = orphans.begin(); it != orphans.end();) {
      if (it->first != &from) {
        ++it;
        continue;
      }
      move_orphan(from, it->second, to, notify);
      it = orphans.erase(it);
      ++moved;
    }
    from.orphans_settled = true;
    if (to != nullptr && moved != 0) to->bell.ring();
  }

  void notify_all(const std::vector<std::pair<Session*, std::uint32_t>>& notify) {
    for (const auto& [s, i] : notify) run_notifications(*s, {i});
  }

  // A submitter saw `lost` after pushing frames `idx` into `s`: the sweep may have missed
  // them (they were not in flight yet when it looked). Whoever changes their state first
  // settles them: the sweep (failed or kept), or this, which keeps them for the next daemon.
  void after_lost_push(Session& s, std::span<const std::uint32_t> idx) {
    while (!s.swept.load(std::memory_order_acquire)) std::this_thread::yield();
    std::vector<std::pair<Session*, std::uint32_t>> notify;
    {
      std::lock_guard l(orphans_mu);
      bool added = false;
      for (std::uint32_t i : idx) {
        const bool known = std::any_of(orphans.begin(), orphans.end(), [&](const auto& o) {
          return o.first == &s && o.second == i;
        });
        const std::uint8_t st = s.states[i].state.load(std::memory_order_acquire);
        if (known || st == kDone || st == kMoved || st == kFree) continue;
        orphans.emplace_back(&s, i);
        added = true;
      }
      if (added && s.orphans_settled) {
        // The monitor is past this session: settle here, into the next daemon if it came.
        Session* n = cur();
        settle_orphans(s, n != &s && !n->lost.load(std::memory_order_acquire) ? n : nullptr,
                       &notify);
      }
    }
    notify_all(notify);
  }

  // Receives from the daemon until it goes; returns why.
  std::string monitor_session(Session& s) {
    for (;;) {
      v1::DaemonMessage m;
      int err = 0;
      const auto st = v1::recv_message(s.sock, &m, nullptr, &err);
      if (closing.load(std::memory_order_acquire)) return "the client is closing";
      if (st == v1::RecvStatus::kClosed) return "the daemon closed the connection";
      if (st == v1::RecvStatus::kError)
        return std::string("registration socket: ") + std::strerror(err);
      if (st != v1::RecvStatus::kOk) continue;
      if (m.has_goodbye()) {
        s.disconnected = m.goodbye().disconnected();
        return m.goodbye().reason();
      }
      if (m.has_lookup_result()) {
        std::lock_guard l(calls_mu);
        auto it = lookups.find(m.lookup_result().tag());
        if (it == lookups.end()) continue;
        it->second.set_value(m.lookup_result());
        lookups.erase(it);
        continue;
      }
      if (m.has_fd_result()) {
        std::lock_guard l(calls_mu);
        auto it = fd_results.find(m.fd_result().tag());
        if (it == fd_results.end()) continue;
        it->second.set_value(m.fd_result());
        fd_results.erase(it);
        continue;
      }
      if (m.has_result()) {
        const auto& r = m.result();
        std::lock_guard l(calls_mu);
        auto it = calls.find(r.tag());
        if (it == calls.end()) continue;
        SerialResult out;
        out.status = from_proto(r.status());
        out.error = r.error();
        out.value = r.value();
        out.data = r.data();
        it->second.set_value(std::move(out));
        calls.erase(it);
      }
    }
  }

  void give_up(Session& s, std::vector<std::pair<Session*, std::uint32_t>>* notify) {
    given_up.store(true, std::memory_order_release);
    {
      std::lock_guard l(orphans_mu);
      settle_orphans(s, nullptr, notify);
    }
    std::lock_guard l(sessions_mu);
    sessions_cv.notify_all();
  }

  // Sleeps `d` or until the client closes.
  void nap(std::chrono::milliseconds d) {
    std::unique_lock l(sessions_mu);
    sessions_cv.wait_for(l, d, [&] { return closing.load(std::memory_order_acquire); });
  }

  // After `old` was lost: registers with the next daemon (backoff 1 ms doubling to 50 ms,
  // then 500 ms once reconnect_wait has passed), moves the never-accepted frames into its
  // segment and makes it current. False when the client closes or gives up.
  bool reconnect(Session& old) {
    const auto deadline = old.lost_at + options.reconnect_wait;
    auto backoff = std::chrono::milliseconds(1);
    for (;;) {
      if (closing.load(std::memory_order_acquire)) return false;
      int cerr = 0;
      auto next = open_session(options, socket_path, &cerr);
      std::vector<std::pair<Session*, std::uint32_t>> notify;
      if (next.ok()) {
        Session* n = next->get();
        if (n->generation == old.generation) {
          // The same daemon: it disconnected this client on purpose (evicted, or its rings
          // made no sense). Coming back would undo that.
          {
            std::lock_guard l(lost_mu);
            lost_reason += " (the daemon disconnected this client; not reconnecting)";
          }
          give_up(old, &notify);
          notify_all(notify);
          return false;
        }
        {
          std::lock_guard l(sessions_mu);
          sessions.push_back(std::move(*next));
        }
        {
          std::lock_guard l(orphans_mu);
          settle_orphans(old, n, &notify);
          current.store(n, std::memory_order_release);  // R1: pairs with R2 in cur()
        }
        reconnects.fetch_add(1, std::memory_order_relaxed);
        {
          std::lock_guard l(sessions_mu);
          sessions_cv.notify_all();
        }
        notify_all(notify);
        return true;
      }
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) {
        std::lock_guard l(orphans_mu);
        if (!old.orphans_settled) settle_orphans(old, nullptr, &notify);
      }
      notify_all(notify);
      nap(now >= deadline ? std::chrono::milliseconds(500) : backoff);
      backoff = std::min(backoff * 2, std::chrono::milliseconds(50));
    }
  }

  void monitor_loop() {
    for (;;) {
      Session& s = *cur();
      std::string why = monitor_session(s);
      if (closing.load(std::memory_order_acquire)) return;
      if (!options.reconnect || s.disconnected) given_up.store(true, std::memory_order_release);
      sweep(s, std::move(why));
      if (given_up.load(std::memory_order_acquire)) {
        std::vector<std::pair<Session*, std::uint32_t>> notify;
        give_up(s, &notify);  // late orphans (after_lost_push) too
        notify_all(notify);
        return;
      }
      if (!reconnect(s)) return;
    }
  }

  // Waits for `done()`, draining completions of the session `where()` names meanwhile.
  // False on timeout. While that session's daemon is lost, the continuation is settled by
  // the sweep, the next daemon or reconnect_wait: it naps in 1 ms slices.
  template <class Done, class Where>
  bool wait_until(Done&& done, Where&& where,
                  std::optional<std::chrono::steady_clock::time_point> deadline) {
    const auto spin_until = std::chrono::steady_clock::now() + options.spin;
    std::uint32_t spins = 0;
    for (;;) {
      if (done()) return true;
      Session& s = *where();
      poll(s);
      if (done()) return true;
      const auto now = std::chrono::steady_clock::now();
      if (deadline && now >= *deadline) return false;
      if (s.lost.load(std::memory_order_acquire)) {  // L2
        auto slice = std::chrono::nanoseconds(std::chrono::milliseconds(1));
        if (deadline) slice = std::min<std::chrono::nanoseconds>(slice, *deadline - now);
        std::this_thread::sleep_for(slice);
        continue;
      }
      if (options.idle == shm::IdleStrategy::kPoll ||
          (options.idle == shm::IdleStrategy::kSpinThenBlock && now < spin_until)) {
        for (int i = 0; i < 16; ++i) shm::cpu_relax();
        // As the daemon's workers do: a bounded spin must not keep a thread that shares
        // this CPU (a worker about to complete what we wait for, another client) off it.
        // kPoll means a CPU of its own: no yield.
        if (options.idle == shm::IdleStrategy::kSpinThenBlock && (++spins & 63) == 0) sched_yield();
        continue;
      }
      std::optional<std::chrono::nanoseconds> timeout;
      if (deadline) timeout = *deadline - now;
      shm::event_wait(
          s.doorbells->completion,
          [&] { return s.completion_ready() || done() || s.lost.load(std::memory_order_acquire); },
          timeout);
    }
  }
};

// ---- Handle -------------------------------------------------------------------------

Handle& Handle::operator=(Handle&& o) noexcept {
  if (this != &o) {
    reset();
    client_ = o.client_;
    session_ = o.session_;
    index_ = o.index_;
    o.client_ = nullptr;
  }
  return *this;
}

void Handle::resolve() const noexcept {
  if (client_ == nullptr) return;
  // M2: pairs with M1 in Impl::move_orphan(): moved_to, moved_idx and the new frame's
  // state are visible once kMoved is.
  while (session_->states[index_].state.load(std::memory_order_acquire) == kMoved) {
    const FrameState& s = session_->states[index_];
    index_ = s.moved_idx;
    session_ = s.moved_to;
  }
}

bool Handle::done() const noexcept {
  if (client_ == nullptr) return false;
  resolve();
  return session_->states[index_].state.load(std::memory_order_acquire) == kDone;
}

bool Handle::poll() {
  if (client_ == nullptr) return false;
  if (done()) return true;
  client_->impl_->poll(*session_);
  return done();
}

Status Handle::wait() {
  if (client_ == nullptr) return Status::kInvalidArgument;
  client_->impl_->wait_until([this] { return done(); },
                             [this] {
                               resolve();
                               return session_;
                             },
                             std::nullopt);
  return done() ? static_cast<Status>(frame()->status) : Status::kDaemonLost;
}

std::optional<Status> Handle::wait_for(std::chrono::nanoseconds timeout) {
  if (client_ == nullptr) return Status::kInvalidArgument;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  if (!client_->impl_->wait_until([this] { return done(); },
                                  [this] {
                                    resolve();
                                    return session_;
                                  },
                                  deadline))
    return std::nullopt;
  return done() ? static_cast<Status>(frame()->status) : Status::kDaemonLost;
}

Result Handle::result() const {
  if (client_ == nullptr || !done()) return Result{};
  return Client::Impl::result_of(*session_, index_);
}

Frame* Handle::frame() const noexcept {
  if (client_ == nullptr) return nullptr;
  resolve();
  return session_->arena.frame(index_);
}

void Handle::then(std::function<void(const Result&)> fn) && {
  if (client_ == nullptr) return;
  auto& impl = *client_->impl_;
  for (;;) {
    resolve();
    FrameState& s = session_->states[index_];
    s.callback = std::move(fn);
    std::uint8_t expected = kInFlight;
    // Release: publishes the callback to the drainer's exchange (acq_rel).
    if (s.state.compare_exchange_strong(expected, kCallback, std::memory_order_acq_rel)) break;
    fn = std::move(s.callback);
    s.callback = nullptr;
    if (expected == kMoved) continue;  // follow it into the new segment
    // Already done: run it here.
    fn(Client::Impl::result_of(*session_, index_));
    impl.free_frame(*session_, index_);
    break;
  }
  client_ = nullptr;
}

bool Handle::Awaiter::await_suspend(std::coroutine_handle<> c) {
  for (;;) {
    h.resolve();
    FrameState& s = h.session_->states[h.index_];
    s.coro = c;
    std::uint8_t expected = kInFlight;
    if (s.state.compare_exchange_strong(expected, kAwaited, std::memory_order_acq_rel)) return true;
    s.coro = nullptr;
    if (expected != kMoved) return false;  // completed meanwhile: resume at once
  }
}

bool Handle::cancel() {
  if (client_ == nullptr || done()) return false;
  auto& d = *client_->impl_;
  resolve();  // the session its frame is in now (it may have moved to a new daemon)
  Session& s = *session_;
  // A cancel entry follows the submission in the ring, so the daemon meets it after it
  // accepted the frame (shm::kSubmitCancel): a no-op there if the frame completed.
  const std::uint32_t entry = shm::kSubmitCancel | index_;
  bool pushed = false;
  if (!d.wait_for_room(s, [&] { return done() || (pushed = s.submit.try_push(entry)); }) || !pushed)
    return false;
  s.bell.ring();
  return true;
}

void Handle::reset() noexcept {
  if (client_ == nullptr) return;
  auto& impl = *client_->impl_;
  for (;;) {
    resolve();
    FrameState& s = session_->states[index_];
    std::uint8_t expected = kInFlight;
    if (s.state.compare_exchange_strong(expected, kDetached, std::memory_order_acq_rel)) break;
    if (expected == kMoved) continue;
    // Completed (kDone): the frame is ours to free.
    impl.free_frame(*session_, index_);
    break;
  }
  client_ = nullptr;
}

// ---- Client ------------------------------------------------------------------------

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Client::~Client() {
  auto& d = *impl_;
  d.closing.store(true, std::memory_order_release);
  if (d.dispatcher.joinable()) {
    d.stop_dispatcher.store(true, std::memory_order_release);
    Session* s = d.cur();
    if (s->has_segment) {
      s->doorbells->completion.seq.fetch_add(1, std::memory_order_release);
      shm::futex_wake(&s->doorbells->completion.seq, INT_MAX);
    }
    d.dispatcher.join();
  }
  // The monitor reads the current session's socket or sleeps between reconnection
  // attempts; it may make a new session current meanwhile, so shut down until it is out.
  while (d.monitor.joinable() && !d.monitor_done.load(std::memory_order_acquire)) {
    {
      std::lock_guard l(d.sessions_mu);
      d.sessions_cv.notify_all();
    }
    ::shutdown(d.cur()->sock, SHUT_RDWR);
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  if (d.monitor.joinable()) d.monitor.join();
}

absl::StatusOr<std::unique_ptr<Client>> Client::connect(ClientOptions options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->socket_path =
      !options.socket_path.empty()
          ? options.socket_path
          : (options.runtime_dir.empty() ? shm::default_runtime_dir() : options.runtime_dir) + "/" +
                shm::kDaemonSocketName;
  // A daemon that is starting has no socket yet (ENOENT) or does not accept yet
  // (ECONNREFUSED): retry those with backoff up to options.wait.
  const auto started = std::chrono::steady_clock::now();
  const auto deadline = started + options.wait;
  auto backoff = std::chrono::milliseconds(1);
  absl::StatusOr<std::unique_ptr<Session>> first = absl::UnknownError("not tried");
  for (;;) {
    int cerr = 0;
    first = open_session(options, impl->socket_path, &cerr);
    if (first.ok() || (cerr != ENOENT && cerr != ECONNREFUSED)) break;
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) {
      if (options.wait.count() > 0) {
        first = absl::UnavailableError(
            std::string(first.status().message()) + "; waited " +
            std::to_string(
                std::chrono::duration_cast<std::chrono::milliseconds>(now - started).count()) +
            " ms (ClientOptions::wait)");
      }
      break;
    }
    std::this_thread::sleep_for(std::min<std::chrono::nanoseconds>(backoff, deadline - now));
    backoff = std::min(backoff * 2, std::chrono::milliseconds(50));
  }
  if (!first.ok()) return first.status();
  Session* raw_s = first->get();
  impl->sessions.push_back(std::move(*first));
  impl->current.store(raw_s, std::memory_order_release);  // R1: no other thread yet
  Impl* raw = impl.get();
  impl->monitor = std::thread([raw] {
    // Relaxed: compared only by the thread itself (other threads never see their own id).
    raw->monitor_id.store(std::this_thread::get_id(), std::memory_order_relaxed);
    raw->monitor_loop();
    raw->monitor_done.store(true, std::memory_order_release);
  });
  std::unique_ptr<Client> client(new Client(std::move(impl)));
  if (options.dispatcher && raw_s->has_segment) {
    raw->dispatcher = std::thread([raw] {
      while (!raw->stop_dispatcher.load(std::memory_order_acquire)) {
        Session& s = *raw->cur();
        if (s.lost.load(std::memory_order_acquire)) {
          if (raw->given_up.load(std::memory_order_acquire)) return;
          raw->nap(std::chrono::milliseconds(1));  // the next daemon, or closing
          continue;
        }
        if (raw->poll(s) == 0) {
          shm::event_wait(
              s.doorbells->completion,
              [raw, &s] {
                return s.completion_ready() ||
                       raw->stop_dispatcher.load(std::memory_order_acquire) ||
                       s.lost.load(std::memory_order_acquire);
              },
              std::nullopt);
        }
      }
    });
  }
  return client;
}

const std::vector<FunctionInfo>& Client::functions() const noexcept {
  return impl_->cur()->functions;
}

namespace {

// Edit distance between two names, at most limit + 1.
std::size_t name_distance(std::string_view a, std::string_view b, std::size_t limit) {
  // Optimal string alignment: insertions, deletions, substitutions and transpositions of
  // two neighbours ("chian" is one edit from "chain"). Names are short.
  if ((a.size() > b.size() ? a.size() - b.size() : b.size() - a.size()) > limit) return limit + 1;
  std::vector<std::size_t> prev2(b.size() + 1), prev(b.size() + 1), row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      row[j] =
          std::min({prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0u : 1u)});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        row[j] = std::min(row[j], prev2[j - 2] + 1);
    }
    std::swap(prev2, prev);
    std::swap(prev, row);
  }
  return std::min(prev[b.size()], limit + 1);
}

absl::Status unknown_function(std::string_view name, const std::string& suggestion) {
  std::string m = "insideoutd has no function '" + std::string(name) + "'";
  if (!suggestion.empty()) m += "; did you mean '" + suggestion + "'?";
  return absl::NotFoundError(m);
}

// A function's id in session `s`: from its Welcome, learned, or asked of its daemon.
absl::StatusOr<std::uint32_t> function_id_in(Client::Impl& d, Session& s, std::string_view name) {
  if (auto id = s.id_of(name)) return *id;
  if (!s.daemon_lookup || s.lost.load(std::memory_order_acquire)) {
    // The nearest name this client knows of.
    const std::size_t limit = std::clamp<std::size_t>(name.size() / 3, 1, 3);
    std::string best;
    std::size_t best_d = limit + 1;
    for (const auto& f : s.functions) {
      const std::size_t dist = name_distance(name, f.name, limit);
      if (dist < best_d) best_d = dist, best = f.name;
    }
    return unknown_function(name, best);
  }
  // A function registered since the Welcome (a plugin loaded live): ask the daemon.
  std::future<v1::LookupResult> fut;
  v1::ClientMessage m;
  {
    std::lock_guard l(d.calls_mu);
    const std::uint64_t tag = d.next_tag++;
    fut = d.lookups[tag].get_future();
    m.mutable_lookup()->set_name(std::string(name));
    m.mutable_lookup()->set_tag(tag);
  }
  {
    std::lock_guard l(d.send_mu);
    if (int e = v1::send_message(s.sock, m); e != 0) {
      std::lock_guard l2(d.calls_mu);
      d.lookups.erase(m.lookup().tag());
      return absl::UnavailableError(std::string("sending to insideoutd: ") + std::strerror(e));
    }
  }
  if (fut.wait_for(std::chrono::seconds(5)) != std::future_status::ready) {
    std::lock_guard l(d.calls_mu);
    if (d.lookups.erase(m.lookup().tag()) != 0)
      return absl::DeadlineExceededError("insideoutd did not answer a function lookup in 5 s");
  }
  const v1::LookupResult r = fut.get();
  if (!r.found() && s.lost.load(std::memory_order_acquire))
    return absl::UnavailableError("daemon lost: " + d.reason());
  if (!r.found()) return unknown_function(name, r.suggestion());
  const auto& f = r.function();
  std::lock_guard l(s.learned_mu);
  s.learned[f.name()] = FunctionInfo{f.name(), f.id(), f.needs_buffer(), f.max_arg(), f.help()};
  return f.id();
}

bool is_lost(const absl::Status& st) {
  return absl::IsUnavailable(st) && st.message().find("daemon lost") != std::string_view::npos;
}

}  // namespace

absl::StatusOr<std::uint32_t> Client::function_id(std::string_view name) const {
  auto& d = *impl_;
  Session* s = d.live_session();
  return function_id_in(d, s != nullptr ? *s : *d.cur(), name);
}

Frame* Client::allocate_frame() noexcept {
  Session& s = *impl_->cur();
  if (!s.has_segment) return nullptr;
  Frame* f = s.arena.allocate();
  if (f != nullptr) std::memset(static_cast<void*>(f), 0, sizeof(Frame));
  return f;
}

std::size_t Client::allocate_frames(std::span<Frame*> out) noexcept {
  Session& s = *impl_->cur();
  if (!s.has_segment) return 0;
  const std::size_t n = s.arena.allocate(out);
  for (std::size_t i = 0; i < n; ++i) std::memset(static_cast<void*>(out[i]), 0, sizeof(Frame));
  return n;
}

void Client::release_frame(Frame* f) noexcept {
  Session* s = impl_->cur();
  if (!s->owns_frame(f)) s = impl_->owner_of(f);
  if (s != nullptr) s->arena.free(f);
}

std::span<std::byte> Client::allocate_buffer(std::size_t bytes) {
  auto b = allocate_buffer_or_error(bytes);
  return b.ok() ? *b : std::span<std::byte>{};
}

absl::StatusOr<std::span<std::byte>> Client::allocate_buffer_or_error(std::size_t bytes) {
  auto& d = *impl_;
  if (!d.cur()->has_segment)
    return absl::FailedPreconditionError("this client has no segment (want_segment = false)");
  if (bytes == 0) return absl::InvalidArgumentError("a buffer of 0 bytes");
  Session* sp = d.live_session();
  if (sp == nullptr) return d.lost_error();
  Session& s = *sp;
  const auto& g = s.geometry();
  const std::uint64_t n64 = (bytes + g.buffer_block_size - 1) / g.buffer_block_size;
  if (n64 > g.buffer_block_count) {
    return absl::ResourceExhaustedError(Impl::buffers_hint(s, bytes) + ": larger than all of them");
  }
  const auto n = static_cast<std::uint32_t>(n64);
  long first = -1;
  if (!d.wait_for_room(s, [&] { return (first = s.buffers.allocate(n)) >= 0; })) {
    if (s.lost.load(std::memory_order_acquire)) return d.lost_error();
    if (d.options.on_full == OnFull::kWait) {
      return absl::DeadlineExceededError(Impl::buffers_hint(s, bytes) + " after waiting " +
                                         std::to_string(d.options.full_timeout.count()) +
                                         " ms (ClientOptions::full_timeout)");
    }
    return absl::ResourceExhaustedError(Impl::buffers_hint(s, bytes));
  }
  auto* p = reinterpret_cast<std::byte*>(s.base + g.buffers_off +
                                         static_cast<std::size_t>(first) * g.buffer_block_size);
  return std::span<std::byte>(p, bytes);
}

void Client::free_buffer(std::span<std::byte> buffer) {
  if (buffer.empty()) return;
  Session* s = impl_->cur();
  const char* p = reinterpret_cast<const char*>(buffer.data());
  // Usually the current segment's; else a previous daemon's (looked up under a lock).
  if (!s->has_segment || p < s->base || p >= s->base + s->geometry().size)
    s = impl_->owner_of(buffer.data());
  if (s != nullptr) impl_->free_buffer(*s, buffer);
}

std::uint32_t Client::offset_of(const void* p) const noexcept {
  Session* s = impl_->cur();
  const char* c = static_cast<const char*>(p);
  if (s->has_segment && !(c >= s->base && c < s->base + s->geometry().size)) {
    if (Session* o = impl_->owner_of(p); o != nullptr) s = o;
  }
  return static_cast<std::uint32_t>(c - s->base);
}

absl::StatusOr<Handle> Client::submit(std::string_view function, std::span<const std::byte> env,
                                      std::uint64_t arg) {
  return submit(function, env, arg, SubmitOptions{});
}

absl::StatusOr<Handle> Client::submit(std::uint32_t function_id, std::span<const std::byte> env,
                                      std::uint64_t arg) {
  return submit(function_id, env, arg, SubmitOptions{});
}

absl::StatusOr<Handle> Client::submit(std::string_view function, std::span<const std::byte> env,
                                      std::uint64_t arg, const SubmitOptions& options) {
  auto& d = *impl_;
  // A daemon lost between the lookup and the push: once more on the next one.
  for (int attempt = 0;; ++attempt) {
    Session* s = d.live_session();
    if (s == nullptr) return d.lost_error();
    auto id = function_id_in(d, *s, function);
    if (!id.ok() && is_lost(id.status()) && attempt < 2) continue;
    if (!id.ok()) return id.status();
    auto h = submit_in(*s, *id, env, arg, options);
    if (!h.ok() && is_lost(h.status()) && attempt < 2) continue;
    return h;
  }
}

absl::StatusOr<Handle> Client::submit(std::uint32_t function_id, std::span<const std::byte> env,
                                      std::uint64_t arg, const SubmitOptions& options) {
  Session* s = impl_->live_session();
  if (s == nullptr) return impl_->lost_error();
  return submit_in(*s, function_id, env, arg, options);
}

absl::StatusOr<Handle> Client::submit_in(detail::Session& s, std::uint32_t function_id,
                                         std::span<const std::byte> env, std::uint64_t arg,
                                         const SubmitOptions& options) {
  auto& d = *impl_;
  if (!s.has_segment)
    return absl::FailedPreconditionError("this client has no segment (want_segment = false)");
  Frame* f = nullptr;
  auto take = [&] {
    f = s.arena.allocate();
    if (f != nullptr) std::memset(static_cast<void*>(f), 0, sizeof(Frame));
    return f != nullptr;
  };
  if (!d.wait_for_room(s, take)) {
    if (s.lost.load(std::memory_order_acquire)) return d.lost_error();
    if (d.options.on_full == OnFull::kWait) {
      return absl::DeadlineExceededError(Impl::frames_hint(s) + " (waited " +
                                         std::to_string(d.options.full_timeout.count()) +
                                         " ms, ClientOptions::full_timeout)");
    }
    return absl::ResourceExhaustedError(Impl::frames_hint(s));
  }
  f->fn = function_id;
  f->arg = arg;
  std::span<std::byte> owned;
  if (env.size() <= shm::kInlineCapacity) {
    f->flags = shm::kFrameEnvInline;
    f->env_len = static_cast<std::uint32_t>(env.size());
    if (!env.empty()) std::memcpy(f->inline_data, env.data(), env.size());
  } else {
    const auto& g = s.geometry();
    const std::uint64_t n64 = (env.size() + g.buffer_block_size - 1) / g.buffer_block_size;
    long first = -1;
    if (n64 > g.buffer_block_count || !d.wait_for_room(s, [&] {
          return (first = s.buffers.allocate(static_cast<std::uint32_t>(n64))) >= 0;
        })) {
      s.arena.free(f);
      if (s.lost.load(std::memory_order_acquire)) return d.lost_error();
      if (n64 <= g.buffer_block_count && d.options.on_full == OnFull::kWait) {
        return absl::DeadlineExceededError(Impl::buffers_hint(s, env.size()) + " after waiting " +
                                           std::to_string(d.options.full_timeout.count()) +
                                           " ms (ClientOptions::full_timeout)");
      }
      return absl::ResourceExhaustedError(Impl::buffers_hint(s, env.size()));
    }
    owned = {reinterpret_cast<std::byte*>(s.base + g.buffers_off +
                                          static_cast<std::size_t>(first) * g.buffer_block_size),
             env.size()};
    std::memcpy(owned.data(), env.data(), env.size());
    f->env_off = static_cast<std::uint32_t>(reinterpret_cast<char*>(owned.data()) - s.base);
    f->env_len = static_cast<std::uint32_t>(env.size());
  }
  const std::uint32_t idx = s.arena.index_of(f);
  s.states[idx].owned_buffer = owned;
  auto h = push_in(s, f, options);
  if (!h.ok()) {
    s.states[idx].owned_buffer = {};
    if (!owned.empty()) d.free_buffer(s, owned);
    s.arena.free(f);
  }
  return h;
}

absl::StatusOr<Handle> Client::submit(Frame* f, const SubmitOptions& options) {
  auto& d = *impl_;
  if (!d.cur()->has_segment)
    return absl::FailedPreconditionError("this client has no segment (want_segment = false)");
  Session* s = d.live_session();
  if (s == nullptr) return d.lost_error();
  if (!s->owns_frame(f)) {
    // A frame of a previous daemon's segment: copy it, with its environment, into this one.
    Session* o = d.owner_of(f);
    if (o == nullptr || !o->owns_frame(f))
      return absl::InvalidArgumentError("not a frame of this client's segments");
    Status why;
    const std::uint32_t oi = o->arena.index_of(f);
    const auto ni = d.copy_frame(*o, oi, *s, &why);
    if (!ni) {
      return why == Status::kUnknownFunction
                 ? absl::NotFoundError("the frame's function is unknown to the new daemon")
                 : absl::ResourceExhaustedError(
                       "no room in the new segment for a frame of the previous daemon's");
    }
    o->arena.free(f);
    f = s->arena.frame(*ni);
  }
  return push_in(*s, f, options);
}

absl::StatusOr<Handle> Client::push_in(detail::Session& s, Frame* f, const SubmitOptions& options) {
  auto& d = *impl_;
  const std::uint32_t idx = s.arena.index_of(f);
  f->status = 0;
  s.set_control(idx, options);
  // Relaxed: the ring's release store (P1) publishes this with the frame.
  s.states[idx].state.store(kInFlight, std::memory_order_relaxed);
  if (s.submit.try_push(s.arena.offset_of(f))) {
    d.submitted.fetch_add(1, std::memory_order_relaxed);
    s.bell.ring();  // F1: its full barrier orders the push before the load of `lost`
    if (s.lost.load(std::memory_order_seq_cst)) [[unlikely]] {
      const std::uint32_t one[1] = {idx};
      d.after_lost_push(s, one);
    }
    return Handle(this, &s, idx);
  }
  s.states[idx].state.store(kFree, std::memory_order_relaxed);
  // Full (or lost): the batch path waits or fails as the options say.
  Frame* one[1] = {f};
  std::vector<Handle> out;
  if (auto st = submit_batch_in(s, one, &out, options); !st.ok()) return st;
  return std::move(out.front());
}

absl::Status Client::submit_batch(std::span<Frame* const> frames, std::vector<Handle>* out,
                                  const SubmitOptions& options) {
  auto& d = *impl_;
  if (!d.cur()->has_segment)
    return absl::FailedPreconditionError("this client has no segment (want_segment = false)");
  Session* s = d.live_session();
  if (s == nullptr) return d.lost_error();
  if (std::all_of(frames.begin(), frames.end(), [&](Frame* f) { return s->owns_frame(f); }))
    return submit_batch_in(*s, frames, out, options);
  // Some frames are a previous daemon's: each is copied by submit(Frame*).
  for (Frame* f : frames) {
    auto h = submit(f, options);
    if (!h.ok()) return h.status();
    out->push_back(std::move(*h));
  }
  return absl::OkStatus();
}

absl::Status Client::submit_batch_in(detail::Session& s, std::span<Frame* const> frames,
                                     std::vector<Handle>* out, const SubmitOptions& options) {
  auto& d = *impl_;
  if (s.lost.load(std::memory_order_acquire)) return d.lost_error();
  std::uint32_t offs[256];
  std::uint32_t idxs[256];
  std::size_t done = 0;
  std::optional<std::chrono::steady_clock::time_point> deadline;
  while (done < frames.size()) {
    const std::size_t n = std::min<std::size_t>(256, frames.size() - done);
    for (std::size_t i = 0; i < n; ++i) {
      offs[i] = s.arena.offset_of(frames[done + i]);
      idxs[i] = s.arena.index_of(frames[done + i]);
      frames[done + i]->status = 0;
      s.set_control(idxs[i], options);
      // Relaxed: the ring's release store (P1) publishes this with the frame.
      s.states[idxs[i]].state.store(kInFlight, std::memory_order_relaxed);
    }
    const std::size_t pushed = s.submit.try_push_batch(std::span<const std::uint32_t>(offs, n));
    for (std::size_t i = 0; i < pushed; ++i) out->push_back(Handle(this, &s, idxs[i]));
    for (std::size_t i = pushed; i < n; ++i) {
      s.states[idxs[i]].state.store(kFree, std::memory_order_relaxed);
    }
    done += pushed;
    d.submitted.fetch_add(pushed, std::memory_order_relaxed);
    if (pushed != 0) {
      s.bell.ring();  // F1, as in push_in()
      if (s.lost.load(std::memory_order_seq_cst)) [[unlikely]] {
        d.after_lost_push(s, std::span<const std::uint32_t>(idxs, pushed));
      }
    }
    if (done == frames.size()) break;
    // Full.
    if (d.options.on_full == OnFull::kFailFast) {
      d.full_fail_fast.fetch_add(1, std::memory_order_relaxed);
      return absl::ResourceExhaustedError(
          "submit ring full (" + std::to_string(s.geometry().ring_capacity) + " slots); " +
          std::to_string(done) + " of " + std::to_string(frames.size()) + " submitted");
    }
    const auto now = std::chrono::steady_clock::now();
    if (!deadline) {
      deadline = now + d.options.full_timeout;
      d.full_waits.fetch_add(1, std::memory_order_relaxed);
    }
    if (now >= *deadline) {
      return absl::DeadlineExceededError(
          "submit ring still full after " + std::to_string(d.options.full_timeout.count()) +
          " ms; " + std::to_string(done) + " of " + std::to_string(frames.size()) + " submitted");
    }
    d.poll(s);  // completions free frames for the caller; the daemon frees ring slots
    shm::event_wait(
        s.doorbells->space,
        [&] { return s.ring_has_room() || s.lost.load(std::memory_order_acquire); },
        *deadline - now);
    if (s.lost.load(std::memory_order_acquire)) return d.lost_error();
  }
  return absl::OkStatus();
}

std::size_t Client::poll() { return impl_->poll(); }

bool Client::run_until(const std::function<bool()>& pred,
                       std::optional<std::chrono::nanoseconds> timeout) {
  std::optional<std::chrono::steady_clock::time_point> deadline;
  if (timeout) deadline = std::chrono::steady_clock::now() + *timeout;
  Impl& d = *impl_;
  return d.wait_until(
      pred, [&d] { return d.cur(); }, deadline);
}

absl::StatusOr<SerialResult> Client::call(std::string_view function, std::string_view env,
                                          std::uint64_t arg, std::chrono::milliseconds timeout) {
  auto& d = *impl_;
  Session* s = d.live_session();
  if (s == nullptr) return d.lost_error();
  std::future<SerialResult> fut;
  v1::ClientMessage m;
  {
    std::lock_guard l(d.calls_mu);
    const std::uint64_t tag = d.next_tag++;
    fut = d.calls[tag].get_future();
    auto* c = m.mutable_submit();
    c->set_function(std::string(function));
    c->set_env(std::string(env));
    c->set_arg(arg);
    c->set_tag(tag);
    // The timeout is the continuation's deadline too: the daemon cuts it off there
    // (STATUS_DEADLINE_EXCEEDED) rather than running it on for a caller who left.
    c->set_deadline_ns(std::chrono::duration_cast<std::chrono::nanoseconds>(
                           (std::chrono::steady_clock::now() + timeout).time_since_epoch())
                           .count());
  }
  {
    std::lock_guard l(d.send_mu);
    if (int e = v1::send_message(s->sock, m); e != 0) {
      std::lock_guard l2(d.calls_mu);
      d.calls.erase(m.submit().tag());
      return absl::UnavailableError(std::string("sending to insideoutd: ") + std::strerror(e));
    }
  }
  // Its Result (kDeadlineExceeded at the latest, once a step running at the deadline
  // has finished) is waited for a little past the deadline.
  if (fut.wait_for(timeout + std::chrono::seconds(1)) != std::future_status::ready) {
    std::lock_guard l(d.calls_mu);
    d.calls.erase(m.submit().tag());
    return absl::DeadlineExceededError("no result from insideoutd within " +
                                       std::to_string(timeout.count()) + " ms");
  }
  return fut.get();
}

namespace {

// Sends `m` (PassFd or CloseFd; its tag is set here) with `fd` when >= 0 to session `s`'s
// daemon, and waits up to 5 s for the FdResult.
absl::StatusOr<v1::FdResult> fd_request(Client::Impl& d, Session& s, v1::ClientMessage& m, int fd) {
  std::future<v1::FdResult> fut;
  std::uint64_t tag;
  {
    std::lock_guard l(d.calls_mu);
    tag = d.next_tag++;
    if (m.has_pass_fd()) {
      m.mutable_pass_fd()->set_tag(tag);
    } else {
      m.mutable_close_fd()->set_tag(tag);
    }
    fut = d.fd_results[tag].get_future();
  }
  {
    std::lock_guard l(d.send_mu);
    if (int e = v1::send_message(s.sock, m, fd); e != 0) {
      std::lock_guard l2(d.calls_mu);
      d.fd_results.erase(tag);
      return absl::UnavailableError(std::string("sending to insideoutd: ") + std::strerror(e));
    }
  }
  if (fut.wait_for(std::chrono::seconds(5)) != std::future_status::ready) {
    std::lock_guard l(d.calls_mu);
    if (d.fd_results.erase(tag) != 0)
      return absl::DeadlineExceededError("insideoutd did not answer about a descriptor in 5 s");
  }
  return fut.get();
}

}  // namespace

absl::StatusOr<std::uint32_t> Client::send_fd(int fd) {
  auto& d = *impl_;
  if (fd < 0) return absl::InvalidArgumentError("send_fd: not a descriptor");
  Session* s = d.live_session();
  if (s == nullptr) return d.lost_error();
  if (s->max_client_fds == 0)
    return absl::FailedPreconditionError(
        "this insideoutd takes no descriptors (it predates them, or runs with "
        "--max-client-fds 0)");
  v1::ClientMessage m;
  m.mutable_pass_fd();
  auto r = fd_request(d, *s, m, fd);
  if (!r.ok()) return r.status();
  if (!r->error().empty() || r->id() == 0) {
    if (s->lost.load(std::memory_order_acquire)) return absl::UnavailableError(r->error());
    return absl::FailedPreconditionError("insideoutd refused the descriptor: " + r->error());
  }
  return r->id();
}

absl::Status Client::close_fd(std::uint32_t id) {
  auto& d = *impl_;
  Session* s = d.live_session();
  if (s == nullptr) return d.lost_error();
  if (s->max_client_fds == 0)
    return absl::FailedPreconditionError("this insideoutd takes no descriptors");
  v1::ClientMessage m;
  m.mutable_close_fd()->set_id(id);
  auto r = fd_request(d, *s, m, -1);
  if (!r.ok()) return r.status();
  if (!r->error().empty()) {
    if (s->lost.load(std::memory_order_acquire)) return absl::UnavailableError(r->error());
    return absl::NotFoundError(r->error());
  }
  return absl::OkStatus();
}

bool Client::daemon_lost() const noexcept {
  return impl_->cur()->lost.load(std::memory_order_acquire);
}

std::string Client::lost_reason() const { return impl_->reason(); }

std::uint64_t Client::generation() const noexcept { return impl_->cur()->generation; }

std::uint32_t Client::client_id() const noexcept { return impl_->cur()->client_id; }

void* Client::segment_base() const noexcept { return impl_->cur()->base; }

void Client::ring_bell() const noexcept { impl_->cur()->bell.ring(); }

absl::Status Client::ring(std::uint32_t bell) {
  Session* s = impl_->live_session();
  if (s == nullptr) return impl_->lost_error();
  if (!s->has_segment)
    return absl::FailedPreconditionError("this client has no segment (want_segment = false)");
  if (bell >= shm::kClientBells) {
    return absl::InvalidArgumentError("no doorbell " + std::to_string(bell) + " (there are " +
                                      std::to_string(shm::kClientBells) + ": 0.." +
                                      std::to_string(shm::kClientBells - 1) + ")");
  }
  // Release: pairs with the daemon's acquire loads (ClientSource::ring_bells()); the
  // pool bell after it wakes a sleeping worker to look.
  s->bells->count[bell].fetch_add(1, std::memory_order_release);
  s->bell.ring();
  return absl::OkStatus();
}

ClientStats Client::stats() const noexcept {
  const auto& d = *impl_;
  ClientStats s;
  s.submitted = d.submitted.load(std::memory_order_relaxed);
  s.completed = d.completed.load(std::memory_order_relaxed);
  s.full_fail_fast = d.full_fail_fast.load(std::memory_order_relaxed);
  s.full_waits = d.full_waits.load(std::memory_order_relaxed);
  s.reconnects = d.reconnects.load(std::memory_order_relaxed);
  s.resubmitted = d.resubmitted.load(std::memory_order_relaxed);
  s.lost = d.lost_count.load(std::memory_order_relaxed);
  return s;
}

}  // namespace insideout
