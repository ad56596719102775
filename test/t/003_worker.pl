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
# A database dropped while the launcher serves another, slow, one is not served afterwards: the
# launcher checks each database again before it starts its worker.
my $before_drops = -s $node->logfile;
$node->safe_psql('postgres', 'CREATE DATABASE slow');
$node->safe_psql('slow', q{
    CREATE EXTENSION gdpr;
    CREATE TABLE p (id int PRIMARY KEY, at timestamptz);
    SELECT gdpr.register_subject('p', 'id');
    SELECT gdpr.set_retention('p', 'at', '1 day');
    CREATE FUNCTION linger() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(3); RETURN OLD; END $$;
    CREATE TRIGGER linger BEFORE DELETE ON p FOR EACH ROW EXECUTE FUNCTION linger();
});
$node->safe_psql('postgres', 'CREATE DATABASE dropped_later');
sleep(2);			# a cycle that lists both begins
$node->safe_psql('slow', q{SET gdpr.audit_events = 'none'; INSERT INTO p VALUES (1, now() - interval '2 days')});
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_stat_activity
                                          WHERE backend_type = 'gdpr retention worker' AND datname = 'slow'}),
   'the launcher serves the slow database');
$node->safe_psql('postgres', 'DROP DATABASE dropped_later');
ok($node->poll_query_until('slow', q{SELECT count(*) = 0 FROM p}), 'the slow pass ends');
sleep(2);
unlike(slurp_file($node->logfile, $before_drops), qr/FATAL: +database \d+ does not exist/,
	'no worker is started for a dropped database');

# A due erasure request is carried out, with the rights of the role that asked for it.
$node->safe_psql('shop', q{
    CREATE ROLE dpo LOGIN IN ROLE gdpr_admin;
    GRANT SELECT, DELETE, UPDATE ON ALL TABLES IN SCHEMA public TO dpo;
    SET ROLE dpo;
    SELECT gdpr_request_erasure(7, '0 seconds');
});
ok($node->poll_query_until('shop', q{SELECT count(*) = 0 FROM customer WHERE id = 7}), 'a due erasure request is carried out');
is($node->safe_psql('shop', q{SELECT status || ' by ' || requested_by FROM gdpr.erasure_request}), 'done by dpo', 'and the request is done');
is($node->safe_psql('shop', q{SELECT string_agg(DISTINCT effective_role, ',') FROM gdpr.audit_log WHERE event = 'ERASE'}), 'dpo',
   'the erasure ran as the role that requested it, not as the worker');

# Maintenance run as the table's owner: a trigger sees the owner, not the bootstrap superuser.
# A policy left on a table dropped behind the event triggers' back, and a table whose batch
# fails, are recorded; the other tables are still served.
$node->safe_psql('shop', q{
    CREATE ROLE shop_owner;
    CREATE TABLE note (id int PRIMARY KEY, customer_id int REFERENCES customer, at timestamptz, by_role text);
    CREATE TABLE broken (id int PRIMARY KEY, customer_id int REFERENCES customer, at timestamptz);
    CREATE TABLE ghost (id int PRIMARY KEY, customer_id int REFERENCES customer, at timestamptz);
    ALTER TABLE note OWNER TO shop_owner;
    CREATE TABLE deleted_by (who name);
    GRANT INSERT ON deleted_by TO shop_owner;
    CREATE FUNCTION note_deleted() RETURNS trigger LANGUAGE plpgsql AS
      $$ BEGIN INSERT INTO public.deleted_by VALUES (current_user); RETURN OLD; END $$;
    CREATE TRIGGER note_deleted BEFORE DELETE ON note FOR EACH ROW EXECUTE FUNCTION note_deleted();
    CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE 'broken on purpose'; END $$;
    CREATE TRIGGER refuse BEFORE DELETE ON broken FOR EACH ROW EXECUTE FUNCTION refuse();
    SELECT gdpr.register_table(t) FROM unnest(ARRAY['note', 'broken', 'ghost']::regclass[]) t;
    SET gdpr.audit_events = 'none';
    INSERT INTO note SELECT g, 1, now() - interval '2 years' FROM generate_series(1, 5) g;
    INSERT INTO broken SELECT g, 1, now() - interval '2 years' FROM generate_series(1, 5) g;
    SELECT gdpr.set_retention(t, 'at', '1 year') FROM unnest(ARRAY['note', 'broken', 'ghost']::regclass[]) t;
    SET session_replication_role = replica;
    DROP TABLE ghost;
});
ok($node->poll_query_until('shop', q{SELECT count(*) = 0 FROM note}), 'the other tables are served');
is($node->safe_psql('shop', q{SELECT string_agg(DISTINCT who, ',') FROM deleted_by}), 'shop_owner',
   "a batch runs as the table's owner");
