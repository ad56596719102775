#!/usr/bin/env bash
# Retention benchmark.  The worker, with its default settings, purges a million expired rows of a
# registered table:
#   - with no workload, against one bulk DELETE of the same rows in a twin table (both audited,
#     so both do the same work);
#   - while a single-row UPDATE workload (pgbench, 2 clients) runs at 25 %, 50 % and 75 % of its
#     maximum rate, measured first: the p99 latency of the workload's transactions that ended
#     while the worker purged, against the p99 of the same workload at the same rate alone, and
#     the purge's throughput against the bulk DELETE.
# Then an anonymizing policy over a million expired rows: its first pass, and a second pass over
# the same (already anonymized) rows.
#   bash test/bench/retention.sh [rows] [seconds-per-quiet-run]
# NICE=10 lowers the worker's OS priority (renice) while it purges; DUTY=n and BATCH=n set
# gdpr.worker_duty_cycle and gdpr.worker_batch_size: to compare with the defaults.
set -eu
cd "$(dirname "$0")/../.."
ROOT=$PWD
ROWS=${1:-1000000}
SECS=${2:-15}
NICE=${NICE:-0}
DUTY=${DUTY:-}
BATCH=${BATCH:-}
. "$ROOT/test/lib.sh"
gdpr_bench_server "shared_buffers = '1GB'
max_wal_size = '8GB'
shared_preload_libraries = 'gdpr'
gdpr.worker_databases = 'nothing'
gdpr.worker_naptime = 1
${DUTY:+gdpr.worker_duty_cycle = $DUTY}
${BATCH:+gdpr.worker_batch_size = $BATCH}"

psql_ >/dev/null <<'SQL'
CREATE EXTENSION gdpr;
-- What the worker's first pass does seconds after CREATE EXTENSION where it runs: the trail's
-- monthly partitions exist before events are written.
SELECT gdpr.create_audit_partitions();
CREATE TABLE customer (id int PRIMARY KEY);
INSERT INTO customer SELECT generate_series(1, 1000);
SELECT gdpr.register_subject('customer', 'id');
CREATE TABLE event_log (id bigint PRIMARY KEY, customer_id int REFERENCES customer, at timestamptz NOT NULL, note text);
CREATE INDEX ON event_log (at);
CREATE TABLE bulk_log (LIKE event_log INCLUDING ALL);
ALTER TABLE bulk_log ADD FOREIGN KEY (customer_id) REFERENCES customer;
CREATE TABLE contact_log (LIKE event_log INCLUDING ALL);
ALTER TABLE contact_log ADD FOREIGN KEY (customer_id) REFERENCES customer;
SELECT gdpr.register_table(t) FROM unnest(ARRAY['event_log', 'bulk_log', 'contact_log']) t;
SELECT gdpr.classify_column('contact_log', 'note', 'contact', erase => 'redact');
SELECT gdpr.set_retention('event_log', 'at', '30 days');
CREATE PROCEDURE load_expired(tbl regclass, first bigint, n bigint) LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('INSERT INTO %s SELECT g, 1 + g %% 1000, now() - interval ''90 days'', ''expired'' FROM generate_series(%s, %s) g',
                   tbl, first, first + n - 1);
END $$;
CREATE FUNCTION ms(statement text) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN
    EXECUTE statement;
    RETURN extract(epoch FROM clock_timestamp() - t0) * 1000;
END $$;
SQL
psql_ -c "SET gdpr.audit_events = 'none'" -c "CALL load_expired('event_log', 1, $ROWS)" \
	-c "CALL load_expired('bulk_log', 1, $ROWS)" -c "CALL load_expired('contact_log', 1, $ROWS)" \
	-c "INSERT INTO event_log SELECT g, 1 + g % 1000, now(), 'fresh' FROM generate_series(100000001, 100100000) g" \
	-c "VACUUM ANALYZE" -c "CHECKPOINT" >/dev/null

# The bulk DELETE, in one statement; vacuumed after, so that autovacuum of the million deleted
# rows does not run into what follows.
bulk_ms=$(psql_ -At -c "SELECT ms('DELETE FROM bulk_log WHERE at < now() - interval ''30 days''')")
psql_ -c "VACUUM bulk_log" -c "CHECKPOINT" >/dev/null

