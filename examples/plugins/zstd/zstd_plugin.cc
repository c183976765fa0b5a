// The zstd plugin: compresses and decompresses a buffer in place in the client's segment.
//
//   zstd.compress    the environment is a buffer in the segment; its first ARG bytes are
//                    the input. The result is one zstd frame (level 3, content size
//                    recorded, checksum on) in the same buffer: Result::data.
//   zstd.decompress  the first ARG bytes of the buffer are one or more zstd frames; the
//                    result is the content, in the same buffer.
//
// Both work through a scratch buffer of the worker's own (thread-local: a step never
// shares its worker), then copy the result back over the input. When the result does not
// fit in the buffer the continuation fails with Error::kResultTooLarge and a message
// naming the size it needs; the buffer is then left as it was.
#define ZSTD_STATIC_LINKING_ONLY  // ZSTD_decompressBound
#include <zstd.h>
#include <zstd_errors.h>

#include <cstdio>
#include <cstring>
#include <insideout/sdk.hpp>
#include <memory>
#include <mutex>
#include <vector>

namespace {

constexpr int kLevel = 3;

// One compression and one decompression context per worker thread, and a scratch buffer
// (a step never shares its worker). The thread-local is a plain pointer: a thread_local
// with a destructor would pin the library in memory (glibc keeps a module mapped while
// its thread-local destructors are pending), so an unload would leave it mapped. Every
// Scratch is listed here instead and freed when the library is unloaded, by which time
// nothing of it can run any more.
struct Scratch {
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  ZSTD_DCtx* dctx = ZSTD_createDCtx();
  std::vector<unsigned char> bytes;
  ~Scratch() {
    ZSTD_freeCCtx(cctx);
    ZSTD_freeDCtx(dctx);
  }
  unsigned char* room(std::size_t n) {
    if (bytes.size() < n) bytes.resize(n);
    return bytes.data();
  }
};

class AllScratch {
 public:
  Scratch* make() {
    auto s = std::make_unique<Scratch>();
    if (s->cctx == nullptr || s->dctx == nullptr) return nullptr;
    std::lock_guard lock(mu_);
    all_.push_back(std::move(s));
    return all_.back().get();
  }

 private:
  std::mutex mu_;
  std::vector<std::unique_ptr<Scratch>> all_;  // freed at unload (a static's destructor)
};
AllScratch all_scratch;
thread_local Scratch* tls_scratch = nullptr;

Scratch* scratch() {
  if (tls_scratch == nullptr) tls_scratch = all_scratch.make();
  return tls_scratch;
}

insideout::Step too_large(insideout::Context& c, const char* what, unsigned long long need,
                          std::size_t have) {
  char msg[120];
  std::snprintf(msg, sizeof msg, "%s needs a buffer of %llu bytes, this one has %zu", what, need,
                have);
  return c.fail(msg, insideout::Error::kResultTooLarge);
}

// The input: the first ARG bytes of the output buffer.
bool input(insideout::Context& c, std::span<std::byte> buf, std::size_t* n) {
  if (c.arg() > buf.size()) return false;
  *n = static_cast<std::size_t>(c.arg());
  return true;
}

insideout::Step compress(insideout::Task&, insideout::Context& c) {
  const auto buf = c.output();
  std::size_t n = 0;
  if (!input(c, buf, &n))
    return c.fail("ARG (the input length) exceeds the buffer", insideout::Error::kInvalidArgument);
  Scratch* s = scratch();
  if (s == nullptr) return c.fail("zstd.compress: out of memory");
  const std::size_t bound = ZSTD_compressBound(n);
  unsigned char* out = s->room(bound);
  ZSTD_CCtx* cc = s->cctx;
  ZSTD_CCtx_reset(cc, ZSTD_reset_session_and_parameters);
  ZSTD_CCtx_setParameter(cc, ZSTD_c_compressionLevel, kLevel);
  ZSTD_CCtx_setParameter(cc, ZSTD_c_checksumFlag, 1);
  const std::size_t r = ZSTD_compress2(cc, out, bound, buf.data(), n);
  if (ZSTD_isError(r)) return c.fail(ZSTD_getErrorName(r));
  if (r > buf.size()) return too_large(c, "zstd.compress: the frame", r, buf.size());
  std::memcpy(buf.data(), out, r);
  c.set_output_len(r);
  return c.complete(r);
}

insideout::Step decompress(insideout::Task&, insideout::Context& c) {
  const auto buf = c.output();
  std::size_t n = 0;
  if (!input(c, buf, &n))
    return c.fail("ARG (the input length) exceeds the buffer", insideout::Error::kInvalidArgument);
  Scratch* s = scratch();
  if (s == nullptr) return c.fail("zstd.decompress: out of memory");
  // The content size, from the frames' headers where every one records it (the zstd
  // tool and zstd.compress do): then the size needed is known before decompressing.
  const unsigned long long size = ZSTD_findDecompressedSize(buf.data(), n);
  if (size == ZSTD_CONTENTSIZE_ERROR)
    return c.fail("zstd.decompress: not zstd frames", insideout::Error::kInvalidArgument);
  if (size != ZSTD_CONTENTSIZE_UNKNOWN && size > buf.size())
    return too_large(c, "zstd.decompress: the content", size, buf.size());
  const std::size_t room =
      size != ZSTD_CONTENTSIZE_UNKNOWN ? static_cast<std::size_t>(size) : buf.size();
  unsigned char* out = s->room(room == 0 ? 1 : room);
  const std::size_t r = ZSTD_decompressDCtx(s->dctx, out, room, buf.data(), n);
  if (ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall)
    return too_large(c, "zstd.decompress: the content (at most)",
                     ZSTD_decompressBound(buf.data(), n), buf.size());
  if (ZSTD_isError(r)) return c.fail(ZSTD_getErrorName(r), insideout::Error::kInvalidArgument);
  std::memcpy(buf.data(), out, r);
  c.set_output_len(r);
  return c.complete(r);
}

}  // namespace

INSIDEOUT_PLUGIN("zstd", "1.0", plugin) {
  constexpr auto kInPlace = IO_FN_OUTPUT | IO_FN_NEEDS_BUFFER;
  plugin.add("compress", "compresses the first ARG bytes of the buffer in place (one frame)",
             insideout::step<compress>, kInPlace);
  plugin.add("decompress", "decompresses the first ARG bytes of the buffer (zstd frames) in place",
             insideout::step<decompress>, kInPlace);
}
