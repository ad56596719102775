-- gdpr 1.0: the personal-data map and the audit trail.
--
-- Everything lives in schema gdpr, which the control file creates.  Objects are schema-qualified
-- throughout so that the script and the functions behave the same whatever search_path the caller has.

\echo Use "CREATE EXTENSION gdpr" to load this file. \quit

-- Roles.  Roles are cluster-wide and survive the extension, so a second database that installs
-- gdpr reuses them instead of failing.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'gdpr_admin') THEN
        CREATE ROLE gdpr_admin NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'gdpr_auditor') THEN
        CREATE ROLE gdpr_auditor NOLOGIN;
    END IF;
END
$roles$;

GRANT USAGE ON SCHEMA gdpr TO PUBLIC;

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
    registered_at       timestamptz NOT NULL DEFAULT pg_catalog.now()
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

------------------------------------------------------------------------------------------------
-- The audit trail
------------------------------------------------------------------------------------------------

-- Partitioned by retention_until, a month a partition: purging expired events drops whole
-- partitions instead of deleting row by row (see gdpr.purge_audit_log).  Events whose month has
-- no partition yet land in the default partition, which is purged row by row.
--
-- Keys and indexes are declared on each partition, not on the parent: the parent belongs to the
-- extension and is not dumped, the monthly partitions are, and a partition that brings its own
-- primary key restores cleanly only if the parent does not impose one as well.
CREATE TABLE gdpr.audit_log (
    event_id             bigint GENERATED ALWAYS AS IDENTITY,
    event_time           timestamptz NOT NULL DEFAULT pg_catalog.statement_timestamp(),
    event                text NOT NULL,
    success              boolean NOT NULL DEFAULT true,
    table_name           text,
    subject_kind         text COLLATE "C",
    subject_id           text COLLATE "C",
    related_subject_ids  text[],
    row_key              jsonb,
    changed_columns      text[],
    old_values           jsonb,
    new_values           jsonb,
    txid                 bigint,
    session_role         text NOT NULL DEFAULT session_user,
    effective_role       text NOT NULL DEFAULT current_user,
    actor                text,
    client_addr          inet,
    user_agent           text,
    application_name     text,
    detail               jsonb,
    retention_until      timestamptz NOT NULL
) PARTITION BY RANGE (retention_until);
CREATE TABLE gdpr.audit_log_default PARTITION OF gdpr.audit_log DEFAULT;

-- Refuses UPDATE, DELETE and TRUNCATE of the trail and its seal outside the extension's own
-- erasure, sealing and purge (see chain.c).
CREATE FUNCTION gdpr.audit_guard() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'gdpr_audit_guard';
CREATE TRIGGER audit_guard BEFORE UPDATE OR DELETE ON gdpr.audit_log
    FOR EACH ROW EXECUTE FUNCTION gdpr.audit_guard();

-- The keys and indexes of one partition.  Every index here is paid for on every audited row: only
-- what lookups by subject need.  Keys compare bytewise (COLLATE "C"): a subject key has no
-- linguistic order, and strcoll() on the hot path costs more than the rest of the index insert.
-- Rows written before they could be attributed to a subject (an address inserted before the
-- customer row that points to it) are found by table and key by erasure.
CREATE FUNCTION gdpr._index_audit_partition(part pg_catalog.regclass) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE format('ALTER TABLE %s ADD PRIMARY KEY (event_id)', part);
    EXECUTE format('CREATE INDEX ON %s (subject_kind, subject_id)', part);
    EXECUTE format('CREATE INDEX ON %s USING gin (related_subject_ids) WHERE related_subject_ids IS NOT NULL', part);
    EXECUTE format('CREATE INDEX ON %s (table_name, row_key) WHERE subject_id IS NULL AND row_key IS NOT NULL', part);
    -- TRUNCATE triggers are not inherited by partitions
    EXECUTE format('CREATE TRIGGER audit_guard_truncate BEFORE TRUNCATE ON %s FOR EACH STATEMENT '
                   'EXECUTE FUNCTION gdpr.audit_guard()', part);
END
$$;
SELECT gdpr._index_audit_partition('gdpr.audit_log_default');
-- Only the default partition is purged row by row: only it needs this index.
CREATE INDEX audit_log_default_retention_idx ON gdpr.audit_log_default (retention_until);

CREATE TRIGGER audit_guard_truncate BEFORE TRUNCATE ON gdpr.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION gdpr.audit_guard();

-- The hash chain (chain.c).  One row per sealed event: its place in the chain and its digests,
-- never its values.  The personal fields enter only through personal_digest, salted with the
-- nonce; erasure drops the nonce and says which erasure redacted the event.  Rows of purged
-- events stay (digests only) until a whole prefix has expired and becomes a checkpoint.
CREATE TABLE gdpr.audit_seal (
    seq              bigint PRIMARY KEY,
    event_id         bigint NOT NULL UNIQUE,
    retention_until  timestamptz NOT NULL,
    nonce            bytea,
    personal_digest  bytea NOT NULL,
    event_digest     bytea NOT NULL,
    chain_hash       bytea NOT NULL,
    sealed_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    redacted_at      timestamptz,
    redacted_by      text
);
CREATE INDEX audit_seal_retention_idx ON gdpr.audit_seal (retention_until);

-- Where verification starts once the chain before it has been purged, with its last link: the
-- hash before it and the digest and retention_until of the last event it folds in.  redactions
-- counts, per erasure pseudonym, the redacted seal rows folded into this and earlier checkpoints,
-- for as long as that erasure's ERASE event is in the trail: verification adds them to the
-- redactions it still sees before comparing with what the erasure says it redacted.
CREATE TABLE gdpr.audit_checkpoint (
    seq              bigint PRIMARY KEY,
    chain_hash       bytea NOT NULL,
    prev_hash        bytea NOT NULL,
    event_digest     bytea NOT NULL,
    retention_until  timestamptz NOT NULL,
    redactions       jsonb NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- The sealers' state, one row (not dumped: the end of the chain is read from the chain itself):
-- the frontier below which every event is sealed, and the identity value it may pass once the
-- writers noted with it have ended.  Sealers lock the row; writers never touch it.
CREATE TABLE gdpr.audit_seal_state (
    one              boolean PRIMARY KEY DEFAULT true CHECK (one),
    frontier         bigint NOT NULL DEFAULT 1,
    pending_upto     bigint,
    pending_writers  bigint[]
);
-- There from the start: the first erasures and sealers then only lock it, none waits on another's
-- insert of it.  (Sealers and erasures still make it if it is gone.)
INSERT INTO gdpr.audit_seal_state DEFAULT VALUES;

CREATE TRIGGER audit_guard BEFORE UPDATE OR DELETE ON gdpr.audit_seal
    FOR EACH ROW EXECUTE FUNCTION gdpr.audit_guard();
CREATE TRIGGER audit_guard BEFORE UPDATE OR DELETE ON gdpr.audit_checkpoint
    FOR EACH ROW EXECUTE FUNCTION gdpr.audit_guard();
CREATE TRIGGER audit_guard BEFORE UPDATE OR DELETE ON gdpr.audit_seal_state
    FOR EACH ROW EXECUTE FUNCTION gdpr.audit_guard();
CREATE TRIGGER audit_guard_truncate BEFORE TRUNCATE ON gdpr.audit_seal
    FOR EACH STATEMENT EXECUTE FUNCTION gdpr.audit_guard();
CREATE TRIGGER audit_guard_truncate BEFORE TRUNCATE ON gdpr.audit_checkpoint
    FOR EACH STATEMENT EXECUTE FUNCTION gdpr.audit_guard();
CREATE TRIGGER audit_guard_truncate BEFORE TRUNCATE ON gdpr.audit_seal_state
    FOR EACH STATEMENT EXECUTE FUNCTION gdpr.audit_guard();

CREATE FUNCTION gdpr.seal_audit(max_events int DEFAULT 10000) RETURNS bigint
    LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'gdpr_seal_audit';
CREATE FUNCTION public.gdpr_verify_audit(digest jsonb DEFAULT NULL) RETURNS jsonb
    LANGUAGE c CALLED ON NULL INPUT STABLE AS 'MODULE_PATHNAME', 'gdpr_verify_audit';
CREATE FUNCTION public.gdpr_audit_digest() RETURNS jsonb
    LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'gdpr_audit_digest';
CREATE FUNCTION gdpr._purge_audit_rows(batch_size int) RETURNS bigint
    LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'gdpr_purge_audit_rows';

-- The map and the audit trail are data, not definitions: pg_dump must carry them.
SELECT pg_catalog.pg_extension_config_dump('gdpr.subject_kind', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.registered_table', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.subject_path', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.path_step', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.column_class', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.derived_view', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.audit_log_default', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.audit_log_event_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.audit_seal', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.audit_checkpoint', '');

------------------------------------------------------------------------------------------------
-- C functions
------------------------------------------------------------------------------------------------

CREATE FUNCTION gdpr.audit_row() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'gdpr_audit_row';
CREATE FUNCTION gdpr.audit_truncate() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'gdpr_audit_truncate';

CREATE FUNCTION gdpr.log_event(event text, subject text DEFAULT NULL, success boolean DEFAULT true,
                               detail jsonb DEFAULT NULL, kind text DEFAULT NULL,
                               table_name text DEFAULT NULL)
    RETURNS bigint LANGUAGE c CALLED ON NULL INPUT VOLATILE
    AS 'MODULE_PATHNAME', 'gdpr_log_event';
CREATE FUNCTION gdpr.log_event(event text, subject bigint, success boolean DEFAULT true,
                               detail jsonb DEFAULT NULL, kind text DEFAULT NULL,
                               table_name text DEFAULT NULL)
    RETURNS bigint LANGUAGE sql CALLED ON NULL INPUT VOLATILE
    AS $$ SELECT gdpr.log_event(event, subject::text, success, detail, kind, table_name) $$;
CREATE FUNCTION gdpr.log_event(event text, subject uuid, success boolean DEFAULT true,
                               detail jsonb DEFAULT NULL, kind text DEFAULT NULL,
                               table_name text DEFAULT NULL)
    RETURNS bigint LANGUAGE sql CALLED ON NULL INPUT VOLATILE
    AS $$ SELECT gdpr.log_event(event, subject::text, success, detail, kind, table_name) $$;

-- Tells every backend that the map of a table (and of its partitions) changed, so cached audit
-- plans are rebuilt.
CREATE FUNCTION gdpr._map_changed(tbl pg_catalog.regclass) RETURNS void
    LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'gdpr_map_changed';

-- The tables a GRANT or REVOKE names; pg_event_trigger_ddl_commands() gives no object for them.
CREATE FUNCTION gdpr._grant_targets(cmd pg_ddl_command) RETURNS oid[]
    LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'gdpr_grant_targets';

------------------------------------------------------------------------------------------------
-- Internal helpers for the map
------------------------------------------------------------------------------------------------

-- Foreign keys as edges between root tables, with column names rather than attribute numbers so
-- that keys declared on partitions only, or on partitions of differing layout, count for the root.
CREATE VIEW gdpr._fk_edge AS
SELECT src, src_cols, dst, dst_cols, ops, pg_catalog.min(conname) AS conname
FROM (
    SELECT COALESCE(pg_catalog.pg_partition_root(c.conrelid), c.conrelid)::pg_catalog.regclass AS src,
           ARRAY(SELECT a.attname
                   FROM pg_catalog.unnest(c.conkey) WITH ORDINALITY AS k(attnum, n)
                   JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
                  ORDER BY k.n) AS src_cols,
           COALESCE(pg_catalog.pg_partition_root(c.confrelid), c.confrelid)::pg_catalog.regclass AS dst,
           ARRAY(SELECT a.attname
                   FROM pg_catalog.unnest(c.confkey) WITH ORDINALITY AS k(attnum, n)
                   JOIN pg_catalog.pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum
                  ORDER BY k.n) AS dst_cols,
           c.conpfeqop::pg_catalog.regoperator[] AS ops,
           c.conname
      FROM pg_catalog.pg_constraint c
     WHERE c.contype = 'f'
) e
GROUP BY src, src_cols, dst, dst_cols, ops;


CREATE FUNCTION gdpr._qualified(tbl pg_catalog.regclass) RETURNS text
    LANGUAGE sql STABLE STRICT
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.format('%s.%s', pg_catalog.quote_ident(n.nspname), pg_catalog.quote_ident(c.relname))
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = tbl
$$;

CREATE FUNCTION gdpr._path_text(tbl pg_catalog.regclass, steps jsonb) RETURNS text
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.string_agg(pg_catalog.format('%s(%s) -> %s(%s)', src, from_cols, dst, to_cols), ', ' ORDER BY n)
      FROM (SELECT n,
                   COALESCE(pg_catalog.lag(gdpr._qualified((s->>'to')::oid::regclass)) OVER (ORDER BY n),
                            gdpr._qualified(tbl)) AS src,
                   (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(x), ', ')
                      FROM pg_catalog.jsonb_array_elements_text(s->'from_cols') x) AS from_cols,
                   gdpr._qualified((s->>'to')::oid::regclass) AS dst,
                   (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(x), ', ')
                      FROM pg_catalog.jsonb_array_elements_text(s->'to_cols') x) AS to_cols
              FROM pg_catalog.jsonb_array_elements(steps) WITH ORDINALITY AS t(s, n)) p
$$;

-- The shortest foreign-key paths from a table to a subject table.  Steps follow foreign keys
-- from the referencing to the referenced table; the last step may instead go from a table the
-- subject table references to the subject table itself.  Returns every path of the shortest
-- length, so the caller can tell a unique path from an ambiguous one.
CREATE FUNCTION gdpr._shortest_paths(start pg_catalog.regclass, target pg_catalog.regclass,
                                     avoid oid[] DEFAULT '{}')
    RETURNS TABLE (steps jsonb, hops int)
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    WITH RECURSIVE edge AS (
        SELECT src, src_cols, dst, dst_cols, ops, false AS reverse, conname FROM gdpr._fk_edge
        UNION ALL
        SELECT dst, dst_cols, src, src_cols, ops, true, conname FROM gdpr._fk_edge WHERE src = target
    ), walk AS (
        SELECT start::oid AS cur, '[]'::jsonb AS steps, avoid || start::oid AS seen, 0 AS hops
        UNION ALL
        SELECT e.dst::oid,
               w.steps || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
                   'from_cols', e.src_cols, 'to', e.dst::oid, 'to_cols', e.dst_cols,
                   'ops', e.ops::oid[], 'reverse', e.reverse, 'constraint', e.conname)),
               w.seen || e.dst::oid,
               w.hops + 1
          FROM walk w JOIN edge e ON e.src::oid = w.cur
         WHERE w.cur <> target::oid
           AND e.dst::oid <> ALL (w.seen)
           AND w.hops < 6
    )
    SELECT steps, hops FROM walk
     WHERE cur = target::oid AND hops > 0
       AND hops = (SELECT pg_catalog.min(hops) FROM walk WHERE cur = target::oid AND hops > 0)
     ORDER BY steps::text
$$;

-- Resolves a path for a table: the steps named by "via" (each element a foreign key's constraint
-- name or its comma-separated column list), then the unique shortest path from where they end.
CREATE FUNCTION gdpr._resolve_path(tbl pg_catalog.regclass, kind text, via text[])
    RETURNS jsonb
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    target   regclass;
    cur      regclass := tbl;
    steps    jsonb := '[]';
    seen     oid[] := ARRAY[tbl::oid];
    elem     text;
    found    record;
    n        int;
    cands    jsonb[];
