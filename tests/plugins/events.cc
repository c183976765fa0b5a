// A test plugin for the event queue in the daemon: waits on a signal the test sends to
// the daemon, and a pipe round trip between two of its own continuations.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <insideout/sdk.hpp>

namespace {

// Waits up to ARG ms for SIGUSR1: the signal's number, or fails with the wait's error.
insideout::Continuation wait_signal(insideout::CoContext c) {
  const std::int64_t r = co_await c.signal(SIGUSR1, std::chrono::milliseconds(c.arg()));
  if (r < 0) co_return c.fail(r == -ETIMEDOUT ? "no signal came" : "the signal wait failed");
  co_return static_cast<std::uint64_t>(r);
}

// Writes one byte to the pipe end in ARG after 10 ms, then closes it.
insideout::Continuation late_writer(insideout::CoContext c) {
  const int fd = static_cast<int>(c.arg());
  co_await c.sleep_for(std::chrono::milliseconds(10));
  const std::array<std::byte, 1> b{std::byte{42}};
  (void)co_await c.write(fd, b);
  c.close(fd);
  co_return 0;
}

// A pipe between two continuations: this one waits for the byte the other writes later.
insideout::Continuation pipe_trip(insideout::CoContext c) {
  int p[2];
  if (::pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0) co_return c.fail("pipe2 failed");
  c.spawn<late_writer>(static_cast<std::uint64_t>(p[1]));
  std::array<std::byte, 1> b{};
  const std::int64_t n = co_await c.read(p[0], b, std::chrono::seconds(5));
  c.close(p[0]);
  if (n != 1) co_return c.fail("the byte did not come");
  co_return static_cast<std::uint64_t>(b[0]);
}

// Parks on a pipe nobody writes, for ARG ms at most (a client that leaves cuts it off).
insideout::Continuation stuck(insideout::CoContext c) {
  int p[2];
  if (::pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0) co_return c.fail("pipe2 failed");
  struct Closer {  // the frame's destruction (a cut-off) closes the pipe too
    insideout::CoContext c;
    int fds[2];
    ~Closer() {
      c.close(fds[0]);
      c.close(fds[1]);
    }
  } closer{c, {p[0], p[1]}};
  const std::int64_t r = co_await c.readable(p[0], std::chrono::milliseconds(c.arg()));
  co_return static_cast<std::uint64_t>(-r);
}

}  // namespace

INSIDEOUT_PLUGIN("events", "1.0", plugin) {
  plugin.add("wait_signal", "waits up to ARG ms for SIGUSR1", insideout::coroutine<wait_signal>);
  plugin.add("pipe_trip", "a byte through a pipe between two continuations",
             insideout::coroutine<pipe_trip>);
  plugin.add("stuck", "waits up to ARG ms on a pipe nobody writes", insideout::coroutine<stuck>);
}
