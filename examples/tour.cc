// A short tour of libinsideout: connect, submit each built-in, zero-copy and batched
// submits, a callback and a coroutine. Run it while insideoutd runs.
#include <coroutine>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "insideout/client.hpp"

namespace {

// The smallest coroutine type: starts at once, nobody awaits it.
struct Detached {
  struct promise_type {
    Detached get_return_object() { return {}; }
    std::suspend_never initial_suspend() noexcept { return {}; }
    std::suspend_never final_suspend() noexcept { return {}; }
    void return_void() {}
    void unhandled_exception() { std::terminate(); }
  };
};

Detached checksum_twice(insideout::Client& client, bool* finished) {
  const std::string text = "moving continuations beats moving data";
  auto h1 = client.submit("checksum", std::as_bytes(std::span(text))).value();
  const insideout::Result r1 = co_await h1;
  auto h2 = client.submit("checksum", std::as_bytes(std::span(text))).value();
  const insideout::Result r2 = co_await h2;
  std::printf("coroutine: checksum %016llx twice, %s\n", static_cast<unsigned long long>(r1.value),
              r1.value == r2.value ? "equal" : "DIFFERENT");
  *finished = true;
}

}  // namespace

int main() {
  auto connected = insideout::Client::connect({.name = "tour"});
  if (!connected.ok()) {
    std::fprintf(stderr, "tour: %s\n", std::string(connected.status().message()).c_str());
    return 1;
  }
  insideout::Client& client = **connected;

  // By name, environment copied in.
  const std::string hello = "hello, insideout";
  auto echo = client.submit("echo", std::as_bytes(std::span(hello))).value();
  echo.wait();
  const auto r = echo.result();
  std::printf("echo: %s '%.*s'\n", r.ok() ? "ok" : r.error().c_str(),
              static_cast<int>(r.data.size()), reinterpret_cast<const char*>(r.data.data()));

  auto fan = client.submit("fanout", {}, 100000).value();
  const auto fan_status = fan.wait();
  std::printf("fanout(100000): %s, %llu children ran\n", insideout::shm::status_name(fan_status),
              static_cast<unsigned long long>(fan.result().value));
  auto chain = client.submit("chain", {}, 1000).value();
  const auto chain_status = chain.wait();
  std::printf("chain(1000): %s, %llu steps\n", insideout::shm::status_name(chain_status),
              static_cast<unsigned long long>(chain.result().value));
  auto nap = client.submit("sleep", {}, 2'000'000).value();
  std::printf("sleep(2 ms): %s\n", insideout::shm::status_name(nap.wait()));

  // Zero-copy: fill a buffer in the segment in place, submit only the frame's offset.
  auto buf = client.allocate_buffer(4096);
  for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<std::byte>(i);
  insideout::Frame* f = client.allocate_frame();
  f->fn = client.function_id("checksum").value();
  f->env_off = client.offset_of(buf.data());
  f->env_len = static_cast<std::uint32_t>(buf.size());
  auto sum = client.submit(f).value();
  sum.wait();
  std::printf("zero-copy checksum of 4 KiB: %016llx\n",
              static_cast<unsigned long long>(sum.result().value));
  client.free_buffer(buf);

  // A batch of 64 noops, one doorbell.
  std::vector<insideout::Frame*> frames;
  const auto noop = client.function_id("noop").value();
  for (int i = 0; i < 64; ++i) {
    frames.push_back(client.allocate_frame());
    frames.back()->fn = noop;
  }
  std::vector<insideout::Handle> handles;
  if (auto st = client.submit_batch(frames, &handles); !st.ok()) {
    std::fprintf(stderr, "batch: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  int ok = 0;
  for (auto& h : handles) ok += h.wait() == insideout::Status::kOk;
  std::printf("batch: %d of 64 noops ok\n", ok);

  // A callback, run by whoever drains completions (here run_until).
  bool called = false;
  std::move(client.submit("noop").value()).then([&](const insideout::Result& res) {
    called = res.ok();
  });
  client.run_until([&] { return called; });
  std::printf("callback: %s\n", called ? "ran" : "did not run");

  bool finished = false;
  checksum_twice(client, &finished);
  client.run_until([&] { return finished; });

  // The serialized path: what a caller without this library sends.
  auto serial = client.call("echo", "over the socket");
  if (serial.ok()) std::printf("serialized echo: '%s'\n", serial->data.c_str());
  return 0;
}