BEGIN
    SELECT sk.relid INTO target FROM gdpr.subject_kind sk WHERE sk.kind = _resolve_path.kind;

    -- A step is a foreign key of the current table, or one of the subject table's own foreign
    -- keys onto the current table, followed back (customer.billing_address_id from address).
    FOREACH elem IN ARRAY COALESCE(via, '{}') LOOP
        SELECT pg_catalog.count(*) INTO n FROM gdpr._fk_edge e
         WHERE (e.src = cur OR (e.src = target AND e.dst = cur))
           AND (e.conname = elem OR pg_catalog.array_to_string(e.src_cols, ',') = pg_catalog.replace(elem, ' ', ''));
        IF n <> 1 THEN
            RAISE EXCEPTION 'table % has % foreign key matching "%"', gdpr._qualified(cur),
                  CASE WHEN n = 0 THEN 'no' ELSE n::text END, elem
                USING ERRCODE = 'GD101',
                      DETAIL = pg_catalog.format('Foreign keys of %s: %s.', gdpr._qualified(cur),
                          COALESCE((SELECT pg_catalog.string_agg(pg_catalog.format('%s (%s) -> %s', e.conname,
                                        pg_catalog.array_to_string(e.src_cols, ','), gdpr._qualified(e.dst)), '; ')
                                      FROM gdpr._fk_edge e WHERE e.src = cur OR (e.src = target AND e.dst = cur)), 'none')),
                      HINT = 'Name each step of via by the foreign key''s constraint name or by its column list, such as ''order_id''; a foreign key of the subject table onto this one counts too.';
        END IF;
        SELECT * INTO found FROM (
            SELECT e.src_cols AS from_cols, e.dst AS to_rel, e.dst_cols AS to_cols, e.ops, false AS reverse, e.conname
              FROM gdpr._fk_edge e
             WHERE e.src = cur
               AND (e.conname = elem OR pg_catalog.array_to_string(e.src_cols, ',') = pg_catalog.replace(elem, ' ', ''))
            UNION ALL
            SELECT e.dst_cols, e.src, e.src_cols, e.ops, true, e.conname
              FROM gdpr._fk_edge e
             WHERE e.src = target AND e.dst = cur
               AND (e.conname = elem OR pg_catalog.array_to_string(e.src_cols, ',') = pg_catalog.replace(elem, ' ', ''))
        ) f;
        steps := steps || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
                     'from_cols', found.from_cols, 'to', found.to_rel::oid, 'to_cols', found.to_cols,
                     'ops', found.ops::oid[], 'reverse', found.reverse, 'constraint', found.conname));
        cur := found.to_rel;
        seen := seen || cur::oid;
    END LOOP;

    IF cur = target THEN
        RETURN steps;
    END IF;

    SELECT pg_catalog.array_agg(p.steps ORDER BY p.steps::text) INTO cands
      FROM gdpr._shortest_paths(cur, target, seen) p;

    IF cands IS NULL THEN
        RAISE EXCEPTION 'no foreign-key path from table % to subject table % of kind "%"',
                        gdpr._qualified(tbl), gdpr._qualified(target), kind
            USING ERRCODE = 'GD100',
                  HINT = 'Pass subject_column => the column that holds the subject key, or add the foreign key that links the table to its subject.';
    END IF;
    IF pg_catalog.array_length(cands, 1) > 1 THEN
        RAISE EXCEPTION 'table % has % equally short paths to subject table %',
                        gdpr._qualified(tbl), pg_catalog.array_length(cands, 1), gdpr._qualified(target)
            USING ERRCODE = 'GD101',
                  DETAIL = (SELECT pg_catalog.string_agg(pg_catalog.format('path %s: %s', i, gdpr._path_text(cur, c)), '; ' ORDER BY i)
                              FROM pg_catalog.unnest(cands) WITH ORDINALITY AS u(c, i)),
                  HINT = 'Choose one with via => ARRAY[''<foreign key columns or constraint name>''] and add the others with gdpr.add_path().';
    END IF;
    RETURN steps || cands[1];
END
$$;

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
BEGIN
    EXECUTE pg_catalog.format('CREATE TRIGGER gdpr_audit_row AFTER INSERT OR UPDATE OR DELETE ON %s FOR EACH ROW EXECUTE FUNCTION gdpr.audit_row()', tbl);
    PERFORM gdpr._attach_truncate(tbl);
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
BEGIN
    EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS gdpr_audit_row ON %s', tbl);
    FOR part IN SELECT g.tgrelid FROM pg_catalog.pg_trigger g
                 WHERE g.tgname = 'gdpr_audit_truncate'
                   AND (g.tgrelid = tbl OR g.tgrelid IN (SELECT relid FROM pg_catalog.pg_partition_tree(tbl))) LOOP
        EXECUTE pg_catalog.format('DROP TRIGGER gdpr_audit_truncate ON %s', part);
    END LOOP;
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
    SELECT gdpr.log_event(event, NULL::text, true, detail, NULL, gdpr._qualified(tbl));
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
        PERFORM gdpr.log_event('MAP_PATH_DROPPED', NULL::text, true,
            pg_catalog.jsonb_build_object('path', r.path_name, 'reason', why), NULL, gdpr._qualified(r.relid));
    END LOOP;
    DELETE FROM gdpr.subject_kind WHERE relid::oid = tbl;
    DELETE FROM gdpr.registered_table WHERE relid::oid = tbl;
    PERFORM gdpr.log_event('MAP_UNREGISTER', NULL::text, true,
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
    PERFORM gdpr._detach(tbl);
    PERFORM gdpr._map_changed(tbl);
END
$$;

------------------------------------------------------------------------------------------------
-- Views over the map
------------------------------------------------------------------------------------------------

CREATE VIEW gdpr.map AS
SELECT r.relid AS table_name,
       r.kind AS subject_kind,
       (sk.relid = r.relid) AS is_subject_table,
       p.path_name,
       p.relation,
       CASE WHEN p.subject_column IS NOT NULL
            THEN pg_catalog.format('%s.%s', gdpr._qualified(r.relid), pg_catalog.quote_ident(p.subject_column))
            ELSE (SELECT pg_catalog.string_agg(pg_catalog.format('(%s) -> %s(%s)',
                         pg_catalog.array_to_string(s.from_cols, ', '), gdpr._qualified(s.to_rel),
                         pg_catalog.array_to_string(s.to_cols, ', ')), ' ' ORDER BY s.step)
                    FROM gdpr.path_step s WHERE s.relid = p.relid AND s.path_name = p.path_name)
       END AS path,
       (SELECT pg_catalog.count(*)::int FROM gdpr.path_step s WHERE s.relid = p.relid AND s.path_name = p.path_name) AS hops,
       r.on_erase,
       (SELECT pg_catalog.jsonb_object_agg(c.column_name, pg_catalog.jsonb_build_object('category', c.category, 'erase', c.erase))
          FROM gdpr.column_class c WHERE c.relid = r.relid) AS columns,
       r.purpose, r.legal_basis, r.retention, r.recipients, r.provided_by_subject
  FROM gdpr.registered_table r
  JOIN gdpr.subject_kind sk ON sk.kind = r.kind
  LEFT JOIN gdpr.subject_path p ON p.relid = r.relid;

-- What looks uncovered: registered tables that lost their path, tables that reference a
-- registered table but are not registered, and unclassified columns whose names suggest
-- personal data.
CREATE VIEW gdpr.coverage_gaps AS
SELECT r.relid AS table_name, NULL::name AS column_name,
       'is registered but has no owner path to its subject: its rows are audited without a subject' AS reason
  FROM gdpr.registered_table r
 WHERE NOT EXISTS (SELECT 1 FROM gdpr.subject_path p WHERE p.relid = r.relid AND p.relation = 'owner')
UNION ALL
-- An oid column (or a domain over oid, such as lo) references a large object, whose content
-- pg_dump writes: exported and removed with a deleted row, it stays with a kept row unless classified.
SELECT r.relid, a.attname,
       'references large objects: classify it, so that an anonymized row loses its object too'
  FROM gdpr.registered_table r
  JOIN pg_catalog.pg_attribute a ON a.attrelid = r.relid AND a.attnum > 0 AND NOT a.attisdropped
  JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid
 WHERE (a.atttypid = 'pg_catalog.oid'::pg_catalog.regtype OR ty.typbasetype = 'pg_catalog.oid'::pg_catalog.regtype)
   AND NOT EXISTS (SELECT 1 FROM gdpr.column_class cc WHERE cc.relid = r.relid AND cc.column_name = a.attname)
UNION ALL
-- A key column beside a type column (owner_id, owner_type: the Rails and Django pattern) holds the
-- keys of several kinds of owner: without a condition the path takes a company's rows for a user's.
SELECT p.relid, p.subject_column,
       pg_catalog.format('holds keys of several kinds of owner (see column %I): give path %L a condition, such as %I = ''User''',
                         a.attname, p.path_name, a.attname)
  FROM gdpr.subject_path p
  JOIN pg_catalog.pg_attribute a ON a.attrelid = p.relid AND a.attnum > 0 AND NOT a.attisdropped
   AND a.attname::text = pg_catalog.regexp_replace(p.subject_column, '_id$', '_type')
 WHERE p.subject_column ~ '_id$' AND p.condition IS NULL
UNION ALL
SELECT e.src, NULL::name AS column_name,
       pg_catalog.format('references registered table %s through (%s) but is not registered',
                         gdpr._qualified(e.dst), pg_catalog.array_to_string(e.src_cols, ', ')) AS reason
  FROM gdpr._fk_edge e
 WHERE e.dst IN (SELECT relid FROM gdpr.registered_table)
   AND e.src NOT IN (SELECT relid FROM gdpr.registered_table)
   AND (SELECT c.relnamespace FROM pg_catalog.pg_class c WHERE c.oid = e.src) <> 'gdpr'::regnamespace
UNION ALL
SELECT c.oid::pg_catalog.regclass, a.attname,
       CASE WHEN r.relid IS NULL
            THEN 'column name suggests personal data and the table is not registered'
            ELSE 'column name suggests personal data and the column is not classified' END
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN gdpr.registered_table r ON r.relid = c.oid
 WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'gdpr') AND n.nspname !~ '^pg_toast'
   AND a.attname ~* '(e_?mail|phone|mobile|fax|name|address|street|city|zip|postal|postcode|birth|dob|gender|ssn|passport|national_id|tax_id|iban|account_no|card|ip_?addr|^ip$|latitude|longitude|geo|salary|password|token|health|religion|ethnic)'
   AND NOT EXISTS (SELECT 1 FROM gdpr.column_class cc WHERE cc.relid = c.oid AND cc.column_name = a.attname)
   AND NOT EXISTS (SELECT 1 FROM gdpr.subject_kind sk WHERE sk.relid = c.oid AND sk.key_column = a.attname)
   AND NOT EXISTS (SELECT 1 FROM gdpr._fk_edge e WHERE e.src = c.oid AND a.attname = ANY (e.src_cols))
UNION ALL
-- A materialized view holds its own copy of what it selected: an erasure does not reach it, and
-- pg_dump writes only REFRESH, so the copy is easy to miss.
SELECT DISTINCT v.oid::pg_catalog.regclass, NULL::name,
       pg_catalog.format('is a materialized view over registered table %s: it keeps a copy that erasure does not reach until it is refreshed',
                         gdpr._qualified(d.refobjid::pg_catalog.regclass))
  FROM pg_catalog.pg_class v
  JOIN pg_catalog.pg_rewrite rw ON rw.ev_class = v.oid
  JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = rw.oid
                             AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
 WHERE v.relkind = 'm' AND d.refobjid <> v.oid
   AND d.refobjid IN (SELECT r.relid::pg_catalog.oid FROM gdpr.registered_table r)
   AND v.oid NOT IN (SELECT dv.relid::pg_catalog.oid FROM gdpr.derived_view dv);

------------------------------------------------------------------------------------------------
-- Event triggers: the map follows the schema, and DDL on personal data is recorded
------------------------------------------------------------------------------------------------

CREATE FUNCTION gdpr._registered_root(rel oid) RETURNS pg_catalog.regclass
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.relid FROM gdpr.registered_table r
     WHERE r.relid::oid = COALESCE(pg_catalog.pg_partition_root(rel), rel)
$$;

CREATE FUNCTION gdpr._on_ddl_command_end() RETURNS event_trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r    record;
    t    oid;
    reg  regclass;
BEGIN
    FOR r IN SELECT * FROM pg_catalog.pg_event_trigger_ddl_commands() LOOP
        IF r.command_tag IN ('GRANT', 'REVOKE') THEN
            FOR t IN SELECT pg_catalog.unnest(gdpr._grant_targets(r.command)) LOOP
                reg := gdpr._registered_root(t);
                IF reg IS NOT NULL THEN
                    PERFORM gdpr.log_event('DDL', NULL::text, true,
                        pg_catalog.jsonb_build_object('command', r.command_tag, 'object_type', 'table',
                                                      'object', gdpr._qualified(t::regclass)),
                        NULL, gdpr._qualified(reg));
                END IF;
            END LOOP;
            CONTINUE;
        END IF;
        t := CASE r.classid
                 WHEN 'pg_catalog.pg_class'::regclass THEN
                     COALESCE((SELECT i.indrelid FROM pg_catalog.pg_index i WHERE i.indexrelid = r.objid), r.objid)
                 WHEN 'pg_catalog.pg_trigger'::regclass THEN
                     (SELECT g.tgrelid FROM pg_catalog.pg_trigger g WHERE g.oid = r.objid)
                 WHEN 'pg_catalog.pg_policy'::regclass THEN
                     (SELECT p.polrelid FROM pg_catalog.pg_policy p WHERE p.oid = r.objid)
                 WHEN 'pg_catalog.pg_constraint'::regclass THEN
                     (SELECT c.conrelid FROM pg_catalog.pg_constraint c WHERE c.oid = r.objid)
             END;
        CONTINUE WHEN t IS NULL;
        reg := gdpr._registered_root(t);
        IF reg IS NOT NULL THEN
            PERFORM gdpr.log_event('DDL', NULL::text, true,
                pg_catalog.jsonb_build_object('command', r.command_tag, 'object_type', r.object_type,
                                              'object', r.object_identity),
                NULL, gdpr._qualified(reg));
            PERFORM gdpr._map_changed(reg);
            -- Only a table created as a partition of a registered one: a restore from pg_dump
            -- creates partitions standalone and brings the triggers itself.
            IF r.command_tag = 'CREATE TABLE' AND r.objid <> reg::oid THEN
                PERFORM gdpr._attach_truncate(reg);
            END IF;
        END IF;
    END LOOP;
END
$$;

-- SECURITY DEFINER: the owner of a registered table may drop it without being gdpr_admin, and the
-- map must follow all the same.  It acts on pg_event_trigger_dropped_objects() only, which exists
-- only while a sql_drop event trigger runs: calling it elsewhere fails.
CREATE FUNCTION gdpr._forget_dropped() RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r    record;
    p    record;
    k    text;
    col  name;
    qual text;
