#include "control_checks.h"

#include <sched.h>

#include <algorithm>
#include <cctype>
#include <string>

#include "config.h"
#include "engine.h"

namespace insideout::daemon {
namespace {

absl::Status invalid(const std::string& m) { return absl::InvalidArgumentError(m); }

}  // namespace

v1::Policy to_proto_policy(int p) {
  switch (p & ~SCHED_RESET_ON_FORK) {
    case SCHED_OTHER:
      return v1::POLICY_OTHER;
    case SCHED_BATCH:
      return v1::POLICY_BATCH;
    case SCHED_IDLE:
      return v1::POLICY_IDLE;
    case SCHED_FIFO:
      return v1::POLICY_FIFO;
    case SCHED_RR:
      return v1::POLICY_RR;
    default:
      return v1::POLICY_UNSPECIFIED;
  }
}

int from_proto_policy(v1::Policy p) {
  switch (p) {
    case v1::POLICY_OTHER:
      return SCHED_OTHER;
    case v1::POLICY_BATCH:
      return SCHED_BATCH;
    case v1::POLICY_IDLE:
      return SCHED_IDLE;
    case v1::POLICY_FIFO:
      return SCHED_FIFO;
    case v1::POLICY_RR:
      return SCHED_RR;
    default:
      return -1;
  }
}

bool realtime(int policy) { return policy == SCHED_FIFO || policy == SCHED_RR; }

absl::StatusOr<std::vector<int>> check_cpus(std::string_view text,
                                            const std::vector<int>& allowed) {
  std::string err;
  auto cpus = parse_cpu_list(text, &err);
  if (!cpus) return invalid("cpus '" + std::string(text) + "': " + err);
  for (int c : *cpus) {
    if (!std::binary_search(allowed.begin(), allowed.end(), c)) {
      return invalid("CPU " + std::to_string(c) + " is not allowed (the daemon may use " +
                     format_cpu_list(allowed) + ")");
    }
  }
  return *std::move(cpus);
}

absl::StatusOr<shm::IdleStrategy> check_idle(v1::IdleStrategy idle, shm::IdleStrategy fallback) {
  switch (idle) {
    case v1::IDLE_STRATEGY_UNSPECIFIED:
      return fallback;
    case v1::IDLE_STRATEGY_BLOCK:
      return shm::IdleStrategy::kBlock;
    case v1::IDLE_STRATEGY_SPIN_THEN_BLOCK:
      return shm::IdleStrategy::kSpinThenBlock;
    case v1::IDLE_STRATEGY_POLL:
      return shm::IdleStrategy::kPoll;
    default:
      return invalid("unknown idle strategy " + std::to_string(idle));
  }
}

absl::StatusOr<int> check_thread_attributes(const v1::ThreadAttributes& a) {
  int policy = -1;
  if (a.policy() != v1::POLICY_UNSPECIFIED) {
    policy = from_proto_policy(a.policy());
    if (policy < 0) return invalid("unknown policy " + std::to_string(a.policy()));
  }
  if (a.has_nice() && (a.nice() < -20 || a.nice() > 19)) {
    return invalid("nice " + std::to_string(a.nice()) + " is out of range: -20..19");
  }
  if (policy < 0 && !a.has_priority() && !a.has_nice())
    return invalid("nothing to change: give a policy, priority or nice");
  return policy;
}

absl::Status check_priority(int policy, int priority) {
  const int lo = sched_get_priority_min(policy), hi = sched_get_priority_max(policy);
  if (priority < lo || priority > hi) {
    return invalid("priority " + std::to_string(priority) + " is out of range for " +
                   v1::Policy_Name(to_proto_policy(policy)) + ": " + std::to_string(lo) + ".." +
                   std::to_string(hi));
  }
  return absl::OkStatus();
}

absl::StatusOr<PoolAttr> plan_pool_attributes(const v1::ThreadAttributes& a) {
  PoolAttr out;
  if (a.policy() != v1::POLICY_UNSPECIFIED) {
    out.policy = from_proto_policy(a.policy());
    if (out.policy < 0) return invalid("unknown policy " + std::to_string(a.policy()));
  }
  if (a.has_nice()) {
    if (a.nice() < -20 || a.nice() > 19)
      return invalid("nice " + std::to_string(a.nice()) + " is out of range: -20..19");
    out.nice = a.nice();
  }
  if (a.has_priority()) out.priority = a.priority();
  const int pol = out.policy >= 0 ? out.policy : SCHED_OTHER;
  const int prio = out.priority ? *out.priority : (realtime(pol) ? 1 : 0);
  if (auto st = check_priority(pol, prio); !st.ok()) return st;
  return out;
}

}  // namespace insideout::daemon
