#!/usr/bin/env bash
# Durable vs in-memory asks through one node, side by side (bench/src/bin/durable.rs),
# against a throwaway PostgreSQL from Debian's packages: a fresh data directory, fsync on
# (a commit is a real WAL flush), loopback only, a free port; removed at the end.
# Usage: bench/durable.sh [durable's arguments, e.g. --seconds 10 --rounds 3]
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)"
[ -x "$bin/pg_ctl" ] || { echo "PostgreSQL server binaries not found: run hack/install-deps.sh" >&2; exit 1; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
dir="$(mktemp -d /tmp/troupe-bench-pg.XXXXXX)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
password="$(head -c 12 /dev/urandom | base64 | tr -d '/+=')"
echo "$password" >"$dir/pw"
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$dir"
cleanup() {
  as_pg "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT
as_pg "$bin/initdb" -D "$dir/data" -U troupe --auth=scram-sha-256 --pwfile="$dir/pw" -E UTF8 --no-instructions >/dev/null
as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
  -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c fsync=on -c max_connections=50" start >/dev/null
cargo build --release --quiet -p troupe-bench --bin durable
"${CARGO_TARGET_DIR:-target}/release/durable" --postgres-url "postgresql://troupe:$password@127.0.0.1:$port/postgres" "$@"
