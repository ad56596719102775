------------------------------------------------------------------------------------------------
-- The map
------------------------------------------------------------------------------------------------

-- One row per kind of data subject: the table whose rows are the people.
CREATE TABLE gdpr.subject_kind (
    kind           text PRIMARY KEY CHECK (kind <> ''),
    relid          pg_catalog.regclass NOT NULL UNIQUE,
    key_column     name NOT NULL,
    key_type       pg_catalog.regtype NOT NULL,
    on_erase       text NOT NULL CHECK (on_erase IN ('delete', 'anonymize')),
    registered_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- One row per table holding personal data, the subject tables included.
CREATE TABLE gdpr.registered_table (
    relid               pg_catalog.regclass PRIMARY KEY,
    kind                text NOT NULL REFERENCES gdpr.subject_kind ON DELETE CASCADE,
    on_erase            text NOT NULL CHECK (on_erase IN ('delete', 'anonymize')),
    purpose             text,
    legal_basis         text CHECK (legal_basis IN ('consent', 'contract', 'legal_obligation',
                                                    'vital_interests', 'public_task',
                                                    'legitimate_interests')),
    retention           text,
    recipients          text[],
    provided_by_subject boolean NOT NULL DEFAULT true,
    registered_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- reads of the table are recorded, whose rows they were (gdpr.set_read_audit, reads.c)
    read_audit          boolean NOT NULL DEFAULT false
);

-- How a row reaches its subject.  A table has one or more named paths; an owner path says the row
-- belongs to the subject, a concerned path that the row is only about them (a message's recipient).
-- A path is either a column holding the subject key (subject_column) or a chain of steps.
CREATE TABLE gdpr.subject_path (
    relid           pg_catalog.regclass NOT NULL REFERENCES gdpr.registered_table ON DELETE CASCADE,
    path_name       text NOT NULL CHECK (path_name <> ''),
    relation        text NOT NULL CHECK (relation IN ('owner', 'concerned')),
    subject_column  name,
    about_columns   name[],
    -- the path applies only to rows where this holds (owner_type = 'User'): built-in functions and
    -- operators only, checked by gdpr._check_path_condition, so it means the same to every reader
    condition       text,
    PRIMARY KEY (relid, path_name)
);

-- One step of a path: from the current row's from_cols to the rows of to_rel whose to_cols equal
-- them, compared with ops.  A forward step follows a foreign key to the table it references; a
-- reverse step (only into the subject table) goes from a referenced row to the subject row that
-- references it (customer.address_id -> address).
CREATE TABLE gdpr.path_step (
    relid      pg_catalog.regclass NOT NULL,
    path_name  text NOT NULL,
    step       int NOT NULL CHECK (step > 0),
    from_cols  name[] NOT NULL,
    to_rel     pg_catalog.regclass NOT NULL,
    to_cols    name[] NOT NULL,
    ops        pg_catalog.regoperator[] NOT NULL,
    reverse    boolean NOT NULL,
    constraint_name name,
    -- one operator per pair of columns, however the row is written
    CHECK (pg_catalog.cardinality(from_cols) > 0
           AND pg_catalog.cardinality(from_cols) = pg_catalog.cardinality(to_cols)
           AND pg_catalog.cardinality(from_cols) = pg_catalog.cardinality(ops)
           AND pg_catalog.array_position(from_cols, NULL) IS NULL
           AND pg_catalog.array_position(to_cols, NULL) IS NULL),
    PRIMARY KEY (relid, path_name, step),
    FOREIGN KEY (relid, path_name) REFERENCES gdpr.subject_path ON DELETE CASCADE
);
CREATE INDEX ON gdpr.path_step (to_rel);


CREATE TABLE gdpr.column_class (
    relid        pg_catalog.regclass NOT NULL REFERENCES gdpr.registered_table ON DELETE CASCADE,
    column_name  name NOT NULL,
    category     text NOT NULL CHECK (category IN ('identity', 'contact', 'financial', 'location',
                                                   'online_id', 'special', 'secret', 'other')),
    erase        text NOT NULL CHECK (erase IN ('null', 'redact', 'pseudonym', 'fake', 'mask',
                                                'keep')),
    PRIMARY KEY (relid, column_name)
);

-- Materialized views that copy registered tables' rows and that an erasure refreshes, as their
-- owner, once the rows are gone (gdpr.register_derived).
CREATE TABLE gdpr.derived_view (
    relid         pg_catalog.regclass PRIMARY KEY,
    registered_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- The map is data, not definitions: pg_dump must carry it.
SELECT pg_catalog.pg_extension_config_dump('gdpr.subject_kind', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.registered_table', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.subject_path', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.path_step', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.column_class', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.derived_view', '');

------------------------------------------------------------------------------------------------
-- Internal helpers for the map
------------------------------------------------------------------------------------------------

CREATE FUNCTION gdpr._check_table(tbl pg_catalog.regclass) RETURNS void
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c pg_class;
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'table must not be NULL' USING ERRCODE = '22004',
              HINT = 'Pass the table as a name or regclass, such as ''public.users''.';
    END IF;
    SELECT * INTO c FROM pg_catalog.pg_class WHERE oid = tbl;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'relation with OID % does not exist', tbl::oid USING ERRCODE = '42P01';
    END IF;
    IF c.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '% is not a table', gdpr._qualified(tbl) USING ERRCODE = '42809',
              HINT = 'Register the ordinary or partitioned table that stores the rows.';
    END IF;
    IF c.relpersistence = 't' THEN
        RAISE EXCEPTION 'table % is temporary', gdpr._qualified(tbl) USING ERRCODE = '42809',
              HINT = 'Temporary tables vanish without a trace in the map; register permanent tables only.';
    END IF;
    IF c.relispartition THEN
        RAISE EXCEPTION 'table % is a partition of %', gdpr._qualified(tbl),
                        gdpr._qualified(pg_catalog.pg_partition_root(tbl))
            USING ERRCODE = '42809',
                  HINT = 'Register the partitioned table: that covers all its partitions.';
    END IF;
    IF c.relnamespace = 'gdpr'::regnamespace THEN
        RAISE EXCEPTION 'table % belongs to the gdpr extension', gdpr._qualified(tbl)
            USING ERRCODE = '42809';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = tbl AND i.indisprimary) THEN
        RAISE EXCEPTION 'table % has no primary key', gdpr._qualified(tbl)
            USING ERRCODE = '55000',
                  HINT = 'Add a primary key: the audit trail, export and erasure identify rows by it.';
    END IF;
    IF EXISTS (SELECT 1 FROM gdpr.registered_table r WHERE r.relid = tbl) THEN
        RAISE EXCEPTION 'table % is already registered', gdpr._qualified(tbl)
            USING ERRCODE = '42710',
                  HINT = 'Call gdpr.unregister_table() first to register it differently, or gdpr.add_path() to add a path.';
    END IF;
END
$$;

CREATE FUNCTION gdpr._check_column(tbl pg_catalog.regclass, col name) RETURNS pg_catalog.regtype
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t regtype;
BEGIN
    IF col IS NULL THEN
        RAISE EXCEPTION 'column name must not be NULL' USING ERRCODE = '22004';
    END IF;
    SELECT a.atttypid INTO t FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column "%" of table % does not exist', col, gdpr._qualified(tbl)
            USING ERRCODE = '42703';
    END IF;
    RETURN t;
END
$$;

CREATE FUNCTION gdpr._check_on_erase(on_erase text) RETURNS void
    LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF on_erase IS NULL OR on_erase NOT IN ('delete', 'anonymize') THEN
        RAISE EXCEPTION 'invalid on_erase value "%"', on_erase USING ERRCODE = '22023',
              HINT = 'Use ''delete'' or ''anonymize''.';
    END IF;
END
$$;

CREATE FUNCTION gdpr._attach(tbl pg_catalog.regclass) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    citus_was text := gdpr._citus_triggers(true);	-- on a Citus table, the shards get them too
BEGIN
    EXECUTE pg_catalog.format('CREATE TRIGGER gdpr_audit_row AFTER INSERT OR UPDATE OR DELETE ON %s FOR EACH ROW EXECUTE FUNCTION gdpr.audit_row()', tbl);
    PERFORM gdpr._attach_truncate(tbl);
    PERFORM gdpr._capture_always(tbl);
    PERFORM gdpr._citus_triggers(citus_was = 'on');
END
$$;

-- The audit triggers fire ALWAYS: session_replication_role = replica does not silence them (see
-- gdpr.audit_replicated).  Also for partitions, which clone the row trigger as it was created.
CREATE FUNCTION gdpr._capture_always(tbl pg_catalog.regclass) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    g record;
BEGIN
    FOR g IN SELECT t.tgrelid::regclass AS rel, t.tgname
               FROM pg_catalog.pg_trigger t
              WHERE t.tgname IN ('gdpr_audit_row', 'gdpr_audit_truncate') AND t.tgenabled <> 'A'
                AND (t.tgrelid = tbl OR t.tgrelid IN (SELECT relid FROM pg_catalog.pg_partition_tree(tbl))) LOOP
        EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', g.rel, g.tgname);
    END LOOP;
END
$$;

-- Registered tables (and their partitions) whose changes are not captured as they should be.
CREATE FUNCTION gdpr._capture_gaps(tbl pg_catalog.regclass DEFAULT NULL)
    RETURNS TABLE (table_name pg_catalog.regclass, registered pg_catalog.regclass, problem text)
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT p.rel::pg_catalog.regclass, r.relid,
           CASE WHEN g.tgname IS NULL THEN pg_catalog.format('trigger %s is missing', w.tgname)
                WHEN g.tgfoid <> w.fn OR g.tgtype <> w.tgtype OR g.tgqual IS NOT NULL
                     OR pg_catalog.cardinality(g.tgattr::pg_catalog.int2[]) > 0
                     OR g.tgargs <> ''::pg_catalog.bytea
                THEN pg_catalog.format('trigger %s was replaced by another', w.tgname)
                WHEN g.tgenabled = 'D' THEN pg_catalog.format('trigger %s is disabled', w.tgname)
                WHEN g.tgenabled = 'R' THEN pg_catalog.format('trigger %s fires only in replica mode', w.tgname)
                ELSE pg_catalog.format('trigger %s does not fire in replica mode', w.tgname) END
      FROM gdpr.registered_table r
      CROSS JOIN LATERAL (SELECT t.relid::oid AS rel FROM pg_catalog.pg_partition_tree(r.relid) t
                          UNION SELECT r.relid::oid) p
      -- AFTER INSERT OR UPDATE OR DELETE FOR EACH ROW (29), AFTER TRUNCATE (32): as _attach makes them
      CROSS JOIN (VALUES ('gdpr_audit_row', 'gdpr.audit_row()'::pg_catalog.regprocedure, 29::int2),
                         ('gdpr_audit_truncate', 'gdpr.audit_truncate()'::pg_catalog.regprocedure, 32::int2))
                 w(tgname, fn, tgtype)
      LEFT JOIN pg_catalog.pg_trigger g ON g.tgrelid = p.rel AND g.tgname = w.tgname
     WHERE (tbl IS NULL OR r.relid = tbl)
       AND (g.tgname IS NULL OR g.tgenabled <> 'A' OR g.tgfoid <> w.fn OR g.tgtype <> w.tgtype
            OR g.tgqual IS NOT NULL OR pg_catalog.cardinality(g.tgattr::pg_catalog.int2[]) > 0
            OR g.tgargs <> ''::pg_catalog.bytea)
       -- a table dropped while the event triggers were off leaves the map dangling: no capture to
       -- repair (the retention worker reports the policy)
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = p.rel)
$$;

-- Puts back the audit triggers a registered table (or every one) lacks, firing ALWAYS: the fix
-- gdpr.coverage_gaps and gdpr_verify_audit() name when capture was switched off.
CREATE FUNCTION gdpr.repair_capture(tbl pg_catalog.regclass DEFAULT NULL) RETURNS int
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r    record;
    part pg_catalog.regclass;
    n    int := 0;
BEGIN
    FOR r IN SELECT DISTINCT g.registered FROM gdpr._capture_gaps(tbl) g LOOP
        -- enabled first: each statement below must leave no trigger disabled, or it is refused
        PERFORM gdpr._capture_always(r.registered);
        -- OR REPLACE: a trigger of that name that is not the audit trigger any more is put back too
        EXECUTE pg_catalog.format('CREATE OR REPLACE TRIGGER gdpr_audit_row AFTER INSERT OR UPDATE OR DELETE ON %s FOR EACH ROW EXECUTE FUNCTION gdpr.audit_row()',
                                  r.registered);
        FOR part IN SELECT t.relid FROM pg_catalog.pg_partition_tree(r.registered) t
                    UNION SELECT r.registered LOOP
            EXECUTE pg_catalog.format('CREATE OR REPLACE TRIGGER gdpr_audit_truncate AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION gdpr.audit_truncate()',
                                      part);
        END LOOP;
        PERFORM gdpr._capture_always(r.registered);
        PERFORM gdpr._log_map('MAP_CAPTURE_REPAIRED', r.registered, NULL);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

-- Statement triggers are not inherited by partitions, and TRUNCATE of one partition fires only
-- that partition's: every partition gets its own, now and whenever one is created.
CREATE FUNCTION gdpr._attach_truncate(tbl pg_catalog.regclass) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    part regclass;
BEGIN
    FOR part IN SELECT t.relid FROM pg_catalog.pg_partition_tree(tbl) t
                 WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger g
                                    WHERE g.tgrelid = t.relid AND g.tgname = 'gdpr_audit_truncate')
                UNION ALL
                SELECT tbl WHERE pg_catalog.pg_partition_root(tbl) IS NULL
                   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger g
                                    WHERE g.tgrelid = tbl AND g.tgname = 'gdpr_audit_truncate') LOOP
        EXECUTE pg_catalog.format('CREATE TRIGGER gdpr_audit_truncate AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION gdpr.audit_truncate()', part);
    END LOOP;
