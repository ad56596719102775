------------------------------------------------------------------------------------------------
-- Privileges
------------------------------------------------------------------------------------------------

-- The map is metadata, like the catalogs: anyone may read it.  Only gdpr_admin changes it.
REVOKE ALL ON ALL TABLES IN SCHEMA gdpr FROM PUBLIC;
GRANT SELECT ON gdpr.subject_kind, gdpr.registered_table, gdpr.subject_path, gdpr.path_step,
                gdpr.column_class, gdpr.derived_view, gdpr.map, gdpr.coverage_gaps, gdpr._fk_edge TO PUBLIC;
GRANT INSERT, UPDATE, DELETE ON gdpr.subject_kind, gdpr.registered_table, gdpr.subject_path,
                               gdpr.path_step, gdpr.column_class, gdpr.derived_view TO gdpr_admin;

-- The audit trail is written only by the extension's C code, which switches to the owner of the
-- table for the insert; applications read it only through gdpr_auditor.
GRANT SELECT ON gdpr.audit_log, gdpr.audit_seal, gdpr.audit_checkpoint, gdpr.audit_seal_state,
                gdpr.seal_lag TO gdpr_auditor;

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA gdpr FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION public.gdpr_export(text, text, boolean, bigint), public.gdpr_export(bigint, text, boolean, bigint),
                           public.gdpr_export(uuid, text, boolean, bigint),
                           public.gdpr_export_rows(text, text, boolean),
                           public.gdpr_export_rows(bigint, text, boolean),
                           public.gdpr_export_rows(uuid, text, boolean)
    FROM PUBLIC;
-- Exports reveal everything about a person and their history: gdpr_admin decides who runs them.
REVOKE EXECUTE ON FUNCTION public.gdpr_enforce_retention(boolean, int),
                           public.gdpr_grant_consent(text, text, text, jsonb, text),
                           public.gdpr_grant_consent(bigint, text, text, jsonb, text),
                           public.gdpr_grant_consent(uuid, text, text, jsonb, text),
                           public.gdpr_withdraw_consent(text, text, text),
                           public.gdpr_withdraw_consent(bigint, text, text),
                           public.gdpr_withdraw_consent(uuid, text, text),
                           public.gdpr_object(text, text, jsonb, text), public.gdpr_object(bigint, text, jsonb, text),
                           public.gdpr_object(uuid, text, jsonb, text),
                           public.gdpr_accept_policy(text, text, text), public.gdpr_accept_policy(bigint, text, text),
                           public.gdpr_accept_policy(uuid, text, text),
                           public.gdpr_policy_status(text, text), public.gdpr_policy_status(bigint, text),
                           public.gdpr_policy_status(uuid, text),
                           public.gdpr_breach_subjects(timestamptz, timestamptz, text, text)
    FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION public.gdpr_erase(text, boolean, text, bigint), public.gdpr_erase(bigint, boolean, text, bigint),
                           public.gdpr_erase(uuid, boolean, text, bigint), public.gdpr_can_erase(text, text),
                           public.gdpr_can_erase(bigint, text), public.gdpr_can_erase(uuid, text),
                           public.gdpr_restrict(text, text, text), public.gdpr_unrestrict(text, text),
                           public.gdpr_request_erasure(text, interval, text),
                           public.gdpr_cancel_erasure(text, text),
                           public.gdpr_restrict(bigint, text, text), public.gdpr_unrestrict(bigint, text),
                           public.gdpr_request_erasure(bigint, interval, text),
                           public.gdpr_cancel_erasure(bigint, text),
                           public.gdpr_restrict(uuid, text, text), public.gdpr_unrestrict(uuid, text),
                           public.gdpr_request_erasure(uuid, interval, text),
                           public.gdpr_cancel_erasure(uuid, text)
    FROM PUBLIC;
REVOKE ALL ON gdpr.secret FROM PUBLIC;
-- Everyone may see which consents are active (as gdpr_has_consent tells), not from where or with
-- which detail.
GRANT SELECT (kind, subject_id, purpose, withdrawn_at) ON gdpr.consent TO PUBLIC;
GRANT SELECT ON gdpr.active_consent TO gdpr_admin, gdpr_auditor;
GRANT SELECT ON gdpr.consent, gdpr.objection, gdpr.policy_acceptance, gdpr.request, gdpr.breach,
                gdpr.open_requests, gdpr.breach_deadlines TO gdpr_admin, gdpr_auditor;
