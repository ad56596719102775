# A Citus cluster (a coordinator and two workers): the map, set on the coordinator only, reaches
# every node in the registering transaction; changes to distributed, colocated, reference and
# local tables are each captured once, on the node that holds the row, attributed to their
# subject; restrictions hold on the workers; what is not covered yet (export, erasure, read
# auditing) is refused, not half done.  Skipped where Citus is not installed (test/run builds it
# from its source archive when it finds one).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $pkglibdir = `pg_config --pkglibdir`;
chomp $pkglibdir;
plan skip_all => "Citus is not installed for this PostgreSQL (Citus 13.2 supports 15 to 17; test/run builds it from citus-*.tar.gz where it finds one)"
  unless -e "$pkglibdir/citus.so";

# A started node with Citus and gdpr preloaded and the Citus extension created
sub citus_node
{
	my ($name) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'citus,gdpr'
listen_addresses = '127.0.0.1'
citus.node_conninfo = 'sslmode=disable'
max_prepared_transactions = 20
});
	$node->append_conf('pg_hba.conf', "host all all 127.0.0.1/32 trust\n");
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION citus');
	return $node;
}
my @nodes = map { citus_node($_) } ('coordinator', 'worker1', 'worker2');
my ($coord, $w1, $w2) = @nodes;
$coord->safe_psql('postgres', sprintf(q{
    SELECT citus_set_coordinator_host('127.0.0.1', %d);
    SELECT citus_add_node('127.0.0.1', %d);
    SELECT citus_add_node('127.0.0.1', %d);
}, $coord->port, $w1->port, $w2->port));

# Every node's answer to one query, joined by "|" in the order coordinator, worker1, worker2.
sub on_all
{
	my ($sql) = @_;
	return join '|', map { $_->safe_psql('postgres', $sql) } @nodes;
}

# CREATE EXTENSION gdpr on the coordinator alone: Citus makes it on the workers.
$coord->safe_psql('postgres', q{
    CREATE EXTENSION gdpr;
    CREATE TABLE customer (id bigint PRIMARY KEY, name text, email text);
    CREATE TABLE orders (id bigint, customer_id bigint NOT NULL, note text, PRIMARY KEY (customer_id, id));
    CREATE TABLE ticket (id bigint PRIMARY KEY, customer_id bigint, body text);
    CREATE TABLE address (id bigint PRIMARY KEY, customer_id bigint, street text);
    CREATE TABLE memo (id int PRIMARY KEY, customer_id bigint, body text);
    SELECT create_distributed_table('customer', 'id');
    SELECT create_distributed_table('orders', 'customer_id', colocate_with => 'customer');
    ALTER TABLE orders ADD FOREIGN KEY (customer_id) REFERENCES customer (id);
    SELECT create_distributed_table('ticket', 'id');
    SELECT create_reference_table('address');
});
is(on_all(q{SELECT extversion FROM pg_extension WHERE extname = 'gdpr'}), '1.0|1.0|1.0',
	'CREATE EXTENSION gdpr on the coordinator installs it on every node');

$coord->safe_psql('postgres', q{
    SELECT gdpr.register_subject('customer', 'id');
    SELECT gdpr.register_table('orders');
    SELECT gdpr.register_table('ticket', subject_column => 'customer_id');
    SELECT gdpr.register_table('address', subject_column => 'customer_id');
    SELECT gdpr.register_table('memo', subject_column => 'customer_id');
    SELECT gdpr.classify_column('customer', 'email', 'contact');
});
my $citus_map = q{SELECT string_agg(gdpr._qualified(relid) || ':' || kind, ',' ORDER BY relid::text) FROM gdpr.registered_table};
my $on_workers = 'public.address:default,public.customer:default,public.orders:default,public.ticket:default';
is(on_all($citus_map), "public.address:default,public.customer:default,public.memo:default,public.orders:default,public.ticket:default|$on_workers|$on_workers",
	'the workers know the Citus tables of the map; the local table stays on the coordinator');
is(on_all(q{SELECT string_agg(column_name || ':' || category, ',') FROM gdpr.column_class WHERE relid = 'customer'::regclass}),
	'email:contact|email:contact|email:contact', 'and their classification');
is(on_all(q{SELECT count(*) FROM gdpr.cluster_bus}), '1|1|1', 'the bus keeps the latest map only');
is(on_all(q{SELECT has_table_privilege('public', 'gdpr.cluster_bus', 'SELECT')}), 'f|f|f', 'for the extension\'s owner only');
my $keys = on_all(q{SELECT encode(value, 'hex') FROM gdpr.secret WHERE name = 'pseudonym_key'});
my @keys = split /\|/, $keys;
ok(@keys == 3 && $keys[0] eq $keys[1] && $keys[1] eq $keys[2], 'every node pseudonymizes with the coordinator\'s key');

