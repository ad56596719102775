# Read auditing beyond one session: the writer puts reads in the trail within a second or two; a
# full queue sends reads to the server log and counts them; a clean restart with reads queued loses
# none; a library that is not preloaded refuses gdpr.set_read_audit; on a streaming standby reads
# and the rights functions work and go to the server log; after promotion the writer starts,
# capture and sealing go on and the chain verifies.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'gdpr'
gdpr.worker_naptime = 1
gdpr.queue_size = 64
});
$primary->start;
$primary->safe_psql('postgres', 'CREATE DATABASE shop');
$primary->safe_psql('shop', q{
    CREATE EXTENSION gdpr;
    CREATE TABLE customer (id int PRIMARY KEY, name text);
    CREATE TABLE orders (id int PRIMARY KEY, customer_id int REFERENCES customer, total int);
    SELECT gdpr.register_subject('customer', 'id');
    SELECT gdpr.register_table('orders');
    INSERT INTO customer SELECT g, 'c' || g FROM generate_series(1, 50) g;
    INSERT INTO orders SELECT g, 1 + g % 50, g FROM generate_series(1, 200) g;
    SELECT gdpr.set_read_audit('customer');
    SELECT gdpr.set_read_audit('orders');
});

sub reads_of
{
	my ($node, $subject) = @_;
	# a trail row holds a run of reads: each statement is an entry of detail.reads
	return $node->safe_psql('shop', qq{
		SELECT count(*) FROM gdpr.audit_log a, jsonb_array_elements(a.detail -> 'reads') st
		 WHERE a.event = 'READ' AND a.related_subject_ids @> ARRAY['$subject']
		   AND gdpr._read_names(st, array_position(a.related_subject_ids, '$subject'))});
}

sub log_count
{
	my ($node, $offset, $pattern) = @_;
	my $log = slurp_file($node->logfile, $offset);
	my @hits = $log =~ /$pattern/g;
	return scalar @hits;
}

# 1. A read reaches the trail through the writer the launcher starts.
my $start = time;
$primary->safe_psql('shop', 'SELECT name FROM customer WHERE id = 5');
ok($primary->poll_query_until('shop', q{SELECT count(*) = 1 FROM gdpr.audit_log WHERE event = 'READ' AND related_subject_ids @> ARRAY['5']}),
	'a read reaches the trail');
cmp_ok(time - $start, '<', 10, 'within seconds');
like($primary->safe_psql('postgres', q{SELECT string_agg(backend_type, ',') FROM pg_stat_activity WHERE backend_type LIKE 'gdpr%'}),
	qr/gdpr trail writer/, 'the writer shows in pg_stat_activity');

# 2. A session holds the sealers' lock, so the writer waits; 600 reads overflow the 64 kB queue.
#    Each read is in the trail or in the server log, and the view counts those not queued.
my $holder = $primary->background_psql('shop');
$holder->query_safe('BEGIN');
$holder->query_safe('SELECT FROM gdpr.audit_seal_state FOR SHARE');
my $offset = -s $primary->logfile;
$primary->safe_psql('shop', q{DO $$ BEGIN FOR i IN 1..600 LOOP PERFORM name FROM customer WHERE id = 7; END LOOP; END $$});
cmp_ok($primary->safe_psql('shop', 'SELECT not_queued FROM gdpr.event_queue'), '>', 0,
	'a full queue does not take more reads');
is($primary->safe_psql('shop', q{SELECT count(*) FROM customer WHERE id = 7}), '1', 'and reads never wait for it');
my $not_queued = $primary->safe_psql('shop', 'SELECT not_queued FROM gdpr.event_queue');
$holder->query_safe('COMMIT');
$holder->quit;
ok($primary->poll_query_until('shop', q{SELECT used_bytes = 0 FROM gdpr.event_queue}), 'once free, the writer empties the queue');
is(log_count($primary, $offset, qr/DETAIL:\s+gdpr: not queued/), $not_queued,
	'each read not queued is in the server log, as the view counts');
like(slurp_file($primary->logfile, $offset), qr/"event": "READ".*"ids": \["7"\]/, 'with its subject');
# the count above read subject 7 too
is(reads_of($primary, 7) + $not_queued, 601, 'no read is lost: each is in the trail or the log');

