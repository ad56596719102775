-- Bad input: clear errors, and nothing half-registered.
\set SHOW_CONTEXT never
SET search_path = shop, public;
\set VERBOSITY default
CREATE TABLE nokey (a int, email text);
CREATE TABLE plain (id int PRIMARY KEY, customer_id bigint REFERENCES customer, geo point);
CREATE VIEW v AS SELECT 1 AS id;
SELECT count(*) AS map_rows_before FROM gdpr.registered_table \gset

SELECT gdpr.register_table(NULL);
SELECT gdpr.register_table('no_such_table');
SELECT gdpr.register_table('nokey');
SELECT gdpr.register_table('v');
SELECT gdpr.register_table('visit_2025');
SELECT gdpr.register_table('customer');
SELECT gdpr.register_table('plain', kind => 'alien');
SELECT gdpr.register_table('plain', on_erase => 'shred');
SELECT gdpr.register_table('plain', subject_column => 'nope');
SELECT gdpr.register_table('plain', subject_column => 'customer_id', via => '{customer_id}');
SELECT gdpr.register_table('gdpr.audit_log');
SELECT gdpr.register_subject('plain', 'geo', kind => 'geo');
SELECT gdpr.register_subject('plain', 'customer_id', kind => 'dup');
SELECT gdpr.register_subject('plain', 'id');
SELECT gdpr.register_subject('plain', 'id', kind => NULL);
SELECT gdpr.register_subject('plain', NULL, kind => 'x');
SELECT gdpr.classify_column('plain', 'geo', 'location');
SELECT gdpr.classify_column('customer', 'nope', 'contact');
SELECT gdpr.classify_column('customer', 'email', 'gossip');
SELECT gdpr.classify_column('customer', 'email', NULL);
SELECT gdpr.classify_column('customer', 'email', 'contact', erase => 'burn');
SELECT gdpr.classify_column('customer', 'email', 'contact', erase => 'null');
SELECT gdpr.describe_table('customer', legal_basis => 'because');
SELECT gdpr.describe_table('plain', purpose => 'x');
SELECT gdpr.add_path('customer', 'again', subject_column => 'id', relation => 'friend');
SELECT gdpr.add_path('customer', NULL, subject_column => 'id');
SELECT gdpr.add_path('customer', 'both');
SELECT gdpr.unregister_table('plain');
SELECT gdpr.unregister_table('customer');
SELECT gdpr.log_event(NULL);
SELECT gdpr.log_event('');
SELECT gdpr.log_event('DROP TABLE x; --');
SELECT gdpr.log_event('OK', '1', success => NULL);
SELECT gdpr.log_event('OK', '1', kind => 'alien');

SELECT count(*) = :map_rows_before AS nothing_registered FROM gdpr.registered_table;
SELECT count(*) AS stray_triggers FROM pg_trigger WHERE tgname LIKE 'gdpr_audit%'
   AND tgrelid IN ('nokey'::regclass, 'plain'::regclass);

-- The triggers refuse to be used by hand.
CREATE TRIGGER wrong BEFORE INSERT ON plain FOR EACH ROW EXECUTE FUNCTION gdpr.audit_row();
INSERT INTO plain VALUES (1, NULL, NULL);
DROP TRIGGER wrong ON plain;
SELECT gdpr.audit_row();