BEGIN
    DELETE FROM gdpr.derived_view d USING pg_catalog.pg_event_trigger_dropped_objects() o
     WHERE o.object_type = 'materialized view' AND d.relid::oid = o.objid;
    FOR r IN SELECT * FROM pg_catalog.pg_event_trigger_dropped_objects()
              WHERE object_type IN ('table', 'table column') LOOP
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM gdpr.registered_table t WHERE t.relid::oid = r.objid)
                      AND NOT EXISTS (SELECT 1 FROM gdpr.path_step s WHERE s.to_rel::oid = r.objid);
        qual := pg_catalog.format('%s.%s', pg_catalog.quote_ident(r.address_names[1]),
                                  pg_catalog.quote_ident(r.address_names[2]));
        IF r.object_type = 'table' THEN
            FOR k IN SELECT s.kind FROM gdpr.subject_kind s WHERE s.relid::oid = r.objid LOOP
                FOR p IN SELECT t.relid, COALESCE(gdpr._qualified(t.relid),
                                    (SELECT pg_catalog.format('%s.%s', pg_catalog.quote_ident(d.address_names[1]),
                                                              pg_catalog.quote_ident(d.address_names[2]))
                                       FROM pg_catalog.pg_event_trigger_dropped_objects() d
                                      WHERE d.objid = t.relid::oid AND d.object_type = 'table')) AS name
                           FROM gdpr.registered_table t WHERE t.kind = k AND t.relid::oid <> r.objid LOOP
                    RAISE WARNING 'table % is no longer registered: its subject table % was dropped', p.name, qual;
                    PERFORM gdpr._forget(p.relid, p.name, pg_catalog.format('subject table %s dropped', qual));
                    PERFORM gdpr._map_changed(p.relid);
                END LOOP;
            END LOOP;
            PERFORM gdpr._forget(r.objid, qual, pg_catalog.format('%s dropped', qual));
            CONTINUE;
        END IF;

        col := r.address_names[3];
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM gdpr.registered_table t WHERE t.relid::oid = r.objid)
                      AND NOT EXISTS (SELECT 1 FROM gdpr.path_step s WHERE s.to_rel::oid = r.objid AND col = ANY (s.to_cols));
        SELECT s.kind INTO k FROM gdpr.subject_kind s WHERE s.relid::oid = r.objid AND s.key_column = col;
        IF FOUND THEN
            FOR p IN SELECT t.relid FROM gdpr.registered_table t WHERE t.kind = k LOOP
                RAISE WARNING 'table % is no longer registered: the key column "%" of subject kind "%" was dropped',
                              gdpr._qualified(p.relid), col, k;
                PERFORM gdpr._forget(p.relid, gdpr._qualified(p.relid), pg_catalog.format('subject key %s.%s dropped', qual, col));
                PERFORM gdpr._map_changed(p.relid);
            END LOOP;
        ELSE
            DELETE FROM gdpr.column_class c WHERE c.relid::oid = r.objid AND c.column_name = col;
            FOR p IN SELECT DISTINCT sp.relid, sp.path_name FROM gdpr.subject_path sp
                      WHERE (sp.relid::oid = r.objid AND sp.subject_column = col)
                         OR EXISTS (SELECT 1 FROM gdpr.path_step s
                                     WHERE s.relid = sp.relid AND s.path_name = sp.path_name
                                       AND ((s.to_rel::oid = r.objid AND col = ANY (s.to_cols))
                                         OR (s.step = 1 AND s.relid::oid = r.objid AND col = ANY (s.from_cols))
                                         OR (s.step > 1 AND col = ANY (s.from_cols) AND EXISTS (
                                                SELECT 1 FROM gdpr.path_step s0 WHERE s0.relid = s.relid AND s0.path_name = s.path_name
                                                   AND s0.step = s.step - 1 AND s0.to_rel::oid = r.objid)))) LOOP
                DELETE FROM gdpr.subject_path sp WHERE sp.relid = p.relid AND sp.path_name = p.path_name;
                RAISE WARNING 'path "%" of table % used column "%" of %: it is dropped from the map',
                              p.path_name, gdpr._qualified(p.relid), col, qual
                    USING HINT = 'Register the table again or add a path with gdpr.add_path().';
                PERFORM gdpr.log_event('MAP_PATH_DROPPED', NULL::text, true,
                    pg_catalog.jsonb_build_object('path', p.path_name, 'reason', pg_catalog.format('column %s.%s dropped', qual, col)),
                    NULL, gdpr._qualified(p.relid));
                PERFORM gdpr._map_changed(p.relid);
            END LOOP;
        END IF;
        IF EXISTS (SELECT 1 FROM gdpr.registered_table t WHERE t.relid::oid = r.objid) THEN
            PERFORM gdpr._map_changed(r.objid::regclass);
        END IF;
    END LOOP;
END
$$;

-- The DDL is recorded as the role that ran it (the trail's effective_role), whatever
-- gdpr.audit_superusers says; the map follows in gdpr._forget_dropped().
CREATE FUNCTION gdpr._on_sql_drop() RETURNS event_trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r    record;
    qual text;
BEGIN
    -- Dropping an audit trigger by hand switches auditing off: say so in the trail.
    FOR r IN SELECT * FROM pg_catalog.pg_event_trigger_dropped_objects()
              WHERE object_type = 'trigger' AND NOT is_temporary LOOP
        CONTINUE WHEN r.address_names[3] NOT IN ('gdpr_audit_row', 'gdpr_audit_truncate');
        qual := pg_catalog.format('%s.%s', pg_catalog.quote_ident(r.address_names[1]),
                                  pg_catalog.quote_ident(r.address_names[2]));
        CONTINUE WHEN gdpr._registered_root(pg_catalog.to_regclass(qual)) IS NULL;
        PERFORM gdpr.log_event('DDL', NULL::text, true,
            pg_catalog.jsonb_build_object('command', TG_TAG, 'object_type', 'trigger',
                                          'object', r.object_identity),
            NULL, gdpr._qualified(gdpr._registered_root(pg_catalog.to_regclass(qual))));
    END LOOP;

    FOR r IN SELECT * FROM pg_catalog.pg_event_trigger_dropped_objects()
              WHERE object_type IN ('table', 'table column') LOOP
        qual := pg_catalog.format('%s.%s', pg_catalog.quote_ident(r.address_names[1]),
                                  pg_catalog.quote_ident(r.address_names[2]));
        IF r.object_type = 'table'
           AND (EXISTS (SELECT 1 FROM gdpr.registered_table t WHERE t.relid::oid = r.objid)
                OR EXISTS (SELECT 1 FROM gdpr.path_step s WHERE s.to_rel::oid = r.objid)) THEN
            PERFORM gdpr.log_event('DDL', NULL::text, true,
                pg_catalog.jsonb_build_object('command', TG_TAG, 'object_type', 'table', 'object', qual),
                NULL, qual);
        ELSIF r.object_type = 'table column'
              AND EXISTS (SELECT 1 FROM gdpr.registered_table t WHERE t.relid::oid = r.objid) THEN
            PERFORM gdpr.log_event('DDL', NULL::text, true,
                pg_catalog.jsonb_build_object('command', TG_TAG, 'object_type', 'table column',
                                              'object', r.object_identity),
                NULL, qual);
        END IF;
    END LOOP;
    PERFORM gdpr._forget_dropped();
END
$$;

CREATE EVENT TRIGGER gdpr_ddl_command_end ON ddl_command_end
    EXECUTE FUNCTION gdpr._on_ddl_command_end();
CREATE EVENT TRIGGER gdpr_sql_drop ON sql_drop
    EXECUTE FUNCTION gdpr._on_sql_drop();

------------------------------------------------------------------------------------------------
-- Export (Art. 15 and 20).  The rights functions live in schema public so that they are callable
-- unqualified with the default search_path.
------------------------------------------------------------------------------------------------

CREATE FUNCTION public.gdpr_export(subject text, kind text DEFAULT NULL, portable boolean DEFAULT false,
                                   request_id bigint DEFAULT NULL)
    RETURNS jsonb LANGUAGE c VOLATILE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'gdpr_export';
CREATE FUNCTION public.gdpr_export(subject bigint, kind text DEFAULT NULL, portable boolean DEFAULT false,
                                   request_id bigint DEFAULT NULL)
    RETURNS jsonb LANGUAGE c VOLATILE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'gdpr_export';
CREATE FUNCTION public.gdpr_export(subject uuid, kind text DEFAULT NULL, portable boolean DEFAULT false,
                                   request_id bigint DEFAULT NULL)
    RETURNS jsonb LANGUAGE c VOLATILE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'gdpr_export';

CREATE FUNCTION public.gdpr_export_rows(subject text, kind text DEFAULT NULL, portable boolean DEFAULT false)
    RETURNS TABLE (table_name text, "row" jsonb)
    LANGUAGE c VOLATILE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'gdpr_export_rows';
CREATE FUNCTION public.gdpr_export_rows(subject bigint, kind text DEFAULT NULL, portable boolean DEFAULT false)
    RETURNS TABLE (table_name text, "row" jsonb)
    LANGUAGE c VOLATILE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'gdpr_export_rows';
CREATE FUNCTION public.gdpr_export_rows(subject uuid, kind text DEFAULT NULL, portable boolean DEFAULT false)
    RETURNS TABLE (table_name text, "row" jsonb)
    LANGUAGE c VOLATILE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'gdpr_export_rows';

CREATE FUNCTION gdpr._export_sql(tbl pg_catalog.regclass) RETURNS text
    LANGUAGE c STABLE STRICT AS 'MODULE_PATHNAME', 'gdpr_export_sql';

-- Whether some index of a table (or, for a partitioned table, of each of its partitions) starts
-- with the given columns, in any order, so that a lookup by them is an index scan.
CREATE FUNCTION gdpr._has_index(tbl pg_catalog.regclass, cols name[]) RETURNS boolean
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    WITH target AS (
        SELECT relid FROM pg_catalog.pg_partition_tree(tbl) WHERE isleaf
        UNION ALL
        SELECT tbl WHERE pg_catalog.pg_partition_root(tbl) IS NULL
    )
    SELECT pg_catalog.bool_and(EXISTS (
               SELECT 1 FROM pg_catalog.pg_index i
                WHERE i.indrelid = target.relid AND i.indpred IS NULL
                  AND i.indnkeyatts >= pg_catalog.cardinality(cols)
                  AND (SELECT pg_catalog.array_agg(a.attname::text ORDER BY a.attname::text)
                         FROM pg_catalog.unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
                         JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                        WHERE k.n <= pg_catalog.cardinality(cols))
                      = (SELECT pg_catalog.array_agg(c::text ORDER BY c::text) FROM pg_catalog.unnest(cols) c)))
      FROM target
$$;

-- The export, without running it: for each registered table of a kind, each path and each step,
-- which table is looked up by which columns, whether an index serves the lookup, and the query
-- an export runs.  With a subject, the query carries its key.
CREATE FUNCTION gdpr.export_plan(subject text DEFAULT NULL, kind text DEFAULT NULL)
    RETURNS TABLE (table_name pg_catalog.regclass, path_name text, relation text, step int,
                   lookup text, indexed boolean, hint text, query text)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k   gdpr.subject_kind;
    key text;
BEGIN
    SELECT * INTO k FROM gdpr.subject_kind sk
     WHERE sk.kind = COALESCE(export_plan.kind,
                              (SELECT CASE WHEN count(*) = 1 THEN min(s.kind) ELSE 'default' END
                                 FROM gdpr.subject_kind s));
    IF NOT FOUND THEN
        RAISE EXCEPTION 'subject kind "%" is not registered', COALESCE(export_plan.kind, 'default')
            USING ERRCODE = '42704', HINT = 'See SELECT kind FROM gdpr.subject_kind.';
    END IF;
    IF subject IS NOT NULL THEN
        EXECUTE format('SELECT (%L::%s)::text', subject, k.key_type) INTO key;
    END IF;
    RETURN QUERY
    WITH lookups AS (
        SELECT p.relid, p.path_name, p.relation, 0 AS step, p.relid AS looked_up,
               ARRAY[p.subject_column] AS cols
          FROM gdpr.subject_path p WHERE p.subject_column IS NOT NULL
        UNION ALL
        SELECT s.relid, s.path_name, p.relation, s.step,
               CASE WHEN s.step = 1 THEN s.relid
                    ELSE (SELECT s0.to_rel FROM gdpr.path_step s0
                           WHERE s0.relid = s.relid AND s0.path_name = s.path_name AND s0.step = s.step - 1)
               END,
               s.from_cols
          FROM gdpr.path_step s
          JOIN gdpr.subject_path p ON p.relid = s.relid AND p.path_name = s.path_name
    )
    SELECT l.relid, l.path_name, l.relation, l.step,
           format('%s (%s)', gdpr._qualified(l.looked_up),
                  (SELECT string_agg(quote_ident(c), ', ') FROM unnest(l.cols) c)),
           ix.indexed,
           CASE WHEN NOT ix.indexed THEN
               format('no index serves this lookup: CREATE INDEX ON %s (%s)', gdpr._qualified(l.looked_up),
                      (SELECT string_agg(quote_ident(c), ', ') FROM unnest(l.cols) c))
           END,
           CASE WHEN key IS NULL THEN gdpr._export_sql(l.relid)
                ELSE replace(gdpr._export_sql(l.relid), '$1', quote_literal(key) || '::' || k.key_type::text)
           END
      FROM lookups l
      JOIN gdpr.registered_table r ON r.relid = l.relid
      CROSS JOIN LATERAL (SELECT gdpr._has_index(l.looked_up, l.cols) AS indexed) ix
     WHERE r.kind = k.kind
     ORDER BY gdpr._qualified(l.relid), l.path_name, l.step;
END
$$;

------------------------------------------------------------------------------------------------
-- Erasure (Art. 17) and restriction (Art. 18)
------------------------------------------------------------------------------------------------

-- The pseudonym key.  Only the extension's owner reads it: with it, a pseudonym could be matched
-- to a subject by trying keys.  Created on first use rather than here, so that a restore from
-- pg_dump brings back the key the pseudonyms were made with instead of colliding with a new one.
CREATE TABLE gdpr.secret (
    name   text PRIMARY KEY,
    value  bytea NOT NULL
);
CREATE FUNCTION gdpr._random_key() RETURNS bytea
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'gdpr_random_key';
CREATE FUNCTION gdpr._pseudonym(seed text) RETURNS text
    LANGUAGE c STABLE STRICT AS 'MODULE_PATHNAME', 'gdpr_pseudonym_sql';

-- Rows matching a hold's condition keep the subject from being erased.
CREATE TABLE gdpr.legal_hold (
    hold_id     int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    relid       pg_catalog.regclass NOT NULL REFERENCES gdpr.registered_table ON DELETE CASCADE,
    condition   text NOT NULL,
    reason      text NOT NULL CHECK (reason <> ''),
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    UNIQUE (relid, condition)
);

-- Subjects whose processing is restricted: manually (Art. 18), while an erasure request waits
-- out its grace period, or for good once erased with their row kept.
CREATE TABLE gdpr.restriction (
    kind           text NOT NULL,
    subject_id     text COLLATE "C" NOT NULL,
    source         text NOT NULL CHECK (source IN ('manual', 'erasure_request', 'erased')),
    reason         text NOT NULL,
    restricted_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (kind, subject_id, source)
);

CREATE TABLE gdpr.erasure_request (
    request_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind          text NOT NULL,
    subject_id    text COLLATE "C" NOT NULL,
    requested_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    due_at        timestamptz NOT NULL,
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'done', 'cancelled', 'failed')),
    finished_at   timestamptz,
    error         text,
    -- the background worker carries the erasure out with this role's rights
    requested_by  name NOT NULL DEFAULT CURRENT_USER
);
CREATE UNIQUE INDEX erasure_request_pending_idx ON gdpr.erasure_request (kind, subject_id)
    WHERE status = 'pending';

