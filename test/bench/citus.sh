#!/usr/bin/env bash
# gdpr on a Citus cluster (a coordinator and two workers) against one server without Citus, all
# measured in this run, rounds interleaved:
# - capture: TPS of a single-row UPDATE through the coordinator (pgbench, 2 clients, loopback) on
#   a distributed table registered with gdpr and on an unaudited twin, and the same pair on the
#   one server; prints both gdpr/unaudited ratios and their difference (target: within 0.1);
# - export: mean latency of gdpr_export of a subject with about a thousand colocated rows (1
#   client), on the cluster and on the one server, before and after ten times more rows of other
#   subjects (targets: cluster at most 2x the one server; growth at most 1.2x);
# - erasure: mean latency of gdpr_erase of a subject with a thousand colocated rows, each in its
#   own transaction (two-phase commit on the cluster), with the same targets.
#   bash test/bench/citus.sh [seconds-per-run] [rounds] [exports-per-run] [erasures-per-run]
set -eu
cd "$(dirname "$0")/../.."
ROOT=$PWD
SECS=${1:-8}
ROUNDS=${2:-5}
EXPORTS=${3:-40}
ERASES=${4:-5}
. "$ROOT/test/lib.sh"
gdpr_install_deps
gdpr_build_install >/dev/null
gdpr_citus_install
[ -e "$("$PG_CONFIG" --pkglibdir)/citus.so" ] || { echo "Citus is not installed: no cluster to measure"; exit 1; }

WORK=$(mktemp -d /tmp/gdpr-bench.XXXXXX)
chown postgres "$WORK"
declare -A PORTS
for n in single coord w1 w2; do
	PORTS[$n]=$(gdpr_free_port)
	libs="citus,gdpr"
	[ $n = single ] && libs=gdpr
	GDPR_FSYNC=on gdpr_start_server "$WORK/$n" "${PORTS[$n]}" "$WORK" "shared_preload_libraries = '$libs'
shared_buffers = '256MB'
citus.node_conninfo = 'sslmode=disable'
max_prepared_transactions = 20"
	echo "host all all 127.0.0.1/32 trust" >>"$WORK/$n/pg_hba.conf"
	as_postgres "$PGBIN/pg_ctl" -D "$WORK/$n" reload >/dev/null
done
trap 'for n in single coord w1 w2; do gdpr_stop_server "$WORK/$n"; done; rm -rf "$WORK"' EXIT
on() {			# on <node> psql args...
	local n=$1
	shift
	as_postgres "$PGBIN/psql" -X -q -h "$WORK" -p "${PORTS[$n]}" -d postgres -v ON_ERROR_STOP=1 "$@"
}

for n in coord w1 w2; do on $n -c "CREATE EXTENSION citus" >/dev/null; done
on coord >/dev/null <<SQL
SELECT citus_set_coordinator_host('127.0.0.1', ${PORTS[coord]});
SELECT citus_add_node('127.0.0.1', ${PORTS[w1]});
SELECT citus_add_node('127.0.0.1', ${PORTS[w2]});
SQL

# The same schema on both: a subject table and two twins of a table of rows about subjects,
# distributed by the subject on the cluster (colocated, so every UPDATE is routed to one shard).
schema() {		# schema <distribute: yes|no>
	cat <<SQL
CREATE EXTENSION gdpr;
CREATE TABLE customer (id bigint PRIMARY KEY, email text);
CREATE TABLE t_none (customer_id bigint NOT NULL, id bigint NOT NULL, balance int, note text, PRIMARY KEY (customer_id, id));
CREATE TABLE t_gdpr (LIKE t_none INCLUDING ALL);
SQL
	[ "$1" = yes ] && cat <<SQL
SELECT create_distributed_table('customer', 'id');
SELECT create_distributed_table('t_none', 'customer_id', colocate_with => 'customer');
SELECT create_distributed_table('t_gdpr', 'customer_id', colocate_with => 'customer');
SQL
	cat <<SQL
SELECT gdpr.register_subject('customer', 'id');
SELECT gdpr.register_table('t_gdpr', subject_column => 'customer_id');
SELECT gdpr.classify_column('customer', 'email', 'contact');
INSERT INTO customer SELECT g, 'user' || g || '@example.com' FROM generate_series(1, 10000) g;
INSERT INTO t_none SELECT g % 10000 + 1, g, 0, 'row ' || g FROM generate_series(1, 100000) g;
INSERT INTO t_gdpr SELECT * FROM t_none;
VACUUM ANALYZE;
SQL
}
schema yes | on coord >/dev/null
schema no | on single >/dev/null

