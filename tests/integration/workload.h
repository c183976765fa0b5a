// A pipelined, batched workload of built-in continuations for integration tests: it
// keeps up to `window` continuations in flight through submit_batch(), checks every
// result against what it computed locally, and says how many it ran and what went wrong.
// Runs in test children (fork()ed processes) as well as in the test process itself.
#pragma once

#include <sys/mman.h>
#include <xxhash.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <new>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "insideout/client.hpp"

namespace insideout::testing {

enum class Kind : std::uint8_t {
  kNoop,
  kEchoInline,
  kEchoBuffer,
  kChecksum,
  kFanout,
  kChain,
  kSleep,
  kCount
};
inline constexpr std::size_t kKinds = static_cast<std::size_t>(Kind::kCount);
inline const char* kind_name(Kind k) {
  static constexpr const char* names[] = {"noop",   "echo(inline)", "echo(buffer)", "checksum",
                                          "fanout", "chain",        "sleep"};
  return names[static_cast<std::size_t>(k)];
}

struct WorkloadOptions {
  std::array<std::uint64_t, kKinds> counts{};  // how many of each kind, shuffled together
  std::uint32_t window = 1024;                 // continuations in flight at most
  std::uint32_t batch = 128;                   // frames per submit_batch()
  std::uint32_t max_fanout = 8;                // fanout N in [1, max_fanout]
  std::uint32_t max_chain = 8;                 // chain K in [1, max_chain]
  std::uint32_t max_sleep_ns = 100'000;        // sleep in [0, max_sleep_ns]
  std::uint32_t max_echo_buffer = 512;         // echo(buffer) length in [17, max_echo_buffer]
  std::uint32_t max_checksum = 1024;           // checksum length in [1, max_checksum]
  std::uint64_t seed = 1;
  std::chrono::milliseconds completion_timeout{10000};  // for any one continuation
  // Open-ended runs: when set, the counts are cycled until stop() says so (then the
  // continuations in flight are waited for).
  std::function<bool()> stop;
  // When set, counts the continuations checked ok so far (for a watching parent).
  std::atomic<std::uint64_t>* progress = nullptr;
};

struct WorkloadReport {
  std::uint64_t submitted = 0;
  std::uint64_t ok = 0;  // completed with kOk and the expected result
  std::array<std::uint64_t, kKinds> ok_by_kind{};
  std::uint64_t failures = 0;
  std::string first_failure;

