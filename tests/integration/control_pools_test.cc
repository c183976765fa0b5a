// Named pools and live resizing through the control plane, against a real insideoutd:
// a pool's workers are pinned to its CPUs as the kernel reports and run only its clients'
// work; pools grow and shrink while a client submits without pause, and every
// continuation completes exactly once with its result; bad requests change nothing.
#include <gtest/gtest.h>
#include <sched.h>

#include <atomic>
#include <deque>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "insideout/client.hpp"
#include "integration/control_support.h"
#include "support/daemon_process.h"

namespace insideout::testing {
namespace {

using namespace std::chrono_literals;

// The CPUs this test process may use (the daemon it starts inherits them).
std::vector<int> allowed() { return kernel_affinity(0); }

std::vector<v1::Pool> list_pools(v1::Scheduler::Stub& stub) {
  v1::ListPoolsResponse r;
  auto st = stub.ListPools(ctx().get(), {}, &r);
  EXPECT_TRUE(st.ok()) << st.error_message();
  return {r.pools().begin(), r.pools().end()};
}

std::vector<v1::Worker> list_workers(v1::Scheduler::Stub& stub, const std::string& pool) {
  v1::ListWorkersRequest q;
  q.set_pool(pool);
  v1::ListWorkersResponse r;
  auto st = stub.ListWorkers(ctx().get(), q, &r);
  EXPECT_TRUE(st.ok()) << st.error_message();
  return {r.workers().begin(), r.workers().end()};
}

grpc::Status create(v1::Scheduler::Stub& stub, const std::string& name, const std::string& cpus,
                    std::uint32_t size, v1::IdleStrategy idle = v1::IDLE_STRATEGY_BLOCK,
                    std::optional<int> nice = std::nullopt) {
  v1::CreatePoolRequest q;
  q.mutable_pool()->set_name(name);
  q.mutable_pool()->set_cpus(cpus);
  q.mutable_pool()->set_size(size);
  q.mutable_pool()->set_idle(idle);
  if (nice) q.mutable_pool()->mutable_attributes()->set_nice(*nice);
  v1::CreatePoolResponse r;
  return stub.CreatePool(ctx().get(), q, &r);
}

grpc::Status resize(v1::Scheduler::Stub& stub, const std::string& name, std::uint32_t size) {
  v1::ResizePoolRequest q;
  q.set_name(name);
  q.set_size(size);
  v1::ResizePoolResponse r;
  auto st = stub.ResizePool(ctx().get(), q, &r);
  if (st.ok()) {
    EXPECT_EQ(r.pool().size(), size);
  }
  return st;
}

grpc::Status remove(v1::Scheduler::Stub& stub, const std::string& name) {
  v1::DeletePoolRequest q;
  q.set_name(name);
  v1::DeletePoolResponse r;
  return stub.DeletePool(ctx().get(), q, &r);
}

std::unique_ptr<Client> connect(const DaemonProcess& d, const std::string& pool) {
  ClientOptions co;
  co.runtime_dir = d.runtime_dir();
  co.name = "pools-test";
  co.pool = pool;
  auto c = Client::connect(co);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? std::move(*c) : nullptr;
}

TEST(ControlPools, ShouldRunAPoolsClientOnWorkersPinnedToItsCpusAndDeleteIt) {
  DaemonProcess daemon({"--workers", "1"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto stub = control_stub(daemon.runtime_dir());
  const int cpu = allowed().back();
  auto st = create(*stub, "batch", std::to_string(cpu), 2, v1::IDLE_STRATEGY_BLOCK, 5);
  ASSERT_TRUE(st.ok()) << st.error_message();
  const auto pools = list_pools(*stub);
  ASSERT_EQ(pools.size(), 2u);
  EXPECT_EQ(pools[0].name(), "default");
  EXPECT_EQ(pools[1].name(), "batch");
  EXPECT_EQ(pools[1].size(), 2u);
  EXPECT_EQ(pools[1].cpus(), std::to_string(cpu));
  EXPECT_EQ(pools[1].idle(), v1::IDLE_STRATEGY_BLOCK);
  auto ws = list_workers(*stub, "batch");
  ASSERT_EQ(ws.size(), 2u);
  for (const auto& w : ws) {
    EXPECT_EQ(w.pool(), "batch");
    ASSERT_GT(w.tid(), 0);
    EXPECT_EQ(kernel_affinity(w.tid()), std::vector<int>{cpu});
    EXPECT_EQ(proc_status_field(daemon.pid(), w.tid(), "Cpus_allowed_list"), std::to_string(cpu));
    EXPECT_EQ(w.nice(), 5);
  }
  EXPECT_EQ(list_workers(*stub, "").size(), 3u) << "every pool's workers";

  {
    auto c = connect(daemon, "batch");
    ASSERT_NE(c, nullptr);
    for (int i = 0; i < 50; ++i) {
      auto h = c->submit("chain", {}, 100);
      ASSERT_TRUE(h.ok()) << h.status();
      ASSERT_EQ(h->wait(), Status::kOk);
      EXPECT_EQ(h->result().value, 100u);
    }
    // Its work ran on the pool's workers, none on the default one.
    std::uint64_t batch_steps = 0;
    for (const auto& w : list_workers(*stub, "batch")) batch_steps += w.counters().steps();
    EXPECT_GE(batch_steps, 50u * 100u);
    for (const auto& w : list_workers(*stub, "default")) EXPECT_EQ(w.counters().accepted(), 0u);
    // In use: the pool cannot be deleted, and the error names the client.
    st = remove(*stub, "batch");
    EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
    EXPECT_NE(st.error_message().find("pools-test"), std::string::npos) << st.error_message();
  }
  // The client left; the pool goes, and a new client cannot name it.
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (!(st = remove(*stub, "batch")).ok() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(20ms);
  }
  ASSERT_TRUE(st.ok()) << st.error_message() << "\n" << daemon.log();
  EXPECT_EQ(list_pools(*stub).size(), 1u);
  ClientOptions co;
  co.runtime_dir = daemon.runtime_dir();
  co.pool = "batch";
  auto refused = Client::connect(co);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(std::string(refused.status().message()).find("unknown pool 'batch'"), std::string::npos)
      << refused.status();
  EXPECT_EQ(daemon.stop(SIGTERM), 0) << daemon.log();
}

// A client submits a mix without pause while `pool` is resized up and down; every
// continuation completes exactly once with its result.
void resize_under_load(const std::string& pool, const std::vector<std::uint32_t>& sizes) {
  DaemonProcess daemon({"--workers", "1"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto stub = control_stub(daemon.runtime_dir());
  if (pool != "default") {
    ASSERT_TRUE(create(*stub, pool, "", 1, v1::IDLE_STRATEGY_SPIN_THEN_BLOCK).ok());
  }
  auto c = connect(daemon, pool);
  ASSERT_NE(c, nullptr);
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> submitted{0}, ok{0}, wrong{0}, failed{0}, lost{0};
  std::thread submitter([&] {
    const char* fns[] = {"noop", "chain", "fanout", "sleep"};
    const std::uint64_t args[] = {0, 20, 200, 300'000};
    std::deque<std::pair<Handle, std::uint32_t>> inflight;
    std::uint64_t n = 0;
    auto settle = [&](Handle& h, std::uint32_t k) {
      auto s = h.wait_for(10s);
      if (!s) {
        if (lost.fetch_add(1) < 3) std::fprintf(stderr, "%s lost\n", fns[k]);
        return;
      }
      if (*s != Status::kOk) {
        if (failed.fetch_add(1) < 3)
          std::fprintf(stderr, "%s failed: %s\n", fns[k], h.result().error().c_str());
        return;
      }
      const std::uint64_t want = k == 1 || k == 2 ? args[k] : 0;
      (h.result().value == want ? ok : wrong).fetch_add(1);
    };
    while (!stop.load()) {
      const auto k = static_cast<std::uint32_t>(n++ % 4);
      auto h = c->submit(fns[k], {}, args[k]);
      if (!h.ok()) {
        failed.fetch_add(1);
        continue;
      }
      submitted.fetch_add(1);
      inflight.emplace_back(std::move(*h), k);
      while (inflight.size() > 64) {
        settle(inflight.front().first, inflight.front().second);
        inflight.pop_front();
      }
    }
    for (auto& [h, k] : inflight) settle(h, k);
  });
  for (std::uint32_t size : sizes) {
    std::this_thread::sleep_for(100ms);
    auto st = resize(*stub, pool, size);
    EXPECT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(list_workers(*stub, pool).size(), size);
  }
  std::this_thread::sleep_for(100ms);
  stop.store(true);
  submitter.join();
  EXPECT_GT(submitted.load(), 1000u);
  EXPECT_EQ(ok.load(), submitted.load()) << "completed exactly once with the right result";
  EXPECT_EQ(wrong.load(), 0u);
  EXPECT_EQ(failed.load(), 0u);
  EXPECT_EQ(lost.load(), 0u) << "no handle left waiting";
  // The daemon counted each exactly once too.
  v1::ListClientsResponse lc;
  ASSERT_TRUE(stub->ListClients(ctx().get(), {}, &lc).ok());
  ASSERT_EQ(lc.clients_size(), 1);
  EXPECT_EQ(lc.clients(0).pool(), pool);
  EXPECT_EQ(lc.clients(0).counters().accepted(), submitted.load());
  EXPECT_EQ(lc.clients(0).counters().completed(), submitted.load());
  EXPECT_EQ(lc.clients(0).in_flight(), 0u);
  c.reset();
  EXPECT_EQ(daemon.stop(SIGTERM), 0) << daemon.log();
}

TEST(ControlPools, ShouldResizeTheDefaultPoolUnderLoadWithoutLosingOrDuplicatingWork) {
  resize_under_load("default", {2, 1, 2, 1, 3, 1, 2, 1});
}

TEST(ControlPools, ShouldResizeANamedPoolUnderLoadWithoutLosingOrDuplicatingWork) {
  resize_under_load("burst", {2, 1, 2, 1, 4, 2, 1});
}

TEST(ControlPools, ShouldRefuseBadPoolRequestsAndChangeNothing) {
  DaemonProcess daemon({"--workers", "1"});
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  auto stub = control_stub(daemon.runtime_dir());
  ASSERT_TRUE(create(*stub, "one", "", 1).ok());
  const int bad_cpu = allowed().back() + 1;
  struct Case {
    const char* what;
    grpc::Status st;
    grpc::StatusCode want;
  } cases[] = {
      {"size 0", create(*stub, "two", "", 0), grpc::StatusCode::INVALID_ARGUMENT},
      {"size over the max", create(*stub, "two", "", 100000), grpc::StatusCode::INVALID_ARGUMENT},
      {"CPU out of range", create(*stub, "two", "0," + std::to_string(bad_cpu), 1),
       grpc::StatusCode::INVALID_ARGUMENT},
      {"malformed CPU list", create(*stub, "two", "0-x", 1), grpc::StatusCode::INVALID_ARGUMENT},
      {"bad name", create(*stub, "a b", "", 1), grpc::StatusCode::INVALID_ARGUMENT},
      {"nice out of range", create(*stub, "two", "", 1, v1::IDLE_STRATEGY_BLOCK, 40),
       grpc::StatusCode::INVALID_ARGUMENT},
      {"duplicate name", create(*stub, "one", "", 1), grpc::StatusCode::ALREADY_EXISTS},
      {"duplicate default", create(*stub, "default", "", 1), grpc::StatusCode::ALREADY_EXISTS},
      {"resize unknown pool", resize(*stub, "nope", 2), grpc::StatusCode::NOT_FOUND},
      {"resize to 0", resize(*stub, "one", 0), grpc::StatusCode::INVALID_ARGUMENT},
      {"resize over the max", resize(*stub, "default", 100000), grpc::StatusCode::INVALID_ARGUMENT},
      {"delete unknown pool", remove(*stub, "nope"), grpc::StatusCode::NOT_FOUND},
      {"delete default", remove(*stub, "default"), grpc::StatusCode::FAILED_PRECONDITION},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    EXPECT_EQ(c.st.error_code(), c.want) << c.st.error_message();
    EXPECT_FALSE(c.st.error_message().empty());
  }
  const auto pools = list_pools(*stub);
  ASSERT_EQ(pools.size(), 2u);
  EXPECT_EQ(pools[0].size(), 1u);
  EXPECT_EQ(pools[1].name(), "one");
  EXPECT_EQ(pools[1].size(), 1u);
  EXPECT_EQ(list_workers(*stub, "").size(), 2u);

  // insideoutctl: the commands work, and an error is one line on stderr with exit code 1.
  auto r = run_command(ctl_args(daemon.runtime_dir(), {"pool", "create", "cli", "--size", "2"}));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = run_command(ctl_args(daemon.runtime_dir(), {"pool", "resize", "cli", "1"}));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = run_command(ctl_args(daemon.runtime_dir(), {"pools"}));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("cli"), std::string::npos) << r.out;
  r = run_command(ctl_args(daemon.runtime_dir(), {"workers", "--pool", "cli"}));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("cli"), std::string::npos) << r.out;
  r = run_command(ctl_args(daemon.runtime_dir(), {"pool", "delete", "cli"}));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = run_command(ctl_args(daemon.runtime_dir(), {"pool", "delete", "default"}));
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("FAILED_PRECONDITION"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(list_pools(*stub).size(), 2u);
}

}  // namespace
}  // namespace insideout::testing
