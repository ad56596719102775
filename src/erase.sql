------------------------------------------------------------------------------------------------
-- Erasure (Art. 17) and restriction (Art. 18)
------------------------------------------------------------------------------------------------

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
    PERFORM gdpr._map_changed(tbl);		-- on a Citus coordinator, retention on every node keeps it
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
    PERFORM gdpr._map_changed(h.relid);
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
CREATE FUNCTION gdpr._erased_pseudonym(kind text, key text) RETURNS text
    LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'gdpr_erased_pseudonym';
CREATE FUNCTION public.gdpr_can_erase(subject text, kind text DEFAULT NULL)
    RETURNS jsonb LANGUAGE c VOLATILE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'gdpr_can_erase';
CREATE FUNCTION public.gdpr_can_erase(subject bigint, kind text DEFAULT NULL)
    RETURNS jsonb LANGUAGE c VOLATILE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'gdpr_can_erase';
CREATE FUNCTION public.gdpr_can_erase(subject uuid, kind text DEFAULT NULL)
    RETURNS jsonb LANGUAGE c VOLATILE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'gdpr_can_erase';

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
    PERFORM gdpr._log_event('RESTRICT', k.subject_key, true, jsonb_build_object('reason', reason), k.subject_kind);
    PERFORM gdpr._ledger_note('restriction', k.subject_kind, k.subject_key, NULL);
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
    PERFORM gdpr._log_event('UNRESTRICT', k.subject_key, true, NULL, k.subject_kind);
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
    PERFORM gdpr._log_event('ERASURE_REQUESTED', k.subject_key, true,
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
    PERFORM gdpr._log_event('ERASURE_CANCELLED', k.subject_key, true, NULL, k.subject_kind);
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
