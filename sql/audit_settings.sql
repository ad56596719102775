-- Filters and settings.
\set SHOW_CONTEXT never
SET search_path = shop, public;
CALL reset_trail();

-- Event classes.
SET gdpr.audit_events = 'insert, delete';
INSERT INTO rental VALUES (200, 1);
UPDATE rental SET customer_id = 2 WHERE id = 200;
DELETE FROM rental WHERE id = 200;
SELECT gdpr.log_event('APP_EVENT');                   -- app events are filtered out: NULL
SET gdpr.audit_events = 'none';
INSERT INTO rental VALUES (201, 1);
CREATE TABLE wishlist (id int PRIMARY KEY, customer_id bigint REFERENCES customer);
SELECT gdpr.register_table('wishlist');               -- map events are never filtered
RESET gdpr.audit_events;
SELECT event, table_name, row_key FROM trail;

CALL reset_trail();
-- Roles left out, and superusers.
SET gdpr.audit_exclude_roles = 'etl_loader, postgres';
INSERT INTO rental VALUES (202, 1);
RESET gdpr.audit_exclude_roles;
SET gdpr.audit_superusers = off;
INSERT INTO rental VALUES (203, 1);
RESET gdpr.audit_superusers;
INSERT INTO rental VALUES (204, 1);
SELECT event, row_key FROM trail;

-- Retention of the trail.
CALL reset_trail();
SET gdpr.audit_retention = '90 days';
INSERT INTO rental VALUES (205, 1);
SELECT retention_until - event_time AS kept FROM gdpr.audit_log;
RESET gdpr.audit_retention;

-- Bad values are refused by the settings themselves.
SET gdpr.audit_retention = 'forever';
SET gdpr.audit_retention = '-1 day';
SET gdpr.audit_events = 'insert, selects';
SET gdpr.audit_values = 'some';
SET gdpr.client_addr = 'not an address';
SET gdpr.client_addr = '10.0.0.1/33';
SET gdpr.client_addr = '2001:db8::1';
SHOW gdpr.client_addr;
RESET gdpr.client_addr;

-- Application roles cannot switch auditing off for themselves.
SET ROLE regress_app_user;
SET gdpr.audit_events = 'none';
SET gdpr.audit_values = 'none';
SET gdpr.audit_exclude_roles = 'regress_app_user';
SET gdpr.actor = 'carol@app';                         -- but may say who the end user is
RESET gdpr.actor;
RESET ROLE;