END
$$;

CREATE FUNCTION gdpr._detach(tbl pg_catalog.regclass) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    part regclass;
    citus_was text := gdpr._citus_triggers(true);
BEGIN
    EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS gdpr_audit_row ON %s', tbl);
    FOR part IN SELECT g.tgrelid FROM pg_catalog.pg_trigger g
                 WHERE g.tgname = 'gdpr_audit_truncate'
                   AND (g.tgrelid = tbl OR g.tgrelid IN (SELECT relid FROM pg_catalog.pg_partition_tree(tbl))) LOOP
        EXECUTE pg_catalog.format('DROP TRIGGER gdpr_audit_truncate ON %s', part);
    END LOOP;
    PERFORM gdpr._citus_triggers(citus_was = 'on');
END
$$;

CREATE FUNCTION gdpr._insert_path(tbl pg_catalog.regclass, path_name text, relation text,
                                  subject_column name, steps jsonb, about_columns name[],
                                  condition text)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    back jsonb;
BEGIN
    -- A step back from a row to the subject rows that reference it reaches every subject that
    -- references it: such a row is shared, and belongs to none of them alone.
    SELECT s INTO back FROM pg_catalog.jsonb_array_elements(COALESCE(steps, '[]')) s
     WHERE (s->>'reverse')::boolean LIMIT 1;
    IF back IS NOT NULL THEN
        RAISE NOTICE 'path "%" of table % steps back from % to the rows of subject table % that reference it (foreign key %)',
                     path_name, gdpr._qualified(tbl),
                     COALESCE((SELECT gdpr._qualified(x.dst) FROM gdpr._fk_edge x
                                WHERE x.conname = back->>'constraint' AND x.src = (back->>'to')::oid::regclass LIMIT 1),
                              'its parent'),
                     gdpr._qualified((back->>'to')::oid::regclass), back->>'constraint'
              USING DETAIL = 'A row that several subjects reach this way is shared: it is in none of their exports'' data (only counted under "shared"), no erasure of one of them changes it, and the trail names no subject for it.';
    END IF;
    INSERT INTO gdpr.subject_path (relid, path_name, relation, subject_column, about_columns, condition)
    VALUES (tbl, path_name, relation, subject_column, about_columns, condition);
    INSERT INTO gdpr.path_step (relid, path_name, step, from_cols, to_rel, to_cols, ops, reverse, constraint_name)
    SELECT tbl, path_name, n,
           ARRAY(SELECT pg_catalog.jsonb_array_elements_text(s->'from_cols'))::name[],
           (s->>'to')::oid::regclass,
           ARRAY(SELECT pg_catalog.jsonb_array_elements_text(s->'to_cols'))::name[],
           ARRAY(SELECT x::oid::regoperator FROM pg_catalog.jsonb_array_elements_text(s->'ops') x),
           (s->>'reverse')::boolean,
           s->>'constraint'
      FROM pg_catalog.jsonb_array_elements(COALESCE(steps, '[]')) WITH ORDINALITY AS t(s, n);
