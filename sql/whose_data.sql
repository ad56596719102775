-- Whose data is it: rows several subjects share, rows of other kinds of owner, rows only about
-- the subject, keys on the subject's side, and erasures that can always finish.
\set SHOW_CONTEXT never
SET client_min_messages = notice;
CREATE SCHEMA wd;
SET search_path = wd, public;

-- 1. A parent several subjects share (a team account) makes its children shared: registration
-- says so; the payment method is in no member's export data, no member's erasure changes it, and
-- the trail attributes it to no one.
CREATE TABLE account (id int PRIMARY KEY, name text);
CREATE TABLE member (id int PRIMARY KEY, account_id int REFERENCES account, email text);
CREATE TABLE payment_method (id int PRIMARY KEY, account_id int REFERENCES account, holder_name text, card_last4 text);
SELECT gdpr.register_subject('member', 'id', kind => 'wd_member', on_erase => 'delete');
SELECT gdpr.register_table('payment_method', kind => 'wd_member');
SELECT gdpr.classify_column('payment_method', 'holder_name', 'identity');
INSERT INTO account VALUES (1, 'Team'), (2, 'Solo');
INSERT INTO member VALUES (1, 1, 'alice@x.test'), (2, 1, 'bob@x.test'), (3, 2, 'cleo@x.test');
INSERT INTO payment_method VALUES (1, 1, 'Bob Builder', '4242'), (2, 2, 'Cleo Solo', '1111');
SELECT e->'data'->'wd.payment_method' AS data, e->'shared' AS shared FROM gdpr_export(1, 'wd_member') e;
SELECT e->'data'->'wd.payment_method' AS data, e->'shared' AS shared FROM gdpr_export(3, 'wd_member') e;
UPDATE payment_method SET card_last4 = '4243' WHERE id = 1;
SELECT event, subject_id FROM gdpr.audit_log WHERE table_name = 'wd.payment_method' ORDER BY event_id;
SELECT r->'tables'->'wd.payment_method' AS payment, r->'shared' AS shared FROM gdpr_erase(1, kind => 'wd_member') r;
SELECT * FROM payment_method ORDER BY id;
UPDATE payment_method SET card_last4 = '4244' WHERE id = 1;   -- Bob's own write still works

-- 5. Keys under a nondeterministic collation (the replacement for citext): the key as typed is
-- resolved to the stored spelling before anything is compared, hashed or scrubbed, and one
-- restricted subject blocks no one else's writes.
CREATE COLLATION wd_ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
CREATE TABLE login (email text COLLATE wd_ci PRIMARY KEY, name text);
CREATE TABLE purchase (id int PRIMARY KEY, email text COLLATE wd_ci REFERENCES login, item text);
SELECT gdpr.register_subject('login', 'email', kind => 'wd_login');
SELECT gdpr.register_table('purchase', kind => 'wd_login');
SELECT gdpr.classify_column('login', 'name', 'identity');
INSERT INTO login VALUES ('alice@x.test', 'Alice'), ('bob@x.test', 'Bob');
INSERT INTO purchase VALUES (1, 'Alice@X.test', 'book'), (3, 'bob@X.TEST', 'pen');
SELECT gdpr_restrict('BOB@x.test', 'accuracy contested', 'wd_login');
SELECT subject_id FROM gdpr.restriction WHERE kind = 'wd_login';
INSERT INTO purchase VALUES (2, 'ALICE@x.test', 'pen');     -- Alice is not restricted
UPDATE purchase SET item = 'ink' WHERE id = 1;
UPDATE purchase SET item = 'ink' WHERE id = 3;              -- Bob is, however his row spells him
SELECT gdpr_export('ALICE@X.TEST', 'wd_login')->'subject'->>'key' AS key;
SELECT DISTINCT subject_id FROM gdpr.audit_log WHERE table_name = 'wd.purchase' AND event = 'INSERT';
SELECT gdpr_erase('Alice@x.Test', kind => 'wd_login')->>'status' AS status;
SELECT count(*) AS events_naming_alice FROM gdpr.audit_log
 WHERE subject_kind = 'wd_login' AND (subject_id ILIKE 'alice@x.test' OR new_values::text ILIKE '%alice%');
SELECT gdpr_erase('alice@x.test', kind => 'wd_login')->>'status' AS status;
SELECT gdpr_unrestrict('bob@x.test', 'wd_login');

