#!/usr/bin/env bash
# Builds the .deb (the `package` preset, `cpack --preset deb`) and checks it: its control
# fields, its file list, its maintainer scripts, that `insideoutd --version` runs from the
# extracted package (dpkg -x), that its units pass `systemd-analyze verify` and score an
# exposure of at most 2.0 in `systemd-analyze security`. Called by .ci/run; about a
# minute when the build is up to date. --no-build checks the .deb already built.
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "test-deb: FAIL: $*" >&2; exit 1; }

if [[ ${1:-} != --no-build ]]; then
  cmake --preset package >/dev/null
  cmake --build --preset package
  cpack --preset deb >/dev/null
fi
version=$(sed -n 's/^project(insideout VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)
deb=build/package/insideout_${version}-1_amd64.deb
[[ -f $deb ]] || fail "no $deb"
echo "test-deb: $deb ($(du -h "$deb" | cut -f1))"

# Control fields.
field() { dpkg-deb -f "$deb" "$1"; }
[[ $(field Package) == insideout ]] || fail "Package: $(field Package)"
[[ $(field Version) == "${version}-1" ]] || fail "Version: $(field Version)"
[[ $(field Architecture) == amd64 ]] || fail "Architecture: $(field Architecture)"
depends=$(field Depends)
for dep in libc6 libstdc++6 libgrpc++1.51 libprotobuf32 passwd; do
  [[ $depends == *"$dep"* ]] || fail "Depends lacks $dep: $depends"
done
[[ -n $(field Maintainer) && -n $(field Description) ]] || fail "no Maintainer or Description"
echo "test-deb: Depends: $depends"

# Files.
list=$(dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\./|/|')
for f in /usr/sbin/insideoutd /usr/bin/insideoutctl \
  /usr/lib/x86_64-linux-gnu/libinsideout.so.0.1 /usr/lib/x86_64-linux-gnu/libinsideout.so \
  /usr/include/insideout/client.hpp /usr/lib/x86_64-linux-gnu/cmake/insideout/insideoutConfig.cmake \
  /usr/lib/x86_64-linux-gnu/pkgconfig/insideout.pc \
  /usr/lib/systemd/system/insideoutd.service /usr/lib/systemd/system/insideoutd.socket \
  /usr/lib/systemd/system/insideoutd-control.socket /usr/lib/sysusers.d/insideout.conf \
  /usr/lib/tmpfiles.d/insideout.conf /etc/insideout/insideoutd.toml \
  /usr/share/man/man8/insideoutd.8 /usr/share/man/man1/insideoutctl.1 \
  /usr/share/doc/insideout/DEPLOY.md; do
  grep -qx "$f" <<<"$list" || fail "missing $f"
done
if grep -E '^/(usr/local|home|work|root|tmp)/' <<<"$list"; then fail "files outside /usr and /etc"; fi

# Maintainer scripts and conffiles.
ctl=$(mktemp -d)
trap 'rm -rf "$ctl"' EXIT
dpkg-deb -e "$deb" "$ctl/DEBIAN"
for s in postinst prerm postrm; do
  [[ -x $ctl/DEBIAN/$s ]] || fail "no executable $s"
  sh -n "$ctl/DEBIAN/$s" || fail "$s: syntax"
done
grep -q systemd-sysusers "$ctl/DEBIAN/postinst" || fail "postinst does not create the user"
grep -q 'try-restart insideoutd.service' "$ctl/DEBIAN/postinst" || fail "postinst does not restart on upgrade"
grep -qx /etc/insideout/insideoutd.toml "$ctl/DEBIAN/conffiles" || fail "config is not a conffile"
grep -q ldconfig "$ctl/DEBIAN/triggers" || fail "no ldconfig trigger"

# Runs from the extracted package (its libraries from the host, as on a Debian 12 system).
root="$ctl/root"
dpkg -x "$deb" "$root"
out=$("$root/usr/sbin/insideoutd" --version) || fail "insideoutd --version failed"
[[ $out == "insideoutd $version"* ]] || fail "insideoutd --version said: $out"
"$root/usr/bin/insideoutctl" --help >/dev/null || fail "insideoutctl --help failed"
# Portable: nothing compiled for this machine's CPU only.
if grep -q -e '-march=native' -e '-mtune=native' build/package/compile_commands.json 2>/dev/null; then
  fail "the package preset compiles with -march=native"
fi
echo "test-deb: $out"

# pkg-config: a consumer (tests/package/consumer.cc) builds against the package's library
# and headers with `pkg-config --cflags --libs insideout`, and runs.
if command -v pkg-config >/dev/null && command -v c++ >/dev/null; then
  pc_flags=$(PKG_CONFIG_PATH="$root/usr/lib/x86_64-linux-gnu/pkgconfig" \
    pkg-config --cflags --libs insideout) || fail "pkg-config insideout"
  # shellcheck disable=SC2086
  c++ tests/package/consumer.cc $pc_flags -o "$ctl/consumer" || fail "building against insideout.pc"
  LD_LIBRARY_PATH="$root/usr/lib/x86_64-linux-gnu" "$ctl/consumer" >/dev/null ||
    fail "the pkg-config consumer did not run"
  echo "test-deb: pkg-config consumer builds and runs ($pc_flags)"
fi

# The units as installed.
if command -v systemd-analyze >/dev/null; then
  # A root of the package plus the host's units and kill(1): what a Debian 12 system has.
  cp -an /usr/lib/systemd/system/. "$root/usr/lib/systemd/system/"
  mkdir -p "$root/usr/bin" && cp /usr/bin/kill "$root/usr/bin/kill" && ln -sfn usr/bin "$root/bin"
  verify=$(systemd-analyze verify --man=no --root="$root" \
    "$root"/usr/lib/systemd/system/insideoutd{.service,.socket,-control.socket} 2>&1) ||
    fail "systemd-analyze verify: $verify"
  [[ -z $verify ]] || fail "systemd-analyze verify: $verify"
  score=$(systemd-analyze security --offline=yes "$root/usr/lib/systemd/system/insideoutd.service" 2>&1 |
    sed -n 's/.*Overall exposure level for insideoutd.service: \([0-9.]*\).*/\1/p')
  [[ -n $score ]] || fail "no exposure score"
  awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' || fail "exposure $score > 2.0"
  echo "test-deb: units verified, exposure $score"
else
  echo "test-deb: SKIP unit checks (no systemd-analyze)"
fi
echo "test-deb: PASS"