# A registration that rolls back changes no node.
$coord->safe_psql('postgres', q{
    BEGIN;
    CREATE TABLE later (id bigint PRIMARY KEY, customer_id bigint);
    SELECT create_distributed_table('later', 'id');
    SELECT gdpr.register_table('later', subject_column => 'customer_id');
    ROLLBACK;
});
is(on_all(q{SELECT count(*) FROM gdpr.registered_table WHERE relid::text LIKE '%later%'}), '0|0|0',
	'a rolled-back registration reaches no worker');

# Changes, through the coordinator.
$coord->safe_psql('postgres', q{
    INSERT INTO customer SELECT g, 'name ' || g, 'mail' || g || '@example.org' FROM generate_series(1, 20) g;
    INSERT INTO orders SELECT g, 1 + g % 20, 'order ' || g FROM generate_series(1, 40) g;
    INSERT INTO ticket SELECT g, 1 + g % 20, 'ticket ' || g FROM generate_series(1, 10) g;
    INSERT INTO address VALUES (1, 7, 'Main Street 7');
    INSERT INTO memo VALUES (1, 7, 'local memo');
    UPDATE customer SET email = 'new7@example.org' WHERE id = 7;
    DELETE FROM orders WHERE id = 6;
});
my $events = q{SELECT count(*) FROM gdpr.audit_log WHERE table_name = '%s' AND event = '%s'};
my $sum = sub {
	my ($table, $event) = @_;
	my $total = 0;
	$total += $_->safe_psql('postgres', sprintf($events, $table, $event)) for @nodes;
	return $total;
};
is($sum->('public.customer', 'INSERT'), 20, 'each inserted customer is one event, on some node');
is($sum->('public.orders', 'INSERT'), 40, 'each order too');
is($sum->('public.ticket', 'INSERT'), 10, 'and each ticket, distributed by another key');
is($sum->('public.address', 'INSERT'), 1, 'a row of a reference table, copied to every node, is one event');
is($sum->('public.memo', 'INSERT'), 1, 'a local table of the coordinator is captured there');
is($coord->safe_psql('postgres', sprintf($events, 'public.customer', 'INSERT')), '0',
	'the coordinator holds no shard of customer, and records none of its rows');

# Customer 7's events are on the worker that holds its shard, attributed to it.
my $holder = $coord->safe_psql('postgres', q{
    SELECT nodeport FROM pg_dist_shard_placement
     WHERE shardid = get_shard_id_for_distribution_column('customer', 7)});
my ($w7) = grep { $_->port == $holder } @nodes;
is($w7->safe_psql('postgres', q{SELECT string_agg(event || ':' || table_name, ',' ORDER BY event_id)
                                   FROM gdpr.audit_log WHERE subject_id = '7' AND table_name = 'public.customer'}),
	'INSERT:public.customer,UPDATE:public.customer', 'a subject\'s changes are on the node that holds its row');
is($w7->safe_psql('postgres', q{SELECT new_values::text FROM gdpr.audit_log WHERE subject_id = '7' AND event = 'UPDATE'}),
	'{"email": "new7@example.org"}', 'with the changed values, as on one server');
is($sum->('public.orders', 'DELETE'), 1, 'a DELETE too');
is(on_all(q{SELECT count(*) FROM gdpr.audit_log WHERE table_name LIKE 'public.%' AND subject_id IS NULL AND event <> 'TRUNCATE'
                                        AND event NOT LIKE 'MAP%'}),
	'0|0|0', 'no change goes unattributed');

# A restriction set on the coordinator holds on the worker that holds the row.
$coord->safe_psql('postgres', q{SELECT gdpr_restrict(7, 'disputed')});
my ($ok, $out, $err) = $coord->psql('postgres', q{UPDATE customer SET name = 'changed' WHERE id = 7});
like($err, qr/processing of subject 7 of kind "default" is restricted/, 'a restricted subject\'s row cannot be changed on its worker');
is($coord->safe_psql('postgres', q{UPDATE customer SET name = 'changed' WHERE id = 8 RETURNING id}), '8', 'another subject\'s can');
$coord->safe_psql('postgres', q{SELECT gdpr_unrestrict(7)});
is($coord->safe_psql('postgres', q{UPDATE customer SET name = 'changed' WHERE id = 7 RETURNING id}), '7',
	'lifted on the coordinator, lifted on the worker');