# 3. A clean restart with reads queued: the writer writes them before it leaves (or, where no
#    writer can, the launcher puts them in the server log); none is lost.
$holder = $primary->background_psql('shop');
$holder->query_safe('BEGIN');
$holder->query_safe('SELECT FROM gdpr.audit_seal_state FOR SHARE');
$offset = -s $primary->logfile;
$primary->safe_psql('shop', q{DO $$ BEGIN FOR i IN 1..20 LOOP PERFORM name FROM customer WHERE id = 9; END LOOP; END $$});
isnt($primary->safe_psql('shop', 'SELECT used_bytes FROM gdpr.event_queue'), '0', 'reads are queued at the restart');
$primary->stop('fast');
eval { $holder->quit; };
$primary->start;
is(reads_of($primary, 9) + log_count($primary, $offset, qr/"ids": \["9"\]/), 20, 'after the restart each read is in the trail or the log');

# 4. Without preloading there is no queue: set_read_audit says so.
my $plain = PostgreSQL::Test::Cluster->new('plain');
$plain->init;
$plain->start;
$plain->safe_psql('postgres', q{CREATE EXTENSION gdpr; CREATE TABLE customer (id int PRIMARY KEY);
    SELECT gdpr.register_subject('customer', 'id')});
my ($ret, $out, $err) = $plain->psql('postgres', q{SELECT gdpr.set_read_audit('customer')});
like($err, qr/read auditing needs gdpr in shared_preload_libraries/, 'without preloading set_read_audit refuses');
like($err, qr/HINT:.*shared_preload_libraries/, 'with a hint');
$plain->stop;

# 5. A streaming standby: reads work and go to the server log; so do the rights functions' events.
$primary->safe_psql('shop', q{UPDATE customer SET name = 'before standby' WHERE id = 11});
$primary->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
$standby->start;
$primary->wait_for_catchup($standby);
$offset = -s $standby->logfile;
is($standby->safe_psql('shop', 'SELECT name FROM customer WHERE id = 11'), 'before standby', 'the standby serves reads');
like($standby->safe_psql('shop', q{SELECT gdpr_export(11)->'data'->>'public.customer'}), qr/before standby/,
	'gdpr_export works on the standby');
is($standby->safe_psql('shop', q{SELECT count(*) FROM gdpr_export_rows(11)}), '5', 'gdpr_export_rows works on the standby');
is($standby->safe_psql('shop', q{SELECT gdpr_can_erase(11) ->> 'can_erase'}), '', 'gdpr_can_erase answers, unknown without its trial');
is($standby->safe_psql('shop', q{SELECT count(*) > 0 FROM gdpr.export_plan('11')}), 't', 'gdpr.export_plan works on the standby');
is($standby->safe_psql('shop', q{SELECT gdpr_verify_audit() ->> 'ok'}), 'true', 'gdpr_verify_audit works on the standby');
my $standby_log = slurp_file($standby->logfile, $offset);
like($standby_log, qr/"event": "READ".*"table": "public.customer".*"ids": \["11"\]/, 'the read is in the standby\'s server log');
like($standby_log, qr/"event": "EXPORT".*"subject": "11"/, 'and so is the export');
like($standby_log, qr/"event": "ERASE_CHECK".*"subject": "11"/, 'and the erasure check');
is($primary->safe_psql('shop', q{SELECT count(*) FROM gdpr.audit_log WHERE event IN ('EXPORT', 'ERASE_CHECK') AND subject_id = '11'}),
	'0', 'none of it is in the trail');

# 6. Promoted, the standby starts the launcher and the writer: reads reach the trail, changes are
#    captured, the trail is sealed and the chain verifies.
$primary->stop;
$standby->promote;
$standby->safe_psql('shop', 'SELECT name FROM customer WHERE id = 12');
ok($standby->poll_query_until('shop', q{SELECT count(*) = 1 FROM gdpr.audit_log WHERE event = 'READ' AND related_subject_ids @> ARRAY['12']}),
	'after promotion reads reach the trail');
$standby->safe_psql('shop', q{UPDATE customer SET name = 'after promotion' WHERE id = 12});
is($standby->safe_psql('shop', q{SELECT count(*) FROM gdpr.audit_log WHERE event = 'UPDATE' AND subject_id = '12'}), '1',
	'changes are captured');
ok($standby->poll_query_until('shop', q{SELECT count(*) = 0 FROM gdpr.audit_log a WHERE NOT EXISTS (SELECT 1 FROM gdpr.audit_seal s WHERE s.event_id = a.event_id)}),
	'the worker seals the trail');
is($standby->safe_psql('shop', q{SELECT gdpr_verify_audit() ->> 'ok'}), 'true', 'and the chain verifies');
$standby->stop;

done_testing();
