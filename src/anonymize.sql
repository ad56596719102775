------------------------------------------------------------------------------------------------
-- Pseudonyms (anonymize.c)
------------------------------------------------------------------------------------------------

-- The pseudonym key.  Only the extension's owner reads it: with it, a pseudonym could be matched
-- to a subject by trying keys.  Created on first use rather than here, so that a restore from
-- pg_dump brings back the key the pseudonyms were made with instead of colliding with a new one.
CREATE TABLE gdpr.secret (
    name   text PRIMARY KEY,
    value  bytea NOT NULL
);
CREATE FUNCTION gdpr._random_key() RETURNS bytea
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'gdpr_random_key';
CREATE FUNCTION gdpr._pseudonym(seed text) RETURNS text
    LANGUAGE c STABLE STRICT AS 'MODULE_PATHNAME', 'gdpr_pseudonym_sql';
