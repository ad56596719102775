# A Citus cluster (a coordinator and two workers, then a third): the map, set on the coordinator
# only, reaches every node in the registering transaction; changes to distributed, colocated,
# reference and local tables are each captured once, on the node that holds the row, attributed
# to their subject; restrictions hold on the workers; export and erasure on the coordinator cover
# every node, an erasure as one distributed transaction (a legal hold, a forged signal or a worker
# killed in its middle leave every node as it was); retention purges every node's shards, and a
# reference table's copies together; reads are recorded by the node that made them, an erasure's
# own statements on the workers are not reads.  Skipped where Citus is not installed (test/run
# builds it from its source archive when it finds one).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Digest::SHA qw(hmac_sha256_hex);

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

# On a worker, erasure is refused too: only the coordinator has the whole map.
($ok, $out, $err) = $w1->psql('postgres', q{SELECT gdpr_erase(7)});
like($err, qr/gdpr_erase runs on the coordinator of a Citus cluster, not on a worker/, 'on a worker, erasure is refused');
($ok, $out, $err) = $coord->psql('postgres', q{ALTER TABLE address ADD COLUMN at timestamptz; SELECT gdpr.set_retention('address', 'at', '1 year', 'anonymize')});
like($err, qr/retention cannot anonymize Citus reference or local tables: public.address is one/,
	'anonymizing retention of a reference table, a copy on every node, is refused');
($ok, $out, $err) = $w1->psql('postgres', q{SELECT gdpr.set_retention('orders', 'id', '1 year')});
like($err, qr/set_retention runs on the coordinator of a Citus cluster, not on a worker/, 'and a policy set on a worker');

# A consent requirement on a distributed table is checked on the worker that holds the row,
# against the consents the coordinator keeps.
$coord->safe_psql('postgres', q{
    SELECT gdpr.add_purpose('newsletter', 'the newsletter', 'consent');
    CREATE TABLE subscription (customer_id bigint PRIMARY KEY, topic text);
    SELECT create_distributed_table('subscription', 'customer_id', colocate_with => 'customer');
    SELECT gdpr.register_table('subscription', subject_column => 'customer_id');
    SELECT gdpr.require_consent('subscription', 'customer_id', 'newsletter');
});
($ok, $out, $err) = $coord->psql('postgres', q{INSERT INTO subscription VALUES (3, 'news')});
like($err, qr/subject 3 of kind "default" has not consented to "newsletter"/, 'a row of a subject without consent is refused on its worker');
$coord->safe_psql('postgres', q{SELECT gdpr_grant_consent(3, 'newsletter', 'v1')});
is($coord->safe_psql('postgres', q{INSERT INTO subscription VALUES (3, 'news') RETURNING customer_id}), '3',
	'once the subject consented on the coordinator, it is written');
$coord->safe_psql('postgres', q{SELECT gdpr_withdraw_consent(3, 'newsletter')});
($ok, $out, $err) = $coord->psql('postgres', q{UPDATE subscription SET customer_id = 3 WHERE customer_id = 3});
like($err, qr/has not consented to "newsletter"/, 'and refused again once it is withdrawn');
($ok, $out, $err) = $w1->psql('postgres', q{SELECT gdpr.require_consent('orders', 'customer_id', 'newsletter')});
like($err, qr/require_consent runs on the coordinator of a Citus cluster, not on a worker/, 'a requirement is set on the coordinator only');

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

# --- Erasure on the cluster ------------------------------------------------------------------
# As a role of gdpr_admin, which Citus connects to the workers as itself.
$coord->safe_psql('postgres', q{
    CREATE ROLE eraser LOGIN IN ROLE gdpr_admin;
    GRANT ALL ON customer, orders, address, memo, subscription TO eraser;
    INSERT INTO address VALUES (8, 8, 'Side Street 8'), (9, 9, 'Side Street 9'), (10, 10, 'Side Street 10');
    INSERT INTO memo VALUES (8, 8, 'memo of 8'), (9, 9, 'memo of 9'), (10, 10, 'memo of 10');
    UPDATE customer SET email = 'mail' || id::text || '@example.org' WHERE id BETWEEN 8 AND 12;
});
sub as_eraser
{
	my ($sql) = @_;
	return $coord->psql('postgres', $sql, extra_params => [ '-U', 'eraser' ]);
}
# Each node's trail, as a digest of its events (values included), and every row of the tables.
my $trails = q{SELECT md5(COALESCE(string_agg(concat_ws('/', event_id, event, subject_id, related_subject_ids,
                                                       old_values, new_values, detail), ',' ORDER BY event_id), ''))
                 FROM gdpr.audit_log};
