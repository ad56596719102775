-- gdpr_erase checks its work before it records anything: what an application's trigger, rule or
-- row security undoes is refused with GD303, names what undid it, and changes nothing.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE SCHEMA ev;
SET search_path = ev, public;
CREATE TABLE person (id int PRIMARY KEY, name text);
CREATE TABLE orders (id int PRIMARY KEY, person_id int REFERENCES person, item text);
CREATE TABLE invoice (id int PRIMARY KEY, person_id int REFERENCES person ON DELETE SET NULL, holder text);
CREATE TABLE archive_orders (id int PRIMARY KEY, person_id int, item text);
CREATE TABLE note (id int PRIMARY KEY, person_id int REFERENCES person, body text);
CREATE TABLE visit (id int PRIMARY KEY, person_id int, page text);   -- no foreign key
SELECT gdpr.register_subject('ev.person', 'id', kind => 'ev', on_erase => 'delete');
SELECT gdpr.register_table('ev.orders', kind => 'ev');
SELECT gdpr.register_table('ev.archive_orders', kind => 'ev', subject_column => 'person_id');
SELECT gdpr.register_table('ev.note', kind => 'ev');
SELECT gdpr.register_table('ev.visit', kind => 'ev', subject_column => 'person_id');
SELECT gdpr.register_table('ev.invoice', kind => 'ev', on_erase => 'anonymize');
SELECT gdpr.classify_column('ev.invoice', 'holder', 'identity', erase => 'redact');
INSERT INTO person VALUES (1, 'Ann'), (2, 'Bob');
INSERT INTO orders VALUES (10, 1, 'book'), (20, 2, 'pen');
INSERT INTO note VALUES (100, 1, 'Ann''s note');
INSERT INTO visit VALUES (1000, 1, '/home');
INSERT INTO invoice VALUES (7, 1, 'Ann Smith');
CREATE VIEW left_behind AS
SELECT (SELECT count(*) FROM person WHERE id = 1) AS person, (SELECT count(*) FROM orders WHERE person_id = 1) AS orders,
       (SELECT count(*) FROM archive_orders WHERE person_id = 1) AS archived, (SELECT count(*) FROM note WHERE person_id = 1) AS notes,
       (SELECT count(*) FROM visit WHERE person_id = 1) AS visits,
       (SELECT count(*) FROM gdpr.erasure WHERE kind = 'ev') AS erasures;

-- A soft delete: the trigger skips the DELETE, and the row stays.  Where a foreign key holds the
-- row to its parent, the parent's DELETE fails on it; where none does, the check finds the row.
CREATE FUNCTION soft_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN EXECUTE format('UPDATE %s SET page = NULL WHERE id = $1', TG_RELID::regclass) USING OLD.id; RETURN NULL; END $$;
CREATE TRIGGER soft_delete BEFORE DELETE ON visit FOR EACH ROW EXECUTE FUNCTION soft_delete();
SELECT gdpr_erase(1, kind => 'ev');
SELECT gdpr_erase(1, kind => 'ev', dry_run => true);
SELECT * FROM left_behind;
DROP TRIGGER soft_delete ON visit;

-- A trigger that keeps the old values of a row the erasure anonymizes.
CREATE FUNCTION keep_old() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.holder := OLD.holder; RETURN NEW; END $$;
CREATE TRIGGER keep_old BEFORE UPDATE ON invoice FOR EACH ROW EXECUTE FUNCTION keep_old();
SELECT gdpr_erase(1, kind => 'ev');
SELECT holder FROM invoice;
DROP TRIGGER keep_old ON invoice;

-- A rule that keeps the rows.
CREATE RULE keep_notes AS ON DELETE TO note DO INSTEAD NOTHING;
SELECT gdpr_erase(1, kind => 'ev');
SELECT * FROM left_behind;
DROP RULE keep_notes ON note;

-- An archive written by a trigger of another table, after the archive itself was erased.
CREATE FUNCTION archive() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO ev.archive_orders VALUES (OLD.id, OLD.person_id, OLD.item); RETURN OLD; END $$;
CREATE TRIGGER archive AFTER DELETE ON orders FOR EACH ROW EXECUTE FUNCTION archive();
SELECT gdpr_erase(1, kind => 'ev');
SELECT * FROM left_behind;
DROP TRIGGER archive ON orders;

