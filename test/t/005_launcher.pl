# The launcher serves databases side by side: a long pass in one database holds up no other, a
# reload is acted on within two seconds whatever the workers are doing, and a database taken out
# of gdpr.worker_databases has its running pass stopped at the next batch.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $node = PostgreSQL::Test::Cluster->new('launcher');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'gdpr'
gdpr.worker_naptime = 1
gdpr.worker_batch_size = 1
gdpr.worker_databases = 'slow'
gdpr.worker_max_workers = 3
max_worker_processes = 16
});
$node->start;

# "slow": every purged row takes 0.2 s (a table owner's trigger), 400 of them: a pass of 80 s.
# The others: a few expired rows, purged in a moment.
my $schema = q{
    CREATE EXTENSION gdpr;
    CREATE TABLE customer (id int PRIMARY KEY);
    CREATE TABLE visit (id int PRIMARY KEY, customer_id int REFERENCES customer, at timestamptz);
    SELECT gdpr.register_subject('customer', 'id');
    SELECT gdpr.register_table('visit');
    SELECT gdpr.set_retention('visit', 'at', '30 days');
    INSERT INTO customer VALUES (1);
};
for my $db ('slow', 'a', 'b', 'late')
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, $schema);
}
$node->safe_psql('slow', q{
    CREATE FUNCTION slowly() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.2); RETURN OLD; END $$;
    CREATE TRIGGER slowly BEFORE DELETE ON visit FOR EACH ROW EXECUTE FUNCTION slowly();
    INSERT INTO visit SELECT g, 1, now() - interval '1 year' FROM generate_series(1, 400) g;
});
ok($node->poll_query_until('postgres', q{
    SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'gdpr retention worker' AND datname = 'slow'}),
	'a long pass runs in "slow"');

# Expired rows in database $db; returns the seconds until the worker purged them (undef: not in 10 s).
sub purge_time
{
	my ($db, $first) = @_;
	$node->safe_psql($db, "INSERT INTO visit SELECT g, 1, now() - interval '1 year' FROM generate_series($first, $first + 4) g");
	my $start = time;
	while (time - $start < 10)
	{
		return time - $start
		  if $node->safe_psql($db, "SELECT count(*) FROM visit WHERE id >= $first") eq '0';
		usleep(50_000);
	}
	return undef;
}

# A reload that adds databases is acted on within 2 s, while "slow" is mid-pass.
$node->safe_psql('a', q{INSERT INTO visit SELECT g, 1, now() - interval '1 year' FROM generate_series(1, 5) g});
$node->safe_psql('b', q{INSERT INTO visit SELECT g, 1, now() - interval '1 year' FROM generate_series(1, 5) g});
$node->safe_psql('postgres', q{ALTER SYSTEM SET gdpr.worker_databases = 'slow, a, b'});
my $reloaded = time;
$node->safe_psql('postgres', q{SELECT pg_reload_conf()});
my $served;
while (time - $reloaded < 10)
{
	$served = time - $reloaded;
	last if $node->safe_psql('a', q{SELECT count(*) FROM visit}) eq '0'
	  && $node->safe_psql('b', q{SELECT count(*) FROM visit}) eq '0';
	usleep(50_000);
	$served = undef;
}
ok(defined $served && $served <= 2, 'databases added by a reload are served within 2 s of it, beside a long pass')
  or diag('served after ' . ($served // 'never'));

# With "slow" still in its pass, "a" and "b" are served every naptime (1 s): expired rows written
# there are gone within two naptimes, round after round.
my @times;
for my $round (1 .. 3)
{
	push @times, purge_time('a', 100 * $round), purge_time('b', 100 * $round);
}
ok(!grep({ !defined $_ || $_ > 2.5 } @times), 'the other databases are served every naptime during the long pass')
  or diag('purge times: ' . join(', ', map { $_ // 'never' } @times));
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'gdpr retention worker' AND datname = 'slow'}),
	'1', 'and the long pass is still running');

# A launcher that is killed comes back knowing none of the passes its predecessor began: the
# worker it starts for "slow" finds the pass under way and leaves.
my $launcher = $node->safe_psql('postgres', q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'gdpr retention launcher'});
my $log_offset = -s $node->logfile;
$node->safe_psql('postgres', "SELECT pg_terminate_backend($launcher)");
ok($node->poll_query_until('postgres', qq{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'gdpr retention launcher' AND pid <> $launcher}),
	'the launcher comes back');
sleep 2;
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'gdpr retention worker' AND datname = 'slow'}),
	'1', 'one pass in "slow", not two');
like(slurp_file($node->logfile, $log_offset), qr/another retention worker is serving database "slow"; this one leaves/,
	'the second worker left');

# At most gdpr.worker_max_workers passes at a time.
$node->safe_psql('postgres', q{ALTER SYSTEM SET gdpr.worker_max_workers = 1});
$node->safe_psql('postgres', q{ALTER SYSTEM SET gdpr.worker_databases = 'slow, late'});
$node->safe_psql('postgres', q{SELECT pg_reload_conf()});
$node->safe_psql('late', q{INSERT INTO visit SELECT g, 1, now() - interval '1 year' FROM generate_series(1, 5) g});
sleep 3;
is($node->safe_psql('late', q{SELECT count(*) FROM visit}), '5', 'with one worker allowed and "slow" holding it, "late" waits');

# Taken out of gdpr.worker_databases, "slow" stops at its next batch (0.2 s), and "late" gets the slot.
my $left = $node->safe_psql('slow', q{SELECT count(*) FROM visit});
$node->safe_psql('postgres', q{ALTER SYSTEM SET gdpr.worker_databases = 'late'});
$node->safe_psql('postgres', q{SELECT pg_reload_conf()});
ok($node->poll_query_until('postgres', q{
    SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'gdpr retention worker' AND datname = 'slow'}),
	'a database taken out of the list has its pass stopped');
ok($node->poll_query_until('late', q{SELECT count(*) = 0 FROM visit}), 'and the freed slot serves the next database');
my $after = $node->safe_psql('slow', q{SELECT count(*) FROM visit});
ok($after > 0 && $after <= $left, 'the stopped pass left the rest of its rows for later')
  or diag("left $left, after $after");
like(slurp_file($node->logfile), qr/retention worker stops: database "slow" is no longer in gdpr.worker_databases/,
	'the stop is in the server log');
# (only the table it was purging: a step of an earlier pass may have met the test's own setup)
is($node->safe_psql('slow', q{SELECT string_agg(error, '; ') || '|' || bool_or(skipped) FROM gdpr.retention_history
                                 WHERE by_worker AND table_name = 'public.visit' AND error IS NOT NULL}),
	'skipped: the database was taken out of gdpr.worker_databases|true', 'and in the history as skipped, not as a failure');

$node->stop;
done_testing();
