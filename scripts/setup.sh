#!/usr/bin/env bash
# Idempotent set-up for twinpath on Debian 12 as root: installs only what is
# missing and says what it does. Called by `make demo`, `make test`, `make bench`.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*"; }

[ "$(id -u)" = 0 ] || { echo "setup: must run as root (BPF, netns, apt)" >&2; exit 1; }

# Debian packages: BCC and its kernel headers, bpftool, netlink/ping tools,
# nftables (the lab's exchange keeps return traffic on the arrival handoff),
# libbpf (BPF_PROG_TEST_RUN and pinned maps through ctypes), and a C toolchain
# for the Cython extensions.
PKGS="python3-bpfcc linux-headers-amd64 bpftool iproute2 iputils-ping nftables
      libbpf1 python3-venv python3-dev build-essential"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  say "installing Debian packages:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # shellcheck disable=SC2086
  apt-get install -y -q $missing
fi

# BCC needs kernel headers at /lib/modules/$(uname -r)/build. When the running
# kernel has no headers package, point at Debian's generic amd64 headers.
mod="/lib/modules/$(uname -r)"
if [ ! -e "$mod/build/Makefile" ]; then
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1)
  [ -n "$hdr" ] && [ -n "$common" ] || { echo "setup: no linux-headers-*-amd64 in /usr/src" >&2; exit 1; }
  say "linking $mod/build -> $hdr and $mod/source -> $common"
  mkdir -p "$mod"
  ln -sfn "$hdr" "$mod/build"
  ln -sfn "$common" "$mod/source"
fi

if ! mountpoint -q /sys/fs/bpf; then
  say "mounting bpffs at /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf
fi

# The venv must see Debian's BCC (PyPI's 'bcc' is an unrelated package).
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with /usr/bin/python3 --system-site-packages"
  /usr/bin/python3 -m venv --system-site-packages .venv
fi

# Reinstall the package (and rebuild the Cython extensions) only when its
# build inputs changed since the last install.
stamp=.venv/.twinpath-installed
if [ ! -f "$stamp" ] || [ -n "$(find pyproject.toml setup.py fastpath -newer "$stamp" -name '*.py*' -o -newer "$stamp" -name '*.toml' | head -n1)" ]; then
  say "installing twinpath into .venv (compiles fastpath/ Cython extensions)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$stamp"
fi
