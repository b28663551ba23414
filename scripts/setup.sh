#!/usr/bin/env bash
# Idempotent set-up for twinpath on Debian 12 as root: installs only what is
# missing and says what it does. Called by `make demo`, `make test`, `make bench`.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*"; }

[ "$(id -u)" = 0 ] || { echo "setup: must run as root (BPF, netns, apt)" >&2; exit 1; }

# Debian packages: BCC and its kernel headers, bpftool, netlink/ping tools,
# nftables (the lab's exchange keeps return traffic on the arrival handoff),
# libbpf (BPF_PROG_TEST_RUN and pinned maps through ctypes), a C toolchain
# for the Cython extensions, for the benchmarks' comparisons FRR (its
# bfdd, run in lab namespaces only) and stress-ng, and systemd for
# `systemd-analyze verify` of packaging/systemd/twinpath.service (installed
# for the tool only; nothing is started where systemd is not PID 1), and for
# the HA pair lab (lab.pair) etcd-server, its witness, and keepalived, the
# VRRP failover it is compared with (both run in lab namespaces only), and
# openssh-server: the Ansible tests reach the lab's gateways over SSH (sshd
# runs in lab namespaces only).
PKGS="python3-bpfcc linux-headers-amd64 bpftool iproute2 iputils-ping nftables
      libbpf1 python3-venv python3-dev build-essential frr stress-ng systemd
      etcd-server keepalived openssh-server openssh-client"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  say "installing Debian packages:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # Installing frr, etcd-server or keepalived would start their daemons on
  # the host. The lab runs them inside its namespaces only, so forbid service
  # starts meanwhile (policy-rc.d, unless the host has its own) and leave the
  # services disabled.
  guard=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    guard=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' >"$guard" && chmod +x "$guard"
  fi
  # shellcheck disable=SC2086
  apt-get install -y -q $missing || { [ -n "$guard" ] && rm -f "$guard"; exit 1; }
  [ -n "$guard" ] && rm -f "$guard"
  case " $missing " in *" frr "*)
    say "frr installed for the bench's bfdd comparison; its host service is left stopped and disabled"
    command -v systemctl >/dev/null && systemctl disable --now frr.service >/dev/null 2>&1 || true ;;
  esac
  for pkg_svc in etcd-server:etcd keepalived:keepalived openssh-server:ssh; do
    pkg=${pkg_svc%:*} svc=${pkg_svc#*:}
    case " $missing " in *" $pkg "*)
      say "$pkg installed for the HA pair lab and its Ansible tests; its host service $svc is left stopped and disabled"
      command -v systemctl >/dev/null && systemctl disable --now "$svc.service" >/dev/null 2>&1 || true ;;
    esac
  done
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

# The product into .venv (and its Cython extension rebuilt) only when its
# build inputs changed since the last install; the lab's and bench's
# requirements likewise.
stamp=.venv/.twinpath-installed
# (fastpath/ takes TP_MAX_LINKS from ebpf/lib/layout.h.)
if [ ! -f "$stamp" ] || [ -n "$(find pyproject.toml setup.py requirements-lab.txt ansible/requirements.txt fastpath ebpf/lib/layout.h -newer "$stamp" \( -name '*.py*' -o -name '*.toml' -o -name '*.txt' -o -name '*.h' \) | head -n1)" ]; then
  say "installing twinpath into .venv (compiles fastpath/ Cython), and the lab's requirements-lab.txt"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements-lab.txt
  .venv/bin/python -m pip install -q -e .
  touch "$stamp"
fi

# lab/ and bench/ are not part of the product wheel; they run from this
# checkout, importable from .venv anywhere (also inside `ip netns exec`).
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ "$(cat "$site/twinpath-checkout.pth" 2>/dev/null)" != "$PWD" ]; then
  say "putting this checkout's lab/ and bench/ on .venv's path ($site/twinpath-checkout.pth)"
  printf '%s\n' "$PWD" >"$site/twinpath-checkout.pth"
fi

# The lab's traffic pacer (Cython), built in place.
if [ -z "$(ls lab/pacer.*.so 2>/dev/null)" ] || [ -n "$(find lab/pacer.pyx fastpath/_ctime.pxd -newer "$(ls lab/pacer.*.so | head -n1)")" ]; then
  say "compiling the lab's traffic pacer (lab/pacer.pyx)"
  .venv/bin/cythonize -q -i -3 lab/pacer.pyx >/dev/null
fi
