-- Consent, objection, privacy notices, requests, breaches and the Art. 30 record.
\set SHOW_CONTEXT never
SET search_path = shop, public;
SET client_min_messages = warning;

SELECT gdpr.add_purpose('marketing', 'newsletters and offers by e-mail', 'consent');
SELECT gdpr.add_purpose('fraud_prevention', 'detecting fraudulent orders', 'legitimate_interests');
SELECT gdpr.add_purpose('invoicing', 'issuing and keeping invoices', 'legal_obligation');
SELECT name, legal_basis FROM gdpr.purpose ORDER BY name;

-- Grant, check, withdraw; the history stays.
SET gdpr.actor = 'web-signup';
SELECT gdpr_grant_consent(2, 'marketing', 'v1', '{"form": "signup"}') IS NOT NULL AS granted;
SELECT gdpr_has_consent(2, 'marketing') AS bob, gdpr_has_consent(3, 'marketing') AS cat;
SELECT gdpr_grant_consent(2, 'marketing', 'v2') IS NOT NULL AS regranted;     -- supersedes v1
SELECT purpose, version, granted_by, withdrawn_at IS NOT NULL AS withdrawn FROM gdpr.consent ORDER BY consent_id;
SELECT gdpr_withdraw_consent(2, 'marketing');
SELECT gdpr_has_consent(2, 'marketing') AS bob_after_withdrawal;
SELECT count(*) AS history FROM gdpr.consent WHERE subject_id = '2';
SELECT event, subject_id, detail - 'consent_id' AS detail FROM gdpr.audit_log
 WHERE event LIKE 'CONSENT%' ORDER BY event_id;
RESET gdpr.actor;

-- In a WHERE clause over every customer: one probe of the consent index per row, which is the
-- plan of the lookup it makes; set-based queries join gdpr.active_consent on the same index.
SELECT gdpr_grant_consent(3, 'marketing', 'v2') IS NOT NULL AS granted;
SET enable_seqscan = off;
EXPLAIN (COSTS OFF) SELECT 1 FROM gdpr.consent
 WHERE purpose = 'marketing' AND subject_id = '3' AND kind = 'default' AND withdrawn_at IS NULL;
EXPLAIN (COSTS OFF) SELECT c.id FROM customer c JOIN gdpr.active_consent a
    ON a.kind = 'default' AND a.purpose = 'marketing' AND a.subject_id = c.id::text;
RESET enable_seqscan;
SELECT c.id FROM customer c WHERE gdpr_has_consent(c.id, 'marketing') ORDER BY c.id;

-- Objection to a purpose based on legitimate interests.
SELECT gdpr_object(2, 'fraud_prevention', '{"channel": "email"}') IS NOT NULL AS objected;
SELECT gdpr_object(2, 'marketing');

-- A table that may only hold rows for consenting subjects.
CREATE TABLE newsletter_send (id int PRIMARY KEY, customer_id bigint REFERENCES customer, sent_at date);
SELECT gdpr.require_consent('newsletter_send', 'customer_id', 'marketing');
INSERT INTO newsletter_send VALUES (1, 3, '2026-01-01');
INSERT INTO newsletter_send VALUES (2, 2, '2026-01-01');
UPDATE newsletter_send SET customer_id = 2 WHERE id = 1;
INSERT INTO newsletter_send VALUES (3, NULL, '2026-01-01');
SELECT id, customer_id FROM newsletter_send ORDER BY id;
SELECT gdpr.require_consent('newsletter_send', 'customer_id', 'marketing');
SELECT gdpr.require_consent('newsletter_send', 'customer_id', 'invoicing');

-- Privacy notices.
SELECT gdpr.add_policy_version('2025-01', '2025-01-01', url => 'https://example.com/privacy/2025-01');
SELECT gdpr_accept_policy(2, '2025-01');
SELECT gdpr_policy_status(2) - 'accepted_at' AS status;
SELECT gdpr.add_policy_version('2026-01', now() - interval '1 day', body => 'We changed processors.');
SELECT gdpr_policy_status(2) - 'accepted_at' AS status;
SELECT gdpr_accept_policy(2, '2026-01');
SELECT gdpr_policy_status(2) - 'accepted_at' AS status;
SELECT gdpr.add_policy_version('2026-01', now(), url => 'x');
SELECT gdpr_accept_policy(2, '1999');

