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

-- The subject's history in this node's trail: when, what, by whom; never the values.  Read as the
-- trail's owner (export.c); gdpr._subject_history adds the other nodes' on a Citus coordinator.
CREATE FUNCTION gdpr._node_history(kind text, subject text) RETURNS jsonb
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
               'time', pg_catalog.to_char(a.event_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
               'event', a.event, 'success', a.success, 'table', a.table_name,
               'changed_columns', pg_catalog.to_jsonb(a.changed_columns),
               'actor', a.actor, 'application', a.application_name)) ORDER BY a.event_id), '[]')
      FROM gdpr.audit_log a
     WHERE a.subject_kind OPERATOR(pg_catalog.=) kind AND a.event OPERATOR(pg_catalog.<>) 'READ'
       AND (a.subject_id OPERATOR(pg_catalog.=) subject
            OR a.related_subject_ids OPERATOR(pg_catalog.@>) ARRAY[subject])
$$;

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