-- The worker carries a due erasure out with the rights of requested_by: the database sets it, to
-- the role that wrote the request, and nobody changes it afterwards.  Only a superuser, who could
-- act as any role anyway, names another (a restore from pg_dump keeps the requesters).
CREATE FUNCTION gdpr._erasure_request_guard() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) current_user)
       AND NEW.requested_by IS NOT NULL THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'INSERT' THEN
        NEW.requested_by := current_user;
        RETURN NEW;
    END IF;
    -- what the request is, and whose, is fixed; it can only move on, never back to pending
    IF (NEW.kind, NEW.subject_id, NEW.requested_by, NEW.requested_at, NEW.due_at)
       IS DISTINCT FROM (OLD.kind, OLD.subject_id, OLD.requested_by, OLD.requested_at, OLD.due_at)
       OR (NEW.status OPERATOR(pg_catalog.=) 'pending' AND OLD.status OPERATOR(pg_catalog.<>) 'pending') THEN
        RAISE EXCEPTION 'erasure request % cannot be changed that way', OLD.request_id
            USING ERRCODE = '42501',
                  DETAIL = 'Only its status moves on (done, failed, cancelled); the subject, the requester and the due date stay.',
                  HINT = 'Cancel the request with gdpr_cancel_erasure() and request it again.';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER guard BEFORE INSERT OR UPDATE ON gdpr.erasure_request
    FOR EACH ROW EXECUTE FUNCTION gdpr._erasure_request_guard();
CREATE INDEX erasure_request_due_idx ON gdpr.erasure_request (due_at) WHERE status = 'pending';

-- Who was erased, by pseudonym only.
CREATE TABLE gdpr.erasure (
    kind        text NOT NULL,
    pseudonym   text NOT NULL,
    erased_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    report      jsonb NOT NULL,
    PRIMARY KEY (kind, pseudonym)
);

SELECT pg_catalog.pg_extension_config_dump('gdpr.secret', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.legal_hold', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.legal_hold_hold_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.restriction', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.erasure_request', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.erasure_request_request_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.erasure', '');

-- A path condition may use the row's columns, constants and built-in functions and operators
-- only: it is evaluated by whoever follows the path (an export as the caller, the audit trigger as
-- the writer), and must mean the same, and run no one's code, for all of them.
CREATE FUNCTION gdpr._check_path_condition(tbl pg_catalog.regclass, condition text) RETURNS text
    LANGUAGE c STRICT
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'gdpr_check_path_condition';

-- Stored in canonical form (every name qualified) however the row is written.
CREATE FUNCTION gdpr._canonical_path_condition() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.condition := gdpr._check_path_condition(NEW.relid, NEW.condition);
    RETURN NEW;
END
$$;
CREATE TRIGGER canonical_condition BEFORE INSERT OR UPDATE OF condition ON gdpr.subject_path
    FOR EACH ROW WHEN (NEW.condition IS NOT NULL) EXECUTE FUNCTION gdpr._canonical_path_condition();

CREATE FUNCTION gdpr._check_condition(tbl pg_catalog.regclass, condition text) RETURNS void
    LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'gdpr_check_condition';

-- A condition is code the retention worker runs as the table's owner: checked however the row
-- is written, functions or plain DML.
CREATE FUNCTION gdpr._check_rule() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.condition IS NOT NULL THEN
        PERFORM gdpr._check_condition(NEW.relid, NEW.condition);
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER check_condition BEFORE INSERT OR UPDATE OF relid, condition ON gdpr.legal_hold
    FOR EACH ROW EXECUTE FUNCTION gdpr._check_rule();

CREATE FUNCTION gdpr.add_legal_hold(tbl pg_catalog.regclass, condition text, reason text)
    RETURNS int
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    id int;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM gdpr.registered_table r WHERE r.relid = tbl) THEN
        RAISE EXCEPTION 'table % is not registered', COALESCE(gdpr._qualified(tbl), 'NULL')
            USING ERRCODE = '42704', HINT = 'Holds apply to registered tables; register it with gdpr.register_table().';
    END IF;
    IF condition IS NULL OR btrim(condition) = '' THEN
        RAISE EXCEPTION 'legal hold condition must not be empty' USING ERRCODE = '22023',
              HINT = 'Write a boolean expression over the table''s columns, such as status = ''unpaid''.';
    END IF;
    IF reason IS NULL OR btrim(reason) = '' THEN
        RAISE EXCEPTION 'legal hold reason must not be empty' USING ERRCODE = '22023',
              HINT = 'Say why the law keeps these rows, such as ''unpaid invoices (commercial code)''.';
    END IF;
    INSERT INTO gdpr.legal_hold (relid, condition, reason) VALUES (tbl, condition, reason)
    RETURNING hold_id INTO id;
    PERFORM gdpr._log_map('MAP_HOLD_ADDED', tbl,
        jsonb_build_object('hold_id', id, 'condition', condition, 'reason', reason));
    RETURN id;
END
$$;

CREATE FUNCTION gdpr.drop_legal_hold(hold_id int) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    h gdpr.legal_hold;
BEGIN
    DELETE FROM gdpr.legal_hold l WHERE l.hold_id = drop_legal_hold.hold_id RETURNING * INTO h;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'legal hold % does not exist', hold_id USING ERRCODE = '42704',
              HINT = 'See SELECT * FROM gdpr.legal_hold.';
    END IF;
    PERFORM gdpr._log_map('MAP_HOLD_DROPPED', h.relid,
        jsonb_build_object('hold_id', h.hold_id, 'condition', h.condition, 'reason', h.reason));
END
$$;

CREATE FUNCTION public.gdpr_erase(subject text, dry_run boolean DEFAULT false, kind text DEFAULT NULL,
                                  request_id bigint DEFAULT NULL)
    RETURNS jsonb LANGUAGE c VOLATILE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'gdpr_erase';
CREATE FUNCTION public.gdpr_erase(subject bigint, dry_run boolean DEFAULT false, kind text DEFAULT NULL,
                                  request_id bigint DEFAULT NULL)
    RETURNS jsonb LANGUAGE c VOLATILE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'gdpr_erase';
CREATE FUNCTION public.gdpr_erase(subject uuid, dry_run boolean DEFAULT false, kind text DEFAULT NULL,
                                  request_id bigint DEFAULT NULL)
    RETURNS jsonb LANGUAGE c VOLATILE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'gdpr_erase';
CREATE FUNCTION public.gdpr_can_erase(subject text, kind text DEFAULT NULL)
    RETURNS jsonb LANGUAGE c VOLATILE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'gdpr_can_erase';
CREATE FUNCTION public.gdpr_can_erase(subject bigint, kind text DEFAULT NULL)
    RETURNS jsonb LANGUAGE c VOLATILE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'gdpr_can_erase';
CREATE FUNCTION public.gdpr_can_erase(subject uuid, kind text DEFAULT NULL)
    RETURNS jsonb LANGUAGE c VOLATILE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'gdpr_can_erase';

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

CREATE FUNCTION public.gdpr_restrict(subject text, reason text, kind text DEFAULT NULL) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k record := gdpr._subject_key(subject, kind, true);
BEGIN
    IF reason IS NULL OR btrim(reason) = '' THEN
        RAISE EXCEPTION 'a restriction needs a reason' USING ERRCODE = '22023',
              HINT = 'Say why, such as ''accuracy contested (Art. 18(1)(a))''.';
    END IF;
    INSERT INTO gdpr.restriction (kind, subject_id, source, reason)
    VALUES (k.subject_kind, k.subject_key, 'manual', reason)
    ON CONFLICT ON CONSTRAINT restriction_pkey DO UPDATE SET reason = EXCLUDED.reason;
    PERFORM gdpr._map_changed('gdpr.restriction');
    PERFORM gdpr.log_event('RESTRICT', k.subject_key, true, jsonb_build_object('reason', reason), k.subject_kind);
END
$$;

CREATE FUNCTION public.gdpr_unrestrict(subject text, kind text DEFAULT NULL) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k record := gdpr._subject_key(subject, kind, false);
BEGIN
    DELETE FROM gdpr.restriction r WHERE r.kind = k.subject_kind AND r.subject_id = k.subject_key AND r.source = 'manual';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'subject % of kind "%" is not restricted', k.subject_key, k.subject_kind
            USING ERRCODE = '42704';
    END IF;
    PERFORM gdpr._map_changed('gdpr.restriction');
    PERFORM gdpr.log_event('UNRESTRICT', k.subject_key, true, NULL, k.subject_kind);
END
$$;

CREATE FUNCTION public.gdpr_request_erasure(subject text, grace interval DEFAULT '30 days', kind text DEFAULT NULL)
    RETURNS bigint
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k record := gdpr._subject_key(subject, kind, true);
    id bigint;
BEGIN
    IF grace IS NULL OR grace < interval '0' THEN
        RAISE EXCEPTION 'grace period must be zero or more' USING ERRCODE = '22023';
    END IF;
    IF EXISTS (SELECT 1 FROM gdpr.erasure_request r
                WHERE r.kind = k.subject_kind AND r.subject_id = k.subject_key AND r.status = 'pending') THEN
        RAISE EXCEPTION 'an erasure of subject % of kind "%" is already requested', k.subject_key, k.subject_kind
            USING ERRCODE = '42710', HINT = 'Cancel it with gdpr_cancel_erasure() to request another.';
    END IF;
    INSERT INTO gdpr.erasure_request (kind, subject_id, due_at)
    VALUES (k.subject_kind, k.subject_key, now() + grace) RETURNING request_id INTO id;
    INSERT INTO gdpr.restriction (kind, subject_id, source, reason)
    VALUES (k.subject_kind, k.subject_key, 'erasure_request', format('erasure requested (request %s)', id))
    ON CONFLICT DO NOTHING;
    PERFORM gdpr._map_changed('gdpr.restriction');
    PERFORM gdpr.log_event('ERASURE_REQUESTED', k.subject_key, true,
        jsonb_build_object('request_id', id, 'grace', grace::text), k.subject_kind);
    RETURN id;
END
$$;

CREATE FUNCTION public.gdpr_cancel_erasure(subject text, kind text DEFAULT NULL) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k record := gdpr._subject_key(subject, kind, false);
BEGIN
    UPDATE gdpr.erasure_request r SET status = 'cancelled', finished_at = now()
     WHERE r.kind = k.subject_kind AND r.subject_id = k.subject_key AND r.status = 'pending';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no erasure of subject % of kind "%" is pending', k.subject_key, k.subject_kind
            USING ERRCODE = '42704';
    END IF;
    DELETE FROM gdpr.restriction r
     WHERE r.kind = k.subject_kind AND r.subject_id = k.subject_key AND r.source = 'erasure_request';
    PERFORM gdpr._map_changed('gdpr.restriction');
    PERFORM gdpr.log_event('ERASURE_CANCELLED', k.subject_key, true, NULL, k.subject_kind);
END
$$;

-- The same for keys of type bigint and uuid: each passes its key on as text.
DO $wrappers$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['bigint', 'uuid'] LOOP
        EXECUTE format($f$CREATE FUNCTION public.gdpr_restrict(subject %s, reason text, kind text DEFAULT NULL)
            RETURNS void LANGUAGE sql AS 'SELECT public.gdpr_restrict(subject::text, reason, kind)'$f$, t);
        EXECUTE format($f$CREATE FUNCTION public.gdpr_unrestrict(subject %s, kind text DEFAULT NULL)
            RETURNS void LANGUAGE sql AS 'SELECT public.gdpr_unrestrict(subject::text, kind)'$f$, t);
        EXECUTE format($f$CREATE FUNCTION public.gdpr_request_erasure(subject %s, grace interval DEFAULT '30 days',
                                                                     kind text DEFAULT NULL)
            RETURNS bigint LANGUAGE sql AS 'SELECT public.gdpr_request_erasure(subject::text, grace, kind)'$f$, t);
        EXECUTE format($f$CREATE FUNCTION public.gdpr_cancel_erasure(subject %s, kind text DEFAULT NULL)
            RETURNS void LANGUAGE sql AS 'SELECT public.gdpr_cancel_erasure(subject::text, kind)'$f$, t);
    END LOOP;
END
$wrappers$;

-- Carries out the erasure requests whose grace period is over, each in its own subtransaction:
-- one that fails (a legal hold, say) is recorded as failed and the others go on.  One that only
-- met a lock or a serialization conflict stays pending, with the error, for the next pass.
CREATE FUNCTION gdpr.run_due_erasures(requested_by name DEFAULT NULL)
    RETURNS TABLE (request_id bigint, status text, detail jsonb)
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r gdpr.erasure_request;
    report jsonb;
BEGIN
    FOR r IN SELECT * FROM gdpr.erasure_request q
              WHERE q.status = 'pending' AND q.due_at <= now()
                AND (run_due_erasures.requested_by IS NULL OR q.requested_by = run_due_erasures.requested_by)
              ORDER BY q.due_at FOR UPDATE SKIP LOCKED LOOP
        BEGIN
            report := public.gdpr_erase(r.subject_id, false, r.kind);
            UPDATE gdpr.erasure_request q SET status = 'done', finished_at = now(), error = NULL
             WHERE q.request_id = r.request_id;
            request_id := r.request_id; status := 'done'; detail := report;
        EXCEPTION
            WHEN serialization_failure OR deadlock_detected OR lock_not_available THEN
                UPDATE gdpr.erasure_request q SET error = SQLERRM WHERE q.request_id = r.request_id;
                request_id := r.request_id; status := 'pending';
                detail := jsonb_build_object('error', SQLERRM, 'sqlstate', SQLSTATE);
            WHEN OTHERS THEN
                UPDATE gdpr.erasure_request q SET status = 'failed', finished_at = now(), error = SQLERRM
                 WHERE q.request_id = r.request_id;
                request_id := r.request_id; status := 'failed';
                detail := jsonb_build_object('error', SQLERRM, 'sqlstate', SQLSTATE);
        END;
        RETURN NEXT;
    END LOOP;
END
$$;

------------------------------------------------------------------------------------------------
-- Consent (Art. 6(1)(a), 7), objection (Art. 21), privacy notices (Art. 13, 14), data subject
-- requests (Art. 12), breaches (Art. 33, 34) and the record of processing (Art. 30)
------------------------------------------------------------------------------------------------

CREATE TABLE gdpr.purpose (
    name         text PRIMARY KEY CHECK (name <> ''),
    description  text NOT NULL,
    legal_basis  text NOT NULL CHECK (legal_basis IN ('consent', 'contract', 'legal_obligation',
                                                      'vital_interests', 'public_task',
                                                      'legitimate_interests')),
    created_at   timestamptz NOT NULL DEFAULT pg_catalog.now()
);

CREATE TABLE gdpr.consent (
    consent_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind          text COLLATE "C" NOT NULL,
    subject_id    text COLLATE "C" NOT NULL,
    purpose       text COLLATE "C" NOT NULL REFERENCES gdpr.purpose ON UPDATE CASCADE,
    version       text NOT NULL CHECK (version <> ''),
    granted_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    granted_by    text NOT NULL,
    client_addr   inet,
    detail        jsonb,
    withdrawn_at  timestamptz,
    withdrawn_by  text
);
-- One active consent per subject and purpose; gdpr_has_consent is one probe of this index.
CREATE UNIQUE INDEX consent_active_idx ON gdpr.consent (purpose, subject_id, kind) WHERE withdrawn_at IS NULL;
CREATE INDEX consent_subject_idx ON gdpr.consent (kind, subject_id);

