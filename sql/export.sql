-- gdpr_export: everything about one subject, through every path of the map.
\set SHOW_CONTEXT never
SET search_path = shop, public;
SET client_min_messages = warning;

ALTER TABLE customer ADD COLUMN avatar bytea, ADD COLUMN created_at timestamptz;
INSERT INTO address VALUES (3, 'Export lane 3', 'Bruges');
INSERT INTO customer VALUES (3, 'cat@example.com', 'Cat', 'hash3', 3, 7, '\x00ff10', '2025-01-02 03:04:05+00');
INSERT INTO orders VALUES (30, 3, 12.50), (31, 3, 7.25);
INSERT INTO order_item VALUES (30, 1, 'tea'), (30, 2, 'cup'), (31, 1, 'pot');
INSERT INTO rental VALUES (300, 3);
INSERT INTO payment VALUES (3000, 3, 300, 2.5), (3001, 2, NULL, 1);
INSERT INTO visit VALUES (30, '2025-03-01', 3, '/a'), (31, '2026-03-01', 3, '/b');
INSERT INTO billing.invoice VALUES (2025, 30, 3, 19.75);
INSERT INTO billing.invoice_line VALUES (2025, 30, 1, 'tea'), (2025, 30, 2, 'pot');
INSERT INTO message VALUES (30, 3, 2, 'bob@example.com', 'from Cat'), (31, 2, 3, 'cat@example.com', 'to Cat');
SELECT gdpr.describe_table('billing.invoice', provided_by_subject => false);
SELECT gdpr.describe_table('customer', purpose => 'customer account', legal_basis => 'contract',
                           retention => 'until account closure');

CREATE TEMP TABLE doc AS SELECT gdpr_export(3) AS d;
-- Every registered table of the kind appears, keyed by schema-qualified name, rows in primary
-- key order; the secret column is not there, bytea is base64, timestamps are RFC 3339.
SELECT key, value FROM doc, jsonb_each(d->'data') ORDER BY key;
SELECT d->'counts' AS counts, d->'total_rows' AS total_rows, d->'subject' AS subject,
       d->>'format' AS format, d->>'generated_at' ~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$' AS generated_at_rfc3339
  FROM doc;
-- Nothing about other people: staff (another kind) is not exported, and only this subject's rows.
SELECT d->'data' ? 'shop.staff' AS has_staff,
       (SELECT count(*) FROM jsonb_array_elements(d->'data'->'shop.payment') p WHERE p->>'customer_id' <> '3') AS others_payments
  FROM doc;
-- Art. 15(1): purposes, legal basis, retention, recipients, categories per table.
SELECT key, value FROM doc, jsonb_each(d->'processing') WHERE key IN ('shop.customer', 'billing.invoice') ORDER BY key;
-- The subject's own history, without values.
SELECT e - 'time' AS event FROM doc, jsonb_array_elements(d->'audit') e
 WHERE e->>'table' IN ('shop.customer', 'shop.message') ORDER BY e->>'time', e->>'event';
SELECT count(*) FROM doc, jsonb_array_elements(d->'audit') e WHERE e ? 'old_values' OR e ? 'new_values';

-- Art. 20: only what the subject provided, without the processing metadata.
SELECT jsonb_object_keys(gdpr_export(3, portable => true)) AS key ORDER BY 1;
SELECT gdpr_export(3, portable => true)->'data' ? 'billing.invoice' AS has_invoice;

-- Key types: text literals are read as the kind's key type; uuid and text kinds work too.
SELECT gdpr_export('3')->'total_rows' = (SELECT d->'total_rows' FROM doc) AS same;
INSERT INTO member VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'neo');
INSERT INTO member_note VALUES (1, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'hello');
SELECT gdpr_export('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, kind => 'member')->'data';
INSERT INTO account VALUES ('alice', 'Alice');
INSERT INTO account_log VALUES (1, 'alice', 'login');
SELECT gdpr_export('alice', kind => 'account')->'data';

-- The streaming form yields the same rows.
SELECT count(*) = (SELECT (d->>'total_rows')::int FROM doc) AS same_count,
       bool_and(r.row = ANY (SELECT jsonb_array_elements(d->'data'->r.table_name) FROM doc)) AS same_rows
  FROM gdpr_export_rows(3) r;
SELECT table_name, "row" FROM gdpr_export_rows(3) WHERE table_name = 'shop.order_item';

-- Every export is recorded, with counts and never values.
SELECT event, subject_kind, subject_id, detail->'total_rows' AS total_rows, detail->'streamed' AS streamed,
       detail->'portable' AS portable
  FROM gdpr.audit_log WHERE event = 'EXPORT' ORDER BY event_id;

-- The plan, without running it: which lookups have an index.
SELECT table_name, path_name, step, lookup, indexed, hint FROM gdpr.export_plan()
 WHERE table_name::text IN ('order_item', 'orders', 'address', 'message', 'billing.invoice_line')
 ORDER BY table_name::text, path_name, step;
SELECT DISTINCT query FROM gdpr.export_plan('3') WHERE table_name = 'order_item'::regclass;

-- Bad input.
SELECT gdpr_export(NULL::bigint);
SELECT gdpr_export(999);
SELECT gdpr_export('three');
SELECT gdpr_export('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid);
SELECT gdpr_export(3, kind => 'alien');
SELECT gdpr_export(1, kind => 'member');
SELECT * FROM gdpr.export_plan(kind => 'alien');

-- A column named like the alias the generated SQL gives the row exports as a column, and a
-- secret column is still left out.
BEGIN;
CREATE TABLE shop.reading (id int PRIMARY KEY, customer_id bigint NOT NULL REFERENCES shop.customer,
                           t timestamptz, heart_rate int, secret_note text);
SELECT gdpr.register_table('shop.reading');
SELECT gdpr.classify_column('shop.reading', 'secret_note', 'secret');
INSERT INTO shop.reading VALUES (1, 3, '2026-01-01 10:00+00', 180, 'hidden');
SELECT gdpr_export(3)->'data'->'shop.reading';
ROLLBACK;
