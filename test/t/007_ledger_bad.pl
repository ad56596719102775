# The erasure ledger given bad input: a ledger directory inside the data directory, or one the
# server cannot write, refuses the erasure and changes nothing; a ledger with a truncated, an
# edited or a removed line does not verify and replays nothing; two databases sharing one ledger
# (a clone made with CREATE DATABASE ... TEMPLATE) do not replay each other's erasures.
use strict;
use warnings;
use File::Spec;
use File::Basename qw(basename);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $tmp         = File::Spec->rel2abs(PostgreSQL::Test::Utils::tempdir());    # settings want absolute paths
my $ledger      = "$tmp/ledger";
my $ledger_ro   = "$tmp/ledger_ro";
mkdir($ledger, 0700) or die "mkdir $ledger: $!";

my $node = PostgreSQL::Test::Cluster->new('ledger_bad');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'gdpr'
gdpr.worker_databases = 'postgres'
gdpr.ledger_directory = '$ledger'
});
$node->start;

# person 1..6, each with a marker of their own
$node->safe_psql('postgres', 'CREATE DATABASE shop');
$node->safe_psql('shop', q{
    CREATE EXTENSION gdpr;
    CREATE TABLE person (id int PRIMARY KEY, name text);
    SELECT gdpr.register_subject('person', 'id');
    SELECT gdpr.classify_column('person', 'name', 'identity');
    INSERT INTO person SELECT g, 'bad-ledger-person-' || g FROM generate_series(1, 6) g;
});
my $identity = $node->safe_psql('shop', 'SELECT gdpr.ledger_identity()');
my $ledger_file = "$ledger/$identity.ledger";

my $dump_file = $node->basedir . '/shop.sql';
$node->command_ok([ 'pg_dump', '-d', $node->connstr('shop'), '-f', $dump_file ], 'pg_dump before any erasure');

# set_ledger(node, path): gdpr.ledger_directory = path, reloaded; true once new sessions see it
sub set_ledger
{
	my ($n, $path) = @_;
	$n->append_conf('postgresql.conf', "gdpr.ledger_directory = '$path'");
	$n->reload;
	for (1 .. 100)
	{
		return 1 if $n->safe_psql('postgres', q{SELECT current_setting('gdpr.ledger_directory', true)}) eq $path;
		select(undef, undef, undef, 0.1);
	}
	return 0;
}

# run(node, db, sql): ($ret, $stdout, $stderr), errors verbose (with their SQLSTATE)
sub run
{
	my ($n, $db, $sql) = @_;
	return $n->psql($db, "\\set VERBOSITY verbose\n$sql");
}

# query(node, db, sql): the output of sql, or the error as text (a failure, not the end of the test)
sub query
{
	my ($n, $db, $sql) = @_;
	my ($ret, $out, $err) = $n->psql($db, $sql);
	return $ret == 0 ? $out : "failed: $err";
}

# present(node, db, id): is person id still there with their value?
sub present
{
	my ($n, $db, $id) = @_;
	return $n->safe_psql($db, "SELECT count(*) FROM person WHERE id = $id AND name = 'bad-ledger-person-$id'") eq '1';
}

# refused(id, label, error_like): gdpr_erase(id) in shop fails so, and leaves everything as it was
sub refused
{
	my ($id, $label, $error_like) = @_;
	my ($ret, $out, $err) = run($node, 'shop', "SELECT gdpr_erase($id)");
	isnt($ret, 0, "$label: the erasure is refused");
	like($err, $error_like, "$label: with the reason");
	ok(present($node, 'shop', $id), "$label: the subject is still there");
	is($node->safe_psql('shop', q{SELECT count(*) FROM gdpr.audit_log WHERE event = 'ERASE'}) . ' '
		  . $node->safe_psql('shop', 'SELECT count(*) FROM gdpr.ledger'),
		'0 0', "$label: no erasure recorded, in the trail or in gdpr.ledger");
	return;
}

