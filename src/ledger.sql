------------------------------------------------------------------------------------------------
-- The erasure ledger: erasures, withdrawn consents, objections and restrictions written outside
-- the database (gdpr.ledger_directory), and replayed in a restored copy that lacks them.
------------------------------------------------------------------------------------------------

-- Who this database is, whichever copy of it runs: the identity is made at CREATE EXTENSION and
-- travels in dumps and base backups.  Each row is one incarnation (system and database) that has
-- served it; a copy adds its own row when it first replays.  The identity is that of the
-- earliest row: CREATE EXTENSION in a database that then restores a dump makes a row of its own,
-- younger than the dumped one, which the first replay removes.
CREATE TABLE gdpr.database_identity (
    identity           uuid NOT NULL,
    system_identifier  text NOT NULL,
    database_oid       oid NOT NULL,
    first_seen         timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (identity, system_identifier, database_oid)
);
CREATE FUNCTION gdpr._system_identifier() RETURNS text
    LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'gdpr_system_identifier';
INSERT INTO gdpr.database_identity (identity, system_identifier, database_oid)
SELECT pg_catalog.gen_random_uuid(), gdpr._system_identifier(), d.oid
  FROM pg_catalog.pg_database d WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database();

-- The ledger entries this database holds: written in the same transaction as what they record,
-- so a restored copy holds exactly those of its point in time.
CREATE TABLE gdpr.ledger (
    entry_id     uuid PRIMARY KEY,
    entry        text NOT NULL CHECK (entry IN ('erase', 'consent_withdrawn', 'objection', 'restriction')),
    kind         text NOT NULL,
    pseudonym    text NOT NULL,
    purpose      text,
    recorded_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    replayed_at  timestamptz,
    outcome      text
);

SELECT pg_catalog.pg_extension_config_dump('gdpr.database_identity', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.ledger', '');

CREATE FUNCTION gdpr.ledger_identity() RETURNS uuid
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$ SELECT i.identity FROM gdpr.database_identity i ORDER BY i.first_seen, i.identity LIMIT 1 $$;

-- The ledger's lines for this database's identity, verified along the chain (C); raises GD401 on
-- a damaged ledger and GD402 on an unreachable one.
CREATE FUNCTION gdpr._ledger_read(identity uuid) RETURNS jsonb
    LANGUAGE c VOLATILE STRICT AS 'MODULE_PATHNAME', 'gdpr_ledger_read';

-- Every entry of the ledger for this database's identity, and how it stands here: aborted (its
-- transaction rolled back after the line was written), held (this database holds it), ours
-- (written by this database or a copy it descends from), missing (to replay).
CREATE FUNCTION gdpr.ledger_entries()
    RETURNS TABLE (seq bigint, entry text, entry_id uuid, kind text, pseudonym text, purpose text,
                   written_at timestamptz, xid text, lsn pg_catalog.pg_lsn, system_identifier text,
                   timeline int, database_oid oid, aborted boolean, held boolean, ours boolean,
                   missing boolean)
    LANGUAGE sql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
WITH lines AS MATERIALIZED (
    SELECT l.*
      FROM pg_catalog.jsonb_to_recordset(gdpr._ledger_read(gdpr.ledger_identity())->'lines')
           AS l(seq bigint, entry text, entry_id uuid, kind text, pseudonym text, purpose text,
                written_at timestamptz, xid text, lsn pg_catalog.pg_lsn, system_identifier text,
                timeline int, database_oid oid)
), aborted AS (
    SELECT DISTINCT a.entry_id FROM lines a WHERE a.entry OPERATOR(pg_catalog.=) 'aborted'
), lineage AS (
    SELECT i.system_identifier, i.database_oid FROM gdpr.database_identity i
     WHERE i.identity OPERATOR(pg_catalog.=) gdpr.ledger_identity()
)
SELECT l.seq, l.entry, l.entry_id, l.kind, l.pseudonym, l.purpose, l.written_at, l.xid, l.lsn,
       l.system_identifier, l.timeline, l.database_oid,
       a.entry_id IS NOT NULL, h.entry_id IS NOT NULL, g.database_oid IS NOT NULL,
       a.entry_id IS NULL AND h.entry_id IS NULL AND g.database_oid IS NOT NULL
  FROM lines l
  LEFT JOIN aborted a ON a.entry_id OPERATOR(pg_catalog.=) l.entry_id
  LEFT JOIN gdpr.ledger h ON h.entry_id OPERATOR(pg_catalog.=) l.entry_id
  LEFT JOIN lineage g ON g.system_identifier OPERATOR(pg_catalog.=) l.system_identifier
                     AND g.database_oid OPERATOR(pg_catalog.=) l.database_oid
 WHERE l.entry OPERATOR(pg_catalog.<>) 'aborted'
 ORDER BY l.seq