-- Row security that hides some of the subject's rows from the one who erases.
CREATE ROLE regress_ev_dpo IN ROLE gdpr_admin;
GRANT USAGE ON SCHEMA ev TO regress_ev_dpo;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA ev TO regress_ev_dpo;
ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
CREATE POLICY only_books ON orders USING (item = 'pen');
SET ROLE regress_ev_dpo;
SELECT gdpr_erase(1, kind => 'ev');
-- An export under the same policy says which tables it may show only in part.
SELECT gdpr_export(1, 'ev')->'row_security_filtered' AS filtered;
RESET ROLE;
SELECT * FROM left_behind;
ALTER TABLE orders DISABLE ROW LEVEL SECURITY;

-- With nothing in the way, the erasure goes through and checks out.
SELECT gdpr_erase(1, kind => 'ev')->>'status' AS status;
SELECT * FROM left_behind;
SELECT id, person_id FROM orders ORDER BY id;
SELECT id, person_id, holder FROM invoice;

-- Every row is found before anything changes: an address reached through the customer row that
-- points to it is erased although that customer row is deleted first.
CREATE TABLE ev.address (id int PRIMARY KEY, street text);
CREATE TABLE ev.customer (id int PRIMARY KEY, email text UNIQUE NOT NULL, address_id int REFERENCES ev.address);
SELECT gdpr.register_subject('ev.customer', 'id', kind => 'ev_customer', on_erase => 'delete');
SELECT gdpr.register_table('ev.address', kind => 'ev_customer');
SELECT gdpr.classify_column('ev.address', 'street', 'location');
INSERT INTO ev.address VALUES (1, 'Alicestreet 1'), (2, 'Bobstreet 2');
INSERT INTO ev.customer VALUES (1, 'a@x.org', 1), (2, 'b@x.org', 2);
SELECT jsonb_array_length(gdpr_export(1, 'ev_customer')->'data'->'ev.address') AS exported;
SELECT gdpr_erase(1, kind => 'ev_customer')->'tables'->'ev.address' AS address;
TABLE ev.address;

-- Cascades: refused where they would delete rows of other subjects or rows kept by law, also
-- through a table outside the map; followed where they only take rows hanging off the subject's.
CREATE TABLE ev.member (id int PRIMARY KEY, email text, referred_by int REFERENCES ev.member ON DELETE CASCADE);
CREATE TABLE ev.post (id int PRIMARY KEY, member_id int NOT NULL REFERENCES ev.member,
                      reply_to int REFERENCES ev.post ON DELETE CASCADE, body text);
CREATE TABLE ev.cart (id int PRIMARY KEY, member_id int REFERENCES ev.member ON DELETE CASCADE);
CREATE TABLE ev.bill (id int PRIMARY KEY, cart_id int REFERENCES ev.cart ON DELETE CASCADE, holder text);
CREATE TABLE ev.session (id int PRIMARY KEY, member_id int REFERENCES ev.member ON DELETE CASCADE);
SELECT gdpr.register_subject('ev.member', 'id', kind => 'ev_member', on_erase => 'delete');
SELECT gdpr.register_table('ev.post', kind => 'ev_member', via => '{member_id}');
INSERT INTO ev.member VALUES (1, 'a@x.org', NULL), (2, 'b@x.org', NULL), (3, 'c@x.org', NULL);
INSERT INTO ev.post VALUES (100, 1, NULL, 'A asks'), (200, 2, 100, 'B answers'), (300, 3, 200, 'C answers B');
SELECT gdpr_erase(1, kind => 'ev_member');                      -- B's and C's replies would go
DELETE FROM ev.post WHERE id IN (200, 300);
UPDATE ev.member SET referred_by = 1 WHERE id = 2;
SELECT gdpr_erase(1, kind => 'ev_member');                      -- B, whom A referred, would go
UPDATE ev.member SET referred_by = NULL;
INSERT INTO ev.cart VALUES (5, 1);
INSERT INTO ev.bill VALUES (9, 5, 'Alice Billing');
SELECT gdpr.register_table('ev.bill', kind => 'ev_member', on_erase => 'anonymize');
SELECT gdpr_erase(1, kind => 'ev_member');                      -- through the cart, to a kept bill
SELECT gdpr.unregister_table('ev.bill');
DELETE FROM ev.bill;
INSERT INTO ev.session VALUES (7, 1), (8, 2);
-- A materialized view keeps its own copy: a coverage gap, and named in the erasure's report.
CREATE MATERIALIZED VIEW ev.member_emails AS SELECT email FROM ev.member;
SELECT table_name, reason FROM gdpr.coverage_gaps WHERE table_name = 'ev.member_emails'::regclass;
SELECT r->>'status' AS status, r->'materialized_views' AS stale     -- the cart and the session go with A
  FROM gdpr_erase(1, kind => 'ev_member') r;
