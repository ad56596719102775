------------------------------------------------------------------------------------------------
-- Pseudonyms (anonymize.c)
------------------------------------------------------------------------------------------------

-- The pseudonym key.  Only the extension's owner reads it: with it, a pseudonym could be matched
-- to a subject by trying keys.  Made here, so that every backup and dump carries the key the
-- pseudonyms (and the erasure ledger's chain) are made with, even one taken before the first
-- erasure.  The earliest key of a name is the key: a restore from pg_dump runs CREATE EXTENSION,
-- which makes a key of its own, and then brings back the original, older one.
CREATE TABLE gdpr.secret (
    name     text NOT NULL,
    value    bytea NOT NULL,
    made_at  timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    PRIMARY KEY (name, made_at)
);
CREATE FUNCTION gdpr._random_key() RETURNS bytea
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'gdpr_random_key';
CREATE FUNCTION gdpr._pseudonym(seed text) RETURNS text
    LANGUAGE c STABLE STRICT AS 'MODULE_PATHNAME', 'gdpr_pseudonym_sql';
INSERT INTO gdpr.secret (name, value) VALUES ('pseudonym_key', gdpr._random_key());