CREATE TABLE gdpr.objection (
    objection_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind          text NOT NULL,
    subject_id    text COLLATE "C" NOT NULL,
    purpose       text NOT NULL REFERENCES gdpr.purpose ON UPDATE CASCADE,
    objected_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    detail        jsonb
);
CREATE INDEX objection_subject_idx ON gdpr.objection (kind, subject_id);

-- Where a row may only exist with the subject's consent (gdpr.require_consent).
CREATE TABLE gdpr.consent_requirement (
    relid           pg_catalog.regclass NOT NULL,
    subject_column  name NOT NULL,
    purpose         text NOT NULL REFERENCES gdpr.purpose ON UPDATE CASCADE,
    kind            text NOT NULL REFERENCES gdpr.subject_kind ON DELETE CASCADE,
    trigger_name    name NOT NULL,
    PRIMARY KEY (relid, purpose)
);

CREATE TABLE gdpr.privacy_policy (
    version       text PRIMARY KEY CHECK (version <> ''),
    effective_at  timestamptz NOT NULL,
    url           text,
    body          text,
    created_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CHECK (url IS NOT NULL OR body IS NOT NULL)
);

CREATE TABLE gdpr.policy_acceptance (
    kind         text NOT NULL,
    subject_id   text COLLATE "C" NOT NULL,
    version      text NOT NULL REFERENCES gdpr.privacy_policy ON UPDATE CASCADE,
    accepted_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (kind, subject_id, version)
);

CREATE TABLE gdpr.request (
    request_id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind                 text NOT NULL,
    subject_id           text COLLATE "C" NOT NULL,
    "right"              text NOT NULL CHECK ("right" IN ('access', 'rectification', 'erasure',
                                                          'restriction', 'portability', 'objection')),
    received_at          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    due_at               timestamptz NOT NULL,
    verified_at          timestamptz,
    verified_by          text,
    verification_method  text,
    extended_at          timestamptz,
    extension_reason     text,
    status               text NOT NULL DEFAULT 'open'
                         CHECK (status IN ('open', 'completed', 'rejected')),
    closed_at            timestamptz,
    outcome              text,
    detail               jsonb
);
CREATE INDEX request_open_idx ON gdpr.request (due_at) WHERE status = 'open';
CREATE INDEX request_subject_idx ON gdpr.request (kind, subject_id);

CREATE TABLE gdpr.breach (
    breach_id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    detected_at            timestamptz NOT NULL,
    occurred_from          timestamptz,
    occurred_to            timestamptz,
    nature                 text NOT NULL CHECK (nature <> ''),
    categories             text[] NOT NULL DEFAULT '{}',
    approx_subjects        int CHECK (approx_subjects >= 0),
    consequences           text,
    measures               text,
    authority_notified_at  timestamptz,
    subjects_notified_at   timestamptz,
    recorded_at            timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CHECK (occurred_from IS NULL OR occurred_to IS NULL OR occurred_from <= occurred_to)
);

CREATE TABLE gdpr.processor (
    name                text PRIMARY KEY CHECK (name <> ''),
    service             text NOT NULL,
    country             text NOT NULL,
    transfer_safeguard  text,
    dpa_signed          boolean NOT NULL DEFAULT false,
    recipients_of       text[] NOT NULL DEFAULT '{}',
    created_at          timestamptz NOT NULL DEFAULT pg_catalog.now()
);

SELECT pg_catalog.pg_extension_config_dump('gdpr.purpose', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.consent', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.consent_consent_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.objection', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.objection_objection_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.consent_requirement', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.privacy_policy', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.policy_acceptance', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.request', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.request_request_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.breach', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.breach_breach_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.processor', '');

CREATE FUNCTION gdpr._check_legal_basis(legal_basis text) RETURNS void
    LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF legal_basis IS NULL OR legal_basis NOT IN ('consent', 'contract', 'legal_obligation',
            'vital_interests', 'public_task', 'legitimate_interests') THEN
        RAISE EXCEPTION 'invalid legal basis "%"', legal_basis USING ERRCODE = '22023',
              HINT = 'Use one of consent, contract, legal_obligation, vital_interests, public_task, legitimate_interests (Art. 6(1)).';
    END IF;
END
$$;

CREATE FUNCTION gdpr._purpose(name text) RETURNS gdpr.purpose
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p gdpr.purpose;
BEGIN
    SELECT * INTO p FROM gdpr.purpose q WHERE q.name = _purpose.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'purpose "%" is not in the catalogue', name USING ERRCODE = '42704',
              HINT = 'Add it with gdpr.add_purpose(name, description, legal_basis); see SELECT * FROM gdpr.purpose.';
    END IF;
    RETURN p;
END
$$;

-- Who acts: the application's user when it says so, else the database role.
CREATE FUNCTION gdpr._actor() RETURNS text
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT COALESCE(NULLIF(current_setting('gdpr.actor', true), ''), session_user::text)
$$;

CREATE FUNCTION gdpr.add_purpose(name text, description text, legal_basis text) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF name IS NULL OR btrim(name) = '' OR description IS NULL OR btrim(description) = '' THEN
        RAISE EXCEPTION 'a purpose needs a name and a description' USING ERRCODE = '22023';
    END IF;
    PERFORM gdpr._check_legal_basis(legal_basis);
    INSERT INTO gdpr.purpose (name, description, legal_basis) VALUES (name, description, legal_basis)
    ON CONFLICT ON CONSTRAINT purpose_pkey
    DO UPDATE SET description = EXCLUDED.description, legal_basis = EXCLUDED.legal_basis;
    PERFORM gdpr.log_event('MAP_PURPOSE', NULL::text, true,
        jsonb_build_object('purpose', name, 'legal_basis', legal_basis));
END
$$;

CREATE FUNCTION public.gdpr_grant_consent(subject text, purpose text, version text, detail jsonb DEFAULT NULL,
                                          kind text DEFAULT NULL)
    RETURNS bigint
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k  record := gdpr._subject_key(subject, kind, true);
    p  gdpr.purpose := gdpr._purpose(purpose);
    id bigint;
BEGIN
    IF p.legal_basis <> 'consent' THEN
        RAISE EXCEPTION 'purpose "%" rests on %, not on consent', p.name, p.legal_basis USING ERRCODE = '22023',
              HINT = 'Consent is recorded only for purposes whose legal basis is consent.';
    END IF;
    IF version IS NULL OR btrim(version) = '' THEN
        RAISE EXCEPTION 'consent needs the version of the text the subject agreed to' USING ERRCODE = '22023';
    END IF;
    -- a new grant supersedes the active one: the history keeps both
    UPDATE gdpr.consent c SET withdrawn_at = now(), withdrawn_by = gdpr._actor()
     WHERE c.purpose = p.name AND c.subject_id = k.subject_key AND c.kind = k.subject_kind
       AND c.withdrawn_at IS NULL;
    INSERT INTO gdpr.consent (kind, subject_id, purpose, version, granted_by, client_addr, detail)
    VALUES (k.subject_kind, k.subject_key, p.name, version, gdpr._actor(),
            COALESCE(NULLIF(current_setting('gdpr.client_addr', true), '')::inet, inet_client_addr()), detail)
    RETURNING consent_id INTO id;
    PERFORM gdpr.log_event('CONSENT_GRANTED', k.subject_key, true,
        jsonb_build_object('purpose', p.name, 'version', version, 'consent_id', id), k.subject_kind);
    RETURN id;
END
$$;

CREATE FUNCTION public.gdpr_withdraw_consent(subject text, purpose text, kind text DEFAULT NULL) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k record := gdpr._subject_key(subject, kind, false);
    p gdpr.purpose := gdpr._purpose(purpose);
BEGIN
    UPDATE gdpr.consent c SET withdrawn_at = now(), withdrawn_by = gdpr._actor()
     WHERE c.purpose = p.name AND c.subject_id = k.subject_key AND c.kind = k.subject_kind
       AND c.withdrawn_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'subject % of kind "%" has no consent to withdraw for purpose "%"',
                        k.subject_key, k.subject_kind, p.name
            USING ERRCODE = '42704', HINT = 'See the history with SELECT * FROM gdpr.consent.';
    END IF;
    PERFORM gdpr.log_event('CONSENT_WITHDRAWN', k.subject_key, true,
        jsonb_build_object('purpose', p.name), k.subject_kind);
END
$$;

-- One probe of consent_active_idx per call, in C: cheap enough for a WHERE clause over every
-- subject.  For set-based work, join gdpr.active_consent instead.
CREATE FUNCTION public.gdpr_has_consent(subject text, purpose text, kind text DEFAULT NULL) RETURNS boolean
    LANGUAGE c STABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'gdpr_has_consent';
CREATE FUNCTION public.gdpr_has_consent(subject bigint, purpose text, kind text DEFAULT NULL) RETURNS boolean
    LANGUAGE c STABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'gdpr_has_consent';
CREATE FUNCTION public.gdpr_has_consent(subject uuid, purpose text, kind text DEFAULT NULL) RETURNS boolean
    LANGUAGE c STABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'gdpr_has_consent';

CREATE VIEW gdpr.active_consent AS
SELECT c.kind, c.subject_id, c.purpose, c.version, c.granted_at
  FROM gdpr.consent c WHERE c.withdrawn_at IS NULL;

CREATE FUNCTION public.gdpr_object(subject text, purpose text, detail jsonb DEFAULT NULL, kind text DEFAULT NULL)
    RETURNS bigint
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k  record := gdpr._subject_key(subject, kind, true);
    p  gdpr.purpose := gdpr._purpose(purpose);
    id bigint;
BEGIN
    IF p.legal_basis NOT IN ('legitimate_interests', 'public_task') THEN
        RAISE EXCEPTION 'purpose "%" rests on %: objection applies to legitimate interests and public tasks',
                        p.name, p.legal_basis
            USING ERRCODE = '22023', HINT = 'For a purpose based on consent, withdraw the consent instead.';
    END IF;
    INSERT INTO gdpr.objection (kind, subject_id, purpose, detail)
    VALUES (k.subject_kind, k.subject_key, p.name, detail) RETURNING objection_id INTO id;
    PERFORM gdpr.log_event('OBJECTION', k.subject_key, true,
        jsonb_build_object('purpose', p.name, 'objection_id', id), k.subject_kind);
    RETURN id;
END
$$;

CREATE FUNCTION gdpr.consent_check() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'gdpr_consent_check';

CREATE FUNCTION gdpr.require_consent(tbl pg_catalog.regclass, subject_column name, purpose text,
                                     kind text DEFAULT NULL)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p  gdpr.purpose := gdpr._purpose(purpose);
    k  text;
    tg name;
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'table must not be NULL' USING ERRCODE = '22004';
    END IF;
    PERFORM gdpr._check_column(tbl, subject_column);
    IF p.legal_basis <> 'consent' THEN
        RAISE EXCEPTION 'purpose "%" rests on %, not on consent', p.name, p.legal_basis USING ERRCODE = '22023';
    END IF;
    SELECT s.kind INTO k FROM gdpr.subject_kind s
     WHERE s.kind = COALESCE(require_consent.kind, (SELECT CASE WHEN count(*) = 1 THEN min(q.kind) ELSE 'default' END
                                                      FROM gdpr.subject_kind q));
    IF NOT FOUND THEN
        RAISE EXCEPTION 'subject kind "%" is not registered', COALESCE(require_consent.kind, 'default')
            USING ERRCODE = '42704';
    END IF;
    IF EXISTS (SELECT 1 FROM gdpr.consent_requirement r WHERE r.relid = tbl AND r.purpose = p.name) THEN
        RAISE EXCEPTION 'table % already requires consent for purpose "%"', gdpr._qualified(tbl), p.name
            USING ERRCODE = '42710';
    END IF;
    tg := 'gdpr_consent_' || left(md5(p.name), 12);
    EXECUTE format('CREATE TRIGGER %I BEFORE INSERT OR UPDATE OF %I ON %s FOR EACH ROW EXECUTE FUNCTION gdpr.consent_check(%L, %L, %L)',
                   tg, subject_column, tbl, k, subject_column, p.name);
    INSERT INTO gdpr.consent_requirement (relid, subject_column, purpose, kind, trigger_name)
    VALUES (tbl, subject_column, p.name, k, tg);
    PERFORM gdpr._log_map('MAP_REQUIRE_CONSENT', tbl,
        jsonb_build_object('column', subject_column, 'purpose', p.name, 'kind', k));
END
$$;

CREATE FUNCTION gdpr.add_policy_version(version text, effective_at timestamptz DEFAULT now(),
                                        url text DEFAULT NULL, body text DEFAULT NULL)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF version IS NULL OR btrim(version) = '' THEN
        RAISE EXCEPTION 'a policy version needs a name' USING ERRCODE = '22023';
    END IF;
    IF url IS NULL AND body IS NULL THEN
        RAISE EXCEPTION 'a privacy policy needs its text or a URL' USING ERRCODE = '22023';
    END IF;
    IF EXISTS (SELECT 1 FROM gdpr.privacy_policy p WHERE p.version = add_policy_version.version) THEN
        RAISE EXCEPTION 'privacy policy version "%" already exists', version USING ERRCODE = '42710',
              HINT = 'Versions are immutable once published: add a new version.';
    END IF;
    INSERT INTO gdpr.privacy_policy (version, effective_at, url, body) VALUES (version, effective_at, url, body);
    PERFORM gdpr.log_event('POLICY_PUBLISHED', NULL::text, true,
        jsonb_build_object('version', version, 'effective_at', effective_at));
END
$$;

CREATE FUNCTION public.gdpr_accept_policy(subject text, version text, kind text DEFAULT NULL) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k record := gdpr._subject_key(subject, kind, true);
BEGIN
    IF NOT EXISTS (SELECT 1 FROM gdpr.privacy_policy p WHERE p.version = gdpr_accept_policy.version) THEN
        RAISE EXCEPTION 'privacy policy version "%" does not exist', version USING ERRCODE = '42704',
              HINT = 'See SELECT version, effective_at FROM gdpr.privacy_policy.';
    END IF;
    INSERT INTO gdpr.policy_acceptance (kind, subject_id, version)
    VALUES (k.subject_kind, k.subject_key, version) ON CONFLICT DO NOTHING;
    PERFORM gdpr.log_event('POLICY_ACCEPTED', k.subject_key, true, jsonb_build_object('version', version),
                           k.subject_kind);
END
$$;

CREATE FUNCTION public.gdpr_policy_status(subject text, kind text DEFAULT NULL) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k       record := gdpr._subject_key(subject, kind, true);
    current gdpr.privacy_policy;
    last    record;
BEGIN
    SELECT * INTO current FROM gdpr.privacy_policy p WHERE p.effective_at <= now()
     ORDER BY p.effective_at DESC LIMIT 1;
    SELECT a.version, a.accepted_at INTO last FROM gdpr.policy_acceptance a JOIN gdpr.privacy_policy p USING (version)
     WHERE a.kind = k.subject_kind AND a.subject_id = k.subject_key
     ORDER BY p.effective_at DESC LIMIT 1;
    RETURN jsonb_build_object(
        'current_version', current.version,
        'accepted_version', last.version,
        'accepted_at', last.accepted_at,
        'must_accept', current.version IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM gdpr.policy_acceptance a
             WHERE a.kind = k.subject_kind AND a.subject_id = k.subject_key AND a.version = current.version));
END
$$;

-- Requests (Art. 12(3)): one month from receipt, extendable once by up to two months.
CREATE FUNCTION gdpr.open_request(subject text, "right" text, received_at timestamptz DEFAULT now(),
                                  detail jsonb DEFAULT NULL, kind text DEFAULT NULL)
    RETURNS bigint
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k  record := gdpr._subject_key(subject, kind, true);
    id bigint;