SELECT (SELECT count(*) FROM ev.cart) AS carts, (SELECT count(*) FROM ev.session) AS sessions,
       (SELECT count(*) FROM ev.member) AS members, (SELECT count(*) FROM ev.post) AS posts;

-- Constraint problems are found before anything changes: a strategy that gives every erased row
-- the same value in a unique column, at classification; a kept row whose foreign key references
-- a column the erasure rewrites, at planning.
CREATE TABLE ev.account (id int PRIMARY KEY, login text UNIQUE NOT NULL, email text UNIQUE NOT NULL);
CREATE TABLE ev.ledger (id int PRIMARY KEY, account_id int REFERENCES ev.account,
                        email text REFERENCES ev.account (email));
SELECT gdpr.register_subject('ev.account', 'id', kind => 'ev_account');
SELECT gdpr.classify_column('ev.account', 'login', 'online_id', erase => 'mask');
SELECT gdpr.classify_column('ev.account', 'login', 'online_id');
SELECT gdpr.classify_column('ev.account', 'email', 'contact', erase => 'pseudonym');
SELECT column_name, erase FROM gdpr.column_class WHERE relid = 'ev.account'::regclass ORDER BY 1;
SELECT gdpr.register_table('ev.ledger', kind => 'ev_account', via => '{account_id}', on_erase => 'anonymize');
INSERT INTO ev.account VALUES (1, 'ann', 'ann@x.org');
INSERT INTO ev.ledger VALUES (1, 1, 'ann@x.org');
SELECT gdpr_erase(1, kind => 'ev_account');
SELECT login, email FROM ev.account;

-- A child table registered on its own, by inheritance: its rows follow its own registration, and
-- the parent's statements and exports leave them to it.
CREATE TABLE ev.client (id int PRIMARY KEY, email text UNIQUE NOT NULL);
CREATE TABLE ev.contact (id int PRIMARY KEY, client_id int NOT NULL REFERENCES ev.client, label text);
CREATE TABLE ev.postal_contact (street text) INHERITS (ev.contact);
ALTER TABLE ev.postal_contact ADD PRIMARY KEY (id);
SELECT gdpr.register_subject('ev.client', 'id', kind => 'ev_client');
SELECT gdpr.register_table('ev.contact', kind => 'ev_client');
SELECT gdpr.register_table('ev.postal_contact', kind => 'ev_client', subject_column => 'client_id', on_erase => 'anonymize');
SELECT gdpr.classify_column('ev.postal_contact', 'street', 'location', erase => 'redact');
INSERT INTO ev.client VALUES (1, 'a@x.org');
INSERT INTO ev.contact VALUES (3, 1, 'work');
INSERT INTO ev.postal_contact VALUES (4, 1, 'home', 'Alicestreet 9');
SELECT jsonb_array_length(gdpr_export(1, 'ev_client')->'data'->'ev.contact') AS contacts_exported;
SELECT r->'tables'->'ev.contact'->'deleted' AS contacts_deleted,
       r->'tables'->'ev.postal_contact'->'anonymized' AS postal_anonymized
  FROM gdpr_erase(1, kind => 'ev_client') r;
SELECT id, label, street FROM ev.postal_contact;