my $rows = q{SELECT md5(string_agg(r, ',' ORDER BY r)) FROM (
                 SELECT c::text r FROM customer c UNION ALL SELECT o::text FROM orders o
                 UNION ALL SELECT a::text FROM address a UNION ALL SELECT m::text FROM memo m) x};
my $everything = sub { return on_all($trails) . '#' . $coord->safe_psql('postgres', $rows) };

# A legal hold refuses the erasure; no node changes.
$coord->safe_psql('postgres', q{SELECT gdpr.add_legal_hold('orders', $$note = 'order 11'$$, 'tax audit')});
my $before = $everything->();
($ok, $out, $err) = as_eraser(q{SELECT gdpr_erase(12)});
like($err, qr/subject 12 of kind "default" cannot be erased: 1 legal hold applies/, 'a legal hold on a distributed table refuses the erasure');
is($everything->(), $before, 'and every node, trail and rows, is as it was');
is($coord->safe_psql('postgres', q{SELECT gdpr_can_erase(12)->'holds'->0->>'reason'}), 'tax audit', 'gdpr_can_erase names the hold');

# A trial erasure (gdpr_can_erase) runs on every node and leaves no worker changed.
my $workers_before = join '|', map { $_->safe_psql('postgres', $trails) } grep { $_ != $coord } @nodes;
($ok, $out, $err) = as_eraser(q{SELECT gdpr_can_erase(8)});
like($out, qr/"can_erase": true/, 'gdpr_can_erase on the cluster answers yes');
like($out, qr/"workers_scrubbed": 3/, 'after a trial that reached the three workers');
is(join('|', map { $_->safe_psql('postgres', $trails) } grep { $_ != $coord } @nodes), $workers_before,
	'which it rolled back on each');