worker_on() {
	sed -i "s/^gdpr.worker_databases = .*/gdpr.worker_databases = '$1'/" "$WORK/data/postgresql.conf"
	as_postgres "$PGBIN/pg_ctl" -D "$WORK/data" reload >/dev/null
}
expired() { psql_ -At -c "SELECT count(*) FROM event_log WHERE at < now() - interval '30 days'"; }
renice_worker() {
	local pid
	[ "$NICE" = 0 ] && return
	pid=$(psql_ -At -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'gdpr retention worker'" | head -1)
	[ -n "$pid" ] && renice -n "$NICE" -p "$pid" >/dev/null || true
}

# The workload: single-row updates of fresh rows.
printf '\\set id random(100000001, 100100000)\nUPDATE event_log SET note = note WHERE id = :id;\n' >"$WORK/update.sql"
chown postgres "$WORK/update.sql"
workload() {		# workload <log prefix> <seconds> [rate]
	(cd "$WORK" && as_postgres "$PGBIN/pgbench" -n -h 127.0.0.1 -p "$PORT" -c 2 -j 2 -T "$2" \
		${3:+-R "$3"} -l --log-prefix="$1" -f "$WORK/update.sql" postgres 2>&1) |
		sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1
}
# p99 <log prefix> [from to]: 99th percentile latency in ms from pgbench's per-transaction logs,
# of the transactions that ended between the two epoch times if given
p99() {
	cat "$WORK"/"$1".* | awk -v a="${2:-0}" -v b="${3:-1e12}" '{ t = $5 + $6 / 1e6 } t >= a && t <= b {print $3}' |
		sort -n | awk '{a[NR]=$1} END {printf "%.2f", a[int(NR*0.99)]/1000}'
}

# The worker alone: from the reload that gives it the database until the expired rows are gone.
start=$(date +%s.%N)
worker_on postgres
sleep 0.3; renice_worker
until [ "$(expired)" = 0 ]; do sleep 0.2; done
idle_s=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
worker_on nothing

max_tps=$(workload max "$SECS")
declare -A QUIET BUSY RATE
for load in 25 50 75; do
	rate=$(awk -v t="$max_tps" -v l=$load 'BEGIN { printf "%d", t * l / 100 }')
	psql_ -c "SET gdpr.audit_events = 'none'" -c "CALL load_expired('event_log', 1, $ROWS)" \
		-c "VACUUM ANALYZE event_log" -c "CHECKPOINT" >/dev/null
	workload "quiet$load" "$SECS" "$rate" >/dev/null
	QUIET[$load]=$(p99 "quiet$load")
	# the workload in runs of 5 s until the purge is over; the p99 of what ended meanwhile
	start=$(date +%s.%N)
	worker_on postgres
	run=0
	while :; do
		run=$((run + 1))
		workload "busy$load.$run" 5 "$rate" >/dev/null &
		w=$!
		[ $run = 1 ] && { sleep 0.3; renice_worker; }
		while kill -0 $w 2>/dev/null; do
			[ "$(expired)" = 0 ] && break
			sleep 0.2
		done
		[ "$(expired)" = 0 ] && break
		wait $w || true
	done
	end=$(date +%s.%N)
	wait || true
	worker_on nothing
	BUSY[$load]=$(cat "$WORK"/busy$load.*.* | awk -v a="$start" -v b="$end" '{ t = $5 + $6 / 1e6 } t >= a && t <= b {print $3}' |
		sort -n | awk '{a[NR]=$1} END {printf "%.2f", a[int(NR*0.99)]/1000}')
	RATE[$load]=$(awk -v n="$ROWS" -v a="$start" -v b="$end" 'BEGIN { printf "%.0f", n / (b - a) }')
done

# Anonymization: a first pass over a million expired rows, then a second over the same rows.
psql_ -c "SELECT gdpr.set_retention('contact_log', 'at', '30 days', action => 'anonymize')" >/dev/null
first_ms=$(psql_ -At -c "SELECT ms('SELECT * FROM gdpr_enforce_retention(false, 10000)')")
psql_ -c "VACUUM ANALYZE contact_log" >/dev/null
second_ms=$(psql_ -At -c "SELECT ms('SELECT * FROM gdpr_enforce_retention(false, 10000)')")

echo "retention benchmark: $ROWS expired rows (audited), pgbench 2 clients, worker duty cycle ${DUTY:-default}, batch size ${BATCH:-default}, reniced by $NICE"
awk -v n="$ROWS" -v b="$bulk_ms" -v w="$idle_s" 'BEGIN {
	printf "bulk DELETE:            %8.1f s  %10.0f rows/s\n", b / 1000, n / (b / 1000);
	printf "worker, no workload:    %8.1f s  %10.0f rows/s  ratio %.2f\n", w, n / w, (n / w) / (n / (b / 1000)) }'
echo "workload maximum: $max_tps TPS"
for load in 25 50 75; do
	awk -v l=$load -v q="${QUIET[$load]}" -v b="${BUSY[$load]}" -v r="${RATE[$load]}" -v n="$ROWS" -v bm="$bulk_ms" 'BEGIN {
		printf "load %2d%%: p99 %.2f ms alone, %.2f ms while purging: ratio %.2f; purge %8.0f rows/s, ratio %.2f\n",
			l, q, b, b / q, r, r / (n / (bm / 1000)) }'
done
awk -v f="$first_ms" -v s="$second_ms" 'BEGIN {
	printf "anonymizing policy: first pass %.0f ms, second pass %.0f ms: ratio %.3f\n", f, s, s / f }'
echo "targets: p99 ratio <= 1.5 at 50% load; purge ratio >= 0.25 at 50% load, >= 0.8 with no workload;"
echo "         second anonymizing pass <= 0.05 of the first"
