# The worker under attack: a database owner who shadows the operators and functions the worker's
# SQL uses through the database's search_path; a due erasure requested by a superuser; a table
# owner whose trigger holds the worker hostage.  None gains rights, and every other database is
# still served.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('security');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'gdpr'
gdpr.worker_naptime = 1
gdpr.worker_max_pass_time = 2
gdpr.worker_failure_backoff = 600
});
$node->start;

# --- A database owner without any other privilege: everything it can shadow, it shadows.
$node->safe_psql('postgres', q{
    CREATE ROLE dbo LOGIN;
    CREATE ROLE clerk LOGIN;
    CREATE DATABASE owned OWNER dbo;
});
$node->safe_psql('owned', q{
    CREATE EXTENSION gdpr;
    GRANT gdpr_admin TO clerk;
    CREATE TABLE customer (id int PRIMARY KEY, name text);
    CREATE TABLE login (id int PRIMARY KEY, customer_id int REFERENCES customer, at timestamptz);
    SELECT gdpr.register_subject('customer', 'id', on_erase => 'delete');
    SELECT gdpr.register_table('login');
    SELECT gdpr.set_retention('login', 'at', '30 days');
    INSERT INTO customer VALUES (1, 'ann'), (2, 'bob'), (3, 'cid');
    INSERT INTO login SELECT g, 1, now() - interval '100 days' FROM generate_series(1, 50) g;
    GRANT ALL ON customer, login TO clerk;
});
# an erasure a superuser requested, and one a gdpr_admin member requested, both due now
$node->safe_psql('owned', q{SELECT gdpr_request_erasure(3, interval '0')});
$node->safe_psql('owned', q{SET ROLE clerk; SELECT gdpr_request_erasure(2, interval '0')});

$node->safe_psql('owned', q{
    SET ROLE dbo;
    CREATE SCHEMA evil;
    -- aimed at the worker: the test's own sessions run these too, and must not be what escalates
    CREATE FUNCTION evil.grab() RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
        IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r
             WHERE r.rolname OPERATOR(pg_catalog.=) current_user::pg_catalog.name)
           AND (SELECT a.backend_type OPERATOR(pg_catalog.=) 'gdpr retention worker'::pg_catalog.text
                  FROM pg_catalog.pg_stat_activity a
                 WHERE a.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()) THEN
            EXECUTE 'ALTER ROLE dbo SUPERUSER';
        END IF;
        PERFORM pg_catalog.set_config('evil.ran', 'yes', false);
    END $$;
    CREATE FUNCTION evil.tsmi(timestamptz, interval) RETURNS timestamptz LANGUAGE plpgsql STABLE AS $$
    BEGIN PERFORM evil.grab(); RETURN pg_catalog.timestamptz_mi_interval($1, $2); END $$;
    CREATE OPERATOR evil.- (LEFTARG = timestamptz, RIGHTARG = interval, FUNCTION = evil.tsmi);
    CREATE FUNCTION evil.texteq(text, text) RETURNS boolean LANGUAGE plpgsql STABLE AS $$
    BEGIN PERFORM evil.grab(); RETURN pg_catalog.texteq($1, $2); END $$;
    CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.texteq);
    CREATE FUNCTION evil.tsle(timestamptz, timestamptz) RETURNS boolean LANGUAGE plpgsql STABLE AS $$
    BEGIN PERFORM evil.grab(); RETURN pg_catalog.timestamptz_le($1, $2); END $$;
    CREATE OPERATOR evil.<= (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = evil.tsle);
    CREATE FUNCTION evil.oideq(oid, oid) RETURNS boolean LANGUAGE plpgsql STABLE AS $$
    BEGIN PERFORM evil.grab(); RETURN pg_catalog.oideq($1, $2); END $$;
    CREATE OPERATOR evil.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = evil.oideq);
    CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE plpgsql STABLE AS $$
    BEGIN PERFORM evil.grab(); RETURN pg_catalog.now(); END $$;
    GRANT USAGE ON SCHEMA evil TO PUBLIC;
    ALTER DATABASE owned SET search_path = evil, pg_catalog, public;
});

ok($node->poll_query_until('owned', q{SELECT count(*) = 0 FROM login}),
	'the worker purges under a search_path the database owner chose');
ok($node->poll_query_until('owned',
		q{SELECT count(*) = 2 FROM gdpr.erasure_request WHERE status IN ('done', 'failed')}),
	'and handles both due erasures');
is($node->safe_psql('postgres', q{SELECT rolsuper FROM pg_roles WHERE rolname = 'dbo'}), 'f',
	'none of the database owner\'s operators or functions ran as the worker');
is($node->safe_psql('owned', q{SELECT status || ' by ' || requested_by FROM gdpr.erasure_request WHERE subject_id <> '3' AND requested_by = 'clerk'}),
	'done by clerk', 'an erasure requested by a gdpr_admin member runs, as that member');
