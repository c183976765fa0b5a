// The examples end to end against a real insideoutd loading the example plugins
// (examples/plugins: zstd, walk) with --plugin-dir: insideout_compress's output restored
// byte for byte by the stock zstd tool and by insideout_compress -d, the too-small-buffer
// failures naming the size needed, the clear errors of the client, and the walk
// coroutine's path across two pools.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <zstd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "control_support.h"
#include "insideout/client.hpp"
#include "support/daemon_process.h"

namespace insideout::testing {
namespace {

namespace fs = std::filesystem;

// The example plugins copied into a fresh directory (0755, files 0644), as the daemon
// wants it whatever the build directory's modes.
class ExamplePlugins {
 public:
  ExamplePlugins() {
    char tmpl[] = "/tmp/insideout-example-plugins-XXXXXX";
    if (::mkdtemp(tmpl) != nullptr) path_ = tmpl;
    ::chmod(path_.c_str(), 0755);
    for (const char* n : {"zstd.so", "walk.so"}) {
      const std::string to = path_ + "/" + n;
      std::error_code ec;
      fs::copy_file(std::string(INSIDEOUT_EXAMPLE_PLUGIN_DIR) + "/" + n, to, ec);
      EXPECT_FALSE(ec) << n << ": " << ec.message();
      ::chmod(to.c_str(), 0644);
    }
  }
  ~ExamplePlugins() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A scratch directory for files, removed afterwards.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/insideout-examples-XXXXXX";
    if (::mkdtemp(tmpl) != nullptr) path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Random bytes in runs of random letters and of zeros: compressible, but not to nothing.
std::string random_content(std::size_t n, std::uint32_t seed) {
  std::mt19937_64 rng(seed);
  std::string s;
  s.reserve(n);
  while (s.size() < n) {
    const std::size_t run = 1 + rng() % 300;
    const int kind = static_cast<int>(rng() % 3);
    for (std::size_t i = 0; i < run && s.size() < n; ++i)
      s.push_back(kind == 0 ? static_cast<char>(rng()) : kind == 1 ? 'a' + rng() % 4 : '\0');
  }
  return s;
}

std::size_t count_frames(const std::string& z) {
  std::size_t n = 0;
  for (std::size_t off = 0; off < z.size(); ++n) {
    const std::size_t len = ZSTD_findFrameCompressedSize(z.data() + off, z.size() - off);
    if (ZSTD_isError(len)) return 0;
    off += len;
  }
  return n;
}

Command compress_tool(const DaemonProcess& d, std::vector<std::string> args) {
  args.insert(args.begin(),
              {"env", "INSIDEOUT_RUNTIME_DIR=" + d.runtime_dir(), INSIDEOUT_COMPRESS_PATH});
  return run_command(args, std::chrono::seconds(60));
}

TEST(ExamplesTest, CompressShouldWriteAStreamThatTheZstdToolRestoresByteForByte) {
  ExamplePlugins plugins;
  DaemonProcess d({"--workers", "2", "--plugin-dir", plugins.path()});
  ASSERT_TRUE(d.ready()) << d.log();
  TempDir t;
  // 1 MiB and a bit: 17 chunks of 64 KiB, the last one short; 8 in flight at a time.
  const std::string content = random_content((1u << 20) + 12345, 7);
  write_file(t / "in", content);

  const Command c = compress_tool(d, {t / "in", t / "in.zst"});
  ASSERT_EQ(c.exit_code, 0) << c.err;
  const std::string z = slurp(t / "in.zst");
  EXPECT_EQ(count_frames(z), 17u) << "one zstd frame per 64 KiB chunk";
  EXPECT_LT(z.size(), content.size());

  const Command unz = run_command({"zstd", "-q", "-d", t / "in.zst", "-o", t / "back"});
  ASSERT_EQ(unz.exit_code, 0) << "the stock zstd tool: " << unz.err;
  EXPECT_TRUE(slurp(t / "back") == content) << "zstd -d did not restore the input byte for byte";

  const Command dz = compress_tool(d, {"-d", t / "in.zst", t / "back2"});
  ASSERT_EQ(dz.exit_code, 0) << dz.err;
  EXPECT_TRUE(slurp(t / "back2") == content) << "insideout_compress -d did not restore the input";

  // A corrupted frame (its checksum catches any flipped byte): -d fails, names the chunk,
  // and leaves no partial output.
  std::string bad = z;
  bad[z.size() / 2] = static_cast<char>(bad[z.size() / 2] ^ 0x5a);
  write_file(t / "bad.zst", bad);
  const Command bz = compress_tool(d, {"-d", t / "bad.zst", t / "bad"});
  EXPECT_EQ(bz.exit_code, 1);
  EXPECT_NE(bz.err.find("chunk "), std::string::npos) << bz.err;
  EXPECT_FALSE(fs::exists(t / "bad")) << "a partial output was left behind";
}

TEST(ExamplesTest, DecompressShouldRestoreWhatTheZstdToolWrote) {
  ExamplePlugins plugins;
  DaemonProcess d({"--workers", "2", "--plugin-dir", plugins.path()});
  ASSERT_TRUE(d.ready()) << d.log();
  TempDir t;
  // Two files compressed by the stock tool, concatenated: a stream of two frames, one of
  // them larger than the client's 64 KiB chunks.
  const std::string a = random_content(300000, 11), b = random_content(5000, 12);
  write_file(t / "a", a);
  write_file(t / "b", b);
  ASSERT_EQ(run_command({"zstd", "-q", t / "a", "-o", t / "a.zst"}).exit_code, 0);
  ASSERT_EQ(run_command({"zstd", "-q", t / "b", "-o", t / "b.zst"}).exit_code, 0);
  write_file(t / "ab.zst", slurp(t / "a.zst") + slurp(t / "b.zst"));

  const Command dz = compress_tool(d, {"-d", t / "ab.zst", t / "ab"});
  ASSERT_EQ(dz.exit_code, 0) << dz.err;
  EXPECT_TRUE(slurp(t / "ab") == a + b);
}

TEST(ExamplesTest, CompressShouldRoundTripAnEmptyFile) {
  ExamplePlugins plugins;
  DaemonProcess d({"--workers", "1", "--plugin-dir", plugins.path()});
  ASSERT_TRUE(d.ready()) << d.log();
  TempDir t;
  write_file(t / "empty", "");
  ASSERT_EQ(compress_tool(d, {t / "empty", t / "empty.zst"}).exit_code, 0);
  EXPECT_EQ(count_frames(slurp(t / "empty.zst")), 1u);
  const Command unz = run_command({"zstd", "-q", "-d", t / "empty.zst", "-o", t / "back"});
  ASSERT_EQ(unz.exit_code, 0) << unz.err;
  EXPECT_TRUE(fs::exists(t / "back"));
  EXPECT_EQ(fs::file_size(t / "back"), 0u);
}

TEST(ExamplesTest, CompressShouldNameThePluginDirOptionWhenThePluginIsNotLoaded) {
  DaemonProcess d({"--workers", "1"});  // no --plugin-dir
  ASSERT_TRUE(d.ready()) << d.log();
  TempDir t;
  write_file(t / "in", "hello");
  const Command c = compress_tool(d, {t / "in", t / "in.zst"});
  EXPECT_EQ(c.exit_code, 1);
  EXPECT_NE(c.err.find("no function zstd.compress"), std::string::npos) << c.err;
  EXPECT_NE(c.err.find("--plugin-dir"), std::string::npos) << c.err;
}

TEST(ExamplesTest, CompressShouldSayWhenNoDaemonRuns) {
  TempDir t;
  write_file(t / "in", "hello");
  const Command c = run_command({"env", "INSIDEOUT_RUNTIME_DIR=" + (t / "nowhere"),
                                 INSIDEOUT_COMPRESS_PATH, t / "in", t / "out"});
  EXPECT_EQ(c.exit_code, 1);
  EXPECT_NE(c.err.find("cannot reach insideoutd"), std::string::npos) << c.err;
  EXPECT_NE(c.err.find("--plugin-dir"), std::string::npos) << c.err;
}

// Submits `fn` on `bytes` in a buffer of `room` bytes, ARG the input's length.
Result run_in_place(Client& c, const char* fn, const std::string& bytes, std::size_t room,
                    std::string* out = nullptr) {
  auto buf = c.allocate_buffer(room);
  EXPECT_EQ(buf.size(), room);
  std::memcpy(buf.data(), bytes.data(), bytes.size());
  Frame* f = c.allocate_frame();
  EXPECT_NE(f, nullptr);
  f->fn = c.function_id(fn).value();
  f->flags = 0;
  f->arg = bytes.size();
  f->env_off = c.offset_of(buf.data());
  f->env_len = static_cast<std::uint32_t>(room);
  auto h = c.submit(f).value();
  EXPECT_EQ(h.wait_for(std::chrono::seconds(10)).value_or(Status::kPending) == Status::kPending,
            false);
  Result r = h.result();
  if (out != nullptr) out->assign(reinterpret_cast<const char*>(r.data.data()), r.data.size());
  r.data = {};
  c.free_buffer(buf);
  return r;
}

TEST(ExamplesTest, ZstdShouldFailNamingTheSizeNeededWhenTheBufferIsTooSmall) {
  ExamplePlugins plugins;
  DaemonProcess d({"--workers", "1", "--plugin-dir", plugins.path()});
  ASSERT_TRUE(d.ready()) << d.log();
  auto c = Client::connect({.socket_path = d.socket_path()}).value();

  // Incompressible bytes filling their buffer: the frame is larger than the input.
  std::mt19937 rng(3);
  std::string noise(256, '\0');
  for (char& ch : noise) ch = static_cast<char>(rng());
  std::string frame;
  ASSERT_TRUE(run_in_place(*c, "zstd.compress", noise, 1024, &frame).ok());
  const Result r = run_in_place(*c, "zstd.compress", noise, 256);
  EXPECT_EQ(r.status, Status::kResultTooLarge);
  EXPECT_EQ(r.message, "zstd.compress: the frame needs a buffer of " +
                           std::to_string(frame.size()) + " bytes, this one has 256")
      << r.error();

  // 100,000 zeros compress to a few bytes; decompressing them into 4 KiB cannot fit.
  const std::string zeros(100000, '\0');
  std::string small;
  auto big = run_in_place(*c, "zstd.compress", std::string(4096, '\0'), 4096, &small);
  ASSERT_TRUE(big.ok()) << big.error();
  std::vector<char> z(ZSTD_compressBound(zeros.size()));
  const std::size_t zn = ZSTD_compress(z.data(), z.size(), zeros.data(), zeros.size(), 3);
  ASSERT_FALSE(ZSTD_isError(zn));
  const Result dr = run_in_place(*c, "zstd.decompress", std::string(z.data(), zn), 4096);
  EXPECT_EQ(dr.status, Status::kResultTooLarge);
  EXPECT_EQ(dr.message,
            "zstd.decompress: the content needs a buffer of 100000 bytes, this one has 4096")
      << dr.error();

  // And the small one round-trips in place.
  std::string back;
  ASSERT_TRUE(run_in_place(*c, "zstd.decompress", small, 4096, &back).ok());
  EXPECT_EQ(back, std::string(4096, '\0'));
}

// walk.path on a daemon of `workers` workers on `cpus`, with a pool io of `io_size` on
// `io_cpus`.
void walk_across_pools(const char* workers, const char* cpus, const char* io_cpus,
                       std::uint32_t io_size) {
  SCOPED_TRACE(std::string("default pool on CPUs ") + cpus + ", io on " + io_cpus);
  ExamplePlugins plugins;
  DaemonProcess d({"--workers", workers, "--cpus", cpus, "--plugin-dir", plugins.path()});
  ASSERT_TRUE(d.ready()) << d.log();
  auto c = Client::connect({.socket_path = d.socket_path()}).value();

  // Without a pool "io" it fails and says so.
  auto f0 = c->submit("walk.path", std::as_bytes(std::span("0123456789abcdef", 16)), 0).value();
  ASSERT_EQ(f0.wait(), Status::kFailed);
  EXPECT_NE(f0.result().message.find("no pool named \"io\""), std::string::npos)
      << f0.result().error();

  auto stub = control_stub(d.runtime_dir());
  v1::CreatePoolRequest q;
  q.mutable_pool()->set_name("io");
  q.mutable_pool()->set_cpus(io_cpus);
  q.mutable_pool()->set_size(io_size);
  v1::CreatePoolResponse pr;
  ASSERT_TRUE(stub->CreatePool(ctx().get(), q, &pr).ok());
  for (int i = 0; i < 20; ++i) {
    const auto start = std::chrono::steady_clock::now();
    auto h = c->submit("walk.path", std::as_bytes(std::span("0123456789abcdef", 16)), 2000).value();
    ASSERT_EQ(h.wait(), Status::kOk) << h.result().error();
    EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::microseconds(2000))
        << "it did not sleep";
    const Result r = h.result();
    EXPECT_EQ(r.value, 3u);
    // "home>io>home": pool ids, the first and last the same, the middle another.
    const std::string path(reinterpret_cast<const char*>(r.data.data()), r.data.size());
    unsigned a = 0, b = 0, e = 0;
    char tail = 0;
    ASSERT_EQ(std::sscanf(path.c_str(), "%u>%u>%u%c", &a, &b, &e, &tail), 3) << path;
    EXPECT_EQ(a, e) << path;
    EXPECT_NE(a, b) << path;
  }
  // The middle steps ran on the io pool's worker.
  v1::ListWorkersRequest wq;
  wq.set_pool("io");
  v1::ListWorkersResponse wr;
  ASSERT_TRUE(stub->ListWorkers(ctx().get(), wq, &wr).ok());
  ASSERT_EQ(wr.workers_size(), static_cast<int>(io_size));
  std::uint64_t io_steps = 0;
  for (const auto& w : wr.workers()) io_steps += w.counters().steps();
  EXPECT_GE(io_steps, 20u);

