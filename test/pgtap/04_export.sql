-- gdpr_export: refusals by SQLSTATE, and that an export is about one person only.
BEGIN;
SELECT plan(14);

CREATE TABLE x_person (id int PRIMARY KEY, name text, pw text);
CREATE TABLE x_staff (id int PRIMARY KEY, name text);
ALTER TABLE x_person ADD COLUMN rep int REFERENCES x_staff;
CREATE TABLE x_post (id int PRIMARY KEY, author int REFERENCES x_person, body text);
CREATE INDEX ON x_post (author);
SELECT gdpr.register_subject('x_person', 'id', kind => 'xp');
SELECT gdpr.register_subject('x_staff', 'id', kind => 'xs');
SELECT gdpr.register_table('x_post', kind => 'xp');
SELECT gdpr.classify_column('x_person', 'pw', 'secret');
INSERT INTO x_staff VALUES (9, 'Rep');
INSERT INTO x_person VALUES (1, 'One', 'pw1', 9), (2, 'Two', 'pw2', 9);
INSERT INTO x_post SELECT g, 1 + g % 2, 'post ' || g FROM generate_series(1, 20) g;

SELECT throws_ok($$SELECT gdpr_export(NULL::int, kind => 'xp')$$, '22004', NULL, 'NULL subject');
SELECT throws_ok($$SELECT gdpr_export(3, kind => 'xp')$$, 'GD200', NULL, 'a subject that does not exist');
SELECT throws_ok($$SELECT gdpr_export('one', kind => 'xp')$$, '22P02', NULL, 'a key that is not of the key type');
SELECT throws_ok($$SELECT gdpr_export('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, kind => 'xp')$$, '42804', NULL,
                 'a key of the wrong type');
SELECT throws_ok($$SELECT gdpr_export(1, kind => 'nope')$$, '42704', NULL, 'an unknown kind');
SELECT is((gdpr_export(1, kind => 'xp')->'counts'->>'public.x_post')::int, 10, 'only the subject''s posts');
SELECT is((SELECT count(*)::int FROM jsonb_array_elements(gdpr_export(1, kind => 'xp')->'data'->'public.x_post') p
            WHERE (p->>'author')::int <> 1), 0, 'no post of another person');
SELECT ok(NOT (gdpr_export(1, kind => 'xp')->'data' ? 'public.x_staff'), 'following rep -> staff exports no employee');
SELECT ok(NOT (gdpr_export(1, kind => 'xp')->'data'->'public.x_person'->0 ? 'pw'), 'the secret column is not exported');
SELECT is(gdpr_export(1, kind => 'xp')->'subject', '{"kind": "xp", "key": 1}'::jsonb, 'the subject, key as a number');
SELECT is((SELECT count(*)::int FROM gdpr_export_rows(1, kind => 'xp')), 11, 'the stream has every row');
SELECT is((SELECT count(*)::int FROM gdpr.audit_log WHERE event = 'EXPORT' AND subject_kind = 'xp' AND subject_id = '1'), 6,
          'every export was recorded');
SELECT ok((SELECT bool_and(indexed) FROM gdpr.export_plan(kind => 'xp')), 'every lookup has an index');
DROP INDEX x_post_author_idx;
SELECT ok((SELECT NOT bool_and(indexed) FROM gdpr.export_plan(kind => 'xp')), 'a missing index is reported');

SELECT * FROM finish();
ROLLBACK;