# A subject table outside Citus cannot be followed on a worker: said at registration.
($ok, $out, $err) = $coord->psql('postgres', q{
    BEGIN;
    CREATE TABLE employee (id bigint PRIMARY KEY);
    CREATE TABLE shift (id bigint PRIMARY KEY, employee_id bigint);
    SELECT create_distributed_table('shift', 'id');
    SELECT gdpr.register_subject('employee', 'id', kind => 'employee');
    SELECT gdpr.register_table('shift', kind => 'employee', subject_column => 'employee_id');
    COMMIT;
});
like($err, qr/table public.shift is a Citus table, but its subject table public.employee is not.*HINT:  Distribute public.employee/s,
	'a Citus table whose subject table is local is refused, with what to do');
is(on_all(q{SELECT count(*) FROM gdpr.subject_kind WHERE kind = 'employee'}), '0|0|0', 'and changes nothing');

# Export on the coordinator: the rows from every node, and the history from every node's trail.
my $export = q{SELECT gdpr_export(7)};
is($coord->safe_psql('postgres', qq{
    SELECT string_agg(key || ':' || jsonb_array_length(value), ',' ORDER BY key) FROM jsonb_each(($export)->'data')}),
	'public.address:1,public.customer:1,public.memo:1,public.orders:1,public.ticket:1',
	'gdpr_export on the coordinator has the subject\'s rows of distributed, colocated, reference and local tables');
is($coord->safe_psql('postgres', qq{SELECT ($export)->'data'->'public.customer'->0->>'email'}), 'new7@example.org',
	'as they are now');
is($coord->safe_psql('postgres', qq{
    SELECT string_agg(e->>'event' || ':' || (e->>'table'), ',' ORDER BY e->>'event', e->>'table')
      FROM jsonb_array_elements(($export)->'audit') e WHERE e->>'table' LIKE 'public.%'}),
	'DELETE:public.orders,INSERT:public.address,INSERT:public.customer,INSERT:public.memo,INSERT:public.orders,'
	  . 'INSERT:public.orders,INSERT:public.ticket,UPDATE:public.customer,UPDATE:public.customer',
	'and its history from the trail of every node that holds its rows');
ok($coord->safe_psql('postgres', qq{
    SELECT bool_and(t >= lag) FROM (SELECT e->>'time' AS t, lag(e->>'time', 1, '') OVER (ORDER BY n) FROM jsonb_array_elements(($export)->'audit') WITH ORDINALITY a(e, n)) x}),
	'ordered by time across the nodes');
is($coord->safe_psql('postgres', q{SELECT count(*) FROM gdpr_export_rows(7)}), '5', 'gdpr_export_rows has the same rows');
($ok, $out, $err) = $w1->psql('postgres', q{SELECT gdpr_export(7)});
like($err, qr/gdpr_export runs on the coordinator of a Citus cluster, not on a worker/, 'on a worker, export is refused');

# Erasure does not cover the workers' trails yet: refused, not half done.
for my $call ('SELECT gdpr_erase(7)', 'SELECT gdpr_can_erase(7)')
{
	($ok, $out, $err) = $coord->psql('postgres', $call);
	like($err, qr/ERROR:  gdpr_\w+ does not cover Citus tables yet/, "$call is refused on a cluster");
}
is($sum->('public.customer', 'DELETE'), 0, 'and the refused erasure deleted nothing');
($ok, $out, $err) = $coord->psql('postgres', q{SELECT gdpr.set_read_audit('customer')});
like($err, qr/read auditing does not cover Citus tables yet/, 'read auditing of a Citus table is refused');
($ok, $out, $err) = $coord->psql('postgres', q{ALTER TABLE orders ADD COLUMN at timestamptz; SELECT gdpr.set_retention('orders', 'at', '1 year')});
like($err, qr/retention does not cover Citus tables yet: public.orders is one/, 'so is retention');
($ok, $out, $err) = $coord->psql('postgres', q{
    SELECT gdpr.add_purpose('newsletter', 'the newsletter', 'consent');
    SELECT gdpr.require_consent('orders', 'customer_id', 'newsletter')});
like($err, qr/consent requirements do not cover Citus tables yet/, 'and a consent requirement');

# A table that only looks like a shard is not one: its trigger records nothing as the table.
$coord->safe_psql('postgres', q{CREATE ROLE mallory LOGIN; CREATE SCHEMA evil AUTHORIZATION mallory});
my $shard = $w1->safe_psql('postgres', q{SELECT shard_name('customer'::regclass, min(s.shardid))
                                            FROM pg_dist_shard s JOIN pg_dist_placement p USING (shardid)
                                           WHERE s.logicalrelid = 'customer'::regclass
                                             AND p.groupid = (SELECT groupid FROM pg_dist_local_group)});
