#!/usr/bin/env bash
# Erasure benchmark: gdpr_erase of subjects with 931 rows across eleven registered tables (a
# two-hop path, a reverse path, a partitioned table, a table kept by law), before and after the
# database grows tenfold with other subjects' rows, against hand-written DELETE/UPDATE statements
# doing the same work (audit trail scrub included).  Prints median times and the ratios.
#   bash test/bench/erase.sh [subjects-per-measure]
set -eu
cd "$(dirname "$0")/../.."
ROOT=$PWD
N=${1:-7}
. "$ROOT/test/lib.sh"
gdpr_bench_server "shared_buffers = '1GB'
max_wal_size = '4GB'"

psql_ -f "$ROOT/test/bench/schema.sql" >/dev/null
psql_ >/dev/null <<'SQL'
-- The same erasure by hand: children first, the kept table and the subject row anonymized, the
-- trail scrubbed.
-- The hand erasure rewrites the trail too, which its guard refuses: off for both sides (the guard
-- costs one C call per scrubbed event).
ALTER TABLE gdpr.audit_log DISABLE TRIGGER audit_guard;
CREATE FUNCTION hand_erase(who bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM customer WHERE id = who FOR UPDATE;
    DELETE FROM order_item i USING orders o WHERE i.order_id = o.id AND o.customer_id = who;
    DELETE FROM orders WHERE customer_id = who;
    DELETE FROM ticket_message m USING support_ticket s WHERE m.ticket_id = s.id AND s.customer_id = who;
    DELETE FROM support_ticket WHERE customer_id = who;
    DELETE FROM review WHERE customer_id = who;
    DELETE FROM wishlist WHERE customer_id = who;
    DELETE FROM session_log WHERE customer_id = who;
    DELETE FROM newsletter WHERE customer_id = who;
    UPDATE payment SET payer = NULL WHERE customer_id = who;
    UPDATE customer SET email = 'erased-' || md5(id::text) || '@invalid', name = NULL WHERE id = who;
    UPDATE address SET street = '[erased]' WHERE id = (SELECT address_id FROM customer WHERE id = who);
    UPDATE gdpr.audit_log SET old_values = NULL, new_values = NULL, detail = NULL, subject_id = md5(who::text)
     WHERE subject_kind = 'default' AND subject_id = who::text;
END $$;
-- Milliseconds one statement takes, from inside the server.
CREATE FUNCTION ms(statement text) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN
    EXECUTE statement;
    RETURN extract(epoch FROM clock_timestamp() - t0) * 1000;
END $$;
SQL

# measure <first subject>: median ms of gdpr_erase over N subjects and of hand_erase over the next N
measure() {
	local first=$1 g h
	g=$(psql_ -At -c "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms(format('SELECT gdpr_erase(%s)', s))) FROM generate_series($first, $first + $N - 1) s")
	h=$(psql_ -At -c "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms(format('SELECT hand_erase(%s)', s))) FROM generate_series($first + $N, $first + 2 * $N - 1) s")
	echo "$g $h"
}

# Subjects 1..200 make the small database; the subjects erased are loaded with auditing on, so
# each has its history in the trail to scrub.
psql_ -c "SET gdpr.audit_events = 'none'" -c "CALL load_subjects(1, 200)" -c "VACUUM ANALYZE" >/dev/null
psql_ -c "CALL load_subjects(100001, 100000 + 2 * $N)" -c "VACUUM ANALYZE" -c "CHECKPOINT" >/dev/null
check=$(psql_ -At -c "SELECT (gdpr_erase(100001, dry_run => true)->'tables'->'public.order_item'->>'deleted')")
read -r small_gdpr small_hand <<<"$(measure 100001)"
size_small=$(psql_ -At -c "SELECT pg_size_pretty(pg_database_size('postgres'))")

psql_ -c "SET gdpr.audit_events = 'none'" -c "CALL load_subjects(201, 2000)" >/dev/null
psql_ -c "CALL load_subjects(200001, 200000 + 2 * $N)" -c "VACUUM ANALYZE" -c "CHECKPOINT" >/dev/null
read -r large_gdpr large_hand <<<"$(measure 200001)"
size_large=$(psql_ -At -c "SELECT pg_size_pretty(pg_database_size('postgres'))")
left=$(psql_ -At -c "SELECT count(*) FROM orders WHERE customer_id >= 100001")

echo "erase benchmark: each subject has 931 rows in 11 tables (a dry run deletes $check order items); rows left after all erasures: $left"
printf '%-30s %14s %14s %8s\n' "" "gdpr_erase" "by hand" "ratio"
awk -v s="$size_small" -v e="$small_gdpr" -v h="$small_hand" 'BEGIN { printf "%-30s %11.2f ms %11.2f ms %8.2f\n", "200 subjects (" s ")", e, h, e / h }'
awk -v s="$size_large" -v e="$large_gdpr" -v h="$large_hand" 'BEGIN { printf "%-30s %11.2f ms %11.2f ms %8.2f\n", "2000 subjects (" s ")", e, h, e / h }'
awk -v a="$small_gdpr" -v b="$large_gdpr" 'BEGIN { printf "growth ratio (10x data), gdpr_erase: %.2f\n", b / a }'
echo "targets: growth ratio <= 1.2, gdpr_erase/by hand <= 2  (median of $N erasures each)"
