#include "insideout/shm/futex.h"

#include <gtest/gtest.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <ctime>
#include <thread>

namespace insideout::shm {
namespace {

using namespace std::chrono_literals;

TEST(Futex, ShouldReturnAtOnceWhenTheValueDiffers) {
  std::atomic<std::uint32_t> w{5};
  EXPECT_EQ(futex_wait(&w, 4, 1s), WaitResult::kValueChanged);
}

TEST(Futex, ShouldTimeOut) {
  std::atomic<std::uint32_t> w{0};
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(futex_wait(&w, 0, 20ms), WaitResult::kTimedOut);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 15ms);
}

TEST(Futex, ShouldWakeASleeper) {
  std::atomic<std::uint32_t> w{0};
  std::atomic<bool> woke{false};
  std::thread t([&] {
    while (w.load() == 0) futex_wait(&w, 0, 10s);
    woke = true;
  });
  std::this_thread::sleep_for(10ms);
  w.store(1);
  futex_wake(&w, 1);
  t.join();
  EXPECT_TRUE(woke.load());
}

TEST(Futex, ShouldWakeOnAnyOfSeveralWords) {
  std::atomic<std::uint32_t> a{0}, b{0}, c{0};
  std::thread t([&] {
    std::this_thread::sleep_for(10ms);
    b.store(1);
    futex_wake(&b, 1);
  });
  const WaitTarget targets[] = {{&a, 0}, {&b, 0}, {&c, 0}};
  const auto t0 = std::chrono::steady_clock::now();
  while (b.load() == 0 && std::chrono::steady_clock::now() - t0 < 10s) futex_wait_any(targets, 10s);
  t.join();
  EXPECT_EQ(b.load(), 1u);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
}

TEST(Futex, ShouldWakeAcrossProcesses) {
  auto* ev = static_cast<EventWord*>(::mmap(nullptr, sizeof(EventWord), PROT_READ | PROT_WRITE,
                                            MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  auto* flag = reinterpret_cast<std::atomic<std::uint32_t>*>(reinterpret_cast<char*>(ev) + 32);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // Sleeps (announced) until the parent sets the flag.
    bool ok = event_wait(
        *ev, [&] { return flag->load() != 0; }, 10s);
    while (!ok)
      ok = event_wait(
          *ev, [&] { return flag->load() != 0; }, 10s);
    ::_exit(0);
  }
  while (ev->waiters.load() == 0) std::this_thread::sleep_for(1ms);
  flag->store(1);
  EXPECT_TRUE(event_notify(*ev)) << "a waiter announced itself, so the notifier must wake it";
  int status = 0;
  ::waitpid(child, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  ::munmap(ev, sizeof(EventWord));
}

TEST(Futex, ShouldSkipTheSyscallWhenNobodyWaits) {
  EventWord ev{};
  EXPECT_FALSE(event_notify(ev));
  EXPECT_EQ(ev.seq.load(), 0u);
}

TEST(Futex, ShouldCountOnlyEinvalFromTheWaitvProbeAsSupported) {
  EXPECT_TRUE(futex_waitv_probe_says_supported(-1, EINVAL));
  EXPECT_FALSE(futex_waitv_probe_says_supported(-1, ENOSYS)) << "an old kernel";
  EXPECT_FALSE(futex_waitv_probe_says_supported(-1, EPERM)) << "a seccomp filter";
  EXPECT_FALSE(futex_waitv_probe_says_supported(-1, EACCES));
}

TEST(Futex, ShouldNotTakeWaitvForSupportedUnderASeccompFilterThatDeniesIt) {
  // A child under a filter that answers futex_waitv with EPERM, as container runtimes'
  // default profiles did before they knew the call: the probe must say unsupported.
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449
#endif
    sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_futex_waitv, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    sock_fprog prog{static_cast<unsigned short>(std::size(filter)), filter};
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        ::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
      ::_exit(2);
    }
    const long rc = ::syscall(SYS_futex_waitv, nullptr, 0, 0, nullptr, CLOCK_MONOTONIC);
    const int err = rc < 0 ? errno : 0;
    if (err != EPERM) ::_exit(3);  // the filter did not apply
    ::_exit(futex_waitv_probe_says_supported(rc, err) ? 1 : 0);
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_NE(WEXITSTATUS(status), 2) << "could not install the seccomp filter";
  EXPECT_NE(WEXITSTATUS(status), 3) << "the filter did not answer EPERM";
  EXPECT_EQ(WEXITSTATUS(status), 0) << "EPERM from seccomp was taken for support";
}

TEST(Futex, ShouldParseIdleStrategies) {
  EXPECT_EQ(parse_idle_strategy("block"), IdleStrategy::kBlock);
  EXPECT_EQ(parse_idle_strategy("spin-then-block"), IdleStrategy::kSpinThenBlock);
  EXPECT_EQ(parse_idle_strategy("poll"), IdleStrategy::kPoll);
  EXPECT_FALSE(parse_idle_strategy("nap").has_value());
  EXPECT_EQ(idle_strategy_name(IdleStrategy::kPoll), "poll");
}

}  // namespace
}  // namespace insideout::shm
