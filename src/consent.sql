------------------------------------------------------------------------------------------------
-- Consent (Art. 6(1)(a), 7), objection (Art. 21) and privacy notices (Art. 13, 14)
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

SELECT pg_catalog.pg_extension_config_dump('gdpr.purpose', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.consent', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.consent_consent_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.objection', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.objection_objection_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.consent_requirement', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.privacy_policy', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.policy_acceptance', '');

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
    PERFORM gdpr._log_event('MAP_PURPOSE', NULL::text, true,
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
    PERFORM gdpr._log_event('CONSENT_GRANTED', k.subject_key, true,
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
    PERFORM gdpr._log_event('CONSENT_WITHDRAWN', k.subject_key, true,
        jsonb_build_object('purpose', p.name), k.subject_kind);
    PERFORM gdpr._ledger_note('consent_withdrawn', k.subject_kind, k.subject_key, p.name);
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
    PERFORM gdpr._log_event('OBJECTION', k.subject_key, true,
        jsonb_build_object('purpose', p.name, 'objection_id', id), k.subject_kind);
    PERFORM gdpr._ledger_note('objection', k.subject_kind, k.subject_key, p.name);
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
    p  gdpr.purpose;
    k  text;
    tg name;
    was text;
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'table must not be NULL' USING ERRCODE = '22004';
    END IF;
    PERFORM gdpr._check_column(tbl, subject_column);
    IF gdpr._citus_node() = 'worker' THEN
        RAISE EXCEPTION 'require_consent runs on the coordinator of a Citus cluster, not on a worker'
            USING ERRCODE = '0A000', HINT = 'Consents are kept on the coordinator: require them there.';
    END IF;
    p := gdpr._purpose(purpose);
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
    -- on a Citus table the check fires on the node that holds the row (consent.c)
    was := gdpr._citus_triggers(true);
    EXECUTE format('CREATE TRIGGER %I BEFORE INSERT OR UPDATE OF %I ON %s FOR EACH ROW EXECUTE FUNCTION gdpr.consent_check(%L, %L, %L)',
                   tg, subject_column, tbl, k, subject_column, p.name);
    PERFORM gdpr._citus_triggers(was = 'on');
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
    PERFORM gdpr._log_event('POLICY_PUBLISHED', NULL::text, true,
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
    PERFORM gdpr._log_event('POLICY_ACCEPTED', k.subject_key, true, jsonb_build_object('version', version),
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
    END LOOP;
END
$wrappers$;
