#include "insideout/client.hpp"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
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
};

struct FrameState {
  std::atomic<std::uint8_t> state{kFree};
  std::span<std::byte> owned_buffer;  // a buffer submit() allocated for the environment
  std::function<void(const Result&)> callback;
  std::coroutine_handle<> coro;
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

struct Client::Impl {
  ClientOptions options;
  std::string socket_path;
  int sock = -1;
  std::uint32_t client_id = 0;
  std::vector<FunctionInfo> functions;

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

  // Completion ring: one drainer at a time.
  std::mutex drain_mu;
  shm::RingConsumer completion;
  std::atomic<std::uint64_t> peek_head{0};  // the drainer's position, for lock-free peeks

  // Daemon loss. lost is stored with release after lost_reason is set (L1) and loaded
  // with acquire by waiters (L2).
  std::atomic<bool> lost{false};
  std::mutex lost_mu;
  std::string lost_reason;
  std::atomic<bool> closing{false};
  std::thread monitor;

  // Serialized calls waiting for their Result.
  std::mutex calls_mu;
  std::uint64_t next_tag = 1;
  std::unordered_map<std::uint64_t, std::promise<SerialResult>> calls;
  // Lookups by name waiting for their LookupResult (under calls_mu, tags from next_tag).
  std::unordered_map<std::uint64_t, std::promise<v1::LookupResult>> lookups;
  // PassFd and CloseFd waiting for their FdResult (under calls_mu, tags from next_tag).
  std::unordered_map<std::uint64_t, std::promise<v1::FdResult>> fd_results;
  std::uint32_t max_client_fds = 0;  // Welcome.max_client_fds: 0 when the daemon takes none
  std::mutex send_mu;

  // Functions learned after the Welcome (Lookup), by name.
  bool daemon_lookup = false;  // the daemon answers Lookup (Welcome.lookup)
  mutable std::mutex learned_mu;
  std::unordered_map<std::string, FunctionInfo> learned;

  std::thread dispatcher;
  std::atomic<bool> stop_dispatcher{false};

  std::atomic<std::uint64_t> submitted{0}, completed{0}, full_fail_fast{0}, full_waits{0};

  Impl() = default;
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl() {
    if (bell_page_fd >= 0) ::close(bell_page_fd);
    if (bell_fd >= 0) ::close(bell_fd);
  }

  std::uint32_t index_of(std::uint32_t off) const {
    return (off - segment.geometry().frames_off) / static_cast<std::uint32_t>(sizeof(Frame));
  }

  bool completion_ready() const {
    const std::uint64_t head = peek_head.load(std::memory_order_relaxed);
    shm::RingView v(base + segment.geometry().completion_ring_off,
                    segment.geometry().ring_capacity);
    return static_cast<std::uint32_t>(v.slot(head).load(std::memory_order_acquire) >> 32) ==
           static_cast<std::uint32_t>(head + 1);
  }

  bool ring_has_room() const {
    shm::RingView v(base + segment.geometry().submit_ring_off, segment.geometry().ring_capacity);
    const std::uint64_t tail = v.header()->tail.load(std::memory_order_relaxed);
    return static_cast<std::uint32_t>(v.slot(tail).load(std::memory_order_acquire) >> 32) ==
           static_cast<std::uint32_t>(tail);
  }

  // Resets a frame's client-side state before it goes back to the arena.
  void release_state(std::uint32_t idx) {
    FrameState& s = states[idx];
    if (!s.owned_buffer.empty()) {
      free_buffer(s.owned_buffer);
      s.owned_buffer = {};
    }
    if (s.callback) s.callback = nullptr;
    s.coro = nullptr;
    s.state.store(kFree, std::memory_order_relaxed);
  }

  void free_frame(std::uint32_t idx) {
    release_state(idx);
    arena.free(arena.frame(idx));
  }

  void free_buffer(std::span<std::byte> b) {
    const auto& g = segment.geometry();
    const std::uint32_t off = static_cast<std::uint32_t>(reinterpret_cast<char*>(b.data()) - base);
    const std::uint32_t first = (off - g.buffers_off) / g.buffer_block_size;
    const auto n =
        static_cast<std::uint32_t>((b.size() + g.buffer_block_size - 1) / g.buffer_block_size);
    buffers.free(first, n);
  }

  // Whether a completed frame's result data is its environment buffer (see result_of()).
  bool result_in_env(std::uint32_t idx) const {
    const Frame* f = arena.frame(idx);
    return !(f->flags & shm::kFrameResultInline) && f->result_len != 0 &&
           !(f->flags & shm::kFrameEnvInline);
  }

