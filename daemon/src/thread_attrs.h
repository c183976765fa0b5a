// Threads as the kernel sees them: a worker's CPU affinity, the CPU it last ran on, and
// its scheduling attributes (policy, priority, nice), read and set by thread id.
#pragma once

#include <sched.h>
#include <sys/types.h>

#include <vector>

namespace insideout::daemon {

std::vector<int> thread_affinity(pid_t tid);
// Field 39 (processor) of /proc/self/task/<tid>/stat; -1 when unknown.
int last_cpu(pid_t tid);

struct ThreadAttr {
  int policy = SCHED_OTHER;
  int priority = 0;
  int nice = 0;
};

// False and *err (an errno) when the kernel refuses.
bool get_attr(pid_t tid, ThreadAttr* a, int* err);
// Sets policy and priority, then nice; `what` names the call that failed.
bool set_attr(pid_t tid, const ThreadAttr& a, int* err, const char** what);

}  // namespace insideout::daemon
