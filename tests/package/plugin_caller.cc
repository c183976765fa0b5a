// plugin_caller INSIDEOUTD PLUGIN.so: starts that insideoutd in a private runtime
// directory with --plugin-dir holding a copy of PLUGIN.so, calls outside.add_one(41) and
// outside.twice(21) through libinsideout, prints the results, stops the daemon.
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <insideout/client.hpp>
#include <string>
#include <thread>

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: plugin_caller INSIDEOUTD PLUGIN.so\n");
    return 2;
  }
  char rt_tmpl[] = "/tmp/insideout-outside-rt-XXXXXX";
  char pd_tmpl[] = "/tmp/insideout-outside-plugins-XXXXXX";
  const std::string rt = ::mkdtemp(rt_tmpl), pd = ::mkdtemp(pd_tmpl);
  ::chmod(pd.c_str(), 0755);
  const std::string so = pd + "/outside.so";
  fs::copy_file(argv[2], so);
  ::chmod(so.c_str(), 0644);

  const pid_t d = ::fork();
  if (d == 0) {
    ::execl(argv[1], argv[1], "--runtime-dir", rt.c_str(), "--plugin-dir", pd.c_str(), "--workers",
            "1", "--no-control", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  int rc = 1;
  insideout::ClientOptions o;
  o.runtime_dir = rt;
  absl::StatusOr<std::unique_ptr<insideout::Client>> c;
  for (int i = 0; i < 500; ++i) {
    c = insideout::Client::connect(o);
    if (c.ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (!c.ok()) {
    std::printf("connect: %s\n", std::string(c.status().message()).c_str());
  } else {
    auto a = (*c)->submit("outside.add_one", {}, 41);
    auto t = (*c)->submit("outside.twice", {}, 21);
    if (!a.ok() || !t.ok()) {
      std::printf("submit: %s\n",
                  std::string((a.ok() ? t.status() : a.status()).message()).c_str());
    } else if (a->wait() != insideout::Status::kOk || t->wait() != insideout::Status::kOk) {
      std::printf("failed: %s %s\n", a->result().error().c_str(), t->result().error().c_str());
    } else {
      std::printf("outside.add_one(41) = %llu, outside.twice(21) = %llu\n",
                  static_cast<unsigned long long>(a->result().value),
                  static_cast<unsigned long long>(t->result().value));
      rc = 0;
    }
    a = absl::UnknownError("");
    t = absl::UnknownError("");
  }
  c = absl::UnknownError("");
  ::kill(d, SIGTERM);
  int st = 0;
  ::waitpid(d, &st, 0);
  std::error_code ec;
  fs::remove_all(rt, ec);
  fs::remove_all(pd, ec);
  return rc;
}
