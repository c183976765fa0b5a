#!/usr/bin/env bash
# The .deb under a real systemd: boots a Debian 12 tree with systemd-nspawn (private
# network: the service needs only Unix sockets), installs the package with dpkg and checks
# the service's life: start (active only once its sockets answer), a client, reload,
# restart with a client connected, the watchdog on wedged workers, stop.
#
#   deploy/test-systemd.sh [--deb FILE]     (root; not part of the quick suite)
#
# The tree (debootstrap --variant=minbase + systemd, dbus and the package's dependencies)
# is cached in $INSIDEOUT_NSPAWN_CACHE (default /var/cache/insideout-nspawn/bookworm) and
# booted with --volatile=overlay: a run never changes it. Without root, systemd-nspawn,
# debootstrap, or a container that boots, it prints a SKIP line and exits 0.
#
# Machines without a system bus (this project's CI) cannot use machinectl or systemd-run
# -M: commands run in the container with nsenter(1) into its PID 1's namespaces.
set -euo pipefail
# (Checks compare captured output: `producer | grep -q` fails under pipefail when grep
# exits before the producer has written everything.)
cd "$(dirname "$0")/.."

cache=${INSIDEOUT_NSPAWN_CACHE:-/var/cache/insideout-nspawn}
tree=$cache/bookworm
mirror=${INSIDEOUT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
deb=""
[[ ${1:-} == --deb ]] && deb=$2

skip() { echo "test-systemd: SKIP: $*"; exit 0; }
fails=0
pass() { echo "test-systemd: PASS: $*"; }
fail() { echo "test-systemd: FAIL: $*"; fails=$((fails + 1)); }
note() { echo "test-systemd: SKIP: $*"; }

[[ $(id -u) -eq 0 ]] || skip "needs root (debootstrap, systemd-nspawn)"
for t in systemd-nspawn debootstrap nsenter; do
  command -v "$t" >/dev/null || skip "no $t (apt-get install systemd-container debootstrap)"
done

# The package.
if [[ -z $deb ]]; then
  cmake --preset package >/dev/null
  cmake --build --preset package >/dev/null
  cpack --preset deb >/dev/null
  deb=$(ls build/package/insideout_*_amd64.deb | head -1)
fi
deb=$(realpath "$deb")
echo "test-systemd: package $deb"

# The tree, made once. --keep-unit --register=no: no system bus needed on the host.
nspawn=(systemd-nspawn --quiet --keep-unit --register=no -D "$tree")
if [[ ! -x $tree/lib/systemd/systemd ]]; then
  echo "test-systemd: debootstrap into $tree (once; a few minutes)"
  mkdir -p "$cache"
  rm -rf "$tree.tmp"
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus bookworm "$tree.tmp" \
    "$mirror" >"$cache/debootstrap.log" 2>&1 || skip "debootstrap failed (no network?): $cache/debootstrap.log"
  mv "$tree.tmp" "$tree"
fi
# The package's dependencies (with the host's network, before the private-network boot).
# Redone only when they change (a stamp in the tree).
depends=$(dpkg-deb -f "$deb" Depends)
if [[ $(cat "$tree/.insideout-depends" 2>/dev/null) != "$depends" ]]; then
  echo "test-systemd: installing the package's dependencies in $tree"
  "${nspawn[@]}" --pipe sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
    apt-get satisfy -y -qq --no-install-recommends '$depends' procps" >/dev/null ||
    skip "could not install the package's dependencies in $tree"
  echo "$depends" >"$tree/.insideout-depends"
fi

# The Dockerfile's steps (deploy/Dockerfile) in the tree, without systemd running: a
# fixed user first, then the package (its postinst keeps the user, skips the units).
if "${nspawn[@]}" --volatile=overlay --bind-ro="$(dirname "$deb")":/mnt/deb --pipe sh -ec "
  groupadd --system --gid 10001 insideout
  useradd --system --uid 10001 --gid 10001 --home-dir / --no-create-home --shell /usr/sbin/nologin insideout
  dpkg -i /mnt/deb/$(basename "$deb") >/dev/null
  insideoutd --version >/dev/null
  test \"\$(id -u insideout):\$(id -g insideout)\" = 10001:10001" >/tmp/docker-steps.log 2>&1; then
  pass "the Dockerfile's steps: installs without systemd, keeps uid/gid 10001, insideoutd runs"
else
  cat /tmp/docker-steps.log; fail "the Dockerfile's steps in the tree"
fi

# Boot.
log=$(mktemp)
"${nspawn[@]}" --private-network --volatile=overlay --bind-ro="$(dirname "$deb")":/mnt/deb \
  --machine=insideout-test -b --console=passive >"$log" 2>&1 &
nspawn_pid=$!
leader=""
cleanup() {
  [[ -n $leader ]] && nsenter -t "$leader" -a systemctl poweroff >/dev/null 2>&1 || true
  for _ in $(seq 50); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
  kill "$nspawn_pid" 2>/dev/null || true
  rm -f "$log"
}
trap cleanup EXIT
for _ in $(seq 100); do
  # The container's PID 1 is the child of systemd-nspawn that runs systemd (an earlier
  # child only sets it up).
  leader=$(ps -o pid=,comm= --ppid "$nspawn_pid" 2>/dev/null | awk '$2 == "systemd" { print $1; exit }' || true)
  [[ -n $leader ]] && nsenter -t "$leader" -a true 2>/dev/null && break
  kill -0 "$nspawn_pid" 2>/dev/null || { cat "$log"; skip "systemd-nspawn -b exited: this machine cannot boot a container"; }
  leader=""
  sleep 0.1
done
[[ -n $leader ]] || skip "the container's init did not appear"
inside() { nsenter -t "$leader" -a "$@"; }
# (Until PID 1 has its private socket, systemctl fails at once: ask again.)
state=""
for _ in $(seq 600); do
  state=$(timeout 60 nsenter -t "$leader" -a systemctl is-system-running --wait 2>/dev/null || true)
  [[ $state == running || $state == degraded ]] && break
  sleep 0.1
done
case $state in
running | degraded) echo "test-systemd: container up ($state; init pid $leader)" ;;
*) cat "$log"; skip "the container's systemd did not come up (state '$state')" ;;
esac

