// The http plugin: a small HTTP/1.1 responder written as coroutine continuations (see
// README.md).
//
//   http.serve   ARG is a port; serves 127.0.0.1:ARG: GET / (or HEAD /) answers 200 with a
//                short text body, any other path 404, another method 405, a request that
//                does not parse 400 (then closes), headers over 8 KiB 431 (then closes).
//                Connections are kept alive (HTTP/1.1's default; "Connection: close" and
//                HTTP/1.0 without keep-alive end them after the answer), pipelined
//                requests are answered in order. Requests with a body are refused (400).
//                Runs until it is cancelled or its client leaves.
#include <algorithm>
#include <cstring>
#include <insideout/sdk.hpp>
#include <string>
#include <string_view>

#include "../common/tcp.h"

namespace {

using insideout::CoContext;
using insideout::Continuation;
using insideout::Error;
using insideout_examples::OwnedFd;

constexpr std::size_t kMaxHeader = 8192;  // a request's line and headers, at most
constexpr std::string_view kBody = "hello from insideout\n";

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return (x | 0x20) == (y | 0x20);
         });
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

struct Answer {
  int status = 400;
  bool keep_alive = false;
  bool head = false;
};

// One request's head (without the blank line): what to answer.
Answer parse(std::string_view head) {
  Answer a;
  const std::size_t eol = head.find("\r\n");
  const std::string_view line = head.substr(0, eol);
  const std::size_t sp1 = line.find(' ');
  const std::size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos) return a;
  const std::string_view method = line.substr(0, sp1);
  const std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  const std::string_view version = line.substr(sp2 + 1);
  if (method.empty() || target.empty() || target.front() != '/') return a;
  for (char ch : method) {
    if (ch < 'A' || ch > 'Z') return a;
  }
  bool http11;
  if (version == "HTTP/1.1") {
    http11 = true;
  } else if (version == "HTTP/1.0") {
    http11 = false;
  } else {
    return a;
  }
  bool keep = http11;
  std::string_view rest = eol == std::string_view::npos ? std::string_view() : head.substr(eol + 2);
  while (!rest.empty()) {
    const std::size_t e = rest.find("\r\n");
    const std::string_view h = rest.substr(0, e);
    rest = e == std::string_view::npos ? std::string_view() : rest.substr(e + 2);
    const std::size_t colon = h.find(':');
    if (colon == 0 || colon == std::string_view::npos) return a;  // not a header
    const std::string_view name = h.substr(0, colon);
    const std::string_view value = trim(h.substr(colon + 1));
    if (name.find_first_of(" \t") != std::string_view::npos) return a;
    if (iequals(name, "connection")) {
      if (iequals(value, "close")) keep = false;
      if (iequals(value, "keep-alive")) keep = true;
    } else if (iequals(name, "transfer-encoding") ||
               (iequals(name, "content-length") && value != "0")) {
      return a;  // a body: not served here
    }
  }
  a.keep_alive = keep;
  a.head = method == "HEAD";
  if (method != "GET" && method != "HEAD") {
    a.status = 405;
  } else {
    a.status = target == "/" ? 200 : 404;
  }
  return a;
}

std::string response(const Answer& a) {
  const char* reason = a.status == 200   ? "OK"
                       : a.status == 404 ? "Not Found"
                       : a.status == 405 ? "Method Not Allowed"
                       : a.status == 431 ? "Request Header Fields Too Large"
                                         : "Bad Request";
  const std::string body = a.status == 200 ? std::string(kBody) : std::string(reason) + "\n";
  std::string r = "HTTP/1.1 " + std::to_string(a.status) + " " + reason +
                  "\r\nContent-Type: text/plain\r\nContent-Length: " + std::to_string(body.size()) +
                  (a.status == 405 ? "\r\nAllow: GET, HEAD" : "") +
                  (a.keep_alive ? "\r\n\r\n" : "\r\nConnection: close\r\n\r\n");
  if (!a.head) r += body;
  return r;
}

// After an answer that ends a connection early (400, 431): no more writes, and what the
// peer still sends is read and dropped (at most 64 KiB, 1 s), so that closing with
// unread bytes does not reset the connection before the peer has read the answer.
insideout::CoContext::Io linger_read(CoContext c, int fd, std::span<std::byte> buf) {
  return c.recv(fd, buf, 0, std::chrono::seconds(1));
}

// One connection (ARG: its descriptor): answers requests until the peer hangs up, asks
// to close, sends garbage, or the client's work ends.
Continuation connection(CoContext c) {
  OwnedFd fd(c, static_cast<int>(c.arg()));
  std::string in;  // what was read and not yet answered: at most kMaxHeader
  in.reserve(kMaxHeader);
  char buf[2048];
  for (;;) {
    std::size_t end;
    while ((end = in.find("\r\n\r\n")) == std::string::npos) {
      if (in.size() >= kMaxHeader) {
        const std::string r = response({431, false, false});
        co_await c.send(fd.get(), std::as_bytes(std::span(r)));
        ::shutdown(fd.get(), SHUT_WR);
        for (std::size_t dropped = 0; dropped < 65536;) {
          const std::int64_t n =
              co_await linger_read(c, fd.get(), std::as_writable_bytes(std::span(buf)));
          if (n <= 0) break;
          dropped += static_cast<std::size_t>(n);
        }
        co_return 0;
      }
      const std::size_t room = std::min(sizeof(buf), kMaxHeader - in.size());
      const std::int64_t n =
          co_await c.recv(fd.get(), std::as_writable_bytes(std::span(buf, room)));
      if (n <= 0) co_return 0;  // hung up, an error, or cancelled
      in.append(buf, static_cast<std::size_t>(n));
    }
    const Answer a = parse(std::string_view(in).substr(0, end));
    in.erase(0, end + 4);
    const std::string r = response(a);
    std::size_t off = 0;
    while (off < r.size()) {
      const std::int64_t w = co_await c.send(fd.get(), std::as_bytes(std::span(r)).subspan(off));
      if (w <= 0) co_return 0;
      off += static_cast<std::size_t>(w);
    }
    if (a.status == 400) {
      ::shutdown(fd.get(), SHUT_WR);
      for (std::size_t dropped = 0; dropped < 65536;) {
        const std::int64_t n =
            co_await linger_read(c, fd.get(), std::as_writable_bytes(std::span(buf)));
        if (n <= 0) break;
        dropped += static_cast<std::size_t>(n);
      }
    }
    if (!a.keep_alive) co_return 0;
  }
}

constexpr char kServe[] = "http.serve";

}  // namespace

INSIDEOUT_PLUGIN("http", "1.0", plugin) {
  plugin.add("serve",
             "HTTP/1.1 on 127.0.0.1:ARG: GET / answers 200, other paths 404, garbage 400; runs "
             "until cancelled or its client leaves",
             insideout::coroutine<insideout_examples::serve_loopback<connection, kServe>>, 0,
             65535);
}
