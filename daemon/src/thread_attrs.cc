#include "thread_attrs.h"

#include <sys/resource.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>

namespace insideout::daemon {

std::vector<int> thread_affinity(pid_t tid) {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> out;
  if (sched_getaffinity(tid, sizeof(set), &set) != 0) return out;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &set)) out.push_back(c);
  }
  return out;
}

int last_cpu(pid_t tid) {
  std::ifstream in("/proc/self/task/" + std::to_string(tid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto paren = s.rfind(')');
  if (paren == std::string::npos) return -1;
  std::istringstream ss(s.substr(paren + 1));
  std::string tok;
  for (int field = 3; ss >> tok; ++field) {
    if (field == 39) return std::atoi(tok.c_str());
  }
  return -1;
}

bool get_attr(pid_t tid, ThreadAttr* a, int* err) {
  const int pol = sched_getscheduler(tid);
  sched_param sp{};
  if (pol < 0 || sched_getparam(tid, &sp) != 0) {
    *err = errno;
    return false;
  }
  errno = 0;
  const int nice = getpriority(PRIO_PROCESS, static_cast<id_t>(tid));
  if (nice == -1 && errno != 0) {
    *err = errno;
    return false;
  }
  a->policy = pol & ~SCHED_RESET_ON_FORK;
  a->priority = sp.sched_priority;
  a->nice = nice;
  return true;
}

bool set_attr(pid_t tid, const ThreadAttr& a, int* err, const char** what) {
  sched_param sp{};
  sp.sched_priority = a.priority;
  if (sched_setscheduler(tid, a.policy, &sp) != 0) {
    *err = errno;
    *what = "sched_setscheduler";
    return false;
  }
  if (setpriority(PRIO_PROCESS, static_cast<id_t>(tid), a.nice) != 0) {
    *err = errno;
    *what = "setpriority";
    return false;
  }
  return true;
}

}  // namespace insideout::daemon
