-- gdpr_erase: refusals by SQLSTATE, all-or-nothing, and the order of deletes.
BEGIN;
SELECT plan(16);

CREATE TABLE e_person (id int PRIMARY KEY, email text UNIQUE, name varchar(4) NOT NULL, born date,
                       ip inet, tags text[], prefs jsonb);
CREATE TABLE e_order (id int PRIMARY KEY, person_id int REFERENCES e_person, status text);
CREATE TABLE e_line (order_id int REFERENCES e_order, n int, PRIMARY KEY (order_id, n));
SELECT gdpr.register_subject('e_person', 'id', kind => 'e');
SELECT gdpr.register_table('e_order', kind => 'e');
SELECT gdpr.register_table('e_line', kind => 'e');
SELECT gdpr.classify_column('e_person', 'email', 'contact');
SELECT gdpr.classify_column('e_person', 'name', 'identity', erase => 'redact');
SELECT gdpr.classify_column('e_person', 'born', 'identity', erase => 'mask');
SELECT gdpr.classify_column('e_person', 'ip', 'online_id', erase => 'mask');
SELECT gdpr.classify_column('e_person', 'tags', 'other', erase => 'redact');
SELECT gdpr.classify_column('e_person', 'prefs', 'other', erase => 'redact');
INSERT INTO e_person VALUES (1, 'one@example.com', 'Onea', '1980-05-17', '192.0.2.33', '{a,b}', '{"x": 1}'),
                            (2, 'two@example.com', 'Twoa', '1990-01-01', NULL, NULL, NULL);
INSERT INTO e_order VALUES (1, 1, 'open'), (2, 1, 'paid'), (3, 2, 'open');
INSERT INTO e_line VALUES (1, 1), (1, 2), (2, 1), (3, 1);

SELECT gdpr.add_legal_hold('e_order', 'status = ''open''', 'open orders');
SELECT throws_ok($$SELECT gdpr_erase(1, kind => 'e')$$, 'GD300', NULL, 'a legal hold refuses the erasure');
SELECT is((SELECT count(*)::int FROM e_line), 4, 'and nothing changed');
SELECT is(gdpr_can_erase(1, kind => 'e')->'holds'->0->>'rows', '1', 'gdpr_can_erase counts the held rows');
UPDATE e_order SET status = 'closed' WHERE id = 1;
SELECT is(gdpr_can_erase(1, kind => 'e')->'can_erase', 'true'::jsonb, 'no hold applies any more');

SELECT lives_ok($$SELECT gdpr_erase(1, kind => 'e')$$, 'the erasure runs');
SELECT is((SELECT count(*)::int FROM e_line WHERE order_id IN (1, 2)), 0, 'children deleted before their parents');
SELECT is((SELECT count(*)::int FROM e_line), 1, 'other people''s rows stay');
SELECT results_eq($$SELECT name::text, born, host(ip), tags, prefs FROM e_person WHERE id = 1$$,
                  $$VALUES ('[era'::text, date '1980-01-01', '192.0.2.0', '{}'::text[], '{}'::jsonb)$$,
                  'strategies respect the type: varchar(4), date, inet, arrays, jsonb');
SELECT matches((SELECT email FROM e_person WHERE id = 1), '^erased-[0-9a-f]{16}@invalid$', 'a unique pseudonym');
SELECT is(gdpr_erase(1, kind => 'e')->>'status', 'already_erased', 'erasing twice is a clear report');
SELECT throws_ok($$INSERT INTO e_order VALUES (9, 1, 'new')$$, 'GD302', NULL, 'nothing new for an erased subject');

SELECT gdpr_restrict(2, 'contested', kind => 'e');
SELECT throws_ok($$UPDATE e_order SET status = 'x' WHERE id = 3$$, 'GD301', NULL, 'a restricted subject''s rows do not change');
SELECT is((SELECT count(*)::int FROM e_order WHERE person_id = 2), 1, 'but can be read');

SELECT throws_ok($$SELECT gdpr_erase(99, kind => 'e')$$, 'GD200', NULL, 'an unknown subject');
SELECT throws_ok($$SELECT gdpr.add_legal_hold('e_order', 'status = ''a''); DELETE FROM e_order; --', 'x')$$,
                 '42601', NULL, 'a condition cannot carry a statement');

-- Foreign keys in a cycle have no order in which to delete.
SELECT gdpr.drop_legal_hold(hold_id) FROM gdpr.legal_hold WHERE relid = 'e_order'::regclass;
CREATE TABLE e_a (id int PRIMARY KEY, person_id int REFERENCES e_person, b_id int);
CREATE TABLE e_b (id int PRIMARY KEY, a_id int REFERENCES e_a);
ALTER TABLE e_a ADD FOREIGN KEY (b_id) REFERENCES e_b;
SELECT gdpr.register_table('e_a', kind => 'e');
SELECT gdpr.register_table('e_b', kind => 'e');
SELECT throws_ok($$SELECT gdpr_erase(2, kind => 'e')$$, 'GD303', NULL, 'a cycle is refused before anything changes');

SELECT * FROM finish();
ROLLBACK;