-- 6. Large objects: an oid column's object is exported by content and removed with the row.
CREATE TABLE document (id int PRIMARY KEY, member_id int NOT NULL REFERENCES member ON DELETE CASCADE, title text, content oid);
SELECT gdpr.register_table('document', kind => 'wd_member');
SELECT column_name, reason FROM gdpr.coverage_gaps WHERE table_name = 'wd.document'::regclass;
SELECT gdpr.classify_column('document', 'content', 'special', erase => 'null');
INSERT INTO document VALUES (1, 2, 'payslip', lo_from_bytea(0, 'Bob earns 4242')),
                            (2, 2, 'empty', NULL);
SELECT jsonb_path_query_array(gdpr_export(2, 'wd_member')->'data'->'wd.document', '$[*].content') #- '{0,large_object}' AS content,
       convert_from(decode(gdpr_export(2, 'wd_member')->'data'->'wd.document'->0->'content'->>'content', 'base64'), 'UTF8') AS decoded;
SELECT content AS oid FROM document WHERE id = 1 \gset
SELECT r->'tables'->'wd.document' AS document FROM gdpr_erase(2, kind => 'wd_member') r;
SELECT count(*) AS objects_left FROM pg_largeobject_metadata WHERE oid = :oid;

-- 2. Polymorphic references: a condition says which rows the path applies to; it is stored with
-- every name qualified, and only built-in functions and operators may stand in it.
CREATE TABLE company (id int PRIMARY KEY, name text);
CREATE TABLE attachment (id int PRIMARY KEY, owner_type text NOT NULL, owner_id int NOT NULL, filename text);
SELECT gdpr.register_table('attachment', kind => 'wd_member', subject_column => 'owner_id');
SELECT table_name, column_name, reason FROM gdpr.coverage_gaps WHERE table_name = 'wd.attachment'::regclass;
SELECT gdpr.unregister_table('attachment');
SELECT gdpr.register_table('attachment', kind => 'wd_member', subject_column => 'owner_id',
                           condition => 'owner_type = ''Member''');
SELECT path_name, condition FROM gdpr.subject_path WHERE relid = 'attachment'::regclass;
SELECT count(*) AS gaps FROM gdpr.coverage_gaps WHERE table_name = 'wd.attachment'::regclass;
INSERT INTO company VALUES (3, 'Builder Ltd');
INSERT INTO attachment VALUES (1, 'Member', 3, 'cleo_cv.pdf'), (2, 'Company', 3, 'bob_payslips_2024.pdf');
SELECT gdpr_export(3, 'wd_member')->'data'->'wd.attachment' AS attachments;
SELECT subject_id, new_values->>'filename' AS filename FROM gdpr.audit_log
 WHERE table_name = 'wd.attachment' AND event = 'INSERT' ORDER BY event_id;
SELECT gdpr.add_path('attachment', 'sub', subject_column => 'owner_id', relation => 'owner',
                     condition => 'owner_type = (SELECT ''Member'')');
CREATE FUNCTION public.wd_is_member(text) RETURNS boolean LANGUAGE sql AS $$ SELECT $1 = 'Member' $$;
SELECT gdpr.add_path('attachment', 'fn', subject_column => 'owner_id', relation => 'owner',
                     condition => 'public.wd_is_member(owner_type)');
SELECT gdpr.add_path('attachment', 'inj', subject_column => 'owner_id', relation => 'owner',
                     condition => 'true) OR (true');
-- Built-in is not enough: a stable or volatile function (query_to_xml runs any query) is refused,
-- and so are constants a session reads its own way (an OID alias, a date).
SELECT gdpr.add_path('attachment', 'xml', subject_column => 'owner_id', relation => 'owner',
                     condition => 'pg_catalog.query_to_xml(''SELECT 1'', true, false, '''') IS NOT NULL');
SELECT gdpr.add_path('attachment', 'reg', subject_column => 'owner_id', relation => 'owner',
                     condition => 'owner_type::regclass IS NOT NULL');
SELECT gdpr.add_path('attachment', 'day', subject_column => 'owner_id', relation => 'owner',
                     condition => 'filename <> ''2026-01-01''::date::text');
SELECT gdpr.add_path('attachment', 'list', subject_column => 'owner_id', relation => 'concerned',
                     condition => 'lower(owner_type) IN (''member'', ''staff'') AND filename LIKE ''%.pdf''');
SELECT condition FROM gdpr.subject_path WHERE relid = 'attachment'::regclass AND path_name = 'list';
-- Written to the map table directly, a condition is checked and made canonical the same way.
UPDATE gdpr.subject_path SET condition = 'public.wd_is_member(owner_type)'
 WHERE relid = 'attachment'::regclass AND path_name = 'list';
