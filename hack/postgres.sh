#!/usr/bin/env bash
# The local cluster's PostgreSQL: Debian's server binaries (hack/install-deps.sh installs
# the `postgresql` package), our own data directory under $CLUSTER_DIR/postgres, listening
# on the node address $NODE_IP:$POSTGRES_PORT, so pods reach it like a managed database
# outside the cluster. Debian's own `main` cluster (if any) is never touched: only the
# server whose pid file and data directory are ours.
#
# usage: postgres.sh up       create (initdb, user troupe with a random password, database
#                             troupe) if needed and start it; idempotent
#        postgres.sh stop     fast shutdown, data kept (the database-down fault test)
#        postgres.sh start    start it again after stop (waits until it takes connections)
#        postgres.sh down     stop it and remove its data directory
#        postgres.sh url      the connection URL pods use (postgresql://troupe:...@NODE_IP:PORT/troupe)
#        postgres.sh status   "running PID" or "stopped"
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"

dir="$POSTGRES_DIR"
data="$dir/data"
pidfile="$data/postmaster.pid"

bin_dir() {
  local b
  b="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)"
  [ -n "$b" ] && [ -x "$b/pg_ctl" ] || die "PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin: run hack/install-deps.sh"
  echo "$b"
}

as_postgres() { runuser -u postgres -- "$@"; }

# The pid of our server if it runs, else nothing: the postmaster of OUR data directory.
our_pid() {
  [ -f "$pidfile" ] || return 0
  local pid
  pid="$(head -n1 "$pidfile")"
  [[ "$pid" =~ ^[0-9]+$ ]] && [ -r "/proc/$pid/cmdline" ] || return 0
  tr '\0' '\n' <"/proc/$pid/cmdline" | grep -qxF -- "$data" || return 0
  echo "$pid"
}

start_server() {
  local bin
  bin="$(bin_dir)"
  if [ -n "$(our_pid)" ]; then
    log "postgres already runs ($(our_pid))"
    return 0
  fi
  # The server is a daemon: it must not inherit our descriptors (a caller's
  # `flock /tmp/troupe-cluster.lock ...` would stay held for as long as it runs).
  close_inherited_fds
  as_postgres "$bin/pg_ctl" -D "$data" -l "$dir/postgres.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1,$NODE_IP -c port=$POSTGRES_PORT -c unix_socket_directories=$dir/run" \
    start >/dev/null
  log "postgres started ($(our_pid)) on $NODE_IP:$POSTGRES_PORT"
}

up() {
  local bin
  bin="$(bin_dir)"
  id postgres >/dev/null 2>&1 || die "no postgres user: install Debian's postgresql package (hack/install-deps.sh)"
  if [ ! -f "$data/PG_VERSION" ]; then
    log "creating the local cluster's PostgreSQL in $dir"
    rm -rf "$dir"
    mkdir -p "$dir/run"
    # The password never appears on a command line; only root and postgres can read it.
    head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$dir/password"
    chown -R postgres:postgres "$dir"
    chmod 700 "$dir"
    chmod 600 "$dir/password"
    as_postgres "$bin/initdb" -D "$data" -U troupe --auth=scram-sha-256 \
      --pwfile="$dir/password" -E UTF8 --no-instructions >/dev/null
    # Pods (the pod CIDR) and the host connect with the password; nobody else.
    cat >>"$data/pg_hba.conf" <<EOF
host troupe troupe $POD_CIDR scram-sha-256
host troupe troupe $NODE_IP/32 scram-sha-256
EOF
    start_server
    PGPASSWORD="$(cat "$dir/password")" "$bin/createdb" -h 127.0.0.1 -p "$POSTGRES_PORT" -U troupe troupe
    echo "postgresql://troupe:$(cat "$dir/password")@$NODE_IP:$POSTGRES_PORT/troupe" >"$dir/url"
    chmod 600 "$dir/url"
  else
    start_server
  fi
}

stop_server() { # mode
  local bin pid
  bin="$(bin_dir)"
  pid="$(our_pid)"
  if [ -z "$pid" ]; then
    log "postgres is not running"
    return 0
  fi
  as_postgres "$bin/pg_ctl" -D "$data" -m "$1" -w -t 30 stop >/dev/null ||
    { kill -KILL "$pid" 2>/dev/null || true; }
  log "postgres $pid stopped"
}

[ "$(id -u)" = 0 ] || die "postgres.sh needs root (it runs the server as the postgres user)"
cmd="${1:-}"
case "$cmd" in
  up) up ;;
  start)
    [ -f "$data/PG_VERSION" ] || die "no database in $data: run 'postgres.sh up' first"
    start_server
    ;;
  stop) stop_server fast ;;
  down)
    if [ -d "$data" ]; then stop_server immediate; fi
    rm -rf "$dir"
    log "postgres removed"
    ;;
  url) cat "$dir/url" 2>/dev/null || die "no database: run 'postgres.sh up' first" ;;
  status) pid="$(our_pid)"; if [ -n "$pid" ]; then echo "running $pid"; else echo stopped; fi ;;
  *) die "usage: postgres.sh up | stop | start | down | url | status" ;;
esac
