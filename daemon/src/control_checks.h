// The control plane's checks of a request's own fields (CPU lists, pool names and sizes,
// idle strategies, thread attributes): pure functions, apart from the gRPC handlers that
// also look up pools and threads, so that fuzz/fuzz_control.cc drives them with requests
// parsed from arbitrary bytes. Errors are absl::Status (INVALID_ARGUMENT), whose codes
// map one to one to grpc::Status.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "config.h"
#include "insideout/shm/futex.h"
#include "insideout/v1/scheduler.pb.h"

namespace insideout::daemon {

// Attributes a pool's workers get (at creation, and new workers when it grows).
struct PoolAttr {
  int policy = -1;  // -1: keep
  std::optional<int> priority, nice;
};

int from_proto_policy(v1::Policy p);  // -1 for POLICY_UNSPECIFIED and unknown values
v1::Policy to_proto_policy(int policy);
bool realtime(int policy);

// A CPU list ("0-3,8") whose every CPU is in `allowed` (sorted): sorted, unique, non-empty.
absl::StatusOr<std::vector<int>> check_cpus(std::string_view text, const std::vector<int>& allowed);
// check_pool_name() and check_pool_size() are in config.h (the configuration file
// checks them too).
// IDLE_STRATEGY_UNSPECIFIED takes `fallback`.
absl::StatusOr<shm::IdleStrategy> check_idle(v1::IdleStrategy idle, shm::IdleStrategy fallback);
// SetThreadAttributes before it looks at any thread: a known policy (returned; -1: keep),
// nice in -20..19, and something to change.
absl::StatusOr<int> check_thread_attributes(const v1::ThreadAttributes& a);
// The kernel's range for the policy (sched_get_priority_min/max).
absl::Status check_priority(int policy, int priority);
// CreatePool's attributes for its workers, all checked.
absl::StatusOr<PoolAttr> plan_pool_attributes(const v1::ThreadAttributes& a);

}  // namespace insideout::daemon
