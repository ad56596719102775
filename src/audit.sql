------------------------------------------------------------------------------------------------
-- The audit trail (audit.c)
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
    related_subject_ids  text[] COLLATE "C",
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
-- A large read (reads.c) carries thousands of keys: compressed with lz4 where the server has it,
-- at a fraction of pglz's cost.  Partitions made later take it from the trail (PARTITION OF, LIKE
-- ... INCLUDING COMPRESSION); the default partition, made already, is set too.
DO $$
BEGIN
    ALTER TABLE gdpr.audit_log ALTER COLUMN related_subject_ids SET COMPRESSION lz4,
                               ALTER COLUMN detail SET COMPRESSION lz4;
    ALTER TABLE gdpr.audit_log_default ALTER COLUMN related_subject_ids SET COMPRESSION lz4,
                                       ALTER COLUMN detail SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    NULL;
END
$$;

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
    -- bulk reads (reads.c) name no one: each counts for everyone of its kind
    EXECUTE format('CREATE INDEX ON %s (subject_kind, event_time) WHERE event = ''READ'' AND related_subject_ids IS NULL', part);
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

-- The row and TRUNCATE triggers gdpr.register_table attaches, and the events applications write.
CREATE FUNCTION gdpr.audit_row() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'gdpr_audit_row';
CREATE FUNCTION gdpr.audit_truncate() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'gdpr_audit_truncate';

CREATE FUNCTION gdpr.log_event(event text, subject text DEFAULT NULL, success boolean DEFAULT true,
                               detail jsonb DEFAULT NULL, kind text DEFAULT NULL,
                               table_name text DEFAULT NULL)
    RETURNS bigint LANGUAGE c CALLED ON NULL INPUT VOLATILE
    AS 'MODULE_PATHNAME', 'gdpr_log_event';
-- The extension's own events, from its SQL functions (not callable by PUBLIC), and the findings
-- of its event triggers (refused outside one).  gdpr.log_event refuses their names.
CREATE FUNCTION gdpr._log_event(event text, subject text DEFAULT NULL, success boolean DEFAULT true,
                                detail jsonb DEFAULT NULL, kind text DEFAULT NULL,
                                table_name text DEFAULT NULL)
    RETURNS bigint LANGUAGE c CALLED ON NULL INPUT VOLATILE
    AS 'MODULE_PATHNAME', 'gdpr_log_system_event';
CREATE FUNCTION gdpr._log_ddl_event(event text, detail jsonb, kind text, table_name text)
    RETURNS bigint LANGUAGE c CALLED ON NULL INPUT VOLATILE
    AS 'MODULE_PATHNAME', 'gdpr_log_ddl_event';
-- Whether the current role may switch capture off: a superuser who set gdpr.allow_capture_off.
-- In C, so the library is loaded and the setting is the real one, never a stand-in value any role
-- could have set before.
CREATE FUNCTION gdpr._capture_off_allowed() RETURNS boolean
    LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'gdpr_capture_off_allowed';
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

-- The trail is data, not a definition: pg_dump must carry it.
SELECT pg_catalog.pg_extension_config_dump('gdpr.audit_log_default', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.audit_log_event_id_seq', '');
