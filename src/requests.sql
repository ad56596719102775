------------------------------------------------------------------------------------------------
-- Data subject requests (Art. 12) and breaches (Art. 33, 34)
------------------------------------------------------------------------------------------------

CREATE TABLE gdpr.request (
    request_id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind                 text NOT NULL,
    subject_id           text COLLATE "C" NOT NULL,
    "right"              text NOT NULL CHECK ("right" IN ('access', 'rectification', 'erasure',
                                                          'restriction', 'portability', 'objection')),
    received_at          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    due_at               timestamptz NOT NULL,
    verified_at          timestamptz,
    verified_by          text,
    verification_method  text,
    extended_at          timestamptz,
    extension_reason     text,
    status               text NOT NULL DEFAULT 'open'
                         CHECK (status IN ('open', 'completed', 'rejected')),
    closed_at            timestamptz,
    outcome              text,
    detail               jsonb
);
CREATE INDEX request_open_idx ON gdpr.request (due_at) WHERE status = 'open';
CREATE INDEX request_subject_idx ON gdpr.request (kind, subject_id);

CREATE TABLE gdpr.breach (
    breach_id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    detected_at            timestamptz NOT NULL,
    occurred_from          timestamptz,
    occurred_to            timestamptz,
    nature                 text NOT NULL CHECK (nature <> ''),
    categories             text[] NOT NULL DEFAULT '{}',
    approx_subjects        int CHECK (approx_subjects >= 0),
    consequences           text,
    measures               text,
    authority_notified_at  timestamptz,
    subjects_notified_at   timestamptz,
    recorded_at            timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CHECK (occurred_from IS NULL OR occurred_to IS NULL OR occurred_from <= occurred_to)
);

SELECT pg_catalog.pg_extension_config_dump('gdpr.request', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.request_request_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.breach', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.breach_breach_id_seq', '');

-- Requests (Art. 12(3)): one month from receipt, extendable once by up to two months.
CREATE FUNCTION gdpr.open_request(subject text, "right" text, received_at timestamptz DEFAULT now(),
                                  detail jsonb DEFAULT NULL, kind text DEFAULT NULL)
    RETURNS bigint
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k  record := gdpr._subject_key(subject, kind, true);
    id bigint;
BEGIN
    IF "right" IS NULL OR "right" NOT IN ('access', 'rectification', 'erasure', 'restriction', 'portability', 'objection') THEN
        RAISE EXCEPTION 'unknown right "%"', "right" USING ERRCODE = '22023',
              HINT = 'Use access, rectification, erasure, restriction, portability or objection.';
    END IF;
    IF received_at IS NULL OR received_at > now() THEN
        RAISE EXCEPTION 'a request is received now or in the past' USING ERRCODE = '22023';
    END IF;
    INSERT INTO gdpr.request (kind, subject_id, "right", received_at, due_at, detail)
    VALUES (k.subject_kind, k.subject_key, "right", received_at, received_at + interval '1 month', detail)
    RETURNING request_id INTO id;
    PERFORM gdpr._log_event('REQUEST_RECEIVED', k.subject_key, true,
        jsonb_build_object('request_id', id, 'right', "right"), k.subject_kind);
    RETURN id;
END
$$;

CREATE FUNCTION gdpr._open_request(request_id bigint) RETURNS gdpr.request
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r gdpr.request;
BEGIN
    SELECT * INTO r FROM gdpr.request q WHERE q.request_id = _open_request.request_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'request % does not exist', request_id USING ERRCODE = '42704';
    END IF;
    IF r.status <> 'open' THEN
        RAISE EXCEPTION 'request % is already %', request_id, r.status USING ERRCODE = '55000';
    END IF;
    RETURN r;
END
$$;

