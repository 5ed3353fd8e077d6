#!/usr/bin/env bash
# Installs everything KAT needs on a Debian 12 machine (run as root). Idempotent: a second
# run only checks and finishes in a few seconds.
#
#   scripts/setup.sh            # packages, Python package (editable, with dev extras),
#                               # /etc/containers/containers.conf, local images
#
# Environment:
#   KAT_SETUP_FORCE_PIP=1       reinstall the Python package even if it looks up to date
#   KAT_SETUP_SKIP_IMAGES=1     do not build the example image (localhost/busybox:latest,
#                               also tagged registry.kat.local/busybox:latest)
#   KAT_SETUP_FORCE_APT=1       run apt-get update/install even if all packages are present
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (it installs Debian packages and writes /etc/containers)"
export PATH="$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
export DEBIAN_FRONTEND=noninteractive

# ---------------------------------------------------------------------------------------
# 1. Debian packages
# ---------------------------------------------------------------------------------------
PACKAGES=(
  etcd-server etcd-client podman runc uidmap slirp4netns fuse-overlayfs busybox-static
  wireguard-tools wireguard-go iproute2 iptables nftables util-linux git docker-registry
  haproxy dnsperf wrk tcpdump iperf3
  make procps psmisc ca-certificates python3 python3-pip
  prometheus  # promtool, and a real Prometheus for tests/cluster/test_metrics_prometheus.py (not started)
)

missing=()
[[ ${KAT_SETUP_FORCE_APT:-0} == 1 ]] && missing=("${PACKAGES[@]}")
for p in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ $status == "install ok installed" || ${KAT_SETUP_FORCE_APT:-0} == 1 ]] || missing+=("$p")
done

if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  # Keep package maintainer scripts from starting services (etcd, docker-registry): KAT
  # starts its own etcd, and a system one would hold port 2379. A policy-rc.d that exits
  # 101 is the standard way; only add ours if none is there, and always remove it again.
  added_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    added_policy=1
    trap 'if [[ $added_policy == 1 ]]; then rm -f /usr/sbin/policy-rc.d; fi' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-upgrade -o Dpkg::Use-Pty=0 "${missing[@]}" >/dev/null
  if ((added_policy)); then rm -f /usr/sbin/policy-rc.d; added_policy=0; fi
else
  log "Debian packages: all ${#PACKAGES[@]} present"
fi

# Services that the packages may have enabled or started. They are not used by KAT as
# system services (tests start their own etcd / registry), so make sure they are not
# running and do not come back at boot. Works with or without systemd.
for svc in etcd docker-registry prometheus prometheus-node-exporter; do
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
    if systemctl is-enabled --quiet "$svc" 2>/dev/null || systemctl is-active --quiet "$svc" 2>/dev/null; then
      log "disabling system service $svc"
      systemctl disable --now "$svc" >/dev/null 2>&1 || log "warning: could not disable $svc"
    fi
  elif [[ -x /etc/init.d/$svc ]]; then
    if /etc/init.d/"$svc" status >/dev/null 2>&1; then
      log "stopping system service $svc"
      /etc/init.d/"$svc" stop >/dev/null 2>&1 || log "warning: could not stop $svc"
    fi
    command -v update-rc.d >/dev/null && update-rc.d "$svc" disable >/dev/null 2>&1 || true
  fi
done

# ip and friends live in /usr/sbin, which is not on every user's PATH; link what is missing
# into /usr/local/bin so that `command -v` finds them everywhere.
for tool in ip nsenter etcd etcdctl wg wireguard-go podman runc busybox haproxy; do
  if ! PATH=/usr/local/bin:/usr/bin:/bin command -v "$tool" >/dev/null; then
    for d in /usr/sbin /sbin; do
      if [[ -x $d/$tool ]]; then ln -sf "$d/$tool" "/usr/local/bin/$tool"; log "linked /usr/local/bin/$tool -> $d/$tool"; break; fi
    done
  fi
done
for tool in ip nsenter etcd podman runc docker-registry; do
  command -v "$tool" >/dev/null || die "$tool not found on PATH after installing packages"
done

# ---------------------------------------------------------------------------------------
# 2. Python package (editable, with dev extras)
# ---------------------------------------------------------------------------------------
PY=python3
if ! "$PY" -m pip --version >/dev/null 2>&1; then
  die "'$PY -m pip' does not work (python3 is $(command -v $PY)); install pip for it"