BEGIN
    IF "right" IS NULL OR "right" NOT IN ('access', 'rectification', 'erasure', 'restriction', 'portability', 'objection') THEN
        RAISE EXCEPTION 'unknown right "%"', "right" USING ERRCODE = '22023',
              HINT = 'Use access, rectification, erasure, restriction, portability or objection.';
    END IF;
    IF received_at IS NULL OR received_at > now() THEN
        RAISE EXCEPTION 'a request is received now or in the past' USING ERRCODE = '22023';
    END IF;
    INSERT INTO gdpr.request (kind, subject_id, "right", received_at, due_at, detail)
    VALUES (k.subject_kind, k.subject_key, "right", received_at, received_at + interval '1 month', detail)
    RETURNING request_id INTO id;
    PERFORM gdpr.log_event('REQUEST_RECEIVED', k.subject_key, true,
        jsonb_build_object('request_id', id, 'right', "right"), k.subject_kind);
    RETURN id;
END
$$;

CREATE FUNCTION gdpr._open_request(request_id bigint) RETURNS gdpr.request
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r gdpr.request;
BEGIN
    SELECT * INTO r FROM gdpr.request q WHERE q.request_id = _open_request.request_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'request % does not exist', request_id USING ERRCODE = '42704';
    END IF;
    IF r.status <> 'open' THEN
        RAISE EXCEPTION 'request % is already %', request_id, r.status USING ERRCODE = '55000';
    END IF;
    RETURN r;
END
$$;

CREATE FUNCTION gdpr.verify_request(request_id bigint, method text, verified_by text DEFAULT NULL) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r gdpr.request := gdpr._open_request(request_id);
BEGIN
    IF method IS NULL OR btrim(method) = '' THEN
        RAISE EXCEPTION 'say how the identity was verified' USING ERRCODE = '22023',
              HINT = 'For example ''logged-in session'' or ''ID document checked''.';
    END IF;
    UPDATE gdpr.request q SET verified_at = now(), verification_method = method,
                              verified_by = COALESCE(verify_request.verified_by, gdpr._actor())
     WHERE q.request_id = r.request_id;
    PERFORM gdpr.log_event('REQUEST_VERIFIED', r.subject_id, true,
        jsonb_build_object('request_id', r.request_id, 'method', method), r.kind);
END
$$;

CREATE FUNCTION gdpr.extend_request(request_id bigint, reason text, by interval DEFAULT '2 months') RETURNS timestamptz
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r gdpr.request := gdpr._open_request(request_id);
BEGIN
    IF r.extended_at IS NOT NULL THEN
        RAISE EXCEPTION 'request % was already extended', request_id USING ERRCODE = '55000',
              HINT = 'Art. 12(3) allows one extension of at most two further months.';
    END IF;
    IF by IS NULL OR by <= interval '0' OR by > interval '2 months' THEN
        RAISE EXCEPTION 'an extension is of at most two months' USING ERRCODE = '22023',
              HINT = 'Art. 12(3): the deadline is one month from receipt, plus at most two.';
    END IF;
    IF reason IS NULL OR btrim(reason) = '' THEN
        RAISE EXCEPTION 'an extension needs its reason, which the subject must be told' USING ERRCODE = '22023';
    END IF;
    UPDATE gdpr.request q SET due_at = q.due_at + by, extended_at = now(), extension_reason = reason
     WHERE q.request_id = r.request_id RETURNING due_at INTO r.due_at;
    PERFORM gdpr.log_event('REQUEST_EXTENDED', r.subject_id, true,
        jsonb_build_object('request_id', r.request_id, 'reason', reason, 'due_at', r.due_at), r.kind);
    RETURN r.due_at;
END
$$;

CREATE FUNCTION gdpr.close_request(request_id bigint, status text, outcome text) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r gdpr.request := gdpr._open_request(request_id);
BEGIN
    IF status IS NULL OR status NOT IN ('completed', 'rejected') THEN
        RAISE EXCEPTION 'a request closes as completed or rejected, not "%"', status USING ERRCODE = '22023';
    END IF;
    IF status = 'completed' AND r.verified_at IS NULL THEN
        RAISE EXCEPTION 'request % is not verified', request_id USING ERRCODE = '55000',
              HINT = 'Verify the requester''s identity first with gdpr.verify_request().';
    END IF;
    UPDATE gdpr.request q SET status = close_request.status, closed_at = now(), outcome = close_request.outcome
     WHERE q.request_id = r.request_id;
    PERFORM gdpr.log_event('REQUEST_' || upper(status), r.subject_id, true,
        jsonb_build_object('request_id', r.request_id, 'outcome', outcome), r.kind);
END
$$;

-- Completes a request with what gdpr_export or gdpr_erase did; checks it is about that subject.
CREATE FUNCTION gdpr._complete_request(request_id bigint, kind text, subject_key text, rights text[], outcome text)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r gdpr.request := gdpr._open_request(request_id);
BEGIN
    IF r.kind <> kind OR r.subject_id <> subject_key THEN
        RAISE EXCEPTION 'request % is about another subject', request_id USING ERRCODE = '22023';
    END IF;
    IF NOT r."right" = ANY (rights) THEN
        RAISE EXCEPTION 'request % is a request for %, not %', request_id, r."right", array_to_string(rights, ' or ')
            USING ERRCODE = '22023';
    END IF;
    PERFORM gdpr.close_request(request_id, 'completed', outcome);
END
$$;

CREATE VIEW gdpr.open_requests AS
SELECT r.request_id, r.kind, r.subject_id, r."right", r.received_at, r.due_at,
       r.verified_at IS NOT NULL AS verified, r.extended_at IS NOT NULL AS extended,
       (r.due_at::date - pg_catalog.now()::date) AS days_left,
       r.due_at < pg_catalog.now() AS overdue
  FROM gdpr.request r
 WHERE r.status = 'open'
 ORDER BY r.due_at;

-- Breaches (Art. 33, 34)
CREATE FUNCTION gdpr.record_breach(detected_at timestamptz, nature text, occurred_from timestamptz DEFAULT NULL,
                                   occurred_to timestamptz DEFAULT NULL, categories text[] DEFAULT '{}',
                                   approx_subjects int DEFAULT NULL, consequences text DEFAULT NULL,
                                   measures text DEFAULT NULL)
    RETURNS bigint
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    id bigint;
BEGIN
    IF detected_at IS NULL OR nature IS NULL OR btrim(nature) = '' THEN
        RAISE EXCEPTION 'a breach needs when it was detected and its nature' USING ERRCODE = '22023';
    END IF;
    IF occurred_from > occurred_to THEN
        RAISE EXCEPTION 'a breach cannot end before it starts' USING ERRCODE = '22023';
    END IF;
    IF approx_subjects < 0 THEN
        RAISE EXCEPTION 'the number of subjects cannot be negative' USING ERRCODE = '22023';
    END IF;
    INSERT INTO gdpr.breach (detected_at, occurred_from, occurred_to, nature, categories, approx_subjects,
                             consequences, measures)
    VALUES (detected_at, occurred_from, occurred_to, nature, COALESCE(categories, '{}'), approx_subjects,
            consequences, measures)
    RETURNING breach_id INTO id;
    PERFORM gdpr.log_event('BREACH_RECORDED', NULL::text, true, jsonb_build_object('breach_id', id));
    RETURN id;
END
$$;

CREATE FUNCTION gdpr.notify_breach(breach_id bigint, authority_at timestamptz DEFAULT NULL,
                                   subjects_at timestamptz DEFAULT NULL)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF authority_at IS NULL AND subjects_at IS NULL THEN
        RAISE EXCEPTION 'say whom was notified and when' USING ERRCODE = '22023';
    END IF;
    UPDATE gdpr.breach b SET authority_notified_at = COALESCE(notify_breach.authority_at, b.authority_notified_at),
                             subjects_notified_at = COALESCE(notify_breach.subjects_at, b.subjects_notified_at)
     WHERE b.breach_id = notify_breach.breach_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'breach % does not exist', breach_id USING ERRCODE = '42704';
    END IF;
    PERFORM gdpr.log_event('BREACH_NOTIFIED', NULL::text, true,
        jsonb_strip_nulls(jsonb_build_object('breach_id', breach_id, 'authority_at', authority_at, 'subjects_at', subjects_at)));
END
$$;

CREATE VIEW gdpr.breach_deadlines AS
SELECT b.breach_id, b.detected_at, b.nature,
       b.detected_at + interval '72 hours' AS authority_deadline,
       b.authority_notified_at,
       CASE WHEN b.authority_notified_at IS NOT NULL THEN b.authority_notified_at <= b.detected_at + interval '72 hours'
            WHEN pg_catalog.now() > b.detected_at + interval '72 hours' THEN false
       END AS deadline_met,
       CASE WHEN b.authority_notified_at IS NULL
            THEN pg_catalog.round(extract(epoch FROM b.detected_at + interval '72 hours' - pg_catalog.now()) / 3600, 1)
       END AS hours_left,
       b.subjects_notified_at
  FROM gdpr.breach b
 ORDER BY b.detected_at;

-- Whose data was touched in a window, by whom: the subjects to notify (Art. 34).
CREATE FUNCTION public.gdpr_breach_subjects(from_time timestamptz, to_time timestamptz, by_role text DEFAULT NULL,
                                            by_actor text DEFAULT NULL)
    RETURNS TABLE (subject_kind text, subject_id text, events bigint, first_event timestamptz,
                   last_event timestamptz, tables text[])
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF from_time IS NULL OR to_time IS NULL OR from_time > to_time THEN
        RAISE EXCEPTION 'give a window: from_time <= to_time' USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
    SELECT a.subject_kind::text, a.subject_id::text, count(*), min(a.event_time), max(a.event_time),
           array_agg(DISTINCT a.table_name ORDER BY a.table_name) FILTER (WHERE a.table_name IS NOT NULL)
      FROM gdpr.audit_log a
     WHERE a.event_time BETWEEN from_time AND to_time
       AND a.subject_id IS NOT NULL
       AND (by_role IS NULL OR a.session_role = by_role OR a.effective_role = by_role)
       AND (by_actor IS NULL OR a.actor = by_actor)
     GROUP BY a.subject_kind, a.subject_id
     ORDER BY a.subject_kind, a.subject_id;
END
$$;

-- Repeated failed logins from one address within a window (logged with gdpr.log_event).
CREATE FUNCTION gdpr.suspicious_logins(threshold int DEFAULT 5, within interval DEFAULT '15 minutes')
    RETURNS TABLE (client_addr inet, failures bigint, first_failure timestamptz, last_failure timestamptz,
                   subjects text[])
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF threshold IS NULL OR threshold < 1 OR within IS NULL OR within <= interval '0' THEN
        RAISE EXCEPTION 'threshold must be at least 1 and the window positive' USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
    WITH f AS (
        SELECT a.client_addr AS addr, a.event_time, a.subject_id,
               count(*) OVER (PARTITION BY a.client_addr ORDER BY a.event_time
                              RANGE BETWEEN within PRECEDING AND CURRENT ROW) AS n
          FROM gdpr.audit_log a
         WHERE a.event LIKE '%LOGIN%' AND NOT a.success AND a.client_addr IS NOT NULL
    )
    SELECT f.addr, max(f.n), min(f.event_time), max(f.event_time),
           array_agg(DISTINCT f.subject_id::text) FILTER (WHERE f.subject_id IS NOT NULL)
      FROM f GROUP BY f.addr HAVING max(f.n) >= threshold
     ORDER BY 2 DESC, 1;
END
$$;

-- Records of processing (Art. 30)
CREATE FUNCTION gdpr.add_processor(name text, service text, country text, transfer_safeguard text DEFAULT NULL,
                                   dpa_signed boolean DEFAULT false, recipients_of text[] DEFAULT '{}')
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF name IS NULL OR btrim(name) = '' OR service IS NULL OR country IS NULL THEN
        RAISE EXCEPTION 'a processor needs a name, a service and a country' USING ERRCODE = '22023';
    END IF;
    INSERT INTO gdpr.processor (name, service, country, transfer_safeguard, dpa_signed, recipients_of)
    VALUES (name, service, country, transfer_safeguard, dpa_signed, COALESCE(recipients_of, '{}'))
    ON CONFLICT ON CONSTRAINT processor_pkey DO UPDATE
       SET service = EXCLUDED.service, country = EXCLUDED.country,
           transfer_safeguard = EXCLUDED.transfer_safeguard, dpa_signed = EXCLUDED.dpa_signed,
           recipients_of = EXCLUDED.recipients_of;
    PERFORM gdpr.log_event('MAP_PROCESSOR', NULL::text, true,
        jsonb_build_object('processor', name, 'country', country, 'dpa_signed', dpa_signed));
END
$$;

-- Countries of the EU and the EEA: transfers elsewhere need a safeguard (Art. 44-49).
CREATE FUNCTION gdpr._in_eea(country text) RETURNS boolean
    LANGUAGE sql IMMUTABLE
AS $$
    SELECT upper(country) = ANY (ARRAY['AT','BE','BG','HR','CY','CZ','DK','EE','FI','FR','DE','GR','HU','IE',
        'IT','LV','LT','LU','MT','NL','PL','PT','RO','SK','SI','ES','SE','IS','LI','NO'])
$$;

CREATE FUNCTION public.gdpr_processing_record(format text DEFAULT 'json') RETURNS text
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    doc jsonb;
    md  text;
    a   jsonb;
    p   jsonb;
