-- Statements that change many rows: their events are gathered and written together at the end
-- of the statement, and the trail holds exactly what it holds for single rows.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE SCHEMA bulk;
CREATE TABLE bulk.customer (id int PRIMARY KEY, email text, pw text);
CREATE TABLE bulk.orders (id int PRIMARY KEY, customer_id int REFERENCES bulk.customer ON DELETE CASCADE, note text);
CREATE TABLE bulk.item (id int PRIMARY KEY, order_id int REFERENCES bulk.orders ON DELETE CASCADE, product text);
CREATE TABLE bulk.visit (id int, customer_id int, at date NOT NULL, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE bulk.visit_a PARTITION OF bulk.visit FOR VALUES FROM ('2026-01-01') TO ('2026-07-01');
CREATE TABLE bulk.visit_b PARTITION OF bulk.visit FOR VALUES FROM ('2026-07-01') TO ('2027-01-01');
SELECT gdpr.register_subject('bulk.customer', 'id', kind => 'bulk');
SELECT gdpr.register_table('bulk.orders', kind => 'bulk');
SELECT gdpr.register_table('bulk.item', kind => 'bulk');
SELECT gdpr.register_table('bulk.visit', kind => 'bulk', subject_column => 'customer_id');
SELECT gdpr.classify_column('bulk.customer', 'pw', 'secret');
CREATE VIEW bulk.events AS
SELECT event, table_name, subject_id, related_subject_ids AS related, row_key, changed_columns AS changed,
       old_values, new_values
  FROM gdpr.audit_log WHERE subject_kind = 'bulk' AND event IN ('INSERT', 'UPDATE', 'DELETE')
 ORDER BY event_id;
-- where each part's events start
CREATE FUNCTION bulk.mark() RETURNS bigint LANGUAGE sql AS $$ SELECT COALESCE(max(event_id), 0) FROM gdpr.audit_log $$;
CREATE TABLE bulk.since (id bigint);

-- 1. One statement, many rows: one event per row, in the statement's row order, each with its
--    subject, the secret column left out.
INSERT INTO bulk.customer SELECT g, 'user' || g || '@example.com', 'secret' || g FROM generate_series(1, 5) g;
-- two hops from the subject: every row's subject is found, for the whole statement at once
INSERT INTO bulk.orders SELECT 10 + g, 1 + g % 5, 'order' FROM generate_series(1, 5) g;
INSERT INTO bulk.item SELECT 100 + g, 10 + 1 + g % 5, 'p' || g FROM generate_series(1, 6) g;
SELECT * FROM bulk.events;

-- 2. An UPDATE of many rows: changed columns only; rows moved to another subject are about
--    both; an UPDATE that changed nothing leaves nothing.
TRUNCATE bulk.since;
INSERT INTO bulk.since SELECT bulk.mark();
UPDATE bulk.customer SET email = upper(email), pw = 'new' WHERE id <= 3;
UPDATE bulk.item SET order_id = 11 WHERE id IN (102, 103, 104);
UPDATE bulk.customer SET email = email;
SELECT event, table_name, subject_id, related_subject_ids AS related, row_key, changed_columns AS changed, old_values, new_values
  FROM gdpr.audit_log, bulk.since s WHERE event_id > s.id ORDER BY event_id;

-- 3. A statement that fails part-way leaves no event, nor does a rolled-back savepoint or a
--    PL/pgSQL block whose error was caught; the rows before them keep theirs.
TRUNCATE bulk.since;
INSERT INTO bulk.since SELECT bulk.mark();
INSERT INTO bulk.orders SELECT 20 + g, CASE WHEN g = 4 THEN 99 ELSE 1 END, 'x' FROM generate_series(1, 5) g;
BEGIN;
INSERT INTO bulk.orders SELECT 30 + g, 2, 'kept' FROM generate_series(1, 2) g;
SAVEPOINT s;
INSERT INTO bulk.orders SELECT 40 + g, 2, 'undone' FROM generate_series(1, 3) g;
ROLLBACK TO SAVEPOINT s;
DO $$
BEGIN
    INSERT INTO bulk.orders SELECT 50 + g, 3, 'caught' FROM generate_series(1, 3) g;
    INSERT INTO bulk.orders VALUES (51, 3, 'duplicate');
EXCEPTION WHEN unique_violation THEN NULL;
END $$;
COMMIT;
SELECT event, table_name, subject_id, row_key FROM gdpr.audit_log, bulk.since s
 WHERE event_id > s.id ORDER BY event_id;

-- 4. Statements run by a trigger during a bulk statement write their own events, in their own
--    subtransaction (the note of order 62 was rolled back, and its event with it); a cascade's
--    rows have their events (their order is gone by then: found by table and key).
CREATE TABLE bulk.note_log (id serial PRIMARY KEY, customer_id int REFERENCES bulk.customer, what text);
SELECT gdpr.register_table('bulk.note_log', kind => 'bulk');
CREATE FUNCTION bulk.log_note() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        INSERT INTO bulk.note_log (customer_id, what) VALUES (NEW.customer_id, 'note ' || NEW.id);
        IF NEW.id = 62 THEN
            RAISE EXCEPTION 'drop this note';
        END IF;
    EXCEPTION WHEN raise_exception THEN NULL;
    END;
    RETURN NULL;
END $$;
CREATE TRIGGER log_note AFTER INSERT ON bulk.orders FOR EACH ROW EXECUTE FUNCTION bulk.log_note();
TRUNCATE bulk.since;
INSERT INTO bulk.since SELECT bulk.mark();
INSERT INTO bulk.orders SELECT 60 + g, 4, 'noted' FROM generate_series(1, 3) g;
DELETE FROM bulk.orders WHERE id = 12;
SELECT event, table_name, subject_id, row_key FROM gdpr.audit_log, bulk.since s
 WHERE event_id > s.id ORDER BY table_name, event_id;
DROP TRIGGER log_note ON bulk.orders;

-- 5. Partitions: one statement writes rows to several partitions, each with its subject.
TRUNCATE bulk.since;
INSERT INTO bulk.since SELECT bulk.mark();
INSERT INTO bulk.visit SELECT g, 1 + g % 3, date '2026-05-30' + g * 10 FROM generate_series(1, 4) g;
SELECT event, table_name, subject_id, row_key FROM gdpr.audit_log, bulk.since s
 WHERE event_id > s.id ORDER BY event_id;

-- 6. More rows than one batch holds (1000): written in batches, every row once, in order.
TRUNCATE bulk.since;
INSERT INTO bulk.since SELECT bulk.mark();
INSERT INTO bulk.visit SELECT g, 1 + g % 5, date '2026-02-01' FROM generate_series(1000, 3499) g;
SELECT count(*), count(DISTINCT row_key), bool_and(subject_id IS NOT NULL),
       array_agg((row_key->>'id')::int ORDER BY event_id) = array(SELECT generate_series(1000, 3499)) AS in_order
  FROM gdpr.audit_log, bulk.since s WHERE event_id > s.id;

-- 7. COPY: every row, as for INSERT.
TRUNCATE bulk.since;
INSERT INTO bulk.since SELECT bulk.mark();
COPY bulk.item (id, order_id, product) FROM stdin;
200	13	copied a
201	14	copied b
202	15	copied c
\.
SELECT event, table_name, subject_id, row_key, new_values FROM gdpr.audit_log, bulk.since s
 WHERE event_id > s.id ORDER BY event_id;

-- 8. A restriction refuses the whole statement, and nothing of it is written.
SELECT gdpr_restrict('2', 'disputed', 'bulk');
TRUNCATE bulk.since;
INSERT INTO bulk.since SELECT bulk.mark();
UPDATE bulk.item SET product = 'changed' WHERE id IN (103, 104, 105);
SELECT count(*) FROM gdpr.audit_log, bulk.since s WHERE event_id > s.id AND event = 'UPDATE';
SELECT gdpr_unrestrict('2', 'bulk');

-- 9. audit_values applies to every row of a batch.
SET gdpr.audit_values = 'none';
UPDATE bulk.item SET product = product || '!' WHERE id IN (102, 103);
SET gdpr.audit_values = 'full';
UPDATE bulk.item SET product = product || '?' WHERE id IN (102, 103);
RESET gdpr.audit_values;
SELECT row_key, changed_columns, old_values, new_values FROM gdpr.audit_log
 WHERE table_name = 'bulk.item' AND event = 'UPDATE' AND row_key->>'id' IN ('102', '103')
 ORDER BY event_id DESC LIMIT 4;

-- 10. One statement writing two tables (a data-modifying WITH): one batch, two relations; the
--     items find their subject through the orders the same statement inserted.
TRUNCATE bulk.since;
INSERT INTO bulk.since SELECT bulk.mark();
WITH o AS (INSERT INTO bulk.orders SELECT 70 + g, g, 'with' FROM generate_series(1, 2) g RETURNING id)
INSERT INTO bulk.item SELECT 300 + id, id, 'from with' FROM o;
SELECT event, table_name, subject_id, row_key FROM gdpr.audit_log, bulk.since s
 WHERE event_id > s.id ORDER BY event_id;

-- 12. Statements nested deeper than the batches first made room for (a trigger chain, 12 deep,
--     the innermost writing 1001 rows): each level's batch stays where it is, every row is written.
CREATE TABLE bulk.chain (n int);
CREATE FUNCTION bulk.chain_next() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.n < 12 THEN
        INSERT INTO bulk.chain VALUES (NEW.n + 1);
    ELSE
        INSERT INTO bulk.orders SELECT 5000 + g, 1, 'deep' FROM generate_series(1, 1001) g;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER chain_next AFTER INSERT ON bulk.chain FOR EACH ROW EXECUTE FUNCTION bulk.chain_next();
TRUNCATE bulk.since;
INSERT INTO bulk.since SELECT bulk.mark();
INSERT INTO bulk.chain VALUES (1);
SELECT count(*), count(DISTINCT row_key) FROM gdpr.audit_log, bulk.since s
 WHERE event_id > s.id AND table_name = 'bulk.orders';

-- 13. A column named like the alias of the batched subject lookup changes nothing: the items
--     of one statement are attributed as they are one by one.
CREATE TYPE bulk.decoy AS (order_id int);
ALTER TABLE bulk.orders ADD COLUMN gdpr_row bulk.decoy;
UPDATE bulk.orders SET gdpr_row = ROW(15) WHERE id = 14;
TRUNCATE bulk.since;
INSERT INTO bulk.since SELECT bulk.mark();
INSERT INTO bulk.item VALUES (400, 14, 'decoy a'), (401, 14, 'decoy b');
SELECT table_name, subject_id, row_key FROM gdpr.audit_log, bulk.since s
 WHERE event_id > s.id ORDER BY event_id;
ALTER TABLE bulk.orders DROP COLUMN gdpr_row;

-- 14. An erasure from a trigger of a statement that changed audited rows is refused: those rows'
--     events are written when the statement ends, after the erasure would have scrubbed the trail.
CREATE FUNCTION bulk.erase_on_request() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.email = 'please-erase' THEN
        PERFORM gdpr_erase(NEW.id::text, kind => 'bulk');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER zz_erase_on_request AFTER UPDATE ON bulk.customer FOR EACH ROW EXECUTE FUNCTION bulk.erase_on_request();
UPDATE bulk.customer SET email = 'please-erase' WHERE id = 3;
DROP TRIGGER zz_erase_on_request ON bulk.customer;

-- 11. A bulk statement runs its writer's code (a cast to json of the writer's own type, in the
--     images and in the subject lookup of a two-hop table) as the writer, never with the trail
--     owner's rights: the owner only writes the batch afterwards.
CREATE ROLE regress_bulk_writer;
GRANT USAGE, CREATE ON SCHEMA bulk TO regress_bulk_writer;
GRANT REFERENCES ON bulk.customer TO regress_bulk_writer;
SET ROLE regress_bulk_writer;
CREATE TYPE bulk.mood AS ENUM ('glad', 'sad');
CREATE FUNCTION bulk.mood_json(bulk.mood) RETURNS json LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        EXECUTE 'ALTER ROLE regress_bulk_writer SUPERUSER';
    END IF;
    RETURN pg_catalog.to_json(current_user::text);
