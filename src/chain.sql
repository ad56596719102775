------------------------------------------------------------------------------------------------
-- The hash chain over the trail (chain.c)
------------------------------------------------------------------------------------------------

-- The hash chain (chain.c).  One row per sealed event: its place in the chain and its digests,
-- never its values.  The personal fields enter only through personal_digest, salted with the
-- nonce; erasure drops the nonce and says which erasure redacted the event.  Rows of purged
-- events stay (digests only) until a whole prefix has expired and becomes a checkpoint.
CREATE TABLE gdpr.audit_seal (
    seq              bigint PRIMARY KEY,
    event_id         bigint NOT NULL UNIQUE,
    retention_until  timestamptz NOT NULL,
    nonce            bytea,
    personal_digest  bytea NOT NULL,
    event_digest     bytea NOT NULL,
    chain_hash       bytea NOT NULL,
    sealed_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    redacted_at      timestamptz,
    redacted_by      text
);
CREATE INDEX audit_seal_retention_idx ON gdpr.audit_seal (retention_until);

-- Where verification starts once the chain before it has been purged, with its last link: the
-- hash before it and the digest and retention_until of the last event it folds in.  redactions
-- counts, per erasure pseudonym, the redacted seal rows folded into this and earlier checkpoints,
-- for as long as that erasure's ERASE event is in the trail: verification adds them to the
-- redactions it still sees before comparing with what the erasure says it redacted.
CREATE TABLE gdpr.audit_checkpoint (
    seq              bigint PRIMARY KEY,
    chain_hash       bytea NOT NULL,
    prev_hash        bytea NOT NULL,
    event_digest     bytea NOT NULL,
    retention_until  timestamptz NOT NULL,
    redactions       jsonb NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- The sealers' state, one row (not dumped: the end of the chain is read from the chain itself):
-- the frontier below which every event is sealed, and the identity value it may pass once the
-- writers noted with it have ended.  Sealers lock the row; writers never touch it.
CREATE TABLE gdpr.audit_seal_state (
    one              boolean PRIMARY KEY DEFAULT true CHECK (one),
    frontier         bigint NOT NULL DEFAULT 1,
    pending_upto     bigint,
    pending_writers  bigint[]
);
-- There from the start: the first erasures and sealers then only lock it, none waits on another's
-- insert of it.  (Sealers and erasures still make it if it is gone.)
INSERT INTO gdpr.audit_seal_state DEFAULT VALUES;

CREATE TRIGGER audit_guard BEFORE UPDATE OR DELETE ON gdpr.audit_seal
    FOR EACH ROW EXECUTE FUNCTION gdpr.audit_guard();
CREATE TRIGGER audit_guard BEFORE UPDATE OR DELETE ON gdpr.audit_checkpoint
    FOR EACH ROW EXECUTE FUNCTION gdpr.audit_guard();
CREATE TRIGGER audit_guard BEFORE UPDATE OR DELETE ON gdpr.audit_seal_state
    FOR EACH ROW EXECUTE FUNCTION gdpr.audit_guard();
CREATE TRIGGER audit_guard_truncate BEFORE TRUNCATE ON gdpr.audit_seal
    FOR EACH STATEMENT EXECUTE FUNCTION gdpr.audit_guard();
CREATE TRIGGER audit_guard_truncate BEFORE TRUNCATE ON gdpr.audit_checkpoint
    FOR EACH STATEMENT EXECUTE FUNCTION gdpr.audit_guard();
CREATE TRIGGER audit_guard_truncate BEFORE TRUNCATE ON gdpr.audit_seal_state
    FOR EACH STATEMENT EXECUTE FUNCTION gdpr.audit_guard();

CREATE FUNCTION gdpr.seal_audit(max_events int DEFAULT 10000) RETURNS bigint
    LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'gdpr_seal_audit';
CREATE FUNCTION public.gdpr_verify_audit(digest jsonb DEFAULT NULL) RETURNS jsonb
    LANGUAGE c CALLED ON NULL INPUT STABLE AS 'MODULE_PATHNAME', 'gdpr_verify_audit';
CREATE FUNCTION public.gdpr_audit_digest() RETURNS jsonb
    LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'gdpr_audit_digest';
CREATE FUNCTION gdpr._purge_audit_rows(batch_size int) RETURNS bigint
    LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'gdpr_purge_audit_rows';

-- The chain is data too.
SELECT pg_catalog.pg_extension_config_dump('gdpr.audit_seal', '');
SELECT pg_catalog.pg_extension_config_dump('gdpr.audit_checkpoint', '');

-- How far sealing is behind: the events past the frontier not sealed yet, and the age of the
-- oldest of them.  Found along the trail's key from the frontier, as the sealer finds them.
CREATE VIEW gdpr.seal_lag AS
SELECT (SELECT pg_catalog.count(*) FROM gdpr.audit_log a
         WHERE a.event_id >= st.frontier AND a.retention_until >= pg_catalog.now()
           AND NOT EXISTS (SELECT FROM gdpr.audit_seal s WHERE s.event_id = a.event_id)) AS events_behind,
       COALESCE(EXTRACT(epoch FROM pg_catalog.now() OPERATOR(pg_catalog.-)
                (SELECT a.event_time FROM gdpr.audit_log a
                  WHERE a.event_id >= st.frontier AND a.retention_until >= pg_catalog.now()
                    AND NOT EXISTS (SELECT FROM gdpr.audit_seal s WHERE s.event_id = a.event_id)
                  ORDER BY a.event_id LIMIT 1)), 0)::numeric(12, 3) AS seconds_behind
  FROM gdpr.audit_seal_state st;
