------------------------------------------------------------------------------------------------
-- Read auditing: whose data was read (reads.c), through the event queue (queue.c)
------------------------------------------------------------------------------------------------

CREATE FUNCTION gdpr._check_read_audit() RETURNS void
    LANGUAGE c AS 'MODULE_PATHNAME', 'gdpr_check_read_audit';

-- Records, for every statement that reads the table, whose rows it read (one READ event per
-- statement and table).  A map change: gdpr_admin's.
CREATE FUNCTION gdpr.set_read_audit(tbl pg_catalog.regclass, enabled boolean DEFAULT true)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM gdpr.registered_table r WHERE r.relid = tbl) THEN
        RAISE EXCEPTION 'table % is not registered', COALESCE(gdpr._qualified(tbl), 'NULL')
            USING ERRCODE = '42704',
                  HINT = 'Register it first with gdpr.register_table() or gdpr.register_subject().';
    END IF;
    IF enabled IS NULL THEN
        RAISE EXCEPTION 'enabled must not be NULL' USING ERRCODE = '22004',
              HINT = 'Pass true to record whose rows are read, false to stop.';
    END IF;
    IF enabled THEN
        PERFORM gdpr._check_read_audit();
    END IF;
    UPDATE gdpr.registered_table r SET read_audit = enabled
     WHERE r.relid = tbl AND r.read_audit <> enabled;
    IF FOUND THEN
        PERFORM gdpr._map_changed(tbl);
        PERFORM gdpr._log_map('MAP_READ_AUDIT', tbl, pg_catalog.jsonb_build_object('read_audit', enabled));
    END IF;
END
$$;

-- The queue of events sessions cannot write themselves: how full it is, how many events went
-- through it, and how many went to the server log instead (not_queued: it was full; logged: no
-- writer could write them, or the server shut down with them queued).
CREATE FUNCTION gdpr._queue_stats(OUT preloaded boolean, OUT capacity_bytes bigint,
                                  OUT used_bytes bigint, OUT queued bigint, OUT written bigint,
                                  OUT not_queued bigint, OUT logged bigint)
    RETURNS record
    LANGUAGE c AS 'MODULE_PATHNAME', 'gdpr_queue_stats';
CREATE VIEW gdpr.event_queue AS SELECT * FROM gdpr._queue_stats();

-- The positions in related_subject_ids of the subjects one statement read: an entry of a READ
-- row's detail.reads (queue.c) lists them, or gives where a run of them starts and how many.
CREATE FUNCTION gdpr._read_positions(read jsonb) RETURNS SETOF int
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.generate_series((read ->> 'first')::int,
                                      (read ->> 'first')::int + (read ->> 'count')::int - 1)
     WHERE read ? 'first'
    UNION ALL
    SELECT p::int FROM pg_catalog.jsonb_array_elements_text(
        CASE WHEN pg_catalog.jsonb_typeof(read -> 'subjects') = 'array' THEN read -> 'subjects' ELSE '[]' END) p
$$;

-- Whether that statement read the subject at position pos
CREATE FUNCTION gdpr._read_names(read jsonb, pos int) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pos IS NOT NULL
       AND (pos BETWEEN (read ->> 'first')::int AND (read ->> 'first')::int + (read ->> 'count')::int - 1
            OR (read -> 'subjects') @> pg_catalog.to_jsonb(pos))
$$;

-- Who read one subject's data (Art. 15(1)(c); Art. 33 and 34 after a breach): the reads of
-- read-audited tables that named the subject, the bulk reads of tables of their kind (bulk: too
-- many subjects to list, each counts for everyone in the table), and the exports about them.
-- One read of a subject's data, as gdpr_access_log lists them
CREATE TYPE gdpr.access AS (event_time timestamptz, actor text, session_role text,
                            effective_role text, application_name text, client_addr inet,
                            table_name text, bulk boolean, rows_read bigint, event_id bigint);

CREATE FUNCTION public.gdpr_access_log(subject text, kind text DEFAULT NULL,
                                       since timestamptz DEFAULT NULL)
    RETURNS SETOF gdpr.access
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k text;
    key text;
BEGIN
    SELECT s.subject_kind, s.subject_key INTO k, key FROM gdpr._subject_key(subject, kind, false) s;
    -- a trail row holds a run of reads (queue.c): each statement is one entry of detail.reads,
    -- naming its subjects by their positions in related_subject_ids
    RETURN QUERY
        SELECT (st ->> 'at')::timestamptz, a.actor, a.session_role, a.effective_role,
               a.application_name, a.client_addr, a.table_name, a.related_subject_ids IS NULL,
               (st ->> 'rows')::bigint, a.event_id
          FROM gdpr.audit_log a
         CROSS JOIN LATERAL jsonb_array_elements(a.detail -> 'reads') st
         WHERE a.event = 'READ' AND a.subject_kind = k
           AND (a.related_subject_ids IS NULL
                OR (a.related_subject_ids @> ARRAY[key]
                    AND gdpr._read_names(st, array_position(a.related_subject_ids, key))))
           AND (gdpr_access_log.since IS NULL OR (st ->> 'at')::timestamptz >= gdpr_access_log.since)
        UNION ALL
        -- an export is a read of everything held about them
        SELECT a.event_time, a.actor, a.session_role, a.effective_role, a.application_name,
               a.client_addr, 'gdpr_export', false, (a.detail ->> 'total_rows')::bigint, a.event_id
          FROM gdpr.audit_log a
         WHERE a.event = 'EXPORT' AND a.subject_kind = k AND a.subject_id = key
           AND (gdpr_access_log.since IS NULL OR a.event_time >= gdpr_access_log.since)
         ORDER BY 1, 10;
END
$$;
CREATE FUNCTION public.gdpr_access_log(subject bigint, kind text DEFAULT NULL,
                                       since timestamptz DEFAULT NULL)
    RETURNS SETOF gdpr.access
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM public.gdpr_access_log($1::text, $2, $3) $$;
CREATE FUNCTION public.gdpr_access_log(subject uuid, kind text DEFAULT NULL,
                                       since timestamptz DEFAULT NULL)
    RETURNS SETOF gdpr.access
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM public.gdpr_access_log($1::text, $2, $3) $$;
