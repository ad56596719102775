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
-- A registered table whose changes are not captured: an audit trigger missing, disabled, or set to
-- fire only in (or not in) replica mode, by a superuser who allowed it or in a restored dump.
SELECT g.table_name, NULL::name,
       g.problem || ': its changes are not captured until SELECT gdpr.repair_capture()'
  FROM gdpr._capture_gaps() g
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