BEGIN
    IF format IS NULL OR format NOT IN ('json', 'markdown') THEN
        RAISE EXCEPTION 'unknown format "%"', format USING ERRCODE = '22023', HINT = 'Use json or markdown.';
    END IF;
    WITH activity AS (
        SELECT COALESCE(r.purpose, '(purpose not recorded)') AS purpose,
               (SELECT q.description FROM gdpr.purpose q WHERE q.name = r.purpose) AS description,
               COALESCE(r.legal_basis, (SELECT q.legal_basis FROM gdpr.purpose q WHERE q.name = r.purpose)) AS legal_basis,
               r.kind, gdpr._qualified(r.relid) AS table_name, r.retention, r.recipients,
               ARRAY(SELECT DISTINCT c.category FROM gdpr.column_class c WHERE c.relid = r.relid ORDER BY 1) AS categories
          FROM gdpr.registered_table r
        UNION ALL
        SELECT q.name, q.description, q.legal_basis, NULL, NULL, NULL, NULL, '{}'
          FROM gdpr.purpose q
         WHERE NOT EXISTS (SELECT 1 FROM gdpr.registered_table r WHERE r.purpose = q.name)
    ), grouped AS (
        SELECT purpose, max(description) AS description,
               array_agg(DISTINCT legal_basis) FILTER (WHERE legal_basis IS NOT NULL) AS legal_bases,
               array_agg(DISTINCT kind) FILTER (WHERE kind IS NOT NULL) AS subject_kinds,
               array_agg(DISTINCT table_name) FILTER (WHERE table_name IS NOT NULL) AS tables,
               array_agg(DISTINCT cat) FILTER (WHERE cat IS NOT NULL) AS categories,
               array_agg(DISTINCT rec) FILTER (WHERE rec IS NOT NULL) AS recipients,
               array_agg(DISTINCT retention) FILTER (WHERE retention IS NOT NULL) AS retention
          FROM activity LEFT JOIN LATERAL unnest(categories) cat ON true
                        LEFT JOIN LATERAL unnest(recipients) rec ON true
         GROUP BY purpose
    )
    SELECT jsonb_build_object(
        'controller', current_database(),
        'generated_at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
        'activities', COALESCE((SELECT jsonb_agg(jsonb_build_object(
                'purpose', g.purpose, 'description', g.description,
                'legal_bases', COALESCE(to_jsonb(g.legal_bases), '[]'),
                'categories_of_subjects', COALESCE(to_jsonb(g.subject_kinds), '[]'),
                'categories_of_data', COALESCE(to_jsonb(g.categories), '[]'),
                'tables', COALESCE(to_jsonb(g.tables), '[]'),
                'recipients', COALESCE(to_jsonb(g.recipients), '[]'),
                'processors', COALESCE((SELECT jsonb_agg(pr.name ORDER BY pr.name) FROM gdpr.processor pr
                                         WHERE g.purpose = ANY (pr.recipients_of)
                                            OR pr.name = ANY (COALESCE(g.recipients, '{}'))), '[]'),
                'retention', COALESCE(to_jsonb(g.retention), '[]')) ORDER BY g.purpose) FROM grouped g), '[]'),
        'processors', COALESCE((SELECT jsonb_agg(jsonb_build_object(
                'name', pr.name, 'service', pr.service, 'country', pr.country,
                'transfer', NOT gdpr._in_eea(pr.country),
                'transfer_safeguard', pr.transfer_safeguard, 'dpa_signed', pr.dpa_signed) ORDER BY pr.name)
              FROM gdpr.processor pr), '[]'),
        'security_measures', jsonb_build_array('audit trail of every change to personal data (gdpr.audit_log)',
                                               'erasure with keyed pseudonyms (gdpr_erase)'))
      INTO doc;
    IF format = 'json' THEN
        RETURN jsonb_pretty(doc);
    END IF;

    md := format(E'# Record of processing activities (Art. 30 GDPR)\n\nController: %s  \nGenerated: %s\n',
                 doc->>'controller', doc->>'generated_at');
    FOR a IN SELECT * FROM jsonb_array_elements(doc->'activities') LOOP
        md := md || format(E'\n## %s\n\n', a->>'purpose');
        IF a->>'description' IS NOT NULL THEN
            md := md || (a->>'description') || E'\n\n';
        END IF;
        md := md || format(E'| | |\n|---|---|\n| Legal basis | %s |\n| Categories of data subjects | %s |\n'
                           '| Categories of personal data | %s |\n| Recipients | %s |\n| Processors | %s |\n'
                           '| Retention | %s |\n| Tables | %s |\n',
            COALESCE((SELECT string_agg(x, ', ') FROM jsonb_array_elements_text(a->'legal_bases') x), 'not recorded'),
            COALESCE((SELECT string_agg(x, ', ') FROM jsonb_array_elements_text(a->'categories_of_subjects') x), '-'),
            COALESCE((SELECT string_agg(x, ', ') FROM jsonb_array_elements_text(a->'categories_of_data') x), '-'),
            COALESCE((SELECT string_agg(x, ', ') FROM jsonb_array_elements_text(a->'recipients') x), '-'),
            COALESCE((SELECT string_agg(x, ', ') FROM jsonb_array_elements_text(a->'processors') x), '-'),
            COALESCE((SELECT string_agg(x, '; ') FROM jsonb_array_elements_text(a->'retention') x), 'not recorded'),
            COALESCE((SELECT string_agg('`' || x || '`', ', ') FROM jsonb_array_elements_text(a->'tables') x), '-'));
    END LOOP;
    md := md || E'\n## Processors and transfers\n\n| Processor | Service | Country | Transfer outside the EEA | Safeguard | DPA signed |\n|---|---|---|---|---|---|\n';
    FOR p IN SELECT * FROM jsonb_array_elements(doc->'processors') LOOP
        md := md || format(E'| %s | %s | %s | %s | %s | %s |\n', p->>'name', p->>'service', p->>'country',
                           CASE WHEN (p->>'transfer')::boolean THEN 'yes' ELSE 'no' END,
                           COALESCE(p->>'transfer_safeguard', '-'),
                           CASE WHEN (p->>'dpa_signed')::boolean THEN 'yes' ELSE 'no' END);
    END LOOP;
    RETURN md;
END
$$;

-- The same for keys of type bigint and uuid: each passes its key on as text.
DO $wrappers$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['bigint', 'uuid'] LOOP
        EXECUTE format($f$CREATE FUNCTION public.gdpr_grant_consent(subject %s, purpose text, version text,
                                                                   detail jsonb DEFAULT NULL, kind text DEFAULT NULL)
            RETURNS bigint LANGUAGE sql
            AS 'SELECT public.gdpr_grant_consent(subject::text, purpose, version, detail, kind)'$f$, t);
        EXECUTE format($f$CREATE FUNCTION public.gdpr_withdraw_consent(subject %s, purpose text, kind text DEFAULT NULL)
            RETURNS void LANGUAGE sql AS 'SELECT public.gdpr_withdraw_consent(subject::text, purpose, kind)'$f$, t);
        EXECUTE format($f$CREATE FUNCTION public.gdpr_object(subject %s, purpose text, detail jsonb DEFAULT NULL,
                                                            kind text DEFAULT NULL)
            RETURNS bigint LANGUAGE sql AS 'SELECT public.gdpr_object(subject::text, purpose, detail, kind)'$f$, t);
        EXECUTE format($f$CREATE FUNCTION public.gdpr_accept_policy(subject %s, version text, kind text DEFAULT NULL)
            RETURNS void LANGUAGE sql AS 'SELECT public.gdpr_accept_policy(subject::text, version, kind)'$f$, t);
        EXECUTE format($f$CREATE FUNCTION public.gdpr_policy_status(subject %s, kind text DEFAULT NULL)
            RETURNS jsonb LANGUAGE sql STABLE AS 'SELECT public.gdpr_policy_status(subject::text, kind)'$f$, t);
        EXECUTE format($f$CREATE FUNCTION gdpr.open_request(subject %s, "right" text,
                                                           received_at timestamptz DEFAULT now(),
                                                           detail jsonb DEFAULT NULL, kind text DEFAULT NULL)
            RETURNS bigint LANGUAGE sql
            AS 'SELECT gdpr.open_request(subject::text, "right", received_at, detail, kind)'$f$, t);
    END LOOP;
END
$wrappers$;

------------------------------------------------------------------------------------------------
-- Retention (Art. 5(1)(e)): policies, the passes that enforce them, and their history
------------------------------------------------------------------------------------------------

CREATE TABLE gdpr.retention_policy (
    relid        pg_catalog.regclass PRIMARY KEY REFERENCES gdpr.registered_table ON DELETE CASCADE,
    time_column  name NOT NULL,
    keep         interval CHECK (keep > interval '0'),
    action       text NOT NULL CHECK (action IN ('delete', 'anonymize')),
    condition    text,
    created_at   timestamptz NOT NULL DEFAULT pg_catalog.now()
);

CREATE TABLE gdpr.retention_history (
    run_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    database     name NOT NULL DEFAULT pg_catalog.current_database(),
    table_name   text NOT NULL,
    deleted      bigint NOT NULL DEFAULT 0,
    anonymized   bigint NOT NULL DEFAULT 0,
    dry_run      boolean NOT NULL DEFAULT false,
    by_worker    boolean NOT NULL DEFAULT false,
    -- a worker's run it left out while the table backs off: not a failure of its own
    skipped      boolean NOT NULL DEFAULT false,
    error        text
);
CREATE INDEX retention_history_started_idx ON gdpr.retention_history (started_at);

CREATE TRIGGER check_condition BEFORE INSERT OR UPDATE OF relid, condition ON gdpr.retention_policy
    FOR EACH ROW EXECUTE FUNCTION gdpr._check_rule();
SELECT pg_catalog.pg_extension_config_dump('gdpr.retention_policy', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.retention_history', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.retention_history_run_id_seq', '');

CREATE FUNCTION gdpr._retention_batch(tbl pg_catalog.regclass, batch_size int, dry_run boolean) RETURNS bigint
    LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'gdpr_retention_batch';

CREATE FUNCTION gdpr.set_retention(tbl pg_catalog.regclass, time_column name, keep interval DEFAULT NULL,
                                   action text DEFAULT 'delete', condition text DEFAULT NULL)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t regtype;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM gdpr.registered_table r WHERE r.relid = tbl) THEN
        RAISE EXCEPTION 'table % is not registered', COALESCE(gdpr._qualified(tbl), 'NULL')
            USING ERRCODE = '42704', HINT = 'Retention applies to registered tables; register it with gdpr.register_table().';
    END IF;
    t := gdpr._check_column(tbl, time_column);
    IF t NOT IN ('date'::regtype, 'timestamp without time zone'::regtype, 'timestamp with time zone'::regtype) THEN
        RAISE EXCEPTION 'column "%" of table % has type %, not a date or timestamp', time_column, gdpr._qualified(tbl), t
            USING ERRCODE = '42804';
    END IF;
    IF keep IS NOT NULL AND keep <= interval '0' THEN
        RAISE EXCEPTION 'retention must be a positive interval' USING ERRCODE = '22023',
              HINT = 'Pass keep => NULL when the column holds each row''s own deadline.';
    END IF;
    IF action IS NULL OR action NOT IN ('delete', 'anonymize') THEN
        RAISE EXCEPTION 'invalid retention action "%"', action USING ERRCODE = '22023',
              HINT = 'Use ''delete'' or ''anonymize''.';
    END IF;
    IF action = 'anonymize' AND NOT EXISTS (SELECT 1 FROM gdpr.column_class c
                                             WHERE c.relid = tbl AND c.erase <> 'keep') THEN
        RAISE EXCEPTION 'table % has no classified column to anonymize', gdpr._qualified(tbl)
            USING ERRCODE = '55000', HINT = 'Classify its personal columns with gdpr.classify_column() first.';
    END IF;
    INSERT INTO gdpr.retention_policy (relid, time_column, keep, action, condition)
    VALUES (tbl, time_column, keep, action, condition)
    ON CONFLICT ON CONSTRAINT retention_policy_pkey DO UPDATE
       SET time_column = EXCLUDED.time_column, keep = EXCLUDED.keep, action = EXCLUDED.action,
           condition = EXCLUDED.condition;
    PERFORM gdpr._log_map('MAP_RETENTION', tbl, jsonb_strip_nulls(jsonb_build_object(
        'time_column', time_column, 'keep', keep::text, 'action', action, 'condition', condition)));
END
$$;

CREATE FUNCTION gdpr.drop_retention(tbl pg_catalog.regclass) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM gdpr.retention_policy p WHERE p.relid = tbl;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % has no retention policy', COALESCE(gdpr._qualified(tbl), 'NULL')
            USING ERRCODE = '42704';
    END IF;
    PERFORM gdpr._log_map('MAP_RETENTION_DROPPED', tbl, NULL);
END
$$;

-- Monthly partitions of the trail by retention_until, from the month events written now expire
-- in to `ahead` months past it.  A month the default partition already holds events of is left
-- to the default partition: creating its partition would have to move them.  When the locks of a
-- month are not granted within lock_timeout (1s when the caller has none), it and the months
-- after it are left for the next call: while a month is created, readers of the trail queue
-- behind it.
CREATE FUNCTION gdpr.create_audit_partitions(ahead int DEFAULT 3) RETURNS int
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    first timestamptz := date_trunc('month', now() + current_setting('gdpr.audit_retention')::interval);
    m     timestamptz;
    name  text;
    n     int := 0;
    saved text := current_setting('lock_timeout');
BEGIN
    IF saved = '0' THEN
        PERFORM set_config('lock_timeout', '1s', true);
    END IF;
    FOR i IN 0 .. GREATEST(ahead, 0) LOOP
        m := first + make_interval(months => i);
        name := 'audit_log_' || to_char(m, '"y"YYYY"m"MM');
        BEGIN
            CONTINUE WHEN to_regclass('gdpr.' || name) IS NOT NULL;
            CONTINUE WHEN EXISTS (SELECT 1 FROM gdpr.audit_log_default d
                                   WHERE d.retention_until >= m AND d.retention_until < m + interval '1 month');
            IF i = 0 THEN
                -- Events are being written into this month now.  Only the ACCESS EXCLUSIVE lock
                -- of PARTITION OF keeps them out while it is created: a writer that routed an
                -- event to the default partition before a concurrent ATTACH would fail.
                EXECUTE format('CREATE TABLE gdpr.%I PARTITION OF gdpr.audit_log FOR VALUES FROM (%L) TO (%L)',
                               name, m, m + interval '1 month');
                PERFORM gdpr._index_audit_partition(('gdpr.' || quote_ident(name))::regclass);
            ELSE
                -- Built apart, then attached: ATTACH takes SHARE UPDATE EXCLUSIVE on the trail,
                -- which audited writes do not queue behind, where PARTITION OF takes ACCESS
                -- EXCLUSIVE every month.
                EXECUTE format('CREATE TABLE gdpr.%I (LIKE gdpr.audit_log INCLUDING DEFAULTS)', name);
                PERFORM gdpr._index_audit_partition(('gdpr.' || quote_ident(name))::regclass);
                EXECUTE format('ALTER TABLE gdpr.audit_log ATTACH PARTITION gdpr.%I FOR VALUES FROM (%L) TO (%L)',
                               name, m, m + interval '1 month');
            END IF;
            n := n + 1;
        EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
            EXIT;
        END;
    END LOOP;
    PERFORM set_config('lock_timeout', saved, true);
    RETURN n;
END
$$;

-- Removes expired events: whole partitions whose month is over, then expired events of the
-- default partition, a batch at a time.  Returns the events removed (for dropped partitions,
-- the planner's row estimate: counting them would cost what dropping saves).
CREATE FUNCTION gdpr.purge_audit_log(batch_size int DEFAULT 10000) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p     record;
    n     bigint := 0;
    gone  bigint;
BEGIN
    FOR p IN SELECT c.oid::regclass AS part, c.reltuples,
                    (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']*)''\)'))[1]::timestamptz AS upper_bound
               FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
              WHERE i.inhparent = 'gdpr.audit_log'::regclass AND c.relispartition
                AND c.oid <> 'gdpr.audit_log_default'::regclass LOOP
        CONTINUE WHEN p.upper_bound IS NULL OR p.upper_bound > now();
        EXECUTE format('DROP TABLE %s', p.part);
        n := n + GREATEST(p.reltuples, 0)::bigint;
    END LOOP;
    gone := gdpr._purge_audit_rows(batch_size);
    RETURN n + gone;
END
$$;

-- One full pass, in the caller's transaction: every policy, the audit trail, due erasures.  What
-- the background worker does in small transactions, on demand and without preloading.
CREATE FUNCTION public.gdpr_enforce_retention(dry_run boolean DEFAULT false, batch_size int DEFAULT 10000)
    RETURNS TABLE (table_name text, deleted bigint, anonymized bigint, error text)
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p       gdpr.retention_policy;
    started timestamptz := clock_timestamp();
    n       bigint;
    total   bigint;