ok($node->poll_query_until('shop', q{SELECT count(*) > 0 FROM gdpr.retention_history WHERE table_name = 'public.broken' AND error LIKE '%broken on purpose%'}),
   "a failing table is recorded in the history");
is($node->safe_psql('shop', q{SELECT count(*) FROM broken}), '5', 'and changes nothing');
ok($node->safe_psql('postgres', q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'gdpr retention launcher'}),
   'a dangling policy does not bring the worker down');

# The worker seals the trail; expired events are purged, their prefix of the chain becomes a
# checkpoint, and verification goes on from it.
ok($node->poll_query_until('shop', q{SELECT (gdpr_verify_audit()->>'last_verified_seq')::int > 0}),
   'the worker seals the trail');
is($node->safe_psql('shop', q{SELECT gdpr_verify_audit()->>'ok'}), 'true', 'and the chain verifies');

# person_db(name, retention, sql): a new database with the extension installed under that
# gdpr.audit_retention and table person registered, then sql run in the same session
sub person_db
{
	my ($name, $retention, $sql) = @_;
	$node->safe_psql('postgres', "CREATE DATABASE $name");
	$node->safe_psql($name, qq{
    SET gdpr.audit_retention = '$retention';
    CREATE EXTENSION gdpr;
    CREATE TABLE person (id int PRIMARY KEY, name text);
    SELECT gdpr.register_subject('person', 'id');
    $sql
});
}

person_db('chain', '5 seconds', q{INSERT INTO person SELECT g, 'p' || g FROM generate_series(1, 50) g;});
ok($node->poll_query_until('chain', q{SELECT count(*) > 0 FROM gdpr.audit_checkpoint}),
   'a purged prefix of the chain becomes a checkpoint');
$node->safe_psql('chain', q{INSERT INTO person VALUES (51, 'kept')});
ok($node->poll_query_until('chain', q{SELECT count(*) = 1 FROM gdpr.audit_seal s JOIN gdpr.audit_log a USING (event_id) WHERE a.subject_id = '51'}),
   'new events are sealed after it');
# (the worker may purge and checkpoint again between two queries: one query compares them)
ok($node->poll_query_until('chain', q{SELECT (v->>'ok')::boolean AND (v->>'from_checkpoint')::bigint = (SELECT max(seq) FROM gdpr.audit_checkpoint)
                                        FROM gdpr_verify_audit() v}),
   'verification starts from the checkpoint');

# An erasure whose oldest redacted events are folded into a checkpoint still verifies: the
# checkpoint carries how many of that erasure's redactions it folded in.
person_db('folded', '4 seconds', q{
    INSERT INTO person VALUES (1, 'short-lived event');
    SELECT gdpr.seal_audit();
    SET gdpr.audit_retention = '1 year';
    UPDATE person SET name = 'long-lived event' WHERE id = 1;
    SELECT gdpr.seal_audit();
    SELECT gdpr_erase(1);
});
is($node->safe_psql('folded', q{SELECT detail->>'sealed_events_redacted' FROM gdpr.audit_log WHERE event = 'ERASE'}),
   '2', 'the erasure redacts both sealed events');
ok($node->poll_query_until('folded', q{SELECT count(*) > 0 FROM gdpr.audit_checkpoint WHERE redactions <> '{}'}),
   'the short-lived one is folded into a checkpoint');
is($node->safe_psql('folded', q{SELECT (v->>'ok') || ' ' || (v->>'redacted') FROM gdpr_verify_audit() v}),
   'true 1', 'the chain verifies, one redaction still in it');

# Redacted seal rows can outlive their erasure's event: they stay until everything sealed before
# them has expired.  Once expired themselves they verify without it.
person_db('outlived', '1 year', q{
    INSERT INTO person VALUES (2, 'long-lived');
    SELECT gdpr.seal_audit();
    SET gdpr.audit_retention = '3 seconds';
    INSERT INTO person VALUES (1, 'short-lived');
    SELECT gdpr.seal_audit();
    SELECT gdpr_erase(1);
    SELECT gdpr.seal_audit();
});
ok($node->poll_query_until('outlived', q{SELECT count(*) = 0 FROM gdpr.audit_log WHERE event = 'ERASE'}),
   "the erasure's event is purged");
is($node->safe_psql('outlived', q{SELECT count(*) FROM gdpr.audit_seal WHERE redacted_by IS NOT NULL}),
   '1', 'its redacted seal row is still in the chain');
is($node->safe_psql('outlived', q{SELECT gdpr_verify_audit()->>'ok'}), 'true', 'and the chain verifies');

$node->stop;
done_testing();