$shard =~ s/^public\.//;
($ok, $out, $err) = $w1->psql('postgres', qq{
    SET ROLE mallory;
    CREATE TABLE evil.$shard (id bigint, name text, email text);
    CREATE TRIGGER t AFTER INSERT ON evil.$shard FOR EACH ROW EXECUTE FUNCTION gdpr.audit_row();
    INSERT INTO evil.$shard VALUES (99, 'forged', 'forged\@example.org');
});
like($err, qr/table evil\.$shard is not registered with gdpr/, 'a look-alike of a shard is not audited as its table');
is($w1->safe_psql('postgres', q{SELECT count(*) FROM gdpr.audit_log WHERE subject_id = '99'}), '0', 'and forges no event');

# The bus is written as the extension's owner, for anyone who may reset a table's cached map:
# what it sends is the map, nothing of the caller's, and the caller cannot touch the bus itself.
my $map_before = on_all($citus_map);
$coord->safe_psql('postgres', q{SET ROLE mallory; CREATE TABLE evil.mine (id int); SELECT gdpr._map_changed('evil.mine')});
is(on_all($citus_map), $map_before, 'a table owner resetting its cached map re-sends the same map');
for my $sql (q{SELECT payload FROM gdpr.cluster_bus}, q{INSERT INTO gdpr.cluster_bus VALUES ('map', '{}')},
	q{DELETE FROM gdpr.cluster_bus})
{
	($ok, $out, $err) = $coord->psql('postgres', "SET ROLE mallory; $sql");
	like($err, qr/permission denied for table cluster_bus/, "and cannot $sql");
}
($ok, $out, $err) = $coord->psql('postgres', q{SET ROLE mallory; SELECT gdpr._cluster_sync()});
like($err, qr/permission denied for function _cluster_sync/, 'nor send the map itself');

# Taken out of the map on the coordinator, a table is out of it on every node.
$coord->safe_psql('postgres', q{SELECT gdpr.unregister_table('ticket')});
is(on_all(q{SELECT count(*) FROM gdpr.registered_table WHERE relid = 'ticket'::regclass}), '0|0|0',
	'unregistering reaches the workers');
$coord->safe_psql('postgres', q{INSERT INTO ticket VALUES (100, 7, 'after')});
is($sum->('public.ticket', 'INSERT'), 10, 'and its shards capture no more');

# A worker that cannot be read fails the export, named, even when the subject's rows are all on
# the others: an export never leaves a node's part of the history out unsaid.
my ($other) = grep { $_ != $w7 && $_ != $coord } @nodes;
$other->stop;
($ok, $out, $err) = $coord->psql('postgres', q{SELECT gdpr_export(7)});
like($err, qr/the audit trail of node 127\.0\.0\.1:${\ $other->port} cannot be read/, 'an export with a worker down fails, naming it');
$other->start;
ok($coord->poll_query_until('postgres', q{SELECT gdpr_export(7) IS NOT NULL}), 'and succeeds once it is back');

# A node added after the map was sent: Citus gives it the extension and the shards, and its
# first capture applies the map the bus holds, in a transaction of its own (a write to several of
# its shards at once must not wait on itself).
my $w3 = citus_node('worker3');
$coord->safe_psql('postgres', sprintf(q{
    SELECT citus_add_node('127.0.0.1', %d);
    SELECT rebalance_table_shards(shard_transfer_mode => 'block_writes');
}, $w3->port));
push @nodes, $w3;
ok($w3->safe_psql('postgres', q{SELECT count(*) > 0 FROM pg_dist_shard_placement p JOIN pg_dist_shard s USING (shardid)
                                  WHERE s.logicalrelid = 'customer'::regclass AND p.nodeport = } . $w3->port),
	'the new node holds shards of customer');
$coord->safe_psql('postgres', q{
    BEGIN ISOLATION LEVEL REPEATABLE READ;
    INSERT INTO customer SELECT g, 'late ' || g, NULL FROM generate_series(1001, 1100) g;
    COMMIT;
});
is($sum->('public.customer', 'INSERT'), 120, 'writes routed to the new node are captured there too');
ok($w3->safe_psql('postgres', q{SELECT count(*) > 0 FROM gdpr.audit_log WHERE table_name = 'public.customer' AND event = 'INSERT'}),
	'(some of them by the new node)');
is($w3->safe_psql('postgres', $citus_map), $w1->safe_psql('postgres', $citus_map), 'which has the map the others have');

# Each node's trail is its own chain, and verifies.
is(on_all(q{SELECT gdpr.seal_audit() >= 0 AND (gdpr_verify_audit()->>'ok')::boolean}), 't|t|t|t', 'every node\'s trail seals and verifies');

$_->stop for @nodes;
done_testing();
