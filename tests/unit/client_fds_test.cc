// The daemon's table of a client's descriptors (daemon/src/client_fds.h): what it
// accepts, its bound, and that a closed entry's number is retired onto a dead socket
// (end of file, never another file) until it is reaped.
#include "client_fds.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

namespace insideout::daemon {
namespace {

bool open_fd(int fd) { return ::fcntl(fd, F_GETFD) != -1 || errno != EBADF; }

TEST(ClientFds, ShouldTakeSocketsPipesFilesAndEventfdsButNotDirectories) {
  ClientFds t;
  std::string why;
  std::uint32_t id = 0;
  const int dir = ::open("/tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  EXPECT_FALSE(t.add(dir, 8, &id, &why));
  EXPECT_NE(why.find("only sockets, pipes"), std::string::npos) << why;
  EXPECT_FALSE(open_fd(dir));  // closed by the refusal
  int p[2], sv[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  const int ev = ::eventfd(0, EFD_CLOEXEC);
  const int file = ::open("/proc/self/status", O_RDONLY | O_CLOEXEC);
  for (int fd : {p[0], sv[0], ev, file}) {
    ASSERT_TRUE(t.add(fd, 8, &id, &why)) << why;
    EXPECT_EQ(t.get(id), fd);
  }
  // Non-blocking, but for the regular file.
  EXPECT_NE(::fcntl(p[0], F_GETFL) & O_NONBLOCK, 0);
  EXPECT_NE(::fcntl(sv[0], F_GETFL) & O_NONBLOCK, 0);
  EXPECT_EQ(::fcntl(file, F_GETFL) & O_NONBLOCK, 0);
  EXPECT_EQ(t.size(), 4u);
  t.close_all();
  EXPECT_EQ(t.size(), 0u);
  for (int fd : {p[0], sv[0], ev, file}) EXPECT_FALSE(open_fd(fd));
  ::close(p[1]);
  ::close(sv[1]);
}

TEST(ClientFds, ShouldRetireAClosedNumberOntoADeadSocketUntilReaped) {
  ClientFds::prepare();
  ClientFds t;
  std::string why;
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  std::uint32_t a = 0, b = 0, c = 0;
  ASSERT_TRUE(t.add(::dup(p[0]), 2, &a, &why));  // copies: p[0] stays the test's
  ASSERT_TRUE(t.add(::dup(p[0]), 2, &b, &why));
  EXPECT_NE(a, b);
  EXPECT_FALSE(t.add(::dup(p[0]), 2, &c, &why));
  EXPECT_NE(why.find("--max-client-fds"), std::string::npos) << why;
  const int number = t.get(a);
  ASSERT_TRUE(t.remove(a));
  EXPECT_FALSE(t.remove(a));
  EXPECT_EQ(t.get(a), -1);
  // The number stays open, on the dead socket: end of file, not the pipe.
  ASSERT_EQ(::write(p[1], "x", 1), 1);
  char ch;
  EXPECT_EQ(::read(number, &ch, 1), 0);
  // It still counts against the bound (the message says why) until reaped.
  EXPECT_FALSE(t.add(::dup(p[0]), 2, &c, &why));
  EXPECT_NE(why.find("closed ones held"), std::string::npos) << why;
  t.reap();
  EXPECT_FALSE(open_fd(number));
  EXPECT_EQ(t.size(), 1u);
  ASSERT_TRUE(t.add(::dup(p[0]), 2, &c, &why)) << why;
  EXPECT_EQ(c, a);  // the freed id is reused
  // remove_all retires every live one.
  const int live_b = t.get(b);
  t.remove_all();
  EXPECT_EQ(t.get(b), -1);
  EXPECT_EQ(::read(live_b, &ch, 1), 0);
  t.close_all();
  EXPECT_FALSE(open_fd(live_b));
  ::close(p[0]);
  ::close(p[1]);
}

}  // namespace
}  // namespace insideout::daemon