  void fail(const std::string& what) {
    if (failures++ == 0) first_failure = what;
  }
  bool clean() const { return failures == 0 && ok == submitted; }
  std::string summary() const {
    std::string s = std::to_string(ok) + "/" + std::to_string(submitted) + " ok, " +
                    std::to_string(failures) + " failures";
    if (failures != 0) s += " (first: " + first_failure + ")";
    return s;
  }
};

namespace workload_detail {

inline std::byte pattern_byte(std::uint64_t tag, std::size_t k) {
  return static_cast<std::byte>((tag * 131u + k * 7u + (tag >> 8)) & 0xFFu);
}
inline void fill_pattern(std::byte* p, std::size_t n, std::uint64_t tag) {
  for (std::size_t k = 0; k < n; ++k) p[k] = pattern_byte(tag, k);
}
inline bool matches_pattern(std::span<const std::byte> d, std::uint64_t tag) {
  for (std::size_t k = 0; k < d.size(); ++k) {
    if (d[k] != pattern_byte(tag, k)) return false;
  }
  return true;
}

struct Pending {
  Handle handle;
  Kind kind = Kind::kNoop;
  std::uint64_t tag = 0;
  std::uint64_t expect = 0;  // expected Result::value
  std::uint32_t len = 0;
  std::span<std::byte> buffer;  // ours to free after completion
};

}  // namespace workload_detail

// Runs the workload on `client`. Never blocks longer than options.completion_timeout on
// any one continuation; stops at the first continuation that does not complete in time.
inline WorkloadReport run_workload(Client& client, const WorkloadOptions& o) {
  using namespace workload_detail;
  WorkloadReport rep;
  std::array<std::uint32_t, kKinds> fn{};
  const char* fn_names[] = {"noop", "echo", "echo", "checksum", "fanout", "chain", "sleep"};
  for (std::size_t k = 0; k < kKinds; ++k) {
    auto id = client.function_id(fn_names[k]);
    if (!id.ok()) {
      rep.fail(std::string(id.status().message()));
      return rep;
    }
    fn[k] = *id;
  }
  std::mt19937_64 rng(o.seed);
  std::vector<Kind> kinds;
  for (std::size_t k = 0; k < kKinds; ++k)
    kinds.insert(kinds.end(), o.counts[k], static_cast<Kind>(k));
  std::shuffle(kinds.begin(), kinds.end(), rng);
  if (kinds.empty()) return rep;

  std::deque<Pending> pending;
  std::vector<Frame*> frames;
  std::vector<Pending> staged;
  std::vector<Handle> handles;
  std::size_t next = 0;
  std::uint64_t tag = o.seed << 40;
  const bool open_ended = static_cast<bool>(o.stop);
  auto more = [&] { return open_ended ? !o.stop() : next < kinds.size(); };

  auto check = [&](Pending& p) {
    const Result r = p.handle.result();
    const Frame* f = p.handle.frame();
    std::string why;
    if (r.status != Status::kOk) {
      why = "status " + r.error();
    } else if (f->tag != p.tag) {
      why = "tag changed to " + std::to_string(f->tag);
    } else if (r.value != p.expect) {
      why = "value " + std::to_string(r.value) + ", expected " + std::to_string(p.expect);
    } else if (p.kind == Kind::kEchoInline || p.kind == Kind::kEchoBuffer) {
      if (r.data.size() != p.len) {
        why = "result of " + std::to_string(r.data.size()) + " bytes, expected " +
              std::to_string(p.len);
      } else if (!matches_pattern(r.data, p.tag)) {
        why = "result bytes differ from the environment";
      } else if (p.kind == Kind::kEchoBuffer && r.data.data() != p.buffer.data()) {
        why = "buffer result not in place";
      } else if (p.kind == Kind::kEchoInline && !(f->flags & shm::kFrameResultInline)) {
        why = "inline result without kFrameResultInline";
      }
    } else if (!r.data.empty()) {
      why = "unexpected result data of " + std::to_string(r.data.size()) + " bytes";
    }
    if (why.empty()) {
      ++rep.ok;
      ++rep.ok_by_kind[static_cast<std::size_t>(p.kind)];
      if (o.progress != nullptr) o.progress->store(rep.ok, std::memory_order_relaxed);
    } else {
      rep.fail(std::string(kind_name(p.kind)) + " tag " + std::to_string(p.tag) + ": " + why);
    }
    if (!p.buffer.empty()) client.free_buffer(p.buffer);
    p.handle.reset();
  };

  // Waits for the oldest continuation; false when it did not complete in time.
  auto reap_front = [&](bool block) {
    while (!pending.empty()) {
      Pending& p = pending.front();
      if (!p.handle.poll()) {
        if (!block) return true;
        if (!p.handle.wait_for(o.completion_timeout)) {
          rep.fail(std::string(kind_name(p.kind)) + " tag " + std::to_string(p.tag) +
                   " did not complete within " + std::to_string(o.completion_timeout.count()) +
                   " ms");
          return false;
        }
      }
      check(p);
      pending.pop_front();
      block = false;
    }
    return true;
  };

  while (more() || !pending.empty()) {
    // Fill the window, one batch at a time.
    frames.clear();
    staged.clear();
    while (more() && pending.size() + frames.size() < o.window && frames.size() < o.batch) {
      const Kind kind = kinds[next % kinds.size()];
      Frame* f = client.allocate_frame();
      if (f == nullptr) break;
      Pending p;
      p.kind = kind;
      p.tag = ++tag;
      f->tag = p.tag;
      f->fn = fn[static_cast<std::size_t>(kind)];
      switch (kind) {
        case Kind::kNoop:
          break;
        case Kind::kEchoInline: {
          p.len = static_cast<std::uint32_t>(rng() % (shm::kInlineCapacity + 1));
          f->flags = shm::kFrameEnvInline;
          f->env_len = p.len;
          fill_pattern(reinterpret_cast<std::byte*>(f->inline_data), p.len, p.tag);
          p.expect = p.len;
          break;
        }
        case Kind::kEchoBuffer:
        case Kind::kChecksum: {
          const std::uint32_t lo = kind == Kind::kEchoBuffer ? shm::kInlineCapacity + 1 : 1;
          const std::uint32_t hi = kind == Kind::kEchoBuffer ? o.max_echo_buffer : o.max_checksum;
          p.len = lo + static_cast<std::uint32_t>(rng() % (hi - lo + 1));
          p.buffer = client.allocate_buffer(p.len);
          if (p.buffer.empty()) {
            client.release_frame(f);
            f = nullptr;
            break;
          }
          fill_pattern(p.buffer.data(), p.len, p.tag);
          f->env_off = client.offset_of(p.buffer.data());
          f->env_len = p.len;
          p.expect = kind == Kind::kEchoBuffer ? p.len : XXH3_64bits(p.buffer.data(), p.len);
          break;
        }
        case Kind::kFanout:
          f->arg = p.expect = 1 + rng() % o.max_fanout;
          break;
        case Kind::kChain:
          f->arg = p.expect = 1 + rng() % o.max_chain;
          break;
        case Kind::kSleep:
          f->arg = rng() % (std::uint64_t{o.max_sleep_ns} + 1);
          break;
        case Kind::kCount:
          break;
      }
      if (f == nullptr) break;  // no buffer free: reap first
      ++next;
      frames.push_back(f);
      staged.push_back(std::move(p));
    }
    if (!frames.empty()) {
      handles.clear();
      const absl::Status st = client.submit_batch(frames, &handles);
      for (std::size_t i = 0; i < handles.size(); ++i) {
        staged[i].handle = std::move(handles[i]);
        pending.push_back(std::move(staged[i]));
      }
      rep.submitted += handles.size();
      if (!st.ok()) {
        for (std::size_t i = handles.size(); i < frames.size(); ++i) {
          if (!staged[i].buffer.empty()) client.free_buffer(staged[i].buffer);
          client.release_frame(frames[i]);
        }
        rep.fail("submit_batch: " + std::string(st.message()));
        break;
      }
    }
    // Take what is done; block on the oldest when the window is full or nothing more
    // could be staged.
    const bool full = pending.size() >= o.window || frames.empty() || !more();
    if (!reap_front(full)) break;
  }
  // Whatever is left (after a failure) is waited for, bounded, so frames are not freed
  // under the daemon's feet.
  for (auto& p : pending) {
    if (!p.handle.poll() && !p.handle.wait_for(o.completion_timeout)) continue;
    if (!p.buffer.empty()) client.free_buffer(p.buffer);
  }
  return rep;
}

// An object of T in memory shared with fork()ed children (MAP_SHARED | MAP_ANONYMOUS).
// Never unmapped: a test maps a handful of bytes.
template <class T>
T* map_shared() {
  void* p = ::mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  return new (p) T();
}

}  // namespace insideout::testing

namespace insideout::shm {
// Readable gtest output for statuses and details.
inline void PrintTo(Status s, std::ostream* os) {
  *os << status_name(s) << " (" << static_cast<int>(s) << ")";
}
inline void PrintTo(ErrorDetail d, std::ostream* os) {
  *os << detail_name(d) << " (" << static_cast<int>(d) << ")";
}
}  // namespace insideout::shm
