// The echo plugin: a TCP echo server written as coroutine continuations (see README.md).
//
//   echo.serve   ARG is a port; listens on 127.0.0.1:ARG and echoes every connection's
//                bytes back until the peer hangs up. Runs until it is cancelled or its
//                client leaves; then the listening socket and every connection close.
#include <cstring>
#include <insideout/sdk.hpp>
#include <string>

#include "../common/tcp.h"

namespace {

using insideout::CoContext;
using insideout::Continuation;
using insideout::Error;
using insideout_examples::OwnedFd;

// One connection (ARG: its descriptor): echoes until the peer hangs up, an error, or the
// client's work ends (cancelled: the waits end with -ECANCELED, or the engine cuts the
// frame off; the descriptor closes either way).
Continuation connection(CoContext c) {
  OwnedFd fd(c, static_cast<int>(c.arg()));
  std::byte buf[2048];  // in the frame: about 2 KiB per connection
  for (;;) {
    const std::int64_t n = co_await c.recv(fd.get(), buf);
    if (n <= 0) co_return 0;  // the peer hung up (0), or an error, or cancelled
    std::size_t off = 0;
    while (off < static_cast<std::size_t>(n)) {
      const std::int64_t w = co_await c.send(
          fd.get(), std::span<const std::byte>(buf + off, static_cast<std::size_t>(n) - off));
      if (w <= 0) co_return 0;
      off += static_cast<std::size_t>(w);
    }
  }
}

// The accept loop: one child continuation per connection, which any worker may take.
Continuation serve(CoContext c) {
  if (c.arg() == 0)
    co_return c.fail("echo.serve: ARG is the port (1..65535)", Error::kInvalidArgument);
  const int lfd = insideout_examples::listen_loopback(static_cast<std::uint16_t>(c.arg()));
  thread_local std::string msg;  // fail() copies it at once
  if (lfd < 0) {
    msg = "echo.serve: listening on 127.0.0.1:" + std::to_string(c.arg()) + ": " +
          std::strerror(-lfd);
    co_return c.fail(msg);
  }
  OwnedFd listener(c, lfd);
  for (;;) {
    const std::int64_t fd = co_await c.accept(listener.get());
    if (fd >= 0) {
      c.spawn<connection>(static_cast<std::uint64_t>(fd));
      continue;
    }
    if (fd == -ECANCELED || c.cancelled()) co_return c.fail("cancelled", Error::kCancelled);
    // Out of descriptors, or a connection reset before it was taken: the server goes on
    // (after a breath, so that a full table does not spin a worker).
    if (fd == -EMFILE || fd == -ENFILE || fd == -ENOBUFS || fd == -ENOMEM) {
      co_await c.sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    if (fd == -ECONNABORTED || fd == -EINTR || fd == -EPROTO) continue;
    msg = std::string("echo.serve: accept: ") + std::strerror(static_cast<int>(-fd));
    co_return c.fail(msg);
  }
}

}  // namespace

INSIDEOUT_PLUGIN("echo", "1.0", plugin) {
  plugin.add("serve",
             "TCP echo server on 127.0.0.1:ARG (one continuation per connection); runs until "
             "cancelled or its client leaves",
             insideout::coroutine<serve>, 0, 65535);
}
