-- gdpr_erase: legal holds, deletes and anonymization per the map, shared rows, the audit trail.
\set SHOW_CONTEXT never
SET search_path = shop, public;
SET client_min_messages = warning;

INSERT INTO address VALUES (40, 'Erase street 40', 'Liege');
INSERT INTO customer VALUES (40, 'dan@example.com', 'Dan', 'hash40', 40, 7, '\x0102', '2025-02-03 04:05:06+00');
INSERT INTO orders VALUES (40, 40, 9.99);
INSERT INTO order_item VALUES (40, 1, 'lamp');
INSERT INTO rental VALUES (400, 40);
INSERT INTO payment VALUES (4000, 40, NULL, 4);
INSERT INTO visit VALUES (40, '2025-04-01', 40, '/x');
INSERT INTO billing.invoice VALUES (2025, 40, 40, 150);
INSERT INTO message VALUES (40, 40, 2, 'bob@example.com', 'from Dan'), (41, 2, 40, 'dan@example.com', 'to Dan');
-- staff 7 lives at the address customer 2 uses: that address is shared
SELECT gdpr.add_legal_hold('billing.invoice', 'total >= 100', 'invoices of 100 or more are kept 10 years') AS hold \gset

-- A hold refuses the erasure, says why, and changes nothing.
SELECT gdpr_can_erase(40);
SELECT gdpr_erase(40);
SELECT count(*) AS dan_rows FROM customer WHERE id = 40 AND full_name = 'Dan';
SELECT gdpr_erase(40, dry_run => true);

UPDATE billing.invoice SET total = 50 WHERE no = 40;
-- gdpr_can_erase runs the dry run itself: its plan is what gdpr_erase would do.
SELECT c - 'plan' AS can_erase, c->'plan'->'tables' = gdpr_erase(40, dry_run => true)->'tables' AS plan_is_the_dry_run
  FROM gdpr_can_erase(40) c;
-- A dry run reports what an erasure would do, and does nothing.
SELECT gdpr_erase(40, dry_run => true) #- '{subject,pseudonym}' AS dry_run;
SELECT count(*) AS orders_still_there FROM orders WHERE customer_id = 40;
-- A dry run that fails part-way leaves no subtransaction of its own behind: the caller's
-- exception handler rolls back its own block and the session goes on.
CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused by a trigger'; END $$;
CREATE TRIGGER refuse BEFORE DELETE ON order_item FOR EACH ROW EXECUTE FUNCTION refuse();
DO $$
BEGIN
    INSERT INTO address VALUES (49, 'rolled back with the block', 'Liege');
    PERFORM gdpr_erase(40, dry_run => true);
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'caught: %', SQLERRM;
END $$;
SELECT count(*) AS block_rolled_back FROM address WHERE id = 49;
DROP TRIGGER refuse ON order_item;
DROP FUNCTION refuse();

-- The erasure.
SELECT gdpr_erase(40) #- '{subject,pseudonym}' AS report;
SELECT id, email ~ '^erased-[0-9a-f]{16}@invalid$' AS email_pseudonym,
       full_name = ANY (ARRAY['Alex Morgan', 'Sam Taylor', 'Robin Lee', 'Jamie Fox', 'Chris Novak',
                              'Kim Jansen', 'Noa Peeters', 'Lou Martin']) AS fake_name,
       password_hash, address_id
  FROM customer WHERE id = 40;
SELECT * FROM address WHERE id = 40;
SELECT (SELECT count(*) FROM orders WHERE customer_id = 40) AS orders,
       (SELECT count(*) FROM order_item WHERE order_id = 40) AS items,
       (SELECT count(*) FROM rental WHERE customer_id = 40) AS rentals,
       (SELECT count(*) FROM visit WHERE customer_id = 40) AS visits,
       (SELECT count(*) FROM message WHERE id = 40) AS sent;
SELECT * FROM payment WHERE id = 4000;                 -- kept (anonymize), nothing classified
SELECT year, no, customer_id, total FROM billing.invoice WHERE no = 40;
SELECT id, sender_id, recipient_email, body FROM message WHERE id = 41;   -- only about Dan

-- The trail keeps the events, without values, under a pseudonym.
SELECT count(*) AS events_with_key FROM gdpr.audit_log WHERE subject_kind = 'default' AND subject_id = '40';
SELECT count(*) AS events_with_dan FROM gdpr.audit_log
 WHERE old_values::text ~ 'dan@|Dan|Erase street' OR new_values::text ~ 'dan@|Dan|Erase street'
    OR related_subject_ids @> ARRAY['40'];
SELECT event, count(*), bool_and(subject_id ~ '^[0-9a-f]{32}$') AS pseudonymized,
       bool_and(old_values IS NULL AND new_values IS NULL) AS no_values
  FROM gdpr.audit_log
 WHERE subject_id = (SELECT pseudonym FROM gdpr.erasure ORDER BY erased_at DESC LIMIT 1)
 GROUP BY event ORDER BY event;

