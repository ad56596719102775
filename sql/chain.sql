-- The hash chain: sealing, verification, tampering caught, erasure and digests.
\set SHOW_CONTEXT never
SET search_path = shop, public;
SET client_min_messages = warning;

INSERT INTO customer (id, email, full_name) VALUES (70, 'gil70@example.com', 'Gil'), (71, 'hal71@example.com', 'Hal');
INSERT INTO orders VALUES (70, 70, 1.50), (71, 71, 2.50), (72, 70, 3.50);
UPDATE customer SET full_name = 'Gilbert' WHERE id = 70;
-- two seals in one statement: the second sees the first one's row
SELECT gdpr.seal_audit(1) AS one, gdpr.seal_audit(1) AS then_another;
SELECT gdpr.seal_audit(5) AS first_five;
-- a state row edited by hand to name pending identity values but no writers
BEGIN;
SET LOCAL session_replication_role = replica;
UPDATE gdpr.audit_seal_state SET pending_upto = 0, pending_writers = NULL;
SET LOCAL session_replication_role = origin;
SELECT gdpr.seal_audit(1) AS sealed_without_writers;
ROLLBACK;
SELECT gdpr.seal_audit() > 0 AS sealed_the_rest, gdpr.seal_audit() AS nothing_left;
SELECT (v->>'ok')::boolean AS ok, (v->>'events_checked')::int = (SELECT max(seq) FROM gdpr.audit_seal) AS all_checked
  FROM gdpr_verify_audit() v;
SELECT gdpr_audit_digest() AS digest \gset
-- An event that expired before it was sealed stays out of the chain (after a restore, the
-- expired events of a folded prefix are not sealed again).
BEGIN;
SET LOCAL session_replication_role = replica;
INSERT INTO gdpr.audit_log (event_id, event, subject_kind, subject_id, retention_until)
OVERRIDING SYSTEM VALUE VALUES (-1, 'EXPORT', 'default', '70', now() - interval '1 day');
UPDATE gdpr.audit_seal_state SET frontier = -1;
SET LOCAL session_replication_role = origin;
SELECT gdpr.seal_audit() AS expired_sealed;
ROLLBACK;
-- Who sealed what: nothing personal in the seal, one row per event, in sequence.
SELECT count(*) = max(seq) AS gapless, bool_and(length(chain_hash) = 32 AND length(nonce) = 16) AS well_formed
  FROM gdpr.audit_seal;

-- Nobody changes the trail, superusers included: only erasure, sealing and purge do.
UPDATE gdpr.audit_log SET actor = 'mallory' WHERE event_id = 1;
DELETE FROM gdpr.audit_log WHERE event_id = 1;
TRUNCATE gdpr.audit_log;
UPDATE gdpr.audit_seal SET nonce = NULL;
DELETE FROM gdpr.audit_seal;
TRUNCATE gdpr.audit_checkpoint;

-- What a superuser does anyway (triggers off) is caught.  Each scenario is rolled back.
SELECT max(seq) - 3 AS k FROM gdpr.audit_seal \gset
SELECT s.event_id AS victim FROM gdpr.audit_seal s JOIN gdpr.audit_log a USING (event_id)
 WHERE a.subject_id = '70' AND a.event = 'INSERT' AND a.table_name = 'shop.customer' \gset
CREATE FUNCTION pg_temp.problem(digest jsonb DEFAULT NULL) RETURNS text LANGUAGE sql AS
  $$ SELECT CASE WHEN (v->>'ok')::boolean THEN 'ok' ELSE v->'first_bad'->>'problem' END FROM gdpr_verify_audit(digest) v $$;
-- the problem and why, numbers left out: several checks report the same problem
CREATE FUNCTION pg_temp.why() RETURNS text LANGUAGE sql AS
  $$ SELECT CASE WHEN (v->>'ok')::boolean THEN 'ok'
                 ELSE (v->'first_bad'->>'problem') || ': ' || regexp_replace(v->'first_bad'->>'detail', '[0-9]+', 'N', 'g') END
       FROM gdpr_verify_audit() v $$;

