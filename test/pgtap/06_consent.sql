-- Consent, requests and breaches: refusals by SQLSTATE, and what is recorded.
BEGIN;
SELECT plan(14);

CREATE TABLE c_person (id int PRIMARY KEY, email text);
CREATE TABLE c_mail (id int PRIMARY KEY, person_id int REFERENCES c_person, body text);
SELECT gdpr.register_subject('c_person', 'id', kind => 'cp');
INSERT INTO c_person SELECT g, 'p' || g || '@example.com' FROM generate_series(1, 1000) g;
SELECT gdpr.add_purpose('news', 'newsletter', 'consent');
SELECT gdpr.add_purpose('analytics', 'usage statistics', 'legitimate_interests');

SELECT throws_ok($$SELECT gdpr_grant_consent(1, 'nope', 'v1', kind => 'cp')$$, '42704', NULL, 'an unknown purpose');
SELECT throws_ok($$SELECT gdpr_grant_consent(5000, 'news', 'v1', kind => 'cp')$$, 'GD200', NULL, 'an unknown subject');
SELECT throws_ok($$SELECT gdpr_grant_consent(1, 'analytics', 'v1', kind => 'cp')$$, '22023', NULL,
                 'consent only for purposes based on consent');
SELECT throws_ok($$SELECT gdpr_withdraw_consent(1, 'news', kind => 'cp')$$, '42704', NULL, 'a withdrawal without a grant');
SELECT lives_ok($$SELECT gdpr_grant_consent(g, 'news', 'v1', kind => 'cp') FROM generate_series(1, 1000, 2) g$$,
                'consent for every odd subject');
SELECT is((SELECT count(*)::int FROM c_person p WHERE gdpr_has_consent(p.id, 'news', 'cp')), 500,
          'gdpr_has_consent in a WHERE clause');
SELECT lives_ok($$SELECT gdpr_withdraw_consent(1, 'news', kind => 'cp')$$, 'withdrawal is as easy');
SELECT ok(NOT gdpr_has_consent(1, 'news', 'cp') AND gdpr_has_consent(3, 'news', 'cp'), 'withdrawn, still granted');

SELECT gdpr.require_consent('c_mail', 'person_id', 'news', kind => 'cp');
SELECT lives_ok($$INSERT INTO c_mail VALUES (1, 3, 'hi')$$, 'a row for a consenting subject');
SELECT throws_ok($$INSERT INTO c_mail VALUES (2, 2, 'hi')$$, 'GD304', NULL, 'no row without consent');

SELECT gdpr.open_request(3, 'access', kind => 'cp') AS r \gset
SELECT gdpr.extend_request(:r, 'complex');
SELECT throws_ok(format($$SELECT gdpr.extend_request(%s, 'more')$$, :r), '55000', NULL, 'one extension only');
SELECT throws_ok(format($$SELECT gdpr.close_request(%s, 'completed', 'x')$$, :r), '55000', NULL,
                 'no completion before verification');

SELECT gdpr.record_breach(now() - interval '100 hours', 'test breach') AS b \gset
SELECT is((SELECT deadline_met FROM gdpr.breach_deadlines WHERE breach_id = :b), false, 'a missed 72-hour deadline shows');
SELECT is((SELECT count(*)::int FROM gdpr.audit_log WHERE event IN ('CONSENT_GRANTED', 'CONSENT_WITHDRAWN')
            AND subject_kind = 'cp'), 501, 'every consent event is in the trail');

SELECT * FROM finish();
ROLLBACK;
