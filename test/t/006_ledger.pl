# The erasure ledger: an erasure outlives the backups and dumps taken before it.  Subject A is
# erased after a base backup, a plain pg_dump and a point in time that WAL archiving can recover
# to; B is not.  Every copy restored from them with the ledger (the base backup started again,
# the base backup recovered to before the erasure, the dump restored on another server) holds
# nothing of A once the erasure is replayed, B byte for byte as before, a trail and a ledger that
# verify.  The application never sees A: until the replay is done the gate refuses its
# connections (GD400).  A copy whose ledger is unreachable keeps the gate shut under
# gdpr.ledger_required, and a copy started without any ledger shows A again (the control).
use strict;
use warnings;
use File::Spec;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

# The ledger lives outside every data directory; one path, shared by the original and all copies.
# absolute, as the setting must be (the test framework's own paths are relative since 17)
my $ledger = File::Spec->rel2abs(PostgreSQL::Test::Utils::tempdir()) . '/ledger';
mkdir($ledger, 0700) or die "mkdir $ledger: $!";

my $orig = PostgreSQL::Test::Cluster->new('ledger_orig');
$orig->init(allows_streaming => 1, has_archiving => 1);
$orig->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'gdpr'
gdpr.worker_databases = 'postgres'
gdpr.audit_values = full
gdpr.ledger_directory = '$ledger'
gdpr.backup_retention = '35d'
max_connections = 20
});
$orig->start;

my @a_markers = ('ledger-a@example.org', 'Ledger-A Oldname', 'Ledger-A Newname', 'LA-PHONE-470-111',
	'ledger-a-login', 'Ledger-A street 11', 'Ledger-A private note', 'Ledger-A Billing',
	'LA-IBAN-BE0101', 'Ledger-A late note');
my @b_markers = ('ledger-b@example.org', 'Ledger-B Oldname', 'Ledger-B Newname', 'LB-PHONE-470-222',
	'ledger-b-login', 'Ledger-B street 22', 'Ledger-B private note', 'Ledger-B Billing',
	'LB-IBAN-BE0202');