-- a value changed
BEGIN;
SET LOCAL session_replication_role = replica;
UPDATE gdpr.audit_log SET new_values = new_values || '{"full_name": "Mallory"}' WHERE event_id = :victim;
SELECT pg_temp.problem() AS value_changed;
ROLLBACK;
-- who did it, changed
BEGIN;
SET LOCAL session_replication_role = replica;
UPDATE gdpr.audit_log SET session_role = 'nobody' WHERE event_id = :victim;
SELECT pg_temp.problem() AS actor_changed;
ROLLBACK;
-- an event deleted, and an event deleted with its seal
BEGIN;
SET LOCAL session_replication_role = replica;
DELETE FROM gdpr.audit_log WHERE event_id = :victim;
SELECT pg_temp.problem() AS event_deleted;
DELETE FROM gdpr.audit_seal WHERE event_id = :victim;
SELECT pg_temp.problem() AS event_and_seal_deleted;
ROLLBACK;
-- the newest events cut off: a shorter chain is consistent, but their events lie below the
-- frontier of what was sealed
BEGIN;
SET LOCAL session_replication_role = replica;
DELETE FROM gdpr.audit_seal WHERE seq > :k;
SELECT pg_temp.problem() AS cut_alone, pg_temp.problem(:'digest') AS cut_against_digest;
ROLLBACK;
-- an event inserted into the sealed part of the chain
BEGIN;
SET LOCAL session_replication_role = replica;
UPDATE gdpr.audit_seal SET seq = -seq - 1 WHERE seq >= :k;
UPDATE gdpr.audit_seal SET seq = -seq WHERE seq < 0;
INSERT INTO gdpr.audit_log (event_id, event, subject_kind, subject_id, retention_until)
OVERRIDING SYSTEM VALUE VALUES (100000, 'EXPORT', 'default', '70', now() + interval '1 year');
INSERT INTO gdpr.audit_seal (seq, event_id, retention_until, nonce, personal_digest, event_digest, chain_hash)
SELECT :k, 100000, now() + interval '1 year', '\x00', sha256('p'), sha256('e'), sha256('c');
SELECT pg_temp.problem() AS event_inserted;
ROLLBACK;
-- two events swapped
BEGIN;
SET LOCAL session_replication_role = replica;
UPDATE gdpr.audit_seal SET seq = -1 WHERE seq = :k;
UPDATE gdpr.audit_seal SET seq = :k WHERE seq = :k + 1;
UPDATE gdpr.audit_seal SET seq = :k + 1 WHERE seq = -1;
SELECT pg_temp.problem() AS events_swapped;
ROLLBACK;
-- an event edited, and its seal row dated back so that the event looks expired; then deleted
BEGIN;
SET LOCAL session_replication_role = replica;
UPDATE gdpr.audit_log SET new_values = '{"full_name": "Mallory"}' WHERE event_id = :victim;
UPDATE gdpr.audit_seal SET retention_until = now() - interval '1 day' WHERE event_id = :victim;
SELECT pg_temp.problem() AS edited_and_dated_back;
DELETE FROM gdpr.audit_log WHERE event_id = :victim;
SELECT pg_temp.problem() AS deleted_and_dated_back;
ROLLBACK;
-- a nonce dropped from an event that is neither erased nor expired, its values then changed
BEGIN;
SET LOCAL session_replication_role = replica;
UPDATE gdpr.audit_seal SET nonce = NULL WHERE event_id = :victim;
UPDATE gdpr.audit_log SET new_values = '{"full_name": "Mallory"}' WHERE event_id = :victim;
SELECT pg_temp.problem() AS nonce_dropped;
ROLLBACK;
-- an event slipped in below the sealed part of the trail, with an identity value never handed out
BEGIN;
SET LOCAL session_replication_role = replica;
INSERT INTO gdpr.audit_log (event_id, event, subject_kind, subject_id, retention_until)
OVERRIDING SYSTEM VALUE VALUES (0, 'EXPORT', 'default', '70', now() + interval '1 year');
SELECT pg_temp.problem() AS slipped_in_unsealed;
ROLLBACK;
-- a checkpoint made up to skip the chain before it: copied from a seal row whose event has not
-- expired, then with the retention of its link dated back, then a consistent one over a chain
-- whose rows are still there, then with those rows gone
BEGIN;
SET LOCAL session_replication_role = replica;
INSERT INTO gdpr.audit_checkpoint (seq, chain_hash, prev_hash, event_digest, retention_until)
SELECT s.seq, s.chain_hash, p.chain_hash, s.event_digest, s.retention_until
  FROM gdpr.audit_seal s JOIN gdpr.audit_seal p ON p.seq = s.seq - 1 WHERE s.seq = :k;
SELECT pg_temp.why() AS checkpoint_not_expired;
UPDATE gdpr.audit_checkpoint SET retention_until = now() - interval '1 day';
SELECT pg_temp.why() AS checkpoint_dated_back;
UPDATE gdpr.audit_checkpoint c
   SET chain_hash = sha256(c.prev_hash || int8send(c.seq) || c.event_digest ||
                           int8send(((extract(epoch FROM c.retention_until) - 946684800) * 1000000)::int8));