fi
# A stamp per interpreter remembers the pyproject.toml it was installed from, so a second
# run does not go to PyPI again. (-P: do not put the cwd on sys.path, or the repo's own
# kat.egg-info would be what importlib.metadata finds.)
py_id=$("$PY" -c 'import sys,hashlib; print(hashlib.sha256(sys.executable.encode()).hexdigest()[:16])')
stamp_dir=/var/cache/kat-setup
stamp="$stamp_dir/pip-$py_id.sha256"
want=$( { sha256sum pyproject.toml | cut -d' ' -f1; echo "$REPO_ROOT"; } | sha256sum | cut -d' ' -f1)
installed_here=$("$PY" -P - "$REPO_ROOT" <<'EOF' 2>/dev/null || true
import json, sys
from importlib import metadata
try:
    d = metadata.distribution("kat")
    url = json.loads(d.read_text("direct_url.json") or "{}").get("url", "")
    print("yes" if url.rstrip("/") == "file://" + sys.argv[1].rstrip("/") else "no")
except Exception:
    print("no")
EOF
)
if [[ ${KAT_SETUP_FORCE_PIP:-0} != 1 && $installed_here == yes && -f $stamp && $(cat "$stamp") == "$want" ]]; then
  log "Python package kat: installed (editable) from $REPO_ROOT, pyproject unchanged"
else
  log "pip install -e '.[dev]' with $("$PY" -c 'import sys; print(sys.executable)')"
  pip_out=$(mktemp)
  if ! "$PY" -m pip install --disable-pip-version-check -q -e '.[dev]' >"$pip_out" 2>&1; then
    if grep -q externally-managed-environment "$pip_out"; then
      log "pip refused (externally-managed-environment); retrying with --break-system-packages"
      "$PY" -m pip install --disable-pip-version-check -q --break-system-packages -e '.[dev]' \
        || { rm -f "$pip_out"; die "pip install failed"; }
    else
      cat "$pip_out" >&2; rm -f "$pip_out"; die "pip install failed"
    fi
  fi
  rm -f "$pip_out"
  mkdir -p "$stamp_dir"
  echo "$want" >"$stamp"
  # pyenv only sees new console scripts after a rehash.
  if command -v pyenv >/dev/null; then pyenv rehash 2>/dev/null || true; fi
fi
for tool in kat-agent katcall; do
  command -v "$tool" >/dev/null || log "warning: $tool is not on PATH (pip scripts dir: $("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'))"
done

# ---------------------------------------------------------------------------------------
# 3. Podman configuration: runc with lowered ulimits (crun fails on these machines)
# ---------------------------------------------------------------------------------------
CONF=/etc/containers/containers.conf
conf_ok() {
  [[ -f $CONF ]] || return 1
  "$PY" - "$CONF" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    c = tomllib.load(f)
u = set(c.get("containers", {}).get("default_ulimits", []))
e = c.get("engine", {})
ok = e.get("runtime") == "runc" and {"nofile=1024:1024", "nproc=1024:1024"} <= u
ok = ok and e.get("exit_command_delay") == 10
sys.exit(0 if ok else 1)
EOF
}
if conf_ok; then
  log "$CONF: runc + ulimits + exit_command_delay already set"
else
  mkdir -p /etc/containers
  if [[ -f $CONF ]]; then
    cp -p "$CONF" "$CONF.kat-backup"
    log "warning: $CONF did not set runc/ulimits; previous file saved as $CONF.kat-backup"
  fi
  cat >"$CONF" <<'EOF'
# Written by KAT scripts/setup.sh. crun fails on these machines (setrlimit RLIMIT_NOFILE,
# cgroups in hybrid mode); runc with lowered default ulimits works, as root and rootless.
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
# Each exec (health checks) otherwise leaves its conmon waiting 300 s.
exit_command_delay = 10
EOF
  log "wrote $CONF (runc, nofile/nproc 1024, exit_command_delay 10)"
fi

# ---------------------------------------------------------------------------------------
# 4. Local images (no registry is reachable)
# ---------------------------------------------------------------------------------------
if [[ ${KAT_SETUP_SKIP_IMAGES:-0} == 1 ]]; then
  log "images: skipped (KAT_SETUP_SKIP_IMAGES=1)"
else
  bash "$REPO_ROOT/scripts/build-images.sh"
fi

log "done"
