// Work that re-enters the scheduler from outside the workers (a sleep whose timer fired,
// a serialized continuation) must run while other clients keep every worker busy, not
// only once the workers' own queues run dry.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "insideout/client.hpp"
#include "integration/workload.h"
#include "support/daemon_process.h"

namespace insideout::testing {
namespace {

using namespace std::chrono_literals;

// Keeps every frame of `c` busy with long chains (yields: the workers' queues never run
// dry) until `stop`.
void flood(Client& c, const std::atomic<bool>& stop, std::atomic<std::uint64_t>& completed) {
  const std::uint32_t chain = c.function_id("chain").value();
  std::vector<Handle> inflight;
  while (!stop.load()) {
    while (Frame* f = c.allocate_frame()) {
      f->fn = chain;
      f->arg = 200'000;
      auto h = c.submit(f);
      if (!h.ok()) {
        c.release_frame(f);
        break;
      }
      inflight.push_back(std::move(*h));
    }
    c.poll();
    completed += std::erase_if(inflight, [](Handle& h) { return h.done(); });
    std::this_thread::sleep_for(100us);
  }
}

TEST(TimerStarvation, ShouldRunTimerAndSerializedWorkWhileOtherClientsKeepEveryWorkerBusy) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.ready()) << daemon.log();
  ClientOptions o;
  o.runtime_dir = daemon.runtime_dir();
  o.segment.ring_capacity = 1024;
  o.segment.frame_count = 1024;
  o.on_full = OnFull::kFailFast;
  auto flooder = Client::connect(o);
  auto quiet = Client::connect(o);
  ASSERT_TRUE(flooder.ok() && quiet.ok());

  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> flood_completed{0};
  std::thread t([&] { flood(**flooder, stop, flood_completed); });
  std::this_thread::sleep_for(100ms);  // let the flood fill both workers' queues

  // While the flood goes on (it is far more than 10 s of work), a 1 ms sleep and a
  // serialized noop must each complete; 10 s is a bound on liveness, not a timing target.
  auto nap = (*quiet)->submit("sleep", {}, 1'000'000);
  ASSERT_TRUE(nap.ok()) << nap.status();
  const auto nap_status = nap->wait_for(10s);
  auto call = (*quiet)->call("noop", "", 0, 10s);
  auto noop = (*quiet)->submit("noop");  // a ring submission, for comparison
  ASSERT_TRUE(noop.ok());
  const auto noop_status = noop->wait_for(10s);
  stop = true;
  t.join();

  EXPECT_EQ(noop_status, Status::kOk) << "ring submissions starved too";
  EXPECT_EQ(nap_status, Status::kOk)
      << "a 1 ms sleep did not complete within 10 s while another client's chains "
         "kept the workers busy (its timer fired; its task was never taken)";
  ASSERT_TRUE(call.ok()) << call.status() << " (a serialized noop starved behind the same flood)";
  EXPECT_EQ(call->status, Status::kOk) << call->error;
}

}  // namespace
}  // namespace insideout::testing