-- An UPDATE that moves a row from one subject to another is about both: the erasure of the first
-- scrubs the values it had there.
CREATE TABLE ev.holder (id int PRIMARY KEY);
CREATE TABLE ev.thing (id int PRIMARY KEY, holder_id int REFERENCES ev.holder, note text);
SELECT gdpr.register_subject('ev.holder', 'id', kind => 'ev_holder', on_erase => 'delete');
SELECT gdpr.register_table('ev.thing', kind => 'ev_holder');
INSERT INTO ev.holder VALUES (1), (2);
INSERT INTO ev.thing VALUES (1, 1, 'first holder''s note');
UPDATE ev.thing SET holder_id = 2, note = 'second' WHERE id = 1;
SELECT subject_id, related_subject_ids, old_values FROM gdpr.audit_log
 WHERE table_name = 'ev.thing' AND event = 'UPDATE';
SELECT gdpr_erase(1, kind => 'ev_holder')->>'status' AS status;
SELECT subject_id, related_subject_ids = ARRAY['1'] AS still_names_the_key, old_values FROM gdpr.audit_log
 WHERE table_name = 'ev.thing' AND event = 'UPDATE';

-- Nothing outside the plan may change: a trigger that touches another subject's row during the
-- erasure is refused, in the dry run the same way.  A foreign key ON DELETE SET NULL that drops
-- another subject's link to an erased row is part of the plan, and the report says so.
CREATE TABLE ev.author (id int PRIMARY KEY, name text, replies int NOT NULL DEFAULT 0);
CREATE TABLE ev.forum_post (id int PRIMARY KEY, author_id int NOT NULL REFERENCES ev.author,
                      reply_to int REFERENCES ev.forum_post ON DELETE SET NULL, body text);
SELECT gdpr.register_subject('ev.author', 'id', kind => 'ev_author', on_erase => 'delete');
SELECT gdpr.register_table('ev.forum_post', kind => 'ev_author');
INSERT INTO ev.author VALUES (1, 'Ann'), (2, 'Bob');
INSERT INTO ev.forum_post VALUES (1, 1, NULL, 'Ann asks'), (2, 2, 1, 'Bob answers'), (3, 2, 2, 'Bob again');
CREATE FUNCTION ev.count_reply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN UPDATE ev.author SET replies = replies + 1 WHERE id = 2; RETURN OLD; END $$;
CREATE TRIGGER count_reply AFTER DELETE ON ev.forum_post FOR EACH ROW EXECUTE FUNCTION ev.count_reply();
SELECT gdpr_erase(1, kind => 'ev_author', dry_run => true);
SELECT gdpr_erase(1, kind => 'ev_author');
SELECT c->'can_erase' AS can_erase, c->'refusal'->>'sqlstate' AS sqlstate, c->'refusal'->>'message' AS refusal
  FROM gdpr_can_erase(1, 'ev_author') c;
SELECT a.id, a.replies, (SELECT count(*) FROM ev.forum_post) AS posts FROM ev.author a ORDER BY a.id;
DROP TRIGGER count_reply ON ev.forum_post;
SELECT r->'unlinked' AS unlinked, r->'tables'->'ev.forum_post' AS post FROM gdpr_erase(1, kind => 'ev_author', dry_run => true) r;
SELECT r->'unlinked' AS unlinked, r->'tables'->'ev.forum_post' AS post FROM gdpr_erase(1, kind => 'ev_author') r;
SELECT id, author_id, reply_to, body FROM ev.forum_post ORDER BY id;

-- A deep self-referencing cascade: a thread of twelve of Ann's replies goes with her; one reply of
-- Bob's at the bottom stops the erasure before anything changes.
CREATE TABLE ev.thread (id int PRIMARY KEY, author_id int NOT NULL REFERENCES ev.author,
                        parent_id int REFERENCES ev.thread ON DELETE CASCADE);
SELECT gdpr.register_table('ev.thread', kind => 'ev_author');
INSERT INTO ev.author VALUES (3, 'Cleo');
INSERT INTO ev.thread SELECT i, 3, NULLIF(i - 1, 0) FROM generate_series(1, 12) i;
INSERT INTO ev.thread VALUES (13, 2, 12);
SELECT gdpr_erase(3, kind => 'ev_author', dry_run => true);
SELECT gdpr_erase(3, kind => 'ev_author');
SELECT c->'can_erase' AS can_erase, c->'refusal'->>'sqlstate' AS sqlstate, c->'refusal'->>'hint' AS hint
  FROM gdpr_can_erase(3, 'ev_author') c;
