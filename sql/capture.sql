-- Capture cannot be switched off quietly, and application events cannot pose as the system.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE ROLE regress_cap_owner LOGIN;
CREATE ROLE regress_cap_dpo LOGIN IN ROLE gdpr_admin;
CREATE ROLE regress_cap_app LOGIN;
CREATE SCHEMA cap AUTHORIZATION regress_cap_owner;
GRANT USAGE ON SCHEMA cap TO PUBLIC;
SET ROLE regress_cap_owner;
CREATE TABLE cap.person (id int PRIMARY KEY, name text);
CREATE TABLE cap.orders (id int PRIMARY KEY, person_id int REFERENCES cap.person, item text);
CREATE TABLE cap.visit (id int, person_id int REFERENCES cap.person, at date NOT NULL, PRIMARY KEY (id, at))
    PARTITION BY RANGE (at);
CREATE TABLE cap.visit_2026 PARTITION OF cap.visit FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA cap TO regress_cap_dpo, regress_cap_app;
RESET ROLE;
SELECT gdpr.register_subject('cap.person', 'id', kind => 'cap');
SELECT gdpr.register_table('cap.orders', kind => 'cap');
SELECT gdpr.register_table('cap.visit', kind => 'cap');
INSERT INTO cap.person VALUES (1, 'Ann');
CREATE VIEW cap.triggers AS
SELECT c.relname, g.tgname, g.tgenabled FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid
 WHERE g.tgname LIKE 'gdpr_audit%' AND c.relnamespace = 'cap'::regnamespace ORDER BY 1, 2;
-- The triggers fire ALWAYS, partitions' too.
TABLE cap.triggers;

-- 1. The table's owner cannot switch capture off, in any of the ways DDL offers.
SET ROLE regress_cap_owner;
ALTER TABLE cap.orders DISABLE TRIGGER USER;
ALTER TABLE cap.orders DISABLE TRIGGER gdpr_audit_row;
ALTER TABLE cap.orders ENABLE REPLICA TRIGGER gdpr_audit_row;
ALTER TABLE cap.orders ENABLE TRIGGER gdpr_audit_row;          -- would stop it firing in replica mode
ALTER TABLE cap.visit_2026 DISABLE TRIGGER USER;
DROP TRIGGER gdpr_audit_row ON cap.orders;
DROP TRIGGER gdpr_audit_truncate ON cap.visit_2026;
ALTER TRIGGER gdpr_audit_row ON cap.orders RENAME TO quiet;
CREATE OR REPLACE TRIGGER gdpr_audit_row AFTER INSERT ON cap.orders
    FOR EACH ROW WHEN (false) EXECUTE FUNCTION gdpr.audit_row();
CREATE OR REPLACE TRIGGER gdpr_audit_truncate AFTER TRUNCATE ON cap.orders
    FOR EACH STATEMENT EXECUTE FUNCTION gdpr.audit_row();
-- Renaming or moving the table keeps its triggers and their guard.
ALTER TABLE cap.orders RENAME TO purchase;
ALTER TABLE cap.purchase DISABLE TRIGGER USER;
ALTER TABLE cap.purchase RENAME TO orders;
-- A partition attached later gets its triggers, firing ALWAYS.
CREATE TABLE cap.visit_2027 (id int, person_id int, at date NOT NULL, PRIMARY KEY (id, at));
ALTER TABLE cap.visit ATTACH PARTITION cap.visit_2027 FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
RESET ROLE;
TABLE cap.triggers;
-- 2. Nor can gdpr_admin, nor a superuser who has not said so.
SET ROLE regress_cap_dpo;
ALTER TABLE cap.orders DISABLE TRIGGER USER;
RESET ROLE;
ALTER TABLE cap.orders DISABLE TRIGGER USER;
SELECT count(*) AS capture_gaps FROM gdpr.coverage_gaps WHERE reason LIKE '%not captured%';