END
$$;

CREATE FUNCTION gdpr._log_map(event text, tbl pg_catalog.regclass, detail jsonb) RETURNS void
    LANGUAGE sql
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT gdpr._log_event(event, NULL::text, true, detail, NULL, gdpr._qualified(tbl));
$$;

------------------------------------------------------------------------------------------------
-- The map API
------------------------------------------------------------------------------------------------

CREATE FUNCTION gdpr.register_subject(tbl pg_catalog.regclass, key_column name,
                                      kind text DEFAULT 'default', on_erase text DEFAULT 'anonymize')
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    keytype regtype;
BEGIN
    -- the trail's months have their partitions before the map's first events need them
    PERFORM gdpr.create_audit_partitions();
    PERFORM gdpr._check_table(tbl);
    keytype := gdpr._check_column(tbl, key_column);
    PERFORM gdpr._check_on_erase(on_erase);
    IF kind IS NULL OR kind = '' THEN
        RAISE EXCEPTION 'subject kind must not be empty' USING ERRCODE = '22023';
    END IF;
    IF EXISTS (SELECT 1 FROM gdpr.subject_kind s WHERE s.kind = register_subject.kind) THEN
        RAISE EXCEPTION 'subject kind "%" is already registered', kind USING ERRCODE = '42710',
              DETAIL = pg_catalog.format('Its table is %s.', (SELECT gdpr._qualified(s.relid) FROM gdpr.subject_kind s WHERE s.kind = register_subject.kind)),
              HINT = 'Give each subject table its own kind, such as kind => ''employee''.';
    END IF;
    IF keytype NOT IN ('smallint'::regtype, 'integer'::regtype, 'bigint'::regtype, 'uuid'::regtype,
                       'text'::regtype, 'character varying'::regtype) THEN
        RAISE EXCEPTION 'key column "%" of table % has type %', key_column, gdpr._qualified(tbl), keytype
            USING ERRCODE = '42804',
                  HINT = 'Subject keys must be of type smallint, integer, bigint, uuid, text or varchar.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                    WHERE i.indrelid = tbl AND i.indisunique AND i.indpred IS NULL AND i.indnkeyatts = 1
                      AND i.indkey[0] = (SELECT a.attnum FROM pg_catalog.pg_attribute a
                                          WHERE a.attrelid = tbl AND a.attname = key_column)) THEN
        RAISE EXCEPTION 'key column "%" of table % is not unique', key_column, gdpr._qualified(tbl)
            USING ERRCODE = '55000',
                  HINT = 'The subject key must identify one row: make it the primary key or give it a unique index.';
    END IF;

    PERFORM gdpr._attach(tbl);
    INSERT INTO gdpr.subject_kind (kind, relid, key_column, key_type, on_erase)
    VALUES (kind, tbl, key_column, keytype, on_erase);
    INSERT INTO gdpr.registered_table (relid, kind, on_erase) VALUES (tbl, kind, on_erase);
    PERFORM gdpr._insert_path(tbl, 'self', 'owner', key_column, NULL, NULL, NULL);
    PERFORM gdpr._map_changed(tbl);
    PERFORM gdpr._log_map('MAP_REGISTER', tbl,
        pg_catalog.jsonb_build_object('kind', kind, 'key_column', key_column, 'on_erase', on_erase, 'subject_table', true));
