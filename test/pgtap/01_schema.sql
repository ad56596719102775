-- The extension's objects, privileges and dump configuration.
BEGIN;
SELECT plan(31);

SELECT has_schema('gdpr');
SELECT has_table('gdpr', t, 'table gdpr.' || t) FROM unnest(ARRAY['subject_kind', 'registered_table',
    'subject_path', 'path_step', 'column_class', 'audit_log']) t;
SELECT has_view('gdpr', 'map', 'view gdpr.map');
SELECT has_view('gdpr', 'coverage_gaps', 'view gdpr.coverage_gaps');
SELECT has_role('gdpr_admin');
SELECT has_role('gdpr_auditor');
SELECT function_lang_is('gdpr', 'audit_row', 'c', 'the row audit trigger is C');
SELECT function_lang_is('gdpr', 'audit_truncate', 'c', 'the TRUNCATE audit trigger is C');
SELECT function_returns('gdpr', 'log_event', ARRAY['text', 'text', 'boolean', 'jsonb', 'text', 'text'], 'bigint');
SELECT set_eq(
    $$SELECT c.relname::text FROM pg_extension e, unnest(e.extconfig) cfg JOIN pg_class c ON c.oid = cfg
       WHERE e.extname = 'gdpr'$$,
    ARRAY['subject_kind', 'registered_table', 'subject_path', 'path_step', 'column_class', 'derived_view',
          'audit_log_event_id_seq', 'secret', 'legal_hold', 'legal_hold_hold_id_seq',
          'restriction', 'erasure_request', 'erasure_request_request_id_seq', 'erasure',
          'purpose', 'consent', 'consent_consent_id_seq', 'objection', 'objection_objection_id_seq',
          'consent_requirement', 'privacy_policy', 'policy_acceptance', 'request', 'request_request_id_seq',
          'breach', 'breach_breach_id_seq', 'processor', 'audit_log_default', 'retention_policy',
          'retention_history', 'retention_history_run_id_seq', 'audit_seal', 'audit_checkpoint',
          'database_identity', 'ledger'],
    'the map, the trail and the ledger''s bookkeeping are dumped by pg_dump');
SELECT ok(NOT has_table_privilege('public', 'gdpr.audit_log', 'SELECT'), 'PUBLIC cannot read the trail');
SELECT ok(NOT has_table_privilege('public', 'gdpr.audit_log', 'INSERT'), 'PUBLIC cannot write the trail');
SELECT ok(has_table_privilege('gdpr_auditor', 'gdpr.audit_log', 'SELECT'), 'gdpr_auditor reads the trail');
SELECT ok(NOT has_table_privilege('gdpr_auditor', 'gdpr.audit_log', 'UPDATE'), 'gdpr_auditor cannot change the trail');
SELECT ok(NOT has_function_privilege('public', 'gdpr.register_table(regclass, name, text, text, text[], text)', 'EXECUTE'),
          'PUBLIC cannot change the map');
SELECT ok(has_function_privilege('gdpr_admin', 'gdpr.register_table(regclass, name, text, text, text[], text)', 'EXECUTE'),
          'gdpr_admin changes the map');
SELECT ok(NOT has_table_privilege('gdpr_admin', 'gdpr.secret', 'SELECT'), 'nobody but the owner reads the pseudonym key');
SELECT ok(NOT has_function_privilege('public', 'gdpr._pseudonym(text)', 'EXECUTE'), 'PUBLIC cannot compute pseudonyms');
SELECT has_view('gdpr', 'event_queue', 'view gdpr.event_queue');
SELECT has_column('gdpr', 'registered_table', 'read_audit', 'a registered table says whether its reads are audited');
SELECT ok(NOT has_function_privilege('public', 'gdpr.set_read_audit(regclass, boolean)', 'EXECUTE'),
          'PUBLIC cannot choose which reads are audited');
SELECT ok(has_function_privilege('gdpr_admin', 'gdpr.set_read_audit(regclass, boolean)', 'EXECUTE'),
          'gdpr_admin chooses which reads are audited');
SELECT ok(NOT has_function_privilege('public', 'gdpr_access_log(text, text, timestamptz)', 'EXECUTE'),
          'PUBLIC cannot read who read a person''s data');
SELECT ok(has_function_privilege('gdpr_auditor', 'gdpr_access_log(bigint, text, timestamptz)', 'EXECUTE'),
          'gdpr_auditor reads who read a person''s data');
SELECT is((SELECT count(*)::int FROM pg_event_trigger WHERE evtname LIKE 'gdpr%'), 2, 'two event triggers keep the map true');
SELECT is_empty($$SELECT p.oid FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                   WHERE n.nspname = 'gdpr' AND p.prosecdef
                     AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%')$$,
                'every SECURITY DEFINER function pins search_path');

SELECT * FROM finish();
ROLLBACK;
