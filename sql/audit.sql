-- Audit capture by the C triggers.
\set SHOW_CONTEXT never
SET search_path = shop, public;
CALL reset_trail();

SET gdpr.actor = 'alice@app';
SET gdpr.user_agent = 'Mozilla/5.0';
INSERT INTO address VALUES (1, 'Main st 1', 'Ghent'), (2, 'Shared st 2', 'Ghent');
INSERT INTO staff VALUES (7, 'Sam', 2);
INSERT INTO customer VALUES (1, 'ann@example.com', 'Ann', 'hash1', 1, 7),
                            (2, 'bob@example.com', 'Bob', 'hash2', 2, 7);
INSERT INTO orders VALUES (10, 1, 25.00), (20, 2, 5.00);
INSERT INTO order_item VALUES (10, 1, 'book'), (10, 2, 'pen'), (20, 1, 'cup');
INSERT INTO rental VALUES (100, 1);
INSERT INTO payment VALUES (1000, 1, 100, 3.5);
INSERT INTO visit VALUES (1, '2025-05-01', 1, '/home'), (2, '2026-02-01', 1, '/cart');
INSERT INTO billing.invoice VALUES (2025, 1, 1, 25.00);
INSERT INTO billing.invoice_line VALUES (2025, 1, 1, 'book');
INSERT INTO message VALUES (1, 1, 2, 'bob@example.com', 'hello Bob');

-- Every row is attributed to its subject, through every kind of path.
SELECT event, table_name, subject_kind, subject_id, related_subject_ids, row_key FROM trail;
-- Row images and context; the secret column never appears.
SELECT new_values, actor FROM trail WHERE table_name = 'shop.customer';
SELECT count(*) FROM gdpr.audit_log WHERE new_values ? 'password_hash' OR old_values ? 'password_hash';
SELECT DISTINCT user_agent, session_role, effective_role, application_name,
       client_addr IS NOT DISTINCT FROM inet_client_addr() AS client_addr_is_connection
  FROM gdpr.audit_log;
SELECT count(DISTINCT txid) AS transactions,
       bool_and(retention_until > now() + interval '6 years 11 months') AS seven_years
  FROM gdpr.audit_log;

CALL reset_trail();
-- Updates keep the changed columns only (gdpr.audit_values = changed), secret changes are named
-- but their values are not kept.
UPDATE customer SET full_name = 'Anne', password_hash = 'hash1b' WHERE id = 1;
-- An UPDATE that changes nothing is not recorded, unless gdpr.audit_unchanged_updates says so.
UPDATE customer SET full_name = full_name WHERE id = 2;
SET gdpr.audit_unchanged_updates = on;
UPDATE customer SET full_name = full_name WHERE id = 2;
RESET gdpr.audit_unchanged_updates;
SELECT event, subject_id, changed_columns, old_values, new_values FROM trail;

CALL reset_trail();
SET gdpr.audit_values = 'full';
UPDATE orders SET total = 30 WHERE id = 10;
SET gdpr.audit_values = 'none';
UPDATE orders SET total = 31 WHERE id = 10;
RESET gdpr.audit_values;
SELECT event, changed_columns, old_values, new_values FROM trail;

CALL reset_trail();
-- Deletes, partitions (the root table is named), COPY.
DELETE FROM order_item WHERE order_id = 20;
UPDATE visit SET at = '2025-06-01' WHERE id = 2;          -- moves between partitions
COPY order_item FROM stdin;
20	5	lamp
\.
SELECT event, table_name, subject_id, row_key, old_values, new_values FROM trail;

CALL reset_trail();
-- TRUNCATE is a statement event; on a partitioned table each partition is named.
TRUNCATE order_item;
TRUNCATE visit;
TRUNCATE visit_2026;
SELECT event, table_name, detail FROM trail ORDER BY detail::text;

CALL reset_trail();
-- The proxy's view of the client, and application events.
SET gdpr.client_addr = '203.0.113.7';
SELECT gdpr.log_event('USER_LOGIN', 1) IS NOT NULL AS logged;
SELECT gdpr.log_event('USER_LOGIN_FAILED', '2', success => false, detail => '{"reason": "bad password"}') IS NOT NULL AS logged;
SELECT gdpr.log_event('DATA_VIEW', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, kind => 'member') IS NOT NULL AS logged;
SELECT gdpr.log_event('SYSTEM_NOTE') IS NOT NULL AS logged;
RESET gdpr.client_addr;
SELECT event, success, subject_kind, subject_id, detail FROM trail;
SELECT DISTINCT client_addr FROM gdpr.audit_log;

-- Rolled back changes leave no event.
CALL reset_trail();
BEGIN;
INSERT INTO rental VALUES (101, 2);
ROLLBACK;
SELECT count(*) FROM gdpr.audit_log;

-- Nobody but gdpr_auditor reads the trail, and nobody writes it directly.
CREATE ROLE regress_app_user LOGIN;
CREATE ROLE regress_auditor LOGIN IN ROLE gdpr_auditor;
GRANT USAGE ON SCHEMA shop TO regress_app_user;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA shop TO regress_app_user;
SET ROLE regress_app_user;
INSERT INTO rental VALUES (102, 2);                   -- audited although regress_app_user cannot write the trail
SELECT count(*) FROM gdpr.audit_log;
INSERT INTO gdpr.audit_log (event, retention_until) VALUES ('FORGED', now());
DELETE FROM gdpr.audit_log;
SELECT gdpr.log_event('USER_LOGOUT', 2) IS NOT NULL AS logged;
RESET ROLE;
SET ROLE regress_auditor;
SELECT event, table_name, subject_id, session_role, effective_role FROM gdpr.audit_log
 WHERE event <> 'DDL' ORDER BY event_id;
SELECT count(*) AS grant_events FROM gdpr.audit_log WHERE event = 'DDL' AND detail->>'command' = 'GRANT';
UPDATE gdpr.audit_log SET subject_id = 'x';
RESET ROLE;
