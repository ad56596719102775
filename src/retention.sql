------------------------------------------------------------------------------------------------
-- Retention (Art. 5(1)(e)): policies, the passes that enforce them, and their history
------------------------------------------------------------------------------------------------

CREATE TABLE gdpr.retention_policy (
    relid        pg_catalog.regclass PRIMARY KEY REFERENCES gdpr.registered_table ON DELETE CASCADE,
    time_column  name NOT NULL,
    keep         interval CHECK (keep > interval '0'),
    action       text NOT NULL CHECK (action IN ('delete', 'anonymize')),
    condition    text,
    created_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- Anonymizing policies: every row whose time was before this was anonymized (or left out by
    -- a hold, a restriction or the condition) when swept_at's sweep or a later one completed;
    -- a pass looks at later rows only, and at every row again once a day (see retention.c).
    -- Forgotten whenever what left a row out can change: a hold or restriction lifted, the
    -- policy, the table's classification or its paths changed.  Each such change moves
    -- progress_epoch, so that a pass that began before it records no progress.
    anonymized_through  timestamptz,
    swept_at            timestamptz,
    progress_epoch      bigint NOT NULL DEFAULT 0
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

-- The progress of an anonymizing policy no longer says which rows are done once the policy, the
-- table's classification or paths, a hold or a restriction changes: the next pass looks at every
-- row, and a pass under way records no progress.  Only the passes write the mark (gdpr_admin may
-- update a policy's other columns only).  It runs as the extension's owner: whoever lifts a hold
-- or a restriction may not write policies.
CREATE FUNCTION gdpr._forget_policy_progress() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_TABLE_NAME = 'retention_policy' THEN
        IF (NEW.relid, NEW.time_column, NEW.keep, NEW.action, NEW.condition)
           IS DISTINCT FROM (OLD.relid, OLD.time_column, OLD.keep, OLD.action, OLD.condition) THEN
            NEW.anonymized_through := NULL;
            NEW.progress_epoch := OLD.progress_epoch + 1;
        END IF;
        RETURN NEW;
    ELSIF TG_OP = 'TRUNCATE' THEN
        UPDATE gdpr.retention_policy SET anonymized_through = NULL, progress_epoch = progress_epoch + 1;
    ELSIF TG_TABLE_NAME = 'restriction' THEN
        -- retention leaves out the subjects restricted by hand only
        IF OLD.source = 'manual' THEN
            UPDATE gdpr.retention_policy p SET anonymized_through = NULL, progress_epoch = progress_epoch + 1
              FROM gdpr.registered_table r
             WHERE r.relid = p.relid AND r.kind = OLD.kind;
        END IF;
    ELSE
        UPDATE gdpr.retention_policy SET anonymized_through = NULL, progress_epoch = progress_epoch + 1
         WHERE relid IN (OLD.relid, NEW.relid);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER forget_progress BEFORE UPDATE ON gdpr.retention_policy
    FOR EACH ROW EXECUTE FUNCTION gdpr._forget_policy_progress();
CREATE TRIGGER forget_policy_progress AFTER UPDATE OR DELETE ON gdpr.legal_hold
    FOR EACH ROW EXECUTE FUNCTION gdpr._forget_policy_progress();
CREATE TRIGGER forget_policy_progress AFTER UPDATE OR DELETE ON gdpr.restriction
    FOR EACH ROW EXECUTE FUNCTION gdpr._forget_policy_progress();
CREATE TRIGGER forget_policy_progress AFTER INSERT OR UPDATE OR DELETE ON gdpr.column_class
    FOR EACH ROW EXECUTE FUNCTION gdpr._forget_policy_progress();
CREATE TRIGGER forget_policy_progress AFTER INSERT OR UPDATE OR DELETE ON gdpr.subject_path
    FOR EACH ROW EXECUTE FUNCTION gdpr._forget_policy_progress();
CREATE TRIGGER forget_policy_progress AFTER UPDATE ON gdpr.registered_table
    FOR EACH ROW EXECUTE FUNCTION gdpr._forget_policy_progress();
CREATE TRIGGER forget_all_policy_progress AFTER TRUNCATE ON gdpr.legal_hold
    FOR EACH STATEMENT EXECUTE FUNCTION gdpr._forget_policy_progress();
CREATE TRIGGER forget_all_policy_progress AFTER TRUNCATE ON gdpr.restriction
    FOR EACH STATEMENT EXECUTE FUNCTION gdpr._forget_policy_progress();

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
    IF gdpr._citus_node() = 'worker' THEN
        RAISE EXCEPTION 'set_retention runs on the coordinator of a Citus cluster, not on a worker'
            USING ERRCODE = '0A000', HINT = 'A worker''s map is the coordinator''s: set the policy there.';
    END IF;
    -- each node purges its own shards (gdpr._retention_targets); the copies of a reference or
    -- Citus local table are changed together, through the coordinator, by key (retention.c)
    IF action = 'anonymize' AND gdpr._citus_copied(tbl) THEN
        RAISE EXCEPTION 'retention cannot anonymize Citus reference or local tables: % is one', gdpr._qualified(tbl)
            USING ERRCODE = '0A000',
                  HINT = 'Purge its rows (action => ''delete''), or distribute the table (see README, "Scaling out").';
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
    PERFORM gdpr._map_changed(tbl);		-- on a Citus coordinator, the policy reaches every node
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
    PERFORM gdpr._map_changed(tbl);
END
$$;

-- Monthly partitions of the trail by retention_until, from the month events written now expire
-- in to `ahead` months past it.  Events of a month the default partition already holds (those
-- written before the month had its partition) move into it, under the default partition's lock.
-- When the locks of a month are not granted within lock_timeout (1s when the caller has none), it
-- and the months after it are left for the next call: while a month is created, readers of the
-- trail queue behind it.
CREATE FUNCTION gdpr._move_default_events(part pg_catalog.regclass, lo timestamptz, hi timestamptz)
    RETURNS bigint LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'gdpr_move_default_events';

CREATE FUNCTION gdpr.create_audit_partitions(ahead int DEFAULT 3) RETURNS int
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    -- months begin at the same instant whoever asks: bounds that overlap would stop the worker
    SET TimeZone = 'UTC'
AS $$
DECLARE
    first timestamptz := date_trunc('month', now() + COALESCE(current_setting('gdpr.audit_retention', true), '7 years')::interval);
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
            IF EXISTS (SELECT 1 FROM gdpr.audit_log_default d
                        WHERE d.retention_until >= m AND d.retention_until < m + interval '1 month') THEN
                -- Writers wait while the month's events move (once, for the events written before
                -- its partition): none may route one to the default partition meanwhile.
                LOCK TABLE gdpr.audit_log IN ACCESS EXCLUSIVE MODE;
                EXECUTE format('CREATE TABLE gdpr.%I (LIKE gdpr.audit_log INCLUDING DEFAULTS INCLUDING COMPRESSION)', name);
                PERFORM gdpr._move_default_events(('gdpr.' || quote_ident(name))::regclass, m, m + interval '1 month');
                PERFORM gdpr._index_audit_partition(('gdpr.' || quote_ident(name))::regclass);
                EXECUTE format('ALTER TABLE gdpr.audit_log ATTACH PARTITION gdpr.%I FOR VALUES FROM (%L) TO (%L)',
                               name, m, m + interval '1 month');
            ELSIF i = 0 THEN
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
                EXECUTE format('CREATE TABLE gdpr.%I (LIKE gdpr.audit_log INCLUDING DEFAULTS INCLUDING COMPRESSION)', name);
                PERFORM gdpr._index_audit_partition(('gdpr.' || quote_ident(name))::regclass);
                EXECUTE format('ALTER TABLE gdpr.audit_log ATTACH PARTITION gdpr.%I FOR VALUES FROM (%L) TO (%L)',
                               name, m, m + interval '1 month');
            END IF;
            n := n + 1;
        EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
            EXIT;
        WHEN duplicate_table OR unique_violation THEN
            CONTINUE;			-- another session (the worker, a registration) made it just now
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
    p       record;
    started timestamptz := clock_timestamp();
    n       bigint;
    total   bigint;
    copies_purged boolean := false;
BEGIN
    IF dry_run IS NULL OR batch_size IS NULL OR batch_size < 1 THEN
        RAISE EXCEPTION 'dry_run must be given and batch_size be at least 1' USING ERRCODE = '22023';
    END IF;
    -- a distributed table's policy works on the shards this node holds, each on its own
    FOR p IN SELECT r.action, t AS target
               FROM gdpr.retention_policy r, pg_catalog.unnest(gdpr._retention_targets(r.relid)) t
              ORDER BY t::text LOOP
        -- a shard by its own name (Citus hides shards from catalog queries such as _qualified's)
        table_name := p.target::text;
        total := 0;
        error := NULL;
        BEGIN
            IF dry_run THEN
                total := gdpr._retention_batch(p.target, batch_size, true);
            ELSE
                LOOP
                    n := gdpr._retention_batch(p.target, batch_size, false);
                    total := total + n;
                    EXIT WHEN n < batch_size;
                END LOOP;
            END IF;
        EXCEPTION WHEN OTHERS THEN
            error := SQLERRM;
        END;
        deleted := CASE WHEN p.action = 'delete' THEN total ELSE 0 END;
        anonymized := CASE WHEN p.action = 'anonymize' THEN total ELSE 0 END;
        copies_purged := copies_purged OR (NOT dry_run AND total > 0 AND gdpr._citus_copied(p.target));
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
        anonymized := 0;
        IF copies_purged THEN
            -- Citus lets one role only write the reference tables of a transaction: the purge's
            -- (the tables' owners) and the erasures' signals (the caller) cannot share one
            deleted := 0;
            error := 'due erasures left to a transaction of their own: this one purged a Citus reference or local table; run gdpr.run_due_erasures()';
        ELSE
            SELECT count(*) FILTER (WHERE r.status = 'done'), count(*) FILTER (WHERE r.status = 'failed')
              INTO deleted, n FROM gdpr.run_due_erasures() r;
            error := CASE WHEN n > 0 THEN format('%s erasure(s) failed: see gdpr.erasure_request', n) END;
        END IF;
        RETURN NEXT;
        DELETE FROM gdpr.retention_history h WHERE h.started_at < now() - interval '90 days';
    END IF;
END
$$;
