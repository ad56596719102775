-- gdpr 1.0: the personal-data map and the audit trail.
--
-- Everything lives in schema gdpr, which the control file creates.  Objects are schema-qualified
-- throughout so that the script and the functions behave the same whatever search_path the caller has.

\echo Use "CREATE EXTENSION gdpr" to load this file. \quit

-- Roles.  Roles are cluster-wide and survive the extension, so a second database that installs
-- gdpr reuses them instead of failing.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'gdpr_admin') THEN
        CREATE ROLE gdpr_admin NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'gdpr_auditor') THEN
        CREATE ROLE gdpr_auditor NOLOGIN;
    END IF;
END
$roles$;

GRANT USAGE ON SCHEMA gdpr TO PUBLIC;