SELECT pg_temp.why() AS checkpoint_over_sealed_rows;
DELETE FROM gdpr.audit_seal WHERE seq <= :k;
SELECT pg_temp.why() AS checkpoint_over_live_events;
ROLLBACK;
-- a redaction without an erasure
BEGIN;
SET LOCAL session_replication_role = replica;
UPDATE gdpr.audit_log SET new_values = NULL, old_values = NULL WHERE event_id = :victim;
UPDATE gdpr.audit_seal SET nonce = NULL, redacted_by = 'deadbeef', redacted_at = now() WHERE event_id = :victim;
SELECT pg_temp.problem() AS redacted_by_nobody;
ROLLBACK;
-- the whole chain rewritten (one event changed, every seal recomputed): consistent in itself,
-- caught against the digest saved before
BEGIN;
SET LOCAL session_replication_role = replica;
UPDATE gdpr.audit_log SET new_values = '{"full_name": "Mallory"}' WHERE event_id = :victim;
DELETE FROM gdpr.audit_seal;
DELETE FROM gdpr.audit_seal_state;
SELECT gdpr.seal_audit() > 0 AS resealed;
SELECT pg_temp.problem() AS rewritten_alone, pg_temp.problem(:'digest') AS rewritten_against_digest;
ROLLBACK;
SELECT pg_temp.problem(:'digest') AS untouched_against_digest;

-- An erasure removes the values and the nonces, keeps the digests: the chain still verifies,
-- and says which events were redacted, when and by which erasure.
-- Erased under a shorter retention than its events had: the erasure's event is kept as long as
-- the events it redacted, so that verification finds it while they are in the chain.
SET gdpr.audit_retention = '1 day';
SELECT v->>'status' AS status, (v->>'sealed_events_redacted')::int > 0 AS redacted_sealed
  FROM gdpr_erase(70) v;
RESET gdpr.audit_retention;
SELECT a.retention_until >= (SELECT max(s.retention_until) FROM gdpr.audit_seal s WHERE s.redacted_by = a.subject_id)
       AS erasure_kept_as_long
  FROM gdpr.audit_log a WHERE a.event = 'ERASE' ORDER BY a.event_id DESC LIMIT 1;
SELECT count(*) > 0 AS marked, bool_and(nonce IS NULL AND redacted_at IS NOT NULL) AS nonces_gone,
       bool_and(redacted_by = (SELECT pseudonym FROM gdpr.erasure ORDER BY erased_at DESC LIMIT 1)) AS by_that_erasure
  FROM gdpr.audit_seal WHERE redacted_by IS NOT NULL;
SELECT pg_temp.problem() AS after_erasure_unsealed;
SELECT gdpr.seal_audit() > 0 AS erasure_sealed;
SELECT pg_temp.problem() AS after_erasure, pg_temp.problem(:'digest') AS after_erasure_against_digest;
-- claiming more redactions than the erasure made is caught
BEGIN;
SET LOCAL session_replication_role = replica;
UPDATE gdpr.audit_seal SET nonce = NULL, redacted_at = now(),
       redacted_by = (SELECT pseudonym FROM gdpr.erasure ORDER BY erased_at DESC LIMIT 1)
 WHERE event_id = (SELECT event_id FROM gdpr.audit_log WHERE subject_id = '71' LIMIT 1);
SELECT pg_temp.problem() AS extra_redaction;
ROLLBACK;

-- Bad input.
SELECT gdpr.seal_audit(0);
SELECT gdpr_verify_audit('{"seq": "x"}');
SELECT gdpr_verify_audit('{"seq": 1, "hash": "abc"}');
SELECT gdpr_verify_audit('[]');
-- a digest of the empty chain: every chain starts there
SELECT pg_temp.problem('{"seq": 0, "hash": "0000000000000000000000000000000000000000000000000000000000000000"}') AS from_empty_chain,
       pg_temp.problem('{"seq": 0, "hash": "1000000000000000000000000000000000000000000000000000000000000000"}') AS from_another_start;
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT gdpr.seal_audit();
ROLLBACK;
SELECT gdpr_verify_audit('{"seq": 99999999, "hash": "0000000000000000000000000000000000000000000000000000000000000000"}')->'first_bad'->>'problem' AS beyond_the_end;
-- How far sealing is behind, and sealing a large backlog one event at a time.
SELECT gdpr.seal_audit(100000) >= 0 AS caught_up;
INSERT INTO orders SELECT 10000 + g, 71, 1 FROM generate_series(1, 2000) g;
SELECT events_behind, seconds_behind >= 0 AS has_age FROM gdpr.seal_lag;
SELECT gdpr.seal_audit(1) AS sealed;
SELECT events_behind FROM gdpr.seal_lag;
DELETE FROM orders WHERE id > 10000;
SELECT gdpr.seal_audit(100000) AS sealed;
SELECT events_behind, seconds_behind FROM gdpr.seal_lag;