SELECT gdpr.drop_path('attachment', 'list');
SELECT r->'tables'->'wd.attachment' AS attachment FROM gdpr_erase(3, kind => 'wd_member') r;
SELECT id, owner_type, owner_id, filename FROM attachment ORDER BY id;

-- 3. A row reached only by a concerned path is exported without its owner's personal data,
-- listed by name; the owner's own export keeps it all.
CREATE TABLE person (id int PRIMARY KEY, name text);
CREATE TABLE letter (id int PRIMARY KEY, sender_id int NOT NULL REFERENCES person, recipient_id int REFERENCES person,
                     body text, sender_ip inet, greeting text);
SELECT gdpr.register_subject('person', 'id', kind => 'wd_person');
SELECT gdpr.register_table('letter', kind => 'wd_person', via => '{sender_id}');
SELECT gdpr.add_path('letter', 'recipient', via => '{recipient_id}', about_columns => '{greeting}');
SELECT gdpr.classify_column('letter', 'sender_ip', 'online_id');
SELECT gdpr.classify_column('letter', 'greeting', 'identity');
INSERT INTO person VALUES (1, 'Alice'), (2, 'Bob');
INSERT INTO letter VALUES (1, 2, 1, 'Hello', '192.0.2.22', 'Dear Alice');
SELECT e->'data'->'wd.letter' AS data, e->'withheld_columns' AS withheld FROM gdpr_export(1, 'wd_person') e;
SELECT e->'data'->'wd.letter' AS data, e->'withheld_columns' AS withheld FROM gdpr_export(2, 'wd_person') e;

-- 4. Two foreign keys from the subject to one table: via names the subject's own columns.
CREATE TABLE address (id int PRIMARY KEY, street text);
CREATE TABLE customer (id int PRIMARY KEY, billing_address_id int REFERENCES address,
                       shipping_address_id int REFERENCES address ON DELETE SET NULL);
SELECT gdpr.register_subject('customer', 'id', kind => 'wd_customer', on_erase => 'delete');
SELECT gdpr.register_table('address', kind => 'wd_customer');
SELECT gdpr.register_table('address', kind => 'wd_customer', via => '{billing_address_id}');
SELECT gdpr.add_path('address', 'shipping', via => '{customer_shipping_address_id_fkey}', relation => 'owner');
SELECT path_name, gdpr._path_text(relid, (SELECT jsonb_agg(jsonb_build_object('from_cols', from_cols, 'to', to_rel::oid,
       'to_cols', to_cols, 'reverse', reverse) ORDER BY step) FROM gdpr.path_step s WHERE s.relid = p.relid AND s.path_name = p.path_name)) AS path
  FROM gdpr.subject_path p WHERE relid = 'address'::regclass ORDER BY path_name;
INSERT INTO address VALUES (1, 'Bill Street 1'), (2, 'Ship Street 2'), (3, 'Shared Street 3');
INSERT INTO customer VALUES (1, 1, 2), (2, 3, 3), (3, 3, NULL);
SELECT gdpr_export(1, 'wd_customer')->'data'->'wd.address' AS addresses;

-- 7. Erasures that can always finish, and a preflight that agrees: an address another subject
-- shares is kept and reported, never a reason to refuse.
SELECT c->'can_erase' AS can_erase, c->'plan'->'shared' AS shared FROM gdpr_can_erase(2, 'wd_customer') c;
SELECT r->'tables'->'wd.address' AS address, r->'shared' AS shared FROM gdpr_erase(2, kind => 'wd_customer') r;
SELECT r->'tables'->'wd.address' AS address FROM gdpr_erase(1, kind => 'wd_customer') r;
TABLE address;

