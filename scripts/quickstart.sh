#!/usr/bin/env bash
# Start (or resume) a single-node KAT cluster on this machine, run the example
# web service on it (examples/web, 3 replicas) and show it.
#   KAT_DATA_DIR   data dir (default /var/lib/kat)
#   KAT_CONFIG     cluster.kat to init with (default examples/cluster.kat)
# Where systemd is PID 1 the agent runs as the kat-agent.service unit
# (`kat-agent install init ...`: restarted on failure, started at boot); elsewhere
# (containers, CI) in the background. Either way its log is $KAT_DATA_DIR/agent.log
# and `scripts/quickstart.sh stop` stops it (containers keep running).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${KAT_DATA_DIR:-/var/lib/kat}"
CONFIG="${KAT_CONFIG:-examples/cluster.kat}"
PIDFILE="$DATA/agent.pid"
mkdir -p "$DATA"

SYSTEMD=0
[ -d /run/systemd/system ] && command -v systemctl >/dev/null && SYSTEMD=1

running() {
  if [ $SYSTEMD = 1 ]; then systemctl is-active --quiet kat-agent.service; return; fi
  [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

if [ "${1:-}" = "stop" ]; then
  if [ $SYSTEMD = 1 ]; then
    systemctl stop kat-agent.service
  elif running; then
    kill -TERM "$(cat "$PIDFILE")"
    # Its Podman services get up to 10 s each to stop; never claim a stop that did not happen.
    for _ in $(seq 600); do running || break; sleep 0.1; done
    if running; then
      echo "kat-agent (pid $(cat "$PIDFILE")) did not stop within 60 s; see $DATA/agent.log" >&2
      exit 1
    fi
  fi
  rm -f "$PIDFILE"
  echo "kat-agent stopped"
  exit 0
fi

if running; then
  echo "kat-agent already running"
elif [ $SYSTEMD = 1 ]; then
  echo "installing and starting kat-agent.service (data dir $DATA, log $DATA/agent.log)"
  kat-agent install init --config "$(realpath "$CONFIG")" --data-dir "$DATA" \
    --log-file "$DATA/agent.log"
else
  echo "starting kat-agent init (data dir $DATA, log $DATA/agent.log)"
  # The log is private (0600), also one an older version made world-readable.
  (umask 077 && touch "$DATA/agent.log") && chmod 600 "$DATA/agent.log"
  setsid kat-agent init --config "$CONFIG" --data-dir "$DATA" >>"$DATA/agent.log" 2>&1 < /dev/null &
  echo $! > "$PIDFILE"
fi

deadline=$((SECONDS + 60))
until [ -f "$DATA/admin.katconfig" ] && katcall --katconfig "$DATA/admin.katconfig" get nodes -o json 2>/dev/null | grep -q '"READY"'; do
  if ! running || [ $SECONDS -ge $deadline ]; then
    echo "kat-agent did not come up; last lines of $DATA/agent.log:" >&2
    tail -n 30 "$DATA/agent.log" >&2
    exit 1
  fi
  sleep 0.5
done

mkdir -p ~/.kat
katcall --katconfig ~/.kat/config config merge "$DATA/admin.katconfig" --use >/dev/null
# The join command holds a live token: shown on this terminal, kept 0600 in the
# data dir by init, never in the log.
if [ -f "$DATA/join-command" ]; then
  echo "Join other nodes (workers) with ($DATA/join-command, 0600):"
  sed 's/^/  /' "$DATA/join-command"
fi
katcall get nodes
echo
katcall apply -f examples/web --wait --timeout 5m
katcall get instances
