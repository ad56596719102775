#!/usr/bin/env bash
# Bulk capture benchmark: what the trail costs per statement when a statement touches many rows.
# Four workloads, each on three twin tables measured in the same run, taking turns within every
# round:
#   none   the table unaudited;
#   gdpr   the table registered, its events written by the extension's triggers;
#   floor  the table unaudited, the statement writing its own event rows by hand into a table
#          with the trail's columns and indexes (WITH u AS (UPDATE ... RETURNING ...) INSERT INTO
#          log SELECT ... FROM u): the least the same record can cost.
# Workloads: a single-row UPDATE of the subject table (pgbench, 2 clients), a 1000-row UPDATE of
# it in one statement, a 1000-row INSERT in one statement into a table two foreign keys away from
# its subject (order_item -> orders -> customer), and COPY of a million rows into a table with a
# subject column.  Prints median TPS (rows per second for COPY) and the ratios.
#   bash test/bench/bulk.sh [seconds-per-run] [rounds] [copy-rows]
set -eu
cd "$(dirname "$0")/../.."
ROOT=$PWD
SECS=${1:-6}
ROUNDS=${2:-3}
COPY_ROWS=${3:-1000000}
. "$ROOT/test/lib.sh"
# Preloaded, as the retention worker needs it (and as statements gather their events from the
# first one in a session); the worker serves no database here, so that only capture is measured.
gdpr_bench_server "shared_buffers = '1GB'
max_wal_size = '8GB'
shared_preload_libraries = 'gdpr'
gdpr.worker_databases = 'nothing'"

psql_ >/dev/null <<SQL
CREATE EXTENSION gdpr;
-- the trail's monthly partitions, as the worker makes them: events land there, not in the default
SELECT gdpr.create_audit_partitions();
-- the hand-written log: the trail's columns, keys and indexes
CREATE TABLE floor_log (LIKE gdpr.audit_log INCLUDING DEFAULTS);
ALTER TABLE floor_log ALTER COLUMN event_id ADD GENERATED ALWAYS AS IDENTITY;
SELECT gdpr._index_audit_partition('floor_log');

CREATE FUNCTION make_twins(v text) RETURNS void LANGUAGE plpgsql AS \$\$
BEGIN
    EXECUTE format('CREATE TABLE account_%s (id bigint PRIMARY KEY, email text, name text, balance int)', v);
    EXECUTE format('INSERT INTO account_%s SELECT g, ''user'' || g || ''@example.com'', ''User '' || g, 0 FROM generate_series(1, 100000) g', v);
    EXECUTE format('CREATE TABLE orders_%s (id bigint PRIMARY KEY, account_id bigint NOT NULL REFERENCES account_%s, placed date)', v, v);
    EXECUTE format('INSERT INTO orders_%s SELECT g, 1 + g %% 100000, date ''2025-01-01'' FROM generate_series(1, 100000) g', v);
    EXECUTE format('CREATE INDEX ON orders_%s (account_id)', v);
    EXECUTE format('CREATE TABLE order_item_%s (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, order_id bigint NOT NULL REFERENCES orders_%s, line int, product text)', v, v);
    EXECUTE format('CREATE INDEX ON order_item_%s (order_id)', v);
    EXECUTE format('CREATE TABLE visit_%s (id bigint PRIMARY KEY, account_id bigint, at timestamptz, page text)', v);
END \$\$;
SELECT make_twins(v) FROM unnest(ARRAY['none', 'gdpr', 'floor']) v;

SELECT gdpr.register_subject('account_gdpr', 'id');
SELECT gdpr.classify_column('account_gdpr', 'email', 'contact');
SELECT gdpr.register_table('orders_gdpr');
SELECT gdpr.register_table('order_item_gdpr');
SELECT gdpr.register_table('visit_gdpr', subject_column => 'account_id');
VACUUM ANALYZE;
SQL

# The hand-written floor: each statement writes its own event rows, with what the trail holds
# (context, subject, key, changed columns, old and new values of what changed).
CTX="statement_timestamp(), txid_current(), session_user, current_user, inet_client_addr(), current_setting('application_name'), statement_timestamp() + interval '7 years'"
COLS="event_time, txid, session_role, effective_role, client_addr, application_name, retention_until, event, table_name, subject_kind, subject_id, row_key, changed_columns, old_values, new_values"
for v in none gdpr; do
	printf '\\set id random(1, 100000)\nUPDATE account_%s SET balance = balance + 1 WHERE id = :id;\n' $v >"$WORK/one_$v.sql"
	printf '\\set s random(0, 98) * 1000 + 1\nUPDATE account_%s SET balance = balance + 1 WHERE id BETWEEN :s AND :s + 999;\n' $v >"$WORK/many_$v.sql"
	printf '\\set o random(1, 100000)\nINSERT INTO order_item_%s (order_id, line, product) SELECT 1 + (:o + g) %% 100000, g, '"'"'product'"'"' FROM generate_series(1, 1000) g;\n' $v >"$WORK/twohop_$v.sql"
