# The retention worker: purges expired rows in batches, leaves held and fresh rows, anonymizes
# where told, records its passes, follows a reloaded setting, comes back after it is killed,
# lets DROP DATABASE through, and carries out due erasure requests.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('worker');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'gdpr'
gdpr.worker_naptime = 1
gdpr.worker_batch_size = 100
});
$node->start;

$node->safe_psql('postgres', 'CREATE DATABASE shop');
$node->safe_psql('shop', q{
    CREATE EXTENSION gdpr;
    CREATE TABLE customer (id int PRIMARY KEY, name text);
    CREATE TABLE visit (id int PRIMARY KEY, customer_id int REFERENCES customer, at timestamptz, status text);
    CREATE TABLE login (id int PRIMARY KEY, customer_id int REFERENCES customer, at timestamptz, ip inet);
    SELECT gdpr.register_subject('customer', 'id', on_erase => 'delete');
    SELECT gdpr.register_table('visit');
    SELECT gdpr.register_table('login');
    SELECT gdpr.classify_column('login', 'ip', 'online_id', erase => 'mask');
    SET gdpr.audit_events = 'none';
    INSERT INTO customer SELECT g, 'c' || g FROM generate_series(1, 10) g;
    INSERT INTO visit SELECT g, 1 + g % 10, now() - interval '400 days', CASE WHEN g % 100 = 0 THEN 'disputed' ELSE 'ok' END
      FROM generate_series(1, 1000) g;
    INSERT INTO visit SELECT g, 1, now(), 'ok' FROM generate_series(1001, 1050) g;
    INSERT INTO login SELECT g, 1, now() - interval '100 days', ('10.1.2.' || (g % 250))::inet FROM generate_series(1, 300) g;
    SELECT gdpr.add_legal_hold('visit', 'status = ''disputed''', 'disputed visits');
    SELECT gdpr.set_retention('login', 'at', '30 days', action => 'anonymize');
    SELECT gdpr.set_retention('visit', 'at', '1 year');
});

ok($node->poll_query_until('shop', q{SELECT count(*) = 60 FROM visit}), 'expired rows are purged');
is($node->safe_psql('shop', q{SELECT count(*) FILTER (WHERE status = 'disputed') || '/' || count(*) FILTER (WHERE at > now() - interval '1 day') FROM visit}),
	'10/50', 'held and fresh rows stay');
ok($node->poll_query_until('shop', q{SELECT bool_and(host(ip) LIKE '%.0') FROM login}), 'expired rows are anonymized');
ok($node->safe_psql('shop', q{SELECT sum(deleted) = 990 AND count(*) >= 10 FROM gdpr.retention_history WHERE table_name = 'public.visit' AND by_worker}),
	'every batch of 100 rows went through, and the passes are in the history');
like($node->safe_psql('postgres', q{SELECT string_agg(backend_type, ',') FROM pg_stat_activity WHERE backend_type LIKE 'gdpr%'}),
	qr/gdpr retention launcher/, 'the launcher shows in pg_stat_activity');

# A reloaded setting: the worker stops serving this database, then serves it again.
$node->append_conf('postgresql.conf', "gdpr.worker_databases = 'postgres'\n");
$node->reload;
sleep 3;
$node->safe_psql('shop', q{SET gdpr.audit_events = 'none'; INSERT INTO visit SELECT g, 1, now() - interval '2 years', 'ok' FROM generate_series(2001, 2100) g});
sleep 4;
is($node->safe_psql('shop', q{SELECT count(*) FROM visit WHERE id > 2000}), '100', 'after a reload, a database left out is not served');
$node->append_conf('postgresql.conf', "gdpr.worker_databases = ''\n");
$node->reload;
ok($node->poll_query_until('shop', q{SELECT count(*) = 0 FROM visit WHERE id > 2000}), 'and after another, it is again');

# Killed, the launcher is started again by the postmaster.
my $pid = $node->safe_psql('postgres', q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'gdpr retention launcher'});
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
ok($node->poll_query_until('postgres', qq{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'gdpr retention launcher' AND pid <> $pid}),
	'the launcher comes back after it is killed');

# DROP DATABASE is never blocked by the worker.
for my $i (1 .. 5)
{
	$node->safe_psql('postgres', 'CREATE DATABASE dropme');
	$node->safe_psql('dropme', q{
        CREATE EXTENSION gdpr;
        CREATE TABLE p (id int PRIMARY KEY, at timestamptz);
        SELECT gdpr.register_subject('p', 'id');
        SELECT gdpr.set_retention('p', 'at', '1 day');
        SET gdpr.audit_events = 'none';
        INSERT INTO p SELECT g, now() - interval '2 days' FROM generate_series(1, 5000) g;
    });
	select(undef, undef, undef, 0.3 * $i);
	my ($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE dropme');
	is($ret, 0, "DROP DATABASE goes through ($i)") or diag($err);
}

# A due erasure request is carried out.
$node->safe_psql('shop', q{SELECT gdpr_request_erasure(7, '0 seconds')});
ok($node->poll_query_until('shop', q{SELECT count(*) = 0 FROM customer WHERE id = 7}), 'a due erasure request is carried out');
is($node->safe_psql('shop', q{SELECT status FROM gdpr.erasure_request}), 'done', 'and the request is done');

$node->stop;
done_testing();