$orig->safe_psql('postgres', q{
    CREATE EXTENSION gdpr;
    CREATE TABLE address (id int PRIMARY KEY, street text);
    CREATE TABLE customer (id bigint PRIMARY KEY, email text UNIQUE NOT NULL, full_name text,
                           phone text, login text UNIQUE, address_id int REFERENCES address);
    CREATE TABLE note (id int PRIMARY KEY, customer_id bigint REFERENCES customer, body text);
    CREATE TABLE invoice (id int PRIMARY KEY, customer_id bigint REFERENCES customer,
                          billing_name text, iban text, total numeric);
    CREATE TABLE wal_mark (x text);                    -- not personal: shows how far WAL went
    -- the application's tables are its own role's: the worker replays an erasure with the rights
    -- of the subject table's owner (who may erase), never its own
    CREATE ROLE shop IN ROLE gdpr_admin;
    ALTER TABLE address OWNER TO shop;
    ALTER TABLE customer OWNER TO shop;
    ALTER TABLE note OWNER TO shop;
    ALTER TABLE invoice OWNER TO shop;
    SELECT gdpr.register_subject('customer', 'id');
    SELECT gdpr.register_table('address');
    SELECT gdpr.register_table('note');
    SELECT gdpr.register_table('invoice', on_erase => 'anonymize');
    SELECT gdpr.classify_column('customer', 'email', 'contact');
    SELECT gdpr.classify_column('customer', 'full_name', 'identity');
    SELECT gdpr.classify_column('customer', 'phone', 'contact', erase => 'mask');
    SELECT gdpr.classify_column('customer', 'login', 'online_id');
    SELECT gdpr.classify_column('address', 'street', 'location');
    SELECT gdpr.classify_column('invoice', 'billing_name', 'identity');
    SELECT gdpr.classify_column('invoice', 'iban', 'financial');
    CREATE ROLE app LOGIN;
    GRANT SELECT ON address, customer, note, invoice TO app;
    -- ways around a statement gate: a function of the tables' owner (a gdpr_admin member) that
    -- reads for its caller, and a large object read by fast-path calls (psql's \lo_export)
    CREATE FUNCTION customer_emails() RETURNS text LANGUAGE sql SECURITY DEFINER
        AS 'SELECT string_agg(email, '','') FROM public.customer';
    ALTER FUNCTION customer_emails() OWNER TO shop;
    GRANT EXECUTE ON FUNCTION customer_emails() TO app;
    SELECT lo_from_bytea(4242, 'Ledger-A large object');
    GRANT SELECT ON LARGE OBJECT 4242 TO app;
    CREATE ROLE dpo LOGIN IN ROLE gdpr_admin;
    SET gdpr.actor = 'support@shop';
    INSERT INTO address VALUES (1, 'Ledger-A street 11'), (2, 'Ledger-B street 22');
    INSERT INTO customer VALUES (101, 'ledger-a@example.org', 'Ledger-A Oldname', 'LA-PHONE-470-111', 'ledger-a-login', 1),
                                (102, 'ledger-b@example.org', 'Ledger-B Oldname', 'LB-PHONE-470-222', 'ledger-b-login', 2);
    INSERT INTO note VALUES (1, 101, 'Ledger-A private note'), (2, 102, 'Ledger-B private note');
    INSERT INTO invoice VALUES (1, 101, 'Ledger-A Billing', 'LA-IBAN-BE0101', 10.00),
                               (2, 102, 'Ledger-B Billing', 'LB-IBAN-BE0202', 20.00);
    -- updates: the trail holds the old and the new values of both
    UPDATE customer SET full_name = 'Ledger-A Newname' WHERE id = 101;
    UPDATE customer SET full_name = 'Ledger-B Newname' WHERE id = 102;
    UPDATE note SET body = body || ' (edited)';
});
# some of the trail sealed: the replay has sealed events to redact too
$orig->safe_psql('postgres', 'SELECT gdpr.seal_audit(100000)');

$orig->backup('bb');

# After the base backup, before the erasure: only WAL (archived) and the dump carry this.
$orig->safe_psql('postgres', q{
    SET gdpr.actor = 'support@shop';
    INSERT INTO note VALUES (3, 101, 'Ledger-A late note');
    INSERT INTO wal_mark VALUES ('after the base backup');
});

# B as it is before the erasure: its rows, and its events in the trail.
my $b_rows_sql = q{
    SELECT string_agg(t, E'\n' ORDER BY t) FROM (
        SELECT 'customer ' || c::text AS t FROM customer c WHERE id = 102
        UNION ALL SELECT 'address ' || a::text FROM address a WHERE id = 2
        UNION ALL SELECT 'note ' || n::text FROM note n WHERE customer_id = 102
        UNION ALL SELECT 'invoice ' || i::text FROM invoice i WHERE customer_id = 102) s};
my $b_trail_sql = q{
    SELECT string_agg(event_id || ' ' || event || ' ' || coalesce(old_values::text, '-') || ' '
                      || coalesce(new_values::text, '-'), E'\n' ORDER BY event_id)
      FROM gdpr.audit_log WHERE subject_id = '102'};
my $b_rows  = $orig->safe_psql('postgres', $b_rows_sql);
my $b_trail = $orig->safe_psql('postgres', $b_trail_sql);
like($b_rows, qr/Ledger-B Newname/, "B's rows are there before the erasure");
like($b_trail, qr/Ledger-B Oldname/, "and the trail holds B's values");

my $identity = $orig->safe_psql('postgres', 'SELECT gdpr.ledger_identity()');
like($identity, qr/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/,
	'the database has a ledger identity');
is($orig->safe_psql('postgres', 'SELECT count(*) FROM gdpr.database_identity'), '1',
	'kept in gdpr.database_identity');

my $dump_file = $orig->basedir . '/before.sql';
$orig->command_ok([ 'pg_dump', '-d', $orig->connstr('postgres'), '-f', $dump_file ], 'pg_dump before the erasure');
{
	my $dump = slurp_file($dump_file);
	my @missing = grep { index($dump, $_) < 0 } @a_markers, @b_markers;
	is("@missing", '', 'before the erasure the dump holds every marker of A and B');
}

# The point to recover to: after the backup and the late note, before anything erasure did.
my $lsn_before = $orig->safe_psql('postgres', 'SELECT pg_current_wal_lsn()');

# An erasure of B rolled back: it must never be replayed anywhere.
$orig->safe_psql('postgres', q{BEGIN; SELECT gdpr_erase(102); ROLLBACK;});
is($orig->safe_psql('postgres', $b_rows_sql), $b_rows, 'a rolled back erasure leaves B');

my $report = decode_json($orig->safe_psql('postgres', 'SELECT gdpr_erase(101)'));
is($report->{status}, 'erased', 'A is erased');
ok(defined $report->{backups_clear_by}, 'the report says when the backups are clear of A');
is($orig->safe_psql('postgres', qq{SELECT '$report->{backups_clear_by}'::timestamptz - now() BETWEEN interval '34 days' AND interval '36 days'}),
	't', 'gdpr.backup_retention after now')
  if defined $report->{backups_clear_by};

# The ledger: one line for A's erasure, matching the database's own record of it.
my $ledger_file = "$ledger/$identity.ledger";
ok(-f $ledger_file, 'the erasure is in <ledger_directory>/<identity>.ledger');
my $entry_id = $orig->safe_psql('postgres', q{SELECT entry_id FROM gdpr.ledger WHERE entry = 'erase'});
is($orig->safe_psql('postgres', 'SELECT count(*) FROM gdpr.ledger'), '1', 'gdpr.ledger holds the committed erasure only');
my $ledger_text = slurp_file($ledger_file);
my @lines = map { my $l = eval { decode_json($_) }; $l // { not_json => $_ } } grep { length } split /\n/, $ledger_text;
my ($line) = grep { ($_->{entry_id} // '') eq $entry_id } @lines;
ok(defined $line, "the ledger has a line with gdpr.ledger's entry_id") or diag($ledger_text);
$line //= {};
my $seq       = $line->{seq}       // '';
my $kind      = $line->{kind}      // '';
my $pseudonym = $line->{pseudonym} // '';
isnt($pseudonym, '', 'the line names the subject by a pseudonym');
my @missing_fields = grep { !exists $line->{$_} }
  qw(seq identity entry entry_id kind pseudonym written_at xid lsn system_identifier timeline database_oid prev hash);
is("@missing_fields", '', 'the line has every field');
is($line->{entry}, 'erase', 'an erase entry');
is($line->{identity}, $identity, 'of this database identity');
is($line->{system_identifier}, $orig->safe_psql('postgres', 'SELECT system_identifier FROM pg_control_system()'),
	'of this system');
is($line->{database_oid}, $orig->safe_psql('postgres', q{SELECT oid FROM pg_database WHERE datname = 'postgres'}),
	'of this database');
is($pseudonym, $orig->safe_psql('postgres', qq{SELECT gdpr._erased_pseudonym('$kind', '101')}),
	"naming A by the pseudonym of A's erasure");
my @b_lines = grep { ($_->{entry} // '') eq 'erase' && ($_->{pseudonym} // '') ne $pseudonym } @lines;
my $b_aborted = grep { ($_->{entry} // '') eq 'aborted' } @lines;
ok(@b_lines == 0 || $b_aborted >= @b_lines, 'the rolled back erasure is not in the ledger, or is marked aborted');
{
	my @leaked = grep { index($ledger_text, $_) >= 0 } @a_markers, @b_markers;
	is("@leaked", '', 'the ledger holds no personal value');
}
is(query($orig, 'postgres', q{SELECT (v->>'valid') || ' ' || ((v->>'entries')::int >= 1) FROM gdpr.verify_ledger() v}),
	'true true', 'the ledger verifies');

# query(node, db, sql): the output of sql, or the error as text (a failure, not the end of the test)
sub query
{
	my ($n, $db, $sql) = @_;
	my ($ret, $out, $err) = $n->psql($db, $sql);
	return $ret == 0 ? $out : "failed: $err";
}

# pg_dump_markers(node, db, label): pg_dump of db; A's markers nowhere in it, B's all there
sub pg_dump_markers
{
	my ($node, $db, $label) = @_;
	my $file = $node->basedir . "/$label.sql";
	$node->command_ok([ 'pg_dump', '-d', $node->connstr($db), '-f', $file ], "$label: pg_dump runs");
	my $dump = -f $file ? slurp_file($file) : '';
	my @found = grep { index($dump, $_) >= 0 } @a_markers;
	is("@found", '', "$label: none of A's values is in the dump");
	my @missing = grep { index($dump, $_) < 0 } @b_markers;
	is("@missing", '', "$label: all of B's values are");
	return;
}

pg_dump_markers($orig, 'postgres', 'orig_after');

# Every WAL record up to the erasure archived, then the original is done.
$orig->safe_psql('postgres', q{INSERT INTO wal_mark VALUES ('after the erasure')});
my $walfile = $orig->safe_psql('postgres', 'SELECT pg_walfile_name(pg_current_wal_lsn())');
$orig->safe_psql('postgres', 'SELECT pg_switch_wal()');
ok($orig->poll_query_until('postgres', qq{SELECT last_archived_wal >= '$walfile' FROM pg_stat_archiver}),
	'the WAL past the erasure is archived');
$orig->stop;
my $ledger_after_erasure = slurp_file($ledger_file);

# copy_of_backup(name, extra conf, restoring): a new node from the base backup, with the conf of
# the original (the same ledger) plus extra conf, started; archive recovery when restoring.
sub copy_of_backup
{
	my ($name, $conf, $restoring) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init_from_backup($orig, 'bb', has_restoring => $restoring ? 1 : 0, standby => 0);
	$node->append_conf('postgresql.conf', "archive_mode = off\nlog_line_prefix = '%m [%p] %e '\n" . ($conf // ''));
	$node->start;
	return $node;
}

# as_role(node, db, role, sql): ($ret, $stdout, $stderr) of sql run by role, errors verbose
# (SQLSTATE in the message)
sub as_role
{
	my ($node, $db, $role, $sql) = @_;
	return $node->psql($db, "\\set VERBOSITY verbose\n$sql",
		connstr => $node->connstr($db) . " user=$role", timeout => 60);
}

my $app_sql = q{
    SELECT 'customer ' || c::text FROM customer c
    UNION ALL SELECT 'address ' || a::text FROM address a
    UNION ALL SELECT 'note ' || n::text FROM note n
    UNION ALL SELECT 'invoice ' || i::text FROM invoice i};
# the gate refuses a connection (FATAL; psql shows no SQLSTATE for those, the server log does) or,
# for a session that got in before, a statement (GD400)
my $gate_shut  = qr/(?:ERROR:\s+GD400:|FATAL:)\s+database "[^"]+" is not open yet: its erasure replay/i;
my $not_up_yet = qr/the database system is (starting up|not yet accepting connections)|57P03/;

# app_until_open(node, db): the application queries at once, and again until its query goes
# through.  Returns the output of the first query that went through (undef if none did before the
# timeout), how many were refused by the gate, and the unexpected errors.
sub app_until_open
{
	my ($node, $db) = @_;
	my ($refused, @unexpected) = (0);
	my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
	while (time < $deadline)
	{
		my ($ret, $out, $err) = as_role($node, $db, 'app', $app_sql);
		return ($out, $refused, @unexpected) if $ret == 0;
		if ($err =~ $gate_shut) { $refused++ }
		elsif ($err !~ $not_up_yet) { push @unexpected, $err }
		select(undef, undef, undef, 0.1);
	}
	return (undef, $refused, @unexpected);
}

# check_replayed(node, db, label): the application never saw A, the gate opened, and the copy
# is as the original after the erasure.
sub check_replayed
{
	my ($node, $db, $label) = @_;
	my ($out, $refused, @unexpected) = app_until_open($node, $db);
	ok(defined $out, "$label: the gate opens") or diag($node->logfile);
	$out //= '';
	my @seen = grep { index($out, $_) >= 0 } @a_markers;
	is("@seen", '', "$label: the application's first query that goes through shows nothing of A");
	like($out, qr/ledger-b\@example\.org/, "$label: and shows B");
	is(join("\n", @unexpected), '', "$label: until then the application is refused with GD400 only");
	note("$label: $refused statements refused by the gate");

	pg_dump_markers($node, $db, $label);
	is($node->safe_psql($db, $b_rows_sql), $b_rows, "$label: B's rows are byte for byte as before");
	is($node->safe_psql($db, $b_trail_sql), $b_trail, "$label: and so are B's events in the trail");
	is(query($node, $db, q{SELECT gdpr_verify_audit()->>'ok'}), 'true', "$label: the trail verifies");
	is(query($node, $db, q{SELECT gdpr.verify_ledger()->>'valid'}), 'true', "$label: the ledger verifies");
	is($node->safe_psql($db, 'SELECT gdpr.ledger_identity()'), $identity, "$label: the identity is the original's");
	is($node->safe_psql($db, q{SELECT count(*) FROM gdpr.audit_log WHERE event = 'ERASE'}), '0',
		"$label: the copy is from before the erasure");
	is($node->safe_psql($db, q{SELECT count(*) FROM gdpr.audit_log WHERE event = 'ERASE_REPLAY'}), '1',
		"$label: the replay is in the trail, once");
	is($node->safe_psql($db, qq{SELECT count(*) FROM gdpr.ledger WHERE entry_id = '$entry_id' AND replayed_at IS NOT NULL}),
		'1', "$label: gdpr.ledger records the entry as replayed");
	is($node->safe_psql($db, qq{SELECT gdpr._erased_pseudonym('$kind', '101')}), $pseudonym,
		"$label: A is known as erased, under the same pseudonym");
	return;
}

# --- The control: the base backup without a ledger has A back.  (Otherwise the test below could
# pass for a reason that has nothing to do with the ledger.)
my $control = copy_of_backup('ledger_none', "gdpr.ledger_directory = ''\n");
{
	my ($out, $refused, @unexpected) = app_until_open($control, 'postgres');
	like($out // '', qr/ledger-a\@example\.org/, 'control: without a ledger, the base backup shows A to the application');
}
$control->stop;

# --- 1. The base backup started again, with the ledger.
my $crash = copy_of_backup('ledger_crash');
check_replayed($crash, 'postgres', 'base backup');
# the report's diagnostics: crash recovery keeps the system and the timeline (the sequence decided)
is($crash->safe_psql('postgres', q{
    SELECT d->'written'->>'system_identifier' = d->'here'->>'system_identifier'
           AND d->'written'->>'timeline' = d->'here'->>'timeline'
      FROM (SELECT detail->'replay' AS d FROM gdpr.audit_log WHERE event = 'ERASE_REPLAY') r}),
	't', 'base backup: same system and timeline, replayed all the same');
is($crash->safe_psql('postgres', 'SELECT count(*) FROM wal_mark'), '0', 'base backup: holds nothing written after it');
$crash->stop;

# --- 2. The base backup recovered from the archive to a point before the erasure.
my $pitr = copy_of_backup('ledger_pitr', qq{
recovery_target_lsn = '$lsn_before'
recovery_target_inclusive = off
recovery_target_action = 'promote'
}, 1);
check_replayed($pitr, 'postgres', 'PITR');
is($pitr->safe_psql('postgres', q{
    SELECT (d->'here'->>'timeline')::int > (d->'written'->>'timeline')::int
      FROM (SELECT detail->'replay' AS d FROM gdpr.audit_log WHERE event = 'ERASE_REPLAY') r}),
	't', 'PITR: the report shows the new timeline');
is($pitr->safe_psql('postgres', q{SELECT string_agg(x, ',') FROM wal_mark}), 'after the base backup',
	'PITR: recovered past the backup, and not up to the erasure');
is($pitr->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 'f', 'PITR: promoted');
$pitr->stop;

# --- 3. The dump restored into a new database of another server, replayed on demand.
my $restore = PostgreSQL::Test::Cluster->new('ledger_dump');
$restore->init;
$restore->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'gdpr'
gdpr.worker_databases = 'postgres'
gdpr.ledger_directory = '$ledger'
});
$restore->start;
# the roles come first (pg_dumpall --globals-only would bring them)
$restore->safe_psql('postgres', q{
    CREATE ROLE gdpr_admin NOLOGIN; CREATE ROLE shop IN ROLE gdpr_admin; CREATE ROLE app LOGIN;
    CREATE DATABASE restored});
$restore->command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $restore->connstr('restored'), '-f', $dump_file ],
	'the dump restores');
is($restore->safe_psql('restored', 'SELECT gdpr.ledger_identity()'), $identity, 'dump: the identity comes with the dump');
my $replayed = query($restore, 'restored', q{
    SELECT string_agg(concat_ws(' ', seq, entry, kind, pseudonym, outcome IS NOT NULL), E'\n')
      FROM gdpr_replay_erasures()});
is($replayed, "$seq erase $kind $pseudonym t", 'dump: gdpr_replay_erasures() replays the erasure, and says how it went');
check_replayed($restore, 'restored', 'dump');
is(query($restore, 'restored', q{SELECT count(*) FROM gdpr_replay_erasures()}), '0',
	'dump: replayed again, nothing is left to do');
is($restore->safe_psql('restored', q{SELECT count(*) FROM gdpr.audit_log WHERE event = 'ERASE_REPLAY'}), '1',
	'dump: and nothing more is erased');
$restore->stop;

# --- 4. The base backup with its ledger unreachable, and the ledger required: the gate stays shut.
my $missing = copy_of_backup('ledger_missing', qq{
gdpr.ledger_directory = '$ledger-does-not-exist'
gdpr.ledger_required = on
});
{
	my ($went_through, @unexpected) = (0);
	my $refused = 0;
	my $until = time + 6;
	while (time < $until)
	{
		my ($ret, $out, $err) = as_role($missing, 'postgres', 'app', $app_sql);
		if ($ret == 0) { $went_through++ }
		elsif ($err =~ /(?:ERROR:\s+GD400:|FATAL:)\s+database "[^"]+" is not open yet: its erasure ledger is unreachable/i) { $refused++ }
		# before the worker's first look the gate is shut as pending: a refusal too, said so
		elsif ($err =~ /(?:ERROR:\s+GD400:|FATAL:)\s+database "[^"]+" is not open yet: its erasure replay is in progress/i) { }
		elsif ($err !~ $not_up_yet) { push @unexpected, $err }
		select(undef, undef, undef, 0.25);
	}
	is($went_through, 0, 'unreachable ledger: no statement of the application goes through');
	ok($refused > 0, 'unreachable ledger: refused with GD400, naming the unreachable ledger');
	is(join("\n", @unexpected), '', 'unreachable ledger: and with nothing else');
	my ($ret, $out, $err) = as_role($missing, 'postgres', 'app', 'SELECT 1');
	like($err, qr/(?:ERROR:\s+GD400:|FATAL:)\s+database "postgres" is not open yet/, 'unreachable ledger: still shut after a while, for any statement');
	like(slurp_file($missing->logfile), qr/GD400 FATAL:\s+database "postgres" is not open yet/,
		'unreachable ledger: the connection is refused with GD400');
	($ret, $out, $err) = as_role($missing, 'postgres', 'app', 'SELECT customer_emails()');
	like($err, qr/(?:ERROR:\s+GD400:|FATAL:)\s+database "postgres" is not open yet/, "unreachable ledger: a SECURITY DEFINER function of a gdpr_admin member does not read for the application");
	my $lo_file = $missing->basedir . '/lo.out';
	($ret, $out, $err) = as_role($missing, 'postgres', 'app', "\\lo_export 4242 '$lo_file'");
	ok($ret != 0 && !(-s $lo_file) && $err =~ /GD400|not open yet/, 'unreachable ledger: nor do fast-path calls (a large object)') or diag($err);
	($ret, $out, $err) = as_role($missing, 'postgres', 'dpo', 'SELECT 1');
	is($ret, 0, 'unreachable ledger: a member of gdpr_admin gets through') or diag($err);
	is($missing->safe_psql('postgres', q{SELECT count(*) FROM gdpr.audit_log WHERE event = 'ERASE_REPLAY'}), '0',
		'unreachable ledger: nothing replayed');

	# A session the connection check could not see: opened while the worker did not serve the
	# database, which a reload then makes it serve.  Its statements meet the gate, a fast-path
	# call and a SECURITY DEFINER function of a gdpr_admin member included.
	$missing->append_conf('postgresql.conf', "gdpr.worker_databases = 'elsewhere'\n");
	$missing->reload;
	ok($missing->poll_query_until('postgres', q{SELECT 1}, '1'), 'unreachable ledger: the worker no longer serves it');
	my ($ret2) = (1);
	for (1 .. 100)
	{
		($ret2) = as_role($missing, 'postgres', 'app', 'SELECT 1');
		last if $ret2 == 0;
		select(undef, undef, undef, 0.1);
	}
	is($ret2, 0, 'unreachable ledger: a database the worker does not serve lets the application in');
	# In a transaction the session reads a large object (libpq looks the large-object functions
	# up by a query the first time); after the reload it tries again, with fast-path calls only.
	my $early_file = $missing->basedir . '/lo_early.out';
	my $late_file  = $missing->basedir . '/lo_late.out';
	my ($in, $sout, $serr) =
	  ("BEGIN;\n\\lo_export 4242 '$early_file'\nSELECT 'exported';\n", '', '');
	my $session = IPC::Run::start(
		[ 'psql', '-X', '-v', 'VERBOSITY=verbose', '-d', $missing->connstr('postgres') . ' user=app', '-f', '-' ],
		'<', \$in, '>', \$sout, '2>', \$serr);
	$session->pump until $sout =~ /exported/;
	ok(-s $early_file, 'unreachable ledger: while not served, the session reads the large object');
	$missing->append_conf('postgresql.conf', "gdpr.worker_databases = 'postgres'\n");
	$missing->reload;
	sleep(1);
	# a transaction statement passes the gate and makes the session read its new settings
	$in .= "SAVEPOINT reloaded;\n\\lo_export 4242 '$late_file'\nROLLBACK;\nSELECT customer_emails();\n\\q\n";
	$session->finish;
	like($serr, qr/<stdin>:5: ERROR:\s+GD400:/,
		'unreachable ledger: once its database is served, an open session is refused a fast-path call');
	like($serr, qr/<stdin>:7: ERROR:\s+GD400:/,
		'unreachable ledger: and a SECURITY DEFINER function of a gdpr_admin member');
	unlike($serr, qr/<stdin>:[46]: ERROR/, 'unreachable ledger: its transaction can still be rolled back')
	  or diag($serr);
	ok(!-s $late_file && $sout !~ /ledger-a\@example/, 'unreachable ledger: and reads nothing');
}
$missing->stop;

is(slurp_file($ledger_file), $ledger_after_erasure, 'the copies added nothing to the ledger');

done_testing();
