# Read auditing (needs preloading), everything else without preloading, and a map and trail that
# survive pg_dump and restore.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $schema = q{
    CREATE EXTENSION gdpr;
    CREATE TABLE users (id int PRIMARY KEY, email text, pw text);
    CREATE TABLE orders (id int PRIMARY KEY, user_id int REFERENCES users, total int);
    SELECT gdpr.register_subject('users', 'id');
    SELECT gdpr.register_table('orders');
    SELECT gdpr.classify_column('users', 'email', 'contact');
    SELECT gdpr.classify_column('users', 'pw', 'secret');
    INSERT INTO users VALUES (1, 'ann@example.com', 'pw1'), (2, 'bob@example.com', 'pw2');
    INSERT INTO orders VALUES (10, 1, 5), (11, 1, 7), (20, 2, 1);
};

# --- Preloaded: reads of registered tables go to the server log as JSON.
my $node = PostgreSQL::Test::Cluster->new('preloaded');
$node->init;
# A dump is restored into a database the worker does not serve yet (see the README's limits: a
# seal during the restore would collide with the restored seal rows).
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'gdpr'\ngdpr.audit_reads = on\ngdpr.worker_databases = 'postgres'\n");
$node->start;
$node->safe_psql('postgres', $schema);

my $offset = -s $node->logfile;
$node->safe_psql('postgres', q{SET gdpr.actor = 'carol@app'; SELECT * FROM orders WHERE user_id = 1});
my $log = slurp_file($node->logfile, $offset);
like($log, qr/\{"gdpr_event": "READ", "role": "[^"]+", "session_role": "[^"]+", "actor": "carol\@app", "database": "postgres", "tables": \["public.orders"\], "rows": 2, "query_id": -?\d+\}/,
	'a read of a registered table is one JSON line with role, actor, tables, rows and query id');

$offset = -s $node->logfile;
$node->safe_psql('postgres', q{BEGIN READ ONLY; SELECT count(*) FROM users u JOIN orders o ON o.user_id = u.id; COMMIT;});
$log = slurp_file($node->logfile, $offset);
like($log, qr/"tables": \["public.users", "public.orders"\]|"tables": \["public.orders", "public.users"\]/,
	'reads in a read-only transaction are recorded, every registered table named once');

$offset = -s $node->logfile;
$node->safe_psql('postgres', q{CREATE TABLE plain (x int); SELECT * FROM plain; SELECT 1;});
$log = slurp_file($node->logfile, $offset);
unlike($log, qr/gdpr_event/, 'reads of unregistered tables are not recorded');

$node->safe_psql('postgres', 'CREATE DATABASE other');
is($node->safe_psql('other', 'SELECT count(*) FROM pg_class WHERE relname = \'pg_class\''), '1',
	'a database without the extension works with the library preloaded');

$node->safe_psql('postgres', q{CREATE ROLE quiet SUPERUSER; ALTER ROLE quiet SET gdpr.audit_reads = off;});
$offset = -s $node->logfile;
$node->safe_psql('postgres', q{SET ROLE quiet; SET gdpr.audit_reads = off; SELECT * FROM users;});
$log = slurp_file($node->logfile, $offset);
unlike($log, qr/gdpr_event/, 'gdpr.audit_reads = off records nothing');