# Signals travel on the eraser's connections, so gdpr_admin may insert them; a forged one is refused.
$before = $everything->();
for my $op ('erase', 'scrub')
{
	($ok, $out, $err) = as_eraser(qq{INSERT INTO gdpr.cluster_signal VALUES ('$op', jsonb_build_object(
        'body', jsonb_build_object('kind', 'default', 'key', '9', 'subject_table', 'public.customer', 'tables', '[]'::jsonb, 'unlinked', '[]'::jsonb),
        'sent_at', now()::text, 'txn', '0/1/1', 'nonce', '00', 'sig', gdpr._pseudonym('$op')))});
	like($err, qr/cluster signal "$op" is not signed by this cluster's gdpr/, "a forged signal \"$op\" is refused, even signed with the pseudonym key");
}
# A signal signed with the right key (as someone who read one would have it) is taken only in its
# own distributed transaction, and only once there.
my $signal_key = $coord->safe_psql('postgres', q{SELECT encode(value, 'hex') FROM gdpr.secret WHERE name = 'cluster_signal_key'});
sub signal_sql
{
	my ($op, $txn) = @_;
	my $body = $coord->safe_psql('postgres', q{SELECT jsonb_build_object('kind', 'default', 'key', '9')::text});
	my $sent = $coord->safe_psql('postgres', q{SELECT now()::text});
	my $nonce = 'a' x 32;
	my $sig = hmac_sha256_hex(join("\x1f", $op, $sent, $txn, $nonce, $body), $signal_key);
	return qq{INSERT INTO gdpr.cluster_signal VALUES ('$op', jsonb_build_object('sent_at', '$sent', 'txn', '$txn',
        'nonce', '$nonce', 'sig', '$sig', 'body', '$body'::jsonb))};
}
my $txn_sql = q{SELECT concat_ws('/', initiator_node_identifier, transaction_number,
                                 (extract(epoch FROM transaction_stamp) * 1000000)::int8) FROM get_current_transaction_id()};
my $session = $coord->background_psql('postgres', on_error_stop => 0);
# the error of one statement of the session, cleared for the next
my $session_error = sub {
	$session->query($_[0]);
	my $e = $session->{stderr};
	$session->{stderr} = '';
	return $e;
};
$session->query_safe('BEGIN');
$session->query_safe('SELECT id FROM customer WHERE id = 9 FOR UPDATE');
my $txn = $session->query_safe($txn_sql);
($ok, $out, $err) = $coord->psql('postgres', signal_sql('scrub', $txn));
like($err, qr/cluster signal "scrub" belongs to another distributed transaction/, 'a signal of another transaction is refused');
$session->query_safe('SAVEPOINT s');
like($session_error->(signal_sql('erase', $txn)), qr/table \(none\) of the coordinator's erasure does not exist on this node/,
	'the same signal in its own transaction is taken (and its body checked)');
$session->query_safe('ROLLBACK TO SAVEPOINT s');
like($session_error->(signal_sql('erase', $txn)), qr/cluster signal "erase" was received before/,
	'but only once, whatever savepoint was rolled back since');
$session->query_safe('ROLLBACK');
$session->quit;
($ok, $out, $err) = $coord->psql('postgres', q{SET ROLE mallory; INSERT INTO gdpr.cluster_signal VALUES ('scrub', '{}')});
like($err, qr/permission denied for table cluster_signal/, 'a role outside gdpr_admin cannot send one');
is(on_all(q{SELECT count(*) FROM gdpr.cluster_signal}), '0|0|0|0', 'no signal is ever kept');
is($everything->(), $before, 'and nothing changed');

# A restricted subject is erased: its writes are the erasure's own on every worker.
$coord->safe_psql('postgres', q{SELECT gdpr_restrict(8, 'disputed')});
my @markers = ('mail8@example.org', 'Side Street 8', 'memo of 8');
my @others = ('mail9@example.org', 'Side Street 9', 'memo of 9');
($ok, $out, $err) = as_eraser(q{SELECT gdpr_erase(8)});
like($out, qr/"status": "erased"/, 'a restricted subject is erased on the cluster') or diag($err);
like($out, qr/"workers_scrubbed": 3/, 'every worker scrubbed its trail');
is($coord->safe_psql('postgres', q{SELECT (SELECT count(*) FROM orders WHERE customer_id = 8) + (SELECT count(*) FROM address WHERE customer_id = 8)
                                            + (SELECT count(*) FROM memo WHERE customer_id = 8)}),
	'0', 'its orders, address (reference table) and memo (local table) are gone');
is($coord->safe_psql('postgres', q{SELECT email IS NULL FROM customer WHERE id = 8}), 't', 'its customer row is kept, anonymized');
is(on_all(q{SELECT count(*) FROM gdpr.audit_log WHERE subject_id = '8' OR related_subject_ids @> ARRAY['8']}),
	'0|0|0|0', 'no node\'s trail names the subject');
is(on_all(q{SELECT count(*) FROM gdpr.cluster_bus WHERE payload::text ~ '"subject_id": "8"|disputed'}), '0|0|0|0',
	'the map the bus keeps on every node names no restricted subject by key, nor the reason');
is(on_all(q{SELECT count(*) FROM gdpr.restriction WHERE subject_id = '8'}), '0|0|0|0', 'and no node\'s restrictions do');
($ok, $out, $err) = $coord->psql('postgres', q{UPDATE customer SET name = 'again' WHERE id = 8});
like($err, qr/subject 8 of kind "default" was erased/, 'the worker refuses new writes about the erased subject');
my %dumped;
for my $node (@nodes)
{
	my $file = $node->basedir . '/after_erasure.sql';
	# Citus hides shards from other applications, pg_dump included, unless told not to
	local $ENV{PGOPTIONS} = '-c citus.override_table_visibility=off -c citus.enable_manual_changes_to_shards=on';
	$node->command_ok([ 'pg_dump', '-d', $node->connstr('postgres'), '-f', $file ], $node->name . ': pg_dump runs');
	my $dump = slurp_file($file);
	my @found = grep { index($dump, $_) >= 0 } @markers;
	is("@found", '', $node->name . ': none of the erased subject\'s values is in the dump, trail included');
	$dumped{$_} ||= index($dump, $_) >= 0 for @others;
}
is(join(',', grep { !$dumped{$_} } @others), '', 'while the values of the subject next to it are in the dumps');

# The coordinator's views of the map see the distributed tables (Citus hides the shards).
is($coord->safe_psql('postgres', q{SELECT string_agg(table_name::text || '.' || column_name, ',' ORDER BY table_name::text, column_name) FROM gdpr.coverage_gaps
                                    WHERE column_name IS NOT NULL}),
	'address.street,customer.name', 'gdpr.coverage_gaps on the coordinator names the unclassified columns of distributed and reference tables');
like($coord->safe_psql('postgres', q{SELECT gdpr_processing_record()}), qr/"public\.customer",\s*"public\.memo",\s*"public\.orders"/,
	'and the Art. 30 record lists distributed, reference-path and local tables alike');

# --- Retention: each node purges the shards it holds ------------------------------------------
$coord->safe_psql('postgres', q{
    ALTER TABLE orders ADD COLUMN placed_at timestamptz;
    INSERT INTO orders (id, customer_id, note, placed_at)
    SELECT 1000 + g, (ARRAY[1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20])[1 + g % 18],
           'old order ' || g, now() - interval '3 years'
      FROM generate_series(1, 40) g;
    INSERT INTO orders (id, customer_id, note, placed_at) VALUES (2000, 1, 'recent order', now());
});
my $old = q{SELECT count(*) FROM orders WHERE note LIKE 'old order %'};
is($coord->safe_psql('postgres', $old), '40', 'old orders of several subjects, on every worker');
$coord->safe_psql('postgres', q{
    SELECT gdpr.set_retention('orders', 'placed_at', '2 years');
    SELECT gdpr.add_legal_hold('orders', $$note = 'old order 5'$$, 'disputed delivery');
    SELECT gdpr_restrict(15, 'kept for a legal claim');
});
is(on_all(q{SELECT count(*) FROM gdpr.retention_policy WHERE relid = 'orders'::regclass}), '1|1|1|1',
	'a policy set on the coordinator is on every node');
is(on_all(q{SELECT count(*) FROM gdpr.legal_hold WHERE relid = 'orders'::regclass}), '2|2|2|2', 'and so are the holds');
$_->safe_psql('postgres', q{SELECT count(*) FROM gdpr_enforce_retention()}) for @nodes;
is($coord->safe_psql('postgres', q{SELECT string_agg(note, ',' ORDER BY note) FROM orders WHERE note LIKE 'old order %'}),
	'old order 12,old order 30,old order 5',
	'each worker purged its expired orders, but the held one and the restricted subject\'s');
is($coord->safe_psql('postgres', q{SELECT count(*) FROM orders WHERE note = 'recent order'}), '1', 'and nothing recent');
is(on_all(q{SELECT count(*) FROM gdpr.audit_log WHERE event = 'DELETE' AND old_values::text LIKE '%old order%'}),
	'0|0|0|0', 'the purge leaves no copy of the rows in any node\'s trail');
my @retained = map { $_->safe_psql('postgres', q{SELECT COALESCE(sum((detail->>'rows')::int), 0) FROM gdpr.audit_log
                                                  WHERE event = 'RETENTION' AND table_name = 'public.orders'}) } @nodes;
my $purged = 0;
$purged += $_ for @retained;
is($purged, 37, 'each batch is one RETENTION event of its node, under the distributed table\'s name');
cmp_ok(scalar(grep { $_ > 0 } @retained), '>=', 2, 'recorded by the nodes that hold the shards');

# A reference table is purged through the coordinator, every copy by the same keys, in one
# distributed transaction; a worker's pass leaves its copy to the coordinator.
$coord->safe_psql('postgres', q{
    INSERT INTO address (id, customer_id, street, at) VALUES
        (601, 15, 'Claim Street 15', now() - interval '3 years'),
        (602, 16, 'Leaving Street 16', now() - interval '3 years'),
        (603, 17, 'Old Street 17', now() - interval '3 years'),
        (604, 18, 'Held Street 18', now() - interval '3 years'),
        (605, 19, 'New Street 19', now()),
        (606, 20, 'Old Street 20', now() - interval '3 years');
    SELECT gdpr.set_retention('address', 'at', '2 years');
    SELECT gdpr.add_legal_hold('address', $$street LIKE 'Held %'$$, 'disputed delivery');
    SELECT gdpr_request_erasure(16);
});
my $copy = 'address_' . $coord->safe_psql('postgres', q{SELECT shardid FROM pg_dist_shard WHERE logicalrelid = 'address'::regclass});
my $copies = qq{SELECT string_agg(id::text, ',' ORDER BY id) FROM $copy WHERE id > 600};
as_eraser(q{SELECT gdpr_request_erasure(20, interval '0')});
$_->safe_psql('postgres', q{SELECT count(*) FROM gdpr_enforce_retention()}) for grep { $_ != $coord } @nodes;
is($coord->safe_psql('postgres', q{SELECT error FROM gdpr_enforce_retention() WHERE table_name = 'gdpr.erasure_request'}),
	'due erasures left to a transaction of their own: this one purged a Citus reference or local table; run gdpr.run_due_erasures()',
	'a pass that purged a reference table leaves the due erasures to a transaction of their own (Citus lets one role only write reference tables in one)');
($ok, $out, $err) = as_eraser(q{SELECT string_agg(status, ',') FROM gdpr.run_due_erasures()});
is($out, 'done', 'where they run') or diag($err);
is(on_all($copies), join('|', ('601,604,605') x 4),
	'every copy lost the same expired rows, but the held one, the restricted subject\'s and the recent one');
is(on_all(q{SELECT count(*) FROM gdpr.audit_log WHERE event = 'DELETE' AND table_name = 'public.address' AND (row_key->>'id')::int > 600}),
	'0|0|0|0', 'no copy left a DELETE event in its node\'s trail');
is(on_all(q{SELECT COALESCE(sum((detail->>'rows')::int), 0) FROM gdpr.audit_log WHERE event = 'RETENTION' AND table_name = 'public.address'}),
	'3|0|0|0', 'the purge is a RETENTION event of the coordinator, which records the table\'s changes');
($ok, $out, $err) = $w1->psql('postgres', q{SELECT gdpr._retention_batch('address', 10, false)});
like($err, qr/retention of public.address runs on the coordinator, not on a worker/, 'a worker does not purge its copy alone');
($ok, $out, $err) = $coord->psql('postgres', qq{SELECT gdpr._retention_batch('$copy', 10, false)});
like($err, qr/$copy is a copy of public.address, which retention purges through the coordinator/, 'nor one copy named as a shard');
$coord->safe_psql('postgres', q{SELECT gdpr_cancel_erasure(16)});
$coord->safe_psql('postgres', q{SELECT gdpr_unrestrict(15)});

# Holds written directly (gdpr_admin may) reach the workers too; on a worker they are the map's.
$coord->safe_psql('postgres', q{INSERT INTO gdpr.legal_hold (relid, condition, reason) VALUES ('orders', 'id = 2000', 'written by hand')});
is(on_all(q{SELECT count(*) FROM gdpr.legal_hold WHERE reason = 'written by hand'}), '1|1|1|1', 'a hold inserted directly reaches every node');
($ok, $out, $err) = $w1->psql('postgres', q{DELETE FROM gdpr.legal_hold}, extra_params => [ '-U', 'eraser' ]);
like($err, qr/gdpr.legal_hold of a Citus worker is the coordinator's/, 'and cannot be taken away on a worker');

# A worker killed in the middle of an erasure: the erasure fails, and no node changes.
my $holder9 = $coord->safe_psql('postgres', q{
    SELECT nodeport FROM pg_dist_shard_placement WHERE shardid = get_shard_id_for_distribution_column('orders', 9)});
my ($w9) = grep { $_->port == $holder9 } @nodes;
$before = $everything->();
# the subject's orders are locked on the worker itself, so that the erasure waits there, in its middle
my $shard9 = $w9->safe_psql('postgres', q{SELECT shard_name('orders'::regclass, get_shard_id_for_distribution_column('orders', 9))});
my $locker = $w9->background_psql('postgres');
$locker->query_safe('BEGIN');
$locker->query_safe("SELECT * FROM $shard9 WHERE customer_id = 9 FOR UPDATE");
my ($in, $eout, $eerr) = ("SELECT gdpr_erase(9);\n", '', '');
my $erasure = IPC::Run::start([ 'psql', '-X', '-d', $coord->connstr('postgres') . ' user=eraser', '-f', '-' ],
	'<', \$in, '>', \$eout, '2>', \$eerr);
my $waiting = 0;
for (1 .. 600)
{
	$erasure->pump_nb;		# IPC::Run feeds psql its input only when pumped
	$waiting = $w9->safe_psql('postgres', q{SELECT EXISTS (SELECT FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND usename = 'eraser')}) eq 't';
	last if $waiting;
	select(undef, undef, undef, 0.1);
}
ok($waiting, 'the erasure waits on the worker that holds the subject\'s orders');
$w9->stop('immediate');
$erasure->finish;
eval { $locker->quit; };
like($eerr, qr/ERROR/, 'the erasure fails when its worker dies') or diag("stdout: $eout");
$w9->start;
is($everything->(), $before, 'and no node, trail or rows, changed');
is($coord->safe_psql('postgres', q{SELECT count(*) FROM gdpr.erasure}), '2', 'no erasure is recorded (subjects 8 and 20 were erased before)');
($ok, $out, $err) = as_eraser(q{SELECT gdpr_erase(9)->>'status'});
is($out, 'erased', 'the same erasure succeeds once the worker is back');
is(on_all(q{SELECT count(*) FROM gdpr.audit_log WHERE subject_id = '9' OR related_subject_ids @> ARRAY['9']}),
	'0|0|0|0', 'and no node\'s trail names that subject any more');

# Several erasures in one transaction, as gdpr.run_due_erasures() runs them, with legal holds to
# check: the holds are evaluated as the tables' owner over rows the eraser read, since Citus
# refuses another role on placements the transaction changed.
as_eraser(q{SELECT gdpr_request_erasure(2, interval '0'); SELECT gdpr_request_erasure(3, interval '0')});
($ok, $out, $err) = as_eraser(q{SELECT string_agg(status, ',') FROM gdpr.run_due_erasures()});
is($out, 'done,done', 'two due erasures in one transaction both succeed') or diag($err);
is($coord->safe_psql('postgres', q{SELECT count(*) FROM orders WHERE customer_id IN (2, 3)}), '0', 'and their rows are gone');
($ok, $out, $err) = as_eraser(q{BEGIN; SELECT gdpr_erase(5)->>'status'; SELECT gdpr_can_erase(6)->>'can_erase'; COMMIT;});
is($out, "erased\nfalse", 'a legal hold still refuses, checked after another erasure in the transaction') or diag($err);

# --- Read auditing: the node that reads a row records whose it was ----------------------------
$coord->safe_psql('postgres', q{
    SELECT gdpr.set_read_audit('customer');
    SELECT gdpr.set_read_audit('orders');
    SELECT gdpr.set_read_audit('address');
    CREATE ROLE reader LOGIN;
    GRANT SELECT ON customer, orders, address TO reader;
});
is(on_all(q{SELECT string_agg(gdpr._qualified(relid), ',' ORDER BY relid::text) FROM gdpr.registered_table WHERE read_audit}),
	join('|', ('public.address,public.customer,public.orders') x 4), 'read auditing set on the coordinator is on every node');
my $holder_of = sub {
	my ($table, $key) = @_;
	my $port = $coord->safe_psql('postgres', qq{
        SELECT nodeport FROM pg_dist_shard_placement WHERE shardid = get_shard_id_for_distribution_column('$table', $key)});
	my ($node) = grep { $_->port == $port } @nodes;
	return $node;
};
# each node's queue written out: its READ events are in its trail
my $flushed = sub {
	$_->poll_query_until('postgres', q{SELECT used_bytes = 0 FROM gdpr.event_queue}) for @nodes;
};
my $reads_by = q{SELECT COALESCE(string_agg(table_name || ':' || array_to_string(related_subject_ids, ','), ' ' ORDER BY table_name), '')
                   FROM gdpr.audit_log WHERE event = 'READ' AND effective_role = '%s'};
$coord->safe_psql('postgres', q{SELECT email FROM customer WHERE id = 11; SELECT street FROM address WHERE customer_id = 10},
	extra_params => [ '-U', 'reader' ]);
my $w11 = $holder_of->('customer', 11);
ok($w11->poll_query_until('postgres', q{SELECT count(*) > 0 FROM gdpr.audit_log WHERE event = 'READ' AND effective_role = 'reader'}),
	'a read of a distributed table is recorded by the worker that holds the row');
$flushed->();
is($w11->safe_psql('postgres', sprintf($reads_by, 'reader')), 'public.customer:11', 'attributed to its subject, under the table\'s name');
is($coord->safe_psql('postgres', sprintf($reads_by, 'reader')), 'public.address:10', 'a reference table\'s row, by the node whose copy was read');

# A reference table's purge is no read: not the coordinator's pick of its keys, nor any copy's delete.
$coord->safe_psql('postgres', q{INSERT INTO address (id, customer_id, street, at) VALUES (608, 13, 'Gone Street 13', now() - interval '3 years')});
$coord->safe_psql('postgres', q{SELECT street FROM address WHERE id = 608}, extra_params => [ '-U', 'reader' ]);
$coord->safe_psql('postgres', q{SELECT count(*) FROM gdpr_enforce_retention()});
is($coord->safe_psql('postgres', q{SELECT count(*) FROM address WHERE id = 608}), '0',
	'with read auditing on, a reference table\'s expired row is purged');
$flushed->();
is(on_all(q{SELECT string_agg(effective_role, ',') FROM gdpr.audit_log
             WHERE event = 'READ' AND table_name = 'public.address' AND related_subject_ids @> ARRAY['13']}),
	'reader|||', 'the reader\'s read of it is recorded, and no node records one by the purge');

# The rights functions' own statements on the workers are not reads; a read after them, in their
# transaction, is.
($ok, $out, $err) = as_eraser(q{BEGIN; SELECT gdpr_can_erase(12)->>'can_erase'; SELECT gdpr_can_erase(14)->>'can_erase';
                                  SELECT note FROM orders WHERE customer_id = 13; COMMIT;});
like($out, qr/^false\ntrue\n/, 'with read auditing on: a check refused by a hold, a check with its trial erasure');
($ok, $out, $err) = as_eraser(q{BEGIN; SELECT gdpr_erase(4)->>'status'; SELECT gdpr_erase(8)->>'status';
                                  SELECT note FROM orders WHERE customer_id = 13; COMMIT;});
like($out, qr/^erased\nalready_erased\n/, 'an erasure, and one with nothing left to erase');
my $w13 = $holder_of->('orders', 13);
ok($w13->poll_query_until('postgres', q{SELECT count(*) > 1 FROM gdpr.audit_log WHERE event = 'READ' AND effective_role = 'eraser'}),
	'the reads after them are recorded');
$flushed->();
is(on_all(sprintf($reads_by, 'eraser')), join('|', map { $_ == $w13 ? 'public.orders:13 public.orders:13' : '' } @nodes),
	'and they are the only reads of the eraser\'s transactions on any node: the rights functions\' statements are their own');

# Each node's trail is its own chain, and verifies.
is(on_all(q{SELECT gdpr.seal_audit() >= 0 AND (gdpr_verify_audit()->>'ok')::boolean}), 't|t|t|t', 'every node\'s trail seals and verifies');

$_->stop for @nodes;
done_testing();