END
$$;

CREATE FUNCTION gdpr.register_table(tbl pg_catalog.regclass, subject_column name DEFAULT NULL,
                                    on_erase text DEFAULT 'delete', kind text DEFAULT 'default',
                                    via text[] DEFAULT NULL, condition text DEFAULT NULL)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    steps jsonb;
BEGIN
    -- the trail's months have their partitions before the map's first events need them
    PERFORM gdpr.create_audit_partitions();
    PERFORM gdpr._check_table(tbl);
    PERFORM gdpr._check_on_erase(on_erase);
    IF NOT EXISTS (SELECT 1 FROM gdpr.subject_kind s WHERE s.kind = register_table.kind) THEN
        RAISE EXCEPTION 'subject kind "%" is not registered', kind USING ERRCODE = '42704',
              HINT = 'Register the subject table first with gdpr.register_subject(tbl, key_column, kind).';
    END IF;
    IF subject_column IS NOT NULL AND via IS NOT NULL THEN
        RAISE EXCEPTION 'subject_column and via cannot both be given' USING ERRCODE = '22023',
              HINT = 'subject_column names a column holding the subject key; via names foreign keys to follow.';
    END IF;
    IF subject_column IS NOT NULL THEN
        PERFORM gdpr._check_column(tbl, subject_column);
    ELSE
        steps := gdpr._resolve_path(tbl, kind, via);
    END IF;

    PERFORM gdpr._attach(tbl);
    INSERT INTO gdpr.registered_table (relid, kind, on_erase) VALUES (tbl, kind, on_erase);
    PERFORM gdpr._insert_path(tbl, 'main', 'owner', subject_column, steps, NULL, condition);
    PERFORM gdpr._map_changed(tbl);
    PERFORM gdpr._log_map('MAP_REGISTER', tbl,
        pg_catalog.jsonb_build_object('kind', kind, 'on_erase', on_erase,
            'path', COALESCE(pg_catalog.quote_ident(subject_column), gdpr._path_text(tbl, steps))));
