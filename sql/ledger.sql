-- The erasure ledger (test/run sets gdpr.ledger_directory): every erasure, withdrawn consent,
-- objection and restriction is written outside the database, and a copy that lacks one replays
-- it.  Here a restored copy is played by removing what the ledger's entries did; the TAP test
-- 006_ledger restores real base backups, PITR copies and dumps.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE SCHEMA led;
SET search_path = led, public;
CREATE TABLE person (id bigint PRIMARY KEY, email text, name text);
CREATE TABLE bill (id int PRIMARY KEY, person_id bigint REFERENCES person, billed_to text, unpaid boolean);
SELECT gdpr.register_subject('person', 'id', kind => 'person');
SELECT gdpr.register_table('bill', on_erase => 'anonymize', kind => 'person');
SELECT gdpr.classify_column('person', 'email', 'contact');
SELECT gdpr.classify_column('person', 'name', 'identity');
SELECT gdpr.classify_column('bill', 'billed_to', 'identity');
SELECT gdpr.add_purpose('ledger_news', 'newsletter', 'consent');
SELECT gdpr.add_purpose('ledger_profiling', 'profiling', 'legitimate_interests');
INSERT INTO person VALUES (1, 'ann@example.org', 'Ann'), (2, 'ben@example.org', 'Ben'),
                          (3, 'cat@example.org', 'Cat'), (4, 'dov@example.org', 'Dov'),
                          (5, 'eve@example.org', 'Eve');
INSERT INTO bill VALUES (1, 1, 'Ann', true), (2, 2, 'Ben', false);

-- The identity: made at CREATE EXTENSION, one incarnation.
SELECT count(*) AS incarnations, gdpr.ledger_identity() IS NOT NULL AS has_identity
  FROM gdpr.database_identity;

