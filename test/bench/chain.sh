#!/usr/bin/env bash
# Hash-chain benchmark.  (1) Verification: gdpr_verify_audit() over N sealed events against the
# cost of reading the same events and hashing each in one query (sha256 of the row's text); the
# target is verification at most 3 times that.  (2) Capture with sealing beside it: pgbench
# inserts into an audited table with and without a sealer working in a loop, rounds alternating;
# the capture cost must not change.  Prints medians and ratios from one run.
#   bash test/bench/chain.sh [events] [rounds] [seconds]
set -eu
cd "$(dirname "$0")/../.."
ROOT=$PWD
EVENTS=${1:-200000}
ROUNDS=${2:-5}
SECS=${3:-8}
. "$ROOT/test/lib.sh"
gdpr_bench_server "shared_buffers = '1GB'
max_wal_size = '4GB'
gdpr.worker_databases = 'template1'"

psql_ >/dev/null <<SQL
CREATE EXTENSION gdpr;
CREATE TABLE person (id bigint PRIMARY KEY, email text, name text, note text);
SELECT gdpr.register_subject('person', 'id');
SET gdpr.audit_values = 'full';
INSERT INTO person SELECT g, 'p' || g || '@example.com', 'Person ' || g, repeat('x', 40)
  FROM generate_series(1, $EVENTS) g;
CREATE TABLE capture (id bigserial PRIMARY KEY, person_id bigint REFERENCES person, note text);
SELECT gdpr.register_table('capture');
VACUUM ANALYZE;
-- Milliseconds one statement takes, from inside the server.
CREATE FUNCTION ms(statement text) RETURNS float8 LANGUAGE plpgsql AS \$\$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN
    EXECUTE statement;
    RETURN extract(epoch FROM clock_timestamp() - t0) * 1000;
END \$\$;
SQL

seal_ms=$(psql_ -At -c "SELECT ms('SELECT gdpr.seal_audit($EVENTS + 100)')")
events=$(psql_ -At -c "SELECT count(*) FROM gdpr.audit_seal")

# median of ROUNDS runs of each, taking turns
psql_ -At >"$WORK/times" <<SQL
SELECT ms('SELECT count(pg_catalog.sha256(pg_catalog.convert_to(a::text, ''UTF8''))) FROM gdpr.audit_log a'),
       ms('SELECT gdpr_verify_audit()')
  FROM generate_series(1, $ROUNDS);
SQL
base=$(cut -d'|' -f1 "$WORK/times" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
verify=$(cut -d'|' -f2 "$WORK/times" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
ok=$(psql_ -At -c "SELECT gdpr_verify_audit()->>'ok'")

# capture: pgbench INSERTs, alone and with a sealer looping beside them
printf '\\set p random(1, %s)\nINSERT INTO capture (person_id, note) VALUES (:p, '"'"'n'"'"');\n' "$EVENTS" >"$WORK/insert.sql"
printf 'SELECT gdpr.seal_audit(100000);\n\\sleep 100 ms\n' >"$WORK/seal.sql"
chown postgres "$WORK/insert.sql" "$WORK/seal.sql"
tps() {
	as_postgres "$PGBIN/pgbench" -n -h 127.0.0.1 -p "$PORT" -c 2 -j 2 -T "$SECS" -f "$WORK/insert.sql" postgres 2>&1 |
		sed -n 's/^tps = \([0-9.]*\) .*/\1/p'
}
alone=()
sealed=()
for r in $(seq "$ROUNDS"); do
	psql_ -c "CHECKPOINT" >/dev/null
	alone+=("$(tps)")
	psql_ -c "CHECKPOINT" >/dev/null
	# one connection, as the worker would be: seal what is there, rest 100 ms, again
	as_postgres "$PGBIN/pgbench" -n -h 127.0.0.1 -p "$PORT" -c 1 -T "$SECS" -f "$WORK/seal.sql" postgres \
		>"$WORK/sealer.log" 2>&1 &
	sealer=$!
	sealed+=("$(tps)")
	wait "$sealer"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
tps_alone=$(median "${alone[@]}")
tps_sealed=$(median "${sealed[@]}")
ok_after=$(psql_ -At -c "SELECT gdpr.seal_audit(10000000) >= 0 AND (gdpr_verify_audit()->>'ok')::boolean")

echo "chain benchmark: $events sealed events (audit_values = full)"
awk -v m="$seal_ms" -v n="$events" 'BEGIN { printf "sealing:                        %10.1f ms  (%.0f events/s)\n", m, n / (m / 1000) }'
awk -v b="$base" -v v="$verify" -v ok="$ok" 'BEGIN {
	printf "read + sha256 in one query:     %10.1f ms\n", b
	printf "gdpr_verify_audit():            %10.1f ms  (ok: %s)\n", v, ok
	printf "verification / read+hash:       %10.2f   (target <= 3)\n", v / b }'
awk -v a="$tps_alone" -v s="$tps_sealed" -v ok="$ok_after" 'BEGIN {
	printf "capture, INSERT tps alone:      %10.0f\n", a
	printf "capture, with a sealer beside:  %10.0f  (chain verifies after: %s)\n", s, ok
	printf "with sealer / alone:            %10.2f   (target: unchanged, ~1.0)\n", s / a }'
echo "(medians of $ROUNDS rounds; pgbench 2 clients, $SECS s, loopback, durable commits)"
