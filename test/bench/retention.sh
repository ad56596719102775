#!/usr/bin/env bash
# Retention benchmark: the worker purging a million expired rows of a registered table, against
# one bulk DELETE of the same rows in a twin table (both audited, so both do the same work), and
# the p99 latency of a concurrent pgbench workload on the same table with the worker purging
# against the same workload without it.  The p99 compared is that of the transactions that ended
# while the worker purged: over the whole run, a fast purge would hide in the quiet after it.
#   bash test/bench/retention.sh [rows] [seconds]
set -eu
cd "$(dirname "$0")/../.."
ROOT=$PWD
ROWS=${1:-1000000}
SECS=${2:-20}
BATCH=${BATCH:-1000}
DELAY=${DELAY:-0}
. "$ROOT/test/lib.sh"
gdpr_bench_server "shared_buffers = '1GB'
max_wal_size = '8GB'
shared_preload_libraries = 'gdpr'
gdpr.worker_databases = 'nothing'
gdpr.worker_naptime = 1
gdpr.worker_batch_size = $BATCH
gdpr.worker_batch_delay = $DELAY"

psql_ >/dev/null <<'SQL'
CREATE EXTENSION gdpr;
-- What the worker's first pass does seconds after CREATE EXTENSION where it runs: the trail's
-- monthly partitions exist before events are written, instead of the bulk DELETE's million
-- events landing in the default partition.
SELECT gdpr.create_audit_partitions();
CREATE TABLE customer (id int PRIMARY KEY);
INSERT INTO customer SELECT generate_series(1, 1000);
SELECT gdpr.register_subject('customer', 'id');
CREATE TABLE event_log (id bigint PRIMARY KEY, customer_id int REFERENCES customer, at timestamptz NOT NULL, note text);
CREATE INDEX ON event_log (at);
CREATE TABLE bulk_log (LIKE event_log INCLUDING ALL);
ALTER TABLE bulk_log ADD FOREIGN KEY (customer_id) REFERENCES customer;
SELECT gdpr.register_table('event_log');
SELECT gdpr.register_table('bulk_log');
SELECT gdpr.set_retention('event_log', 'at', '30 days');
CREATE PROCEDURE load_expired(first bigint, n bigint) LANGUAGE sql AS $$
    INSERT INTO event_log SELECT g, 1 + g % 1000, now() - interval '90 days', 'expired' FROM generate_series(first, first + n - 1) g;
$$;
SQL
psql_ -c "SET gdpr.audit_events = 'none'" -c "CALL load_expired(1, $ROWS)" \
	-c "INSERT INTO bulk_log SELECT * FROM event_log" \
	-c "INSERT INTO event_log SELECT g, 1 + g % 1000, now(), 'fresh' FROM generate_series(100000001, 100100000) g" \
	-c "VACUUM ANALYZE" -c "CHECKPOINT" >/dev/null

# The bulk DELETE, in one statement.
bulk_ms=$(psql_ -At -c "SELECT extract(epoch FROM clock_timestamp() - now()) FROM (SELECT 1) x" >/dev/null;
	psql_ -At -c "CREATE FUNCTION ms(statement text) RETURNS float8 LANGUAGE plpgsql AS \$\$
		DECLARE t0 timestamptz := clock_timestamp(); BEGIN EXECUTE statement;
		RETURN extract(epoch FROM clock_timestamp() - t0) * 1000; END \$\$" >/dev/null;
	psql_ -At -c "SELECT ms('DELETE FROM bulk_log WHERE at < now() - interval ''30 days''')")
# Vacuumed now, so that autovacuum of the million deleted rows does not run into the baseline.
psql_ -c "VACUUM bulk_log" -c "CHECKPOINT" >/dev/null

# The workload: single-row updates of fresh rows.
printf '\\set id random(100000001, 100100000)\nUPDATE event_log SET note = note WHERE id = :id;\n' >"$WORK/update.sql"
chown postgres "$WORK/update.sql"
# p99 <log prefix> [from to]: 99th percentile latency in ms from pgbench's per-transaction logs,
# of the transactions that ended between the two epoch times if given
p99() {
	cat "$WORK"/"$1".* | awk -v a="${2:-0}" -v b="${3:-1e12}" '{ t = $5 + $6 / 1e6 } t >= a && t <= b {print $3}' |
		sort -n | awk '{a[NR]=$1} END {printf "%.2f", a[int(NR*0.99)]/1000}'
}
maxlat() {			# maxlat <log prefix>: the slowest transaction, in ms
	cat "$WORK"/"$1".* | awk '$3 > m {m = $3} END {printf "%.1f", m/1000}'
}
(cd "$WORK" && as_postgres "$PGBIN/pgbench" -n -h 127.0.0.1 -p "$PORT" -c 2 -j 2 -T "$SECS" -l --log-prefix=quiet \
	-f "$WORK/update.sql" postgres >/dev/null 2>&1)
quiet=$(p99 quiet)
quiet_max=$(maxlat quiet)

# The worker, from the reload that gives it the database until the expired rows are gone, with
# the same workload running.
start=$(date +%s.%N)
sed -i "s/^gdpr.worker_databases = 'nothing'/gdpr.worker_databases = 'postgres'/" "$WORK/data/postgresql.conf"
as_postgres "$PGBIN/pg_ctl" -D "$WORK/data" reload >/dev/null
(cd "$WORK" && as_postgres "$PGBIN/pgbench" -n -h 127.0.0.1 -p "$PORT" -c 2 -j 2 -T "$SECS" -l --log-prefix=busy \
	-f "$WORK/update.sql" postgres >/dev/null 2>&1) &
bench=$!
until [ "$(psql_ -At -c "SELECT count(*) FROM event_log WHERE at < now() - interval '30 days'")" = 0 ]; do sleep 0.5; done
end=$(date +%s.%N)
worker_s=$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }')
wait $bench
busy=$(p99 busy "$start" "$end")
busy_all=$(p99 busy)
busy_max=$(maxlat busy)
left=$(psql_ -At -c "SELECT count(*) FROM event_log")

echo "retention benchmark: $ROWS expired rows (audited), batches of $BATCH, ${DELAY} ms between batches, pgbench 2 clients x ${SECS}s"
awk -v n="$ROWS" -v b="$bulk_ms" -v w="$worker_s" 'BEGIN {
	printf "bulk DELETE:      %8.1f s  %10.0f rows/s\n", b / 1000, n / (b / 1000);
	printf "worker:           %8.1f s  %10.0f rows/s (with the workload running)\n", w, n / w;
	printf "throughput ratio (worker / bulk DELETE): %.2f\n", (n / w) / (n / (b / 1000)) }'
awk -v q="$quiet" -v b="$busy" -v w="$busy_all" -v s="$SECS" 'BEGIN {
	printf "workload p99: %.2f ms alone, %.2f ms while the worker purges; ratio %.2f\n", q, b, b / q;
	printf "  (over the whole %d s run, the purge and what follows it: %.2f ms, ratio %.2f)\n", s, w, w / q }'
echo "slowest workload transaction: $quiet_max ms alone, $busy_max ms with the worker purging"
echo "fresh rows left: $left (100000 expected)"
echo "targets: throughput ratio >= 0.5, p99 ratio <= 1.3"
