-- gdpr demo: a small shop puts GDPR duties into its database.
\set QUIET on
SET client_min_messages = warning;
CREATE EXTENSION gdpr;
CREATE TABLE customer (id bigint PRIMARY KEY, email text UNIQUE NOT NULL, full_name text,
                       password_hash text, address_id int);
CREATE TABLE address (id int PRIMARY KEY, street text, city text);
ALTER TABLE customer ADD FOREIGN KEY (address_id) REFERENCES address;
CREATE TABLE orders (id int PRIMARY KEY, customer_id bigint REFERENCES customer, total numeric(10,2));
CREATE TABLE order_item (order_id int REFERENCES orders, line int, product text, PRIMARY KEY (order_id, line));
CREATE TABLE invoice (no int PRIMARY KEY, customer_id bigint REFERENCES customer, total numeric(10,2));
CREATE TABLE newsletter (id int PRIMARY KEY, customer_id bigint REFERENCES customer, email text);
\set QUIET off

\echo
\echo '== 1. Map the personal data: who the subjects are, which tables hold data about them'
SELECT gdpr.register_subject('customer', 'id');
SELECT gdpr.register_table('address');                        -- the customer row points to it
SELECT gdpr.register_table('orders');
SELECT gdpr.register_table('order_item');                     -- found through orders
SELECT gdpr.register_table('invoice', on_erase => 'anonymize'); -- the law says keep invoices
SELECT gdpr.classify_column('customer', 'email', 'contact');
SELECT gdpr.classify_column('customer', 'full_name', 'identity');
SELECT gdpr.classify_column('customer', 'password_hash', 'secret');
SELECT gdpr.classify_column('address', 'street', 'location');
SELECT gdpr.describe_table('invoice', purpose => 'invoicing', legal_basis => 'legal_obligation',
                           retention => '10 years', recipients => '{accountant,tax authority}');
SELECT table_name, path, hops, on_erase, columns FROM gdpr.map ORDER BY hops, table_name::text;

\echo '== 2. What is not covered yet?'
SELECT * FROM gdpr.coverage_gaps ORDER BY 1, 2;

\echo '== 3. Every change is audited by C triggers, attributed to its subject'
SET gdpr.actor = 'alice@shop.example';        -- the application says who its user is
INSERT INTO address VALUES (1, 'Main street 1', 'Ghent');
INSERT INTO customer VALUES (42, 'ann@example.com', 'Ann', '$2b$12$secret', 1);
INSERT INTO orders VALUES (7, 42, 19.90);
INSERT INTO order_item VALUES (7, 1, 'book'), (7, 2, 'pen');
UPDATE customer SET full_name = 'Ann Smith', password_hash = '$2b$12$other' WHERE id = 42;
SELECT gdpr.log_event('USER_LOGIN', 42, detail => '{"method": "password"}');
SELECT event, table_name, subject_id, changed_columns, old_values, new_values, actor
  FROM gdpr.audit_log WHERE subject_id = '42' ORDER BY event_id;

\echo '== 4. DDL on personal data is recorded too, and the map follows the schema'
ALTER TABLE customer ADD COLUMN phone text;
GRANT SELECT ON customer TO PUBLIC;
SELECT event, table_name, detail FROM gdpr.audit_log WHERE event = 'DDL' ORDER BY event_id;

\echo '== 5. Art. 15: everything about customer 42, as JSONB'
SELECT jsonb_pretty(gdpr_export(42) - 'audit');
SELECT e->>'event' AS event, e->>'table' AS "table", e->>'actor' AS actor FROM jsonb_array_elements(gdpr_export(42)->'audit') e;
\echo '   ... and where an index is missing for it'
SELECT table_name, lookup, hint FROM gdpr.export_plan() WHERE NOT indexed;

\echo '== 6. The trail is sealed into a hash chain; keep the digest somewhere else'
SELECT gdpr.seal_audit() AS sealed;
SELECT gdpr_audit_digest() AS digest \gset
SELECT :'digest'::jsonb - 'sealed_at' AS digest_to_keep_elsewhere;
\set ON_ERROR_STOP off
UPDATE gdpr.audit_log SET actor = 'nobody';              -- refused, superusers included
\set ON_ERROR_STOP on

\echo '== 7. Art. 17: erase customer 42 -- a legal hold first, then the erasure'
INSERT INTO invoice VALUES (1001, 42, 19.90);
SELECT gdpr.add_legal_hold('invoice', 'total > 100', 'invoices over 100 are kept 10 years (tax law)');
SELECT gdpr_can_erase(42);
SELECT jsonb_pretty(gdpr_erase(42, dry_run => true) -> 'tables');
SELECT gdpr_erase(42) ->> 'status' AS status;
SELECT * FROM customer;
SELECT * FROM invoice;                                   -- kept by law, anonymized where classified
SELECT event, table_name, subject_id, old_values, new_values FROM gdpr.audit_log
 WHERE subject_kind = 'default' ORDER BY event_id;        -- the history stays, without values
\echo '   ... and the chain still verifies, through the digest kept before the erasure'
SELECT gdpr.seal_audit() AS sealed;
SELECT jsonb_pretty(gdpr_verify_audit(:'digest') - 'last_hash');
\echo '   ... while a superuser who edits the trail behind the triggers is caught'
BEGIN;
SET LOCAL session_replication_role = replica;
UPDATE gdpr.audit_log SET actor = 'nobody' WHERE event_id = (SELECT min(event_id) FROM gdpr.audit_log);
SELECT gdpr_verify_audit() -> 'first_bad' AS first_bad;
ROLLBACK;

\echo '== 8. Retention: login addresses older than 90 days are masked; the worker does this on its own'
CREATE TABLE login_history (id int PRIMARY KEY, customer_id bigint REFERENCES customer, at timestamptz, ip inet);
SELECT gdpr.register_table('login_history');
SELECT gdpr.classify_column('login_history', 'ip', 'online_id', erase => 'mask');
INSERT INTO customer VALUES (43, 'bo@example.com', 'Bo', 'x', NULL);
INSERT INTO login_history SELECT g, 43, now() - g * interval '10 days', ('198.51.100.' || g)::inet FROM generate_series(1, 40) g;
SELECT gdpr.set_retention('login_history', 'at', '90 days', action => 'anonymize');
SELECT * FROM gdpr_enforce_retention(dry_run => true);
SELECT * FROM gdpr_enforce_retention();
SELECT at::date, ip FROM login_history ORDER BY id LIMIT 12;

\echo '== 9. Reads of personal data go to the server log (library preloaded, gdpr.audit_reads = on)'
SET gdpr.audit_reads = on;
SELECT count(*) FROM customer c JOIN orders o ON o.customer_id = c.id;

\echo '== 10. Who read whose data: read-audited tables record whose rows each statement read'
RESET gdpr.audit_reads;
SELECT gdpr.set_read_audit('customer');
SELECT gdpr.set_read_audit('orders');
SET gdpr.actor = 'support@shop';
SELECT full_name FROM customer WHERE id = 43;
SELECT count(*) FROM orders WHERE customer_id = 43;
RESET gdpr.actor;
-- the writer puts the reads in the trail a moment later
DO $$ BEGIN
    FOR i IN 1..100 LOOP
        EXIT WHEN (SELECT used_bytes = 0 FROM gdpr.event_queue);
        PERFORM pg_sleep(0.1);
    END LOOP;
END $$;
SELECT event_time IS NOT NULL AS at, actor, table_name, bulk, rows_read FROM gdpr_access_log(43);
SELECT gdpr_export(43) -> 'accessed_by' -> 'readers';