  // Many at once, half of them sleeping first: two workers in each pool take them up
  // while others are still moving (a coroutine handed to another pool before it had
  // left the first worker was resumed twice, and the daemon crashed).
  std::vector<Handle> hs;
  for (int i = 0; i < 512; ++i) {
    hs.push_back(
        c->submit("walk.path", std::as_bytes(std::span("0123456789abcdef", 16)), i % 2 ? 50 : 0)
            .value());
  }
  for (auto& h : hs) {
    ASSERT_EQ(h.wait(), Status::kOk) << h.result().error();
    const Result r = h.result();
    const std::string path(reinterpret_cast<const char*>(r.data.data()), r.data.size());
    unsigned a = 0, b = 0, e = 0;
    ASSERT_EQ(std::sscanf(path.c_str(), "%u>%u>%u", &a, &b, &e), 3) << path;
    EXPECT_TRUE(a == e && a != b) << path;
  }
  EXPECT_TRUE(d.alive());
}

TEST(ExamplesTest, WalkShouldSleepMoveToPoolIoAndBackAndReturnItsPath) {
  // Both pools on one CPU: waking the io worker preempts the worker that moved the
  // coroutine, the moment a hand-over made too early shows (it failed every time so).
  walk_across_pools("1", "0", "0", 1);
  // Two workers in each pool over both CPUs.
  walk_across_pools("2", "0-1", "0-1", 2);
}

}  // namespace
}  // namespace insideout::testing