  // Under OnFull::kWait, retries `take` until it succeeds, the daemon is lost or
  // options.full_timeout passes; false then. Completions drained here free the frames of
  // let-go handles and the buffers of finished continuations and wake it at once; frames
  // and buffers freed by other threads are seen within a slice (1 ms).
  template <class Take>
  bool wait_for_room(Take&& take) {
    if (take()) return true;
    if (options.on_full != OnFull::kWait) return false;
    const auto deadline = std::chrono::steady_clock::now() + options.full_timeout;
    full_waits.fetch_add(1, std::memory_order_relaxed);
    for (;;) {
      poll();
      if (take()) return true;
      if (lost.load(std::memory_order_acquire)) return false;  // L2
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) return false;
      const auto slice =
          std::min<std::chrono::nanoseconds>(deadline - now, std::chrono::milliseconds(1));
      shm::event_wait(
          doorbells->completion,
          [&] { return completion_ready() || lost.load(std::memory_order_acquire); }, slice);
    }
  }

  // How to ask for more of the segment, for error messages.
  std::string frames_hint() const {
    return "all " + std::to_string(arena.frame_count()) +
           " frames are in use (a frame is held until its handle is waited on and released, "
           "or let go); raise ClientOptions::segment.frame_count";
  }
  std::string buffers_hint(std::size_t bytes) const {
    const auto& g = segment.geometry();
    const std::uint64_t total = std::uint64_t{g.buffer_block_size} * g.buffer_block_count;
    return "no room for " + std::to_string(bytes) + " bytes in the segment's buffers (" +
           std::to_string(total) + " bytes: " + std::to_string(g.buffer_block_count) +
           " blocks of " + std::to_string(g.buffer_block_size) +
           "); raise ClientOptions::segment.buffer_block_count (the segment is at most "
           "insideoutd --max-segment-mib)";
  }

  Result result_of(std::uint32_t idx) const {
    const Frame* f = arena.frame(idx);
    Result r;
    r.status = static_cast<Status>(f->status);
    r.detail = static_cast<ErrorDetail>(f->detail);
    r.value = f->result;
    const auto& g = segment.geometry();
    if ((f->flags & shm::kFrameResultInline) && f->result_len <= shm::kInlineCapacity) {
      r.data = {reinterpret_cast<const std::byte*>(f->inline_data), f->result_len};
    } else if (f->result_len != 0 && !(f->flags & shm::kFrameEnvInline) &&
               g.buffer_range_valid(f->env_off, f->result_len)) {
      r.data = {reinterpret_cast<const std::byte*>(base + f->env_off), f->result_len};
    }
    if (r.detail == ErrorDetail::kFunctionFailed) {
      // The function's own words, NUL-terminated in the frame's message slot.
      const char* m = reinterpret_cast<const char*>(base + g.messages_off) +
                      std::size_t{idx} * shm::kMessageBytes;
      r.message.assign(m, ::strnlen(m, shm::kMessageBytes - 1));
    }
    return r;
  }

  // Takes every ready completion; returns how many. Callbacks and coroutines run after
  // the drain lock is released.
  std::size_t drain(std::unique_lock<std::mutex>& lock) {
    std::uint32_t offs[256];
    std::vector<std::uint32_t> notify;
    std::vector<Frame*> detached;  // freed together, in one CAS
    std::size_t total = 0;
    for (;;) {
      const std::size_t n = completion.pop_batch(std::span<std::uint32_t>(offs, 256));
      if (n == 0) break;
      total += n;
      // The daemon's core wrote these frames; whoever reads the results and frees the
      // frames next will find their lines here.
      for (std::size_t i = 0; i < n; ++i)
        __builtin_prefetch(base + (offs[i] % segment.geometry().size), 1);
      for (std::size_t i = 0; i < n; ++i) {
        if (!segment.geometry().frame_offset_valid(offs[i])) continue;
        const std::uint32_t idx = index_of(offs[i]);
        // Until the exchange below publishes kDone, only the drainer touches owned_buffer:
        // a buffer submit() copied the environment into goes back now unless the result
        // lives in it, so that a caller holding handles does not hold buffers too.
        if (FrameState& s = states[idx]; !s.owned_buffer.empty() && !result_in_env(idx)) {
          free_buffer(s.owned_buffer);
          s.owned_buffer = {};
        }
        const std::uint8_t prev = states[idx].state.exchange(kDone, std::memory_order_acq_rel);
        switch (prev) {
          case kInFlight:
            break;
          case kDetached:
            release_state(idx);
            detached.push_back(arena.frame(idx));
            break;
          case kCallback:
          case kAwaited:
            notify.push_back(idx);
            break;
          default:
            states[idx].state.store(prev, std::memory_order_relaxed);
            break;  // not ours: ignore
        }
      }
    }
    arena.free(std::span<Frame* const>(detached));
    peek_head.store(completion.head(), std::memory_order_relaxed);
    completed.fetch_add(total, std::memory_order_relaxed);
    lock.unlock();
    if (total != 0) {
      // Other threads of this process may be waiting for what we took.
      shm::event_notify(doorbells->completion, INT_MAX);
    }
    run_notifications(notify);
    return total;
  }