END
$$;

CREATE FUNCTION gdpr.add_path(tbl pg_catalog.regclass, path_name text, via text[] DEFAULT NULL,
                              subject_column name DEFAULT NULL, relation text DEFAULT 'concerned',
                              about_columns name[] DEFAULT NULL, condition text DEFAULT NULL)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k     text;
    steps jsonb;
    c     name;
BEGIN
    SELECT r.kind INTO k FROM gdpr.registered_table r WHERE r.relid = tbl;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % is not registered', COALESCE(gdpr._qualified(tbl), 'NULL')
            USING ERRCODE = '42704', HINT = 'Register it first with gdpr.register_table().';
    END IF;
    IF path_name IS NULL OR path_name = '' THEN
        RAISE EXCEPTION 'path name must not be empty' USING ERRCODE = '22023';
    END IF;
    IF relation IS NULL OR relation NOT IN ('owner', 'concerned') THEN
        RAISE EXCEPTION 'invalid relation "%"', relation USING ERRCODE = '22023',
              HINT = 'Use ''owner'' (erasure acts on the row) or ''concerned'' (the row is only about the subject).';
    END IF;
    IF EXISTS (SELECT 1 FROM gdpr.subject_path p WHERE p.relid = tbl AND p.path_name = add_path.path_name) THEN
        RAISE EXCEPTION 'table % already has a path named "%"', gdpr._qualified(tbl), path_name
            USING ERRCODE = '42710';
    END IF;
    IF (subject_column IS NULL) = (via IS NULL) THEN
        RAISE EXCEPTION 'give exactly one of subject_column and via' USING ERRCODE = '22023',
              HINT = 'subject_column names a column holding the subject key; via names foreign keys to follow.';
    END IF;
    IF subject_column IS NOT NULL THEN
        PERFORM gdpr._check_column(tbl, subject_column);
    ELSE
        steps := gdpr._resolve_path(tbl, k, via);
    END IF;
    FOREACH c IN ARRAY COALESCE(about_columns, '{}') LOOP
        PERFORM gdpr._check_column(tbl, c);
    END LOOP;

    PERFORM gdpr._insert_path(tbl, path_name, relation, subject_column, steps, about_columns, condition);
    PERFORM gdpr._map_changed(tbl);
    PERFORM gdpr._log_map('MAP_PATH_ADDED', tbl,
        pg_catalog.jsonb_build_object('path', path_name, 'relation', relation,
            'via', COALESCE(pg_catalog.quote_ident(subject_column), gdpr._path_text(tbl, steps))));
