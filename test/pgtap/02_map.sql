-- The map: path derivation and its refusals, by SQLSTATE.
BEGIN;
SELECT plan(17);

CREATE TABLE t_users (id int PRIMARY KEY, email text);
CREATE TABLE t_orders (id int PRIMARY KEY, user_id int REFERENCES t_users);
CREATE TABLE t_items (order_id int REFERENCES t_orders, n int, PRIMARY KEY (order_id, n));
CREATE TABLE t_pay (id int PRIMARY KEY, user_id int REFERENCES t_users, order_id int REFERENCES t_orders);
CREATE TABLE t_msg (id int PRIMARY KEY, a int REFERENCES t_users, b int REFERENCES t_users);
CREATE TABLE t_free (id int PRIMARY KEY);
CREATE TABLE t_nopk (user_id int REFERENCES t_users);

SELECT lives_ok($$SELECT gdpr.register_subject('t_users', 'id', kind => 'tap')$$, 'register a subject');
SELECT throws_ok($$SELECT gdpr.register_subject('t_users', 'id', kind => 'tap2')$$, '42710', NULL,
                 'a table is registered once');
SELECT lives_ok($$SELECT gdpr.register_table('t_items', kind => 'tap')$$, 'two hops');
SELECT is((SELECT hops FROM gdpr.map WHERE table_name = 't_items'::regclass), 2, 't_items -> t_orders -> t_users');
SELECT lives_ok($$SELECT gdpr.register_table('t_pay', kind => 'tap')$$, 'a direct key and a longer path');
SELECT is((SELECT hops FROM gdpr.map WHERE table_name = 't_pay'::regclass), 1, 'the direct key wins');
SELECT throws_ok($$SELECT gdpr.register_table('t_msg', kind => 'tap')$$, 'GD101', NULL,
                 'two equally short paths are refused');
SELECT lives_ok($$SELECT gdpr.register_table('t_msg', kind => 'tap', via => '{b}')$$, 'via picks one');
SELECT is((SELECT path FROM gdpr.map WHERE table_name = 't_msg'::regclass), '(b) -> public.t_users(id)',
          'the path named by via');
SELECT throws_ok($$SELECT gdpr.register_table('t_free', kind => 'tap')$$, 'GD100', NULL,
                 'no path is refused');
SELECT throws_ok($$SELECT gdpr.register_table('t_nopk', kind => 'tap')$$, '55000', NULL,
                 'a table without primary key is refused');
SELECT throws_ok($$SELECT gdpr.register_table('t_orders', kind => 'nope')$$, '42704', NULL,
                 'an unknown kind is refused');
SELECT throws_ok($$SELECT gdpr.classify_column('t_users', 'email', 'gossip')$$, '22023', NULL,
                 'an unknown category is refused');
SELECT throws_ok($$SELECT gdpr.classify_column('t_users', 'nope', 'contact')$$, '42703', NULL,
                 'an unknown column is refused');
SELECT throws_ok($$SELECT gdpr.unregister_table('t_users')$$, '2BP01', NULL,
                 'a subject table in use stays registered');
SELECT is((SELECT count(*)::int FROM gdpr.registered_table WHERE kind = 'tap'), 4,
          'failed registrations left nothing behind');
SELECT set_eq($$SELECT tgrelid::regclass::text FROM pg_trigger WHERE tgname = 'gdpr_audit_row'
                  AND tgrelid::regclass::text LIKE 't\_%'$$,
              ARRAY['t_users', 't_items', 't_pay', 't_msg'], 'registered tables, and only they, carry the trigger');

SELECT * FROM finish();
ROLLBACK;
