#!/usr/bin/env bash
# Export benchmark: gdpr_export of one subject with about a thousand rows across eleven registered
# tables (a two-hop path, a reverse path, a partitioned table), before and after the database
# grows tenfold with other subjects' rows, against one hand-written json_agg query returning the
# same rows.  Prints mean latencies (pgbench, 1 client, loopback) and the ratios.
#   bash test/bench/export.sh [transactions-per-run] [rounds]
set -eu
cd "$(dirname "$0")/../.."
ROOT=$PWD
TX=${1:-300}
ROUNDS=${2:-5}
. "$ROOT/test/lib.sh"
gdpr_bench_server "shared_buffers = '1GB'
max_wal_size = '4GB'"

psql_ -f "$ROOT/test/bench/schema.sql" >/dev/null
psql_ -c "SET gdpr.audit_events = 'none'" -c "CALL load_subjects(1, 200)" -c "VACUUM ANALYZE" >/dev/null

# The same rows, by hand: one query, one json_agg per table.
cat >"$WORK/hand.sql" <<'SQL'
SELECT jsonb_build_object(
  'public.customer', (SELECT jsonb_agg(to_jsonb(t) ORDER BY t.id) FROM customer t WHERE t.id = 1),
  'public.address', (SELECT jsonb_agg(to_jsonb(t) ORDER BY t.id) FROM address t JOIN customer c ON c.address_id = t.id WHERE c.id = 1),
  'public.orders', (SELECT jsonb_agg(to_jsonb(t) ORDER BY t.id) FROM orders t WHERE t.customer_id = 1),
  'public.order_item', (SELECT jsonb_agg(to_jsonb(t) ORDER BY t.order_id, t.line) FROM order_item t JOIN orders o ON o.id = t.order_id WHERE o.customer_id = 1),
  'public.payment', (SELECT jsonb_agg(to_jsonb(t) ORDER BY t.id) FROM payment t WHERE t.customer_id = 1),
  'public.review', (SELECT jsonb_agg(to_jsonb(t) ORDER BY t.id) FROM review t WHERE t.customer_id = 1),
  'public.wishlist', (SELECT jsonb_agg(to_jsonb(t) ORDER BY t.id) FROM wishlist t WHERE t.customer_id = 1),
  'public.session_log', (SELECT jsonb_agg(to_jsonb(t) ORDER BY t.id, t.at) FROM session_log t WHERE t.customer_id = 1),
  'public.support_ticket', (SELECT jsonb_agg(to_jsonb(t) ORDER BY t.id) FROM support_ticket t WHERE t.customer_id = 1),
  'public.ticket_message', (SELECT jsonb_agg(to_jsonb(t) ORDER BY t.id) FROM ticket_message t JOIN support_ticket s ON s.id = t.ticket_id WHERE s.customer_id = 1),
  'public.newsletter', (SELECT jsonb_agg(to_jsonb(t) ORDER BY t.id) FROM newsletter t WHERE t.customer_id = 1));
SQL
echo "SELECT gdpr_export(1);" >"$WORK/export.sql"
chown postgres "$WORK"/*.sql

rows=$(psql_ -At -c "SELECT gdpr_export(1)->'total_rows'")
psql_ -c "CREATE FUNCTION hand_export() RETURNS jsonb LANGUAGE sql AS \$\$ $(sed 's/;$//' "$WORK/hand.sql") \$\$"
same=$(psql_ -At -c "SELECT gdpr_export(1)->'data' = hand_export()")
unindexed=$(psql_ -At -c "SELECT count(*) FROM gdpr.export_plan() WHERE NOT indexed")

# latency <script>: median over the rounds of pgbench's mean latency, in ms
latency() {
	local r out all=()
	for r in $(seq "$ROUNDS"); do
		psql_ -c "SET session_replication_role = replica; DELETE FROM gdpr.audit_log WHERE event = 'EXPORT'" >/dev/null
		out=$(as_postgres "$PGBIN/pgbench" -n -h 127.0.0.1 -p "$PORT" -c 1 -t "$TX" -f "$1" postgres 2>&1)
		all+=("$(printf '%s\n' "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')")
	done
	printf '%s\n' "${all[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}

small_export=$(latency "$WORK/export.sql")
small_hand=$(latency "$WORK/hand.sql")
size_small=$(psql_ -At -c "SELECT pg_size_pretty(pg_database_size('postgres'))")
psql_ -c "SET gdpr.audit_events = 'none'" -c "CALL load_subjects(201, 2000)" -c "VACUUM ANALYZE" >/dev/null
size_large=$(psql_ -At -c "SELECT pg_size_pretty(pg_database_size('postgres'))")
large_export=$(latency "$WORK/export.sql")
large_hand=$(latency "$WORK/hand.sql")

echo "export benchmark: subject 1 has $rows rows in 11 tables; hand-written query returns the same rows: $same"
echo "lookups without an index (gdpr.export_plan): $unindexed"
printf '%-28s %14s %14s %8s\n' "" "gdpr_export" "json_agg" "ratio"
awk -v s="$size_small" -v e="$small_export" -v h="$small_hand" 'BEGIN { printf "%-28s %11.2f ms %11.2f ms %8.2f\n", "200 subjects (" s ")", e, h, e / h }'
awk -v s="$size_large" -v e="$large_export" -v h="$large_hand" 'BEGIN { printf "%-28s %11.2f ms %11.2f ms %8.2f\n", "2000 subjects (" s ")", e, h, e / h }'
awk -v a="$small_export" -v b="$large_export" 'BEGIN { printf "growth ratio (10x data), gdpr_export: %.2f\n", b / a }'
echo "targets: growth ratio <= 1.2, gdpr_export/json_agg <= 1.5  (pgbench, 1 client, $TX exports x $ROUNDS rounds, median)"