END
$$;

CREATE FUNCTION gdpr.drop_path(tbl pg_catalog.regclass, path_name text) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF path_name IN ('main', 'self') THEN
        RAISE EXCEPTION 'path "%" is the table''s registration path', path_name USING ERRCODE = '22023',
              HINT = 'Unregister the table instead.';
    END IF;
    DELETE FROM gdpr.subject_path p WHERE p.relid = tbl AND p.path_name = drop_path.path_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % has no path named "%"', COALESCE(gdpr._qualified(tbl), 'NULL'), path_name
            USING ERRCODE = '42704';
    END IF;
    PERFORM gdpr._map_changed(tbl);
    PERFORM gdpr._log_map('MAP_PATH_DROPPED', tbl, pg_catalog.jsonb_build_object('path', path_name));
END
$$;

-- The erasure strategy a column gets when none is named: keep what is not personal, a unique
-- pseudonym where the column must stay unique, NULL where allowed, else a fixed redaction.
CREATE FUNCTION gdpr._default_erase(tbl pg_catalog.regclass, col name, category text) RETURNS text
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN category = 'other' THEN 'keep'
        WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a
                        ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                      WHERE i.indrelid = tbl AND i.indisunique AND a.attname = col) THEN 'pseudonym'
        WHEN (SELECT NOT a.attnotnull FROM pg_catalog.pg_attribute a
               WHERE a.attrelid = tbl AND a.attname = col) THEN 'null'
        ELSE 'redact'
    END
$$;

CREATE FUNCTION gdpr.classify_column(tbl pg_catalog.regclass, col name, category text,
                                     erase text DEFAULT NULL)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    strategy text;
    nn boolean;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM gdpr.registered_table r WHERE r.relid = tbl) THEN
        RAISE EXCEPTION 'table % is not registered', COALESCE(gdpr._qualified(tbl), 'NULL')
            USING ERRCODE = '42704',
                  HINT = 'Register it first with gdpr.register_table() or gdpr.register_subject().';
    END IF;
    PERFORM gdpr._check_column(tbl, col);
    IF category IS NULL OR category NOT IN ('identity', 'contact', 'financial', 'location',
                                            'online_id', 'special', 'secret', 'other') THEN
        RAISE EXCEPTION 'invalid category "%"', category USING ERRCODE = '22023',
              HINT = 'Use one of identity, contact, financial, location, online_id, special, secret, other.';
    END IF;
    IF erase IS NOT NULL AND erase NOT IN ('null', 'redact', 'pseudonym', 'fake', 'mask', 'keep') THEN
        RAISE EXCEPTION 'invalid erasure strategy "%"', erase USING ERRCODE = '22023',
              HINT = 'Use one of null, redact, pseudonym, fake, mask, keep.';
    END IF;
    SELECT a.attnotnull INTO nn FROM pg_catalog.pg_attribute a WHERE a.attrelid = tbl AND a.attname = col;
    IF erase = 'null' AND nn THEN
        RAISE EXCEPTION 'column "%" of table % is NOT NULL and cannot be erased to NULL', col, gdpr._qualified(tbl)
            USING ERRCODE = '22023', HINT = 'Choose redact, pseudonym, fake or mask.';
    END IF;
    strategy := COALESCE(erase, gdpr._default_erase(tbl, col, category));
    -- A strategy that gives every erased row the same value fails a unique column at the second
    -- erasure: found here, not then.  pseudonym gives each row its own value (fake does for
    -- e-mail addresses and phone numbers).
    IF strategy IN ('redact', 'mask', 'fake')
       AND NOT (strategy = 'fake' AND col ~* '(mail|phone|mobile)')
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a
                     ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::pg_catalog.int2[])
                    WHERE i.indrelid = tbl AND i.indisunique AND a.attname = col) THEN
        IF erase IS NOT NULL THEN
            RAISE EXCEPTION 'erasure strategy "%" would give column "%" of table % the same value in every erased row, and the column is unique',
                            erase, col, gdpr._qualified(tbl)
                USING ERRCODE = '22023',
                      HINT = 'Use pseudonym, which gives each row its own value, or keep.';
        END IF;
        strategy := 'pseudonym';
    END IF;

    INSERT INTO gdpr.column_class (relid, column_name, category, erase)
    VALUES (tbl, col, category, strategy)
    ON CONFLICT (relid, column_name) DO UPDATE SET category = EXCLUDED.category, erase = EXCLUDED.erase;
    PERFORM gdpr._map_changed(tbl);
    PERFORM gdpr._log_map('MAP_CLASSIFY', tbl,
        pg_catalog.jsonb_build_object('column', col, 'category', category, 'erase', strategy));