SELECT count(*) AS thread_rows FROM ev.thread;
DELETE FROM ev.thread WHERE id = 13;
SELECT r->'tables'->'ev.thread' AS thread FROM gdpr_erase(3, kind => 'ev_author') r;
SELECT count(*) AS thread_rows FROM ev.thread;

-- A view cannot stand in the map, with or without INSTEAD OF triggers: erasure acts on tables.
CREATE VIEW ev.forum_view AS SELECT * FROM ev.forum_post;
CREATE FUNCTION ev.forum_view_delete() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
CREATE TRIGGER forum_view_delete INSTEAD OF DELETE ON ev.forum_view FOR EACH ROW EXECUTE FUNCTION ev.forum_view_delete();
SELECT gdpr.register_table('ev.forum_view', kind => 'ev_author');

-- A kept table reached only through a deleted one: the invoice is anonymized before the cart it
-- reaches the customer through is deleted, and keeps its row with the link dropped.
CREATE TABLE ev.shopper (id int PRIMARY KEY, email text NOT NULL);
CREATE TABLE ev.shop_cart (id int PRIMARY KEY, shopper_id int NOT NULL REFERENCES ev.shopper ON DELETE CASCADE);
CREATE TABLE ev.shop_bill (id int PRIMARY KEY, cart_id int REFERENCES ev.shop_cart ON DELETE SET NULL, billed_to text);
SELECT gdpr.register_subject('ev.shopper', 'id', kind => 'ev_shopper', on_erase => 'delete');
SELECT gdpr.register_table('ev.shop_cart', kind => 'ev_shopper');
SELECT gdpr.register_table('ev.shop_bill', kind => 'ev_shopper', on_erase => 'anonymize');
SELECT gdpr.classify_column('ev.shop_bill', 'billed_to', 'identity', erase => 'redact');
INSERT INTO ev.shopper VALUES (1, 'a@x.org'), (2, 'b@x.org');
INSERT INTO ev.shop_cart VALUES (10, 1), (20, 2);
INSERT INTO ev.shop_bill VALUES (100, 10, 'Alice Billing'), (200, 20, 'Bob Billing');
SELECT r->'tables'->'ev.shop_bill' AS bill, r->'unlinked' AS unlinked FROM gdpr_erase(1, kind => 'ev_shopper', dry_run => true) r;
SELECT r->'tables'->'ev.shop_bill' AS bill, r->'unlinked' AS unlinked FROM gdpr_erase(1, kind => 'ev_shopper') r;
SELECT id, cart_id, billed_to FROM ev.shop_bill ORDER BY id;

-- Materialized views: listed as gaps and in the report until registered; once registered,
-- every erasure refreshes them, as their owner.
CREATE MATERIALIZED VIEW ev.bill_totals AS SELECT b.id, b.billed_to, c.shopper_id FROM ev.shop_bill b JOIN ev.shop_cart c ON c.id = b.cart_id;
SELECT column_name, reason FROM gdpr.coverage_gaps WHERE table_name = 'ev.bill_totals'::regclass;
INSERT INTO ev.shopper VALUES (3, 'c@x.org');
INSERT INTO ev.shop_cart VALUES (30, 3);
INSERT INTO ev.shop_bill VALUES (300, 30, 'Cleo Billing');
REFRESH MATERIALIZED VIEW ev.bill_totals;
SELECT r->'materialized_views' AS views, r->'refreshed_views' AS refreshed FROM gdpr_erase(3, kind => 'ev_shopper', dry_run => true) r;
SELECT gdpr.register_derived('ev.forum_view');
SELECT gdpr.register_derived('ev.bill_totals');
SELECT count(*) AS gaps FROM gdpr.coverage_gaps WHERE table_name = 'ev.bill_totals'::regclass;
SELECT r->'materialized_views' AS views, r->'refreshed_views' AS refreshed FROM gdpr_erase(3, kind => 'ev_shopper') r;
SELECT * FROM ev.bill_totals ORDER BY id;
DROP MATERIALIZED VIEW ev.bill_totals;
SELECT count(*) AS derived_left FROM gdpr.derived_view;

