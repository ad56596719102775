-- Registering subjects and tables, and the map that results.
\set SHOW_CONTEXT never
SET search_path = shop, public;
CALL reset_trail();

SELECT gdpr.register_subject('customer', 'id');
SELECT gdpr.register_table('orders');
SELECT gdpr.register_table('order_item');                     -- two hops
SELECT gdpr.register_table('address');                        -- the subject row points to it
SELECT gdpr.register_table('rental');
SELECT gdpr.register_table('payment', on_erase => 'anonymize'); -- direct key beats payment -> rental
SELECT gdpr.register_table('visit');                          -- keys only on partitions
SELECT gdpr.register_table('billing.invoice', on_erase => 'anonymize');
SELECT gdpr.register_table('billing.invoice_line');           -- composite key, other schema

SELECT gdpr.classify_column('customer', 'email', 'contact');
SELECT gdpr.classify_column('customer', 'full_name', 'identity');
SELECT gdpr.classify_column('customer', 'password_hash', 'secret');
SELECT gdpr.classify_column('address', 'street', 'location', erase => 'redact');
SELECT gdpr.classify_column('billing.invoice', 'total', 'financial', erase => 'keep');
SELECT gdpr.describe_table('billing.invoice', purpose => 'invoicing', legal_basis => 'legal_obligation',
                           retention => '10 years', recipients => '{tax authority}');

SELECT table_name, subject_kind, is_subject_table, path_name, relation, path, hops, on_erase
  FROM gdpr.map ORDER BY table_name::text, path_name;
SELECT table_name, columns FROM gdpr.map WHERE columns IS NOT NULL ORDER BY table_name::text;
SELECT table_name, purpose, legal_basis, retention, recipients FROM gdpr.map
 WHERE purpose IS NOT NULL;

-- Default erasure strategies follow the column: unique -> pseudonym, nullable -> null.
SELECT column_name, category, erase FROM gdpr.column_class ORDER BY relid::text, column_name;

-- Reclassifying replaces the classification.
SELECT gdpr.classify_column('customer', 'full_name', 'identity', erase => 'fake');
SELECT erase FROM gdpr.column_class WHERE relid = 'customer'::regclass AND column_name = 'full_name';

-- The map's own history is in the trail.
SELECT event, table_name, detail FROM trail;

-- What is not covered yet.
SELECT * FROM gdpr.coverage_gaps ORDER BY table_name::text, column_name;
