-- Read auditing: a statement that reads a read-audited table records whose rows it read, one
-- READ event per statement and table, through the queue and its writer (the events arrive a
-- moment later: ra.drained() waits for them).
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE SCHEMA ra;
CREATE TABLE ra.customer (id int PRIMARY KEY, name text, email text);
CREATE TABLE ra.orders (id int PRIMARY KEY, customer_id int REFERENCES ra.customer ON DELETE CASCADE,
                        total numeric);
CREATE INDEX ON ra.orders (customer_id);
CREATE TABLE ra.item (id int PRIMARY KEY, order_id int REFERENCES ra.orders ON DELETE CASCADE, sku text);
CREATE TABLE ra.visit (id int, customer_id int, at date NOT NULL, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE ra.visit_a PARTITION OF ra.visit FOR VALUES FROM ('2026-01-01') TO ('2026-07-01');
CREATE TABLE ra.visit_b PARTITION OF ra.visit FOR VALUES FROM ('2026-07-01') TO ('2027-01-01');
CREATE TABLE ra.note (id int PRIMARY KEY, body text);   -- not registered
SELECT gdpr.register_subject('ra.customer', 'id', kind => 'ra');
SELECT gdpr.register_table('ra.orders', kind => 'ra');
SELECT gdpr.register_table('ra.item', kind => 'ra');
SELECT gdpr.register_table('ra.visit', kind => 'ra', subject_column => 'customer_id');
INSERT INTO ra.customer SELECT g, 'name ' || g, 'c' || g || '@example.com' FROM generate_series(1, 20) g;
INSERT INTO ra.orders SELECT g, 1 + g % 20, g FROM generate_series(1, 60) g;
INSERT INTO ra.item SELECT g, 1 + g % 60, 'sku' FROM generate_series(1, 120) g;
INSERT INTO ra.visit VALUES (1, 3, '2026-02-01'), (2, 4, '2026-08-01'), (3, 3, '2026-09-01');
ANALYZE ra.customer, ra.orders, ra.item, ra.visit;

-- Waits until the queue has handed every event to the trail
CREATE FUNCTION ra.drained() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..400 LOOP
        IF (SELECT used_bytes = 0 FROM gdpr.event_queue) THEN
            RETURN true;
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RETURN false;
END
$$;
CREATE TABLE ra.since (id bigint);
CREATE FUNCTION ra.mark() RETURNS void LANGUAGE sql AS $$
    SELECT ra.drained();
    DELETE FROM ra.since; INSERT INTO ra.since SELECT COALESCE(max(event_id), 0) FROM gdpr.audit_log $$;
-- Every statement's read: a trail row holds a run of reads that share their context (queue.c),
-- each statement an entry of detail.reads that names its subjects by their positions
CREATE FUNCTION ra.statements() RETURNS TABLE (event_id bigint, at timestamptz, tbl text, subjects text[],
                                              rows_read text, bulk text, aborted text,
                                              effective_role text, application text)
LANGUAGE sql AS $$
    SELECT a.event_id, (st ->> 'at')::timestamptz, a.table_name,
           CASE WHEN a.related_subject_ids IS NOT NULL
                THEN ARRAY(SELECT a.related_subject_ids[p] FROM gdpr._read_positions(st) p ORDER BY 1) END,
           st ->> 'rows', COALESCE(st ->> 'bulk', 'false'), st ->> 'aborted', a.effective_role, a.application_name
      FROM gdpr.audit_log a, jsonb_array_elements(a.detail -> 'reads') st
     WHERE a.event = 'READ' $$;
-- The statements' reads since the mark
CREATE FUNCTION ra.reads() RETURNS TABLE (tbl text, subjects text[], rows_read text, bulk text, aborted text)
LANGUAGE sql AS $$
    SELECT tbl, subjects, rows_read, bulk, aborted FROM ra.statements()
     WHERE event_id > (SELECT id FROM ra.since) ORDER BY at, tbl $$;

-- 1. Only read-audited tables are recorded, and only tables of the map can be.
SELECT gdpr.set_read_audit('ra.note');
SELECT gdpr.set_read_audit('ra.customer', NULL);
SELECT ra.mark();
SELECT name FROM ra.customer WHERE id = 1;
SELECT ra.drained();
SELECT tbl, subjects, rows_read, bulk FROM ra.reads();
SELECT gdpr.set_read_audit('ra.customer');
SELECT gdpr.set_read_audit('ra.orders');
SELECT gdpr.set_read_audit('ra.item');
SELECT gdpr.set_read_audit('ra.visit');
SELECT relid, read_audit FROM gdpr.registered_table WHERE kind = 'ra' ORDER BY relid::text;
SELECT event, table_name, detail FROM gdpr.audit_log WHERE event = 'MAP_READ_AUDIT' ORDER BY event_id;

-- 2. A point lookup reads one subject; a range, those in it; a count of the table, everyone.
SELECT ra.mark();
SELECT name FROM ra.customer WHERE id = 7;
SELECT count(*) FROM ra.customer WHERE id BETWEEN 3 AND 5;
SELECT count(*) FROM ra.customer;
-- a row the filter rejected was not read: no subject, no event
SELECT name FROM ra.customer WHERE id = 7 AND name = 'nobody';
SELECT ra.drained();
SELECT tbl, subjects, rows_read, bulk FROM ra.reads();

-- 3. Through a join, a view, a function, a subquery: each table read names its own subjects.
--    orders names its subject by its foreign key; item, two steps away, is resolved by the writer.
CREATE VIEW ra.order_view AS SELECT o.id, c.name FROM ra.orders o JOIN ra.customer c ON c.id = o.customer_id;
CREATE FUNCTION ra.order_count(c int) RETURNS bigint LANGUAGE sql AS $$ SELECT count(*) FROM ra.orders WHERE customer_id = c $$;
-- (nested loops over index scans: a hash join would read, and record, every customer)
SET enable_hashjoin = off;
SET enable_mergejoin = off;
SET enable_seqscan = off;
SET enable_bitmapscan = off;
SELECT ra.mark();
SELECT c.name, count(*) FROM ra.customer c JOIN ra.orders o ON o.customer_id = c.id WHERE c.id = 2 GROUP BY c.name;
SELECT name FROM ra.order_view WHERE id = 5;
SELECT ra.order_count(9);
SELECT count(*) FROM ra.item WHERE order_id IN (2, 3);
-- (an index without the subject's column is not scanned index-only: the rows must say whose they are)
SELECT count(*) FROM ra.visit WHERE at >= '2026-08-01';
RESET enable_hashjoin;
RESET enable_mergejoin;
RESET enable_seqscan;
RESET enable_bitmapscan;
SELECT ra.drained();
SELECT tbl, subjects, rows_read, bulk FROM ra.reads();

-- 4. A read-only transaction, a prepared statement, a cursor fetched halfway, an index-only scan,
--    COPY TO (every row: a bulk read), a statement that fails halfway (what it read was read).
SELECT ra.mark();
BEGIN READ ONLY;
SELECT name FROM ra.customer WHERE id = 11;
COMMIT;
PREPARE by_id(int) AS SELECT name FROM ra.customer WHERE id = $1;
EXECUTE by_id(12);
EXECUTE by_id(13);
BEGIN;
DECLARE cur CURSOR FOR SELECT id FROM ra.customer WHERE id BETWEEN 14 AND 17 ORDER BY id;
FETCH 2 FROM cur;
CLOSE cur;
COMMIT;
SET enable_seqscan = off;
SET enable_bitmapscan = off;
SELECT count(*) FROM ra.orders WHERE customer_id = 4;
RESET enable_seqscan;
RESET enable_bitmapscan;
COPY ra.customer TO '/dev/null';
SELECT id, 1 / (id - 19) FROM ra.customer WHERE id BETWEEN 18 AND 20 ORDER BY id;
SELECT ra.drained();
SELECT tbl, subjects, rows_read, bulk, aborted FROM ra.reads();

-- 5. More subjects than gdpr.read_audit_max_subjects: the table and a count, flagged bulk.
SET gdpr.read_audit_max_subjects = 5;
SELECT ra.mark();
SELECT count(*) FROM ra.orders;
SELECT count(*) FROM ra.customer WHERE id <= 5;
RESET gdpr.read_audit_max_subjects;
SELECT ra.drained();
SELECT tbl, subjects, rows_read, bulk FROM ra.reads();

-- 6. A reader who may not see the trail is recorded all the same, under their own name; and a
--    table no longer read-audited is no longer recorded.
CREATE ROLE ra_reader;
GRANT USAGE ON SCHEMA ra TO ra_reader;
GRANT SELECT ON ra.customer TO ra_reader;
SELECT ra.mark();
SET ROLE ra_reader;
SET application_name = 'ra-app';
SELECT name FROM ra.customer WHERE id = 8;
SELECT count(*) FROM gdpr.audit_log;
RESET application_name;
RESET ROLE;
SELECT ra.drained();
SELECT tbl, subjects, effective_role, application FROM ra.statements()
 WHERE event_id > (SELECT id FROM ra.since) ORDER BY at;
SELECT gdpr.set_read_audit('ra.visit', false);
SELECT ra.mark();
SELECT count(*) FROM ra.visit;
SELECT ra.drained();
SELECT tbl, subjects, rows_read, bulk FROM ra.reads();

-- 7. Who read subject 8: gdpr_access_log, the export's summary (Art. 15(1)(c)) and the breach
--    report, where a bulk read of the kind's tables counts for everyone.
SELECT table_name, effective_role, application_name, bulk, rows_read
  FROM gdpr_access_log(8, 'ra') ORDER BY event_id;
SELECT count(*) FROM gdpr_access_log(8, 'ra', now() + interval '1 hour');
SELECT r ->> 'role' AS role, r ->> 'application' AS application, r ->> 'reads' AS reads, r ->> 'bulk_reads' AS bulk_reads
  FROM jsonb_array_elements(gdpr_export(8, 'ra') -> 'accessed_by' -> 'readers') r
 ORDER BY 1, 2;
SELECT gdpr_export(8, 'ra') -> 'accessed_by' ->> 'article';
SELECT subject_kind, subject_id, access
  FROM gdpr_breach_subjects(now() - interval '1 hour', now() + interval '1 hour', 'ra_reader')
 WHERE subject_kind = 'ra';
SELECT subject_kind, subject_id, access
  FROM gdpr_breach_subjects(now() - interval '1 hour', now() + interval '1 hour')
 WHERE subject_kind = 'ra' AND subject_id IN ('1', '8') OR (subject_kind = 'ra' AND subject_id IS NULL);

-- 8. Rights functions in a read-only transaction: the export works, its EXPORT event arrives
--    through the queue.
SELECT ra.mark();
BEGIN READ ONLY;
SELECT jsonb_typeof(gdpr_export(9, 'ra') -> 'data');
-- without the trial erasure, which needs to write, the answer is unknown, not yes
SELECT gdpr_can_erase(9, 'ra') - 'holds';
SELECT count(*) FROM gdpr_export_rows(9, 'ra');
COMMIT;
SELECT ra.drained();
SELECT event, subject_id, session_role FROM gdpr.audit_log
 WHERE event_id > (SELECT id FROM ra.since) AND event IN ('EXPORT', 'ERASE_CHECK') ORDER BY event_id;

-- 9. Erasure scrubs the subject from every read event; a read naming several subjects keeps the
--    others and names the erased one by pseudonym, as the erasure names them.
SELECT count(*) FROM ra.statements() WHERE subjects @> ARRAY['8'];
SELECT gdpr_erase(8, kind => 'ra') ->> 'status';
SELECT count(*) FROM gdpr.audit_log WHERE subject_kind = 'ra' AND (subject_id = '8' OR related_subject_ids @> ARRAY['8']);
-- from then on gdpr_admin finds who read them before by their pseudonym only (as for every request
-- about an erased subject): the two reads naming them and the two exports
SELECT table_name, bulk FROM gdpr_access_log(8, 'ra') WHERE NOT bulk ORDER BY event_id;
SELECT count(*) FROM ra.statements() WHERE subjects @> ARRAY[gdpr._erased_pseudonym('ra', '8')];
SELECT cardinality(subjects), subjects @> ARRAY[gdpr._erased_pseudonym('ra', '8')], subjects @> ARRAY['7', '9']
  FROM ra.statements() WHERE tbl = 'ra.customer' AND cardinality(subjects) = 20;
--    A read queued before an erasure and written after it: the writer waits for the sealers'
--    lock this transaction holds, then writes the key as the erasure left it, by pseudonym.
SELECT ra.mark();
BEGIN;
SELECT FROM gdpr.audit_seal_state FOR SHARE;
SELECT name FROM ra.customer WHERE id = 10;
SELECT pg_sleep(0.3);
SELECT gdpr_erase(10, kind => 'ra') ->> 'status';
COMMIT;
SELECT ra.drained();
SELECT subjects = ARRAY[gdpr._erased_pseudonym('ra', '10')] AS by_pseudonym FROM ra.reads();
SELECT count(*) FROM gdpr.audit_log WHERE subject_kind = 'ra' AND (subject_id = '10' OR related_subject_ids @> ARRAY['10']);

-- 10. Attacks: ways to read without being recorded.
GRANT SELECT, UPDATE, DELETE ON ra.customer TO ra_reader;
GRANT CREATE ON SCHEMA ra TO ra_reader;
SELECT ra.mark();
SET ROLE ra_reader;
SET enable_seqscan = off;
SET enable_bitmapscan = off;
-- a filter that copies out what it sees: every row it was given was read, not only those it kept
SELECT count(*) FROM ra.customer WHERE id < 6 AND set_config('ra.loot', coalesce(current_setting('ra.loot', true), '') || email || ';', false) IS NULL;
SELECT length(current_setting('ra.loot')) > 0 AS copied;
-- the WHERE of an UPDATE or DELETE reads the rows, also when nothing changes or matches
UPDATE ra.customer SET name = name WHERE id = 11 AND email LIKE 'c11@%';
DELETE FROM ra.customer WHERE id = 12 AND email LIKE 'someone else%';
RESET enable_seqscan;
RESET enable_bitmapscan;
-- a set-returning SQL function is inlined when planned: no parallel plan hides its rows
CREATE FUNCTION ra.all_customers() RETURNS SETOF ra.customer LANGUAGE sql STABLE PARALLEL SAFE
    AS 'SELECT * FROM ra.customer';
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET parallel_leader_participation = off;
SELECT count(*) FROM ra.all_customers() WHERE name LIKE 'name 1%';
RESET parallel_setup_cost;
RESET parallel_tuple_cost;
RESET min_parallel_table_scan_size;
RESET parallel_leader_participation;
-- an address the trail's inet type would refuse is refused at once, not by the writer later
SET gdpr.client_addr = '1.2.3.4/+5';
RESET ROLE;
SELECT ra.drained();
-- (erased subjects are named by pseudonym, which differs from one database to the next)
SELECT tbl, CASE WHEN cardinality(subjects) < 20 THEN subjects::text ELSE cardinality(subjects) || ' subjects' END AS subjects,
       rows_read, bulk
  FROM ra.reads();

-- a rights function that user code calls from a rights function, and that fails under an
-- exception block, does not leave the session's reads unrecorded
CREATE FUNCTION ra.check_on_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        PERFORM gdpr_can_erase(999999, 'ra');
    EXCEPTION WHEN others THEN NULL;
    END;
    RETURN OLD;
END $$;
CREATE TRIGGER check_on_delete BEFORE DELETE ON ra.orders FOR EACH ROW EXECUTE FUNCTION ra.check_on_delete();
SELECT gdpr_erase(15, kind => 'ra') ->> 'status';
SELECT ra.mark();
SELECT name FROM ra.customer WHERE id = 16;
SELECT ra.drained();
SELECT tbl, subjects, rows_read, bulk FROM ra.reads();
DROP TRIGGER check_on_delete ON ra.orders;

-- an inheritance child's rows are its registered parent's
CREATE TABLE ra.visit_log (id int PRIMARY KEY, customer_id int, note text);
CREATE TABLE ra.visit_log_old () INHERITS (ra.visit_log);
SELECT gdpr.register_table('ra.visit_log', kind => 'ra', subject_column => 'customer_id');
SELECT gdpr.set_read_audit('ra.visit_log');
INSERT INTO ra.visit_log VALUES (1, 3, 'new');
INSERT INTO ra.visit_log_old VALUES (2, 4, 'old');
SELECT ra.mark();
SELECT count(*) FROM ra.visit_log;
SELECT count(*) FROM ra.visit_log_old;
SELECT ra.drained();
SELECT tbl, subjects, rows_read, bulk FROM ra.reads();
SELECT gdpr.unregister_table('ra.visit_log');

-- a SQL-standard function (BEGIN ATOMIC: its statements have no text, as Citus's subplans have
-- none) that an erasure's own statement runs, one level down, is user code: what it reads is read
CREATE FUNCTION ra.items_seen() RETURNS bigint LANGUAGE sql STABLE
BEGIN ATOMIC SELECT count(*) FROM ra.item WHERE id <= 2; END;
ALTER TABLE ra.customer ADD CONSTRAINT seen CHECK (ra.items_seen() >= 0) NOT VALID;
SELECT gdpr.classify_column('ra.customer', 'email', 'contact');   -- the erasure updates the row
SELECT ra.mark();
SELECT gdpr_erase(17, kind => 'ra') ->> 'status';
SELECT ra.drained();
SELECT tbl, subjects, rows_read, bulk FROM ra.reads();
ALTER TABLE ra.customer DROP CONSTRAINT seen;
DROP FUNCTION ra.items_seen();

-- 11. Nothing else changed: the chain still verifies.
SELECT v ->> 'ok' AS ok FROM gdpr_verify_audit() v;

DROP VIEW ra.order_view;
DROP FUNCTION ra.all_customers();
SELECT gdpr.unregister_table(t) FROM unnest(ARRAY['ra.item', 'ra.orders', 'ra.visit', 'ra.customer']::regclass[]) t;
DROP SCHEMA ra CASCADE;
DROP ROLE ra_reader;