CREATE FUNCTION gdpr.verify_request(request_id bigint, method text, verified_by text DEFAULT NULL) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r gdpr.request := gdpr._open_request(request_id);
BEGIN
    IF method IS NULL OR btrim(method) = '' THEN
        RAISE EXCEPTION 'say how the identity was verified' USING ERRCODE = '22023',
              HINT = 'For example ''logged-in session'' or ''ID document checked''.';
    END IF;
    UPDATE gdpr.request q SET verified_at = now(), verification_method = method,
                              verified_by = COALESCE(verify_request.verified_by, gdpr._actor())
     WHERE q.request_id = r.request_id;
    PERFORM gdpr._log_event('REQUEST_VERIFIED', r.subject_id, true,
        jsonb_build_object('request_id', r.request_id, 'method', method), r.kind);
END
$$;

CREATE FUNCTION gdpr.extend_request(request_id bigint, reason text, by interval DEFAULT '2 months') RETURNS timestamptz
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r gdpr.request := gdpr._open_request(request_id);
BEGIN
    IF r.extended_at IS NOT NULL THEN
        RAISE EXCEPTION 'request % was already extended', request_id USING ERRCODE = '55000',
              HINT = 'Art. 12(3) allows one extension of at most two further months.';
    END IF;
    IF by IS NULL OR by <= interval '0' OR by > interval '2 months' THEN
        RAISE EXCEPTION 'an extension is of at most two months' USING ERRCODE = '22023',
              HINT = 'Art. 12(3): the deadline is one month from receipt, plus at most two.';
    END IF;
    IF reason IS NULL OR btrim(reason) = '' THEN
        RAISE EXCEPTION 'an extension needs its reason, which the subject must be told' USING ERRCODE = '22023';
    END IF;
    UPDATE gdpr.request q SET due_at = q.due_at + by, extended_at = now(), extension_reason = reason
     WHERE q.request_id = r.request_id RETURNING due_at INTO r.due_at;
    PERFORM gdpr._log_event('REQUEST_EXTENDED', r.subject_id, true,
        jsonb_build_object('request_id', r.request_id, 'reason', reason, 'due_at', r.due_at), r.kind);
    RETURN r.due_at;
END
$$;

CREATE FUNCTION gdpr.close_request(request_id bigint, status text, outcome text) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r gdpr.request := gdpr._open_request(request_id);
BEGIN
    IF status IS NULL OR status NOT IN ('completed', 'rejected') THEN
        RAISE EXCEPTION 'a request closes as completed or rejected, not "%"', status USING ERRCODE = '22023';
    END IF;
    IF status = 'completed' AND r.verified_at IS NULL THEN
        RAISE EXCEPTION 'request % is not verified', request_id USING ERRCODE = '55000',
              HINT = 'Verify the requester''s identity first with gdpr.verify_request().';
    END IF;
    UPDATE gdpr.request q SET status = close_request.status, closed_at = now(), outcome = close_request.outcome
     WHERE q.request_id = r.request_id;
    PERFORM gdpr._log_event('REQUEST_' || upper(status), r.subject_id, true,
        jsonb_build_object('request_id', r.request_id, 'outcome', outcome), r.kind);
END
$$;

-- Completes a request with what gdpr_export or gdpr_erase did; checks it is about that subject.
CREATE FUNCTION gdpr._complete_request(request_id bigint, kind text, subject_key text, rights text[], outcome text)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r gdpr.request := gdpr._open_request(request_id);
BEGIN
    IF r.kind <> kind OR r.subject_id <> subject_key THEN
        RAISE EXCEPTION 'request % is about another subject', request_id USING ERRCODE = '22023';
    END IF;
    IF NOT r."right" = ANY (rights) THEN
        RAISE EXCEPTION 'request % is a request for %, not %', request_id, r."right", array_to_string(rights, ' or ')
            USING ERRCODE = '22023';
    END IF;
    PERFORM gdpr.close_request(request_id, 'completed', outcome);
END
$$;

CREATE VIEW gdpr.open_requests AS
SELECT r.request_id, r.kind, r.subject_id, r."right", r.received_at, r.due_at,
       r.verified_at IS NOT NULL AS verified, r.extended_at IS NOT NULL AS extended,
       (r.due_at::date - pg_catalog.now()::date) AS days_left,
       r.due_at < pg_catalog.now() AS overdue
  FROM gdpr.request r
 WHERE r.status = 'open'
 ORDER BY r.due_at;

