// insideout_compress: zstd through insideoutd (the zstd example plugin).
//
//   insideout_compress IN OUT      IN in chunks of 64 KiB, each compressed by zstd.compress
//                                  in the daemon, in place in this client's segment, several
//                                  in flight; OUT is their frames one after the other, which
//                                  is a zstd stream: `zstd -d OUT` restores IN.
//   insideout_compress -d IN OUT   IN a zstd stream of frames that record their content size
//                                  (what this program and the zstd tool on a file write),
//                                  each frame decompressed by zstd.decompress.
//
// libzstd is used here only to find frame boundaries; the work runs in the daemon.
#include <zstd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include "insideout/client.hpp"

namespace {

constexpr std::size_t kChunk = 64 * 1024;
constexpr std::uint32_t kInFlight = 8;
constexpr std::uint32_t kBlock = 4096;  // the segment's buffer block (a multiple of 64)
// The largest buffer -d asks for per frame: the daemon's default --max-segment-mib (256)
// holds kInFlight of them.
constexpr std::size_t kMaxSlot = 16u << 20;

int usage() {
  std::fprintf(stderr,
               "usage: insideout_compress IN OUT      compress IN to OUT (zstd -d restores it)\n"
               "       insideout_compress -d IN OUT   decompress a zstd stream\n"
               "Needs insideoutd running with the zstd plugin loaded:\n"
               "  insideoutd --plugin-dir DIR   (DIR holding zstd.so, e.g. "
               "/usr/local/lib/insideout/plugins)\n"
               "Environment: INSIDEOUT_RUNTIME_DIR, the daemon's runtime directory.\n");
  return 2;
}

const char* g_partial = nullptr;  // OUT while it is being written: removed on failure

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "insideout_compress: %s\n", msg.c_str());
  if (g_partial != nullptr) std::remove(g_partial);
  std::exit(1);
}

std::size_t round_up(std::size_t n, std::size_t to) { return (n + to - 1) / to * to; }

// A client whose segment holds `slots` buffers of `slot_bytes`, and the function's id.
struct Connection {
  std::unique_ptr<insideout::Client> client;
  std::uint32_t fn = 0;
};

Connection connect(const char* function, std::size_t slot_bytes, std::uint32_t slots) {
  insideout::ClientOptions o;
  o.name = "insideout_compress";
  o.segment.ring_capacity = 64;
  o.segment.frame_count = 64;
  o.segment.buffer_block_size = kBlock;
  o.segment.buffer_block_count = static_cast<std::uint32_t>(slots * (slot_bytes / kBlock));
  auto c = insideout::Client::connect(o);
  if (!c.ok())
    die("cannot reach insideoutd: " + std::string(c.status().message()) +
        "\n  start it with the zstd plugin: insideoutd --plugin-dir DIR (DIR holding zstd.so)");
  Connection conn{std::move(*c), 0};
  auto id = conn.client->function_id(function);
  if (!id.ok())
    die(std::string("the daemon has no function ") + function + " (" +
        std::string(id.status().message()) +
        ")\n  load the zstd plugin: insideoutd --plugin-dir DIR (DIR holding zstd.so), or "
        "insideoutctl plugin load DIR/zstd.so");
  conn.fn = *id;
  return conn;
}

// Runs chunks through `fn` in order, up to `slots` in flight. `next(buf)` fills a buffer
// with the next input and returns its length (nullopt at the end); every result is
// written to `out` in submission order.
template <typename Next>
void pipeline(Connection& conn, std::size_t slot_bytes, std::uint32_t slots, Next next,
              std::FILE* out, const char* out_path) {
  struct Slot {
    std::span<std::byte> buf;
    insideout::Handle h;
  };
  std::vector<std::span<std::byte>> free_bufs;
  for (std::uint32_t i = 0; i < slots; ++i) {
    auto b = conn.client->allocate_buffer(slot_bytes);
    if (b.empty()) die("the daemon's segment holds fewer buffers than asked for");
    free_bufs.push_back(b);
  }
  std::deque<Slot> inflight;
  bool more = true;
  std::uint64_t index = 0;
  while (more || !inflight.empty()) {
    while (more && !free_bufs.empty()) {
      std::span<std::byte> b = free_bufs.back();
      const std::optional<std::size_t> n = next(b);
      if (!n) {
        more = false;
        break;
      }
      free_bufs.pop_back();
      insideout::Frame* f = conn.client->allocate_frame();
      if (f == nullptr) die("no free frame in the segment");
      f->fn = conn.fn;
      f->flags = 0;
      f->tag = index++;
      f->arg = *n;  // the input's length at the start of the buffer
      f->env_off = conn.client->offset_of(b.data());
      f->env_len = static_cast<std::uint32_t>(b.size());
      auto h = conn.client->submit(f);
      if (!h.ok()) die("submit: " + std::string(h.status().message()));
      inflight.push_back({b, std::move(*h)});
    }
    if (inflight.empty()) break;
    Slot& s = inflight.front();
    const insideout::Status st = s.h.wait();
    const insideout::Result r = s.h.result();
    if (st != insideout::Status::kOk)
      die("chunk " + std::to_string(s.h.frame()->tag) + ": " + r.error());
    if (!r.data.empty() && std::fwrite(r.data.data(), 1, r.data.size(), out) != r.data.size())
      die(std::string(out_path) + ": " + std::strerror(errno));
    s.h.reset();
    free_bufs.push_back(s.buf);
    inflight.pop_front();
  }
}