like($node->safe_psql('owned', q{SELECT status || ': ' || error FROM gdpr.erasure_request WHERE requested_by <> 'clerk'}),
	qr/^failed: role "[^"]+", who requested the erasure, is a superuser, and gdpr.worker_erase_as_superuser is off/,
	'an erasure requested by a superuser is not carried out with superuser rights');
is($node->safe_psql('owned', q{SELECT count(*) FROM customer WHERE id = 3}), '1', 'and its subject is untouched');

# --- A table owner whose trigger sleeps whenever the worker deletes, and swallows the cancel.
$node->safe_psql('postgres', q{CREATE ROLE shopowner LOGIN; CREATE DATABASE hostage; CREATE DATABASE bystander});
$node->safe_psql('hostage', q{
    CREATE EXTENSION gdpr;
    CREATE TABLE customer (id int PRIMARY KEY);
    CREATE TABLE visit (id int PRIMARY KEY, customer_id int REFERENCES customer, at timestamptz);
    ALTER TABLE visit OWNER TO shopowner;
    SELECT gdpr.register_subject('customer', 'id');
    SELECT gdpr.register_table('visit');
    SELECT gdpr.set_retention('visit', 'at', '1 day');
    INSERT INTO customer VALUES (1);
    INSERT INTO visit VALUES (1, 1, now() - interval '2 days');
    CREATE SCHEMA app AUTHORIZATION shopowner;
    SET ROLE shopowner;
    CREATE FUNCTION app.stall() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF current_setting('application_name') = 'gdpr retention worker' THEN
            LOOP
                BEGIN
                    PERFORM pg_sleep(1);
                EXCEPTION WHEN query_canceled THEN
                    NULL;
                END;
            END LOOP;
        END IF;
        RETURN OLD;
    END $$;
    CREATE TRIGGER stall BEFORE DELETE ON visit FOR EACH ROW EXECUTE FUNCTION app.stall();
});
$node->safe_psql('bystander', q{
    CREATE EXTENSION gdpr;
    CREATE TABLE customer (id int PRIMARY KEY);
    CREATE TABLE visit (id int PRIMARY KEY, customer_id int REFERENCES customer, at timestamptz);
    SELECT gdpr.register_subject('customer', 'id');
    SELECT gdpr.register_table('visit');
    SELECT gdpr.set_retention('visit', 'at', '1 day');
    INSERT INTO customer VALUES (1);
});

ok($node->poll_query_until('postgres',
		q{SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'gdpr retention worker' AND datname = 'hostage' AND wait_event = 'PgSleep'}),
	'the hostage table holds the worker in the owner\'s trigger');
$node->safe_psql('bystander', q{INSERT INTO visit VALUES (1, 1, now() - interval '2 days')});
ok($node->poll_query_until('bystander', q{SELECT count(*) = 0 FROM visit}),
	'another database is still served: the launcher terminates the worker that overran');
ok($node->poll_query_until('hostage',
		q{SELECT count(*) >= 3 FROM gdpr.retention_history WHERE table_name = 'public.visit' AND by_worker AND NOT skipped
		    AND error IS NOT NULL}),
	'each run that never finished is recorded as a failure');
ok($node->poll_query_until('hostage',
		q{SELECT count(*) > 0 FROM gdpr.retention_history WHERE table_name = 'public.visit' AND skipped}),
	'after three failures in a row the table is skipped');
my $before = $node->safe_psql('hostage',
	q{SELECT count(*) FROM gdpr.retention_history WHERE table_name = 'public.visit' AND NOT skipped});
$node->safe_psql('bystander', q{INSERT INTO visit VALUES (2, 1, now() - interval '2 days')});
ok($node->poll_query_until('bystander', q{SELECT count(*) = 0 FROM visit}), 'the next passes go on');
is($node->safe_psql('hostage',
		q{SELECT count(*) FROM gdpr.retention_history WHERE table_name = 'public.visit' AND NOT skipped}),
	$before, 'and leave the table alone while it backs off');
is($node->safe_psql('hostage', q{SELECT count(*) FROM visit}), '1', 'its row is still there');

# A due erasure runs the same trigger: it is recorded, and backs off the same way.
$node->safe_psql('hostage', q{
    CREATE ROLE clerk2 LOGIN IN ROLE gdpr_admin;
    GRANT ALL ON customer, visit TO clerk2;
    GRANT USAGE ON SCHEMA app TO clerk2;
    SET ROLE clerk2;
    SELECT gdpr_request_erasure(1, interval '0');
});
ok($node->poll_query_until('hostage',
		q{SELECT count(*) > 0 FROM gdpr.retention_history WHERE table_name = 'due erasures requested by clerk2' AND skipped}),
	'a due erasure that never finishes is recorded, and backs off after three failures');
is($node->safe_psql('hostage', q{SELECT status FROM gdpr.erasure_request}), 'pending', 'the request stays pending');
$node->safe_psql('bystander', q{INSERT INTO visit VALUES (3, 1, now() - interval '2 days')});
ok($node->poll_query_until('bystander', q{SELECT count(*) = 0 FROM visit}), 'and the other database is still served');

$node->stop;
done_testing();