for t in t_none t_gdpr; do
	printf '\\set id random(1, 100000)\nUPDATE %s SET balance = balance + 1 WHERE customer_id = :id %% 10000 + 1 AND id = :id;\n' \
		$t >"$WORK/update_$t.sql"
done
chown postgres "$WORK"/*.sql

declare -A ALL
for r in $(seq "$ROUNDS"); do
	for n in coord single; do
		for t in t_none t_gdpr; do
			on $n -c CHECKPOINT >/dev/null
			out=$(as_postgres "$PGBIN/pgbench" -n -h 127.0.0.1 -p "${PORTS[$n]}" -c 2 -j 2 -T "$SECS" \
				-f "$WORK/update_$t.sql" postgres 2>&1)
			ALL[$n,$t]+="$(printf '%s\n' "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1) "
		done
	done
done
median() { printf '%s\n' $1 | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

events=$(for n in coord w1 w2; do on $n -At -c "SELECT count(*) FROM gdpr.audit_log WHERE table_name = 'public.t_gdpr'"; done |
	awk '{s += $1} END {print s}')
echo "capture on a Citus cluster: single-row UPDATE through the coordinator, pgbench, 2 clients, ${SECS}s x $ROUNDS rounds (median TPS)"
printf '%-28s %12s %12s %10s\n' setup unaudited gdpr gdpr/none
for n in coord single; do
	label="Citus, coordinator + 2 workers"
	[ $n = single ] && label="one server"
	awk -v l="$label" -v a="$(median "${ALL[$n,t_none]}")" -v g="$(median "${ALL[$n,t_gdpr]}")" \
		'BEGIN { printf "%-28s %12.0f %12.0f %10.2f\n", l, a, g, g / a }'
done
awk -v ca="$(median "${ALL[coord,t_none]}")" -v cg="$(median "${ALL[coord,t_gdpr]}")" \
	-v sa="$(median "${ALL[single,t_none]}")" -v sg="$(median "${ALL[single,t_gdpr]}")" \
	'BEGIN { d = cg / ca - sg / sa; printf "ratio on the cluster - ratio on one server: %+.2f (target: within 0.10: %s)\n", d, (d >= -0.1 && d <= 0.1) ? "met" : "not met" }'
echo "events in the workers' trails for t_gdpr: $events"
echo

# Export: subject 1 has 1,000 rows of orders (colocated with customer), 200 others have 100 each;
# then 1,800 more subjects with 100 each (ten times the other subjects' rows).
orders() {		# orders <distribute: yes|no> <first subject> <last subject>
	[ "$1" = yes ] && [ "$2" = 2 ] && cat <<SQL
CREATE TABLE orders (customer_id bigint NOT NULL, id bigint NOT NULL, amount numeric, note text, PRIMARY KEY (customer_id, id));
SELECT create_distributed_table('orders', 'customer_id', colocate_with => 'customer');
SELECT gdpr.register_table('orders', subject_column => 'customer_id');
INSERT INTO orders SELECT 1, g, g, 'order ' || g FROM generate_series(1, 1000) g;
SQL
	[ "$1" = no ] && [ "$2" = 2 ] && cat <<SQL
CREATE TABLE orders (customer_id bigint NOT NULL, id bigint NOT NULL, amount numeric, note text, PRIMARY KEY (customer_id, id));
SELECT gdpr.register_table('orders', subject_column => 'customer_id');
INSERT INTO orders SELECT 1, g, g, 'order ' || g FROM generate_series(1, 1000) g;
SQL
	cat <<SQL
INSERT INTO orders SELECT c, g, g, 'order ' || g FROM generate_series($2, $3) c, generate_series(1, 100) g;
VACUUM ANALYZE orders;
SQL
}
echo "SELECT gdpr_export(1);" >"$WORK/export.sql"
chown postgres "$WORK/export.sql"
declare -A LAT
measure_exports() {		# measure_exports <label>
	local r n out
	for r in $(seq "$ROUNDS"); do
		for n in coord single; do
			out=$(as_postgres "$PGBIN/pgbench" -n -h 127.0.0.1 -p "${PORTS[$n]}" -c 1 -t "$EXPORTS" \
				-f "$WORK/export.sql" postgres 2>&1)
			LAT[$1,$n]+="$(printf '%s\n' "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p') "
		done
	done
}
# Subjects to erase, a thousand orders each: a run erases ERASES of them, one per transaction.
declare -A ELAT
to_erase() {		# to_erase <first subject>
	echo "INSERT INTO orders SELECT c, g, g, 'order ' || g FROM generate_series($1, $1 + $ROUNDS * $ERASES - 1) c, generate_series(1, 1000) g;"
	echo "VACUUM ANALYZE orders;"
}
measure_erasures() {		# measure_erasures <label> <first subject>
	local r n first out
	for r in $(seq "$ROUNDS"); do
		first=$(($2 + (r - 1) * ERASES))
		for n in coord single; do
			out=$( { echo '\timing on'; for i in $(seq "$first" $((first + ERASES - 1))); do
				echo "SELECT gdpr_erase($i) ->> 'status';"; done; } | on $n -At)
			[ "$(printf '%s\n' "$out" | grep -c '^erased$')" = "$ERASES" ] || { echo "an erasure failed on $n: $out"; exit 1; }
			ELAT[$1,$n]+="$(printf '%s\n' "$out" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | awk '{s += $1} END {printf "%.1f", s / NR}') "
		done
	done
}
orders yes 2 201 | on coord >/dev/null
orders no 2 201 | on single >/dev/null
to_erase 5001 | on coord >/dev/null
to_erase 5001 | on single >/dev/null
rows=$(on coord -At -c "SELECT gdpr_export(1)->'total_rows'")
measure_exports small
measure_erasures small 5001
orders yes 202 2001 | on coord >/dev/null
orders no 202 2001 | on single >/dev/null
to_erase 6001 | on coord >/dev/null
to_erase 6001 | on single >/dev/null
measure_exports large
measure_erasures large 6001
# report <title> <name of the latencies' array>: both setups, both sizes, and the targets
report() {
	local -n lat=$2
	local n label
	echo "$1"
	printf '%-28s %14s %14s %8s\n' setup "201 subjects" "2001 subjects" growth
	for n in coord single; do
		label="Citus, coordinator + 2 workers"
		[ $n = single ] && label="one server"
		awk -v l="$label" -v a="$(median "${lat[small,$n]}")" -v b="$(median "${lat[large,$n]}")" \
			'BEGIN { printf "%-28s %11.1f ms %11.1f ms %8.2f\n", l, a, b, b / a }'
	done
	awk -v cs="$(median "${lat[small,coord]}")" -v cl="$(median "${lat[large,coord]}")" \
		-v ss="$(median "${lat[small,single]}")" -v sl="$(median "${lat[large,single]}")" \
		'BEGIN { printf "cluster / one server: %.2f and %.2f (target: at most 2: %s); growth on the cluster %.2f (target: at most 1.2: %s)\n",
		         cs / ss, cl / sl, (cs / ss <= 2 && cl / sl <= 2) ? "met" : "not met", cl / cs, (cl / cs <= 1.2) ? "met" : "not met" }'
}
report "export of one subject ($rows rows, 1 client, $EXPORTS exports x $ROUNDS rounds, median of mean latency)" LAT
echo
report "erasure of one subject (1,001 rows: 1,000 orders and the customer row; $ERASES erasures x $ROUNDS rounds, one transaction each, median of mean latency)" ELAT