done
UPD="UPDATE account_floor SET balance = balance + 1"
RET="RETURNING id, balance) INSERT INTO floor_log ($COLS) SELECT $CTX, 'UPDATE', 'public.account_floor', 'default', u.id::text, jsonb_build_object('id', u.id), ARRAY['balance'], jsonb_build_object('balance', u.balance - 1), jsonb_build_object('balance', u.balance) FROM u"
printf '\\set id random(1, 100000)\nWITH u AS (%s WHERE id = :id %s;\n' "$UPD" "$RET" >"$WORK/one_floor.sql"
printf '\\set s random(0, 98) * 1000 + 1\nWITH u AS (%s WHERE id BETWEEN :s AND :s + 999 %s;\n' "$UPD" "$RET" >"$WORK/many_floor.sql"
printf '\\set o random(1, 100000)\nWITH i AS (INSERT INTO order_item_floor (order_id, line, product) SELECT 1 + (:o + g) %% 100000, g, '"'"'product'"'"' FROM generate_series(1, 1000) g RETURNING *) INSERT INTO floor_log (%s) SELECT %s, '"'"'INSERT'"'"', '"'"'public.order_item_floor'"'"', '"'"'default'"'"', o.account_id::text, jsonb_build_object('"'"'id'"'"', i.id), NULL, NULL, to_jsonb(i) FROM i JOIN orders_floor o ON o.id = i.order_id;\n' "$COLS" "$CTX" >"$WORK/twohop_floor.sql"
chown postgres "$WORK"/*.sql

truncate_logs() {
	psql_ -c "SET session_replication_role = replica; TRUNCATE gdpr.audit_log, floor_log, order_item_none, order_item_gdpr, order_item_floor, visit_none, visit_gdpr, visit_floor" -c "CHECKPOINT" >/dev/null
}

run_workload() {		# run_workload <name>: R[<name>,none|gdpr|floor], from empty logs
	truncate_logs
	gdpr_interleaved_tps "$1" none gdpr floor
}

# COPY of COPY_ROWS rows from a file; the floor copies, then writes the event rows of what it
# copied with one INSERT ... SELECT in the same transaction.  R[copy,<variant>] = rows per second.
run_copy() {
	local r v ms
	declare -A all
	psql_ -c "COPY (SELECT g, 1 + g % 100000, timestamptz '2025-01-01' + g * interval '1 second', '/page/' || g FROM generate_series(1, $COPY_ROWS) g) TO '$WORK/visits.copy'"
	for r in $(seq "$ROUNDS"); do
		for v in none gdpr floor; do
			truncate_logs
			if [ $v = floor ]; then
				ms=$(psql_ -At -c "\\timing on" -c "BEGIN" -c "COPY visit_floor FROM '$WORK/visits.copy'" \
					-c "INSERT INTO floor_log ($COLS) SELECT $CTX, 'INSERT', 'public.visit_floor', 'default', v.account_id::text, NULL, NULL, NULL, to_jsonb(v) FROM visit_floor v" \
					-c "COMMIT" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | awk '{s += $1} END {print s}')
			else
				ms=$(psql_ -At -c "\\timing on" -c "COPY visit_$v FROM '$WORK/visits.copy'" |
					sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p')
			fi
			all[$v]+="$(awk -v n="$COPY_ROWS" -v ms="$ms" 'BEGIN {printf "%.0f", n / ms * 1000}') "
		done
	done
	for v in none gdpr floor; do
		R[copy,$v]=$(printf '%s\n' ${all[$v]} | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
	done
}

declare -A R
report() {
	printf '%-22s %12s %12s %12s %10s %12s\n' workload none gdpr floor gdpr/none gdpr/floor
	for w in "$@"; do
		awk -v w="$w" -v n="${R[$w,none]}" -v g="${R[$w,gdpr]}" -v f="${R[$w,floor]}" \
			'BEGIN { printf "%-22s %12.0f %12.0f %12.0f %10.2f %12.2f\n", w, n, g, f, g / n, g / f }'
	done
}

psql_ -c "ALTER SYSTEM SET synchronous_commit = on" -c "SELECT pg_reload_conf()" >/dev/null
run_workload one
R[one-durable,none]=${R[one,none]}; R[one-durable,gdpr]=${R[one,gdpr]}; R[one-durable,floor]=${R[one,floor]}
psql_ -c "ALTER SYSTEM SET synchronous_commit = off" -c "SELECT pg_reload_conf()" >/dev/null
run_workload one
run_workload many
run_workload twohop
run_copy
echo "bulk capture: pgbench, 2 clients, ${SECS}s x $ROUNDS rounds (median TPS; COPY: rows/s, $COPY_ROWS rows)"
echo "synchronous_commit = on:"
report one-durable
echo "synchronous_commit = off:"
report one many twohop copy
echo "targets: many gdpr/floor >= 1.5; twohop gdpr/none >= 0.6; copy gdpr/none >= 0.5;"
echo "         one gdpr/floor >= 1.0 (synchronous_commit off), one-durable gdpr/none >= 0.9"
