-- Retention policies and gdpr_enforce_retention (the worker's pass, on demand).
\set SHOW_CONTEXT never
SET search_path = shop, public;
SET client_min_messages = warning;

CREATE TABLE session_log (id int PRIMARY KEY, customer_id bigint REFERENCES customer, at timestamptz NOT NULL,
                          ip inet, status text);
CREATE TABLE ticket (id int PRIMARY KEY, customer_id bigint REFERENCES customer, keep_until date NOT NULL,
                     body text);
SELECT gdpr.register_table('session_log');
SELECT gdpr.register_table('ticket');
SELECT gdpr.classify_column('session_log', 'ip', 'online_id', erase => 'mask');
INSERT INTO session_log SELECT g, 3, now() - g * interval '1 day', ('192.0.2.' || g)::inet,
                               CASE WHEN g % 10 = 0 THEN 'disputed' ELSE 'ok' END
  FROM generate_series(1, 60) g;
INSERT INTO ticket SELECT g, 3, current_date + (g - 5), 'ticket ' || g FROM generate_series(1, 10) g;
SELECT gdpr.add_legal_hold('session_log', 'status = ''disputed''', 'disputed sessions are evidence') AS hold \gset

-- Delete what is older than 30 days, except held rows; the deadline form for tickets.
SELECT gdpr.set_retention('session_log', 'at', '30 days');
SELECT gdpr.set_retention('ticket', 'keep_until');
SELECT relid, time_column, keep, action FROM gdpr.retention_policy ORDER BY relid::text;
SELECT * FROM gdpr_enforce_retention(dry_run => true) WHERE table_name LIKE 'shop.%';
SELECT count(*) AS sessions_before FROM session_log;
SELECT * FROM gdpr_enforce_retention(batch_size => 7) WHERE table_name LIKE 'shop.%';
SELECT count(*) AS sessions_after, count(*) FILTER (WHERE status = 'disputed' AND at < now() - interval '30 days') AS held_kept
  FROM session_log;
SELECT count(*) AS tickets_after, min(keep_until) >= current_date AS only_current FROM ticket;
SELECT table_name, deleted, anonymized, dry_run FROM gdpr.retention_history
 WHERE table_name LIKE 'shop.%' ORDER BY run_id;

-- Anonymize instead of deleting, with a condition; running twice changes nothing more.
SELECT gdpr.drop_legal_hold(:hold);
SELECT gdpr.set_retention('session_log', 'at', '10 days', action => 'anonymize', condition => 'status = ''ok''');
SELECT deleted, anonymized FROM gdpr_enforce_retention() WHERE table_name = 'shop.session_log';
SELECT deleted, anonymized FROM gdpr_enforce_retention() WHERE table_name = 'shop.session_log';
SELECT count(*) FILTER (WHERE host(ip) = '192.0.2.0') AS masked, count(*) FILTER (WHERE host(ip) <> '192.0.2.0') AS intact
  FROM session_log;

-- The trail is purged by retention_until; due erasure requests are carried out.
SET gdpr.audit_retention = '1 second';
INSERT INTO rental VALUES (900, 3);
RESET gdpr.audit_retention;
SELECT pg_sleep(1.1);
SELECT deleted >= 1 AS purged FROM gdpr_enforce_retention() WHERE table_name = 'gdpr.audit_log';
SELECT count(*) AS expired_left FROM gdpr.audit_log WHERE retention_until < now();
SELECT gdpr.create_audit_partitions() >= 0 AS partitions_made;
SELECT count(*) >= 1 AS monthly_partitions FROM pg_inherits WHERE inhparent = 'gdpr.audit_log'::regclass
   AND inhrelid <> 'gdpr.audit_log_default'::regclass;

-- Batches run with the rights of the table's owner, never the caller's or the worker's
-- (a superuser): the owner's trigger sees the owner, in a security-restricted operation.
CREATE ROLE regress_shop_owner;
CREATE ROLE regress_gdpr_admin IN ROLE gdpr_admin;
CREATE TABLE page_view (id int PRIMARY KEY, customer_id bigint REFERENCES customer, at timestamptz NOT NULL);
ALTER TABLE page_view OWNER TO regress_shop_owner;
GRANT USAGE ON SCHEMA shop TO regress_shop_owner, regress_gdpr_admin;
GRANT SELECT, INSERT, DELETE ON page_view TO regress_gdpr_admin;
CREATE FUNCTION page_view_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.id = 1 THEN
        RAISE WARNING 'deleted by %, search_path %', current_user, current_setting('search_path');
        BEGIN
            SET ROLE regress_gdpr_admin;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE WARNING 'SET ROLE refused: %', SQLERRM;
        END;
    END IF;
    RETURN OLD;
END $$;
CREATE TRIGGER page_view_deleted BEFORE DELETE ON page_view FOR EACH ROW EXECUTE FUNCTION page_view_deleted();
SELECT gdpr.register_table('page_view');
INSERT INTO page_view SELECT g, 1 + g % 3, now() - interval '1 year' FROM generate_series(1, 9) g;

-- gdpr_admin may set a policy on a table it does not own, but not a condition: conditions run
-- as the owner.  The check guards the tables themselves too.
SET ROLE regress_gdpr_admin;
SELECT gdpr.set_retention('page_view', 'at', '30 days', condition => 'id > 0');
SELECT gdpr.add_legal_hold('page_view', 'id = 2', 'x');
INSERT INTO gdpr.legal_hold (relid, condition, reason) VALUES ('page_view', 'id = 2', 'x');
SELECT gdpr.set_retention('page_view', 'at', '30 days');
RESET ROLE;
INSERT INTO gdpr.legal_hold (relid, condition, reason) VALUES ('page_view', 'true) OR (true', 'x');
INSERT INTO gdpr.legal_hold (relid, condition, reason)
VALUES ('page_view', 'true); DELETE FROM shop.customer; SELECT (true', 'x');
GRANT regress_shop_owner TO regress_gdpr_admin;
SET ROLE regress_gdpr_admin;
SELECT gdpr.add_legal_hold('page_view', 'id = 2', 'held for a dispute') > 0 AS hold_added;

-- Rows of a subject who restricted processing (Art. 18) stay; so do held rows.
RESET ROLE;
SELECT gdpr_restrict(3, 'needs the records for a legal claim');
SET ROLE regress_gdpr_admin;
SELECT deleted, error FROM gdpr_enforce_retention() WHERE table_name = 'shop.page_view';
SELECT id, customer_id FROM page_view ORDER BY id;
RESET ROLE;
SELECT gdpr_unrestrict(3);
SELECT deleted FROM gdpr_enforce_retention() WHERE table_name = 'shop.page_view';
SELECT id FROM page_view ORDER BY id;
-- A purge leaves no copy of the expired values in the trail: one RETENTION event per batch.
SELECT event, detail - 'hold_id' AS detail FROM gdpr.audit_log WHERE table_name = 'shop.page_view' AND event <> 'INSERT'
 ORDER BY event_id;

-- A partitioned table is purged by key (a ctid names a row only within one partition), in
-- batches that span partitions: the fresh row sharing a ctid with an expired one stays.
CREATE TABLE visit_log (id int, customer_id bigint REFERENCES customer, at timestamptz NOT NULL,
                        PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE visit_log_old PARTITION OF visit_log FOR VALUES FROM ('2000-01-01') TO ('2020-01-01');
CREATE TABLE visit_log_new PARTITION OF visit_log FOR VALUES FROM ('2020-01-01') TO ('2100-01-01');
SELECT gdpr.register_table('visit_log');
INSERT INTO visit_log SELECT g, 3, '2010-01-01'::timestamptz + g * interval '1 day' FROM generate_series(1, 5) g;
INSERT INTO visit_log SELECT g, 3, now() - (g - 5) * interval '2 days' FROM generate_series(6, 15) g;
SELECT gdpr.set_retention('visit_log', 'at', '5 days');
SELECT deleted FROM gdpr_enforce_retention(batch_size => 4) WHERE table_name = 'shop.visit_log';
SELECT id, tableoid::regclass AS part, ctid FROM visit_log ORDER BY id;
SELECT gdpr.drop_retention('visit_log');
DROP TABLE visit_log;
-- An inheritance tree: keys repeat across it, so rows are matched by table and key; the child's
-- fresh row with the parent's expired row's key stays.
CREATE TABLE visit_arch (id int PRIMARY KEY, customer_id bigint REFERENCES customer, at timestamptz NOT NULL);
CREATE TABLE visit_arch_2020 () INHERITS (visit_arch);
SELECT gdpr.register_table('visit_arch');
INSERT INTO visit_arch VALUES (1, 3, now() - interval '90 days');
INSERT INTO visit_arch_2020 VALUES (1, 3, now()), (2, 3, now() - interval '90 days');
SELECT gdpr.set_retention('visit_arch', 'at', '30 days');
SELECT deleted FROM gdpr_enforce_retention() WHERE table_name = 'shop.visit_arch';
SELECT id, tableoid::regclass AS part FROM visit_arch ORDER BY id;
SELECT gdpr.drop_retention('visit_arch');
DROP TABLE visit_arch CASCADE;

-- An anonymizing policy keeps a progress mark: once a pass leaves nothing to anonymize, the next
-- looks only at rows from its cutoff on.  A row set back to personal values below the mark waits
-- for the daily pass over every row; lifting a hold forgets the mark at once.
CREATE TABLE contact_log (id int PRIMARY KEY, customer_id bigint REFERENCES customer, at timestamptz NOT NULL, phone text);
SELECT gdpr.register_table('contact_log');
SELECT gdpr.classify_column('contact_log', 'phone', 'contact', erase => 'null');
INSERT INTO contact_log SELECT g, 3, now() - interval '90 days' + g * interval '1 hour', '555-' || g FROM generate_series(1, 6) g;
SELECT gdpr.set_retention('contact_log', 'at', '30 days', action => 'anonymize');
SELECT gdpr.add_legal_hold('contact_log', 'id = 6', 'a claim') AS contact_hold \gset
CREATE VIEW contact_progress AS
SELECT anonymized_through = now() - interval '30 days' AS marked_at_cutoff, swept_at = now() AS swept_now
  FROM gdpr.retention_policy WHERE relid = 'contact_log'::regclass;
BEGIN;
SELECT anonymized FROM gdpr_enforce_retention() WHERE table_name = 'shop.contact_log';
TABLE contact_progress;
COMMIT;
-- as if that pass was a week ago: a row that expired since is after the mark, one set back is not
UPDATE gdpr.retention_policy SET anonymized_through = now() - interval '37 days' WHERE relid = 'contact_log'::regclass;
INSERT INTO contact_log VALUES (7, 3, now() - interval '35 days', '555-7');
UPDATE contact_log SET phone = '555-1' WHERE id = 1;
SELECT anonymized FROM gdpr_enforce_retention() WHERE table_name = 'shop.contact_log';
SELECT id, phone FROM contact_log ORDER BY id;
-- a day after the last pass over every row, the next one is such a pass again
UPDATE gdpr.retention_policy SET swept_at = now() - interval '2 days' WHERE relid = 'contact_log'::regclass;
BEGIN;
SELECT anonymized FROM gdpr_enforce_retention() WHERE table_name = 'shop.contact_log';
TABLE contact_progress;
COMMIT;
SELECT gdpr.drop_legal_hold(:contact_hold);
SELECT anonymized_through IS NULL AS forgotten FROM gdpr.retention_policy WHERE relid = 'contact_log'::regclass;
SELECT anonymized FROM gdpr_enforce_retention() WHERE table_name = 'shop.contact_log';
SELECT id, phone FROM contact_log ORDER BY id;
DROP VIEW contact_progress;
SELECT gdpr.drop_retention('contact_log');
DROP TABLE contact_log;

-- Bad input.
SELECT gdpr.set_retention('session_log', 'nope', '1 day');
SELECT gdpr.set_retention('session_log', 'ip', '1 day');
SELECT gdpr.set_retention('session_log', 'at', '-1 day');
SELECT gdpr.set_retention('session_log', 'at', '1 day', action => 'shred');
SELECT gdpr.set_retention('ticket', 'keep_until', action => 'anonymize');
SELECT gdpr.set_retention('session_log', 'at', '1 day', condition => 'true; DROP TABLE x');
SELECT gdpr.set_retention('not_personal', 'id', '1 day');
SELECT gdpr.drop_retention('ticket');
SELECT gdpr.drop_retention('ticket');
SELECT * FROM gdpr_enforce_retention(batch_size => 0);
-- Events written before their month had a partition move into it when the partition is made;
-- the map's registrations make the months they write into first, so that no event of the usual
-- retention is in the default partition.
SELECT count(*) AS usual_in_default FROM gdpr.audit_log_default WHERE retention_until > now() + interval '1 year';
SET gdpr.audit_retention = '30 years';
SELECT gdpr.log_event('APP_LATE_MONTH') > 0 AS logged;
SELECT count(*) AS in_default FROM gdpr.audit_log_default WHERE event = 'APP_LATE_MONTH';
SELECT gdpr.create_audit_partitions(0) AS made;
SELECT count(*) AS in_default FROM gdpr.audit_log_default WHERE event = 'APP_LATE_MONTH';
SELECT tableoid::regclass = to_regclass('gdpr.audit_log_' || to_char(date_trunc('month', now() + interval '30 years'), '"y"YYYY"m"MM')) AS moved
  FROM gdpr.audit_log WHERE event = 'APP_LATE_MONTH';
RESET gdpr.audit_retention;
