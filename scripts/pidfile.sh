# Shared by scripts/kafka.sh and scripts/registry.sh (sourced): a server
# process started in the background and tracked by its PID file.

# running_pid PIDFILE: whether the process the file names is alive.
running_pid() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# stop_pid PIDFILE NAME: stops the process (SIGTERM, then SIGKILL after
# 30 s) and removes the file.
stop_pid() {
  local pidfile=$1 name=$2
  if ! running_pid "$pidfile"; then rm -f "$pidfile"; return; fi
  local pid; pid=$(cat "$pidfile")
  log "stopping $name (pid $pid)"
  kill "$pid"
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; return; }
    sleep 0.1
  done
  log "$name did not stop in 30 s; killing it"
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}