-- 3. A superuser who sets gdpr.allow_capture_off may, and it is recorded; the gap shows in
-- gdpr.coverage_gaps and in the verification, until gdpr.repair_capture() puts capture back.
SET gdpr.allow_capture_off = on;
SET ROLE regress_cap_owner;
ALTER TABLE cap.orders DISABLE TRIGGER USER;                  -- not for the owner, even then
RESET ROLE;
ALTER TABLE cap.orders DISABLE TRIGGER USER;
RESET gdpr.allow_capture_off;
INSERT INTO cap.orders VALUES (1, 1, 'unseen');
SELECT event, table_name, detail->>'command' AS command, detail->>'problems' AS problems
  FROM gdpr.audit_log WHERE event = 'AUDIT_OFF';
SELECT table_name, reason FROM gdpr.coverage_gaps WHERE reason LIKE '%not captured%' ORDER BY 2;
SELECT v->>'ok' AS ok, v->'first_bad'->>'problem' AS problem, v->'first_bad'->>'detail' AS detail FROM gdpr_verify_audit() v;
SET ROLE regress_cap_dpo;
SELECT gdpr.repair_capture();                                  -- not the owner: refused
RESET ROLE;
SELECT gdpr.repair_capture();
TABLE cap.triggers;
SELECT count(*) AS capture_gaps FROM gdpr.coverage_gaps WHERE reason LIKE '%not captured%';
INSERT INTO cap.orders VALUES (2, 1, 'seen');
SELECT event, row_key FROM gdpr.audit_log WHERE table_name = 'cap.orders' AND event = 'INSERT';

-- 4. session_replication_role = replica does not silence capture; a subscriber whose trail the
-- publisher keeps turns gdpr.audit_replicated off.
SET session_replication_role = replica;
INSERT INTO cap.orders VALUES (3, 1, 'replicated');
SET gdpr.audit_replicated = off;
INSERT INTO cap.orders VALUES (4, 1, 'applied by a subscriber');
RESET gdpr.audit_replicated;
RESET session_replication_role;
SELECT row_key FROM gdpr.audit_log WHERE table_name = 'cap.orders' AND event = 'INSERT' ORDER BY event_id;
SET ROLE regress_cap_app;
SET gdpr.audit_replicated = off;
RESET ROLE;

-- 5. Application events cannot pose as the extension's: its names are refused, in any case.
SET ROLE regress_cap_app;
SELECT gdpr.log_event('DELETE', '1', kind => 'cap');
SELECT gdpr.log_event('erase', '1', detail => '{"redacted": 5}', kind => 'cap');
SELECT gdpr.log_event('MAP_REGISTER', NULL::text, table_name => 'cap.orders');
SELECT gdpr.log_event('Consent_Granted', '1', kind => 'cap');
SELECT gdpr.log_event('AUDIT_OFF');
SELECT gdpr.log_event('USER_LOGIN', '1', kind => 'cap') > 0 AS logged;
-- The extension's own writers are out of reach.
SELECT gdpr._log_event('ERASE', '1', kind => 'cap');
SELECT gdpr._log_ddl_event('DDL', '{}', NULL, 'cap.orders');
-- Not even from inside a DDL command of one's own, whose event trigger state SQL can see.
CREATE TEMP TABLE forged AS SELECT gdpr._log_ddl_event('AUDIT_OFF', '{"command": "ALTER TABLE"}', NULL, 'cap.orders');
RESET ROLE;
SELECT gdpr._log_ddl_event('AUDIT_OFF', '{}', NULL, 'cap.orders');
SELECT event FROM gdpr.audit_log WHERE subject_kind = 'cap' AND event NOT IN ('INSERT') ORDER BY event_id;

SET client_min_messages = error;
DROP SCHEMA cap CASCADE;
DELETE FROM gdpr.subject_kind WHERE kind = 'cap';
DROP OWNED BY regress_cap_owner, regress_cap_dpo, regress_cap_app;
DROP ROLE regress_cap_owner, regress_cap_dpo, regress_cap_app;
