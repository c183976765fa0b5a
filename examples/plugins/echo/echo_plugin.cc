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

constexpr char kServe[] = "echo.serve";

}  // namespace

INSIDEOUT_PLUGIN("echo", "1.0", plugin) {
  plugin.add("serve",
             "TCP echo server on 127.0.0.1:ARG (one continuation per connection); runs until "
             "cancelled or its client leaves",
             insideout::coroutine<insideout_examples::serve_loopback<connection, kServe>>, 0,
             65535);
}