  void run_notifications(const std::vector<std::uint32_t>& notify) {
    for (std::uint32_t idx : notify) {
      FrameState& s = states[idx];
      if (s.coro) {
        auto c = s.coro;
        s.coro = nullptr;
        c.resume();
      } else if (s.callback) {
        auto cb = std::move(s.callback);
        s.callback = nullptr;
        cb(result_of(idx));
        free_frame(idx);
      }
    }
  }

  std::size_t poll() {
    if (!has_segment) return 0;
    std::unique_lock lock(drain_mu, std::try_to_lock);
    if (!lock.owns_lock()) return 0;
    return drain(lock);
  }

  void set_lost(std::string why) {
    {
      std::lock_guard l(lost_mu);
      if (lost.load(std::memory_order_relaxed)) return;
      lost_reason = std::move(why);
    }
    lost.store(true, std::memory_order_release);  // L1: pairs with L2
    std::vector<std::uint32_t> notify;
    if (has_segment) {
      // What the daemon completed before it went (its completions precede its Goodbye
      // or its death) is a result, not a loss: take it first. drain() unlocks.
      {
        std::unique_lock lock(drain_mu);
        drain(lock);
      }
      // Nobody will complete what is still in flight: fail it here.
      std::lock_guard lock(drain_mu);
      for (std::uint32_t i = 0; i < arena.frame_count(); ++i) {
        std::uint8_t st = states[i].state.load(std::memory_order_acquire);
        if (st != kInFlight && st != kCallback && st != kAwaited && st != kDetached) continue;
        Frame* f = arena.frame(i);
        f->status = static_cast<std::uint16_t>(Status::kDaemonLost);
        f->detail = 0;
        f->result_len = 0;
        const std::uint8_t prev = states[i].state.exchange(kDone, std::memory_order_acq_rel);
        if (prev == kDetached) {
          free_frame(i);
        } else if (prev == kCallback || prev == kAwaited) {
          notify.push_back(i);
        }
      }
      // Wake every waiter of this process: they see `lost`.
      doorbells->completion.seq.fetch_add(1, std::memory_order_release);
      shm::futex_wake(&doorbells->completion.seq, INT_MAX);
      doorbells->space.seq.fetch_add(1, std::memory_order_release);
      shm::futex_wake(&doorbells->space.seq, INT_MAX);
    }
    run_notifications(notify);
    std::lock_guard l(calls_mu);
    for (auto& [tag, p] : calls) {
      SerialResult r;
      r.status = Status::kDaemonLost;
      r.error = "daemon lost: " + lost_reason;
      p.set_value(std::move(r));
    }
    calls.clear();
    for (auto& [tag, p] : lookups) p.set_value(v1::LookupResult{});  // not found; lost is set
    lookups.clear();
    for (auto& [tag, p] : fd_results) {
      v1::FdResult r;
      r.set_error("daemon lost: " + lost_reason);
      p.set_value(std::move(r));
    }
    fd_results.clear();
  }