-- Breaches (Art. 33, 34)
CREATE FUNCTION gdpr.record_breach(detected_at timestamptz, nature text, occurred_from timestamptz DEFAULT NULL,
                                   occurred_to timestamptz DEFAULT NULL, categories text[] DEFAULT '{}',
                                   approx_subjects int DEFAULT NULL, consequences text DEFAULT NULL,
                                   measures text DEFAULT NULL)
    RETURNS bigint
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    id bigint;
BEGIN
    IF detected_at IS NULL OR nature IS NULL OR btrim(nature) = '' THEN
        RAISE EXCEPTION 'a breach needs when it was detected and its nature' USING ERRCODE = '22023';
    END IF;
    IF occurred_from > occurred_to THEN
        RAISE EXCEPTION 'a breach cannot end before it starts' USING ERRCODE = '22023';
    END IF;
    IF approx_subjects < 0 THEN
        RAISE EXCEPTION 'the number of subjects cannot be negative' USING ERRCODE = '22023';
    END IF;
    INSERT INTO gdpr.breach (detected_at, occurred_from, occurred_to, nature, categories, approx_subjects,
                             consequences, measures)
    VALUES (detected_at, occurred_from, occurred_to, nature, COALESCE(categories, '{}'), approx_subjects,
            consequences, measures)
    RETURNING breach_id INTO id;
    PERFORM gdpr._log_event('BREACH_RECORDED', NULL::text, true, jsonb_build_object('breach_id', id));
    RETURN id;
END
$$;

CREATE FUNCTION gdpr.notify_breach(breach_id bigint, authority_at timestamptz DEFAULT NULL,
                                   subjects_at timestamptz DEFAULT NULL)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF authority_at IS NULL AND subjects_at IS NULL THEN
        RAISE EXCEPTION 'say whom was notified and when' USING ERRCODE = '22023';
    END IF;
    UPDATE gdpr.breach b SET authority_notified_at = COALESCE(notify_breach.authority_at, b.authority_notified_at),
                             subjects_notified_at = COALESCE(notify_breach.subjects_at, b.subjects_notified_at)
     WHERE b.breach_id = notify_breach.breach_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'breach % does not exist', breach_id USING ERRCODE = '42704';
    END IF;
    PERFORM gdpr._log_event('BREACH_NOTIFIED', NULL::text, true,
        jsonb_strip_nulls(jsonb_build_object('breach_id', breach_id, 'authority_at', authority_at, 'subjects_at', subjects_at)));
END
$$;

CREATE VIEW gdpr.breach_deadlines AS
SELECT b.breach_id, b.detected_at, b.nature,
       b.detected_at + interval '72 hours' AS authority_deadline,
       b.authority_notified_at,
       CASE WHEN b.authority_notified_at IS NOT NULL THEN b.authority_notified_at <= b.detected_at + interval '72 hours'
            WHEN pg_catalog.now() > b.detected_at + interval '72 hours' THEN false
       END AS deadline_met,
       CASE WHEN b.authority_notified_at IS NULL
            THEN pg_catalog.round(extract(epoch FROM b.detected_at + interval '72 hours' - pg_catalog.now()) / 3600, 1)
       END AS hours_left,
       b.subjects_notified_at
  FROM gdpr.breach b
 ORDER BY b.detected_at;

