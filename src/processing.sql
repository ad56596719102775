------------------------------------------------------------------------------------------------
-- The record of processing activities (Art. 30): processors, transfers, the record itself
------------------------------------------------------------------------------------------------

CREATE TABLE gdpr.processor (
    name                text PRIMARY KEY CHECK (name <> ''),
    service             text NOT NULL,
    country             text NOT NULL,
    transfer_safeguard  text,
    dpa_signed          boolean NOT NULL DEFAULT false,
    recipients_of       text[] NOT NULL DEFAULT '{}',
    created_at          timestamptz NOT NULL DEFAULT pg_catalog.now()
);
SELECT pg_catalog.pg_extension_config_dump('gdpr.processor', '');

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
    PERFORM gdpr._log_event('MAP_PROCESSOR', NULL::text, true,
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