-- A back-pointer cycle that ON DELETE SET NULL breaks is not a cycle.
CREATE TABLE shopper (id int PRIMARY KEY, email text, current_cart_id int);
CREATE TABLE cart (id int PRIMARY KEY, shopper_id int REFERENCES shopper ON DELETE SET NULL, note text);
ALTER TABLE shopper ADD FOREIGN KEY (current_cart_id) REFERENCES cart ON DELETE SET NULL DEFERRABLE;
SELECT gdpr.register_subject('shopper', 'id', kind => 'wd_shopper', on_erase => 'delete');
SELECT gdpr.register_table('cart', kind => 'wd_shopper', on_erase => 'anonymize', via => '{shopper_id}');
SELECT gdpr.classify_column('cart', 'note', 'other', erase => 'null');
INSERT INTO shopper VALUES (1, 'a@x.test', NULL);
INSERT INTO cart VALUES (10, 1, 'gift for Bob');
UPDATE shopper SET current_cart_id = 10 WHERE id = 1;
SELECT gdpr_can_erase(1, 'wd_shopper')->'can_erase' AS can_erase;
SELECT r->>'status' AS status, r->'tables' AS tables FROM gdpr_erase(1, kind => 'wd_shopper') r;
-- A cycle of keys that stop a DELETE is still refused, with a hint that works.
CREATE TABLE pair_a (id int PRIMARY KEY, shopper_id int REFERENCES shopper, b_id int);
CREATE TABLE pair_b (id int PRIMARY KEY, a_id int REFERENCES pair_a);
ALTER TABLE pair_a ADD FOREIGN KEY (b_id) REFERENCES pair_b;
SELECT gdpr.register_table('pair_a', kind => 'wd_shopper');
SELECT gdpr.register_table('pair_b', kind => 'wd_shopper');
INSERT INTO shopper VALUES (2, 'b@x.test', NULL);
SELECT gdpr_erase(2, kind => 'wd_shopper');
SELECT c->'refusal'->>'hint' AS hint FROM gdpr_can_erase(2, 'wd_shopper') c;
-- The hint's remedy works: the key checked at commit no longer orders the work.
ALTER TABLE pair_b DROP CONSTRAINT pair_b_a_id_fkey,
    ADD FOREIGN KEY (a_id) REFERENCES pair_a DEFERRABLE INITIALLY DEFERRED;
INSERT INTO pair_a VALUES (1, 2, NULL);
INSERT INTO pair_b VALUES (1, 1);
UPDATE pair_a SET b_id = 1;
SELECT r->>'status' AS status, r->'tables'->'wd.pair_a' AS pair_a, r->'tables'->'wd.pair_b' AS pair_b
  FROM gdpr_erase(2, kind => 'wd_shopper') r;

-- Shapes that work and must keep working: a composite foreign key, a foreign key onto a unique
-- column that is not the key, a partitioned table, quoted names with dots, a generated column.
CREATE TABLE "wd.org" (tenant int, id int, email text UNIQUE NOT NULL, PRIMARY KEY (tenant, id));
CREATE TABLE "odd.name" (id int PRIMARY KEY, tenant int, org_id int, note text,
                         FOREIGN KEY (tenant, org_id) REFERENCES "wd.org");
CREATE TABLE by_mail (id int PRIMARY KEY, email text REFERENCES "wd.org" (email), "Memo" text,
                      memo_len int GENERATED ALWAYS AS (length("Memo")) STORED);
CREATE TABLE visit (id int, org_tenant int, org_id int, at date NOT NULL,
                    FOREIGN KEY (org_tenant, org_id) REFERENCES "wd.org", PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE visit_2026 PARTITION OF visit FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
SELECT gdpr.register_subject('"wd.org"', 'email', kind => 'wd_org', on_erase => 'delete');
SELECT gdpr.register_table('"odd.name"', kind => 'wd_org');
SELECT gdpr.register_table('by_mail', kind => 'wd_org');
SELECT gdpr.register_table('visit', kind => 'wd_org');
INSERT INTO "wd.org" VALUES (1, 1, 'o@x.test'), (1, 2, 'p@x.test');
INSERT INTO "odd.name" VALUES (1, 1, 1, 'mine'), (2, 1, 2, 'theirs');
INSERT INTO by_mail VALUES (1, 'o@x.test', 'hello'), (2, 'p@x.test', 'other');
INSERT INTO visit VALUES (1, 1, 1, '2026-05-01'), (2, 1, 2, '2026-05-02');
SELECT jsonb_pretty(gdpr_export('o@x.test', 'wd_org')->'data') AS data;
SELECT r->'tables' AS tables FROM gdpr_erase('o@x.test', kind => 'wd_org') r;
SELECT (SELECT count(*) FROM "odd.name") AS odd, (SELECT count(*) FROM by_mail) AS by_mail,
       (SELECT count(*) FROM visit) AS visits, (SELECT count(*) FROM "wd.org") AS orgs;

SET client_min_messages = error;
DROP SCHEMA wd CASCADE;
DROP FUNCTION public.wd_is_member(text);
DELETE FROM gdpr.subject_kind WHERE kind LIKE 'wd\_%';