# --- A ledger inside the data directory: named directly, through "..", through a symlink.
my $inside = File::Spec->rel2abs($node->data_dir) . '/gdpr_ledger';
mkdir($inside, 0700) or die "mkdir $inside: $!";
my $datadir_name = basename($node->data_dir);
symlink($inside, "$tmp/ledger_link") or die "symlink: $!";
for my $case ([ $inside, 'ledger in the data directory' ],
	[ File::Spec->rel2abs($node->data_dir) . "/../$datadir_name/gdpr_ledger", 'ledger in the data directory, through ..' ],
	[ "$tmp/ledger_link", 'ledger in the data directory, through a symlink' ])
{
	my ($path, $label) = @$case;
	ok(set_ledger($node, $path), "$label: set");
	refused(1, $label, qr/ERROR:\s+22023:.*inside the data directory/);
}
opendir(my $dh, $inside) or die "opendir $inside: $!";
is(join(' ', grep { !/^\.\.?$/ } readdir $dh), '', 'nothing was written inside the data directory');
closedir $dh;

# --- A ledger directory the server cannot write.
SKIP:
{
	skip 'root ignores file permissions', 5 if $> == 0;
	mkdir($ledger_ro, 0700) or die "mkdir $ledger_ro: $!";
	chmod(0500, $ledger_ro) or die "chmod $ledger_ro: $!";
	ok(set_ledger($node, $ledger_ro), 'unwritable ledger: set');
	refused(2, 'unwritable ledger', qr/ERROR:.*ledger/i);
	chmod(0700, $ledger_ro);
}

# --- Three good erasures, shipped by the archive command, then a copy of shop from before them
# on another server.
my $archive = "$tmp/archive";
mkdir($archive, 0700) or die "mkdir $archive: $!";
$node->append_conf('postgresql.conf', "gdpr.ledger_archive_command = 'cp %p $archive/%f'\n");
ok(set_ledger($node, $ledger), 'the good ledger: set');
$node->safe_psql('shop', "SELECT gdpr_erase($_)") for 3 .. 5;
ok(!present($node, 'shop', $_), "person $_ erased") for 3 .. 5;
is(query($node, 'shop', q{SELECT (v->>'valid') || ' ' || (v->>'entries') FROM gdpr.verify_ledger() v}),
	'true 3', 'the ledger verifies, three entries');
my $good = slurp_file($ledger_file);
my @good_lines = split /(?<=\n)/, $good;
is(scalar @good_lines, 3, 'three lines, each ending in a newline');
is(-f "$archive/$identity.ledger" ? slurp_file("$archive/$identity.ledger") : '', $good,
	'gdpr.ledger_archive_command shipped the ledger as it stands after the last erasure');

my $copy = PostgreSQL::Test::Cluster->new('ledger_bad_copy');
$copy->init;
$copy->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'gdpr'
gdpr.worker_databases = 'postgres'
gdpr.ledger_directory = '$ledger'
});
$copy->start;
$copy->safe_psql('postgres', 'CREATE DATABASE shop');
$copy->command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $copy->connstr('shop'), '-f', $dump_file ],
	'the dump restores on another server');
is($copy->safe_psql('shop', 'SELECT gdpr.ledger_identity()'), $identity, 'with the same identity');

# write_ledger(text): the ledger file's content replaced in place (same file, as the server has it)
sub write_ledger
{
	my ($text) = @_;
	open(my $fh, '>', $ledger_file) or die "open $ledger_file: $!";
	print $fh $text;
	close($fh) or die "close $ledger_file: $!";
	return;
}

# The intact ledger verifies in both: the failures below come from the damage alone.
is(query($node, 'shop', q{SELECT gdpr.verify_ledger()->>'valid'}), 'true', 'intact: the original verifies the ledger');
is(query($copy, 'shop', q{SELECT (v->>'valid') || ' ' || (v->>'missing') FROM gdpr.verify_ledger() v}), 'true 3',
	'intact: so does the copy, three entries missing');