-- Requests: a month from receipt, one extension of up to two months.
SELECT gdpr.open_request(2, 'access', now() - interval '40 days') AS late \gset
INSERT INTO customer VALUES (44, 'ivy@example.com', 'Ivy', 'h', NULL, NULL, NULL, NULL);
SELECT gdpr.open_request(44, 'erasure') AS fresh \gset
SELECT "right", days_left < 0 AS overdue_by_days, overdue, verified FROM gdpr.open_requests ORDER BY request_id;
SELECT gdpr.extend_request(:late, 'complex request, many systems') > now() AS extended_into_the_future;
SELECT gdpr.extend_request(:late, 'again');
SELECT gdpr.extend_request(:fresh, 'too long', '3 months');
SELECT gdpr.verify_request(:late, 'logged-in session');
SELECT gdpr_export(2, request_id => :late)->'requests'->0->>'right' AS right_in_export;
SELECT status, outcome FROM gdpr.request WHERE request_id = :late;
SELECT gdpr_export(2, request_id => :late);
SELECT gdpr.close_request(:fresh, 'completed', 'done');
SELECT gdpr.verify_request(:fresh, 'ID document checked');
SELECT gdpr_erase(2, request_id => :fresh);
SELECT gdpr_erase(44, request_id => :fresh)->>'status' AS erased;
SELECT status, outcome, subject_id ~ '^[0-9a-f]{32}$' AS pseudonymized FROM gdpr.request WHERE request_id = :fresh;
SELECT gdpr.open_request(2, 'teleport');

-- Breaches: the 72-hour deadline, and whom to notify.
SELECT gdpr.record_breach(now() - interval '80 hours', 'laptop with an export stolen',
                          categories => '{contact}', approx_subjects => 2) AS late_breach \gset
SELECT gdpr.record_breach(now() - interval '10 hours', 'misdirected e-mail') AS fresh_breach \gset
SELECT gdpr.notify_breach(:late_breach, authority_at => now());
SELECT nature, deadline_met, hours_left IS NOT NULL AS counting FROM gdpr.breach_deadlines ORDER BY breach_id;
SELECT subject_kind, subject_id, tables FROM gdpr_breach_subjects(now() - interval '1 hour', now())
 WHERE subject_kind = 'default' AND subject_id IN ('2', '3') ORDER BY subject_id;
SELECT gdpr.record_breach(now(), '');
SELECT gdpr.notify_breach(999, now());

-- Failed logins from one address.
SET gdpr.client_addr = '198.51.100.9';
SELECT count(gdpr.log_event('USER_LOGIN_FAILED', 3, success => false)) FROM generate_series(1, 6);
RESET gdpr.client_addr;
SELECT client_addr, failures, subjects FROM gdpr.suspicious_logins(5, '10 minutes');
SELECT count(*) FROM gdpr.suspicious_logins(10, '10 minutes');

-- The Art. 30 record.
SELECT gdpr.add_processor('MailCo', 'newsletter delivery', 'US', 'standard contractual clauses', true, '{marketing}');
SELECT gdpr.add_processor('Ledger BV', 'bookkeeping', 'NL', NULL, true, '{invoicing}');
SELECT a->>'purpose' AS purpose, a->'legal_bases' AS bases, a->'processors' AS processors
  FROM jsonb_array_elements(gdpr_processing_record()::jsonb->'activities') a ORDER BY 1;
SELECT p->>'name' AS processor, p->'transfer' AS transfer FROM jsonb_array_elements(gdpr_processing_record()::jsonb->'processors') p;
SELECT regexp_replace(gdpr_processing_record('markdown'), 'Generated: [^ ]*', 'Generated: X') ~ '## marketing' AS has_section,
       gdpr_processing_record('markdown') ~ '\| MailCo \| newsletter delivery \| US \| yes \|' AS has_transfer;
SELECT gdpr_processing_record('pdf');

-- Bad input.
SELECT gdpr_grant_consent(2, 'nope', 'v1');
SELECT gdpr_grant_consent(2, 'invoicing', 'v1');
SELECT gdpr_grant_consent(999, 'marketing', 'v1');
SELECT gdpr_grant_consent(3, 'marketing', '');
SELECT gdpr_withdraw_consent(3, 'marketing');
SELECT gdpr_withdraw_consent(3, 'marketing');
SELECT gdpr.add_purpose('x', 'y', 'because');