GRANT SELECT ON gdpr.purpose, gdpr.privacy_policy, gdpr.processor, gdpr.consent_requirement TO PUBLIC;
GRANT EXECUTE ON FUNCTION public.gdpr_has_consent(text, text, text), public.gdpr_has_consent(bigint, text, text),
                          public.gdpr_has_consent(uuid, text, text), public.gdpr_processing_record(text),
                          gdpr._in_eea(text), gdpr.consent_check()
    TO PUBLIC;
-- Which tables have holds, and their conditions, are no secret (retention batches run as the
-- table's owner read them); the reason (a litigation, a tax audit) is for gdpr_admin.
GRANT SELECT (hold_id, relid, condition, created_at) ON gdpr.legal_hold TO PUBLIC;
GRANT SELECT ON gdpr.legal_hold TO gdpr_admin;
GRANT INSERT, DELETE ON gdpr.legal_hold TO gdpr_admin;
GRANT SELECT, INSERT, UPDATE, DELETE ON gdpr.restriction, gdpr.erasure_request TO gdpr_admin;
-- Which subjects are restricted is no secret from the application (its writes are refused with
-- GD301); retention batches, run as the table's owner, read it to leave restricted rows alone.
GRANT SELECT (kind, subject_id, source) ON gdpr.restriction TO PUBLIC;
GRANT SELECT ON gdpr.erasure TO gdpr_admin, gdpr_auditor;
GRANT EXECUTE ON FUNCTION public.gdpr_erase(text, boolean, text, bigint), public.gdpr_erase(bigint, boolean, text, bigint),
                          public.gdpr_erase(uuid, boolean, text, bigint), public.gdpr_can_erase(text, text),
                          public.gdpr_can_erase(bigint, text), public.gdpr_can_erase(uuid, text),
                          public.gdpr_restrict(text, text, text), public.gdpr_unrestrict(text, text),
                          public.gdpr_request_erasure(text, interval, text),
                          public.gdpr_cancel_erasure(text, text),
                          public.gdpr_restrict(bigint, text, text), public.gdpr_unrestrict(bigint, text),
                          public.gdpr_request_erasure(bigint, interval, text),
                          public.gdpr_cancel_erasure(bigint, text),
                          public.gdpr_restrict(uuid, text, text), public.gdpr_unrestrict(uuid, text),
                          public.gdpr_request_erasure(uuid, interval, text),
                          public.gdpr_cancel_erasure(uuid, text),
                          gdpr.run_due_erasures(name), gdpr.add_legal_hold(pg_catalog.regclass, text, text),
                          gdpr.drop_legal_hold(int), gdpr._check_condition(pg_catalog.regclass, text),
                          gdpr._pseudonym(text), gdpr._subject_key(text, text, boolean),
                          gdpr.add_purpose(text, text, text), gdpr._purpose(text), gdpr._actor(),
                          gdpr._check_legal_basis(text),
                          public.gdpr_grant_consent(text, text, text, jsonb, text),
                          public.gdpr_grant_consent(bigint, text, text, jsonb, text),
                          public.gdpr_grant_consent(uuid, text, text, jsonb, text),
                          public.gdpr_withdraw_consent(text, text, text),
                          public.gdpr_withdraw_consent(bigint, text, text),
                          public.gdpr_withdraw_consent(uuid, text, text),
                          public.gdpr_object(text, text, jsonb, text), public.gdpr_object(bigint, text, jsonb, text),
                          public.gdpr_object(uuid, text, jsonb, text),
                          gdpr.require_consent(pg_catalog.regclass, name, text, text),
                          gdpr.add_policy_version(text, timestamptz, text, text),
                          public.gdpr_accept_policy(text, text, text), public.gdpr_accept_policy(bigint, text, text),
                          public.gdpr_accept_policy(uuid, text, text),
                          public.gdpr_policy_status(text, text), public.gdpr_policy_status(bigint, text),
                          public.gdpr_policy_status(uuid, text),
                          gdpr.open_request(text, text, timestamptz, jsonb, text),
                          gdpr.open_request(bigint, text, timestamptz, jsonb, text),
                          gdpr.open_request(uuid, text, timestamptz, jsonb, text),
                          gdpr._open_request(bigint), gdpr.verify_request(bigint, text, text),
                          gdpr.extend_request(bigint, text, interval), gdpr.close_request(bigint, text, text),
                          gdpr._complete_request(bigint, text, text, text[], text),
                          gdpr.record_breach(timestamptz, text, timestamptz, timestamptz, text[], int, text, text),
                          gdpr.notify_breach(bigint, timestamptz, timestamptz),
                          public.gdpr_breach_subjects(timestamptz, timestamptz, text, text),
                          gdpr.suspicious_logins(int, interval),
                          gdpr.add_processor(text, text, text, text, boolean, text[]),
                          gdpr.set_retention(pg_catalog.regclass, name, interval, text, text),
                          gdpr.drop_retention(pg_catalog.regclass),
                          gdpr._retention_batch(pg_catalog.regclass, int, boolean),
                          gdpr.create_audit_partitions(int), gdpr.purge_audit_log(int),
                          gdpr.seal_audit(int),
                          public.gdpr_enforce_retention(boolean, int)
    TO gdpr_admin;
GRANT SELECT ON gdpr.retention_policy TO PUBLIC;
GRANT INSERT, DELETE ON gdpr.retention_policy TO gdpr_admin;
-- a policy's progress is its passes' to record
GRANT UPDATE (relid, time_column, keep, action, condition) ON gdpr.retention_policy TO gdpr_admin;
GRANT SELECT ON gdpr.retention_history TO gdpr_admin, gdpr_auditor;
GRANT INSERT, DELETE ON gdpr.retention_history TO gdpr_admin;
GRANT EXECUTE ON FUNCTION public.gdpr_export(text, text, boolean, bigint), public.gdpr_export(bigint, text, boolean, bigint),
                          public.gdpr_export(uuid, text, boolean, bigint),
                          public.gdpr_export_rows(text, text, boolean),
                          public.gdpr_export_rows(bigint, text, boolean),
                          public.gdpr_export_rows(uuid, text, boolean),
                          gdpr.export_plan(text, text), gdpr._export_sql(pg_catalog.regclass),
                          gdpr._has_index(pg_catalog.regclass, name[])
    TO gdpr_admin;
-- What every role needs:
-- * log_event: applications of any role record what the database cannot see (logins, page
--   views), under names that cannot pose as the extension's own.  Each event is bounded
--   (gdpr.max_event_detail, 1 kB names): a role can add events, not fill the disk with one.
-- * _log_ddl_event: the event triggers record DDL, and capture switched off, as the role that
--   ran it; refused outside an event trigger.
-- * audit_row and audit_truncate: CREATE TABLE ... PARTITION OF clones the triggers of a
--   registered table, which checks EXECUTE for whoever creates the partition.  Both refuse a
--   table outside the map, and run nothing of the caller's with more rights than it has.
-- * what the event triggers call as the role that ran the DDL: _map_changed (only for a table the
--   caller owns), _attach_truncate and _capture_always (create and enable the audit triggers, as
--   the caller), _guard_capture, _capture_gaps and _capture_off_allowed (read), _forget_dropped
--   (works only inside a sql_drop event trigger), and read-only helpers over the public map.
-- The event trigger function itself needs no EXECUTE (PostgreSQL does not check it); what it runs
-- does, as the role whose DDL fired it.
GRANT EXECUTE ON FUNCTION gdpr.log_event(text, text, boolean, jsonb, text, text),
                          gdpr.log_event(text, bigint, boolean, jsonb, text, text),
                          gdpr.log_event(text, uuid, boolean, jsonb, text, text),
                          gdpr.audit_row(), gdpr.audit_truncate(),
                          gdpr._qualified(pg_catalog.regclass),
                          gdpr._path_text(pg_catalog.regclass, jsonb),
                          gdpr._registered_root(oid), gdpr._grant_targets(pg_ddl_command),
                          gdpr._enables_capture(pg_ddl_command),
                          gdpr._map_changed(pg_catalog.regclass),
                          gdpr._attach_truncate(pg_catalog.regclass), gdpr._forget_dropped(),
                          gdpr._log_ddl_event(text, jsonb, text, text),
                          gdpr._capture_always(pg_catalog.regclass),
                          gdpr._capture_gaps(pg_catalog.regclass),
                          gdpr._guard_capture(pg_catalog.regclass, text, text),
                          gdpr._capture_off_allowed(),
                          gdpr._on_ddl_command_end(text), gdpr._on_sql_drop(text)
    TO PUBLIC;
GRANT EXECUTE ON FUNCTION gdpr.register_subject(pg_catalog.regclass, name, text, text),
                          gdpr.register_table(pg_catalog.regclass, name, text, text, text[], text),
                          gdpr.add_path(pg_catalog.regclass, text, text[], name, text, name[], text),
                          gdpr._check_path_condition(pg_catalog.regclass, text),
                          gdpr._log_event(text, text, boolean, jsonb, text, text),
                          gdpr._ledger_note(text, text, text, text),
                          gdpr._erased_pseudonym(text, text),
                          gdpr.repair_capture(pg_catalog.regclass),
                          gdpr.drop_path(pg_catalog.regclass, text),
                          gdpr.classify_column(pg_catalog.regclass, name, text, text),
                          gdpr.register_derived(pg_catalog.regclass),
                          gdpr.unregister_derived(pg_catalog.regclass),
                          gdpr.describe_table(pg_catalog.regclass, text, text, text, text[], boolean),
                          gdpr.unregister_table(pg_catalog.regclass),
                          gdpr._check_table(pg_catalog.regclass),
                          gdpr._check_column(pg_catalog.regclass, name),
                          gdpr._check_on_erase(text), gdpr._attach(pg_catalog.regclass),
                          gdpr._citus_triggers(boolean), gdpr._citus_table(pg_catalog.regclass),
                          gdpr._citus_distributed(pg_catalog.regclass), gdpr._citus_copied(pg_catalog.regclass),
                          gdpr._citus_kind(pg_catalog.regclass),
                          gdpr._retention_targets(pg_catalog.regclass),
                          gdpr._detach(pg_catalog.regclass),
                          gdpr._insert_path(pg_catalog.regclass, text, text, name, jsonb, name[], text),
                          gdpr._log_map(text, pg_catalog.regclass, jsonb),
                          gdpr._resolve_path(pg_catalog.regclass, text, text[]),
                          gdpr._shortest_paths(pg_catalog.regclass, pg_catalog.regclass, oid[]),
                          gdpr._default_erase(pg_catalog.regclass, name, text),
                          gdpr._forget(oid, text, text)
    TO gdpr_admin;
-- The cluster bus (citus.sql) is written and read only as the extension's owner, by the C code of
-- _map_changed and of the capture: _cluster_sync, _cluster_map, _cluster_apply,
-- _cluster_apply_map, _cluster_catch_up, _cluster_forget and _workers_hold_subject have no grant.
-- Which node this is, the rights functions ask as their caller, and so does an erasure's signal
-- on the workers (gdpr.cluster_signal, which gdpr_admin may insert into, signed).
GRANT EXECUTE ON FUNCTION gdpr._citus_node(), gdpr._restricted_by_hand(text, text) TO PUBLIC;

-- Verification and digests read the whole trail: auditors and gdpr_admin.
REVOKE EXECUTE ON FUNCTION public.gdpr_verify_audit(jsonb), public.gdpr_audit_digest() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.gdpr_verify_audit(jsonb), public.gdpr_audit_digest()
    TO gdpr_admin, gdpr_auditor;

-- The erasure ledger: gdpr_admin verifies and replays it; applications see nothing of it.
REVOKE EXECUTE ON FUNCTION public.gdpr_replay_erasures(boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.gdpr_replay_erasures(boolean), gdpr.verify_ledger(),
                          gdpr.ledger_entries(), gdpr.ledger_identity(), gdpr._ledger_read(uuid),
                          gdpr._ledger_keys(text, text[]), gdpr._ledger_adopt(),
                          gdpr._erase_replay(text, text, uuid, bigint, oid), gdpr._ledger_missing(),
                          gdpr._replay_record(text, text, text, text, text, uuid, bigint),
                          gdpr._system_identifier(), gdpr.new_database_identity(),
                          gdpr._ledger_check(uuid, text, text, text, text)
    TO gdpr_admin;
GRANT SELECT ON gdpr.database_identity, gdpr.ledger TO gdpr_admin, gdpr_auditor;

-- Read auditing: gdpr_admin chooses the tables; who read a person's data is for gdpr_admin and
-- auditors, like the trail.
REVOKE EXECUTE ON FUNCTION public.gdpr_access_log(text, text, timestamptz),
                           public.gdpr_access_log(bigint, text, timestamptz),
                           public.gdpr_access_log(uuid, text, timestamptz)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.gdpr_access_log(text, text, timestamptz),
                          public.gdpr_access_log(bigint, text, timestamptz),
                          public.gdpr_access_log(uuid, text, timestamptz)
    TO gdpr_admin, gdpr_auditor;
GRANT EXECUTE ON FUNCTION gdpr.set_read_audit(pg_catalog.regclass, boolean), gdpr._check_read_audit()
    TO gdpr_admin;
GRANT EXECUTE ON FUNCTION gdpr._queue_stats() TO gdpr_admin, gdpr_auditor;
-- reading a READ row's statements needs nothing but the row
GRANT EXECUTE ON FUNCTION gdpr._read_positions(jsonb), gdpr._read_names(jsonb, int) TO PUBLIC;
GRANT SELECT ON gdpr.event_queue TO gdpr_admin, gdpr_auditor;