END
$$;

-- A materialized view over registered tables keeps its own copy of their rows: registered here,
-- every erasure that changes one of those tables refreshes it, so the copy loses the subject too.
CREATE FUNCTION gdpr.register_derived(view pg_catalog.regclass) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF view IS NULL OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = view AND c.relkind = 'm') THEN
        RAISE EXCEPTION '% is not a materialized view', COALESCE(view::text, 'NULL') USING ERRCODE = '42809',
              HINT = 'Only materialized views keep copies of rows; a plain view reads the registered tables themselves.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite rw
                     JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
                                                AND d.objid = rw.oid
                                                AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
                    WHERE rw.ev_class = view AND d.refobjid <> view::oid
                      AND d.refobjid IN (SELECT r.relid::oid FROM gdpr.registered_table r)) THEN
        RAISE EXCEPTION 'materialized view % reads no registered table', gdpr._qualified(view)
              USING ERRCODE = '55000',
              HINT = 'Register the tables it reads with gdpr.register_table() first.';
    END IF;
    INSERT INTO gdpr.derived_view (relid) VALUES (view) ON CONFLICT DO NOTHING;
    PERFORM gdpr._log_map('MAP_DERIVED', view, pg_catalog.jsonb_build_object('refresh', 'on erasure'));
END
$$;

CREATE FUNCTION gdpr.unregister_derived(view pg_catalog.regclass) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM gdpr.derived_view d WHERE d.relid = view;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'materialized view % is not registered', COALESCE(view::text, 'NULL')
              USING ERRCODE = '42704', HINT = 'See gdpr.derived_view for the registered ones.';
    END IF;
    PERFORM gdpr._log_map('MAP_UNDERIVED', view, NULL);
END
$$;

CREATE FUNCTION gdpr.describe_table(tbl pg_catalog.regclass, purpose text DEFAULT NULL,
                                    legal_basis text DEFAULT NULL, retention text DEFAULT NULL,
                                    recipients text[] DEFAULT NULL,
                                    provided_by_subject boolean DEFAULT NULL)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF legal_basis IS NOT NULL AND legal_basis NOT IN ('consent', 'contract', 'legal_obligation',
            'vital_interests', 'public_task', 'legitimate_interests') THEN
        RAISE EXCEPTION 'invalid legal basis "%"', legal_basis USING ERRCODE = '22023',
              HINT = 'Use one of consent, contract, legal_obligation, vital_interests, public_task, legitimate_interests (Art. 6(1)).';
    END IF;
    UPDATE gdpr.registered_table r
       SET purpose = COALESCE(describe_table.purpose, r.purpose),
           legal_basis = COALESCE(describe_table.legal_basis, r.legal_basis),
           retention = COALESCE(describe_table.retention, r.retention),
           recipients = COALESCE(describe_table.recipients, r.recipients),
           provided_by_subject = COALESCE(describe_table.provided_by_subject, r.provided_by_subject)
     WHERE r.relid = tbl;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % is not registered', COALESCE(gdpr._qualified(tbl), 'NULL')
            USING ERRCODE = '42704', HINT = 'Register it first with gdpr.register_table().';
    END IF;
    PERFORM gdpr._log_map('MAP_DESCRIBE', tbl, pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
        'purpose', purpose, 'legal_basis', legal_basis, 'retention', retention,
        'recipients', recipients, 'provided_by_subject', provided_by_subject)));
END
$$;

-- Removes a table from the map; paths of other tables that pass through it go too, because they
-- could no longer be followed.
CREATE FUNCTION gdpr._forget(tbl oid, qualified text, why text) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT DISTINCT s.relid, s.path_name FROM gdpr.path_step s
              WHERE s.to_rel::oid = tbl AND s.relid::oid <> tbl LOOP
        DELETE FROM gdpr.subject_path p WHERE p.relid = r.relid AND p.path_name = r.path_name;
        PERFORM gdpr._map_changed(r.relid);
        RAISE WARNING 'path "%" of table % went through %: it is dropped from the map', r.path_name,
                      COALESCE(gdpr._qualified(r.relid), r.relid::oid::text), qualified
            USING HINT = 'Check that the table still reaches its subject with SELECT * FROM gdpr.coverage_gaps.';
        PERFORM gdpr._log_event('MAP_PATH_DROPPED', NULL::text, true,
            pg_catalog.jsonb_build_object('path', r.path_name, 'reason', why), NULL, gdpr._qualified(r.relid));
    END LOOP;
    DELETE FROM gdpr.subject_kind WHERE relid::oid = tbl;
    DELETE FROM gdpr.registered_table WHERE relid::oid = tbl;
    PERFORM gdpr._log_event('MAP_UNREGISTER', NULL::text, true,
        pg_catalog.jsonb_build_object('reason', why), NULL, qualified);