-- Whose data was touched in a window, by whom: the subjects to notify (Art. 34).
CREATE FUNCTION public.gdpr_breach_subjects(from_time timestamptz, to_time timestamptz, by_role text DEFAULT NULL,
                                            by_actor text DEFAULT NULL)
    RETURNS TABLE (subject_kind text, subject_id text, events bigint, first_event timestamptz,
                   last_event timestamptz, tables text[], access text)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF from_time IS NULL OR to_time IS NULL OR from_time > to_time THEN
        RAISE EXCEPTION 'give a window: from_time <= to_time' USING ERRCODE = '22023';
    END IF;
    -- access: changed (written), read (a read of a read-audited table, or an export), or both;
    -- a bulk read names no one (subject_id NULL): it counts for everyone in its tables
    RETURN QUERY
    WITH e AS (
        SELECT a.subject_kind AS k, a.subject_id AS s, a.event_time AS t, a.table_name AS tbl,
               a.event IN ('EXPORT', 'ERASE_CHECK') AS was_read
          FROM gdpr.audit_log a
         WHERE a.event_time BETWEEN from_time AND to_time
           AND a.subject_id IS NOT NULL AND a.event <> 'READ'
           AND (by_role IS NULL OR a.session_role = by_role OR a.effective_role = by_role)
           AND (by_actor IS NULL OR a.actor = by_actor)
        UNION ALL
        -- a trail row holds a run of reads (queue.c): each statement names its subjects by their
        -- positions in related_subject_ids
        SELECT a.subject_kind, a.related_subject_ids[p.pos], (st ->> 'at')::timestamptz,
               a.table_name, true
          FROM gdpr.audit_log a
         CROSS JOIN LATERAL jsonb_array_elements(a.detail -> 'reads') st
          LEFT JOIN LATERAL gdpr._read_positions(st) AS p(pos) ON true
         WHERE a.event = 'READ' AND a.event_time <= to_time
           AND (st ->> 'at')::timestamptz BETWEEN from_time AND to_time
           AND (by_role IS NULL OR a.session_role = by_role OR a.effective_role = by_role)
           AND (by_actor IS NULL OR a.actor = by_actor))
    SELECT e.k::text, e.s::text, count(*), min(e.t), max(e.t),
           array_agg(DISTINCT e.tbl ORDER BY e.tbl) FILTER (WHERE e.tbl IS NOT NULL),
           CASE WHEN bool_and(e.was_read) THEN 'read'
                WHEN bool_or(e.was_read) THEN 'read, changed'
                ELSE 'changed' END
      FROM e
     GROUP BY e.k, e.s
     ORDER BY e.k, e.s NULLS LAST;
END
$$;

-- Repeated failed logins from one address within a window (logged with gdpr.log_event).
CREATE FUNCTION gdpr.suspicious_logins(threshold int DEFAULT 5, within interval DEFAULT '15 minutes')
    RETURNS TABLE (client_addr inet, failures bigint, first_failure timestamptz, last_failure timestamptz,
                   subjects text[])
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF threshold IS NULL OR threshold < 1 OR within IS NULL OR within <= interval '0' THEN
        RAISE EXCEPTION 'threshold must be at least 1 and the window positive' USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
    WITH f AS (
        SELECT a.client_addr AS addr, a.event_time, a.subject_id,
               count(*) OVER (PARTITION BY a.client_addr ORDER BY a.event_time
                              RANGE BETWEEN within PRECEDING AND CURRENT ROW) AS n
          FROM gdpr.audit_log a
         WHERE a.event LIKE '%LOGIN%' AND NOT a.success AND a.client_addr IS NOT NULL
    )
    SELECT f.addr, max(f.n), min(f.event_time), max(f.event_time),
           array_agg(DISTINCT f.subject_id::text) FILTER (WHERE f.subject_id IS NOT NULL)
      FROM f GROUP BY f.addr HAVING max(f.n) >= threshold
     ORDER BY 2 DESC, 1;
END
$$;


-- open_request for keys of type bigint and uuid, passing the key on as text.
DO $wrappers$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['bigint', 'uuid'] LOOP
        EXECUTE format($f$CREATE FUNCTION gdpr.open_request(subject %s, "right" text,
                                                           received_at timestamptz DEFAULT now(),
                                                           detail jsonb DEFAULT NULL, kind text DEFAULT NULL)
            RETURNS bigint LANGUAGE sql
            AS 'SELECT gdpr.open_request(subject::text, "right", received_at, detail, kind)'$f$, t);
    END LOOP;
END
$wrappers$;