  void monitor_loop() {
    for (;;) {
      v1::DaemonMessage m;
      int err = 0;
      const auto st = v1::recv_message(sock, &m, nullptr, &err);
      if (closing.load(std::memory_order_acquire)) return;
      if (st == v1::RecvStatus::kClosed) return set_lost("the daemon closed the connection");
      if (st == v1::RecvStatus::kError)
        return set_lost(std::string("registration socket: ") + std::strerror(err));
      if (st != v1::RecvStatus::kOk) continue;
      if (m.has_goodbye()) return set_lost(m.goodbye().reason());
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

  // Waits for `done()` (or loss), draining completions meanwhile. False on timeout.
  template <class Done>
  bool wait_until(Done&& done, std::optional<std::chrono::steady_clock::time_point> deadline) {
    const auto spin_until = std::chrono::steady_clock::now() + options.spin;
    std::uint32_t spins = 0;
    for (;;) {
      if (done()) return true;
      poll();
      if (done()) return true;
      if (lost.load(std::memory_order_acquire)) return done();  // L2
      const auto now = std::chrono::steady_clock::now();
      if (deadline && now >= *deadline) return false;
      if (options.idle == shm::IdleStrategy::kPoll ||
          (options.idle == shm::IdleStrategy::kSpinThenBlock && now < spin_until)) {
        for (int i = 0; i < 16; ++i) shm::cpu_relax();
        ++spins;
        continue;
      }
      std::optional<std::chrono::nanoseconds> timeout;
      if (deadline) timeout = *deadline - now;
      shm::event_wait(
          doorbells->completion,
          [&] { return completion_ready() || done() || lost.load(std::memory_order_acquire); },
          timeout);
    }
  }
};

// ---- Handle -------------------------------------------------------------------------

Handle& Handle::operator=(Handle&& o) noexcept {
  if (this != &o) {
    reset();
    client_ = o.client_;
    index_ = o.index_;
    o.client_ = nullptr;
  }
  return *this;
}

bool Handle::done() const noexcept {
  return client_ != nullptr &&
         client_->impl_->states[index_].state.load(std::memory_order_acquire) == kDone;
}

bool Handle::poll() {
  if (client_ == nullptr) return false;
  if (done()) return true;
  client_->impl_->poll();
  return done();
}

Status Handle::wait() {
  if (client_ == nullptr) return Status::kInvalidArgument;
  client_->impl_->wait_until([this] { return done(); }, std::nullopt);
  return done() ? static_cast<Status>(frame()->status) : Status::kDaemonLost;
}

std::optional<Status> Handle::wait_for(std::chrono::nanoseconds timeout) {
  if (client_ == nullptr) return Status::kInvalidArgument;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  if (!client_->impl_->wait_until([this] { return done(); }, deadline)) return std::nullopt;
  return done() ? static_cast<Status>(frame()->status) : Status::kDaemonLost;
}

Result Handle::result() const {
  if (client_ == nullptr || !done()) return Result{};
  return client_->impl_->result_of(index_);
}

Frame* Handle::frame() const noexcept {
  return client_ == nullptr ? nullptr : client_->impl_->arena.frame(index_);
}

void Handle::then(std::function<void(const Result&)> fn) && {
  if (client_ == nullptr) return;
  auto& impl = *client_->impl_;
  FrameState& s = impl.states[index_];
  s.callback = std::move(fn);
  std::uint8_t expected = kInFlight;
  // Release: publishes the callback to the drainer's exchange (acq_rel).
  if (!s.state.compare_exchange_strong(expected, kCallback, std::memory_order_acq_rel)) {
    // Already done: run it here.
    auto cb = std::move(s.callback);
    s.callback = nullptr;
    cb(impl.result_of(index_));
    impl.free_frame(index_);
  }
  client_ = nullptr;
}

bool Handle::Awaiter::await_suspend(std::coroutine_handle<> c) {
  auto& impl = *h.client_->impl_;
  FrameState& s = impl.states[h.index_];
  s.coro = c;
  std::uint8_t expected = kInFlight;
  if (s.state.compare_exchange_strong(expected, kAwaited, std::memory_order_acq_rel)) return true;
  s.coro = nullptr;
  return false;  // completed meanwhile: resume at once
}

void Handle::reset() noexcept {
  if (client_ == nullptr) return;
  auto& impl = *client_->impl_;
  FrameState& s = impl.states[index_];
  std::uint8_t expected = kInFlight;
  if (!s.state.compare_exchange_strong(expected, kDetached, std::memory_order_acq_rel)) {
    // Completed (kDone): the frame is ours to free.
    impl.free_frame(index_);
  }
  client_ = nullptr;
}

// ---- Client ------------------------------------------------------------------------

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Client::~Client() {
  auto& d = *impl_;
  if (d.dispatcher.joinable()) {
    d.stop_dispatcher.store(true, std::memory_order_release);
    if (d.has_segment) {
      d.doorbells->completion.seq.fetch_add(1, std::memory_order_release);
      shm::futex_wake(&d.doorbells->completion.seq, INT_MAX);
    }
    d.dispatcher.join();
  }
  d.closing.store(true, std::memory_order_release);
  ::shutdown(d.sock, SHUT_RDWR);
  if (d.monitor.joinable()) d.monitor.join();
  ::close(d.sock);
}

absl::StatusOr<std::unique_ptr<Client>> Client::connect(ClientOptions options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->socket_path =
      !options.socket_path.empty()
          ? options.socket_path
          : (options.runtime_dir.empty() ? shm::default_runtime_dir() : options.runtime_dir) + "/" +
                shm::kDaemonSocketName;
  const std::string& path = impl->socket_path;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path))
    return absl::InvalidArgumentError("socket path too long: " + path);
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  impl->sock = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (impl->sock < 0) return absl::InternalError(std::string("socket: ") + std::strerror(errno));
  if (::connect(impl->sock, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int e = errno;
    ::close(impl->sock);
    return absl::UnavailableError(
        "no insideoutd at " + path + ": " + std::strerror(e) +
        " (is the daemon running? INSIDEOUT_RUNTIME_DIR selects its directory)");
  }
  auto fail = [&](absl::Status st) {
    ::close(impl->sock);
    return st;
  };
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
  if (int e = v1::send_message(impl->sock, hello_msg); e != 0) {
    // Refused at the door (a connection limit): the daemon said why before it closed.
    timeval brief{0, 100'000};
    ::setsockopt(impl->sock, SOL_SOCKET, SO_RCVTIMEO, &brief, sizeof(brief));
    v1::DaemonMessage early;
    if (v1::recv_message(impl->sock, &early) == v1::RecvStatus::kOk && early.has_refused()) {
      return fail(absl::ResourceExhaustedError("insideoutd refused the connection: " +
                                               early.refused().reason()));
    }
    return fail(absl::UnavailableError("sending Hello to " + path + ": " + std::strerror(e)));
  }
  // A daemon that accepts and then never answers must not hang us: bound the handshake.
  timeval tv{5, 0};
  ::setsockopt(impl->sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  v1::DaemonMessage reply;
  std::vector<int> fds;
  int err = 0;
  // The segment, the pool's bell page and this client's bell eventfd (see shm/bell.h).
  const v1::RecvStatus got = v1::recv_message_fds(impl->sock, &reply, &fds, &err);
  int fd = -1;
  for (std::size_t i = 0; i < fds.size(); ++i) {
    if (i == 0) {
      fd = fds[i];
    } else if (i == 1) {
      impl->bell_page_fd = fds[i];  // closed by ~Impl unless mapped
    } else if (i == 2) {
      impl->bell_fd = fds[i];  // closed by ~Impl
    } else {
      ::close(fds[i]);
    }
  }
  if (got != v1::RecvStatus::kOk) {
    if (fd >= 0) ::close(fd);
    return fail(absl::UnavailableError("no answer to Hello from " + path + " within 5 s"));
  }
  tv = timeval{0, 0};
  ::setsockopt(impl->sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (reply.has_refused()) {
    if (fd >= 0) ::close(fd);
    return fail(absl::FailedPreconditionError("insideoutd refused the registration: " +
                                              reply.refused().reason()));
  }
  if (!reply.has_welcome()) {
    if (fd >= 0) ::close(fd);
    return fail(absl::InternalError("unexpected answer to Hello"));
  }
  const auto& w = reply.welcome();
  impl->client_id = w.client_id();
  impl->daemon_lookup = w.lookup();
  impl->max_client_fds = w.max_client_fds();
  for (const auto& f : w.functions()) {
    impl->functions.push_back({f.name(), f.id(), f.needs_buffer(), f.max_arg(), f.help()});
  }
  if (options.want_segment) {
    if (fd < 0) return fail(absl::InternalError("the daemon sent no segment"));
    std::string why;
    impl->segment = shm::Segment::attach(fd, &why);
    if (!impl->segment.valid())
      return fail(absl::FailedPreconditionError("segment from insideoutd: " + why));
    if (impl->bell_page_fd < 0 || impl->bell_fd < 0)
      return fail(absl::InternalError("the daemon sent no pool bell"));
    // attach() takes the descriptor and closes it once mapped.
    impl->bell_page = shm::BellPage::attach(std::exchange(impl->bell_page_fd, -1), &why);
    if (!impl->bell_page.valid())
      return fail(absl::FailedPreconditionError("pool bell from insideoutd: " + why));
    impl->bell = shm::SubmitBell(impl->bell_page.page(), impl->bell_fd);
    const auto& g = impl->segment.geometry();
    impl->has_segment = true;
    impl->base = static_cast<char*>(impl->segment.base());
    impl->doorbells = impl->segment.doorbells();
    impl->arena = shm::FrameArena(impl->base, g);
    impl->submit =
        shm::RingProducer(shm::RingView(impl->base + g.submit_ring_off, g.ring_capacity));
    impl->completion =
        shm::RingConsumer(shm::RingView(impl->base + g.completion_ring_off, g.ring_capacity));
    impl->states.reset(new FrameState[g.frame_count]);
    impl->buffers.init(g.buffer_block_count);
  } else if (fd >= 0) {
    ::close(fd);
  }
  Impl* raw = impl.get();
  impl->monitor = std::thread([raw] { raw->monitor_loop(); });
  std::unique_ptr<Client> client(new Client(std::move(impl)));
  if (options.dispatcher && raw->has_segment) {
    raw->dispatcher = std::thread([raw] {
      while (!raw->stop_dispatcher.load(std::memory_order_acquire) &&
             !raw->lost.load(std::memory_order_acquire)) {
        if (raw->poll() == 0) {
          shm::event_wait(
              raw->doorbells->completion,
              [raw] {
                return raw->completion_ready() ||
                       raw->stop_dispatcher.load(std::memory_order_acquire) ||
                       raw->lost.load(std::memory_order_acquire);
              },
              std::nullopt);
        }
      }
    });
  }
  return client;
}

const std::vector<FunctionInfo>& Client::functions() const noexcept { return impl_->functions; }

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

}  // namespace

absl::StatusOr<std::uint32_t> Client::function_id(std::string_view name) const {
  auto& d = *impl_;
  for (const auto& f : d.functions) {
    if (f.name == name) return f.id;
  }
  {
    std::lock_guard l(d.learned_mu);
    if (auto it = d.learned.find(std::string(name)); it != d.learned.end()) return it->second.id;
  }
  if (!d.daemon_lookup || d.lost.load(std::memory_order_acquire)) {
    // The nearest name this client knows of.
    const std::size_t limit = std::clamp<std::size_t>(name.size() / 3, 1, 3);
    std::string best;
    std::size_t best_d = limit + 1;
    for (const auto& f : d.functions) {
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
    if (int e = v1::send_message(d.sock, m); e != 0) {
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
  if (!r.found() && d.lost.load(std::memory_order_acquire))
    return absl::UnavailableError("daemon lost: " + lost_reason());
  if (!r.found()) return unknown_function(name, r.suggestion());
  const auto& f = r.function();
  std::lock_guard l(d.learned_mu);
  d.learned[f.name()] = FunctionInfo{f.name(), f.id(), f.needs_buffer(), f.max_arg(), f.help()};
  return f.id();
}

Frame* Client::allocate_frame() noexcept {
  if (!impl_->has_segment) return nullptr;
  Frame* f = impl_->arena.allocate();
  if (f != nullptr) std::memset(static_cast<void*>(f), 0, sizeof(Frame));
  return f;
}

std::size_t Client::allocate_frames(std::span<Frame*> out) noexcept {
  if (!impl_->has_segment) return 0;
  const std::size_t n = impl_->arena.allocate(out);
  for (std::size_t i = 0; i < n; ++i) std::memset(static_cast<void*>(out[i]), 0, sizeof(Frame));
  return n;
}

void Client::release_frame(Frame* f) noexcept { impl_->arena.free(f); }

std::span<std::byte> Client::allocate_buffer(std::size_t bytes) {
  auto b = allocate_buffer_or_error(bytes);
  return b.ok() ? *b : std::span<std::byte>{};
}

absl::StatusOr<std::span<std::byte>> Client::allocate_buffer_or_error(std::size_t bytes) {
  auto& d = *impl_;
  if (!d.has_segment)
    return absl::FailedPreconditionError("this client has no segment (want_segment = false)");
  if (bytes == 0) return absl::InvalidArgumentError("a buffer of 0 bytes");
  const auto& g = d.segment.geometry();
  const std::uint64_t n64 = (bytes + g.buffer_block_size - 1) / g.buffer_block_size;
  if (n64 > g.buffer_block_count) {
    return absl::ResourceExhaustedError(d.buffers_hint(bytes) + ": larger than all of them");
  }
  const auto n = static_cast<std::uint32_t>(n64);
  long first = -1;
  if (!d.wait_for_room([&] { return (first = d.buffers.allocate(n)) >= 0; })) {
    if (d.lost.load(std::memory_order_acquire))
      return absl::UnavailableError("daemon lost: " + lost_reason());
    if (d.options.on_full == OnFull::kWait) {
      return absl::DeadlineExceededError(d.buffers_hint(bytes) + " after waiting " +
                                         std::to_string(d.options.full_timeout.count()) +
                                         " ms (ClientOptions::full_timeout)");
    }
    return absl::ResourceExhaustedError(d.buffers_hint(bytes));
  }
  auto* p = reinterpret_cast<std::byte*>(d.base + g.buffers_off +
                                         static_cast<std::size_t>(first) * g.buffer_block_size);
  return std::span<std::byte>(p, bytes);
}

void Client::free_buffer(std::span<std::byte> buffer) {
  if (!buffer.empty()) impl_->free_buffer(buffer);
}

std::uint32_t Client::offset_of(const void* p) const noexcept {
  return static_cast<std::uint32_t>(static_cast<const char*>(p) - impl_->base);
}

absl::StatusOr<Handle> Client::submit(std::string_view function, std::span<const std::byte> env,
                                      std::uint64_t arg) {
  auto id = function_id(function);
  if (!id.ok()) return id.status();
  return submit(*id, env, arg);
}

absl::StatusOr<Handle> Client::submit(std::uint32_t function_id, std::span<const std::byte> env,
                                      std::uint64_t arg) {
  if (!impl_->has_segment)
    return absl::FailedPreconditionError("this client has no segment (want_segment = false)");
  Frame* f = nullptr;
  if (!impl_->wait_for_room([&] { return (f = allocate_frame()) != nullptr; })) {
    if (impl_->lost.load(std::memory_order_acquire))
      return absl::UnavailableError("daemon lost: " + lost_reason());
    if (impl_->options.on_full == OnFull::kWait) {
      return absl::DeadlineExceededError(impl_->frames_hint() + " (waited " +
                                         std::to_string(impl_->options.full_timeout.count()) +
                                         " ms, ClientOptions::full_timeout)");
    }
    return absl::ResourceExhaustedError(impl_->frames_hint());
  }
  f->fn = function_id;
  f->arg = arg;
  std::span<std::byte> owned;
  if (env.size() <= shm::kInlineCapacity) {
    f->flags = shm::kFrameEnvInline;
    f->env_len = static_cast<std::uint32_t>(env.size());
    if (!env.empty()) std::memcpy(f->inline_data, env.data(), env.size());
  } else {
    auto b = allocate_buffer_or_error(env.size());
    if (!b.ok()) {
      release_frame(f);
      return b.status();
    }
    owned = *b;
    std::memcpy(owned.data(), env.data(), env.size());
    f->env_off = offset_of(owned.data());
    f->env_len = static_cast<std::uint32_t>(env.size());
  }
  impl_->states[impl_->arena.index_of(f)].owned_buffer = owned;
  auto h = submit(f);
  if (!h.ok()) {
    impl_->states[impl_->arena.index_of(f)].owned_buffer = {};
    if (!owned.empty()) free_buffer(owned);
    release_frame(f);
  }
  return h;
}

absl::StatusOr<Handle> Client::submit(Frame* f) {
  auto& d = *impl_;
  if (!d.has_segment)
    return absl::FailedPreconditionError("this client has no segment (want_segment = false)");
  if (d.lost.load(std::memory_order_acquire))
    return absl::UnavailableError("daemon lost: " + lost_reason());
  const std::uint32_t idx = d.arena.index_of(f);
  f->status = 0;
  // Relaxed: the ring's release store (P1) publishes this with the frame.
  d.states[idx].state.store(kInFlight, std::memory_order_relaxed);
  if (d.submit.try_push(d.arena.offset_of(f))) {
    d.submitted.fetch_add(1, std::memory_order_relaxed);
    d.bell.ring();
    return Handle(this, idx);
  }
  d.states[idx].state.store(kFree, std::memory_order_relaxed);
  // Full (or lost): the batch path waits or fails as the options say.
  Frame* one[1] = {f};
  std::vector<Handle> out;
  if (auto st = submit_batch(one, &out); !st.ok()) return st;
  return std::move(out.front());
}

absl::Status Client::submit_batch(std::span<Frame* const> frames, std::vector<Handle>* out) {
  auto& d = *impl_;
  if (!d.has_segment)
    return absl::FailedPreconditionError("this client has no segment (want_segment = false)");
  if (d.lost.load(std::memory_order_acquire))
    return absl::UnavailableError("daemon lost: " + lost_reason());
  std::uint32_t offs[256];
  std::size_t done = 0;
  std::optional<std::chrono::steady_clock::time_point> deadline;
  while (done < frames.size()) {
    const std::size_t n = std::min<std::size_t>(256, frames.size() - done);
    for (std::size_t i = 0; i < n; ++i) {
      offs[i] = d.arena.offset_of(frames[done + i]);
      frames[done + i]->status = 0;
      // Relaxed: the ring's release store (P1) publishes this with the frame.
      d.states[d.arena.index_of(frames[done + i])].state.store(kInFlight,
                                                               std::memory_order_relaxed);
    }
    const std::size_t pushed = d.submit.try_push_batch(std::span<const std::uint32_t>(offs, n));
    for (std::size_t i = 0; i < pushed; ++i)
      out->push_back(Handle(this, d.arena.index_of(frames[done + i])));
    for (std::size_t i = pushed; i < n; ++i) {
      d.states[d.arena.index_of(frames[done + i])].state.store(kFree, std::memory_order_relaxed);
    }
    done += pushed;
    d.submitted.fetch_add(pushed, std::memory_order_relaxed);
    if (pushed != 0) d.bell.ring();
    if (done == frames.size()) break;
    // Full.
    if (d.options.on_full == OnFull::kFailFast) {
      d.full_fail_fast.fetch_add(1, std::memory_order_relaxed);
      return absl::ResourceExhaustedError(
          "submit ring full (" + std::to_string(d.segment.geometry().ring_capacity) + " slots); " +
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
    d.poll();  // completions free frames for the caller; the daemon frees ring slots
    shm::event_wait(
        d.doorbells->space,
        [&] { return d.ring_has_room() || d.lost.load(std::memory_order_acquire); },
        *deadline - now);
    if (d.lost.load(std::memory_order_acquire))
      return absl::UnavailableError("daemon lost: " + lost_reason());
  }
  return absl::OkStatus();
}

std::size_t Client::poll() { return impl_->poll(); }

bool Client::run_until(const std::function<bool()>& pred,
                       std::optional<std::chrono::nanoseconds> timeout) {
  std::optional<std::chrono::steady_clock::time_point> deadline;
  if (timeout) deadline = std::chrono::steady_clock::now() + *timeout;
  return impl_->wait_until(pred, deadline);
}

absl::StatusOr<SerialResult> Client::call(std::string_view function, std::string_view env,
                                          std::uint64_t arg, std::chrono::milliseconds timeout) {
  auto& d = *impl_;
  if (d.lost.load(std::memory_order_acquire))
    return absl::UnavailableError("daemon lost: " + lost_reason());
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
  }
  {
    std::lock_guard l(d.send_mu);
    if (int e = v1::send_message(d.sock, m); e != 0) {
      return absl::UnavailableError(std::string("sending to insideoutd: ") + std::strerror(e));
    }
  }
  if (fut.wait_for(timeout) != std::future_status::ready) {
    std::lock_guard l(d.calls_mu);
    d.calls.erase(m.submit().tag());
    return absl::DeadlineExceededError("no result from insideoutd within " +
                                       std::to_string(timeout.count()) + " ms");
  }
  return fut.get();
}

namespace {

// Sends `m` (PassFd or CloseFd; its tag is set here) with `fd` when >= 0, and
// waits up to 5 s for the FdResult.
absl::StatusOr<v1::FdResult> fd_request(Client::Impl& d, v1::ClientMessage& m, int fd) {
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
    if (int e = v1::send_message(d.sock, m, fd); e != 0) {
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
  if (d.lost.load(std::memory_order_acquire))
    return absl::UnavailableError("daemon lost: " + lost_reason());
  if (d.max_client_fds == 0)
    return absl::FailedPreconditionError(
        "this insideoutd takes no descriptors (it predates them, or runs with "
        "--max-client-fds 0)");
  v1::ClientMessage m;
  m.mutable_pass_fd();
  auto r = fd_request(d, m, fd);
  if (!r.ok()) return r.status();
  if (!r->error().empty() || r->id() == 0) {
    if (d.lost.load(std::memory_order_acquire)) return absl::UnavailableError(r->error());
    return absl::FailedPreconditionError("insideoutd refused the descriptor: " + r->error());
  }
  return r->id();
}

absl::Status Client::close_fd(std::uint32_t id) {
  auto& d = *impl_;
  if (d.lost.load(std::memory_order_acquire))
    return absl::UnavailableError("daemon lost: " + lost_reason());
  if (d.max_client_fds == 0)
    return absl::FailedPreconditionError("this insideoutd takes no descriptors");
  v1::ClientMessage m;
  m.mutable_close_fd()->set_id(id);
  auto r = fd_request(d, m, -1);
  if (!r.ok()) return r.status();
  if (!r->error().empty()) {
    if (d.lost.load(std::memory_order_acquire)) return absl::UnavailableError(r->error());
    return absl::NotFoundError(r->error());
  }
  return absl::OkStatus();
}

bool Client::daemon_lost() const noexcept { return impl_->lost.load(std::memory_order_acquire); }

std::string Client::lost_reason() const {
  std::lock_guard l(impl_->lost_mu);
  return impl_->lost_reason;
}

std::uint32_t Client::client_id() const noexcept { return impl_->client_id; }

void* Client::segment_base() const noexcept { return impl_->base; }

void Client::ring_bell() const noexcept { impl_->bell.ring(); }

ClientStats Client::stats() const noexcept {
  const auto& d = *impl_;
  return {d.submitted.load(std::memory_order_relaxed), d.completed.load(std::memory_order_relaxed),
          d.full_fail_fast.load(std::memory_order_relaxed),
          d.full_waits.load(std::memory_order_relaxed)};
}

}  // namespace insideout