$$;

-- Records the running incarnation among the identity's, once: a restored copy on another system
-- or in another database descends from the original and replays what it wrote.  A database made
-- by CREATE EXTENSION before a dump was restored into it drops its own, younger identity.
CREATE FUNCTION gdpr._ledger_adopt() RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    id uuid := gdpr.ledger_identity();
    sysid text := gdpr._system_identifier();
    dboid oid := (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database());
BEGIN
    DELETE FROM gdpr.database_identity i WHERE i.identity <> id;
    INSERT INTO gdpr.database_identity (identity, system_identifier, database_oid)
    VALUES (id, sysid, dboid) ON CONFLICT DO NOTHING;
END
$$;

-- What the ledger says about this database, without changing anything.
CREATE FUNCTION gdpr.verify_ledger() RETURNS jsonb
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
BEGIN
    WITH e AS MATERIALIZED (SELECT * FROM gdpr.ledger_entries())
    SELECT count(*) AS entries, count(*) FILTER (WHERE e.held) AS held,
           count(*) FILTER (WHERE e.aborted) AS aborted,
           count(*) FILTER (WHERE e.missing) AS missing,
           count(*) FILTER (WHERE NOT e.ours AND NOT e.held AND NOT e.aborted) AS foreign_entries,
           pg_catalog.array_agg(DISTINCT pg_catalog.format('system %s, database %s', e.system_identifier, e.database_oid))
               FILTER (WHERE NOT e.ours AND NOT e.held AND NOT e.aborted) AS foreign_writers,
           (SELECT count(*) FROM gdpr.ledger h
             WHERE NOT EXISTS (SELECT 1 FROM e x WHERE x.entry_id = h.entry_id)) AS not_in_ledger
      INTO r FROM e;
    RETURN jsonb_build_object(
        'valid', r.not_in_ledger = 0,
        'identity', gdpr.ledger_identity(),
        'entries', r.entries, 'held', r.held, 'aborted', r.aborted, 'missing', r.missing,
        'foreign', r.foreign_entries, 'foreign_writers', COALESCE(to_jsonb(r.foreign_writers), '[]'),
        'not_in_ledger', r.not_in_ledger);
END
$$;

-- The key behind each pseudonym of one kind, recomputed from the restored rows (C).
CREATE FUNCTION gdpr._ledger_keys(kind text, pseudonyms text[]) RETURNS jsonb
    LANGUAGE c VOLATILE STRICT AS 'MODULE_PATHNAME', 'gdpr_ledger_keys';
-- An erasure replayed: gdpr_erase without legal holds, recorded as ERASE_REPLAY (erase.c).
-- as_role: the worker (a superuser) erases with the rights of the subject table's owner.
CREATE FUNCTION gdpr._erase_replay(subject text, kind text, entry_id uuid, seq bigint,
                                   as_role oid DEFAULT 0) RETURNS jsonb
    LANGUAGE c VOLATILE STRICT AS 'MODULE_PATHNAME', 'gdpr_erase_replay';