# Every statement that reads a registered table, not only SELECT, and reads an abort cut short.
my @reads = (
	[ 'INSERT ... SELECT', q{CREATE TABLE copy_of (id int, total int); INSERT INTO copy_of SELECT id, total FROM orders},
		qr/"tables": \["public.orders"\], "rows": 3,/ ],
	[ 'CREATE TABLE AS', q{CREATE TABLE snap AS SELECT * FROM users}, qr/"tables": \["public.users"\], "rows": 2,/ ],
	[ 'UPDATE ... FROM', q{UPDATE copy_of c SET total = o.total FROM orders o WHERE o.id = c.id},
		qr/"tables": \["public.orders"\], "rows": 3,/ ],
	[ 'COPY table TO', q{COPY users TO STDOUT}, qr/"tables": \["public.users"\], "rows": 2,/ ],
	[ 'COPY (SELECT) TO', q{COPY (SELECT * FROM orders) TO STDOUT}, qr/"tables": \["public.orders"\], "rows": 3,/ ],
	[ 'a cursor closed by an aborted transaction',
		q{BEGIN; DECLARE c CURSOR FOR SELECT * FROM users; FETCH 1 FROM c; SELECT 1/0;},
		qr/"tables": \["public.users"\], "rows": null, "aborted": true\}/ ],
	[ 'a statement that fails half-way',
		q{SELECT 1 / (id - 2) FROM users ORDER BY id},
		qr/"tables": \["public.users"\], "rows": null, "aborted": true\}/ ],
	[ 'rows locked FOR KEY SHARE', q{SELECT * FROM users FOR KEY SHARE}, qr/"tables": \["public.users"\], "rows": 2,/ ],
	[ 'a statement that only locks FOR KEY SHARE but filters on the data',
		q{SELECT 1 FROM orders o WHERE o.user_id = 1 AND o.total > 6 FOR KEY SHARE},
		qr/"tables": \["public.orders"\], "rows": 1,/ ],
	[ 'a locking statement that reads another table in its condition, and fails',
		q{SELECT 1 FROM orders WHERE (SELECT string_agg(email, ',') FROM users)::int = 1 FOR KEY SHARE},
		qr/"tables": \["public.orders", "public.users"\], "rows": null, "aborted": true\}/ ],
	[ 'a materialized view refreshed by a trigger that a cascade fired',
		q{CREATE TABLE p (id int PRIMARY KEY); CREATE TABLE c (id int REFERENCES p ON DELETE CASCADE);
		  CREATE MATERIALIZED VIEW mv2 AS SELECT * FROM users WITH NO DATA;
		  CREATE FUNCTION t() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN REFRESH MATERIALIZED VIEW mv2; RETURN OLD; END$$;
		  CREATE TRIGGER t BEFORE DELETE ON c FOR EACH ROW EXECUTE FUNCTION t();
		  INSERT INTO p VALUES (1); INSERT INTO c VALUES (1); DELETE FROM p;},
		qr/"tables": \["public.users"\], "rows": 2,/ ],
	[ 'a write that returns its rows, rolled back',
		q{BEGIN; UPDATE users SET email = email RETURNING *; ROLLBACK;}, qr/"tables": \["public.users"\], "rows": 2,/ ],
	[ 'a materialized view refreshed',
		q{CREATE MATERIALIZED VIEW mv AS SELECT * FROM users WITH NO DATA; REFRESH MATERIALIZED VIEW mv;},
		qr/"tables": \["public.users"\], "rows": 2,/ ],
	[ 'a read in a subtransaction rolled back',
		q{BEGIN; SAVEPOINT s; DECLARE c2 CURSOR FOR SELECT * FROM orders; FETCH 1 FROM c2; ROLLBACK TO s; COMMIT;},
		qr/"tables": \["public.orders"\], "rows": null, "aborted": true\}/ ],
);
for my $r (@reads)
{
	$offset = -s $node->logfile;
	$node->psql('postgres', $r->[1]);
	$log = slurp_file($node->logfile, $offset);
	like($log, $r->[2], "a read is recorded: $r->[0]");
}
$offset = -s $node->logfile;
$node->safe_psql('postgres', q{INSERT INTO orders VALUES (40, 2, 9); UPDATE orders SET total = 8 WHERE id = 40; DELETE FROM orders WHERE id = 40; EXPLAIN SELECT * FROM users});
$log = slurp_file($node->logfile, $offset);
unlike($log, qr/gdpr_event/, 'writes to a registered table, their foreign-key checks, and EXPLAIN without ANALYZE, are not reads');

# --- pg_dump and restore keep the map, the trail, its hash chain and the triggers.
# A DBA who limits who may record application events keeps that limit across the restore.
$node->safe_psql('postgres', q{
    REVOKE EXECUTE ON FUNCTION gdpr.log_event(text, text, boolean, jsonb, text, text) FROM PUBLIC;
    CREATE ROLE app_writer;
    GRANT EXECUTE ON FUNCTION gdpr.log_event(text, text, boolean, jsonb, text, text) TO app_writer;
});
$node->safe_psql('postgres', 'SELECT gdpr.seal_audit()');
my $digest = $node->safe_psql('postgres', 'SELECT gdpr_audit_digest()');
my $dump = $node->basedir . '/dump.sql';
$node->command_ok([ 'pg_dump', '-d', $node->connstr('postgres'), '-f', $dump ], 'pg_dump runs');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
$node->command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('restored'), '-f', $dump ],
	'the dump restores');