-- A value a strategy writes that a constraint refuses (here a domain's CHECK) is named in GD303,
-- in the dry run the same way, and nothing changes.
CREATE DOMAIN ev.plain_label AS text CHECK (VALUE !~ '[][]');
CREATE TABLE ev.badge (id int PRIMARY KEY, shopper_id int REFERENCES ev.shopper ON DELETE SET NULL, label ev.plain_label);
SELECT gdpr.register_table('ev.badge', kind => 'ev_shopper', on_erase => 'anonymize');
SELECT gdpr.classify_column('ev.badge', 'label', 'identity', erase => 'redact');
INSERT INTO ev.badge VALUES (1, 2, 'Bobby');
SELECT gdpr_erase(2, kind => 'ev_shopper', dry_run => true);
SELECT gdpr_erase(2, kind => 'ev_shopper');
SELECT b.label, (SELECT count(*) FROM ev.shopper WHERE id = 2) AS shopper FROM ev.badge b;

-- A subject erased before is checked again: what an earlier version or a restored table left
-- behind is erased, and reported as such; with nothing left, the recorded erasure is the answer.
SELECT gdpr_erase(1, kind => 'ev')->>'status' AS status;
INSERT INTO ev.visit VALUES (2000, 1, '/restored');
SELECT gdpr_erase(1, kind => 'ev', dry_run => true)->'tables'->'ev.visit' AS dry_run;
SELECT r->>'status' AS status, r->'tables'->'ev.visit' AS visit, r->'audit_events_scrubbed' AS scrubbed
  FROM gdpr_erase(1, kind => 'ev') r;
SELECT count(*) AS visits_left FROM ev.visit WHERE person_id = 1;
SELECT gdpr_erase(1, kind => 'ev')->>'status' AS status;
SELECT count(*) AS erasures_recorded FROM gdpr.erasure WHERE kind = 'ev';

-- ON DELETE SET DEFAULT hands the subject's kept row to a stand-in subject during the erasure:
-- the trail's record of that move names the subject too, and is scrubbed with the rest.
CREATE TABLE ev.tenant (id int PRIMARY KEY, name text);
CREATE TABLE ev.ticket (id int PRIMARY KEY, tenant_id int NOT NULL DEFAULT 0 REFERENCES ev.tenant ON DELETE SET DEFAULT,
                        body text);
SELECT gdpr.register_subject('ev.tenant', 'id', kind => 'ev_tenant', on_erase => 'delete');
SELECT gdpr.register_table('ev.ticket', kind => 'ev_tenant', on_erase => 'anonymize');
SELECT gdpr.classify_column('ev.ticket', 'body', 'identity', erase => 'redact');
INSERT INTO ev.tenant VALUES (0, '__deleted__'), (1, 'Tia');
INSERT INTO ev.ticket VALUES (1, 1, 'Tia''s printer is broken');
SELECT r->'unlinked' AS unlinked, r->'tables'->'ev.ticket' AS ticket FROM gdpr_erase(1, kind => 'ev_tenant') r;
SELECT id, tenant_id, body FROM ev.ticket;
SELECT event, CASE WHEN subject_id ~ '^[0-9a-f]{32}$' THEN 'pseudonym' ELSE subject_id END AS subject,
       related_subject_ids = ARRAY['1'] AS names_the_key, old_values, new_values
  FROM gdpr.audit_log WHERE table_name = 'ev.ticket' ORDER BY event_id;

SET client_min_messages = error;
DROP SCHEMA ev CASCADE;
DELETE FROM gdpr.subject_kind WHERE kind IN ('ev', 'ev_customer', 'ev_member', 'ev_account', 'ev_client',
                                              'ev_holder', 'ev_author', 'ev_shopper', 'ev_tenant');
DROP OWNED BY regress_ev_dpo;
DROP ROLE regress_ev_dpo;
