-- Roles are cluster-wide: leave none behind for the next run.
\set SHOW_CONTEXT never
DROP OWNED BY regress_app_user, regress_auditor;
DROP ROLE regress_app_user, regress_auditor;
