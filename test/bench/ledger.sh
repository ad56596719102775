#!/usr/bin/env bash
# Erasure ledger benchmark.
#  1. Erasures per second (pgbench, 2 clients, each transaction one gdpr_erase of a subject with
#     a child row) with the ledger on and off, in the same run, rounds interleaved: the ledger
#     costs one fsynced append per erasure, under an exclusive lock on the file.
#  2. The gate: the time from the server being ready to the first statement of an application
#     role going through, with a ledger of at least 10 000 entries (the worker reads and checks
#     every line against the database first), against the same restart with the ledger off.
#   bash test/bench/ledger.sh [rounds] [seconds per run]
set -eu
cd "$(dirname "$0")/../.."
ROOT=$PWD
ROUNDS=${1:-3}
SECS=${2:-10}
. "$ROOT/test/lib.sh"
gdpr_bench_server "shared_preload_libraries = 'gdpr'
gdpr.worker_databases = 'postgres'
gdpr.worker_naptime = 3600"
LEDGER="$WORK/ledger"
mkdir "$LEDGER" && chown postgres "$LEDGER"

psql_ >/dev/null <<SQL
CREATE EXTENSION gdpr;
CREATE TABLE customer (id bigint PRIMARY KEY, email text, name text);
CREATE TABLE note (id bigint PRIMARY KEY, customer_id bigint REFERENCES customer, body text);
SELECT gdpr.register_subject('customer', 'id');
SELECT gdpr.register_table('note');
SELECT gdpr.classify_column('customer', 'email', 'contact');
SELECT gdpr.classify_column('customer', 'name', 'identity');
SELECT gdpr.classify_column('note', 'body', 'other');
SET gdpr.audit_events = 'none';
INSERT INTO customer SELECT i, 'c' || i || '@example.org', 'Name ' || i FROM generate_series(1, 300000) i;
INSERT INTO note SELECT i, i, 'note ' || i FROM generate_series(1, 300000) i;
CREATE SEQUENCE next_subject;
CREATE ROLE app LOGIN;
GRANT SELECT ON customer TO app;
VACUUM ANALYZE;
SQL
echo 'SELECT gdpr_erase(nextval('"'"'next_subject'"'"'));' >"$WORK/erase_on.sql"
cp "$WORK/erase_on.sql" "$WORK/erase_off.sql"
chown postgres "$WORK"/*.sql

ledger() {			# ledger on|off: set gdpr.ledger_directory and reload
	local dir=''
	[ "$1" = on ] && dir=$LEDGER
	psql_ -c "ALTER SYSTEM SET gdpr.ledger_directory = '$dir'" -c "SELECT pg_reload_conf()" >/dev/null
	sleep 0.5
}

# 1. erasures per second, the two variants taking turns within each round
declare -A all
for r in $(seq "$ROUNDS"); do
	for v in off on; do
		ledger "$v"
		psql_ -c "CHECKPOINT" >/dev/null
		out=$(as_postgres "$PGBIN/pgbench" -n -h 127.0.0.1 -p "$PORT" -c 2 -j 2 -T "$SECS" \
			-f "$WORK/erase_$v.sql" postgres 2>&1)
		all[$v]+="$(printf '%s\n' "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1) "
	done
done
median() { printf '%s\n' $1 | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
off=$(median "${all[off]}")
on=$(median "${all[on]}")

# 2. the gate, with at least 10 000 entries: restrictions top the ledger up if the erasures fell
# short
ledger on
lines=$(cat "$LEDGER"/*.ledger | wc -l)
if [ "$lines" -lt 10000 ]; then
	psql_ -c "DO \$\$ BEGIN FOR i IN 250001..250000 + 10000 - $lines LOOP
	              PERFORM gdpr_restrict(i, 'bench'); END LOOP; END \$\$" >/dev/null
	# one transaction: one entry per restriction, written at its commit
fi
lines=$(cat "$LEDGER"/*.ledger | wc -l)
valid=$(psql_ -At -c "SELECT gdpr.verify_ledger()->>'valid'")

# gate_time: seconds from the server being ready to the application's first statement going
# through (the gate refuses it with GD400 until the worker has checked the ledger)
gate_time() {
	as_postgres "$PGBIN/pg_ctl" -D "$WORK/data" -m fast -w stop >/dev/null
	as_postgres "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/data/server.log" -w start >/dev/null
	local t0 t1
	t0=$(date +%s.%N)
	until as_postgres "$PGBIN/psql" -X -q -h "$WORK" -p "$PORT" -U app -d postgres -c 'SELECT 1' >/dev/null 2>&1; do
		sleep 0.01
	done
	t1=$(date +%s.%N)
	awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}
declare -A gate
for r in $(seq "$ROUNDS"); do
	for v in off on; do
		ledger "$v"
		gate[$v]+="$(gate_time) "
	done
done
gate_off=$(median "${gate[off]}")
gate_on=$(median "${gate[on]}")

echo "ledger benchmark: $ROUNDS interleaved rounds of $SECS s, 2 clients, one gdpr_erase per transaction"
printf '%-44s %12s %12s %8s\n' "" "ledger off" "ledger on" "ratio"
awk -v a="$off" -v b="$on" 'BEGIN { printf "%-44s %12.1f %12.1f %8.2f\n", "erasures per second", a, b, b / a }'
awk -v a="$gate_off" -v b="$gate_on" -v n="$lines" 'BEGIN { printf "%-44s %11.3fs %11.3fs\n", "server ready -> application let in (" n " entries)", a, b }'
echo "ledger verifies: $valid"