-- Notes an entry for the ledger, written when the transaction commits (C).
CREATE FUNCTION gdpr._ledger_note(entry text, kind text, subject text, purpose text) RETURNS void
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'gdpr_ledger_note_sql';

-- Refuses unless the ledger holds the entry for this database to replay, and subject is the key
-- behind its pseudonym (NULL: no key of this database has it) (C).
CREATE FUNCTION gdpr._ledger_check(entry_id uuid, entry text, kind text, pseudonym text, subject text)
    RETURNS void LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'gdpr_ledger_check';

-- The replay of entries that change only the extension's own tables, and of entries whose
-- subject this copy does not hold: with the extension owner's rights, running no user code, and
-- only for what the ledger says.
CREATE FUNCTION gdpr._replay_record(entry text, kind text, pseudonym text, subject text,
                                    purpose text, entry_id uuid, seq bigint) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    outcome text;
BEGIN
    PERFORM gdpr._ledger_check(entry_id, entry, kind, pseudonym, subject);
    IF subject IS NULL THEN
        outcome := 'nothing held';
        IF entry = 'erase' THEN
            INSERT INTO gdpr.erasure (kind, pseudonym, report)
            VALUES (_replay_record.kind, _replay_record.pseudonym,
                    jsonb_build_object('status', 'replayed', 'ledger_seq', seq, 'note', 'nothing held in this copy'))
            ON CONFLICT DO NOTHING;
        END IF;
    ELSIF entry = 'consent_withdrawn' THEN
        UPDATE gdpr.consent c SET withdrawn_at = now(), withdrawn_by = 'gdpr ledger replay'
         WHERE c.kind = _replay_record.kind AND c.subject_id = subject AND c.purpose = _replay_record.purpose
           AND c.withdrawn_at IS NULL;
        outcome := CASE WHEN FOUND THEN 'consent withdrawn again' ELSE 'no consent held' END;
    ELSIF entry = 'objection' THEN
        IF NOT EXISTS (SELECT 1 FROM gdpr.purpose p WHERE p.name = _replay_record.purpose) THEN
            outcome := 'purpose not defined here';
        ELSIF EXISTS (SELECT 1 FROM gdpr.objection o WHERE o.kind = _replay_record.kind
                         AND o.subject_id = subject AND o.purpose = _replay_record.purpose) THEN
            outcome := 'objection held';
        ELSE
            INSERT INTO gdpr.objection (kind, subject_id, purpose, detail)
            VALUES (_replay_record.kind, subject, _replay_record.purpose, '{"replayed": true}');
            outcome := 'objection recorded again';
        END IF;
    ELSIF entry = 'restriction' THEN
        INSERT INTO gdpr.restriction (kind, subject_id, source, reason)
        VALUES (_replay_record.kind, subject, 'manual', 'restored from the erasure ledger')
        ON CONFLICT DO NOTHING;
        outcome := CASE WHEN FOUND THEN 'restricted again' ELSE 'restriction held' END;
        PERFORM gdpr._map_changed('gdpr.restriction');
    ELSE
        RAISE EXCEPTION 'ledger entry % has an unknown type "%"', seq, entry USING ERRCODE = 'GD401';
    END IF;
    INSERT INTO gdpr.ledger (entry_id, entry, kind, pseudonym, purpose, replayed_at, outcome)
    VALUES (_replay_record.entry_id, _replay_record.entry, _replay_record.kind, _replay_record.pseudonym,
            _replay_record.purpose, now(), outcome);
    PERFORM gdpr._log_event('LEDGER_REPLAY', NULL, true,
        jsonb_build_object('seq', seq, 'entry', entry, 'pseudonym', pseudonym, 'outcome', outcome),
        _replay_record.kind);
    RETURN outcome;
END
$$;

-- The entries to replay, oldest first, each with the key behind its pseudonym (NULL: this copy
-- holds nothing of the subject) and the owner of its kind's subject table.
CREATE FUNCTION gdpr._ledger_missing()
    RETURNS TABLE (seq bigint, entry text, entry_id uuid, kind text, pseudonym text, purpose text,
                   subject text, owner oid)
    LANGUAGE sql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