int compress(const char* in_path, const char* out_path) {
  std::FILE* in = std::fopen(in_path, "rb");
  if (in == nullptr) die(std::string(in_path) + ": " + std::strerror(errno));
  const std::size_t slot = round_up(ZSTD_compressBound(kChunk), kBlock);
  Connection conn = connect("zstd.compress", slot, kInFlight);
  std::FILE* out = std::fopen(out_path, "wb");
  if (out == nullptr) die(std::string(out_path) + ": " + std::strerror(errno));
  g_partial = out_path;
  bool first = true;
  pipeline(
      conn, slot, kInFlight,
      [&](std::span<std::byte> b) -> std::optional<std::size_t> {
        const std::size_t n = std::fread(b.data(), 1, kChunk, in);
        if (std::ferror(in)) die(std::string(in_path) + ": " + std::strerror(errno));
        // An empty input still becomes one (empty) frame: an empty file is no zstd stream.
        if (n == 0 && !first) return std::nullopt;
        first = false;
        return n;
      },
      out, out_path);
  std::fclose(in);
  if (std::fclose(out) != 0) die(std::string(out_path) + ": " + std::strerror(errno));
  g_partial = nullptr;
  return 0;
}

int decompress(const char* in_path, const char* out_path) {
  std::ifstream f(in_path, std::ios::binary);
  if (!f) die(std::string(in_path) + ": " + std::strerror(errno));
  const std::vector<char> in((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  // Frame boundaries, and the largest buffer one frame needs (its bytes, then its content).
  struct Piece {
    std::size_t off, len;
  };
  std::vector<Piece> frames;
  std::size_t need = kBlock;
  for (std::size_t off = 0; off < in.size();) {
    const std::size_t len = ZSTD_findFrameCompressedSize(in.data() + off, in.size() - off);
    if (ZSTD_isError(len))
      die(std::string(in_path) + ": not a zstd stream at byte " + std::to_string(off) + " (" +
          ZSTD_getErrorName(len) + ")");
    const unsigned long long content = ZSTD_getFrameContentSize(in.data() + off, len);
    if (content == ZSTD_CONTENTSIZE_UNKNOWN)
      die(std::string(in_path) + ": the frame at byte " + std::to_string(off) +
          " does not record its size (a streamed zstd); decompress it with zstd -d");
    const std::size_t frame_need =
        std::max<std::size_t>(len, content == ZSTD_CONTENTSIZE_ERROR ? 0 : content);
    if (frame_need > kMaxSlot)
      die(std::string(in_path) + ": the frame at byte " + std::to_string(off) + " needs " +
          std::to_string(frame_need) + " bytes, more than the " + std::to_string(kMaxSlot) +
          " this client asks the daemon for per frame; decompress it with zstd -d");
    need = std::max(need, frame_need);
    frames.push_back({off, len});
    off += len;
  }
  const std::size_t slot = round_up(need, kBlock);
  Connection conn = connect("zstd.decompress", slot, kInFlight);
  std::FILE* out = std::fopen(out_path, "wb");
  if (out == nullptr) die(std::string(out_path) + ": " + std::strerror(errno));
  g_partial = out_path;
  std::size_t next = 0;
  pipeline(
      conn, slot, kInFlight,
      [&](std::span<std::byte> b) -> std::optional<std::size_t> {
        if (next == frames.size()) return std::nullopt;
        const Piece p = frames[next++];
        std::memcpy(b.data(), in.data() + p.off, p.len);
        return p.len;
      },
      out, out_path);
  if (std::fclose(out) != 0) die(std::string(out_path) + ": " + std::strerror(errno));
  g_partial = nullptr;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  bool d = false;
  if (!args.empty() && (args[0] == "-h" || args[0] == "--help")) {
    usage();
    return 0;
  }
  if (!args.empty() && args[0] == "-d") {
    d = true;
    args.erase(args.begin());
  }
  if (args.size() != 2) return usage();
  return d ? decompress(args[0].c_str(), args[1].c_str())
           : compress(args[0].c_str(), args[1].c_str());
}
