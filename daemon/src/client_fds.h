// The descriptors one client handed to the daemon (Client::send_fd(), PassFd over the
// registration socket), by id, for its continuations (WorkSource::client_fd()).
//
// A descriptor number a continuation looked up must never come to name something else
// while that continuation may still use it (another client's socket, a daemon file), so
// a number is never freed while the client may have continuations running: a closed
// entry (CloseFd, or the client leaving) becomes a tombstone, its number pointing at a
// dead socket (reads see end of file, writes EPIPE) through dup2(), which releases the
// client's file at once. Tombstones are closed when the client has no continuation in
// flight (reap()) and when its slot is reclaimed (close_all, before reuse). Live
// entries and tombstones together are bounded by the client's limit (--max-client-fds).
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace insideout::daemon {

class ClientFds {
 public:
  // Makes the dead socket that tombstones point at (once per process; later calls do
  // nothing). Otherwise the first tombstone makes it.
  static void prepare();
  // Registry thread. Takes `fd` (received with MSG_CMSG_CLOEXEC) into the table: its id
  // (1..limit) in *id, or false with *error (and `fd` closed): not a kind the daemon
  // serves, or the table is full.
  bool add(int fd, std::uint32_t limit, std::uint32_t* id, std::string* error);
  // Registry thread. Turns entry `id` into a tombstone (the caller fails the waits on its
  // number, get(id), before and after); false when there is no such entry.
  bool remove(std::uint32_t id);
  // Registry thread: the numbers of every live entry (the client left: fail their waits,
  // then remove_all()).
  std::vector<int> live() const;
  void remove_all();
  // Registry thread: closes the tombstones (no continuation of the client can hold one).
  void reap();
  // Registry thread: closes everything (the slot is reclaimed).
  void close_all();
  // Any worker: the descriptor of live entry `id`, or -1.
  int get(std::uint32_t id) const;
  std::uint32_t size() const;

 private:
  mutable std::mutex mu_;
  std::vector<int> live_;  // index id - 1; -1 when free
  std::vector<int> dead_;  // tombstones: numbers dup2()ed onto the dead socket
};

// Which descriptors a client may hand over: sockets, pipes and FIFOs, regular files and
// eventfds. "" when `fd` is one, else why not.
std::string check_client_fd(int fd);

}  // namespace insideout::daemon