# damaged(text, label): with that ledger, verification fails with GD401, in the original and in
# the copy, and the copy replays nothing
sub damaged
{
	my ($text, $label) = @_;
	write_ledger($text);
	my ($ret, $out, $err) = run($node, 'shop', 'SELECT gdpr.verify_ledger()');
	like($err, qr/ERROR:\s+GD401:/, "$label: verify_ledger() fails with GD401 in the original");
	($ret, $out, $err) = run($copy, 'shop', 'SELECT gdpr.verify_ledger()');
	isnt($ret, 0, "$label: verify_ledger() fails in the copy");
	like($err, qr/ERROR:\s+GD401:/, "$label: with GD401");
	($ret, $out, $err) = run($copy, 'shop', 'SELECT * FROM gdpr_replay_erasures()');
	isnt($ret, 0, "$label: gdpr_replay_erasures() fails");
	ok((present($copy, 'shop', 3) && present($copy, 'shop', 4) && present($copy, 'shop', 5)),
		"$label: and erases nobody, not even for the lines that are intact");
	is($copy->safe_psql('shop', q{SELECT count(*) FROM gdpr.audit_log WHERE event = 'ERASE_REPLAY'}) . ' '
		  . $copy->safe_psql('shop', 'SELECT count(*) FROM gdpr.ledger'),
		'0 0', "$label: no replay recorded");
	write_ledger($good);
	return;
}

# A line cut short with lines after it.  (A partial last line alone could be a write whose
# transaction never committed; that case is not tested here.)
damaged($good_lines[0] . substr($good_lines[1], 0, int(length($good_lines[1]) / 2)) . "\n" . $good_lines[2],
	'truncated line');
my $edited = $good_lines[0];
ok($edited =~ s/("pseudonym"\s*:\s*")([^"])/$1 . ($2 eq 'a' ? 'b' : 'a')/e, 'a pseudonym to edit');
damaged($edited . join('', @good_lines[ 1 .. 2 ]), 'edited line');
damaged($good_lines[0] . $good_lines[2], 'removed line');

# The same ledger intact: the copy verifies it and replays the three erasures.
is(query($copy, 'shop', q{SELECT gdpr.verify_ledger()->>'valid'}), 'true', 'intact again: the ledger verifies');
is(query($copy, 'shop', q{SELECT count(*) FROM gdpr_replay_erasures()}), '3', 'intact again: three entries replayed');
ok(!present($copy, 'shop', $_), "intact again: person $_ erased in the copy") for 3 .. 5;
ok(present($copy, 'shop', $_), "intact again: person $_ kept in the copy") for 1, 2, 6;
is($copy->safe_psql('shop', q{SELECT count(*) FROM gdpr.audit_log WHERE event = 'ERASE_REPLAY'}), '3',
	'intact again: each replay recorded');
is($copy->safe_psql('shop', q{SELECT gdpr_verify_audit()->>'ok'}), 'true', 'intact again: the trail verifies');
$copy->stop;

# --- Two databases sharing one ledger: a clone's erasure is not the original's.
$node->safe_psql('postgres', 'CREATE DATABASE clone TEMPLATE shop');
is($node->safe_psql('clone', 'SELECT gdpr.ledger_identity()'), $identity, 'the clone shares the identity');
$node->safe_psql('clone', 'SELECT gdpr_erase(6)');
ok(!present($node, 'clone', 6), 'person 6 erased in the clone');
is(query($node, 'shop', q{SELECT ((v->>'foreign')::int >= 1)::text FROM gdpr.verify_ledger() v}),
	'true', "the original counts the clone's entry as foreign");
my ($ret, $out, $err) = run($node, 'shop', 'SELECT * FROM gdpr_replay_erasures()');
is($ret, 0, 'the original runs gdpr_replay_erasures()') or diag($err);
ok(present($node, 'shop', 6), "and does not erase the clone's subject");
is($node->safe_psql('shop', q{SELECT count(*) FROM gdpr.audit_log WHERE event = 'ERASE_REPLAY'}), '0',
	'nothing replayed in the original');
is(query($node, 'clone', q{SELECT gdpr.verify_ledger()->>'valid'}), 'true', 'the clone verifies the ledger');

$node->stop;
done_testing();
