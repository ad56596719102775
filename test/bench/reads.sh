#!/usr/bin/env bash
# Read audit benchmark (pgbench, 2 clients, loopback, variants interleaved within each round):
#   point   a lookup by key, as pgbench -S does, of a subject table that is read-audited (on),
#           that is not (off), and that is not but whose application writes its own read-log row
#           in the same transaction (hand: the honest floor of recording reads by hand);
#   range   a statement returning 10,000 rows (10,000 subjects, the most a READ event lists).
# Then the writer's pace: the point-lookup load on the read-audited table, sampling every half
# second how far the trail is behind (now() - the newest READ event's statement time) and whether
# any read was not queued.
#   bash test/bench/reads.sh [seconds-per-run] [rounds]
set -eu
cd "$(dirname "$0")/../.."
ROOT=$PWD
SECS=${1:-8}
ROUNDS=${2:-5}
. "$ROOT/test/lib.sh"
gdpr_bench_server "shared_preload_libraries = 'gdpr'
shared_buffers = '512MB'
gdpr.worker_databases = 'postgres'"

psql_ >/dev/null <<'SQL'
CREATE EXTENSION gdpr;
CREATE TABLE c_on (id int PRIMARY KEY, name text, email text);
CREATE TABLE c_off (LIKE c_on INCLUDING ALL);
CREATE TABLE c_hand (LIKE c_on INCLUDING ALL);
INSERT INTO c_on SELECT g, 'User ' || g, 'user' || g || '@example.com' FROM generate_series(1, 100000) g;
INSERT INTO c_off SELECT * FROM c_on;
INSERT INTO c_hand SELECT * FROM c_on;
SELECT gdpr.register_subject('c_on', 'id', kind => 'on');
SELECT gdpr.register_subject('c_off', 'id', kind => 'off');
SELECT gdpr.register_subject('c_hand', 'id', kind => 'hand');
SELECT gdpr.set_read_audit('c_on');
-- what an application that logs its reads itself writes: who, when, which table, whose row
CREATE TABLE hand_log (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at timestamptz NOT NULL,
                       role text NOT NULL, tbl text NOT NULL, subjects text[]);
CREATE INDEX ON hand_log USING gin (subjects);
VACUUM ANALYZE;
SQL

for t in c_on c_off; do
	printf '\\set id random(1, 100000)\nSELECT name, email FROM %s WHERE id = :id;\n' $t >"$WORK/point_$t.sql"
	printf '\\set lo random(1, 90000)\nSELECT id, name FROM %s WHERE id BETWEEN :lo AND :lo + 9999;\n' $t >"$WORK/range_$t.sql"
done
cat >"$WORK/point_c_hand.sql" <<'SQL'
\set id random(1, 100000)
BEGIN;
SELECT name, email FROM c_hand WHERE id = :id;
INSERT INTO hand_log (at, role, tbl, subjects) VALUES (statement_timestamp(), current_user, 'c_hand', ARRAY[:id::text]);
COMMIT;
SQL
chown postgres "$WORK"/*.sql

declare -A R
gdpr_interleaved_tps point c_off c_on c_hand
gdpr_interleaved_tps range c_off c_on
queued=$(psql_ -At -c "SELECT queued FROM gdpr.event_queue")

# The writer's pace under the point-lookup load
psql_ -c "SELECT pg_sleep(2)" >/dev/null
before=$(psql_ -At -c "SELECT not_queued FROM gdpr.event_queue")
as_postgres "$PGBIN/pgbench" -n -h 127.0.0.1 -p "$PORT" -c 2 -j 2 -T "$SECS" -f "$WORK/point_c_on.sql" postgres \
	>"$WORK/pace.log" 2>&1 &
pgb=$!
lags=()
sleep 1
while kill -0 $pgb 2>/dev/null; do
	lags+=("$(psql_ -At -c "SELECT COALESCE(extract(epoch FROM clock_timestamp() - max(event_time)), 0) FROM gdpr.audit_log WHERE event = 'READ' AND event_time > now() - interval '1 minute'")")
	sleep 0.5
done
wait $pgb || true
pace_tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$WORK/pace.log" | head -1)
after=$(psql_ -At -c "SELECT not_queued FROM gdpr.event_queue")
drain_start=$(date +%s.%N)
until [ "$(psql_ -At -c "SELECT used_bytes = 0 FROM gdpr.event_queue")" = t ]; do sleep 0.1; done
drain=$(awk -v s="$drain_start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.2f", e - s }')
max_lag=$(printf '%s\n' "${lags[@]}" | sort -n | tail -1)
events=$(psql_ -At -c "SELECT count(*) FROM gdpr.audit_log WHERE event = 'READ'")

echo "read audit: pgbench, 2 clients, ${SECS}s x $ROUNDS rounds, interleaved (median TPS)"
printf '%-34s %10s %10s %10s %10s %10s\n' workload "off" "on" "hand" "on/off" "on/hand"
awk -v n="${R[point,c_off]}" -v g="${R[point,c_on]}" -v h="${R[point,c_hand]}" \
	'BEGIN { printf "%-34s %10.0f %10.0f %10.0f %10.2f %10.2f\n", "point lookup by key", n, g, h, g / n, g / h }'
awk -v n="${R[range,c_off]}" -v g="${R[range,c_on]}" \
	'BEGIN { printf "%-34s %10.1f %10.1f %10s %10.2f %10s\n", "10,000-row statement", n, g, "-", g / n, "-" }'
echo "events queued in all: $queued; READ events in the trail: $events"
echo "writer's pace at $pace_tps point lookups/s: trail at most ${max_lag}s behind (sampled every 0.5 s), not queued during the run: $((after - before)), queue empty ${drain}s after the load"
echo "targets: point on/off >= 0.8, 10,000-row on/off >= 0.7, behind <= 2 s with nothing not queued"
