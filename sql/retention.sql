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