my $map_query = q{SELECT string_agg(format('%s|%s|%s|%s', table_name, subject_kind, path_name, path), ';' ORDER BY 1) FROM (SELECT table_name::text, subject_kind, path_name, path FROM gdpr.map) m};
is($node->safe_psql('restored', $map_query), $node->safe_psql('postgres', $map_query), 'the map is restored');
my $last_event = $node->safe_psql('postgres', 'SELECT max(event_id) FROM gdpr.audit_log');
my $trail_query = q{SELECT string_agg(format('%s|%s|%s|%s', event_id, event, subject_id, new_values), ';' ORDER BY event_id) FROM gdpr.audit_log WHERE event_id <= } . $last_event;
is($node->safe_psql('restored', $trail_query), $node->safe_psql('postgres', $trail_query), 'the trail is restored');
$node->safe_psql('restored', 'INSERT INTO orders VALUES (30, 2, 9)');
is($node->safe_psql('restored', q{SELECT subject_id FROM gdpr.audit_log WHERE event = 'INSERT' AND row_key = '{"id": 30}'}),
	'2', 'the restored database audits with the restored map');
is($node->safe_psql('restored', q{SELECT count(*) FROM gdpr.audit_log WHERE new_values::text LIKE '%pw1%'}),
	'0', 'secrets stay out of the restored trail');
is($node->safe_psql('restored', qq{SELECT (v->>'ok') || ' ' || (v->>'digest') FROM gdpr_verify_audit('$digest') v}),
	'true matched', 'the restored chain verifies, through the digest taken before the dump');
ok($node->safe_psql('restored', q{SELECT gdpr.seal_audit() > 0 AND (gdpr_verify_audit()->>'ok')::boolean}),
	'and goes on from where it was');
is($node->safe_psql('restored', q{
    SELECT has_function_privilege('public', 'gdpr.log_event(text, text, boolean, jsonb, text, text)', 'EXECUTE')
           || ' ' || has_function_privilege('app_writer', 'gdpr.log_event(text, text, boolean, jsonb, text, text)', 'EXECUTE')}),
   'false true', 'who may record application events survives the dump and restore');

# A data-only dump restored with --disable-triggers switches capture off: refused, unless a
# superuser allows it, and then recorded; re-enabling the triggers puts capture back as it was.
my $data = $node->basedir . '/orders.sql';
$node->command_ok([ 'pg_dump', '-a', '--disable-triggers', '-t', 'orders', '-d', $node->connstr('restored'),
	'-f', $data ], 'a data-only dump with --disable-triggers');
$node->safe_psql('restored', 'DELETE FROM orders');
$node->command_fails([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('restored'), '-f', $data ],
	'restoring it with the triggers disabled is refused');
{
	local $ENV{PGOPTIONS} = '-c gdpr.allow_capture_off=on';
	$node->command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('restored'), '-f', $data ],
		'a superuser who allows it restores it');
}
is($node->safe_psql('restored', q{SELECT count(*) > 0 FROM gdpr.audit_log WHERE event = 'AUDIT_OFF' AND table_name = 'public.orders'}),
   't', 'switching capture off is recorded');
is($node->safe_psql('restored', q{SELECT count(*) FROM gdpr._capture_gaps()}), '0',
   'and capture is back, firing ALWAYS, once the triggers are enabled again');
$node->stop;

# --- Without preloading, the map and the audit trail work all the same.
my $plain = PostgreSQL::Test::Cluster->new('not_preloaded');
$plain->init;
$plain->start;
$plain->safe_psql('postgres', $schema);
is($plain->safe_psql('postgres', q{SELECT count(*) FROM gdpr.audit_log WHERE event = 'INSERT' AND subject_id = '1'}),
	'3', 'audit capture works without shared_preload_libraries');
$plain->safe_psql('postgres', q{SET gdpr.actor = 'dave@app'; UPDATE orders SET total = 6 WHERE id = 10});
is($plain->safe_psql('postgres', q{SELECT actor FROM gdpr.audit_log WHERE event = 'UPDATE'}), 'dave@app',
	'settings work without shared_preload_libraries');
# A session's first statement loads the library while its row triggers fire, too late to gather
# them: its events are written one by one; the next statement's are gathered.  Both complete.
$plain->safe_psql('postgres', q{
    INSERT INTO orders SELECT g, 2, g FROM generate_series(100, 149) g;
    INSERT INTO orders SELECT g, 1, g FROM generate_series(150, 199) g;
});
is($plain->safe_psql('postgres', q{
    SELECT count(*), array_agg((row_key->>'id')::int ORDER BY event_id) = array(SELECT generate_series(100, 199)),
           count(*) FILTER (WHERE subject_id = CASE WHEN (row_key->>'id')::int < 150 THEN '2' ELSE '1' END)
      FROM gdpr.audit_log WHERE event = 'INSERT' AND table_name = 'public.orders' AND (row_key->>'id')::int >= 100}),
	'100|t|100', 'a bulk statement that loads the library and one after it: every row, in order');
$plain->stop;

done_testing();
