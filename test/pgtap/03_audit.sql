-- Audit capture: one event per row, attributed to its subject, secrets never written.
BEGIN;
SELECT plan(10);

CREATE TABLE a_users (id uuid PRIMARY KEY, email text, secret text);
CREATE TABLE a_posts (id bigint PRIMARY KEY, author uuid REFERENCES a_users, body text);
SELECT gdpr.register_subject('a_users', 'id', kind => 'author');
SELECT gdpr.register_table('a_posts', kind => 'author');
SELECT gdpr.classify_column('a_users', 'secret', 'secret');
SET session_replication_role = replica; TRUNCATE gdpr.audit_log; RESET session_replication_role;

INSERT INTO a_users VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'x@example.com', 'token');
INSERT INTO a_posts SELECT g, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'post ' || g FROM generate_series(1, 50) g;
UPDATE a_posts SET body = body || '!' WHERE id <= 10;
DELETE FROM a_posts WHERE id > 40;

SELECT is((SELECT count(*)::int FROM gdpr.audit_log WHERE event = 'INSERT' AND table_name = 'public.a_posts'), 50,
          'one INSERT event per row');
SELECT is((SELECT count(*)::int FROM gdpr.audit_log WHERE event = 'UPDATE'), 10, 'one UPDATE event per row');
SELECT is((SELECT count(*)::int FROM gdpr.audit_log WHERE event = 'DELETE'), 10, 'one DELETE event per row');
SELECT is((SELECT count(DISTINCT subject_id)::int FROM gdpr.audit_log WHERE table_name = 'public.a_posts'), 1,
          'every post event names its author');
SELECT is((SELECT DISTINCT subject_id FROM gdpr.audit_log WHERE table_name = 'public.a_posts'),
          'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'uuid subjects are recorded by key');
SELECT is((SELECT count(*)::int FROM gdpr.audit_log WHERE new_values::text LIKE '%token%'), 0,
          'the secret column is never written');
SELECT is((SELECT changed_columns FROM gdpr.audit_log WHERE event = 'UPDATE' LIMIT 1), ARRAY['body'],
          'updates name the changed columns');
SELECT is((SELECT count(*)::int FROM gdpr.audit_log
            WHERE subject_kind = 'author' AND subject_id = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'), 71,
          'a subject''s history is one lookup');
SELECT ok((SELECT bool_and(txid = txid_current()) FROM gdpr.audit_log WHERE event <> 'MAP_REGISTER'),
          'events carry the writing transaction');
CREATE FUNCTION pg_temp.plan_of(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE line text; acc text := '';
BEGIN
    FOR line IN EXECUTE 'EXPLAIN ' || q LOOP acc := acc || line || E'\n'; END LOOP;
    RETURN acc;
END $$;
SET LOCAL enable_seqscan = off;
SELECT matches(pg_temp.plan_of($$SELECT * FROM gdpr.audit_log WHERE subject_kind = 'author' AND subject_id = 'x'$$),
               'Index (Only )?Scan using audit_log\w*subject\w*_idx', 'the subject lookup has an index');

SELECT * FROM finish();
ROLLBACK;