# Install: postinst creates the user, enables and starts the units.
debname=$(basename "$deb")
if inside dpkg -i "/mnt/deb/$debname" >/tmp/dpkg.log 2>&1; then pass "dpkg -i"; else cat /tmp/dpkg.log; fail "dpkg -i"; fi
inside getent passwd insideout >/dev/null && pass "user insideout" || fail "no user insideout"
for u in insideoutd.socket insideoutd-control.socket insideoutd.service; do
  [[ $(inside systemctl is-enabled "$u" 2>&1) == enabled ]] && pass "$u enabled" || fail "$u not enabled"
done

# The daemon in this package: with the service features (--config, sd_notify, socket
# activation, SIGHUP reload) or an older one, run through a drop-in as a simple service.
full=1
help=$(inside insideoutd --help)
if [[ $help != *--config* ]]; then
  full=0
  note "insideoutd has no --config (service features not merged): notify, socket activation, reload and watchdog checks skipped; the unit runs as Type=simple without sockets"
  inside mkdir -p /etc/systemd/system/insideoutd.service.d
  inside sh -c 'cat >/etc/systemd/system/insideoutd.service.d/compat.conf' <<'EOF'
[Unit]
Requires=
After=
[Service]
Type=simple
Sockets=
ExecStart=
ExecStart=/usr/sbin/insideoutd
WatchdogSec=0
EOF
  inside systemctl stop insideoutd.service insideoutd.socket insideoutd-control.socket || true
  inside systemctl daemon-reload
fi

ctl() { inside timeout 10 insideoutctl --runtime-dir /run/insideout "$@"; }

# Start: active only once the sockets answer (Type=notify: READY=1 after they listen).
inside systemctl stop insideoutd.service >/dev/null 2>&1 || true
if inside systemctl start insideoutd.service; then
  if ((full)); then
    ctl status >/dev/null && pass "start: active and control.sock answers at once" ||
      fail "start: active but control.sock does not answer"
    status=$(inside systemctl show -p StatusText --value insideoutd.service)
    [[ -n $status ]] && pass "STATUS=: $status" || fail "no STATUS= text"
  else
    for _ in $(seq 50); do ctl status >/dev/null 2>&1 && break; sleep 0.1; done
    ctl status >/dev/null && pass "start (simple): control.sock answers" || fail "start: no answer"
  fi