WITH m AS MATERIALIZED (
    SELECT * FROM gdpr.ledger_entries() l WHERE l.missing
), k AS (
    -- one pass over each kind's keys finds every pseudonym of that kind
    SELECT m.kind, gdpr._ledger_keys(m.kind, pg_catalog.array_agg(DISTINCT m.pseudonym)) AS keys
      FROM m WHERE EXISTS (SELECT FROM gdpr.subject_kind s WHERE s.kind OPERATOR(pg_catalog.=) m.kind)
     GROUP BY m.kind
)
SELECT m.seq, m.entry, m.entry_id, m.kind, m.pseudonym, m.purpose, k.keys ->> m.pseudonym,
       (SELECT c.relowner FROM gdpr.subject_kind s JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) s.relid
         WHERE s.kind OPERATOR(pg_catalog.=) m.kind)
  FROM m LEFT JOIN k ON k.kind OPERATOR(pg_catalog.=) m.kind
 ORDER BY m.seq
$$;

-- Replays the ledger's entries this database lacks, oldest first, and returns what it did.
-- The erasures run as the caller, like gdpr_erase, without legal holds: the erasure was decided
-- and recorded then.  erasures => false replays only the entries that change nothing but the
-- extension's own tables (the worker runs the erasures itself, each as its table's owner).
CREATE FUNCTION public.gdpr_replay_erasures(erasures boolean DEFAULT true)
    RETURNS TABLE (seq bigint, entry text, kind text, pseudonym text, outcome text)
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    e record;
    foreign_entries bigint;
BEGIN
    PERFORM gdpr._ledger_adopt();
    FOR e IN SELECT * FROM gdpr._ledger_missing() LOOP
        seq := e.seq; entry := e.entry; kind := e.kind; pseudonym := e.pseudonym;
        IF e.entry = 'erase' AND e.subject IS NOT NULL THEN
            CONTINUE WHEN NOT erasures;
            outcome := gdpr._erase_replay(e.subject, e.kind, e.entry_id, e.seq) ->> 'status';
        ELSE
            outcome := gdpr._replay_record(e.entry, e.kind, e.pseudonym, e.subject, e.purpose, e.entry_id, e.seq);
        END IF;
        RETURN NEXT;
    END LOOP;
    SELECT count(*) INTO foreign_entries FROM gdpr.ledger_entries() l WHERE NOT l.ours AND NOT l.held AND NOT l.aborted;
    IF foreign_entries > 0 THEN
        RAISE WARNING '% entries of the erasure ledger were written by another database that shares this database''s identity: not replayed', foreign_entries
            USING DETAIL = 'Two databases write one ledger: a copy made by CREATE DATABASE ... TEMPLATE, or a restored copy serving beside the original.',
                  HINT = 'See gdpr.verify_ledger(); a copy that should keep its own erasures runs SELECT gdpr.new_database_identity().';
    END IF;
END
$$;

-- A copy that is to live on its own (a staging clone) takes a new identity, and a new ledger.
CREATE FUNCTION gdpr.new_database_identity() RETURNS uuid
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    id uuid := pg_catalog.gen_random_uuid();
BEGIN
    DELETE FROM gdpr.database_identity;
    DELETE FROM gdpr.ledger;
    INSERT INTO gdpr.database_identity (identity, system_identifier, database_oid, first_seen)
    SELECT id, gdpr._system_identifier(), d.oid, now()
      FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database();
    PERFORM gdpr._log_event('LEDGER_NEW_IDENTITY', NULL, true, jsonb_build_object('identity', id));
    RETURN id;
END
$$;

-- How this database stands against the ledger, for the worker: 'off' (no ledger set),
-- 'unreachable', 'current', or 'missing' (entries to replay).  Raises GD401 on a damaged ledger.
CREATE FUNCTION gdpr._ledger_state() RETURNS text
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'gdpr_ledger_state';
