-- DDL on registered tables is recorded, and the map follows drops.
\set SHOW_CONTEXT never
SET search_path = shop, public;
CALL reset_trail();

ALTER TABLE customer ADD COLUMN phone text;
CREATE INDEX ON customer (full_name);
COMMENT ON TABLE customer IS 'our customers';
GRANT SELECT ON customer TO regress_app_user;
REVOKE SELECT ON customer FROM regress_app_user;
ALTER TABLE customer DISABLE TRIGGER gdpr_audit_row;
ALTER TABLE customer ENABLE TRIGGER gdpr_audit_row;
CREATE TABLE not_personal (id int PRIMARY KEY);       -- not registered: not recorded
ALTER TABLE not_personal ADD COLUMN x int;
SELECT event, table_name, detail FROM trail;

CALL reset_trail();
-- A new partition of a registered table is covered, TRUNCATE trigger included.
CREATE TABLE visit_2027 PARTITION OF visit FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
SELECT tgname FROM pg_trigger WHERE tgrelid = 'visit_2027'::regclass ORDER BY tgname;
INSERT INTO visit VALUES (3, '2027-03-01', 2, '/new');
TRUNCATE visit_2027;
SELECT event, table_name, subject_id, detail->>'command' AS command, detail->>'partition' AS part FROM trail;

CALL reset_trail();
-- Dropping a classified column removes its classification.
SELECT gdpr.classify_column('customer', 'phone', 'contact');
ALTER TABLE customer DROP COLUMN phone;
SELECT count(*) FROM gdpr.column_class WHERE column_name = 'phone';
-- Dropping a column a path uses drops the path, with a warning.
ALTER TABLE message DROP COLUMN recipient_id;
SELECT path_name FROM gdpr.subject_path WHERE relid = 'message'::regclass;
-- Dropping a table in the middle of a path drops the paths through it; the table is still
-- audited, without a subject, and the coverage check points at it.
DROP TABLE orders CASCADE;
SELECT count(*) FROM gdpr.subject_path WHERE relid = 'order_item'::regclass;
INSERT INTO order_item VALUES (99, 1, 'orphan');
SELECT table_name, subject_id, row_key FROM trail WHERE event = 'INSERT';
SELECT * FROM gdpr.coverage_gaps WHERE table_name = 'order_item'::regclass;
DROP TABLE order_item;
SELECT count(*) FROM gdpr.registered_table WHERE relid::text IN ('order_item', 'orders');
-- Dropping an audit trigger by hand is refused; a superuser who allows it first is recorded.
DROP TRIGGER gdpr_audit_row ON rental;
SET gdpr.allow_capture_off = on;
DROP TRIGGER gdpr_audit_row ON rental;
RESET gdpr.allow_capture_off;
SELECT event, table_name, detail FROM trail WHERE event NOT IN ('MAP_CLASSIFY', 'INSERT');
-- Unregistering puts nothing back: re-register to audit again.
SELECT gdpr.unregister_table('rental');
SELECT gdpr.register_table('rental');
SELECT tgname FROM pg_trigger WHERE tgrelid = 'rental'::regclass AND tgname LIKE 'gdpr%' ORDER BY tgname;
