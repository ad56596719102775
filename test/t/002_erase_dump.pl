# After gdpr_erase, a pg_dump of the whole database holds none of the subject's personal values:
# not in their rows, not in the rows kept by law, not in the audit trail, not in the map's
# bookkeeping.  The values were everywhere before: in the tables and in full row images.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('erase_dump');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'gdpr'\ngdpr.audit_values = full\n");
$node->start;

my @secrets = ('zebulon.quux@example.org', 'Zebulon Quux', '+32 470 99 88 77',
	'Quuxstraat 77', 'Zeb-the-login', 'my very private note', 'ZQ-IBAN-BE7700');

$node->safe_psql('postgres', q{
    CREATE EXTENSION gdpr;
    CREATE TABLE address (id int PRIMARY KEY, street text);
    CREATE TABLE customer (id bigint PRIMARY KEY, email text UNIQUE NOT NULL, full_name text,
                           phone text, login text UNIQUE, address_id int REFERENCES address);
    CREATE TABLE note (id int PRIMARY KEY, customer_id bigint REFERENCES customer, body text);
    CREATE TABLE invoice (id int PRIMARY KEY, customer_id bigint REFERENCES customer,
                          billing_name text, iban text, total numeric);
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
    SET gdpr.actor = 'support@shop';
    INSERT INTO address VALUES (1, 'Quuxstraat 77'), (2, 'Other street 1');
    INSERT INTO customer VALUES (987654, 'zebulon.quux@example.org', 'Zebulon Quux', '+32 470 99 88 77', 'Zeb-the-login', 1),
                                (2, 'other@example.org', 'Other Person', NULL, 'other', 2);
    INSERT INTO note VALUES (1, 987654, 'my very private note');
    INSERT INTO invoice VALUES (1, 987654, 'Zebulon Quux', 'ZQ-IBAN-BE7700', 42.50);
    SET gdpr.audit_unchanged_updates = on;             -- an event with the name in both images
    UPDATE customer SET full_name = 'Zebulon Quux' || '' WHERE id = 987654;
    SELECT gdpr.log_event('USER_LOGIN', 987654, detail => '{"login": "Zeb-the-login"}');
    SELECT gdpr_export(987654);
});

my $dump = $node->basedir . '/before.sql';
$node->command_ok([ 'pg_dump', '-d', $node->connstr('postgres'), '-f', $dump ], 'pg_dump before erasure');
my $before = slurp_file($dump);
ok(index($before, $_) >= 0, "before erasure the dump holds '$_'") for @secrets;

my $report = $node->safe_psql('postgres', q{SELECT gdpr_erase(987654)->>'status'});
is($report, 'erased', 'the subject is erased');

$dump = $node->basedir . '/after.sql';
$node->command_ok([ 'pg_dump', '-d', $node->connstr('postgres'), '-f', $dump ], 'pg_dump after erasure');
my $after = slurp_file($dump);
ok(index($after, $_) < 0, "after erasure the dump holds no '$_'") for @secrets;
like($after, qr/Other Person/, 'other subjects are untouched');
is($node->safe_psql('postgres', q{SELECT total FROM invoice WHERE id = 1}), '42.50', 'the invoice is kept, anonymized');
is($node->safe_psql('postgres', q{SELECT count(*) FROM gdpr.audit_log WHERE event = 'ERASE'}), '1', 'the erasure is recorded');
is($node->safe_psql('postgres', q{SELECT count(*) FROM gdpr.audit_log WHERE actor = 'support@shop' AND subject_id ~ '^[0-9a-f]{32}$'}),
	'7', 'the subject\'s seven events stay, under the pseudonym, with who did them');

$node->stop;
done_testing();