else
  inside journalctl -u insideoutd --no-pager | tail -20
  fail "systemctl start insideoutd"
fi
inside systemctl is-active insideoutd.service >/dev/null && pass "active" || fail "not active"

# Capabilities: CAP_SYS_NICE only, as user insideout.
pid=$(inside systemctl show -p MainPID --value insideoutd.service)
caps=$(inside grep -E '^(CapEff|CapBnd|Uid)' "/proc/$pid/status" | tr -s '\t ' ' ')
[[ $caps == *"CapEff: 0000000000800000"* && $caps == *"CapBnd: 0000000000800000"* ]] &&
  pass "capabilities: CAP_SYS_NICE only" || fail "capabilities: $caps"
[[ $(inside stat -c %U "/proc/$pid") == insideout ]] && pass "runs as insideout" || fail "not user insideout"

# A client: root, and a member of group insideout (the sockets' modes let it in).
out=$(ctl submit echo hello 2>&1) && [[ $out == *hello* ]] && pass "client: submit echo" ||
  fail "client: submit echo: $out"
inside useradd -m -G insideout alice 2>/dev/null || true
inside runuser -u alice -- timeout 10 insideoutctl --runtime-dir /run/insideout status >/dev/null &&
  pass "client: a member of group insideout connects" || fail "client: group member refused"
inside useradd -m mallory 2>/dev/null || true
if inside runuser -u mallory -- timeout 10 insideoutctl --runtime-dir /run/insideout status >/dev/null 2>&1; then
  fail "client: a user outside group insideout got in"
else pass "client: a user outside group insideout is refused"; fi

# Reload: a pool added to the configuration appears without a restart.
if ((full)); then
  pid=$(inside systemctl show -p MainPID --value insideoutd.service)
  inside sh -c 'printf "\n[[pools]]\nname = \"reloaded\"\nsize = 1\n" >>/etc/insideout/insideoutd.toml'
  inside systemctl reload insideoutd.service && pass "systemctl reload" || fail "systemctl reload"
  [[ $(ctl pools) == *reloaded* ]] && pass "reload applied (pool 'reloaded')" || fail "reload not applied"
  [[ $(inside systemctl show -p MainPID --value insideoutd.service) == "$pid" ]] &&
    pass "reload kept the process" || fail "reload restarted the process"
else
  note "reload (needs --config and SIGHUP)"
fi

# Restart with clients: one waiting on a 2 s sleep, one polling status; count refusals.
pid=$(inside systemctl show -p MainPID --value insideoutd.service)
inside sh -c 'timeout 20 insideoutctl --runtime-dir /run/insideout submit sleep --arg 2000000000 \
  >/tmp/sleep.out 2>&1; echo $? >/tmp/sleep.rc' &
waiter=$!
# A refusal is a connect that failed (ECONNREFUSED, ENOENT), not a call that the old
# daemon cut off while it stopped.
inside sh -c 'refused=0; cut=0; ok=0; end=$(($(date +%s) + 4)); while [ $(date +%s) -lt $end ]; do
  if err=$(insideoutctl --runtime-dir /run/insideout --timeout-ms 3000 status 2>&1 >/dev/null); then
    ok=$((ok + 1))
  elif echo "$err" | grep -q -i -e "connection refused" -e "no such file"; then
    refused=$((refused + 1))
  else cut=$((cut + 1)); fi; done
  echo "$ok $refused $cut" >/tmp/poll.out' &
poller=$!
sleep 0.5
t0=$(date +%s%N)
inside systemctl restart insideoutd.service && pass "systemctl restart" || fail "systemctl restart"
echo "test-systemd: restart took $((($(date +%s%N) - t0) / 1000000)) ms"
wait "$waiter" "$poller" || true
[[ $(inside systemctl show -p MainPID --value insideoutd.service) != "$pid" ]] && pass "new main process" ||
  fail "same main process after restart"
read -r ok refused cut < <(inside cat /tmp/poll.out)
echo "test-systemd: during the restart: $ok status calls answered, $refused connects refused, $cut cut off"
if ((full)); then
  ((refused == 0)) && pass "restart: no client refused (socket activation)" ||
    fail "restart: $refused connects refused"
else
  note "restart without refusals (needs socket activation)"
