------------------------------------------------------------------------------------------------
-- Conditions written by users: path conditions and legal hold conditions (condition.c)
------------------------------------------------------------------------------------------------

-- A path condition may use the row's columns, constants and built-in functions and operators
-- only: it is evaluated by whoever follows the path (an export as the caller, the audit trigger as
-- the writer), and must mean the same, and run no one's code, for all of them.
CREATE FUNCTION gdpr._check_path_condition(tbl pg_catalog.regclass, condition text) RETURNS text
    LANGUAGE c STRICT
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'gdpr_check_path_condition';

-- Stored in canonical form (every name qualified) however the row is written.
CREATE FUNCTION gdpr._canonical_path_condition() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.condition := gdpr._check_path_condition(NEW.relid, NEW.condition);
    RETURN NEW;
END
$$;
CREATE TRIGGER canonical_condition BEFORE INSERT OR UPDATE OF relid, condition ON gdpr.subject_path
    FOR EACH ROW WHEN (NEW.condition IS NOT NULL) EXECUTE FUNCTION gdpr._canonical_path_condition();

CREATE FUNCTION gdpr._check_condition(tbl pg_catalog.regclass, condition text) RETURNS void
    LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'gdpr_check_condition';

-- A condition is code the retention worker runs as the table's owner: checked however the row
-- is written, functions or plain DML.
CREATE FUNCTION gdpr._check_rule() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.condition IS NOT NULL THEN
        PERFORM gdpr._check_condition(NEW.relid, NEW.condition);
    END IF;
    RETURN NEW;
END
$$;
