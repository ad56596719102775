-- Roles are cluster-wide: leave none behind for the next run.
\set SHOW_CONTEXT never
DROP OWNED BY regress_app_user, regress_auditor, regress_shop_owner, regress_gdpr_admin;
DROP ROLE regress_app_user, regress_auditor, regress_shop_owner, regress_gdpr_admin;
