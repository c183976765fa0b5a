// The runtime directory cannot be taken over: insideoutd refuses a directory that is a
// symbolic link, belongs to another user or that others may write to, and a lock file
// (or a stale socket) that is a link or someone else's, with a message naming the path,
// its owner and its mode, and it follows nothing. The tests run as root (they chown to
// nobody); each works in a fresh directory of its own under /tmp.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "support/daemon_process.h"

namespace insideout::testing {
namespace {

using namespace std::chrono_literals;

constexpr uid_t kNobody = 65534;

// A scratch directory (mode 0700, root's), removed with everything in it.
class Scratch {
 public:
  Scratch() {
    char tmpl[] = "/tmp/insideout-rtdir-XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~Scratch() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Starts insideoutd on `dir`: it must exit (promptly, non-zero) on its own.
CommandResult start_refused(const std::string& dir) {
  CommandResult r = run_insideoutd({"--runtime-dir", dir, "--log-level", "debug"}, 5s);
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.exit_code, -1) << "insideoutd did not exit: it started on " << dir << "\n"
                             << r.output;
  return r;
}

void expect_mentions(const std::string& output, const std::string& what) {
  EXPECT_NE(output.find(what), std::string::npos) << "no '" << what << "' in:\n" << output;
}

TEST(RuntimeDir, ShouldRefuseARuntimeDirThatIsASymbolicLinkAndFollowNothing) {
  Scratch s;
  const std::string target = s.path() + "/elsewhere";
  ASSERT_EQ(::mkdir(target.c_str(), 0700), 0);
  const std::string link = s.path() + "/rt";
  ASSERT_EQ(::symlink(target.c_str(), link.c_str()), 0);
  const CommandResult r = start_refused(link);
  expect_mentions(r.output, link);
  expect_mentions(r.output, "symbolic link");
  EXPECT_TRUE(list_dir(target).empty())
      << "insideoutd wrote through the link: " << ::testing::PrintToString(list_dir(target));
}

TEST(RuntimeDir, ShouldRefuseARuntimeDirOwnedByAnotherUser) {
  ASSERT_EQ(::geteuid(), 0u) << "this test chowns a directory to nobody: run it as root";
  Scratch s;
  const std::string dir = s.path() + "/rt";
  ASSERT_EQ(::mkdir(dir.c_str(), 0700), 0);
  ASSERT_EQ(::chown(dir.c_str(), kNobody, kNobody), 0);
  const CommandResult r = start_refused(dir);
  expect_mentions(r.output, dir);
  expect_mentions(r.output, "uid 65534");
  expect_mentions(r.output, "mode 0700");
  EXPECT_TRUE(list_dir(dir).empty()) << ::testing::PrintToString(list_dir(dir));
}

TEST(RuntimeDir, ShouldRefuseAWorldWritableRuntimeDir) {
  Scratch s;
  const std::string dir = s.path() + "/rt";
  ASSERT_EQ(::mkdir(dir.c_str(), 0700), 0);
  ASSERT_EQ(::chmod(dir.c_str(), 01777), 0);  // as /tmp: the sticky bit does not make it ours
  const CommandResult r = start_refused(dir);
  expect_mentions(r.output, dir);
  expect_mentions(r.output, "mode 01777");
  EXPECT_TRUE(list_dir(dir).empty()) << ::testing::PrintToString(list_dir(dir));
}

TEST(RuntimeDir, ShouldRefuseALockFileThatIsASymbolicLinkAndLeaveItsTargetAlone) {
  Scratch s;
  const std::string victim = s.path() + "/precious";
  {
    std::ofstream out(victim);
    out << "precious data\n";
  }
  const std::string dir = s.path() + "/rt";
  ASSERT_EQ(::mkdir(dir.c_str(), 0700), 0);
  const std::string lock = dir + "/insideoutd.lock";
  ASSERT_EQ(::symlink(victim.c_str(), lock.c_str()), 0);
  const CommandResult r = start_refused(dir);
  expect_mentions(r.output, lock);
  expect_mentions(r.output, "symbolic link");
  EXPECT_EQ(read_file(victim), "precious data\n") << "the lock file's target was written";
}

TEST(RuntimeDir, ShouldRefuseAStaleSocketPathThatIsNotItsOwnSocket) {
  ASSERT_EQ(::geteuid(), 0u) << "this test chowns a file to nobody: run it as root";
  Scratch s;
  const std::string dir = s.path() + "/rt";
  ASSERT_EQ(::mkdir(dir.c_str(), 0700), 0);
  const std::string sock = dir + "/daemon.sock";
  {
    std::ofstream out(sock);
    out << "not a socket\n";
  }
  ASSERT_EQ(::chown(sock.c_str(), kNobody, kNobody), 0);
  const CommandResult r = start_refused(dir);
  expect_mentions(r.output, sock);
  expect_mentions(r.output, "uid 65534");
  EXPECT_EQ(read_file(sock), "not a socket\n") << "someone else's file was replaced";
}

TEST(RuntimeDir, ShouldCreateAMissingRuntimeDirPrivateAndServeFromIt) {
  Scratch s;
  const std::string dir = s.path() + "/rt";
  DaemonProcess d({}, dir);
  ASSERT_TRUE(d.ready()) << d.log();
  struct stat st {};
  ASSERT_EQ(::lstat(dir.c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(st.st_uid, ::geteuid());
  // 0700, plus search permission for the group that the socket's mode (0660) lets in.
  EXPECT_EQ(st.st_mode & 07777, 0710u) << std::oct << (st.st_mode & 07777);
  struct stat lk {};
  ASSERT_EQ(::lstat((dir + "/insideoutd.lock").c_str(), &lk), 0);
  EXPECT_TRUE(S_ISREG(lk.st_mode));
  EXPECT_EQ(lk.st_mode & 022, 0u) << std::oct << (lk.st_mode & 07777);
}

}  // namespace
}  // namespace insideout::testing