END $$;
CREATE CAST (bulk.mood AS json) WITH FUNCTION bulk.mood_json(bulk.mood);
CREATE TABLE bulk.feeling (id int PRIMARY KEY, customer_id int REFERENCES bulk.customer, mood bulk.mood);
CREATE TABLE bulk.feeling_note (id int PRIMARY KEY, feeling_id int REFERENCES bulk.feeling, mood bulk.mood);
RESET ROLE;
SELECT gdpr.register_table('bulk.feeling', kind => 'bulk');
SELECT gdpr.register_table('bulk.feeling_note', kind => 'bulk');
TRUNCATE bulk.since;
INSERT INTO bulk.since SELECT bulk.mark();
SET ROLE regress_bulk_writer;
INSERT INTO bulk.feeling SELECT g, 1 + g % 3, 'glad' FROM generate_series(1, 3) g;
INSERT INTO bulk.feeling_note SELECT g, g, 'sad' FROM generate_series(1, 3) g;
UPDATE bulk.feeling SET mood = 'sad';
RESET ROLE;
SELECT rolsuper AS writer_became_superuser FROM pg_roles WHERE rolname = 'regress_bulk_writer';
SELECT event, table_name, subject_id, effective_role, new_values->>'mood' AS mood_as
  FROM gdpr.audit_log, bulk.since s WHERE event_id > s.id ORDER BY event_id;

-- the map follows (its warnings name tables by OID)
SET client_min_messages = error;
DROP SCHEMA bulk CASCADE;
DROP ROLE regress_bulk_writer;