-- An erasure and its entry; a rolled-back one leaves none.
SELECT gdpr_erase(2, kind => 'person') ->> 'ledger' AS ledger;
SELECT gdpr_erase(5, kind => 'person') ->> 'ledger' AS ledger;
BEGIN;
SAVEPOINT s;
SELECT gdpr_erase(3, kind => 'person') ->> 'status' AS status;
ROLLBACK TO SAVEPOINT s;
COMMIT;
-- consent withdrawn, objection, restriction
SELECT gdpr_grant_consent(4, 'ledger_news', 'v1', kind => 'person') > 0 AS granted;
SELECT gdpr_withdraw_consent(4, 'ledger_news', kind => 'person');
SELECT gdpr_object(4, 'ledger_profiling', kind => 'person') > 0 AS objected;
SELECT gdpr_restrict(4, 'accuracy contested', kind => 'person');
-- a transaction that erases cannot be prepared: its line is written at commit
BEGIN;
SELECT gdpr_unrestrict(4, kind => 'person');
SELECT gdpr_restrict(4, 'again', kind => 'person');
PREPARE TRANSACTION 'ledger';
-- (the tests before this one erased too: this database's ledger has their entries)
SELECT entry, purpose, held, ours, missing, aborted FROM gdpr.ledger_entries() WHERE kind = 'person';
SELECT (v->'valid')::boolean AS valid, (v->'entries')::int = (v->'held')::int AS all_held,
       v->'missing' AS missing, v->'foreign' AS foreign_entries
  FROM gdpr.verify_ledger() v;
SELECT entry, purpose FROM gdpr.ledger WHERE kind = 'person' ORDER BY recorded_at, entry;

-- A restored copy: it predates all of that.  Ben is back, with his bill now unpaid (a legal
-- hold applies); the consent is active again, the objection and restriction are gone.
SELECT gdpr.add_legal_hold('led.bill', 'unpaid', 'unpaid bills') AS hold \gset
BEGIN;
DELETE FROM gdpr.ledger WHERE kind = 'person';
DELETE FROM gdpr.erasure WHERE kind = 'person';
DELETE FROM gdpr.restriction WHERE kind = 'person';
DELETE FROM gdpr.objection WHERE kind = 'person';
UPDATE gdpr.consent SET withdrawn_at = NULL, withdrawn_by = NULL WHERE kind = 'person';
UPDATE person SET email = 'ben@example.org', name = 'Ben' WHERE id = 2;
UPDATE bill SET billed_to = 'Ben', unpaid = true WHERE id = 2;
COMMIT;
SELECT v->'missing' AS missing, v->'held' AS held FROM gdpr.verify_ledger() v;
-- Replay: Ben is erased again despite the hold (the erasure was decided then), the consent is
-- withdrawn again, the objection and the restriction are back.
SELECT entry, kind, outcome FROM gdpr_replay_erasures();
SELECT * FROM person ORDER BY id;
SELECT * FROM bill ORDER BY id;
SELECT purpose, withdrawn_at IS NOT NULL AS withdrawn FROM gdpr.consent WHERE kind = 'person';
SELECT purpose FROM gdpr.objection WHERE kind = 'person';
SELECT source FROM gdpr.restriction WHERE kind = 'person' ORDER BY source;
SELECT event, detail->>'status' AS status, detail->>'ledger' AS ledger, detail->>'outcome' AS outcome
  FROM gdpr.audit_log WHERE event IN ('ERASE_REPLAY', 'LEDGER_REPLAY') ORDER BY event_id;
-- the replay says where the line was written and where it is replayed, for whoever investigates
SELECT detail->'replay'->'written' ?& ARRAY['seq', 'lsn', 'xid', 'system_identifier', 'timeline'] AS written,
       detail->'replay'->'here' ?& ARRAY['lsn', 'system_identifier', 'timeline'] AS here
  FROM gdpr.audit_log WHERE event = 'ERASE_REPLAY' ORDER BY event_id LIMIT 1;
SELECT v->'valid' AS valid, v->'missing' AS missing FROM gdpr.verify_ledger() v;
-- nothing left to replay
SELECT count(*) AS replayed_again FROM gdpr_replay_erasures();

-- Subjects whose rows the copy no longer has are found by what still names them (the trail of
-- their rows' deletion, a consent) and erased from there.
SELECT gdpr.drop_legal_hold(:hold);
BEGIN;
DELETE FROM gdpr.ledger WHERE kind = 'person';
DELETE FROM gdpr.erasure WHERE kind = 'person';
DELETE FROM gdpr.restriction WHERE kind = 'person';
DELETE FROM bill WHERE person_id IN (4, 5);
DELETE FROM person WHERE id IN (4, 5);
UPDATE gdpr.consent SET withdrawn_at = NULL, withdrawn_by = NULL WHERE kind = 'person';
COMMIT;
SELECT entry, outcome FROM gdpr_replay_erasures() ORDER BY seq;
SELECT purpose, withdrawn_at IS NOT NULL AS withdrawn FROM gdpr.consent WHERE kind = 'person';
SELECT report->>'status' AS status, report->>'note' AS note FROM gdpr.erasure WHERE kind = 'person' ORDER BY 1;

-- Two databases on one identity: entries written by a database outside this one's lineage
-- (a clone made with CREATE DATABASE ... TEMPLATE, which took the identity with it) are
-- foreign here, counted and never replayed.  (006_ledger makes a real clone.)
BEGIN;
UPDATE gdpr.database_identity SET database_oid = 1;
DELETE FROM gdpr.ledger WHERE kind = 'person';
SELECT v->'foreign' AS foreign_entries, v->'missing' AS missing, jsonb_array_length(v->'foreign_writers') AS writers
  FROM gdpr.verify_ledger() v;
ROLLBACK;

-- Who may: applications neither read nor replay the ledger.
CREATE ROLE ledger_app;
SET ROLE ledger_app;
SELECT * FROM gdpr_replay_erasures();
SELECT count(*) FROM gdpr.ledger;
SELECT gdpr._erase_replay('1', 'person', gen_random_uuid(), 1);
RESET ROLE;
-- only a superuser erases as another role
CREATE ROLE ledger_admin IN ROLE gdpr_admin;
GRANT USAGE ON SCHEMA led TO ledger_admin;
GRANT SELECT, UPDATE, DELETE ON led.person, led.bill TO ledger_admin;
-- gdpr_admin verifies and replays (here, Ben restored once more)
BEGIN;
DELETE FROM gdpr.ledger WHERE kind = 'person' AND entry = 'erase';
DELETE FROM gdpr.erasure WHERE kind = 'person';
DELETE FROM gdpr.restriction WHERE kind = 'person' AND source = 'erased';
UPDATE person SET email = 'ben@example.org', name = 'Ben' WHERE id = 2;
COMMIT;
SET ROLE ledger_admin;
SELECT v->'valid' AS valid, v->'missing' AS missing FROM gdpr.verify_ledger() v;
SELECT entry, outcome FROM gdpr_replay_erasures();
SELECT * FROM person WHERE id = 2;
SELECT gdpr._erase_replay('1', 'person', gen_random_uuid(), 1, 10);
-- and an erasure past the legal holds is only ever one the ledger holds and the database lacks
SELECT gdpr._erase_replay('1', 'person', gen_random_uuid(), 1);
RESET ROLE;
SELECT gdpr._erase_replay('1', 'person', (SELECT entry_id FROM gdpr.ledger WHERE kind = 'person' AND entry = 'erase' LIMIT 1), 1);

-- Nothing is forged through the internal functions: the SQL side notes only what happened in
-- the transaction, never an erasure, and a replay acts only on an entry the ledger holds.
SET ROLE ledger_admin;
SELECT gdpr._ledger_note('erase', 'person', '1', NULL);
SELECT gdpr._ledger_note('restriction', 'person', '1', NULL);
SELECT gdpr._ledger_note('consent_withdrawn', 'person', '1', 'ledger_news');
SELECT gdpr._replay_record('restriction', 'person', 'f00', '1', NULL, gen_random_uuid(), 1);
RESET ROLE;
-- and not suppressed: a missing entry cannot be recorded as "nothing held" while the key is here
BEGIN;
DELETE FROM gdpr.ledger WHERE kind = 'person' AND entry = 'restriction';
SELECT gdpr._replay_record(l.entry, l.kind, l.pseudonym, NULL, l.purpose, l.entry_id, l.seq)
  FROM gdpr.ledger_entries() l WHERE l.kind = 'person' AND l.missing;
ROLLBACK;

-- The subject table is read as its owner when the replay looks for keys, even by a superuser:
-- a cast its owner wrote runs with the owner's rights.
CREATE ROLE ledger_evil;
GRANT USAGE ON SCHEMA led TO ledger_evil;
CREATE TABLE led.evil (id bigint PRIMARY KEY);
ALTER TABLE led.evil OWNER TO ledger_evil;
SELECT gdpr.register_subject('led.evil', 'id', kind => 'evil');
INSERT INTO led.evil VALUES (1);
CREATE TYPE led.evil_key AS (v bigint);
CREATE FUNCTION led.evil_text(led.evil_key) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    RAISE WARNING 'the cast runs as %', current_user;
    BEGIN
        EXECUTE 'ALTER ROLE ledger_evil SUPERUSER';
    EXCEPTION WHEN insufficient_privilege THEN NULL;
    END;
    RETURN ($1).v::text;
END $$;
CREATE CAST (led.evil_key AS text) WITH FUNCTION led.evil_text(led.evil_key);
ALTER FUNCTION led.evil_text(led.evil_key) OWNER TO ledger_evil;
ALTER TYPE led.evil_key OWNER TO ledger_evil;
ALTER TABLE led.evil ALTER COLUMN id TYPE led.evil_key USING ROW(id)::led.evil_key;
SELECT gdpr._ledger_keys('evil', ARRAY['x']);
SELECT rolsuper FROM pg_roles WHERE rolname = 'ledger_evil';
DROP TABLE led.evil;
DROP CAST (led.evil_key AS text);
DROP FUNCTION led.evil_text(led.evil_key);
DROP TYPE led.evil_key;
REVOKE USAGE ON SCHEMA led FROM ledger_evil;
DROP ROLE ledger_evil;


-- The settings are the server's: a session cannot move or switch off the ledger.
SET gdpr.ledger_directory = '/tmp';
SET gdpr.ledger_directory = '';

-- A new identity starts a new ledger (a clone that is to live on its own).
SELECT gdpr.new_database_identity() IS NOT NULL AS new_identity;
SELECT v - 'identity' AS verify FROM gdpr.verify_ledger() v;

DROP SCHEMA led CASCADE;
DROP ROLE ledger_app;
DROP ROLE ledger_admin;
