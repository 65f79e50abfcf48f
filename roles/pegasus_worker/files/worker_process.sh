#!/bin/sh
# One background han-worker process for PEGASUS_LAUNCH_MODE=direct, tracked by its pid file.
#   worker_process.sh HAN_WORKER CONFIG RUN_DIR LOG_DIR STOP_TIMEOUT status|start|stop INDEX
# Worker INDEX has its pid file RUN_DIR/worker-INDEX.pid and its log LOG_DIR/worker-INDEX.log.
# Prints what it found or did (running, absent, started, stopped, killed); Ansible's changed_when reads it.
# A pid counts only while /proc says that process runs han-worker with this config, so a reused pid or a
# stale file is never signalled.
set -eu
if [ $# -ne 7 ]; then
  echo "usage: $0 HAN_WORKER CONFIG RUN_DIR LOG_DIR STOP_TIMEOUT status|start|stop INDEX" >&2
  exit 2
fi
han_worker=$1 config=$2 stop_timeout=$5 action=$6
pid_file=$3/worker-$7.pid log_file=$4/worker-$7.log

worker_pid() {
  [ -s "$pid_file" ] || return 1
  pid=$(cat "$pid_file")
  case $pid in '' | *[!0-9]*) return 1 ;; esac
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' '\n' <"/proc/$pid/cmdline" | grep -qxF -- "--config=$config" || return 1
  echo "$pid"
}

case $action in
status)
  if worker_pid >/dev/null; then echo running; else echo absent; fi
  ;;
start)
  if worker_pid >/dev/null; then echo running; exit 0; fi
  # setsid: the worker outlives this SSH session; it writes its own pid before it becomes han-worker (exec).
  setsid sh -c 'echo $$ >"$1"; exec "$2" run "--config=$3" >>"$4" 2>&1 </dev/null' \
    worker "$pid_file" "$han_worker" "$config" "$log_file" &
  waited=0
  until worker_pid >/dev/null; do
    waited=$((waited + 1))
    if [ "$waited" -gt 50 ]; then echo "the worker did not start; see $log_file" >&2; exit 1; fi
    sleep 0.1
  done
  echo started
  ;;
stop)
  pid=$(worker_pid) || { rm -f "$pid_file"; echo absent; exit 0; }
  kill -TERM "$pid"  # drain: the job in flight finishes or goes back to its queue
  waited=0
  while kill -0 "$pid" 2>/dev/null; do
    waited=$((waited + 1))
    if [ "$waited" -gt $((stop_timeout * 10)) ]; then kill -KILL "$pid"; rm -f "$pid_file"; echo killed; exit 0; fi
    sleep 0.1
  done
  rm -f "$pid_file"
  echo stopped
  ;;
*)
  echo "$0: unknown action $action (status, start or stop)" >&2
  exit 2
  ;;
esac
