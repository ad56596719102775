------------------------------------------------------------------------------------------------
-- Paths: foreign keys as edges, and the shortest path from a table to its subject
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
