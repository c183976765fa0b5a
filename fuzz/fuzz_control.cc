// fuzz_control: the control plane's request checks (daemon/src/control_checks.h) over
// requests decoded from arbitrary bytes, as gRPC hands them to the handlers.
//
// Input: one selector byte (low 2 bits: SetAffinity, SetThreadAttributes, CreatePool,
// ResizePool; bits 2-3: which set of CPUs the daemon may use), then the request's
// protobuf encoding.
//
// Invariants: an accepted CPU list is non-empty, sorted, unique, allowed and formats
// back to itself; an accepted pool name and size are within their rules; accepted
// attributes name a known policy, nice in -20..19 and a priority the kernel takes for
// that policy; a refusal is INVALID_ARGUMENT with a message.
#include <google/protobuf/stubs/logging.h>
#include <sched.h>

#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "config.h"
#include "control_checks.h"
#include "engine.h"
#include "fuzz_check.h"
#include "insideout/v1/scheduler.pb.h"
namespace {

namespace daemon = insideout::daemon;
namespace v1 = insideout::v1;

void check_refusal(const absl::Status& st) {
  FUZZ_CHECK(st.code() == absl::StatusCode::kInvalidArgument && !st.message().empty());
}

const std::vector<int>& allowed(int which) {
  static const std::vector<int> sets[4] = {
      {0, 1},
      {0, 1, 2, 3, 4, 5, 6, 7},
      {0, 1, 2, 3, 8, 9, 10, 11},
      [] {
        std::vector<int> all;
        for (int c = 0; c < CPU_SETSIZE; ++c) all.push_back(c);
        return all;
      }(),
  };
  return sets[which & 3];
}

void cpus(const std::string& text, const std::vector<int>& ok_cpus) {
  auto got = daemon::check_cpus(text, ok_cpus);
  if (!got.ok()) return check_refusal(got.status());
  const std::vector<int>& c = *got;
  FUZZ_CHECK(!c.empty());
  for (std::size_t i = 0; i < c.size(); ++i) {
    FUZZ_CHECK(i == 0 || c[i - 1] < c[i]);
    FUZZ_CHECK(std::binary_search(ok_cpus.begin(), ok_cpus.end(), c[i]));
  }
  std::string err;
  auto back = daemon::parse_cpu_list(daemon::format_cpu_list(c), &err);
  FUZZ_CHECK(back && *back == c);
}

bool known_policy(int p) {
  return p == SCHED_OTHER || p == SCHED_BATCH || p == SCHED_IDLE || p == SCHED_FIFO ||
         p == SCHED_RR;
}

void priority_in_range(int policy, int priority) {
  FUZZ_CHECK(priority >= sched_get_priority_min(policy) &&
             priority <= sched_get_priority_max(policy));
}

void attributes(const v1::ThreadAttributes& a) {
  auto policy = daemon::check_thread_attributes(a);
  if (policy.ok()) {
    FUZZ_CHECK(*policy == -1 || known_policy(*policy));
    FUZZ_CHECK(!a.has_nice() || (a.nice() >= -20 && a.nice() <= 19));
    FUZZ_CHECK(*policy != -1 || a.has_priority() || a.has_nice());
    // The handler then checks each thread's resulting priority.
    const int pol = *policy == -1 ? SCHED_OTHER : *policy;
    const int prio = a.has_priority() ? a.priority() : 0;
    if (daemon::check_priority(pol, prio).ok()) priority_in_range(pol, prio);
  } else {
    check_refusal(policy.status());
  }
  auto plan = daemon::plan_pool_attributes(a);
  if (!plan.ok()) return check_refusal(plan.status());
  FUZZ_CHECK(plan->policy == -1 || known_policy(plan->policy));
  FUZZ_CHECK(!plan->nice || (*plan->nice >= -20 && *plan->nice <= 19));
  const int pol = plan->policy >= 0 ? plan->policy : SCHED_OTHER;
  priority_in_range(pol, plan->priority ? *plan->priority : (daemon::realtime(pol) ? 1 : 0));
}

void pool_size(std::uint32_t size) {
  const absl::Status st = daemon::check_pool_size(size);
  if (!st.ok()) return check_refusal(st);
  FUZZ_CHECK(size >= 1 && size <= daemon::kMaxPoolWorkers);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Invalid UTF-8 in a string field is a refusal like any other; its log line per input
  // would drown libFuzzer's output.
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return -1;
  const std::uint8_t sel = data[0];
  const auto* body = data + 1;
  const int n = static_cast<int>(size - 1);
  const std::vector<int>& ok_cpus = allowed(sel >> 2);
  switch (sel & 3) {
    case 0: {
      v1::SetAffinityRequest req;
      if (!req.ParseFromArray(body, n)) return -1;
      cpus(req.cpus(), ok_cpus);
      break;
    }
    case 1: {
      v1::SetThreadAttributesRequest req;
      if (!req.ParseFromArray(body, n)) return -1;
      attributes(req.attributes());
      break;
    }
    case 2: {
      v1::CreatePoolRequest req;
      if (!req.ParseFromArray(body, n)) return -1;
      const v1::Pool& p = req.pool();
      const absl::Status name = daemon::check_pool_name(p.name());
      if (name.ok()) {
        FUZZ_CHECK(!p.name().empty() && p.name().size() <= 32);
        for (char c : p.name())
          FUZZ_CHECK(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_');
      } else {
        check_refusal(name);
      }
      pool_size(p.size());
      if (!p.cpus().empty()) cpus(p.cpus(), ok_cpus);
      auto idle = daemon::check_idle(p.idle(), insideout::shm::IdleStrategy::kSpinThenBlock);
      if (!idle.ok()) check_refusal(idle.status());
      if (p.has_attributes()) attributes(p.attributes());
      break;
    }
    case 3: {
      v1::ResizePoolRequest req;
      if (!req.ParseFromArray(body, n)) return -1;
      pool_size(req.size());
      break;
    }
  }
  return 0;
}
