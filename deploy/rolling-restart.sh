#!/usr/bin/env bash
# Serve new code without cutting off a reply: migrate first, then restart the daphne processes
# one at a time, each once the one before answers /healthz again.
#
#   sudo PORTS="8001 8002" deploy/rolling-restart.sh
#
# The processes still running the old code work on the new schema meanwhile, so a release's
# migrations only add (columns with defaults, tables, indexes); removing what the old code uses
# waits for the next release. A restart is SIGTERM and a start: the process drains (its port
# closes, nginx sends everything new to the others, its running replies finish, its sockets
# reconnect elsewhere) and exits; the new one starts on the same port.
set -euo pipefail
PORTS="${PORTS:-8001 8002}"

systemctl start chat-migrate.service  # a oneshot: returns when done, fails the rollout if it fails

for port in $PORTS; do
  started=$(date +%s)
  systemctl restart "chat@${port}.service"  # returns once the old process exited and the new one runs
  healthy=0
  for _ in $(seq 1 120); do
    if curl -fsS -o /dev/null --max-time 3 "http://127.0.0.1:${port}/healthz"; then healthy=1; break; fi
    sleep 0.5
  done
  if [ "$healthy" != 1 ]; then
    echo "chat@${port} does not answer /healthz: rollout stopped, the other processes keep the old code" >&2
    exit 1
  fi
  echo "chat@${port}: restarted in $(( $(date +%s) - started )) s"
done