BEGIN
    IF dry_run IS NULL OR batch_size IS NULL OR batch_size < 1 THEN
        RAISE EXCEPTION 'dry_run must be given and batch_size be at least 1' USING ERRCODE = '22023';
    END IF;
    FOR p IN SELECT * FROM gdpr.retention_policy ORDER BY gdpr._qualified(relid) LOOP
        table_name := gdpr._qualified(p.relid);
        total := 0;
        error := NULL;
        BEGIN
            IF dry_run THEN
                total := gdpr._retention_batch(p.relid, batch_size, true);
            ELSE
                LOOP
                    n := gdpr._retention_batch(p.relid, batch_size, false);
                    total := total + n;
                    EXIT WHEN n < batch_size;
                END LOOP;
            END IF;
        EXCEPTION WHEN OTHERS THEN
            error := SQLERRM;
        END;
        deleted := CASE WHEN p.action = 'delete' THEN total ELSE 0 END;
        anonymized := CASE WHEN p.action = 'anonymize' THEN total ELSE 0 END;
        INSERT INTO gdpr.retention_history (started_at, table_name, deleted, anonymized, dry_run, error)
        VALUES (started, table_name, deleted, anonymized, dry_run, error);
        RETURN NEXT;
    END LOOP;
    IF NOT dry_run THEN
        table_name := 'gdpr.audit_log';
        deleted := 0;
        -- before the purge, as the worker does: the purge holds the sealers' lock to the end of
        -- the transaction, which an erasure writing into the trail may be waiting to share
        PERFORM gdpr.create_audit_partitions();
        LOOP
            n := gdpr.purge_audit_log(batch_size);
            deleted := deleted + n;
            EXIT WHEN n < batch_size;
        END LOOP;
        anonymized := 0;
        error := NULL;
        INSERT INTO gdpr.retention_history (started_at, table_name, deleted) VALUES (started, table_name, deleted);
        RETURN NEXT;
        table_name := 'gdpr.erasure_request';
        SELECT count(*) FILTER (WHERE r.status = 'done'), count(*) FILTER (WHERE r.status = 'failed')
          INTO deleted, n FROM gdpr.run_due_erasures() r;
        anonymized := 0;
        error := CASE WHEN n > 0 THEN format('%s erasure(s) failed: see gdpr.erasure_request', n) END;
        RETURN NEXT;
        DELETE FROM gdpr.retention_history h WHERE h.started_at < now() - interval '90 days';
    END IF;
END
$$;

------------------------------------------------------------------------------------------------
-- Privileges
------------------------------------------------------------------------------------------------

-- The map is metadata, like the catalogs: anyone may read it.  Only gdpr_admin changes it.
REVOKE ALL ON ALL TABLES IN SCHEMA gdpr FROM PUBLIC;
GRANT SELECT ON gdpr.subject_kind, gdpr.registered_table, gdpr.subject_path, gdpr.path_step,
                gdpr.column_class, gdpr.derived_view, gdpr.map, gdpr.coverage_gaps, gdpr._fk_edge TO PUBLIC;
GRANT INSERT, UPDATE, DELETE ON gdpr.subject_kind, gdpr.registered_table, gdpr.subject_path,
                               gdpr.path_step, gdpr.column_class, gdpr.derived_view TO gdpr_admin;

-- The audit trail is written only by the extension's C code, which switches to the owner of the
-- table for the insert; applications read it only through gdpr_auditor.
GRANT SELECT ON gdpr.audit_log, gdpr.audit_seal, gdpr.audit_checkpoint, gdpr.audit_seal_state TO gdpr_auditor;

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA gdpr FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION public.gdpr_export(text, text, boolean, bigint), public.gdpr_export(bigint, text, boolean, bigint),
                           public.gdpr_export(uuid, text, boolean, bigint),
                           public.gdpr_export_rows(text, text, boolean),
                           public.gdpr_export_rows(bigint, text, boolean),
                           public.gdpr_export_rows(uuid, text, boolean)
    FROM PUBLIC;
-- Exports reveal everything about a person and their history: gdpr_admin decides who runs them.
REVOKE EXECUTE ON FUNCTION public.gdpr_enforce_retention(boolean, int),
                           public.gdpr_grant_consent(text, text, text, jsonb, text),
                           public.gdpr_grant_consent(bigint, text, text, jsonb, text),
                           public.gdpr_grant_consent(uuid, text, text, jsonb, text),
                           public.gdpr_withdraw_consent(text, text, text),
                           public.gdpr_withdraw_consent(bigint, text, text),
                           public.gdpr_withdraw_consent(uuid, text, text),
                           public.gdpr_object(text, text, jsonb, text), public.gdpr_object(bigint, text, jsonb, text),
                           public.gdpr_object(uuid, text, jsonb, text),
                           public.gdpr_accept_policy(text, text, text), public.gdpr_accept_policy(bigint, text, text),
                           public.gdpr_accept_policy(uuid, text, text),
                           public.gdpr_policy_status(text, text), public.gdpr_policy_status(bigint, text),
                           public.gdpr_policy_status(uuid, text),
                           public.gdpr_breach_subjects(timestamptz, timestamptz, text, text)
    FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION public.gdpr_erase(text, boolean, text, bigint), public.gdpr_erase(bigint, boolean, text, bigint),
                           public.gdpr_erase(uuid, boolean, text, bigint), public.gdpr_can_erase(text, text),
                           public.gdpr_can_erase(bigint, text), public.gdpr_can_erase(uuid, text),
                           public.gdpr_restrict(text, text, text), public.gdpr_unrestrict(text, text),
                           public.gdpr_request_erasure(text, interval, text),
                           public.gdpr_cancel_erasure(text, text),
                           public.gdpr_restrict(bigint, text, text), public.gdpr_unrestrict(bigint, text),
                           public.gdpr_request_erasure(bigint, interval, text),
                           public.gdpr_cancel_erasure(bigint, text),
                           public.gdpr_restrict(uuid, text, text), public.gdpr_unrestrict(uuid, text),
                           public.gdpr_request_erasure(uuid, interval, text),
                           public.gdpr_cancel_erasure(uuid, text)
    FROM PUBLIC;
REVOKE ALL ON gdpr.secret FROM PUBLIC;
-- Everyone may see which consents are active (as gdpr_has_consent tells), not from where or with
-- which detail.
GRANT SELECT (kind, subject_id, purpose, withdrawn_at) ON gdpr.consent TO PUBLIC;
GRANT SELECT ON gdpr.active_consent TO gdpr_admin, gdpr_auditor;
GRANT SELECT ON gdpr.consent, gdpr.objection, gdpr.policy_acceptance, gdpr.request, gdpr.breach,
                gdpr.open_requests, gdpr.breach_deadlines TO gdpr_admin, gdpr_auditor;
GRANT SELECT ON gdpr.purpose, gdpr.privacy_policy, gdpr.processor, gdpr.consent_requirement TO PUBLIC;
GRANT EXECUTE ON FUNCTION public.gdpr_has_consent(text, text, text), public.gdpr_has_consent(bigint, text, text),
                          public.gdpr_has_consent(uuid, text, text), public.gdpr_processing_record(text),
                          gdpr._in_eea(text), gdpr.consent_check()
    TO PUBLIC;
-- Which tables have holds, and their conditions, are no secret (retention batches run as the
-- table's owner read them); the reason (a litigation, a tax audit) is for gdpr_admin.
GRANT SELECT (hold_id, relid, condition, created_at) ON gdpr.legal_hold TO PUBLIC;
GRANT SELECT ON gdpr.legal_hold TO gdpr_admin;
GRANT INSERT, DELETE ON gdpr.legal_hold TO gdpr_admin;
GRANT SELECT, INSERT, UPDATE, DELETE ON gdpr.restriction, gdpr.erasure_request TO gdpr_admin;
-- Which subjects are restricted is no secret from the application (its writes are refused with
-- GD301); retention batches, run as the table's owner, read it to leave restricted rows alone.
GRANT SELECT (kind, subject_id, source) ON gdpr.restriction TO PUBLIC;
GRANT SELECT ON gdpr.erasure TO gdpr_admin, gdpr_auditor;
GRANT EXECUTE ON FUNCTION public.gdpr_erase(text, boolean, text, bigint), public.gdpr_erase(bigint, boolean, text, bigint),
                          public.gdpr_erase(uuid, boolean, text, bigint), public.gdpr_can_erase(text, text),
                          public.gdpr_can_erase(bigint, text), public.gdpr_can_erase(uuid, text),
                          public.gdpr_restrict(text, text, text), public.gdpr_unrestrict(text, text),
                          public.gdpr_request_erasure(text, interval, text),
                          public.gdpr_cancel_erasure(text, text),
                          public.gdpr_restrict(bigint, text, text), public.gdpr_unrestrict(bigint, text),
                          public.gdpr_request_erasure(bigint, interval, text),
                          public.gdpr_cancel_erasure(bigint, text),
                          public.gdpr_restrict(uuid, text, text), public.gdpr_unrestrict(uuid, text),
                          public.gdpr_request_erasure(uuid, interval, text),
                          public.gdpr_cancel_erasure(uuid, text),
                          gdpr.run_due_erasures(name), gdpr.add_legal_hold(pg_catalog.regclass, text, text),
                          gdpr.drop_legal_hold(int), gdpr._check_condition(pg_catalog.regclass, text),
                          gdpr._pseudonym(text), gdpr._subject_key(text, text, boolean),
                          gdpr.add_purpose(text, text, text), gdpr._purpose(text), gdpr._actor(),
                          gdpr._check_legal_basis(text),
                          public.gdpr_grant_consent(text, text, text, jsonb, text),
                          public.gdpr_grant_consent(bigint, text, text, jsonb, text),
                          public.gdpr_grant_consent(uuid, text, text, jsonb, text),
                          public.gdpr_withdraw_consent(text, text, text),
                          public.gdpr_withdraw_consent(bigint, text, text),
                          public.gdpr_withdraw_consent(uuid, text, text),
                          public.gdpr_object(text, text, jsonb, text), public.gdpr_object(bigint, text, jsonb, text),
                          public.gdpr_object(uuid, text, jsonb, text),
                          gdpr.require_consent(pg_catalog.regclass, name, text, text),
                          gdpr.add_policy_version(text, timestamptz, text, text),
                          public.gdpr_accept_policy(text, text, text), public.gdpr_accept_policy(bigint, text, text),
                          public.gdpr_accept_policy(uuid, text, text),
                          public.gdpr_policy_status(text, text), public.gdpr_policy_status(bigint, text),
                          public.gdpr_policy_status(uuid, text),
                          gdpr.open_request(text, text, timestamptz, jsonb, text),
                          gdpr.open_request(bigint, text, timestamptz, jsonb, text),
                          gdpr.open_request(uuid, text, timestamptz, jsonb, text),
                          gdpr._open_request(bigint), gdpr.verify_request(bigint, text, text),
                          gdpr.extend_request(bigint, text, interval), gdpr.close_request(bigint, text, text),
                          gdpr._complete_request(bigint, text, text, text[], text),
                          gdpr.record_breach(timestamptz, text, timestamptz, timestamptz, text[], int, text, text),
                          gdpr.notify_breach(bigint, timestamptz, timestamptz),
                          public.gdpr_breach_subjects(timestamptz, timestamptz, text, text),
                          gdpr.suspicious_logins(int, interval),
                          gdpr.add_processor(text, text, text, text, boolean, text[]),
                          gdpr.set_retention(pg_catalog.regclass, name, interval, text, text),
                          gdpr.drop_retention(pg_catalog.regclass),
                          gdpr._retention_batch(pg_catalog.regclass, int, boolean),
                          gdpr.create_audit_partitions(int), gdpr.purge_audit_log(int),
                          gdpr.seal_audit(int),
                          public.gdpr_enforce_retention(boolean, int)
    TO gdpr_admin;
GRANT SELECT ON gdpr.retention_policy TO PUBLIC;
GRANT INSERT, UPDATE, DELETE ON gdpr.retention_policy TO gdpr_admin;
GRANT SELECT ON gdpr.retention_history TO gdpr_admin, gdpr_auditor;
GRANT INSERT, DELETE ON gdpr.retention_history TO gdpr_admin;
GRANT EXECUTE ON FUNCTION public.gdpr_export(text, text, boolean, bigint), public.gdpr_export(bigint, text, boolean, bigint),
                          public.gdpr_export(uuid, text, boolean, bigint),
                          public.gdpr_export_rows(text, text, boolean),
                          public.gdpr_export_rows(bigint, text, boolean),
                          public.gdpr_export_rows(uuid, text, boolean),
                          gdpr.export_plan(text, text), gdpr._export_sql(pg_catalog.regclass),
                          gdpr._has_index(pg_catalog.regclass, name[])
    TO gdpr_admin;
-- What every role needs:
-- * log_event: applications of any role record what the database cannot see (logins, page
--   views), and the event triggers record DDL as the role that ran it.  Each event is bounded
--   (gdpr.max_event_detail, 1 kB names): a role can add events, not fill the disk with one.
-- * audit_row and audit_truncate: CREATE TABLE ... PARTITION OF clones the triggers of a
--   registered table, which checks EXECUTE for whoever creates the partition.  Both refuse a
--   table outside the map, and run nothing of the caller's with more rights than it has.
-- * what the event triggers call as the role that ran the DDL: _map_changed (only for a table the
--   caller owns), _attach_truncate (creates triggers as the caller), _forget_dropped (works only
--   inside a sql_drop event trigger), and read-only helpers over the public map.
-- The event trigger functions themselves need no EXECUTE: PostgreSQL does not check it for them.
GRANT EXECUTE ON FUNCTION gdpr.log_event(text, text, boolean, jsonb, text, text),
                          gdpr.log_event(text, bigint, boolean, jsonb, text, text),
                          gdpr.log_event(text, uuid, boolean, jsonb, text, text),
                          gdpr.audit_row(), gdpr.audit_truncate(),
                          gdpr._qualified(pg_catalog.regclass),
                          gdpr._path_text(pg_catalog.regclass, jsonb),
                          gdpr._registered_root(oid), gdpr._grant_targets(pg_ddl_command),
                          gdpr._map_changed(pg_catalog.regclass),
                          gdpr._attach_truncate(pg_catalog.regclass), gdpr._forget_dropped()
    TO PUBLIC;
GRANT EXECUTE ON FUNCTION gdpr.register_subject(pg_catalog.regclass, name, text, text),
                          gdpr.register_table(pg_catalog.regclass, name, text, text, text[], text),
                          gdpr.add_path(pg_catalog.regclass, text, text[], name, text, name[], text),
                          gdpr._check_path_condition(pg_catalog.regclass, text),
                          gdpr.drop_path(pg_catalog.regclass, text),
                          gdpr.classify_column(pg_catalog.regclass, name, text, text),
                          gdpr.register_derived(pg_catalog.regclass),
                          gdpr.unregister_derived(pg_catalog.regclass),
                          gdpr.describe_table(pg_catalog.regclass, text, text, text, text[], boolean),
                          gdpr.unregister_table(pg_catalog.regclass),
                          gdpr._check_table(pg_catalog.regclass),
                          gdpr._check_column(pg_catalog.regclass, name),
                          gdpr._check_on_erase(text), gdpr._attach(pg_catalog.regclass),
                          gdpr._detach(pg_catalog.regclass),
                          gdpr._insert_path(pg_catalog.regclass, text, text, name, jsonb, name[], text),
                          gdpr._log_map(text, pg_catalog.regclass, jsonb),
                          gdpr._resolve_path(pg_catalog.regclass, text, text[]),
                          gdpr._shortest_paths(pg_catalog.regclass, pg_catalog.regclass, oid[]),
                          gdpr._default_erase(pg_catalog.regclass, name, text),
                          gdpr._forget(oid, text, text)
    TO gdpr_admin;
-- Verification and digests read the whole trail: auditors and gdpr_admin.
REVOKE EXECUTE ON FUNCTION public.gdpr_verify_audit(jsonb), public.gdpr_audit_digest() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.gdpr_verify_audit(jsonb), public.gdpr_audit_digest()
    TO gdpr_admin, gdpr_auditor;
