------------------------------------------------------------------------------------------------
-- Event triggers: the map follows the schema, and DDL on personal data is recorded (ddl.c)
------------------------------------------------------------------------------------------------

-- Tells every backend that the map of a table (and of its partitions) changed, so cached audit
-- plans are rebuilt.
CREATE FUNCTION gdpr._map_changed(tbl pg_catalog.regclass) RETURNS void
    LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'gdpr_map_changed';

-- Whether a command only makes the audit triggers fire ALWAYS (the extension's own doing).
CREATE FUNCTION gdpr._enables_capture(cmd pg_ddl_command) RETURNS boolean
    LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'gdpr_enables_capture';

-- The tables a GRANT or REVOKE names; pg_event_trigger_ddl_commands() gives no object for them.
CREATE FUNCTION gdpr._grant_targets(cmd pg_ddl_command) RETURNS oid[]
    LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'gdpr_grant_targets';

CREATE FUNCTION gdpr._registered_root(rel oid) RETURNS pg_catalog.regclass
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.relid FROM gdpr.registered_table r
     WHERE r.relid::oid = COALESCE(pg_catalog.pg_partition_root(rel), rel)
$$;

CREATE FUNCTION gdpr._on_ddl_command_end(tag text) RETURNS void
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
                    PERFORM gdpr._log_ddl_event('DDL',
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
        CONTINUE WHEN t IS NULL OR gdpr._enables_capture(r.command);
        reg := gdpr._registered_root(t);
        IF reg IS NOT NULL THEN
            PERFORM gdpr._log_ddl_event('DDL',
                pg_catalog.jsonb_build_object('command', r.command_tag, 'object_type', r.object_type,
                                              'object', r.object_identity),
                NULL, gdpr._qualified(reg));
            PERFORM gdpr._map_changed(reg);
            -- Only a table created as a partition of a registered one: a restore from pg_dump
            -- creates partitions standalone and brings the triggers itself.
            PERFORM gdpr._guard_capture(reg, r.command_tag, r.object_identity);
        END IF;
    END LOOP;
END
$$;

-- Capture cannot be switched off by DDL: an audit trigger disabled, set to fire only in replica
-- mode, or renamed away is refused (42501), unless a superuser set gdpr.allow_capture_off, and
-- then recorded as AUDIT_OFF.  A trigger missing otherwise is one a restore has yet to create.
-- A partition attached or created gets its triggers, and every one fires ALWAYS.
CREATE FUNCTION gdpr._guard_capture(reg pg_catalog.regclass, tag text, object text) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    off text;
BEGIN
    SELECT pg_catalog.string_agg(pg_catalog.format('%s: %s', gdpr._qualified(g.table_name), g.problem), '; ')
      INTO off
      FROM gdpr._capture_gaps(reg) g
     WHERE g.problem LIKE '%disabled' OR g.problem LIKE '%only in replica mode'
        OR g.problem LIKE '%replaced by another'
        OR (g.problem LIKE '%missing' AND tag = 'ALTER TRIGGER');
    IF off IS NOT NULL THEN
        IF NOT gdpr._capture_off_allowed() THEN
            RAISE EXCEPTION 'capture of registered table % cannot be switched off', gdpr._qualified(reg)
                USING ERRCODE = '42501', DETAIL = off || '.',
                      HINT = 'Stop auditing a table with gdpr.unregister_table(); a superuser restoring data may set gdpr.allow_capture_off, and repair with gdpr.repair_capture() afterwards.';
        END IF;
        PERFORM gdpr._log_ddl_event('AUDIT_OFF',
            pg_catalog.jsonb_build_object('command', tag, 'object', object, 'problems', off),
            NULL, gdpr._qualified(reg));
        RETURN;
    END IF;
    -- A partition attached or created gets the TRUNCATE trigger too.  Not while a dump is being
    -- restored (the table has no row trigger yet): the dump brings its triggers itself.
    IF tag IN ('ALTER TABLE', 'CREATE TABLE')
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_trigger g WHERE g.tgrelid = reg AND g.tgname = 'gdpr_audit_row') THEN
        PERFORM gdpr._attach_truncate(reg);
    END IF;
    PERFORM gdpr._capture_always(reg);
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
                PERFORM gdpr._log_event('MAP_PATH_DROPPED', NULL::text, true,
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
CREATE FUNCTION gdpr._on_sql_drop(tag text) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r    record;
    qual text;
BEGIN
    -- Dropping an audit trigger of a table still registered switches auditing off: refused, or
    -- (gdpr.allow_capture_off) recorded.  gdpr.unregister_table forgets the table first.
    FOR r IN SELECT * FROM pg_catalog.pg_event_trigger_dropped_objects()
              WHERE object_type = 'trigger' AND NOT is_temporary LOOP
        CONTINUE WHEN r.address_names[3] NOT IN ('gdpr_audit_row', 'gdpr_audit_truncate');
        qual := pg_catalog.format('%s.%s', pg_catalog.quote_ident(r.address_names[1]),
                                  pg_catalog.quote_ident(r.address_names[2]));
        CONTINUE WHEN gdpr._registered_root(pg_catalog.to_regclass(qual)) IS NULL;
        IF NOT gdpr._capture_off_allowed() THEN
            RAISE EXCEPTION 'trigger % of registered table % cannot be dropped', r.address_names[3], qual
                USING ERRCODE = '42501',
                      DETAIL = 'Without it, changes to the table would not be captured.',
                      HINT = 'Stop auditing a table with gdpr.unregister_table(); a superuser restoring data may set gdpr.allow_capture_off, and repair with gdpr.repair_capture() afterwards.';
        END IF;
        PERFORM gdpr._log_ddl_event('AUDIT_OFF',
            pg_catalog.jsonb_build_object('command', tag, 'object_type', 'trigger',
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
            PERFORM gdpr._log_ddl_event('DDL',
                pg_catalog.jsonb_build_object('command', tag, 'object_type', 'table', 'object', qual),
                NULL, qual);
        ELSIF r.object_type = 'table column'
              AND EXISTS (SELECT 1 FROM gdpr.registered_table t WHERE t.relid::oid = r.objid) THEN
            PERFORM gdpr._log_ddl_event('DDL',
                pg_catalog.jsonb_build_object('command', tag, 'object_type', 'table column',
                                              'object', r.object_identity),
                NULL, qual);
        END IF;
    END LOOP;
    PERFORM gdpr._forget_dropped();
END
$$;

-- The event triggers run through C, which marks the time they run: only then do the DDL and
-- AUDIT_OFF events they write go through (gdpr._log_ddl_event), whatever else runs in a DDL command.
CREATE FUNCTION gdpr._event_trigger() RETURNS event_trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'gdpr_event_trigger';
CREATE EVENT TRIGGER gdpr_ddl_command_end ON ddl_command_end
    EXECUTE FUNCTION gdpr._event_trigger();
CREATE EVENT TRIGGER gdpr_sql_drop ON sql_drop
    EXECUTE FUNCTION gdpr._event_trigger();