fi
rc=$(inside cat /tmp/sleep.rc)
[[ $rc =~ ^[0-9]+$ && $rc -ne 124 ]] && pass "client waiting across the restart got one outcome (exit $rc: $(inside head -c 200 /tmp/sleep.out))" ||
  fail "client waiting across the restart hung"
[[ $(ctl submit echo again) == *again* ]] && pass "client works after restart" || fail "client after restart"

# Upgrade in place (the same package again: postinst configure with the old version):
# the running service is restarted, still enabled.
pid=$(inside systemctl show -p MainPID --value insideoutd.service)
inside dpkg -i "/mnt/deb/$debname" >/tmp/dpkg.log 2>&1 && pass "upgrade: dpkg -i over the installed package" ||
  { cat /tmp/dpkg.log; fail "upgrade: dpkg -i"; }
for _ in $(seq 50); do inside systemctl is-active insideoutd.service >/dev/null && break; sleep 0.1; done
new=$(inside systemctl show -p MainPID --value insideoutd.service)
[[ $new != "$pid" && $new != 0 ]] && pass "upgrade restarted the service" || fail "upgrade did not restart the service ($pid -> $new)"
[[ $(ctl submit echo upgraded) == *upgraded* ]] && pass "client works after the upgrade" || fail "client after upgrade"

# Watchdog: every worker wedged in test.hang while the other threads run.
if ((full)); then
  inside mkdir -p /etc/systemd/system/insideoutd.service.d
  inside sh -c 'cat >/etc/systemd/system/insideoutd.service.d/watchdog-test.conf' <<'EOF'
[Service]
ExecStart=
ExecStart=/usr/sbin/insideoutd --config /etc/insideout/insideoutd.toml --enable-test-functions --workers 2
WatchdogSec=3s
EOF
  inside systemctl daemon-reload
  inside systemctl restart insideoutd.service
  restarts=$(inside systemctl show -p NRestarts --value insideoutd.service)
  for _ in 1 2 3 4; do inside sh -c 'timeout 30 insideoutctl --runtime-dir /run/insideout submit test.hang >/dev/null 2>&1 &'; done
  restarted=0
  for _ in $(seq 150); do
    [[ $(inside systemctl show -p NRestarts --value insideoutd.service) != "$restarts" ]] && { restarted=1; break; }
    sleep 0.1
  done
  ((restarted)) && pass "watchdog restarted the wedged daemon" || fail "watchdog did not restart the wedged daemon"
  [[ $(inside journalctl -u insideoutd --no-pager) == *[Ww]atchdog* ]] && pass "journal names the watchdog" ||
    fail "no watchdog line in the journal"
  # The daemon's own line about it, at priority err (its "<3>" prefix), not only systemd's.
  [[ -n $(inside journalctl -u insideoutd SYSLOG_IDENTIFIER=insideoutd -p err -o cat --no-pager) ]] &&
    pass "the daemon's error lines reach the journal with priority err" ||
    fail "no line of insideoutd at priority err"
  inside rm /etc/systemd/system/insideoutd.service.d/watchdog-test.conf
  inside systemctl daemon-reload
  for _ in $(seq 50); do inside systemctl is-active insideoutd.service >/dev/null && break; sleep 0.1; done
else
  note "watchdog (needs WATCHDOG=1 and test.hang)"
fi

# Logs reach the journal with priorities.
[[ -n $(inside journalctl -u insideoutd --no-pager -o cat) ]] && pass "journal has insideoutd's lines" ||
  fail "no journal lines"

# Stop: nothing left behind.
inside systemctl stop insideoutd.service && pass "systemctl stop insideoutd" || fail "systemctl stop insideoutd"
inside systemctl stop insideoutd.socket insideoutd-control.socket && pass "sockets stopped" ||
  fail "systemctl stop of the sockets: $(inside systemctl status --no-pager insideoutd.socket insideoutd-control.socket 2>&1 | tail -20)"
left=$(inside pgrep -u insideout -a || true)
[[ -z $left ]] && pass "stop: no process of insideout left" || fail "stop: left running: $left"
files=$(inside find /run/insideout /dev/shm -mindepth 1 2>/dev/null || true)
[[ -z $files ]] && pass "stop: /run/insideout and /dev/shm empty" || fail "stop: left files: $files"

if ((fails)); then
  echo "test-systemd: FAILED ($fails)"
  exit 1
fi
echo "test-systemd: PASS"