-- Twice: a clear answer, nothing done.
SELECT gdpr_erase(40)->>'status' AS status;
SELECT c - 'erasure' AS can_erase, c->'erasure'->'kept_anonymized' AS kept FROM gdpr_can_erase(40) c;
-- An access request about an erased subject says so, under the pseudonym only.
SELECT e - 'erasure' AS export, e->'erasure'->'kept_anonymized' AS kept FROM gdpr_export(40) e;
SELECT table_name, r->'subject' AS subject FROM gdpr_export_rows(40) r(table_name, r) ;
SELECT subject_id ~ '^[0-9a-f]{32}$' AS pseudonym_only, detail FROM gdpr.audit_log WHERE event = 'EXPORT' ORDER BY event_id DESC LIMIT 2;
-- So does every register row written about them from then on.
BEGIN;
SELECT gdpr.open_request('40', 'access') > 0 AS opened;
SELECT subject_id ~ '^[0-9a-f]{32}$' AS pseudonym_only FROM gdpr.request ORDER BY request_id DESC LIMIT 1;
SELECT subject_id ~ '^[0-9a-f]{32}$' AS pseudonym_only FROM gdpr.audit_log WHERE event = 'REQUEST_RECEIVED' ORDER BY event_id DESC LIMIT 1;
ROLLBACK;
SELECT setval('gdpr.request_request_id_seq', 1, false) IS NOT NULL AS requests_numbered_from_one;
-- Nothing new may be written about an erased subject whose row is kept.
INSERT INTO orders VALUES (41, 40, 1);

-- A foreign key that would stop the erasure is found before anything changes.
INSERT INTO customer VALUES (41, 'fay@example.com', 'Fay', 'h', NULL, NULL, NULL, NULL);
INSERT INTO rental VALUES (410, 41);
INSERT INTO payment VALUES (4100, 41, 410, 1);
SELECT gdpr_erase(41);
SELECT count(*) AS fay_untouched FROM customer WHERE id = 41 AND full_name = 'Fay';

-- Restriction (Art. 18): reads, exports and erasure work; changes do not.
SELECT gdpr_restrict(2, 'accuracy contested');
UPDATE customer SET full_name = 'Robert' WHERE id = 2;
DELETE FROM payment WHERE id = 3001;
SELECT full_name FROM customer WHERE id = 2;
SELECT gdpr_export(2)->'counts'->'shop.customer' AS exported;
SELECT gdpr_unrestrict(2);
UPDATE customer SET full_name = 'Robert' WHERE id = 2;
SELECT full_name FROM customer WHERE id = 2;

-- The grace period: a request restricts the subject until it is carried out or withdrawn.
INSERT INTO customer VALUES (42, 'gus@example.com', 'Gus', 'h', NULL, NULL, NULL, NULL);
INSERT INTO customer VALUES (43, 'hal@example.com', 'Hal', 'h', NULL, NULL, NULL, NULL);
SELECT gdpr_request_erasure(42, '0 seconds') IS NOT NULL AS requested;
SELECT gdpr_request_erasure(43) IS NOT NULL AS requested;
SELECT gdpr_request_erasure(43);
UPDATE customer SET full_name = 'Gustav' WHERE id = 42;
SELECT request_id IS NOT NULL AS ran, status, detail->>'status' AS erasure FROM gdpr.run_due_erasures();
SELECT email LIKE 'erased-%' AS erased FROM customer WHERE id = 42;
SELECT status, subject_id ~ '^[0-9a-f]{32}$' AS pseudonymized FROM gdpr.erasure_request ORDER BY request_id;
SELECT gdpr_cancel_erasure(43);
UPDATE customer SET full_name = 'Halbert' WHERE id = 43;
SELECT gdpr_cancel_erasure(43);

-- Holds are checked when added: one boolean expression, nothing else.
SELECT gdpr.add_legal_hold('billing.invoice', 'true) OR (1 = 1', 'x');
SELECT gdpr.add_legal_hold('billing.invoice', 'true; DROP TABLE shop.customer', 'x');
SELECT gdpr.add_legal_hold('billing.invoice', 'total > 0 --', 'x');
SELECT gdpr.add_legal_hold('billing.invoice', 'total', 'x');
SELECT gdpr.add_legal_hold('billing.invoice', 'nope = 1', 'x');
SELECT gdpr.add_legal_hold('billing.invoice', '1 FROM shop.customer', 'x');
SELECT gdpr.add_legal_hold('billing.invoice', 'count(*) > 1', 'x');
SELECT gdpr.add_legal_hold('billing.invoice', 'total > 0', '');
SELECT gdpr.add_legal_hold('not_personal', 'true', 'x');
SELECT count(*) AS holds FROM gdpr.legal_hold;
SELECT gdpr.drop_legal_hold(:hold);
SELECT gdpr.drop_legal_hold(:hold);

-- Bad input.
SELECT gdpr_erase(NULL::bigint);
SELECT gdpr_erase(999);
SELECT gdpr_erase('forty');
SELECT gdpr_erase(40, kind => 'alien');
SELECT gdpr_restrict(999, 'x');
SELECT gdpr_restrict(2, '');
SELECT gdpr_unrestrict(2);
SELECT gdpr_request_erasure(2, '-1 day');

-- Outside READ COMMITTED an erasure would plan on a snapshot older than the subject's lock.
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT gdpr_erase(2);
ROLLBACK;
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT gdpr_can_erase(2);
ROLLBACK;
