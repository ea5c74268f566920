#!/usr/bin/env bash
# Stops and restarts the local cluster's kube-apiserver, for fault tests (e2e/tests/faults.rs).
# Only the process hack/cluster-up.sh started is touched: the pid in
# $CLUSTER_DIR/run/kube-apiserver.pid, checked to be $K8S_BIN/kube-apiserver with a command
# line naming $CLUSTER_DIR. `stop` saves its exact argument vector and working directory
# and `start` runs exactly that again (same log file, same pid file), so the restarted API
# server is the one cluster-up.sh started.
#
# usage: apiserver.sh stop [--restore-after SECONDS]   SIGTERM (SIGKILL after 5 s); with
#                                                      --restore-after, a detached watchdog
#                                                      starts it again after SECONDS unless
#                                                      `start` ran first (a killed test never
#                                                      leaves the cluster without its API)
#        apiserver.sh start [--token T]               start it again with the saved arguments
#                                                      and wait for /readyz (90 s); a no-op if
#                                                      it is running; with --token, only if the
#                                                      stop that saved them was that one
#        apiserver.sh status                          "running PID" or "stopped"
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"

run="$CLUSTER_DIR/run"
logs="$CLUSTER_DIR/logs"
pidfile="$run/kube-apiserver.pid"
saved="$run/kube-apiserver.argv"   # NUL-separated argument vector of the stopped process
savedcwd="$run/kube-apiserver.cwd"
stopped="$run/kube-apiserver.stopped" # the token of the stop that saved them

# The pid of our API server if it runs, else nothing. Never another process: the binary
# must be ours and its command line must name our cluster directory.
our_pid() {
  [ -f "$pidfile" ] || return 0
  local pid argv0
  pid="$(cat "$pidfile")"
  [[ "$pid" =~ ^[0-9]+$ ]] && [ -r "/proc/$pid/cmdline" ] || return 0
  argv0="$(tr '\0' '\n' <"/proc/$pid/cmdline" | head -n1)"
  [ "$argv0" = "$K8S_BIN/kube-apiserver" ] || return 0
  tr '\0' '\n' <"/proc/$pid/cmdline" | grep -qF -- "$CLUSTER_DIR/" || return 0
  echo "$pid"
}

stop() {
  local restore_after=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --restore-after) restore_after="${2:?--restore-after SECONDS}"; shift 2 ;;
      *) die "stop: unknown argument $1" ;;
    esac
  done
  local pid
  pid="$(our_pid)"
  [ -n "$pid" ] || die "no kube-apiserver of the local cluster runs (pid file $pidfile); is the cluster up?"
  cp "/proc/$pid/cmdline" "$saved.tmp" && mv "$saved.tmp" "$saved"
  readlink "/proc/$pid/cwd" >"$savedcwd"
  local token
  token="$(date +%s%N)-$$"
  echo "$token" >"$stopped"
  kill -TERM "$pid"
  # It stops listening at once but drains its long-running requests for much longer;
  # the outage has begun either way.
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    log "kube-apiserver $pid still draining 5 s after SIGTERM; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  log "kube-apiserver $pid stopped"
  if [ -n "$restore_after" ]; then
    [[ "$restore_after" =~ ^[0-9]+$ ]] || die "--restore-after takes whole seconds"
    (
      close_inherited_fds
      setsid bash -c 'sleep "$1"; exec "$2" start --token "$3"' watchdog \
        "$restore_after" "$here/apiserver.sh" "$token" \
        >>"$logs/kube-apiserver-watchdog.log" 2>&1 </dev/null &
    )
    log "watchdog: it starts again in ${restore_after}s unless 'apiserver.sh start' runs first"
  fi
}

start() {
  local token=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --token) token="${2:?--token T}"; shift 2 ;;
      *) die "start: unknown argument $1" ;;
    esac
  done
  local pid
  pid="$(our_pid)"
  if [ -n "$pid" ]; then
    log "kube-apiserver already runs ($pid)"
    return 0
  fi
  if [ -n "$token" ] && [ "$(cat "$stopped" 2>/dev/null)" != "$token" ]; then
    log "watchdog: the stop with token $token was already undone; nothing to do"
    return 0
  fi
  [ -s "$saved" ] || die "no saved arguments ($saved): the API server was not stopped by apiserver.sh stop"
  local args=()
  mapfile -d '' -t args <"$saved"
  [ "${args[0]}" = "$K8S_BIN/kube-apiserver" ] || die "saved arguments are not our kube-apiserver: ${args[0]}"
  (
    cd "$(cat "$savedcwd" 2>/dev/null || echo /)"
    close_inherited_fds
    setsid "${args[@]}" >>"$logs/kube-apiserver.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
  )
  rm -f "$stopped"
  log "kube-apiserver started again ($(cat "$pidfile")) with its original ${#args[@]} arguments"
  for _ in $(seq 1 360); do
    if "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" get --raw /readyz >/dev/null 2>&1; then
      log "kube-apiserver ready"
      return 0
    fi
    sleep 0.25
  done
  die "kube-apiserver did not become ready within 90 s; see $logs/kube-apiserver.log"
}

[ "$(id -u)" = 0 ] || die "apiserver.sh needs root (the local cluster's processes are root's)"
cmd="${1:-}"
shift || true
case "$cmd" in
  stop) stop "$@" ;;
  start) start "$@" ;;
  status) pid="$(our_pid)"; if [ -n "$pid" ]; then echo "running $pid"; else echo stopped; fi ;;
  *) die "usage: apiserver.sh stop [--restore-after SECONDS] | start [--token T] | status" ;;
esac
