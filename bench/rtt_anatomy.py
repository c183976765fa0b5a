#!/usr/bin/env python3
"""Anatomy of rtt_sleep round trips from `perf script --ns -F comm,tid,cpu,time,event,trace`
(bench/rtt_anatomy.sh records it).
argv[1]: the client's comm. Client: its thread calling clock_nanosleep (the gap between
trips); server: the thread it wakes. Per trip: client's kick (write or futex syscall) ->
server waking -> server on a CPU -> server's futex wake -> client waking -> client on CPU."""
import re, sys
from collections import Counter
client_comm = sys.argv[1]
ev = []
for line in sys.stdin:
    m = re.match(r'\s*(.+?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)', line)
    if not m: continue
    comm, tid, cpu, t, e, rest = m.groups()
    ev.append((float(t)*1e6, comm, int(tid), int(cpu), e, rest))
naps = Counter(tid for t, comm, tid, cpu, e, rest in ev
               if comm == client_comm and e == 'raw_syscalls:sys_enter' and rest.startswith('NR 230 '))
cli = naps.most_common(1)[0][0]
pid_of = lambda rest: int(re.search(r' pid=(\d+)', rest).group(1))
trips, cur, srv = [], None, None
other_wakes = Counter()
for t, comm, tid, cpu, e, rest in ev:
    if tid == cli and e == 'raw_syscalls:sys_enter':
        nr = int(rest.split()[1])
        if nr == 230:
            if cur and 'cli_run' in cur: trips.append(cur)
            cur = {}
            continue
        if cur is not None and 'kick' not in cur and nr in (1, 202):
            cur['kick'] = t; cur['cli_cpu'] = cpu
        continue
    if cur is None or 'kick' not in cur: continue
    if e == 'sched:sched_waking':
        p = pid_of(rest)
        if 'srv_waking' not in cur and p != cli:
            srv = p; cur['srv_waking'] = t; cur['srv'] = p
        elif p == cli and 'srv_kick' in cur and 'cli_waking' not in cur:
            cur['cli_waking'] = t
        elif p not in (cli, srv) and 'cli_run' not in cur:
            other_wakes[re.search(r'comm=(.*?) pid', rest).group(1)] += 1
    elif e == 'sched:sched_switch':
        nxt = int(re.search(r'next_pid=(\d+)', rest).group(1))
        if nxt == srv and 'srv_waking' in cur and 'srv_run' not in cur:
            cur['srv_run'] = t; cur['srv_cpu'] = cpu
        elif nxt == cli and 'cli_waking' in cur and 'cli_run' not in cur:
            cur['cli_run'] = t
    elif e == 'raw_syscalls:sys_enter' and tid == srv and 'srv_run' in cur and 'srv_kick' not in cur:
        if int(rest.split()[1]) == 202: cur['srv_kick'] = t
keys = ('kick', 'srv_waking', 'srv_run', 'srv_kick', 'cli_waking', 'cli_run')
full = [x for x in trips if all(k in x for k in keys)]
print(f'{len(full)} complete trips of {len(trips)}')
for a, b in list(zip(keys, keys[1:])) + [('kick', 'cli_run')]:
    d = sorted(x[b]-x[a] for x in full)
    q = lambda p: d[min(len(d)-1, int(p*len(d)))]
    print(f'{a:>11} -> {b:<11} p50 {q(.5):7.2f}  p90 {q(.9):7.2f}  p99 {q(.99):7.2f} us')
print(f"server ran on the client's CPU in {sum(x['srv_cpu']==x['cli_cpu'] for x in full)} of {len(full)}")
print('other threads woken during trips:', dict(other_wakes.most_common(6)))
# System calls per trip on each side, by name (x86-64 numbers of the calls that matter).
names = {0: 'read', 1: 'write', 7: 'poll', 202: 'futex', 230: 'clock_nanosleep',
         232: 'epoll_wait', 233: 'epoll_ctl', 281: 'epoll_pwait', 449: 'futex_waitv'}
srv = Counter(x['srv'] for x in full).most_common(1)[0][0]
for who, tid in (('client', cli), ('server', srv)):
    calls = Counter(names.get(int(rest.split()[1]), 'nr ' + rest.split()[1])
                    for t, comm, tid2, cpu, e, rest in ev
                    if tid2 == tid and e == 'raw_syscalls:sys_enter')
    per = ', '.join(f'{k} {v / max(1, len(trips)):.2f}' for k, v in calls.most_common(5))
    print(f'{who} system calls per trip: {per}')