END
$$;

CREATE FUNCTION gdpr.unregister_table(tbl pg_catalog.regclass) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM gdpr.registered_table r WHERE r.relid = tbl) THEN
        RAISE EXCEPTION 'table % is not registered', COALESCE(gdpr._qualified(tbl), 'NULL')
            USING ERRCODE = '42704';
    END IF;
    SELECT s.kind INTO k FROM gdpr.subject_kind s WHERE s.relid = tbl;
    IF FOUND AND EXISTS (SELECT 1 FROM gdpr.registered_table r WHERE r.kind = k AND r.relid <> tbl) THEN
        RAISE EXCEPTION 'table % is the subject table of kind "%", which other tables still use', gdpr._qualified(tbl), k
            USING ERRCODE = '2BP01',
                  DETAIL = (SELECT pg_catalog.format('Registered tables of kind "%s": %s.', k,
                                pg_catalog.string_agg(gdpr._qualified(r.relid), ', ' ORDER BY r.relid::text))
                              FROM gdpr.registered_table r WHERE r.kind = k AND r.relid <> tbl),
                  HINT = 'Unregister those tables first.';
    END IF;
    PERFORM gdpr._forget(tbl, gdpr._qualified(tbl), 'unregister_table');
    -- before the triggers go: on a Citus cluster the workers forget the table first (their
    -- guard refuses to drop the triggers of a table still in their map)
    PERFORM gdpr._map_changed(tbl);
    PERFORM gdpr._detach(tbl);
END
$$;

-- The kind and canonical text of a subject key, as the rights functions take it.
CREATE FUNCTION gdpr._subject_key(subject text, kind text, must_exist boolean,
                                  OUT subject_kind text, OUT subject_key text)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k gdpr.subject_kind;
    present boolean;
    stored text;
BEGIN
    IF subject IS NULL THEN
        RAISE EXCEPTION 'subject must not be NULL' USING ERRCODE = '22004',
              HINT = 'Pass the subject''s key, such as 42, ''alice'' or a uuid.';
    END IF;
    SELECT * INTO k FROM gdpr.subject_kind sk
     WHERE sk.kind = COALESCE(_subject_key.kind, (SELECT CASE WHEN count(*) = 1 THEN min(s.kind) ELSE 'default' END
                                                    FROM gdpr.subject_kind s));
    IF NOT FOUND THEN
        RAISE EXCEPTION 'subject kind "%" is not registered', COALESCE(_subject_key.kind, 'default')
            USING ERRCODE = '42704', HINT = 'See SELECT kind FROM gdpr.subject_kind.';
    END IF;
    BEGIN
        EXECUTE format('SELECT (%L::%s)::text', subject, k.key_type) INTO subject_key;
    EXCEPTION WHEN data_exception THEN
        RAISE EXCEPTION '"%" is not a valid key for subjects of kind "%"', subject, k.kind
            USING ERRCODE = '22P02', DETAIL = format('Subjects of kind "%s" have keys of type %s.', k.kind, k.key_type);
    END;
    subject_kind := k.kind;
    -- a case-insensitive key is recorded as the subject row spells it (see gdpr_resolve_subject)
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_collation c ON c.oid = a.attcollation
                WHERE a.attrelid = k.relid AND a.attname = k.key_column AND NOT c.collisdeterministic) THEN
        EXECUTE format('SELECT pg_catalog.format(''%%s'', %I) FROM %s WHERE %I OPERATOR(pg_catalog.=) %L::%s',
                       k.key_column, k.relid, k.key_column, subject_key, k.key_type)
           INTO stored;
        subject_key := COALESCE(stored, subject_key);
    END IF;
    -- an erased subject is named by pseudonym only from then on (for those who may know it)
    IF pg_catalog.has_function_privilege('gdpr._erased_pseudonym(text, text)', 'EXECUTE') THEN
        stored := gdpr._erased_pseudonym(k.kind, subject_key);
        IF stored IS NOT NULL THEN
            subject_key := stored;
            RETURN;
        END IF;
    END IF;
    IF must_exist THEN
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s WHERE %I = %L::%s)', k.relid, k.key_column,
                       subject_key, k.key_type) INTO present;
        IF NOT present THEN
            RAISE EXCEPTION 'subject % of kind "%" does not exist', subject_key, k.kind
                USING ERRCODE = 'GD200', HINT = 'Check the key.';
        END IF;
    END IF;
END
$$;
