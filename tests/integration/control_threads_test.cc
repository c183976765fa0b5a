// The control plane changes real threads: pins, policies and nice values are checked
// against what the kernel reports (sched_getaffinity, /proc/<pid>/task/<tid>/...), bad
// requests change nothing, and a peer that is neither root nor an administrator can
// read but not change anything.
#include <gtest/gtest.h>
#include <sched.h>
#include <sys/stat.h>

#include <string>
#include <vector>

#include "integration/control_support.h"
#include "support/daemon_process.h"

namespace insideout::testing {
namespace {

// The CPUs this test process may use (the daemon it starts inherits them).
std::vector<int> allowed() { return kernel_affinity(0); }

std::vector<v1::Worker> list_workers(v1::Scheduler::Stub& stub) {
  v1::ListWorkersResponse r;
  auto st = stub.ListWorkers(ctx().get(), {}, &r);
  EXPECT_TRUE(st.ok()) << st.error_message();
  return {r.workers().begin(), r.workers().end()};
}

std::vector<ThreadView> views(const DaemonProcess& d, const std::vector<v1::Worker>& ws) {
  std::vector<ThreadView> v;
  for (const auto& w : ws) v.push_back(kernel_view(d.pid(), w.tid()));
  return v;
}

TEST(ControlThreads, ShouldPinAWorkerAndThenAPoolAsTheKernelReports) {
  DaemonProcess daemon({"--workers", "3"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto stub = control_stub(daemon.runtime_dir());
  const auto cpus = allowed();
  const int last = cpus.back(), first = cpus.front();
  auto ws = list_workers(*stub);
  ASSERT_EQ(ws.size(), 3u);
  for (const auto& w : ws) ASSERT_GT(w.tid(), 0);

  v1::SetAffinityRequest one;
  one.mutable_target()->set_worker(1);
  one.set_cpus(std::to_string(last));
  v1::SetAffinityResponse r;
  auto st = stub->SetAffinity(ctx().get(), one, &r);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(kernel_affinity(ws[1].tid()), std::vector<int>{last});
  EXPECT_EQ(proc_status_field(daemon.pid(), ws[1].tid(), "Cpus_allowed_list"),
            std::to_string(last));
  ASSERT_EQ(r.workers_size(), 1);
  EXPECT_EQ(r.workers(0).cpus(), std::to_string(last));

  v1::SetAffinityRequest pool;
  pool.mutable_target()->set_pool("default");
  pool.set_cpus(std::to_string(first));
  st = stub->SetAffinity(ctx().get(), pool, &r);
  ASSERT_TRUE(st.ok()) << st.error_message();
  for (const auto& w : ws) {
    EXPECT_EQ(kernel_affinity(w.tid()), std::vector<int>{first}) << "tid " << w.tid();
    EXPECT_EQ(proc_status_field(daemon.pid(), w.tid(), "Cpus_allowed_list"), std::to_string(first));
  }
  // The listing agrees with the kernel too.
  for (const auto& w : list_workers(*stub)) EXPECT_EQ(w.cpus(), std::to_string(first));
}

TEST(ControlThreads, ShouldChangePolicyAndNiceAsProcReports) {
  DaemonProcess daemon({"--workers", "2"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto stub = control_stub(daemon.runtime_dir());
  const auto ws = list_workers(*stub);
  ASSERT_EQ(ws.size(), 2u);

  v1::SetThreadAttributesRequest q;
  q.mutable_target()->set_pool("default");
  q.mutable_attributes()->set_policy(v1::POLICY_BATCH);
  q.mutable_attributes()->set_nice(7);
  v1::SetThreadAttributesResponse r;
  auto st = stub->SetThreadAttributes(ctx().get(), q, &r);
  ASSERT_TRUE(st.ok()) << st.error_message();
  for (const auto& w : ws) {
    EXPECT_EQ(proc_stat_field(daemon.pid(), w.tid(), 41), SCHED_BATCH) << "tid " << w.tid();
    EXPECT_EQ(proc_stat_field(daemon.pid(), w.tid(), 19), 7) << "tid " << w.tid();
    EXPECT_EQ(sched_getscheduler(w.tid()), SCHED_BATCH);
  }

  // One worker, back to SCHED_OTHER with nice -3; the other keeps its attributes.
  v1::SetThreadAttributesRequest one;
  one.mutable_target()->set_worker(0);
  one.mutable_attributes()->set_policy(v1::POLICY_OTHER);
  one.mutable_attributes()->set_nice(-3);
  st = stub->SetThreadAttributes(ctx().get(), one, &r);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(proc_stat_field(daemon.pid(), ws[0].tid(), 41), SCHED_OTHER);
  EXPECT_EQ(proc_stat_field(daemon.pid(), ws[0].tid(), 19), -3);
  EXPECT_EQ(proc_stat_field(daemon.pid(), ws[1].tid(), 41), SCHED_BATCH);
  EXPECT_EQ(proc_stat_field(daemon.pid(), ws[1].tid(), 19), 7);

  // A realtime policy: applied everywhere when the daemon may (CAP_SYS_NICE), else
  // refused as EPERM naming the thread, with nothing changed.
  const auto before = views(daemon, ws);
  v1::SetThreadAttributesRequest rt;
  rt.mutable_target()->set_pool("default");
  rt.mutable_attributes()->set_policy(v1::POLICY_RR);
  rt.mutable_attributes()->set_priority(3);
  st = stub->SetThreadAttributes(ctx().get(), rt, &r);
  if (st.ok()) {
    for (const auto& w : ws) {
      EXPECT_EQ(proc_stat_field(daemon.pid(), w.tid(), 41), SCHED_RR);
      EXPECT_EQ(proc_stat_field(daemon.pid(), w.tid(), 40), 3);
    }
    // And back, so the test leaves no realtime threads behind for long.
    v1::SetThreadAttributesRequest back;
    back.mutable_target()->set_pool("default");
    back.mutable_attributes()->set_policy(v1::POLICY_OTHER);
    ASSERT_TRUE(stub->SetThreadAttributes(ctx().get(), back, &r).ok());
    for (const auto& w : ws) EXPECT_EQ(proc_stat_field(daemon.pid(), w.tid(), 41), SCHED_OTHER);
  } else {
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
    EXPECT_NE(st.error_message().find("worker"), std::string::npos) << st.error_message();
    EXPECT_NE(st.error_message().find("EPERM"), std::string::npos) << st.error_message();
    EXPECT_EQ(views(daemon, ws), before);
  }
}

TEST(ControlThreads, ShouldAnswerBadRequestsWithInvalidArgumentAndChangeNothing) {
  DaemonProcess daemon({"--workers", "2"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto stub = control_stub(daemon.runtime_dir());
  const auto ws = list_workers(*stub);
  ASSERT_EQ(ws.size(), 2u);
  const auto before = views(daemon, ws);

  auto pin = [&](v1::Target t, const std::string& cpus) {
    v1::SetAffinityRequest q;
    *q.mutable_target() = t;
    q.set_cpus(cpus);
    v1::SetAffinityResponse r;
    return stub->SetAffinity(ctx().get(), q, &r);
  };
  auto attr = [&](v1::Target t, v1::Policy p, std::optional<int> prio, std::optional<int> nice) {
    v1::SetThreadAttributesRequest q;
    *q.mutable_target() = t;
    q.mutable_attributes()->set_policy(p);
    if (prio) q.mutable_attributes()->set_priority(*prio);
    if (nice) q.mutable_attributes()->set_nice(*nice);
    v1::SetThreadAttributesResponse r;
    return stub->SetThreadAttributes(ctx().get(), q, &r);
  };
  v1::Target pool, worker0, worker99, nopool;
  pool.set_pool("default");
  worker0.set_worker(0);
  worker99.set_worker(99);
  nopool.set_pool("no-such-pool");
  // The last allowed CPU plus one is out of range; the pool request names a good CPU
  // first, so a half-applied change would show.
  const int bad_cpu = allowed().back() + 1;
  struct Case {
    const char* what;
    grpc::Status st;
  } cases[] = {
      {"CPU out of range", pin(pool, "0," + std::to_string(bad_cpu))},
      {"CPU beyond CPU_SETSIZE", pin(worker0, "5000")},
      {"malformed CPU list", pin(worker0, "0-x")},
      {"unknown worker", pin(worker99, "0")},
      {"unknown pool", pin(nopool, "0")},
      {"nice 40", attr(pool, v1::POLICY_OTHER, std::nullopt, 40)},
      {"nice -21", attr(worker0, v1::POLICY_UNSPECIFIED, std::nullopt, -21)},
      {"realtime priority 500", attr(pool, v1::POLICY_FIFO, 500, std::nullopt)},
      {"priority for SCHED_OTHER", attr(pool, v1::POLICY_OTHER, 5, std::nullopt)},
      {"unknown worker (attributes)", attr(worker99, v1::POLICY_BATCH, std::nullopt, std::nullopt)},
      {"unknown pool (attributes)", attr(nopool, v1::POLICY_BATCH, std::nullopt, std::nullopt)},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    EXPECT_EQ(c.st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.st.error_message();
    EXPECT_FALSE(c.st.error_message().empty());
  }
  EXPECT_EQ(views(daemon, ws), before);

  // insideoutctl says the same on stderr, in one line, and exits 1.
  auto r = run_command(ctl_args(daemon.runtime_dir(), {"attr", "default", "--nice", "40"}));
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("INVALID_ARGUMENT"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(views(daemon, ws), before);
}

TEST(ControlThreads, ShouldLetAPeerOutsideTheAdminGroupReadButChangeNothing) {
  // nobody/nogroup: the client group may read; nobody is neither root nor an admin.
  DaemonProcess daemon({"--workers", "2", "--client-group", "65534"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  ASSERT_EQ(::chmod(daemon.runtime_dir().c_str(), 0711), 0);  // nobody may reach the socket
  struct stat st {};
  ASSERT_EQ(::stat((daemon.runtime_dir() + "/control.sock").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  EXPECT_EQ(st.st_gid, 65534u);

  auto stub = control_stub(daemon.runtime_dir());
  const auto ws = list_workers(*stub);
  const auto before = views(daemon, ws);
  auto as_nobody = [&](std::vector<std::string> args) {
    std::vector<std::string> a = {"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                  "--"};
    auto rest = ctl_args(daemon.runtime_dir(), std::move(args));
    a.insert(a.end(), rest.begin(), rest.end());
    return run_command(a);
  };
  auto r = as_nobody({"workers", "--json"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("\"tid\""), std::string::npos) << r.out;
  for (auto args :
       std::vector<std::vector<std::string>>{{"pin", "0", std::to_string(allowed().front())},
                                             {"pin", "default", std::to_string(allowed().front())},
                                             {"attr", "default", "--nice", "5"},
                                             {"attr", "1", "--policy", "batch"},
                                             {"evict", std::to_string(::getpid())},
                                             {"drain", "--timeout-ms", "10"},
                                             {"shutdown"}}) {
    SCOPED_TRACE(args[0]);
    r = as_nobody(args);
    EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
    EXPECT_NE(r.err.find("PERMISSION_DENIED"), std::string::npos) << r.err;
  }
  EXPECT_EQ(views(daemon, ws), before);
  EXPECT_TRUE(daemon.alive());
  // Work still flows (drain was refused).
  v1::SubmitRequest q;
  q.set_function("echo");
  q.set_env("still here");
  v1::SubmitResponse sr;
  auto s = stub->Submit(ctx().get(), q, &sr);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(sr.data(), "still here");

  // A peer in neither group is turned away at the door: exit 3 (or 1), and nothing read.
  std::vector<std::string> a = {"setpriv", "--reuid=65534", "--regid=100", "--clear-groups", "--"};
  auto rest = ctl_args(daemon.runtime_dir(), {"status"});
  a.insert(a.end(), rest.begin(), rest.end());
  r = run_command(a);
  EXPECT_NE(r.exit_code, 0) << r.out;
  EXPECT_TRUE(r.out.empty()) << r.out;
}

}  // namespace
}  // namespace insideout::testing
