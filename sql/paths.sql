-- Ambiguous and explicit paths.
\set SHOW_CONTEXT never
SET search_path = shop, public;
CALL reset_trail();

-- Two foreign keys to customer: refused, with both paths named.
SELECT gdpr.register_table('message');
-- Naming the path by its column resolves it; the recipient is only concerned.
SELECT gdpr.register_table('message', via => '{sender_id}');
SELECT gdpr.add_path('message', 'recipient', via => '{recipient_id}', about_columns => '{recipient_email}');
SELECT path_name, relation, path FROM gdpr.map WHERE table_name = 'message'::regclass ORDER BY path_name;
SELECT about_columns FROM gdpr.subject_path WHERE relid = 'message'::regclass AND path_name = 'recipient';

-- A table with no path at all.
CREATE TABLE lonely (id int PRIMARY KEY, note text);
SELECT gdpr.register_table('lonely');
-- ... unless it names its subject column.
SELECT gdpr.register_table('lonely', subject_column => 'id');
SELECT path FROM gdpr.map WHERE table_name = 'lonely'::regclass;
SELECT gdpr.unregister_table('lonely');
SELECT count(*) FROM gdpr.map WHERE table_name = 'lonely'::regclass;
SELECT tgname FROM pg_trigger WHERE tgrelid = 'lonely'::regclass;

-- A via element that matches no foreign key.
SELECT gdpr.add_path('message', 'other', via => '{no_such_column}');
-- Paths can be dropped, but not the registration path.
SELECT gdpr.add_path('message', 'copy', subject_column => 'recipient_id');
SELECT gdpr.drop_path('message', 'copy');
SELECT gdpr.drop_path('message', 'main');
SELECT gdpr.drop_path('message', 'copy');

-- A second kind of subject beside the first: staff are not customers.
SELECT gdpr.register_subject('staff', 'id', kind => 'employee', on_erase => 'delete');
SELECT kind, relid, key_column, key_type, on_erase FROM gdpr.subject_kind ORDER BY kind;

-- Keys of type uuid and text.
CREATE TABLE member (id uuid PRIMARY KEY, nick text);
CREATE TABLE member_note (id int PRIMARY KEY, member_id uuid REFERENCES member, note text);
SELECT gdpr.register_subject('member', 'id', kind => 'member');
SELECT gdpr.register_table('member_note', kind => 'member');
CREATE TABLE account (login text PRIMARY KEY, name text);
CREATE TABLE account_log (id int PRIMARY KEY, login text REFERENCES account, what text);
SELECT gdpr.register_subject('account', 'login', kind => 'account');
SELECT gdpr.register_table('account_log', kind => 'account');

SELECT event, table_name, detail FROM trail WHERE event LIKE 'MAP%';
-- A path step written by hand must still pair every column with an operator.
INSERT INTO gdpr.path_step VALUES ('shop.orders', 'main', 9, '{customer_id}', 'shop.customer', '{id,email}',
                                   '{}', false, NULL);
