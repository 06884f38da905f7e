#!/usr/bin/env bash
# The supervisor's ingest on SQLite and on PostgreSQL, side by side (README "Two supervisors on
# PostgreSQL", sizing): a Mosquitto and a PostgreSQL cluster of its own (default settings, fsync
# on; as the `postgres` user when run as root), one supervisor at a time, `loadgen` 20 000
# verdicts from 8 devices, then bytes per verdict stored.
#
#   scripts/supervisor-bench.sh [target/release]    (the folder of inspectd-supervisor)
set -euo pipefail
bin=${1:-target/release}/inspectd-supervisor
[[ -x $bin ]] || { echo "no $bin: cargo build --release -p inspectd-supervisor" >&2; exit 2; }
bin=$(readlink -f "$bin")
pgbin=$(dirname "$(readlink -f "$(command -v initdb || ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")")
dir=$(mktemp -d /tmp/inspectd-bench.XXXXXX)
chmod 755 "$dir"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
as_pg=()
if ((EUID == 0)); then as_pg=(runuser -u postgres --); chown postgres: "$dir"; fi
"${as_pg[@]}" "$pgbin/initdb" -D "$dir/pg" -U bench -A trust -E UTF8 --locale=C >/dev/null
pgport=$((20000 + RANDOM % 10000)); mqport=$((30000 + RANDOM % 10000))
"${as_pg[@]}" "$pgbin/postgres" -D "$dir/pg" -p $pgport -k "$dir" -c listen_addresses=127.0.0.1 >"$dir/pg.log" 2>&1 &
pids+=($!)
printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n' $mqport >"$dir/mosq.conf"
mosquitto -c "$dir/mosq.conf" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 100); do "$pgbin/pg_isready" -q -h 127.0.0.1 -p $pgport && break; sleep 0.1; done
"$pgbin/psql" -q -h 127.0.0.1 -p $pgport -U bench -d postgres -c "CREATE DATABASE bench" 
lscpu | sed -n 's/^Model name: *//p'
run() {
  local name=$1 db=$2 web=127.0.0.1:$((40000 + RANDOM % 10000))
  "$bin" --broker mqtt://127.0.0.1:$mqport --listen $web --db "$db" --client-id "bench-$name" >"$dir/$name.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -sf http://$web/api/stats | grep -q '"connected":true' && break; sleep 0.1; done
  echo "== $name"
  "$bin" loadgen --broker mqtt://127.0.0.1:$mqport --supervisor $web --verdicts 20000
  "$bin" loadgen --broker mqtt://127.0.0.1:$mqport --supervisor $web --verdicts 20000
  kill $pid; wait $pid || true
}
run sqlite "$dir/bench.sqlite"
ls -l "$dir"/bench.sqlite* | awk '{s += $5} END {printf "sqlite: %d bytes for 40000 verdicts: %.0f bytes/verdict (file and WAL)\n", s, s / 40000}'
run postgres "postgres://bench@127.0.0.1:$pgport/bench?sslmode=disable"
"$pgbin/psql" -qAt -h 127.0.0.1 -p $pgport -U bench -d bench -c "VACUUM ANALYZE" -c \
  "SELECT 'postgres: ' || pg_total_relation_size('verdicts') || ' bytes (verdicts, its indexes and TOAST) for ' || count(*) || ' verdicts: ' || round(pg_total_relation_size('verdicts')::numeric / count(*)) || ' bytes/verdict; database ' || pg_database_size('bench') FROM verdicts"
