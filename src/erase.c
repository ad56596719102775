/*-------------------------------------------------------------------------
 *
 * erase.c
 *		The right to erasure (Art. 17) and its checks: gdpr_erase,
 *		gdpr_can_erase and legal holds.
 *
 * An erasure is planned completely before anything changes: the subject's
 * row is locked (FOR UPDATE: a concurrent insert referencing it waits, a
 * second erasure waits and then finds the subject erased), and everything
 * after is read on a snapshot taken once the lock is held.  Legal holds are
 * checked, the tables are put in an order where children come before their
 * parents, every foreign key that would stop a DELETE, or cascade into rows
 * the law says to keep, is found, and every row to change is identified by
 * primary key.  Only then are those rows deleted or anonymized, each with
 * plain DML so that foreign keys, their actions and triggers behave as for
 * any other statement; then the result is checked (verify_erasure) before
 * anything is recorded.  Everything happens in the caller's transaction: it
 * completes or changes nothing.
 *
 * A dry run executes the same statements in a subtransaction and rolls it
 * back, so its counts are exactly what an erasure would do.
 *
 * Afterwards the audit trail keeps the subject's events but loses their
 * values, and the subject's key there becomes its keyed pseudonym.  The
 * erasure itself is remembered by pseudonym only (gdpr.erasure).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/sysattr.h"
#include "access/table.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "gdpr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/resowner.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"

PG_FUNCTION_INFO_V1(gdpr_erase);
PG_FUNCTION_INFO_V1(gdpr_can_erase);
PG_FUNCTION_INFO_V1(gdpr_erased_pseudonym);
PG_FUNCTION_INFO_V1(gdpr_erase_replay);

/* The ledger entry an erasure replays (ledger.c), in a restored copy that lacked it */
typedef struct LedgerReplay
{
	const char *entry_id;
	int64		seq;
	const char *line;			/* the ledger's line, verified */
} LedgerReplay;

/*
 * The registered tables of the erasure running now (NIL: none).  Writes to
 * them are exempt from restrictions (the subject is restricted while its
 * erasure is pending, and marked erased at its end); writes to any other
 * table, by an application trigger say, are not.
 */
static List *erasing_relids = NIL;

/*
 * The subject and the planned tables (EraseTable *) of the erasure running
 * now: every row its statements change must be the subject's, or planned.
 */
static const GdprSubject *erasing_subject = NULL;
static List *erasing_tables = NIL;
static List *erasing_unlinked = NIL;	/* Unlinked * */

/* One registered table in an erasure */
typedef struct EraseTable
{
	Oid			relid;
	char	   *name;			/* schema-qualified */
	char	   *from;			/* as statements name it (ONLY, see GdprTableMap) */
	GdprTableMap *map;
	char	   *pk;				/* "t.a, t.b" */
	char	   *pk_r;			/* "r.a, r.b" */
	char	   *pk_json;		/* the key of row t as a JSON object */
	char	   *owned;			/* query of the subject's rows' keys (owner paths), or NULL */
	char	   *owned_from;		/* with one owner path: its joined tables ("" for none) */
	char	   *owned_where;	/* with one owner path: the condition that selects the rows */
	char	   *concerned;		/* query of rows only about the subject, or NULL */
	char	   *shared;			/* condition: row t is also used by someone else, or NULL */
	char	   *route;			/* " AND <owned_where>" for a Citus distributed table, whose
								 * statements it routes to the subject's shard, or "" */
	bool		delete;			/* delete the owned rows, else rewrite them */
	char	   *set;			/* SET list that anonymizes an owned row, or NULL */
	char	   *concerned_set;	/* SET list for the columns about the subject, or NULL */
	char	   *set_check;		/* condition: row t does not hold what set makes, or NULL */
	char	   *concerned_check;	/* the same for concerned_set */
	char	   *pk_types;		/* "a integer, b text": the key as a record definition */
	List	   *changed_columns;	/* char *: the columns the anonymizing statements set */
	int64		deleted;
	int64		anonymized;
	int64		concerned_rows;
	List	   *shared_keys;	/* jsonb keys of rows left alone because shared */
	char	   *keys;			/* jsonb array of the keys of the subject's rows erased */
	char	   *concerned_keys; /* the same for the rows only about the subject */
	Jsonb	   *planned;		/* both as one jsonb array, made when first needed */
	char	   *lo_columns;		/* "t.a, t.b": large object references the erasure removes */
	char	   *lo_oids;		/* the objects the planned rows reference, an oid[] literal */
	int64		lo_removed;
	int64		lo_left;		/* referenced objects another role owns */
} EraseTable;

/*
 * Rows of another registered table whose pointer to rows the erasure
 * deletes a foreign key sets to NULL or to its default: changed by the
 * erasure, though not the subject's, and so part of its plan and report.
 */
typedef struct Unlinked
{
	Oid			relid;			/* the referencing table's root */
	char	   *table;
	char	   *conname;
	int64		rows;
	Jsonb	   *keys;			/* their primary keys, a jsonb array */
} Unlinked;

/*
 * What an erasure did to the sealed trail: how many sealed events it
 * redacted, and the latest retention among them, which its own ERASE event
 * must reach (verification looks for it as long as they are in the chain).
 */
typedef struct Redacted
{
	int64		events;
	TimestampTz keep_until;
	int			workers;		/* on a Citus coordinator: the workers that scrubbed too, else -1 */
} Redacted;

static void require_read_committed(const char *function);
static Jsonb *erase_subject(const GdprSubject *subject, bool dry_run, const int64 *request_id,
							 const LedgerReplay *replay);
static Jsonb *with_ledger(Jsonb *report, const char *kind, const char *pseudonym, const char *entry_id,
						 const LedgerReplay *replay);
static ErrorData *try_erasure(const GdprSubject *subject, Jsonb **plan);
static bool subject_erased(const GdprSubject *subject, Jsonb **record);
static bool lock_subject(const GdprSubject *subject);
static List *holds(const GdprSubject *subject);
static int64 held_rows(const GdprTableMap *map, const char *condition, const GdprSubject *subject);
static List *plan_tables(const GdprSubject *subject, bool keep_subject_row);
static char *lo_columns(const EraseTable *t, Relation rel);
static void plan_large_objects(EraseTable *t, const GdprSubject *subject);
static void remove_large_objects(List *tables);
static List *order_tables(List *tables);
static List *check_foreign_keys(List *tables, const GdprSubject *subject);
static void check_updated_keys(List *tables, const GdprSubject *subject);
static Unlinked *unlink_rows(Oid relid, const char *from, const char *conname, const char *fkcols,
							 const char *refs, const char *planned, const GdprSubject *subject);
static void check_rows_deleted(List *tables, List **unlinked, const GdprSubject *subject, Oid relid,
							   const char *name, const char *from_name, const char *where,
							   int depth);
static int64 dry_run_erasure(List *tables, List *unlinked, List **refreshed,
							 const GdprSubject *subject, const char *pseudonym,
							 MemoryContext cxt, ResourceOwner owner, Redacted *redacted);
static int64 execute_erasure(List *tables, List *unlinked, List **refreshed,
							 const GdprSubject *subject, const char *pseudonym,
							 Redacted *redacted);
static void plan_rows(List *tables, const GdprSubject *subject, bool leftovers);
static bool nothing_planned(List *tables);
static char *rows_keys(const EraseTable *t, const char *where, const GdprSubject *subject);
static char *planned_rows(const EraseTable *t, const char *keys);
static void execute_tables(List *tables, const GdprSubject *subject);
static char *cluster_erase_body(const GdprSubject *subject, List *tables, List *unlinked);
static char *cluster_scrub_body(const GdprSubject *subject);
static void cluster_forget(void);
static void cluster_restrictions(const char *kind, const char *key);
static void cluster_xact_end(XactEvent event, void *arg);
static void cluster_subxact_end(SubXactEvent event, SubTransactionId mySubid,
								SubTransactionId parentSubid, void *arg);
static void execute_table(EraseTable *t, const GdprSubject *subject);
static void set_owned_join(EraseTable *t);
static char *owned_rows(const EraseTable *t);
static int64 scrub_audit(const GdprSubject *subject, const char *pseudonym, List *tables,
						 Redacted *redacted);
static List *scrub_latest(List *list, const char *sql, int nargs, Oid *argtypes, Datum *args);
static List *scrub(List *list, const char *sql, int nargs, Oid *argtypes, Datum *args);
static bool subject_in_trail(const GdprSubject *subject);
static void finish_erasure(const GdprSubject *subject, const char *pseudonym, bool keep_subject_row,
						   bool again, Jsonb *report, const int64 *request_id);
static void finish_bookkeeping(const GdprSubject *subject, const char *pseudonym,
							   bool keep_subject_row, bool again, Jsonb *report);
static Jsonb *report_jsonb(const char *status, const GdprSubject *subject, const char *pseudonym,
						  List *unlinked, List *refreshed,
						   List *tables, int64 scrubbed, const Redacted *redacted);
static Jsonb *holds_jsonb(List *held);
static List *materialized_views(List *tables, bool derived);
static List *refresh_derived(List *tables);
static void append_names(StringInfo buf, const char *key, List *names);
static int64 exec_count(const char *sql, const GdprSubject *subject, bool read_only);
static void verify_erasure(List *tables, const GdprSubject *subject);
static void refuse_unverified(const EraseTable *t, const GdprSubject *subject, int64 rows,
							  const char *what);
static void check_statements_apply(List *tables, const GdprSubject *subject);
static char *anonymize_set(EraseTable *t, Relation rel, const GdprSubject *subject,
						   List *only_columns, char **check);
static const char *strategy_of(const GdprTableMap *map, const char *column);
static char *pk_types(Relation rel);

/* A legal hold that applies to the subject */
typedef struct Held
{
	char	   *table;
	char	   *reason;
	int64		rows;
} Held;

/*
 * gdpr_erase(subject, dry_run boolean DEFAULT false, kind text DEFAULT NULL,
 *			  request_id bigint DEFAULT NULL)
 */
Datum
gdpr_erase(PG_FUNCTION_ARGS)
{
	bool		dry_run = !PG_ARGISNULL(1) && PG_GETARG_BOOL(1);
	char	   *kind = PG_ARGISNULL(2) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(2));
	MemoryContext callercxt = CurrentMemoryContext;
	GdprSubject *subject;
	Jsonb	   *report;

	require_read_committed("gdpr_erase");

	/*
	 * Row events a statement around this call has made are written when it
	 * ends, after the erasure's scrub: they would keep the subject's values.
	 */
	if (!dry_run && gdpr_capture_pending())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("gdpr_erase cannot run inside a statement that has changed audited rows"),
				 errdetail("The statement's row events are written to the audit trail when it ends, after the erasure would have scrubbed it."),
				 errhint("Erase in a statement of its own, not from a trigger of a statement that changes registered tables.")));
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	gdpr_own_reads_begin();
	gdpr_citus_check("gdpr_erase");
	subject = gdpr_resolve_subject(fcinfo, 0, kind, callercxt);
	report = erase_subject(subject, dry_run, PG_ARGISNULL(3) ? NULL : &(int64) {PG_GETARG_INT64(3)},
						   NULL);
	MemoryContextSwitchTo(callercxt);
	report = DatumGetJsonbPCopy(JsonbPGetDatum(report));
	gdpr_own_reads_end();
	SPI_finish();
	PG_RETURN_JSONB_P(report);
}

/*
 * gdpr._erase_replay(subject, kind, entry_id, seq): the erasure of a ledger
 * entry that this database (a restored copy) lacks, for
 * gdpr_replay_erasures.  As gdpr_erase, as the caller, except that legal
 * holds do not stop it (the erasure was decided and recorded then) and a
 * subject whose row the copy no longer has is erased from wherever else it
 * is named.  Recorded as ERASE_REPLAY, and as holding the entry.
 */
Datum
gdpr_erase_replay(PG_FUNCTION_ARGS)
{
	char	   *kind = text_to_cstring(PG_GETARG_TEXT_PP(1));
	LedgerReplay replay;
	MemoryContext callercxt = CurrentMemoryContext;
	GdprSubject *subject;
	Jsonb	   *report;

	Oid			as_role = PG_GETARG_OID(4);
	Oid			save_userid = InvalidOid;
	int			save_sec_context = 0;
	int			nest = -1;

	replay.entry_id = DatumGetCString(DirectFunctionCall1(uuid_out, PG_GETARG_DATUM(2)));
	replay.seq = PG_GETARG_INT64(3);
	require_read_committed("gdpr_replay_erasures");
	if (OidIsValid(as_role) && !superuser())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("only a superuser may replay an erasure as another role")));
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	gdpr_own_reads_begin();
	/* the worker's erasure runs the tables' triggers: with their owner's rights, never its own */
	if (OidIsValid(as_role))
		nest = gdpr_become_role(as_role, &save_userid, &save_sec_context);
	subject = gdpr_resolve_subject(fcinfo, 0, kind, callercxt);

	/*
	 * Only what the ledger says, once: an erasure without its legal holds
	 * is not for any caller to ask for.
	 */
	replay.line = gdpr_ledger_replayable(replay.entry_id, "erase", subject->kind,
										 gdpr_subject_pseudonym(subject->kind, subject->key_text));
	if (replay.line == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the erasure of subject %s of kind \"%s\" to replay is not an entry of the erasure ledger that this database lacks",
						subject->key_text, subject->kind),
				 errhint("See gdpr.ledger_entries(); gdpr_replay_erasures() replays what is missing.")));
	report = erase_subject(subject, false, NULL, &replay);
	if (nest >= 0)
		gdpr_leave_role(save_userid, save_sec_context, nest);
	MemoryContextSwitchTo(callercxt);
	report = DatumGetJsonbPCopy(JsonbPGetDatum(report));
	gdpr_own_reads_end();
	SPI_finish();
	PG_RETURN_JSONB_P(report);
}

/*
 * The erasure, or its dry run, of a resolved subject: the one planner that
 * gdpr_erase and gdpr_can_erase share.  Runs connected to SPI; the report
 * is made in the SPI context.  request_id: the request it completes, or
 * NULL; replay: the ledger entry it replays, or NULL.
 */
static Jsonb *
erase_subject(const GdprSubject *subject, bool dry_run, const int64 *request_id,
			  const LedgerReplay *replay)
{
	ResourceOwner callerowner = CurrentResourceOwner;
	MemoryContext spicxt = CurrentMemoryContext;
	char	   *pseudonym;
	Jsonb	   *record;
	Jsonb	   *report;
	List	   *held;
	List	   *tables;
	List	   *unlinked;
	List	   *refreshed = NIL;
	bool		keep_subject_row;
	bool		found;
	bool		erased;
	bool		cluster;
	bool		rights;
	int64		scrubbed = 0;
	Redacted	redacted = {0, 0, -1};
	ListCell   *lc;

	pseudonym = gdpr_subject_pseudonym(subject->kind, subject->key_text);
	cluster = gdpr_citus_cluster();
	/* what the erasure reads on the workers is its own, from its first statement there */
	rights = cluster && gdpr_read_audit_any();
	if (cluster)
		gdpr_citus_sequential();
	if (rights)
		(void) gdpr_citus_signal("rights", "{}");

	/*
	 * The lock comes first: a concurrent erasure of the same subject, and a
	 * writer referencing the subject's row, wait or are waited for here.
	 * Everything after is planned on a snapshot taken once the lock is
	 * held, so a row committed by a writer we waited for (an unpaid invoice
	 * a hold protects) is seen by the hold check, the foreign-key analysis
	 * and the statements alike.
	 */
	found = lock_subject(subject);
	PushActiveSnapshot(GetTransactionSnapshot());
	erased = subject_erased(subject, &record);
	if (!found && !erased && replay == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_GDPR_SUBJECT_NOT_FOUND),
				 errmsg("subject %s of kind \"%s\" does not exist", subject->key_text, subject->kind),
				 errhint("Check the key: there is nothing to erase.")));

	{
		Oid			argtypes[1] = {TEXTOID};
		Datum		args[1] = {CStringGetTextDatum(subject->kind)};
		bool		isnull;

		if (SPI_execute_with_args("SELECT on_erase = 'anonymize' FROM gdpr.subject_kind WHERE kind = $1",
								  1, argtypes, args, NULL, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "subject kind lookup failed");
		keep_subject_row = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	}

	/*
	 * A subject erased before is checked again: an erasure by an earlier
	 * version, or one a restored backup undid, can have left rows behind,
	 * and they are erased now.  With nothing left, the answer is the
	 * recorded erasure.
	 */
	tables = order_tables(plan_tables(subject, keep_subject_row));
	check_statements_apply(tables, subject);
	plan_rows(tables, subject, erased);
	if (erased && nothing_planned(tables) && !subject_in_trail(subject))
	{
		JsonbParseState *state = NULL;
		JsonbValue *v;

		pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
		gdpr_push_key(&state, "status");
		gdpr_push_string(&state, "already_erased");
		gdpr_push_key(&state, "erasure");
		gdpr_push_jsonb(&state, record);
		v = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
		/* the workers' part ends without a scrub: what the transaction reads next is read */
		if (rights)
			(void) gdpr_citus_signal("done", "{}");
		PopActiveSnapshot();
		return with_ledger(JsonbValueToJsonb(v), subject->kind, pseudonym, NULL, replay);
	}
	held = replay != NULL ? NIL : holds(subject);
	if (held != NIL)
	{
		StringInfoData detail;

		initStringInfo(&detail);
		foreach(lc, held)
		{
			Held	   *h = lfirst(lc);

			appendStringInfo(&detail, "%s%s: %s (" INT64_FORMAT " row%s)", detail.len ? "; " : "",
							 h->table, h->reason, h->rows, h->rows == 1 ? "" : "s");
		}
		ereport(ERROR,
				(errcode(ERRCODE_GDPR_LEGAL_HOLD),
				 errmsg("subject %s of kind \"%s\" cannot be erased: %d legal hold%s",
						subject->key_text, subject->kind, list_length(held),
						list_length(held) == 1 ? " applies" : "s apply"),
				 errdetail("%s.", detail.data),
				 errhint("Erase once the holds no longer match (see gdpr_can_erase()), or remove a hold with gdpr.drop_legal_hold().")));
	}

	unlinked = check_foreign_keys(tables, subject);
	check_updated_keys(tables, subject);

	if (dry_run)
		scrubbed = dry_run_erasure(tables, unlinked, &refreshed, subject, pseudonym, spicxt,
								   callerowner, &redacted);
	else
		scrubbed = execute_erasure(tables, unlinked, &refreshed, subject, pseudonym, &redacted);
	report = report_jsonb(dry_run ? "dry_run" : replay != NULL ? "replayed" : erased ? "erased_again" : "erased",
						  subject, pseudonym, unlinked, refreshed, tables, scrubbed, &redacted);
	if (dry_run)
	{
		gdpr_audit_event("ERASE_DRY_RUN", true, subject->kind, pseudonym, NULL, report);
	}
	else
	{
		finish_erasure(subject, pseudonym, keep_subject_row, erased, report, request_id);
		/* an erasure found again is in the ledger already, a replayed one too */
		report = with_ledger(report, subject->kind, pseudonym, erased || replay != NULL
							 ? NULL : gdpr_ledger_note("erase", subject->kind, pseudonym, NULL),
							 replay);
		gdpr_audit_event_until(replay != NULL ? "ERASE_REPLAY" : "ERASE", true, subject->kind,
							   pseudonym, NULL, report, redacted.keep_until);
	}
	PopActiveSnapshot();
	return report;
}

/*
 * The report with what the ledger knows of the erasure: that its line is
 * written (at commit: gdpr.ledger holds its entry_id), or which entry it
 * replays, which the database now holds;
 * and, with gdpr.backup_retention set, by when no backup holds the subject
 * any more (backups_clear_by: Art. 17 and the ICO's "beyond use").
 */
static Jsonb *
with_ledger(Jsonb *report, const char *kind, const char *pseudonym, const char *entry_id,
			const LedgerReplay *replay)
{
	TimestampTz clear_by = gdpr_backups_clear_by(GetCurrentTransactionStartTimestamp());
	StringInfoData buf;

	if (replay != NULL)
	{
		Oid			argtypes[4] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID};
		Datum		args[4] = {CStringGetTextDatum(replay->entry_id), CStringGetTextDatum(kind),
			CStringGetTextDatum(pseudonym), (Datum) 0};
		int			ret;

		args[3] = DirectFunctionCall2(jsonb_object_field_text, JsonbPGetDatum(report),
									  CStringGetTextDatum("status"));
		ret = gdpr_execute_as_owner(NULL,
									"INSERT INTO gdpr.ledger (entry_id, entry, kind, pseudonym, replayed_at, outcome) "
									"VALUES ($1::pg_catalog.uuid, 'erase', $2, $3, pg_catalog.now(), $4) "
									"ON CONFLICT (entry_id) DO NOTHING",
									4, argtypes, args, NULL, false, 0);
		if (ret != SPI_OK_INSERT)
			elog(ERROR, "could not record the replayed ledger entry: %d", ret);
	}
	if (entry_id == NULL && replay == NULL && clear_by == 0)
		return report;
	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	if (entry_id != NULL)
		appendStringInfoString(&buf, "\"ledger\": \"written\"");
	else if (replay != NULL)
		appendStringInfo(&buf, "\"ledger\": \"replayed\", \"replayed_seq\": " INT64_FORMAT ", \"replay\": %s",
						 replay->seq, gdpr_ledger_replay_diagnostics(replay->line));
	if (clear_by != 0)
	{
		appendStringInfoString(&buf, buf.len > 1 ? ", " : "");
		appendStringInfoString(&buf, "\"backups_clear_by\": ");
		escape_json(&buf, timestamptz_to_str(clear_by));
	}
	appendStringInfoChar(&buf, '}');
	return DatumGetJsonbP(DirectFunctionCall2(jsonb_concat, JsonbPGetDatum(report),
											  DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data))));
}

/*
 * gdpr_can_erase(subject, kind text DEFAULT NULL): whether an erasure would
 * go ahead.  It runs the erasure itself as a dry run, rolled back, so it
 * answers what gdpr_erase would do and refuses what it would refuse: the
 * legal holds that stop it, or the refusal, and else the plan.  Recorded as
 * ERASE_CHECK.
 */
Datum
gdpr_can_erase(PG_FUNCTION_ARGS)
{
	char	   *kind = PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));
	MemoryContext callercxt = CurrentMemoryContext;
	GdprSubject *subject;
	JsonbParseState *state = NULL;
	JsonbValue *v;
	Jsonb	   *result;
	Jsonb	   *record;
	Jsonb	   *plan = NULL;
	ErrorData  *refusal = NULL;
	List	   *held;
	int			nest = -1;
	bool		erased;
	bool		trial;

	require_read_committed("gdpr_can_erase");
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	gdpr_own_reads_begin();
	gdpr_citus_check("gdpr_can_erase");
	subject = gdpr_resolve_subject(fcinfo, 0, kind, callercxt);

	/*
	 * The trial erasure finds what only doing it finds (a constraint that
	 * refuses an erased value); it needs a transaction that can write.  On
	 * a standby or in a read-only transaction the answer is the holds' and
	 * the past erasure's alone: false, or unknown (null), never a yes that
	 * was not checked.  On a cluster with read auditing, where it can write,
	 * its reads on the workers are its own from the first (see
	 * gdpr_citus_erasure_statements); its sequential mode ends with it.
	 */
	trial = !RecoveryInProgress() && !XactReadOnly;
	if (trial && gdpr_read_audit_any() && gdpr_citus_cluster())
	{
		nest = NewGUCNestLevel();
		gdpr_citus_sequential();
		(void) gdpr_citus_signal("rights", "{}");
	}
	erased = subject_erased(subject, &record);
	if (!erased && !gdpr_subject_exists(subject))
		ereport(ERROR,
				(errcode(ERRCODE_GDPR_SUBJECT_NOT_FOUND),
				 errmsg("subject %s of kind \"%s\" does not exist", subject->key_text, subject->kind),
				 errhint("Check the key: there is nothing to erase.")));
	held = holds(subject);
	if (held == NIL && !erased && trial)
		refusal = try_erasure(subject, &plan);

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	gdpr_push_key(&state, "can_erase");
	if (!erased && held == NIL && !trial)
	{
		pushJsonbValue(&state, WJB_VALUE, &(JsonbValue) {.type = jbvNull});
		gdpr_push_key(&state, "unchecked");
		gdpr_push_string(&state, "the trial erasure needs a transaction that can write: ask again on the primary, outside a read-only transaction");
	}
	else
		pushJsonbValue(&state, WJB_VALUE, &(JsonbValue) {.type = jbvBool,
						   .val.boolean = !erased && held == NIL && refusal == NULL});
	gdpr_push_key(&state, "already_erased");
	pushJsonbValue(&state, WJB_VALUE, &(JsonbValue) {.type = jbvBool, .val.boolean = erased});
	gdpr_push_key(&state, "holds");
	gdpr_push_jsonb(&state, holds_jsonb(erased ? NIL : held));
	if (erased)
	{
		gdpr_push_key(&state, "erasure");
		gdpr_push_jsonb(&state, record);
	}
	if (refusal != NULL)
	{
		gdpr_push_key(&state, "refusal");
		pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
		gdpr_push_key(&state, "sqlstate");
		gdpr_push_string(&state, unpack_sql_state(refusal->sqlerrcode));
		gdpr_push_key(&state, "message");
		gdpr_push_string(&state, refusal->message);
		if (refusal->detail != NULL)
		{
			gdpr_push_key(&state, "detail");
			gdpr_push_string(&state, refusal->detail);
		}
		if (refusal->hint != NULL)
		{
			gdpr_push_key(&state, "hint");
			gdpr_push_string(&state, refusal->hint);
		}
		pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	}
	if (plan != NULL && !erased)
	{
		gdpr_push_key(&state, "plan");
		gdpr_push_jsonb(&state, plan);
	}
	v = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	result = JsonbValueToJsonb(v);

	gdpr_record_event("ERASE_CHECK", subject->kind,
					  erased ? gdpr_subject_pseudonym(subject->kind, subject->key_text) : subject->key_text,
					  NULL, result);
	if (nest >= 0)
	{
		(void) gdpr_citus_signal("done", "{}");
		AtEOXact_GUC(true, nest);
	}
	MemoryContextSwitchTo(callercxt);
	result = DatumGetJsonbPCopy(JsonbPGetDatum(result));
	gdpr_own_reads_end();
	SPI_finish();
	PG_RETURN_JSONB_P(result);
}

/*
 * The dry run of an erasure in a subtransaction that is rolled back, with
 * its subject lock: *plan gets its report, or the refusal is returned.
 * Only refusals (SQLSTATE class GD) are answers; anything else (a cancel,
 * a lock timeout, a bug) is the caller's error.
 */
static ErrorData *
try_erasure(const GdprSubject *subject, Jsonb **plan)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	ErrorData  *volatile edata = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		*plan = erase_subject(subject, true, NULL, NULL);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		*plan = NULL;
	}
	PG_END_TRY();
	RollbackAndReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	if (edata != NULL &&
		ERRCODE_TO_CATEGORY(edata->sqlerrcode) != ERRCODE_TO_CATEGORY(ERRCODE_GDPR_ERASE_IMPOSSIBLE))
		ReThrowError(edata);
	return edata;
}

/*
 * The erasure in a subtransaction that is rolled back, also when it fails:
 * an error must not leave our subtransaction open under the caller's.
 * Statements run in cxt, so the counts outlive the rollback.
 */
static int64
dry_run_erasure(List *tables, List *unlinked, List **refreshed, const GdprSubject *subject,
				const char *pseudonym,
				MemoryContext cxt, ResourceOwner owner, Redacted *redacted)
{
	int64		scrubbed = 0;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		scrubbed = execute_erasure(tables, unlinked, refreshed, subject, pseudonym, redacted);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		ReThrowError(edata);
	}
	PG_END_TRY();
	RollbackAndReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return scrubbed;
}

/*
 * Changes the planned rows, table by table in the planned order, checks the
 * result, and then scrubs the audit trail.  Returns the number of audit
 * events scrubbed; *redacted says how many of them were sealed (chain.c) and
 * until when they are kept.  Restrictions do not apply meanwhile to the
 * erasure's own tables: erasure is what they wait for.
 */
static int64
execute_erasure(List *tables, List *unlinked, List **refreshed, const GdprSubject *subject,
				const char *pseudonym, Redacted *redacted)
{
	volatile int64 scrubbed = 0;
	ListCell   *lc;
	List	   *outer = erasing_relids; /* an erasure that a trigger started inside another */
	const GdprSubject *outer_subject = erasing_subject;
	List	   *outer_tables = erasing_tables;
	List	   *outer_unlinked = erasing_unlinked;
	bool		cluster = gdpr_citus_cluster();

	erasing_relids = list_copy(outer);
	erasing_subject = subject;
	erasing_tables = tables;
	erasing_unlinked = unlinked;
	foreach(lc, tables)
	{
		Oid			relid = ((EraseTable *) lfirst(lc))->relid;

		erasing_relids = lappend_oid(erasing_relids, relid);
		/* a reference table's copy here is written by local execution, in this backend */
		if (cluster)
			erasing_relids = list_concat(erasing_relids, gdpr_citus_local_shards(relid));
	}
	PG_TRY();
	{
		if (cluster)
			(void) gdpr_citus_signal("erase", cluster_erase_body(subject, tables, unlinked));
		execute_tables(tables, subject);
		remove_large_objects(tables);
		verify_erasure(tables, subject);
		*refreshed = refresh_derived(tables);
		scrubbed = scrub_audit(subject, pseudonym, tables, redacted);
		if (cluster)
			redacted->workers = gdpr_citus_signal("scrub", cluster_scrub_body(subject));
	}
	PG_FINALLY();
	{
		list_free(erasing_relids);
		erasing_relids = outer;
		erasing_subject = outer_subject;
		erasing_tables = outer_tables;
		erasing_unlinked = outer_unlinked;
	}
	PG_END_TRY();
	return scrubbed;
}

/*
 * Runs the statements of every table, in the planned order.  A constraint
 * the statements violate (a domain's or a table's CHECK the redacted value
 * fails, a unique index two pseudonyms collide on) is named in GD303 like
 * every other refusal, instead of leaving the caller a raw 23xxx about a
 * statement it never wrote.
 */
static void
execute_tables(List *tables, const GdprSubject *subject)
{
	MemoryContext cxt = CurrentMemoryContext;
	ListCell   *lc;

	PG_TRY();
	{
		foreach(lc, tables)
			execute_table(lfirst(lc), subject);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		if (ERRCODE_TO_CATEGORY(edata->sqlerrcode) != ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION)
			PG_RE_THROW();
		FlushErrorState();
		ereport(ERROR,
				(errcode(ERRCODE_GDPR_ERASE_IMPOSSIBLE),
				 errmsg("cannot erase subject %s of kind \"%s\": %s",
						subject->key_text, subject->kind, edata->message),
				 edata->constraint_name != NULL
				 ? errdetail("The erasure's statements violate constraint \"%s\"%s%s.",
							 edata->constraint_name,
							 edata->table_name != NULL ? " of table "
							 : edata->datatype_name != NULL ? " of type " : "",
							 edata->table_name != NULL ? quote_identifier(edata->table_name)
							 : edata->datatype_name != NULL ? quote_identifier(edata->datatype_name) : "")
				 : (edata->detail != NULL ? errdetail("%s", edata->detail) : 0),
				 errhint("Nothing was changed or recorded.  Choose an erasure strategy the constraint accepts with gdpr.classify_column(), or change the constraint.")));
	}
	PG_END_TRY();
}

/*
 * Citus clusters
 *
 * On the coordinator, the erasure's statements are routed to the workers,
 * where the capture fires on the shards.  Each worker learns of the erasure
 * from the signal "erase" (citus.c), received on the connection that then
 * carries the statements: with it, it sets the same state as the
 * coordinator, so that restrictions leave the erasure's own writes alone,
 * every row a statement changes is checked against the plan, and events
 * are marked as the erased subject's.  The signal "scrub", after the
 * statements, scrubs the node's trail as scrub_audit does here and checks
 * that nothing of the subject is left in it; an error on any node aborts
 * the erasure on every node (two-phase commit).
 */

/* The body of the signal "erase": the subject and the plan's keys */
static char *
cluster_erase_body(const GdprSubject *subject, List *tables, List *unlinked)
{
	StringInfoData buf;
	ListCell   *lc;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"kind\": ");
	escape_json(&buf, subject->kind);
	appendStringInfoString(&buf, ", \"key\": ");
	escape_json(&buf, subject->key_text);
	appendStringInfoString(&buf, ", \"subject_table\": ");
	escape_json(&buf, gdpr_relation_name(subject->relid));
	appendStringInfoString(&buf, ", \"tables\": [");
	foreach(lc, tables)
	{
		EraseTable *t = lfirst(lc);

		appendStringInfoString(&buf, foreach_current_index(lc) ? ", {\"name\": " : "{\"name\": ");
		escape_json(&buf, t->name);
		appendStringInfo(&buf, ", \"keys\": %s, \"concerned\": %s}",
						 t->keys != NULL ? t->keys : "[]", t->concerned_keys != NULL ? t->concerned_keys : "[]");
	}
	appendStringInfoString(&buf, "], \"unlinked\": [");
	foreach(lc, unlinked)
	{
		Unlinked   *u = lfirst(lc);

		appendStringInfoString(&buf, foreach_current_index(lc) ? ", {\"name\": " : "{\"name\": ");
		escape_json(&buf, u->table);
		appendStringInfo(&buf, ", \"keys\": %s}", JsonbToCString(NULL, &u->keys->root, VARSIZE(u->keys)));
	}
	appendStringInfoString(&buf, "]}");
	return buf.data;
}

/* The body of the signal "scrub" */
static char *
cluster_scrub_body(const GdprSubject *subject)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"kind\": ");
	escape_json(&buf, subject->kind);
	appendStringInfoString(&buf, ", \"key\": ");
	escape_json(&buf, subject->key_text);
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

/* The subtransaction a worker's erasure state was set in; see cluster_subxact_end */
static SubTransactionId cluster_subid = InvalidSubTransactionId;

/*
 * Column col of row i of the signal's query: the oid of a relation it
 * names, which must exist on this node
 */
static Oid
cluster_relation(uint64 i, int col, const char *name)
{
	bool		isnull;
	Datum		relid = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, col, &isnull);

	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table %s of the coordinator's erasure does not exist on this node", name ? name : "(none)"),
				 errhint("The nodes' metadata differs from the coordinator's: see citus_check_cluster_node_health().")));
	return DatumGetObjectId(relid);
}

/*
 * On a worker, the signal "erase": the erasure's state until its "scrub",
 * the end of the transaction, or the rollback of the subtransaction that
 * received it.  Kept in the transaction's memory.
 */
void
gdpr_erase_cluster_begin(Jsonb *body)
{
	static bool callbacks = false;
	Oid			argtypes[1] = {JSONBOID};
	Datum		args[1] = {JsonbPGetDatum(body)};
	MemoryContext old;
	GdprSubject *s;
	List	   *tables = NIL;
	List	   *unlinked = NIL;
	List	   *relids = NIL;
	ListCell   *lc;
	bool		isnull;

	if (erasing_subject != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("an erasure is already running in this session of the node")));
	if (!callbacks)
	{
		RegisterXactCallback(cluster_xact_end, NULL);
		RegisterSubXactCallback(cluster_subxact_end, NULL);
		callbacks = true;
	}

	if (SPI_execute_with_args("SELECT $1 OPERATOR(pg_catalog.->>) 'kind', $1 OPERATOR(pg_catalog.->>) 'key', "
							  "       $1 OPERATOR(pg_catalog.->>) 'subject_table', "
							  "       pg_catalog.to_regclass($1 OPERATOR(pg_catalog.->>) 'subject_table')::pg_catalog.oid",
							  1, argtypes, args, NULL, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "SPI_execute_with_args failed: reading the signal");
	old = MemoryContextSwitchTo(TopTransactionContext);
	s = palloc0(sizeof(GdprSubject));
	s->kind = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	s->key_text = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	s->relid = cluster_relation(0, 4, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3));
	s->key_type = InvalidOid;
	MemoryContextSwitchTo(old);
	if (s->kind == NULL || s->key_text == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the signal \"erase\" names no subject")));

	/* a table that is not here (a local table of the coordinator) has no writes here */
	if (SPI_execute_with_args("SELECT x OPERATOR(pg_catalog.->>) 'name', (x OPERATOR(pg_catalog.->) 'keys')::pg_catalog.text, "
							  "       (x OPERATOR(pg_catalog.->) 'concerned')::pg_catalog.text, "
							  "       pg_catalog.to_regclass(x OPERATOR(pg_catalog.->>) 'name')::pg_catalog.oid "
							  "  FROM pg_catalog.jsonb_array_elements($1 OPERATOR(pg_catalog.->) 'tables') x "
							  " WHERE pg_catalog.to_regclass(x OPERATOR(pg_catalog.->>) 'name') IS NOT NULL",
							  1, argtypes, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed: reading the signal's tables");
	old = MemoryContextSwitchTo(TopTransactionContext);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		EraseTable *t = palloc0(sizeof(EraseTable));

		t->name = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		t->relid = cluster_relation(i, 4, t->name);
		t->keys = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
		t->concerned_keys = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 3);
		tables = lappend(tables, t);
	}
	MemoryContextSwitchTo(old);

	if (SPI_execute_with_args("SELECT x OPERATOR(pg_catalog.->>) 'name', x OPERATOR(pg_catalog.->) 'keys', "
							  "       pg_catalog.to_regclass(x OPERATOR(pg_catalog.->>) 'name')::pg_catalog.oid "
							  "  FROM pg_catalog.jsonb_array_elements($1 OPERATOR(pg_catalog.->) 'unlinked') x "
							  " WHERE pg_catalog.to_regclass(x OPERATOR(pg_catalog.->>) 'name') IS NOT NULL",
							  1, argtypes, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed: reading the signal's unlinked rows");
	old = MemoryContextSwitchTo(TopTransactionContext);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		Unlinked   *u = palloc0(sizeof(Unlinked));
		Datum		keys = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull);

		u->table = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		u->relid = cluster_relation(i, 3, u->table);
		u->keys = isnull ? NULL : DatumGetJsonbPCopy(keys);
		unlinked = lappend(unlinked, u);
	}
	MemoryContextSwitchTo(old);

	/* the statements write to this node's shards of the tables */
	foreach(lc, tables)
	{
		Oid			relid = ((EraseTable *) lfirst(lc))->relid;
		List	   *shards = gdpr_citus_local_shards(relid);

		old = MemoryContextSwitchTo(TopTransactionContext);
		relids = lappend_oid(relids, relid);
		relids = list_concat(relids, shards);
		MemoryContextSwitchTo(old);
	}
	erasing_subject = s;
	erasing_tables = tables;
	erasing_unlinked = unlinked;
	erasing_relids = relids;
	cluster_subid = GetCurrentSubTransactionId();
}

/*
 * On a worker, the signal "scrub": this node's trail loses the subject's
 * values (scrub_audit), records the erasure, and is checked to hold none of
 * the subject's values any more.
 * Only in the session that received the signal "erase" for the subject:
 * elsewhere the erasure's events would not be visible to the scrub.
 */
void
gdpr_erase_cluster_scrub(Jsonb *body)
{
	Oid			argtypes[1] = {JSONBOID};
	Datum		args[1] = {JsonbPGetDatum(body)};
	char	   *kind;
	char	   *key;
	Redacted	redacted = {0, 0, -1};
	bool		left;
	char	   *pseudonym;
	int64		scrubbed;
	StringInfoData detail;

	if (SPI_execute_with_args("SELECT $1 OPERATOR(pg_catalog.->>) 'kind', $1 OPERATOR(pg_catalog.->>) 'key'",
							  1, argtypes, args, NULL, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "SPI_execute_with_args failed: reading the signal");
	kind = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	key = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	if (erasing_subject == NULL || kind == NULL || key == NULL ||
		strcmp(kind, erasing_subject->kind) != 0 || strcmp(key, erasing_subject->key_text) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_GDPR_ERASE_IMPOSSIBLE),
				 errmsg("the erasure of subject %s of kind \"%s\" reached this node on more than one connection",
						key ? key : "(none)", kind ? kind : "(none)"),
				 errdetail("Its scrub cannot see the events that its statements wrote on another connection."),
				 errhint("Nothing was changed or recorded.  Erase in a transaction of its own, or one that has not yet run a statement in parallel on the cluster.")));
	pseudonym = gdpr_subject_pseudonym(kind, key);
	scrubbed = scrub_audit(erasing_subject, pseudonym, erasing_tables, &redacted);
	cluster_restrictions(kind, key);

	/*
	 * This node's chain needs its own ERASE event saying how many sealed
	 * events the erasure redacted here (chain.c); the coordinator's event
	 * holds the erasure's report.
	 */
	initStringInfo(&detail);
	appendStringInfoString(&detail, "{\"status\": \"erased\", \"on\": \"worker\", \"subject\": {\"kind\": ");
	escape_json(&detail, kind);
	appendStringInfoString(&detail, ", \"pseudonym\": ");
	escape_json(&detail, pseudonym);
	appendStringInfo(&detail, "}, \"audit_events_scrubbed\": " INT64_FORMAT ", \"sealed_events_redacted\": " INT64_FORMAT "}",
					 scrubbed, redacted.events);
	gdpr_audit_event_until("ERASE", true, kind, pseudonym, NULL,
						   DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(detail.data))),
						   redacted.keep_until);
	/* the check sees the scrub: a trigger's active snapshot is its statement's */
	CommandCounterIncrement();
	PushActiveSnapshot(GetLatestSnapshot());
	left = subject_in_trail(erasing_subject);
	PopActiveSnapshot();
	if (left)
		ereport(ERROR,
				(errcode(ERRCODE_GDPR_ERASE_IMPOSSIBLE),
				 errmsg("the audit trail of this node still holds subject %s of kind \"%s\" after its scrub",
						key, kind),
				 errhint("Nothing was changed or recorded.  Erase again; if this persists, report it as a bug.")));
	cluster_forget();
}

/*
 * The restrictions of an erased subject on a worker, as finish_bookkeeping
 * leaves them on the coordinator: none by key; one by pseudonym when the
 * subject's row is kept, so that nothing new is written for it.
 */
static void
cluster_restrictions(const char *kind, const char *key)
{
	Oid			argtypes[3] = {TEXTOID, TEXTOID, TEXTOID};
	Datum		args[3] = {CStringGetTextDatum(kind), CStringGetTextDatum(key),
	CStringGetTextDatum(gdpr_subject_pseudonym(kind, key))};

	if (gdpr_execute_as_owner(NULL, "DELETE FROM gdpr.restriction WHERE kind OPERATOR(pg_catalog.=) $1 "
							  "   AND subject_id OPERATOR(pg_catalog.=) ANY (ARRAY[$2, $3])",
							  3, argtypes, args, NULL, false, 0) != SPI_OK_DELETE ||
		gdpr_execute_as_owner(NULL, "INSERT INTO gdpr.restriction (kind, subject_id, source, reason) "
							  "SELECT $1, $3, 'erased', 'the subject was erased' FROM gdpr.subject_kind s "
							  " WHERE s.kind OPERATOR(pg_catalog.=) $1 AND s.on_erase OPERATOR(pg_catalog.=) 'anonymize'",
							  3, argtypes, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "SPI_execute_with_args failed: the erased subject's restrictions");
	CacheInvalidateRelcacheByRelid(DatumGetObjectId(DirectFunctionCall1(to_regclass,
																		CStringGetTextDatum("gdpr.restriction"))));
}

static void
cluster_forget(void)
{
	erasing_subject = NULL;
	erasing_tables = NIL;
	erasing_unlinked = NIL;
	erasing_relids = NIL;
	cluster_subid = InvalidSubTransactionId;
}

/* The state lives in the transaction's memory, and ends with it */
static void
cluster_xact_end(XactEvent event, void *arg)
{
	if (cluster_subid != InvalidSubTransactionId &&
		(event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT || event == XACT_EVENT_PREPARE ||
		 event == XACT_EVENT_PARALLEL_COMMIT || event == XACT_EVENT_PARALLEL_ABORT))
		cluster_forget();
}

/*
 * A rolled-back savepoint (a dry run, gdpr_can_erase) takes the state with
 * it when it was set in that subtransaction or one it started: those have
 * later ids.
 */
static void
cluster_subxact_end(SubXactEvent event, SubTransactionId mySubid, SubTransactionId parentSubid,
					void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB && cluster_subid != InvalidSubTransactionId &&
		cluster_subid >= mySubid)
		cluster_forget();
}

/* Locks the subject's row against concurrent erasure and inserts; false if there is none */
static bool
lock_subject(const GdprSubject *subject)
{
	Oid			argtypes[1] = {subject->key_type};
	Datum		args[1] = {subject->key};
	char	   *sql;
	int			ret;

	sql = psprintf("SELECT 1 FROM %s WHERE %s OPERATOR(pg_catalog.=) $1 FOR UPDATE",
				   gdpr_relation_name(subject->relid),
				   quote_identifier(subject->key_column));
	ret = SPI_execute_with_args(sql, 1, argtypes, args, NULL, false, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed: %d", ret);
	return SPI_processed > 0;
}

/*
 * The record of the subject's erasure (when, by pseudonym, which tables kept
 * anonymized rows), or NULL when the subject was not erased.  For requests
 * about an erased subject, which answer with it and name the pseudonym only.
 */
Jsonb *
gdpr_erasure_record(const GdprSubject *subject)
{
	Jsonb	   *record;

	return subject_erased(subject, &record) ? record : NULL;
}

/*
 * gdpr._erased_pseudonym(kind, key): the pseudonym of an erased subject, or
 * NULL when that key was not erased.  What the register functions write for
 * an erased subject, so that a later request does not name them again.
 * gdpr_admin only: it maps a key to its pseudonym.
 */
Datum
gdpr_erased_pseudonym(PG_FUNCTION_ARGS)
{
	GdprSubject subject = {0};
	Jsonb	   *record;
	char	   *pseudonym;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_NULL();
	subject.kind = text_to_cstring(PG_GETARG_TEXT_PP(0));
	subject.key_text = text_to_cstring(PG_GETARG_TEXT_PP(1));
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	pseudonym = subject_erased(&subject, &record)
		? gdpr_subject_pseudonym(subject.kind, subject.key_text) : NULL;
	SPI_finish();
	if (pseudonym == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(pseudonym));
}

/* Whether a write to relid (or a partition of it) is the running erasure's own */
bool
gdpr_erasure_exempt(Oid relid)
{
	return erasing_relids != NIL && list_member_oid(erasing_relids, gdpr_root_relid(relid));
}

/* Whether the jsonb array keys holds the object key */
static bool
contains_key(Jsonb *keys, Jsonb *key)
{
	Datum		wrapped = DirectFunctionCall1(jsonb_in, CStringGetDatum(
		psprintf("[%s]", JsonbToCString(NULL, &key->root, VARSIZE(key)))));

	return DatumGetBool(DirectFunctionCall2(jsonb_contains, JsonbPGetDatum(keys), wrapped));
}

/* Keys as rows_keys() made them, as jsonb */
static Datum
planned_jsonb(const char *keys)
{
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(keys != NULL ? keys : "[]"));
}

/*
 * The key of the subject an erasure of the given kind is erasing now, as
 * the trail records it, or NULL.
 */
const char *
gdpr_erasing_key(const char *kind)
{
	if (erasing_subject == NULL || kind == NULL || strcmp(kind, erasing_subject->kind) != 0)
		return NULL;
	return erasing_subject->key_text;
}

/* Whether an erasure's statements are running in this backend */
bool
gdpr_erasure_running(void)
{
	return erasing_subject != NULL;
}

/*
 * Called by the audit trigger for every row an erasure's statements change
 * in a registered table: the subjects the row named before and after, and
 * its primary key as a jsonb object.  A row that is neither the subject's
 * nor planned (an address reached through the customer row deleted before
 * it is planned, and names nobody by then) was changed by something outside
 * the plan: an application trigger, a rule, a cascade through a table the
 * map does not know.  The erasure stops before it records anything.
 */
void
gdpr_erasure_check_row(Oid table, const char *kind, char **oldkeys, char **newkeys,
					   int nkeys, Jsonb *rowkey)
{
	const GdprSubject *s = erasing_subject;
	Oid			root = gdpr_root_relid(table);
	ListCell   *lc;

	if (s == NULL)
		return;
	if (kind != NULL && strcmp(kind, s->kind) == 0)
		for (int i = 0; i < nkeys; i++)
			if ((oldkeys != NULL && oldkeys[i] != NULL && strcmp(oldkeys[i], s->key_text) == 0) ||
				(newkeys != NULL && newkeys[i] != NULL && strcmp(newkeys[i], s->key_text) == 0))
				return;
	foreach(lc, erasing_tables)
	{
		EraseTable *t = lfirst(lc);

		if (t->relid != root)
			continue;
		if (t->planned == NULL)
		{
			MemoryContext old = MemoryContextSwitchTo(GetMemoryChunkContext(t));

			Datum		owned = planned_jsonb(t->keys);
			Datum		concerned = planned_jsonb(t->concerned_keys);

			t->planned = DatumGetJsonbP(DirectFunctionCall2(jsonb_concat, owned, concerned));
			MemoryContextSwitchTo(old);
		}
		if (rowkey != NULL && contains_key(t->planned, rowkey))
			return;
	}
	foreach(lc, erasing_unlinked)
	{
		Unlinked   *u = lfirst(lc);

		if (u->relid == root && rowkey != NULL && u->keys != NULL && contains_key(u->keys, rowkey))
			return;
	}
	ereport(ERROR,
			(errcode(ERRCODE_GDPR_ERASE_IMPOSSIBLE),
			 errmsg("erasure of subject %s of kind \"%s\" changed a row of %s that is not the subject's",
					s->key_text, s->kind, gdpr_relation_name(root)),
			 rowkey != NULL
			 ? errdetail("The row with key %s is not planned; a trigger, a rule or a foreign-key action the plan does not include changed it.",
						 JsonbToCString(NULL, &rowkey->root, VARSIZE(rowkey)))
			 : 0,
			 errhint("Nothing was changed or recorded.  Make the application's triggers leave erasures alone (they run as gdpr_erase()), then erase again.")));
}

/*
 * An erasure plans on a snapshot taken after the subject's lock; under
 * REPEATABLE READ or SERIALIZABLE the transaction's snapshot is older and
 * would miss rows committed meanwhile, and the erasure would claim a
 * success it has not checked.
 */
static void
require_read_committed(const char *function)
{
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TRANSACTION_STATE),
				 errmsg("%s must run at isolation level READ COMMITTED", function),
				 errdetail("At REPEATABLE READ or SERIALIZABLE it would miss the subject's rows written after the transaction's snapshot."),
				 errhint("Run it in a transaction of its own, or one begun with BEGIN ISOLATION LEVEL READ COMMITTED.")));
}

/* Whether the subject was erased before; *record is the erasure's record */
static bool
subject_erased(const GdprSubject *subject, Jsonb **record)
{
	Oid			argtypes[2] = {TEXTOID, TEXTOID};
	Datum		args[2] = {CStringGetTextDatum(subject->kind),
	CStringGetTextDatum(gdpr_subject_pseudonym(subject->kind, subject->key_text))};
	bool		isnull;
	int			ret;

	ret = gdpr_execute_as_owner(NULL,
								"SELECT pg_catalog.jsonb_build_object('erased_at', e.erased_at, 'pseudonym', e.pseudonym, "
								"       'kept_anonymized', COALESCE((SELECT pg_catalog.jsonb_object_agg(t.k, t.v->'anonymized') "
								"           FROM pg_catalog.jsonb_each(e.report->'tables') t(k, v) "
								"          WHERE (t.v->>'anonymized')::pg_catalog.int8 OPERATOR(pg_catalog.>) 0), '{}')) "
								"  FROM gdpr.erasure e WHERE e.kind = $1 AND e.pseudonym = $2",
								2, argtypes, args, NULL, false, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed: %d", ret);
	if (SPI_processed == 0)
		return false;
	*record = DatumGetJsonbPCopy(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	return true;
}

/*
 * The legal holds that match some of the subject's rows.  Conditions run
 * read-only, over the table alone: the subject's rows are selected by
 * primary key in a subquery, so a condition's column names cannot be
 * captured by the tables of a path.
 */
static List *
holds(const GdprSubject *subject)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1] = {CStringGetTextDatum(subject->kind)};
	SPITupleTable *tuptable;
	uint64		n;
	List	   *result = NIL;
	int			ret;

	ret = SPI_execute_with_args(
		"SELECT h.relid::pg_catalog.oid, h.condition, h.reason, gdpr._qualified(h.relid) "
		"  FROM gdpr.legal_hold h JOIN gdpr.registered_table r ON r.relid = h.relid "
		" WHERE r.kind = $1 ORDER BY gdpr._qualified(h.relid), h.hold_id",
		1, argtypes, args, NULL, true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed: %d", ret);
	tuptable = SPI_tuptable;
	n = SPI_processed;
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;
		Oid			relid = DatumGetObjectId(SPI_getbinval(tuptable->vals[i], tuptable->tupdesc, 1, &isnull));
		char	   *condition = SPI_getvalue(tuptable->vals[i], tuptable->tupdesc, 2);
		GdprTableMap *map;
		int64		count;

		gdpr_check_expression(condition, "legal hold condition");
		map = gdpr_load_table_map(relid, CurrentMemoryContext);
		if (map == NULL)
			continue;
		count = held_rows(map, condition, subject);
		if (count > 0)
		{
			Held	   *h = palloc(sizeof(Held));

			h->table = SPI_getvalue(tuptable->vals[i], tuptable->tupdesc, 4);
			h->reason = SPI_getvalue(tuptable->vals[i], tuptable->tupdesc, 3);
			h->rows = count;
			result = lappend(result, h);
		}
	}
	return result;
}

/*
 * How many of the subject's rows of a table match a hold's condition.  The
 * rows are found as the caller, whole; the condition, which the table's
 * owner wrote (condition.c), runs with the owner's rights over those rows
 * alone, whoever erases: never with the caller's, which may be a
 * superuser's.  The owner does not read the table itself: on a Citus table
 * Citus would refuse it a statement on placements the transaction changed
 * as the caller (an erasure before this one, a trial erasure).
 */
static int64
held_rows(const GdprTableMap *map, const char *condition, const GdprSubject *subject)
{
	Oid			keytype[1] = {subject->key_type};
	Datum		key[1] = {subject->key};
	Oid			argtypes[1];
	Datum		args[1];
	char	   *rows;
	char	   *sql;
	Relation	rel;
	bool		isnull;
	const char *outer;
	int			ret;

	rel = table_open(map->relid, AccessShareLock);
	rows = gdpr_path_rows_sql(map, gdpr_pk_list(rel, "t."), GDPR_PATHS_OWNER);
	argtypes[0] = get_array_type(rel->rd_rel->reltype);
	sql = rows == NULL ? NULL :
		psprintf("SELECT pg_catalog.array_agg(x) FROM %s x WHERE (%s) IN (%s)",
				 map->from_name, gdpr_pk_list(rel, "x."), rows);
	table_close(rel, NoLock);
	if (sql == NULL)
		return 0;
	if (!OidIsValid(argtypes[0]))
		elog(ERROR, "table %s has no array type of its rows", map->qualified_name);
	ret = SPI_execute_with_args(sql, 1, keytype, key, NULL, true, 0);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "SPI_execute_with_args failed: %d", ret);
	args[0] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		return 0;
	sql = psprintf("SELECT pg_catalog.count(*) FROM pg_catalog.unnest($1) h WHERE (\n%s\n)", condition);
	/* a count, not a read; what the condition runs in turn is (reads.c) */
	outer = gdpr_internal_sql;
	gdpr_internal_sql = sql;
	PG_TRY();
	{
		ret = gdpr_execute_as_role(gdpr_relation_owner(map->relid), NULL, sql, 1, argtypes, args,
								   NULL, true, 0);
	}
	PG_FINALLY();
	{
		gdpr_internal_sql = outer;
	}
	PG_END_TRY();
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "SPI_execute_with_args failed: %d", ret);
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * The columns of t that reference large objects (oid, or a domain over it
 * such as lo) whose objects go with the row: all of them when the row is
 * deleted, those the anonymization rewrites when it is kept.  pg_dump
 * writes every large object: one left behind keeps the subject's content.
 */
static char *
lo_columns(const EraseTable *t, Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	StringInfoData buf;

	initStringInfo(&buf);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		const char *strategy;

		if (att->attisdropped || getBaseType(att->atttypid) != OIDOID)
			continue;
		strategy = strategy_of(t->map, NameStr(att->attname));
		if (!t->delete && (strategy == NULL || strcmp(strategy, "keep") == 0))
			continue;
		appendStringInfo(&buf, "%st.%s::pg_catalog.oid", buf.len > 0 ? ", " : "",
						 quote_identifier(NameStr(att->attname)));
	}
	return buf.len > 0 ? buf.data : NULL;
}

/*
 * What happens to each registered table of the kind: rows owned by the
 * subject are deleted or anonymized per on_erase; rows only about the subject
 * lose the columns about them; rows the subject's row points to that others
 * use too are left alone.  A table the subject row points to is anonymized
 * rather than deleted when the subject row stays (it still references it).
 */
static List *
plan_tables(const GdprSubject *subject, bool keep_subject_row)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1] = {CStringGetTextDatum(subject->kind)};
	SPITupleTable *tuptable;
	uint64		n;
	List	   *result = NIL;
	int			ret;

	ret = SPI_execute_with_args(
		"SELECT r.relid::pg_catalog.oid, gdpr._qualified(r.relid), r.on_erase = 'delete', "
		"       EXISTS (SELECT 1 FROM gdpr.path_step s WHERE s.relid = r.relid AND s.reverse), "
		"       (SELECT pg_catalog.string_agg(pg_catalog.format('EXISTS (SELECT 1 FROM %s r WHERE %s%s)', "
		"                  gdpr._qualified(e.src), "
		"                  (SELECT pg_catalog.string_agg(pg_catalog.format('r.%I = t.%I', sc, dc), ' AND ') "
		"                     FROM unnest(e.src_cols, e.dst_cols) AS u(sc, dc)), "
		"                  CASE WHEN e.src = sk.relid "
		"                       THEN pg_catalog.format(' AND r.%I IS DISTINCT FROM $1', sk.key_column) ELSE '' END), "
		"                ' OR ') "
		"          FROM gdpr._fk_edge e WHERE e.dst = r.relid) "
		"  FROM gdpr.registered_table r JOIN gdpr.subject_kind sk ON sk.kind = r.kind "
		" WHERE r.kind = $1 ORDER BY 2",
		1, argtypes, args, NULL, true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed: %d", ret);
	tuptable = SPI_tuptable;
	n = SPI_processed;
	for (uint64 i = 0; i < n; i++)
	{
		HeapTuple	tup = tuptable->vals[i];
		TupleDesc	desc = tuptable->tupdesc;
		EraseTable *t = palloc0(sizeof(EraseTable));
		bool		isnull;
		bool		reverse;
		Relation	rel;
		List	   *about = NIL;

		t->relid = DatumGetObjectId(SPI_getbinval(tup, desc, 1, &isnull));
		t->name = SPI_getvalue(tup, desc, 2);
		t->delete = DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull));
		reverse = DatumGetBool(SPI_getbinval(tup, desc, 4, &isnull));
		t->shared = reverse ? SPI_getvalue(tup, desc, 5) : NULL;
		t->map = gdpr_load_table_map(t->relid, CurrentMemoryContext);
		t->from = t->map->from_name;
		{
			char	   *others = gdpr_shared_sql(t->map);

			if (others != NULL)
				t->shared = t->shared != NULL ? psprintf("(%s) OR %s", t->shared, others) : others;
		}
		if (t->relid == subject->relid)
			t->delete = !keep_subject_row;
		else if (reverse && keep_subject_row)
			t->delete = false;

		rel = table_open(t->relid, AccessShareLock);
		t->pk = gdpr_pk_list(rel, "t.");
		t->lo_columns = lo_columns(t, rel);
		t->owned = gdpr_path_rows_sql(t->map, t->pk, GDPR_PATHS_OWNER);
		set_owned_join(t);

		/*
		 * Citus cannot tell which shard holds rows named by a list of keys,
		 * and runs such a statement on every shard, one after the other;
		 * the owner path's own condition, true of every row planned, names
		 * the shard.  The statements and their checks act on the planned
		 * rows that are still the subject's: a row a concurrent writer gave
		 * to another subject meanwhile is that subject's, and stays.
		 */
		t->route = "";
		if (t->owned_where != NULL && t->owned_from[0] == '\0' && gdpr_citus_distributed(t->relid))
			t->route = psprintf(" AND (%s)", t->owned_where);
		t->concerned = gdpr_path_rows_sql(t->map, t->pk, GDPR_PATHS_CONCERNED);
		if (!t->delete)
			t->set = anonymize_set(t, rel, subject, NIL, &t->set_check);
		if (t->concerned != NULL)
		{
			Oid			pargtypes[2] = {OIDOID, TEXTOID};
			Datum		pargs[2] = {ObjectIdGetDatum(t->relid), (Datum) 0};

			if (SPI_execute_with_args("SELECT DISTINCT c FROM gdpr.subject_path p, pg_catalog.unnest(p.about_columns) c "
									  " WHERE p.relid::pg_catalog.oid = $1 AND p.relation = 'concerned'",
									  2, pargtypes, pargs, NULL, true, 0) != SPI_OK_SELECT)
				elog(ERROR, "SPI_execute_with_args failed");
			for (uint64 j = 0; j < SPI_processed; j++)
				about = lappend(about, SPI_getvalue(SPI_tuptable->vals[j], SPI_tuptable->tupdesc, 1));
			if (about != NIL)
				t->concerned_set = anonymize_set(t, rel, subject, about, &t->concerned_check);
		}
		t->pk_r = gdpr_pk_list(rel, "r.");
		t->pk_types = pk_types(rel);
		t->pk_json = gdpr_pk_json(rel, "t.");
		table_close(rel, NoLock);
		result = lappend(result, t);
	}
	return result;
}

/*
 * The SET list that anonymizes a row of t: every classified column with its
 * strategy, or (only_columns) those columns with theirs, or the default of
 * their type.  Refuses, before anything changes, a column no strategy fits.
 */
static char *
anonymize_set(EraseTable *t, Relation rel, const GdprSubject *subject, List *only_columns,
			  char **check)
{
	TupleDesc	desc = RelationGetDescr(rel);
	StringInfoData buf;
	StringInfoData cols;
	StringInfoData exprs;

	initStringInfo(&buf);
	initStringInfo(&cols);
	initStringInfo(&exprs);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		const char *name = NameStr(att->attname);
		const char *strategy = strategy_of(t->map, name);
		const char *error;
		char	   *seed;
		char	   *expr;
		ListCell   *lc;
		bool		wanted = false;

		if (att->attisdropped || att->attgenerated)
			continue;
		if (only_columns != NIL)
		{
			foreach(lc, only_columns)
				wanted |= strcmp(lfirst(lc), name) == 0;
			if (!wanted)
				continue;
			if (strategy == NULL)
				strategy = att->attnotnull ? "redact" : "null";
		}
		if (strategy == NULL)
			continue;
		seed = psprintf("%s || %s || (%s)::pg_catalog.text",
						quote_literal_cstr(psprintf("%s\x1f%s\x1f%s\x1f%s\x1f", subject->kind,
													subject->key_text, t->name, name)),
						"''", psprintf("ROW(%s)", t->pk));
		expr = gdpr_anonymize_expr(att, strategy, seed, &error);
		if (error != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_GDPR_ERASE_IMPOSSIBLE),
					 errmsg("cannot erase subject %s of kind \"%s\": %s in table %s", subject->key_text,
							subject->kind, error, t->name),
					 errhint("Classify the column with erase => 'keep', or make it nullable.")));
		if (expr != NULL)
		{
			appendStringInfo(&buf, "%s%s = %s", buf.len ? ", " : "", quote_identifier(name), expr);
			appendStringInfo(&cols, "%st.%s", cols.len ? ", " : "", quote_identifier(name));
			appendStringInfo(&exprs, "%s%s", exprs.len ? ", " : "", expr);
			t->changed_columns = lappend(t->changed_columns, pstrdup(name));
		}
	}
	/* every strategy gives the same value when applied again, so the check can recompute it */
	*check = buf.len > 0 ? psprintf("ROW(%s) IS DISTINCT FROM ROW(%s)", cols.data, exprs.data) : NULL;
	return buf.len > 0 ? buf.data : NULL;
}

static const char *
strategy_of(const GdprTableMap *map, const char *column)
{
	ListCell   *lc;

	foreach(lc, map->columns)
	{
		GdprColumn *col = lfirst(lc);

		if (strcmp(col->name, column) == 0)
			return col->erase;
	}
	return NULL;
}

/*
 * Children before parents: a table comes before every table it references,
 * so deletes never violate a foreign key among the subject's tables.  A
 * cycle (other than a table referencing itself) has no such order and is
 * refused before anything changes.
 */
static List *
order_tables(List *tables)
{
	int			n = list_length(tables);
	bool	   *done = palloc0(sizeof(bool) * Max(n, 1));
	char	  **refs = palloc(sizeof(char *) * Max(n, 1));
	List	   *result = NIL;

	{
		Datum	   *relids = palloc(sizeof(Datum) * Max(n, 1));
		Oid			argtypes[1] = {OIDARRAYOID};
		Datum		args[1];

		for (int i = 0; i < n; i++)
		{
			refs[i] = palloc0(sizeof(char) * n);
			relids[i] = ObjectIdGetDatum(((EraseTable *) list_nth(tables, i))->relid);
		}
		args[0] = PointerGetDatum(construct_array(relids, n, OIDOID, sizeof(Oid), true, TYPALIGN_INT));
		/*
		 * Children go before their parents, so that a row is erased while
		 * it still names its subject.  Only a key that would stop the
		 * parent's DELETE, or take rows with it, must be obeyed ('s'); one
		 * that sets NULL or a default, is checked at commit, or points at a
		 * parent the erasure keeps only prefers it ('p'), and gives way in a
		 * cycle.
		 */
		if (SPI_execute_with_args("SELECT src, dst, pg_catalog.bool_or(strict) FROM ("
								  "  SELECT COALESCE(pg_catalog.pg_partition_root(c.conrelid), c.conrelid)::pg_catalog.oid AS src, "
								  "         COALESCE(pg_catalog.pg_partition_root(c.confrelid), c.confrelid)::pg_catalog.oid AS dst, "
								  "         c.confdeltype IN ('a', 'r', 'c') AND NOT (c.condeferrable AND c.condeferred) AS strict "
								  "    FROM pg_catalog.pg_constraint c "
								  "   WHERE c.contype = 'f' AND c.conparentid = 0) e "
								  " WHERE src = ANY ($1) AND dst = ANY ($1) AND src <> dst GROUP BY src, dst",
								  1, argtypes, args, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "SPI_execute_with_args failed");
		for (uint64 e = 0; e < SPI_processed; e++)
		{
			bool		isnull;
			Oid			src = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[e], SPI_tuptable->tupdesc, 1, &isnull));
			Oid			dst = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[e], SPI_tuptable->tupdesc, 2, &isnull));
			bool		strict = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[e], SPI_tuptable->tupdesc, 3, &isnull));
			int			i = -1,
						j = -1;

			for (int k = 0; k < n; k++)
			{
				if (((EraseTable *) list_nth(tables, k))->relid == src)
					i = k;
				if (((EraseTable *) list_nth(tables, k))->relid == dst)
					j = k;
			}
			if (i >= 0 && j >= 0)
				refs[i][j] = strict && ((EraseTable *) list_nth(tables, j))->delete ? 's' : 'p';
		}
	}

	while (list_length(result) < n)
	{
		int			next = -1;

		/* the first table no waiting table references; else, the first only preferences hold */
		for (int strict_only = 0; strict_only <= 1 && next < 0; strict_only++)
			for (int i = 0; i < n && next < 0; i++)
			{
				bool		referenced = false;

				if (done[i])
					continue;
				for (int j = 0; j < n; j++)
					if (!done[j] && j != i && refs[j][i] != 0 && (!strict_only || refs[j][i] == 's'))
						referenced = true;
				if (!referenced)
					next = i;
			}
		if (next >= 0)
		{
			done[next] = true;
			result = lappend(result, list_nth(tables, next));
		}
		else
		{
			StringInfoData cycle;
			bool		pruned = true;

			/* name only the tables in a cycle: prune those nothing waiting points to, or from */
			while (pruned)
			{
				pruned = false;
				for (int i = 0; i < n; i++)
				{
					bool		in = false;
					bool		out = false;

					if (done[i])
						continue;
					for (int j = 0; j < n; j++)
						if (!done[j] && j != i)
						{
							in |= refs[j][i] == 's';
							out |= refs[i][j] == 's';
						}
					if (!in || !out)
						done[i] = pruned = true;
				}
			}
			initStringInfo(&cycle);
			for (int i = 0; i < n; i++)
				if (!done[i])
					appendStringInfo(&cycle, "%s%s", cycle.len ? ", " : "",
									 ((EraseTable *) list_nth(tables, i))->name);
			ereport(ERROR,
					(errcode(ERRCODE_GDPR_ERASE_IMPOSSIBLE),
					 errmsg("cannot plan the erasure: foreign keys form a cycle"),
					 errdetail("Tables in the cycle: %s.", cycle.data),
					 errhint("Make one of the foreign keys between them ON DELETE SET NULL, or DEFERRABLE INITIALLY DEFERRED.")));
		}
	}
	return result;
}

/*
 * Every foreign key into rows the erasure deletes, from rows it does not:
 * NO ACTION and RESTRICT would stop the DELETE; CASCADE would delete rows
 * registered to be kept, or rows of other subjects (a reply to the
 * subject's message, a customer the subject referred).  A cascade into a
 * table outside the map deletes rows that hang off the subject's, which is
 * what the key says; what those rows' own foreign keys would do is checked
 * in turn, down the chain.  SET NULL and SET DEFAULT only drop the pointer
 * to the subject's row.  Found before anything changes, on the planned rows.
 */
static List *
check_foreign_keys(List *tables, const GdprSubject *subject)
{
	List	   *unlinked = NIL;
	ListCell   *lc;

	foreach(lc, tables)
	{
		EraseTable *t = lfirst(lc);
		char	   *planned = planned_rows(t, t->keys);

		if (t->delete && planned != NULL)
			check_rows_deleted(tables, &unlinked, subject, t->relid, t->name, t->from, planned, 0);
	}
	return unlinked;
}

/*
 * A foreign key onto a column the erasure anonymizes (a kept table's e-mail
 * referencing the customer's): with ON UPDATE NO ACTION or RESTRICT the
 * rewrite fails, with a raw 23503 in the middle of the erasure.  Found
 * before anything changes, with the rows it concerns.
 */
/*
 * The rows of registered table relid (named from) whose foreign key conname
 * (columns fkcols, of alias r) points at rows refs selects, less those
 * planned deletes: the rows the key's ON DELETE SET NULL or SET DEFAULT
 * will change.
 */
static Unlinked *
unlink_rows(Oid relid, const char *from, const char *conname, const char *fkcols,
			const char *refs, const char *planned, const GdprSubject *subject)
{
	Oid			argtypes[1] = {subject->key_type};
	Datum		args[1] = {subject->key};
	Unlinked   *u = palloc0(sizeof(Unlinked));
	Relation	rel = table_open(relid, AccessShareLock);
	char	   *sql;
	bool		isnull;

	sql = psprintf("SELECT pg_catalog.count(*), COALESCE(pg_catalog.jsonb_agg(%s), '[]') "
				   "  FROM %s r WHERE (%s) IN (%s)%s",
				   gdpr_pk_json(rel, "r."), from, fkcols, refs,
				   planned != NULL
				   ? psprintf(" AND (%s) NOT IN (SELECT %s FROM %s t%s)",
							  gdpr_pk_list(rel, "r."), gdpr_pk_list(rel, "t."), from, planned)
				   : "");
	table_close(rel, AccessShareLock);
	if (SPI_execute_with_args(sql, 1, argtypes, args, NULL, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "SPI_execute_with_args failed");
	u->relid = gdpr_root_relid(relid);
	u->table = pstrdup(from);
	u->conname = pstrdup(conname);
	u->rows = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	u->keys = DatumGetJsonbPCopy(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2,
											   &isnull));
	return u;
}

static void
check_updated_keys(List *tables, const GdprSubject *subject)
{
	ListCell   *lc;

	foreach(lc, tables)
	{
		EraseTable *t = lfirst(lc);
		Datum	   *names;
		Oid			argtypes[2] = {OIDOID, TEXTARRAYOID};
		Datum		args[2];
		SPITupleTable *tuptable;
		char	   *rows[2] = {planned_rows(t, t->keys), planned_rows(t, t->concerned_keys)};

		if (t->delete || t->changed_columns == NIL || (rows[0] == NULL && rows[1] == NULL))
			continue;
		names = palloc(sizeof(Datum) * list_length(t->changed_columns));
		for (int i = 0; i < list_length(t->changed_columns); i++)
			names[i] = CStringGetTextDatum(list_nth(t->changed_columns, i));
		args[0] = ObjectIdGetDatum(t->relid);
		args[1] = PointerGetDatum(construct_array(names, list_length(t->changed_columns), TEXTOID,
												  -1, false, TYPALIGN_INT));
		if (SPI_execute_with_args(
				"SELECT gdpr._qualified(c.conrelid::pg_catalog.regclass), c.conname, "
				"       (SELECT pg_catalog.string_agg(pg_catalog.format('r.%I', a.attname), ', ' ORDER BY k.n) "
				"          FROM pg_catalog.unnest(c.conkey) WITH ORDINALITY k(attnum, n) "
				"          JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum), "
				"       (SELECT pg_catalog.string_agg(pg_catalog.format('t.%I', a.attname), ', ' ORDER BY k.n) "
				"          FROM pg_catalog.unnest(c.confkey) WITH ORDINALITY k(attnum, n) "
				"          JOIN pg_catalog.pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum) "
				"  FROM pg_catalog.pg_constraint c "
				" WHERE c.contype = 'f' AND c.conparentid = 0 AND c.confupdtype IN ('a', 'r') "
				"   AND COALESCE(pg_catalog.pg_partition_root(c.confrelid), c.confrelid) = $1 "
				"   AND EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a "
				"                WHERE a.attrelid = c.confrelid AND a.attnum = ANY (c.confkey) "
				"                  AND a.attname::pg_catalog.text = ANY ($2))",
				2, argtypes, args, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "SPI_execute_with_args failed");
		tuptable = SPI_tuptable;
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			char	   *from = SPI_getvalue(tuptable->vals[i], tuptable->tupdesc, 1);
			char	   *conname = SPI_getvalue(tuptable->vals[i], tuptable->tupdesc, 2);
			char	   *fkcols = SPI_getvalue(tuptable->vals[i], tuptable->tupdesc, 3);
			char	   *refcols = SPI_getvalue(tuptable->vals[i], tuptable->tupdesc, 4);
			int64		count = 0;

			for (int r = 0; r < 2; r++)
				if (rows[r] != NULL)
					count += exec_count(psprintf("SELECT pg_catalog.count(*) FROM %s r WHERE (%s) IN (SELECT %s FROM %s t%s)",
												 from, fkcols, refcols, t->from, rows[r]),
										subject, true);
			if (count > 0)
				ereport(ERROR,
						(errcode(ERRCODE_GDPR_ERASE_IMPOSSIBLE),
						 errmsg("cannot erase subject %s of kind \"%s\": " INT64_FORMAT " row%s of %s reference%s columns of %s that the erasure anonymizes",
								subject->key_text, subject->kind, count, count == 1 ? "" : "s", from,
								count == 1 ? "s" : "", t->name),
						 errdetail("Foreign key %s is ON UPDATE NO ACTION or RESTRICT: the new values would leave those rows dangling.",
								   conname),
						 errhint("Make foreign key %s ON UPDATE CASCADE, or reference a surrogate key that erasure leaves alone.",
								 conname)));
		}
	}
}

/* How far down a chain of cascades through unregistered tables the check follows */
#define MAX_CASCADE_DEPTH 8

/*
 * The foreign keys into the rows of relid (named name) that "where", a
 * condition on alias t, selects: rows the erasure deletes, directly or by a
 * cascade at depth depth.
 */
static void
check_rows_deleted(List *tables, List **unlinked, const GdprSubject *subject, Oid relid,
				   const char *name,
				   const char *from_name, const char *where, int depth)
{
	Oid			argtypes[1] = {OIDOID};
	Datum		args[1] = {ObjectIdGetDatum(relid)};
	SPITupleTable *tuptable;
	uint64		n;

	if (SPI_execute_with_args(
			"SELECT gdpr._qualified(c.conrelid::pg_catalog.regclass), c.conname, c.confdeltype, "
			"       c.conrelid::pg_catalog.oid, "
			"       (SELECT pg_catalog.string_agg(pg_catalog.format('r.%I', a.attname), ', ' ORDER BY k.n) "
			"          FROM pg_catalog.unnest(c.conkey) WITH ORDINALITY k(attnum, n) "
			"          JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum), "
			"       (SELECT pg_catalog.string_agg(pg_catalog.format('t.%I', a.attname), ', ' ORDER BY k.n) "
			"          FROM pg_catalog.unnest(c.confkey) WITH ORDINALITY k(attnum, n) "
			"          JOIN pg_catalog.pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum), "
			"       COALESCE((SELECT r.on_erase = 'anonymize' FROM gdpr.registered_table r "
			"                  WHERE r.relid::pg_catalog.oid = COALESCE(pg_catalog.pg_partition_root(c.conrelid), c.conrelid)), false), "
			"       (SELECT pg_catalog.string_agg(pg_catalog.format('t.%I', a.attname), ', ' ORDER BY k.n) "
			"          FROM pg_catalog.unnest(c.conkey) WITH ORDINALITY k(attnum, n) "
			"          JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum), "
			"       gdpr._registered_root(c.conrelid) IS NOT NULL "
			"  FROM pg_catalog.pg_constraint c "
			" WHERE c.contype = 'f' AND c.conparentid = 0 "
			"   AND COALESCE(pg_catalog.pg_partition_root(c.confrelid), c.confrelid) = $1",
			1, argtypes, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed");
	tuptable = SPI_tuptable;
	n = SPI_processed;
	for (uint64 i = 0; i < n; i++)
	{
		HeapTuple	tup = tuptable->vals[i];
		TupleDesc	desc = tuptable->tupdesc;
		char	   *from = SPI_getvalue(tup, desc, 1);
		char	   *conname = SPI_getvalue(tup, desc, 2);
		char		action = *SPI_getvalue(tup, desc, 3);
		bool		isnull;
		Oid			fromrel = DatumGetObjectId(SPI_getbinval(tup, desc, 4, &isnull));
		char	   *fkcols = SPI_getvalue(tup, desc, 5);
		char	   *refcols = SPI_getvalue(tup, desc, 6);
		bool		kept_by_law = DatumGetBool(SPI_getbinval(tup, desc, 7, &isnull));
		char	   *fkcols_t = SPI_getvalue(tup, desc, 8);
		bool		registered = DatumGetBool(SPI_getbinval(tup, desc, 9, &isnull));
		EraseTable *referencing = NULL;
		char	   *planned = NULL;
		ListCell   *lc;
		char	   *refs;
		int64		count;

		if ((action == 'n' || action == 'd') && !registered)
			continue;
		foreach(lc, tables)
			if (((EraseTable *) lfirst(lc))->relid == gdpr_root_relid(fromrel))
				referencing = lfirst(lc);
		if (referencing != NULL && referencing->delete)
			planned = planned_rows(referencing, referencing->keys);

		/*
		 * Rows referencing the deleted rows, less those this erasure
		 * deletes anyway: two counts, each driven by the indexes of the
		 * primary key and of the foreign key.
		 */
		refs = psprintf("SELECT %s FROM %s t%s", refcols, from_name, where);
		count = exec_count(psprintf("SELECT pg_catalog.count(*) FROM %s r WHERE (%s) IN (%s)",
									from, fkcols, refs),
						   subject, true);
		if (count > 0 && planned != NULL)
			count -= exec_count(psprintf("SELECT pg_catalog.count(*) FROM %s t%s AND (%s) IN (%s)",
										 from, planned, fkcols_t, refs),
								subject, true);
		if (count == 0)
			continue;
		if (action == 'n' || action == 'd')
		{
			*unlinked = lappend(*unlinked, unlink_rows(fromrel, from, conname, fkcols, refs,
													   planned, subject));
			continue;
		}
		if (action == 'c' && !registered && depth < MAX_CASCADE_DEPTH)
		{
			check_rows_deleted(tables, unlinked, subject, fromrel, from, from,
							   psprintf(" WHERE (%s) IN (%s)", fkcols_t, refs), depth + 1);
			continue;
		}
		if (action != 'c')
			ereport(ERROR,
					(errcode(ERRCODE_GDPR_ERASE_IMPOSSIBLE),
					 errmsg("cannot erase subject %s of kind \"%s\": " INT64_FORMAT " row%s of %s reference%s rows of %s that would be deleted",
							subject->key_text, subject->kind, count, count == 1 ? "" : "s", from,
							count == 1 ? "s" : "", name),
					 errdetail("Foreign key %s (%s) would stop the DELETE.", conname,
							   action == 'r' ? "ON DELETE RESTRICT" : "ON DELETE NO ACTION"),
					 errhint("Register %s with on_erase => 'anonymize' so its rows are kept, or change the foreign key's ON DELETE action.",
							 name)));
		ereport(ERROR,
				(errcode(ERRCODE_GDPR_ERASE_IMPOSSIBLE),
				 errmsg("cannot erase subject %s of kind \"%s\": deleting rows of %s would delete " INT64_FORMAT " row%s of %s that %s",
						subject->key_text, subject->kind, name, count, count == 1 ? "" : "s", from,
						kept_by_law ? (count == 1 ? "is registered to be kept" : "are registered to be kept")
						: registered ? (count == 1 ? "is not the subject's" : "are not the subject's")
						: "are beyond the chain of cascades checked"),
				 errdetail("Foreign key %s is ON DELETE CASCADE%s.", conname,
						   depth > 0 ? psprintf(", reached through %d cascade%s from the subject's rows",
												depth, depth == 1 ? "" : "s") : ""),
				 errhint("Change foreign key %s to ON DELETE SET NULL, which drops only the pointer to the subject's row.",
						 conname)));
	}
}

/*
 * With a single owner path, the lookups of the subject's rows join the
 * path's tables directly rather than matching primary keys against a
 * subquery, so each step stays an index lookup however large the table
 * grows.
 */
static void
set_owned_join(EraseTable *t)
{
	ListCell   *lc;
	GdprPath   *only = NULL;
	int			n = 0;
	GdprPathSql p;

	foreach(lc, t->map->paths)
	{
		GdprPath   *path = lfirst(lc);

		if (path->owner)
		{
			only = path;
			n++;
		}
	}
	if (n != 1)
		return;
	p = gdpr_path_sql(t->map, only, "t.");
	if (strcmp(p.key, "NULL") == 0)
		return;
	t->owned_from = p.from;
	t->owned_where = psprintf("%s AND %s OPERATOR(pg_catalog.=) $1", p.where, p.key);
}

/*
 * The rest of "SELECT ... FROM <table> t" that restricts it to the subject's
 * owned rows: ", <path tables> WHERE <condition>", or " WHERE (pk) IN (...)".
 */
static char *
owned_rows(const EraseTable *t)
{
	if (t->owned_where == NULL)
		return psprintf(" WHERE (%s) IN (%s)", t->pk, t->owned);
	if (t->owned_from[0] == '\0')
		return psprintf(" WHERE %s", t->owned_where);
	return psprintf(", %s WHERE %s", t->owned_from, t->owned_where);
}

/*
 * Finds every row the erasure will change, in every table, before anything
 * changes: the subject's rows (less those shared with others) and the rows
 * only about the subject.  Statements then act on these rows by primary
 * key, so a table reached through another (an address through the customer
 * row that points to it) is erased even when that other row is deleted
 * first, and the check afterwards knows exactly which rows to look at.
 */
static void
plan_rows(List *tables, const GdprSubject *subject, bool leftovers)
{
	Oid			argtypes[1] = {subject->key_type};
	Datum		args[1] = {subject->key};
	ListCell   *lc;

	foreach(lc, tables)
	{
		EraseTable *t = lfirst(lc);
		char	   *notshared = t->shared != NULL ? psprintf(" AND NOT (%s)", t->shared) : "";

		if (t->shared != NULL && t->owned != NULL)
		{
			if (SPI_execute_with_args(psprintf("SELECT (%s)::pg_catalog.text FROM %s t%s AND (%s)",
											   t->pk_json, t->from, owned_rows(t), t->shared),
									  1, argtypes, args, NULL, true, 0) != SPI_OK_SELECT)
				elog(ERROR, "SPI_execute_with_args failed");
			for (uint64 i = 0; i < SPI_processed; i++)
				t->shared_keys = lappend(t->shared_keys,
										 SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1));
		}
		/*
		 * A subject erased before keeps the rows the law keeps, already
		 * anonymized: only rows that still hold other values are left over.
		 */
		if (t->owned != NULL && (!leftovers || t->delete))
			t->keys = rows_keys(t, psprintf("%s%s", owned_rows(t), notshared), subject);
		else if (t->owned != NULL && t->set_check != NULL)
			t->keys = rows_keys(t, psprintf("%s%s AND %s", owned_rows(t), notshared, t->set_check),
								subject);
		plan_large_objects(t, subject);
		if (t->concerned != NULL && t->concerned_set != NULL)
			t->concerned_keys = rows_keys(t, psprintf(" WHERE (%s) IN (%s)%s%s%s", t->pk, t->concerned,
													  t->owned != NULL
													  ? psprintf(" AND (%s) NOT IN (%s)", t->pk, t->owned)
													  : "",
													  leftovers && t->concerned_check != NULL ? " AND " : "",
													  leftovers && t->concerned_check != NULL ? t->concerned_check : ""),
										  subject);
	}
}

/* Whether the trail still names the subject by its key, as an erasure scrubs it */
static bool
subject_in_trail(const GdprSubject *subject)
{
	Oid			argtypes[2] = {TEXTOID, TEXTOID};
	Datum		args[2] = {CStringGetTextDatum(subject->kind), CStringGetTextDatum(subject->key_text)};

	if (gdpr_execute_as_owner(NULL, "SELECT 1 FROM gdpr.audit_log "
							  " WHERE subject_kind OPERATOR(pg_catalog.=) $1 "
							  "   AND (subject_id OPERATOR(pg_catalog.=) $2 "
							  "        OR related_subject_ids OPERATOR(pg_catalog.@>) ARRAY[$2]) LIMIT 1",
							  2, argtypes, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed");
	if (SPI_processed > 0)
		return true;
	if (!gdpr_citus_cluster())
		return false;
	if (gdpr_execute_as_owner(NULL, "SELECT gdpr._workers_hold_subject($1, $2)",
							  2, argtypes, args, NULL, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "SPI_execute_with_args failed: gdpr._workers_hold_subject");
	return strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1), "t") == 0;
}

/* The large objects the planned rows of t reference (see lo_columns) */
static void
plan_large_objects(EraseTable *t, const GdprSubject *subject)
{
	char	   *planned = planned_rows(t, t->keys);
	Oid			argtypes[1] = {subject->key_type};
	Datum		args[1] = {subject->key};

	if (t->lo_columns == NULL || planned == NULL)
		return;
	if (SPI_execute_with_args(psprintf("SELECT pg_catalog.array_agg(DISTINCT o)::pg_catalog.text "
									   "  FROM (SELECT pg_catalog.unnest(ARRAY[%s]) o FROM %s t%s) s "
									   " WHERE o IS NOT NULL",
									   t->lo_columns, t->from, planned),
							  1, argtypes, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed");
	t->lo_oids = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}

/*
 * Unlinks the planned rows' large objects once the rows are gone or
 * rewritten, as the table's owner, and only the objects that role owns and
 * no row of the table still references: a writer can put any number in a
 * row, and the erasure of its own subject must not destroy somebody else's
 * object.  The others are counted as left.
 */
static void
remove_large_objects(List *tables)
{
	ListCell   *lc;

	foreach(lc, tables)
	{
		EraseTable *t = lfirst(lc);
		Oid			owner = gdpr_relation_owner(t->relid);
		Oid			argtypes[2] = {TEXTOID, OIDOID};
		Datum		args[2];
		bool		isnull;

		if (t->lo_oids == NULL)
			continue;
		args[0] = CStringGetTextDatum(t->lo_oids);
		args[1] = ObjectIdGetDatum(owner);
		/*
		 * An object another row of the table still references (a number a
		 * writer copied into the subject's row) is not the subject's alone:
		 * it stays, and is counted as left.
		 */
		if (gdpr_execute_as_role(owner, NULL,
								 psprintf("SELECT pg_catalog.count(CASE WHEN m.lomowner OPERATOR(pg_catalog.=) $2 "
										  "     AND NOT EXISTS (SELECT FROM %s t WHERE m.oid OPERATOR(pg_catalog.=) ANY (ARRAY[%s])) "
										  "    THEN pg_catalog.lo_unlink(m.oid) END), "
										  "       pg_catalog.count(*) FILTER (WHERE m.lomowner OPERATOR(pg_catalog.<>) $2 "
										  "     OR EXISTS (SELECT FROM %s t WHERE m.oid OPERATOR(pg_catalog.=) ANY (ARRAY[%s]))) "
										  "  FROM pg_catalog.pg_largeobject_metadata m "
										  " WHERE m.oid OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.oid[])",
										  t->from, t->lo_columns, t->from, t->lo_columns),
								 2, argtypes, args, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "SPI_execute_with_args failed");
		t->lo_removed = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
													&isnull));
		t->lo_left = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2,
												 &isnull));
	}
}

/* Whether the plan changes no row */
static bool
nothing_planned(List *tables)
{
	ListCell   *lc;

	foreach(lc, tables)
	{
		EraseTable *t = lfirst(lc);

		if ((t->keys != NULL && strcmp(t->keys, "[]") != 0 && (t->delete || t->set != NULL)) ||
			(t->concerned_keys != NULL && strcmp(t->concerned_keys, "[]") != 0))
			return false;
	}
	return true;
}

/* The primary keys of the rows of t that where selects, as a jsonb array's text */
static char *
rows_keys(const EraseTable *t, const char *where, const GdprSubject *subject)
{
	Oid			argtypes[1] = {subject->key_type};
	Datum		args[1] = {subject->key};

	if (SPI_execute_with_args(psprintf("SELECT COALESCE(pg_catalog.jsonb_agg(%s), '[]')::pg_catalog.text "
									   "FROM %s t%s", t->pk_json, t->from, where),
							  1, argtypes, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed");
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}

/* " WHERE (pk) IN (the rows whose keys are keys)", or NULL when keys is empty */
static char *
planned_rows(const EraseTable *t, const char *keys)
{
	if (keys == NULL || strcmp(keys, "[]") == 0)
		return NULL;
	return psprintf(" WHERE (%s) IN (SELECT %s FROM pg_catalog.jsonb_to_recordset(%s::pg_catalog.jsonb) r(%s))",
					t->pk, t->pk_r, quote_literal_cstr(keys), t->pk_types);
}

/* Deletes or rewrites one table's planned rows */
static void
execute_table(EraseTable *t, const GdprSubject *subject)
{
	char	   *owned = planned_rows(t, t->keys);
	char	   *concerned = planned_rows(t, t->concerned_keys);

	if (owned != NULL && t->delete)
		t->deleted = exec_count(psprintf("WITH d AS (DELETE FROM %s t%s%s RETURNING 1) "
										 "SELECT pg_catalog.count(*) FROM d", t->from, owned, t->route),
								subject, false);
	else if (owned != NULL && t->set != NULL)
		t->anonymized = exec_count(psprintf("WITH u AS (UPDATE %s t SET %s%s%s RETURNING 1) "
											"SELECT pg_catalog.count(*) FROM u", t->from, t->set, owned, t->route),
								   subject, false);
	if (concerned != NULL)
		t->concerned_rows = exec_count(psprintf("WITH u AS (UPDATE %s t SET %s%s RETURNING 1) "
												"SELECT pg_catalog.count(*) FROM u",
												t->from, t->concerned_set, concerned),
									   subject, false);
}

/*
 * Checks, after every statement of the erasure ran and before anything is
 * recorded, that the subject's data is gone: none of the rows planned for
 * deletion is left (a BEFORE DELETE trigger that soft-deletes, a rule, a
 * trigger that writes the row back), none of the rows planned for
 * anonymization still holds other values than the strategies give, and the
 * paths find no row of the subject again (an application trigger that
 * archived what was deleted into a registered table).  Any of that is
 * refused, and the whole erasure rolls back with the error.  The checks run
 * as statements that may write (read_only false), so that each takes a
 * snapshot which sees the erasure's own changes.
 */
static void
verify_erasure(List *tables, const GdprSubject *subject)
{
	ListCell   *lc;

	foreach(lc, tables)
	{
		EraseTable *t = lfirst(lc);
		char	   *notshared = t->shared != NULL ? psprintf(" AND NOT (%s)", t->shared) : "";
		char	   *planned = planned_rows(t, t->keys);
		int64		n;
		if (t->delete && planned != NULL)
		{
			n = exec_count(psprintf("SELECT pg_catalog.count(*) FROM %s t%s%s", t->from, planned, t->route),
						   subject, false);
			if (n > 0)
				refuse_unverified(t, subject, n, "deleted rows are still there");
		}
		else if (!t->delete && planned != NULL && t->set_check != NULL)
		{
			n = exec_count(psprintf("SELECT pg_catalog.count(*) FROM %s t%s%s AND %s", t->from,
									planned, t->route, t->set_check),
						   subject, false);
			if (n > 0)
				refuse_unverified(t, subject, n, "anonymized rows still hold other values");
		}
		if (t->owned != NULL && (t->delete || t->set_check != NULL))
		{
			n = exec_count(psprintf("SELECT pg_catalog.count(*) FROM %s t%s%s%s%s", t->from,
									owned_rows(t), notshared,
									t->delete ? "" : " AND ", t->delete ? "" : t->set_check),
						   subject, false);
			if (n > 0)
				refuse_unverified(t, subject, n, "rows of the subject were written again");
		}
		if (t->concerned != NULL && t->concerned_check != NULL)
		{
			n = exec_count(psprintf("SELECT pg_catalog.count(*) FROM %s t WHERE (%s) IN (%s) AND %s%s",
									t->from, t->pk, t->concerned, t->concerned_check,
									t->owned != NULL ? psprintf(" AND (%s) NOT IN (%s)", t->pk, t->owned) : ""),
						   subject, false);
			if (n > 0)
				refuse_unverified(t, subject, n, "rows about the subject still hold their values");
		}
	}
}

/*
 * Refuses an erasure whose result did not check out, naming what on the
 * table can have undone it: its triggers, rules and row security.
 */
static void
refuse_unverified(const EraseTable *t, const GdprSubject *subject, int64 rows, const char *what)
{
	Oid			argtypes[1] = {OIDOID};
	Datum		args[1] = {ObjectIdGetDatum(t->relid)};
	char	   *suspects = NULL;

	if (SPI_execute_with_args(
			"SELECT pg_catalog.string_agg(x, ', ') FROM ("
			"  SELECT pg_catalog.format('trigger %I', g.tgname) AS x FROM pg_catalog.pg_trigger g "
			"   WHERE g.tgrelid OPERATOR(pg_catalog.=) $1 AND NOT g.tgisinternal "
			"     AND g.tgname OPERATOR(pg_catalog.<>) ALL (ARRAY['gdpr_audit_row', 'gdpr_audit_truncate']::pg_catalog.name[]) "
			"  UNION ALL "
			"  SELECT pg_catalog.format('rule %I', r.rulename) FROM pg_catalog.pg_rewrite r "
			"   WHERE r.ev_class OPERATOR(pg_catalog.=) $1 AND r.rulename OPERATOR(pg_catalog.<>) '_RETURN' "
			"  UNION ALL "
			"  SELECT pg_catalog.format('policy %I', p.polname) FROM pg_catalog.pg_policy p "
			"   WHERE p.polrelid OPERATOR(pg_catalog.=) $1) s",
			1, argtypes, args, NULL, true, 1) == SPI_OK_SELECT && SPI_processed == 1)
		suspects = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	ereport(ERROR,
			(errcode(ERRCODE_GDPR_ERASE_IMPOSSIBLE),
			 errmsg("erasure of subject %s of kind \"%s\" did not check out: " INT64_FORMAT " row%s of %s: %s",
					subject->key_text, subject->kind, rows, rows == 1 ? "" : "s", t->name, what),
			 suspects != NULL
			 ? errdetail("Something on %s undid the erasure's statement: %s.", t->name, suspects)
			 : errdetail("A trigger on another table wrote the rows back."),
			 errhint("Nothing was changed or recorded.  Make the %s leave erasures alone (they run as gdpr_erase()), then erase again.",
					 suspects != NULL ? "triggers and rules named" : "application's triggers")));
}

/*
 * The erasure's statements must reach every row of the subject as written:
 * under row security the caller would change only the rows its policies
 * show, and a rule would rewrite the statement into another.  Refused
 * before anything changes, naming the policy or the rule.
 */
static void
check_statements_apply(List *tables, const GdprSubject *subject)
{
	ListCell   *lc;

	foreach(lc, tables)
	{
		EraseTable *t = lfirst(lc);
		Oid			argtypes[2] = {OIDOID, CHAROID};
		Datum		args[2] = {ObjectIdGetDatum(t->relid), CharGetDatum(t->delete ? '4' : '2')};

		if (check_enable_rls(t->relid, InvalidOid, true) == RLS_ENABLED)
			ereport(ERROR,
					(errcode(ERRCODE_GDPR_ERASE_IMPOSSIBLE),
					 errmsg("cannot erase subject %s of kind \"%s\": row security on %s hides rows from role \"%s\"",
							subject->key_text, subject->kind, t->name,
							GetUserNameFromId(GetUserId(), false)),
					 errdetail("An erasure that sees only some of the subject's rows would leave the others."),
					 errhint("Erase as a role with BYPASSRLS or as the table's owner (without FORCE ROW LEVEL SECURITY).")));
		if (SPI_execute_with_args("SELECT pg_catalog.string_agg(pg_catalog.quote_ident(r.rulename), ', ') "
								  "  FROM pg_catalog.pg_rewrite r "
								  " WHERE r.ev_class OPERATOR(pg_catalog.=) $1 AND r.ev_type OPERATOR(pg_catalog.=) $2 "
								  " HAVING pg_catalog.count(*) OPERATOR(pg_catalog.>) 0",
								  2, argtypes, args, NULL, true, 1) != SPI_OK_SELECT)
			elog(ERROR, "SPI_execute_with_args failed");
		if (SPI_processed > 0)
			ereport(ERROR,
					(errcode(ERRCODE_GDPR_ERASE_IMPOSSIBLE),
					 errmsg("cannot erase subject %s of kind \"%s\": %s on %s is rewritten by rule %s",
							subject->key_text, subject->kind, t->delete ? "DELETE" : "UPDATE", t->name,
							SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1)),
					 errdetail("A rule can turn the erasure's statement into another, and the subject's rows would stay."),
					 errhint("Drop the rule, or register %s with on_erase => '%s'.", t->name,
							 t->delete ? "anonymize" : "delete")));
	}
}

/* The primary key of rel as a record definition: "a integer, b text" */
static char *
pk_types(Relation rel)
{
	Bitmapset  *pkattrs = RelationGetIndexAttrBitmap(rel, INDEX_ATTR_BITMAP_PRIMARY_KEY);
	TupleDesc	desc = RelationGetDescr(rel);
	StringInfoData buf;
	int			attno = -1;

	initStringInfo(&buf);
	while ((attno = bms_next_member(pkattrs, attno)) >= 0)
	{
		Form_pg_attribute att = TupleDescAttr(desc, attno + FirstLowInvalidHeapAttributeNumber - 1);

		appendStringInfo(&buf, "%s%s %s", buf.len ? ", " : "", quote_identifier(NameStr(att->attname)),
						 format_type_with_typemod(att->atttypid, att->atttypmod));
	}
	return buf.data;
}

/*
 * The subject's events stay, without values; their key becomes the
 * pseudonym.  Events where the subject is only related lose their values
 * too, and the key in their list of related subjects.  So do events of the
 * erased rows that were written before the row could be attributed (an
 * address inserted before the customer row pointing to it), found by table
 * and key through the index on unattributed events.
 */
static int64
scrub_audit(const GdprSubject *subject, const char *pseudonym, List *tables, Redacted *redacted)
{
	ListCell   *lc;
	Oid			argtypes[4] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID};
	Datum		args[4] = {CStringGetTextDatum(subject->kind), CStringGetTextDatum(subject->key_text),
		CStringGetTextDatum(pseudonym),
	CStringGetTextDatum(gdpr_relation_name(subject->relid))};
	List	   *scrubbed = NIL;
	Oid			save_userid;
	int			save_sec_context;
	int			nest;

	gdpr_chain_hold_sealers();
	nest = gdpr_become_audit_owner(&save_userid, &save_sec_context);
	gdpr_audit_maintenance = true;
	PG_TRY();
	{
		scrubbed = scrub(scrubbed,
						 "UPDATE gdpr.audit_log SET old_values = NULL, new_values = NULL, detail = NULL, "
						 "       subject_id = $3, "
						 "       row_key = CASE WHEN table_name = $4 THEN NULL ELSE row_key END, "
						 "       related_subject_ids = pg_catalog.array_replace(related_subject_ids, $2, $3) "
						 " WHERE subject_kind = $1 AND subject_id = $2 RETURNING event_id",
						 4, argtypes, args);
		scrubbed = scrub(scrubbed,
						 "UPDATE gdpr.audit_log SET old_values = NULL, new_values = NULL, "
						 "       related_subject_ids = pg_catalog.array_replace(related_subject_ids, $2, $3) "
						 " WHERE subject_kind = $1 AND related_subject_ids OPERATOR(pg_catalog.@>) ARRAY[$2] "
						 "RETURNING event_id",
						 4, argtypes, args);

		/*
		 * Reads queued before the erasure and written since its snapshot
		 * (queue.c): the lock taken above waited for their writer, and
		 * the latest snapshot sees them, whatever the isolation level.
		 */
		scrubbed = scrub_latest(scrubbed,
								"UPDATE gdpr.audit_log "
								"   SET related_subject_ids = pg_catalog.array_replace(related_subject_ids, $2, $3) "
								" WHERE event OPERATOR(pg_catalog.=) 'READ' AND subject_kind OPERATOR(pg_catalog.=) $1 "
								"   AND related_subject_ids OPERATOR(pg_catalog.@>) ARRAY[$2] "
								"RETURNING event_id",
								4, argtypes, args);
		foreach(lc, tables)
		{
			EraseTable *t = lfirst(lc);
			Oid			targtypes[4] = {TEXTOID, TEXTOID, TEXTOID, JSONBOID};
			Datum		targs[4];

			/* a table without an owner path erased nothing: no keys */
			if (t->keys == NULL || strcmp(t->keys, "[]") == 0)
				continue;
			targs[0] = CStringGetTextDatum(subject->kind);
			targs[1] = CStringGetTextDatum(t->name);
			targs[2] = CStringGetTextDatum(pseudonym);
			targs[3] = DirectFunctionCall1(jsonb_in, CStringGetDatum(t->keys));
			scrubbed = scrub(scrubbed,
							 "UPDATE gdpr.audit_log SET old_values = NULL, new_values = NULL, detail = NULL, "
							 "       subject_kind = $1, subject_id = $3 "
							 " WHERE subject_id IS NULL AND table_name = $2 "
							 "   AND row_key = ANY (ARRAY(SELECT pg_catalog.jsonb_array_elements($4))) "
							 "RETURNING event_id",
							 4, targtypes, targs);
		}
	}
	PG_FINALLY();
	{
		gdpr_audit_maintenance = false;
	}
	PG_END_TRY();
	gdpr_leave_role(save_userid, save_sec_context, nest);

	/* events already sealed keep their digests and lose their nonce */
	redacted->events = 0;
	redacted->keep_until = 0;
	if (scrubbed != NIL)
	{
		Datum	   *ids = palloc(sizeof(Datum) * list_length(scrubbed));
		int			n = 0;

		foreach(lc, scrubbed)
			ids[n++] = Int64GetDatum(*(int64 *) lfirst(lc));
		redacted->events = gdpr_chain_redact(PointerGetDatum(construct_array(ids, n, INT8OID, sizeof(int64),
																			 FLOAT8PASSBYVAL, TYPALIGN_DOUBLE)),
											 pseudonym, &redacted->keep_until);
	}
	return list_length(scrubbed);
}

/* The same with the latest snapshot, not the transaction's */
static List *
scrub_latest(List *list, const char *sql, int nargs, Oid *argtypes, Datum *args)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed: %s", sql);
	if (SPI_execute_snapshot(plan, args, NULL, GetLatestSnapshot(), InvalidSnapshot, false, true, 0) !=
		SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "SPI_execute_snapshot failed: %s", sql);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		int64	   *id = palloc(sizeof(int64));

		*id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		list = lappend(list, id);
	}
	SPI_freeplan(plan);
	return list;
}

/* Runs one scrubbing UPDATE ... RETURNING event_id; appends the ids to list */
static List *
scrub(List *list, const char *sql, int nargs, Oid *argtypes, Datum *args)
{
	if (SPI_execute_with_args(sql, nargs, argtypes, args, NULL, false, 0) != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "SPI_execute_with_args failed: %s", sql);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		int64	   *id = palloc(sizeof(int64));

		*id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		list = lappend(list, id);
	}
	return list;
}

/*
 * The request the erasure completes, and its bookkeeping.  On a cluster the
 * workers made the same change of the restrictions on the signal "scrub":
 * the map is not sent again meanwhile (citus.c).
 */
static void
finish_erasure(const GdprSubject *subject, const char *pseudonym, bool keep_subject_row,
			   bool again, Jsonb *report, const int64 *request_id)
{
	gdpr_cluster_hold_sync(gdpr_citus_cluster());
	PG_TRY();
	{
		if (request_id != NULL)
			gdpr_complete_request(*request_id, subject, "erasure", "erased");
		finish_bookkeeping(subject, pseudonym, keep_subject_row, again, report);
	}
	PG_FINALLY();
	{
		gdpr_cluster_hold_sync(false);
	}
	PG_END_TRY();
}

/*
 * The erasure is remembered by pseudonym; requests, consents, objections,
 * accepted policies and restrictions about the subject lose the key; a kept subject row is marked so that nothing new is
 * written for it.
 */
static void
finish_bookkeeping(const GdprSubject *subject, const char *pseudonym, bool keep_subject_row,
				   bool again, Jsonb *report)
{
	Oid			argtypes[4] = {TEXTOID, TEXTOID, TEXTOID, JSONBOID};
	Datum		args[4] = {CStringGetTextDatum(subject->kind), CStringGetTextDatum(subject->key_text),
	CStringGetTextDatum(pseudonym), JsonbPGetDatum(report)};
	Oid			save_userid;
	int			save_sec_context;
	int			nest;

	nest = gdpr_become_audit_owner(&save_userid, &save_sec_context);
	if ((!again &&
		 SPI_execute_with_args("INSERT INTO gdpr.erasure (kind, pseudonym, report) VALUES ($1, $3, $4)",
							   4, argtypes, args, NULL, false, 0) != SPI_OK_INSERT) ||
		SPI_execute_with_args("UPDATE gdpr.erasure_request SET subject_id = $3, error = NULL, "
							  "       status = CASE WHEN status = 'pending' THEN 'done' ELSE status END, "
							  "       finished_at = COALESCE(finished_at, pg_catalog.now()) "
							  " WHERE kind = $1 AND subject_id = $2",
							  4, argtypes, args, NULL, false, 0) != SPI_OK_UPDATE ||
		(!again &&
		 SPI_execute_with_args("DELETE FROM gdpr.restriction WHERE kind = $1 AND subject_id IN ($2, $3)",
							   4, argtypes, args, NULL, false, 0) != SPI_OK_DELETE) ||
		SPI_execute_with_args("UPDATE gdpr.consent SET subject_id = $3 WHERE kind = $1 AND subject_id = $2",
							  4, argtypes, args, NULL, false, 0) != SPI_OK_UPDATE ||
		SPI_execute_with_args("UPDATE gdpr.objection SET subject_id = $3, detail = NULL "
							  " WHERE kind = $1 AND subject_id = $2",
							  4, argtypes, args, NULL, false, 0) != SPI_OK_UPDATE ||
		SPI_execute_with_args("UPDATE gdpr.policy_acceptance SET subject_id = $3 WHERE kind = $1 AND subject_id = $2",
							  4, argtypes, args, NULL, false, 0) != SPI_OK_UPDATE ||
		SPI_execute_with_args("UPDATE gdpr.request SET subject_id = $3, detail = NULL "
							  " WHERE kind = $1 AND subject_id = $2",
							  4, argtypes, args, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "erasure bookkeeping failed");
	if (keep_subject_row && !again &&
		SPI_execute_with_args("INSERT INTO gdpr.restriction (kind, subject_id, source, reason) "
							  "VALUES ($1, $3, 'erased', 'the subject was erased')",
							  4, argtypes, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "erasure bookkeeping failed");
	gdpr_leave_role(save_userid, save_sec_context, nest);
	if (SPI_execute("SELECT gdpr._map_changed('gdpr.restriction')", false, 0) != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute failed");
}

/* Runs a query whose one column is a count, with the subject key as $1 */
static int64
exec_count(const char *sql, const GdprSubject *subject, bool read_only)
{
	Oid			argtypes[1] = {subject->key_type};
	Datum		args[1] = {subject->key};
	bool		isnull;
	int			ret;

	ret = SPI_execute_with_args(sql, 1, argtypes, args, NULL, read_only, 0);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "SPI_execute_with_args failed: %d", ret);
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * The materialized views reading any of the erasure's tables, as
 * qualified names: those registered with gdpr.register_derived() (which
 * the erasure refreshes), or the others (which keep their copy).
 */
static List *
materialized_views(List *tables, bool derived)
{
	Datum	   *relids = palloc(sizeof(Datum) * Max(list_length(tables), 1));
	Oid			argtypes[2] = {OIDARRAYOID, BOOLOID};
	Datum		args[2];
	List	   *views = NIL;
	ListCell   *lc;

	foreach(lc, tables)
		relids[foreach_current_index(lc)] = ObjectIdGetDatum(((EraseTable *) lfirst(lc))->relid);
	args[0] = PointerGetDatum(construct_array(relids, list_length(tables), OIDOID, sizeof(Oid), true,
											  TYPALIGN_INT));
	args[1] = BoolGetDatum(derived);
	if (SPI_execute_with_args("SELECT DISTINCT gdpr._qualified(v.oid::pg_catalog.regclass) "
							  "  FROM pg_catalog.pg_class v "
							  "  JOIN pg_catalog.pg_rewrite rw ON rw.ev_class OPERATOR(pg_catalog.=) v.oid "
							  "  JOIN pg_catalog.pg_depend d ON d.objid OPERATOR(pg_catalog.=) rw.oid "
							  "   AND d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass "
							  "   AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass "
							  " WHERE v.relkind OPERATOR(pg_catalog.=) 'm' "
							  "   AND d.refobjid OPERATOR(pg_catalog.=) ANY ($1) "
							  "   AND $2 OPERATOR(pg_catalog.=) EXISTS (SELECT 1 FROM gdpr.derived_view dv "
							  "        WHERE dv.relid::pg_catalog.oid OPERATOR(pg_catalog.=) v.oid) "
							  " ORDER BY 1",
							  2, argtypes, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed");
	for (uint64 i = 0; i < SPI_processed; i++)
		views = lappend(views, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1));
	return views;
}

/*
 * Refreshes the registered materialized views over the erasure's tables,
 * once their rows are gone.  REFRESH needs the view's owner, so it is
 * issued as the extension's owner; PostgreSQL runs the view's query as the
 * view's own owner, in a security-restricted operation, never with ours.
 */
static List *
refresh_derived(List *tables)
{
	List	   *views = materialized_views(tables, true);
	ListCell   *lc;

	foreach(lc, views)
		if (gdpr_execute_as_owner(NULL, psprintf("REFRESH MATERIALIZED VIEW %s", (char *) lfirst(lc)),
								  0, NULL, NULL, NULL, false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "REFRESH MATERIALIZED VIEW %s failed", (char *) lfirst(lc));
	return views;
}

/* A JSON array of names */
static void
append_names(StringInfo buf, const char *key, List *names)
{
	ListCell   *lc;

	appendStringInfo(buf, ", \"%s\": [", key);
	foreach(lc, names)
	{
		if (foreach_current_index(lc) > 0)
			appendStringInfoString(buf, ", ");
		escape_json(buf, lfirst(lc));
	}
	appendStringInfoChar(buf, ']');
}

static Jsonb *
holds_jsonb(List *held)
{
	StringInfoData buf;
	ListCell   *lc;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '[');
	foreach(lc, held)
	{
		Held	   *h = lfirst(lc);

		appendStringInfoString(&buf, foreach_current_index(lc) ? ", {\"table\": " : "{\"table\": ");
		escape_json(&buf, h->table);
		appendStringInfoString(&buf, ", \"reason\": ");
		escape_json(&buf, h->reason);
		appendStringInfo(&buf, ", \"rows\": " INT64_FORMAT "}", h->rows);
	}
	appendStringInfoChar(&buf, ']');
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}

/* What an erasure did (or, dry, would do): counts and shared rows, never values */
static Jsonb *
report_jsonb(const char *status, const GdprSubject *subject, const char *pseudonym, List *unlinked,
			 List *refreshed, List *tables,
			 int64 scrubbed, const Redacted *redacted)
{
	StringInfoData buf;
	ListCell   *lc;
	bool		first = true;
	List	   *unrefreshed;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"status\": ");
	escape_json(&buf, status);
	appendStringInfoString(&buf, ", \"subject\": {\"kind\": ");
	escape_json(&buf, subject->kind);
	appendStringInfoString(&buf, ", \"pseudonym\": ");
	escape_json(&buf, pseudonym);
	appendStringInfoString(&buf, "}, \"tables\": {");
	foreach(lc, tables)
	{
		EraseTable *t = lfirst(lc);

		appendStringInfoString(&buf, foreach_current_index(lc) ? ", " : "");
		escape_json(&buf, t->name);
		appendStringInfo(&buf, ": {\"action\": \"%s\", \"deleted\": " INT64_FORMAT
						 ", \"anonymized\": " INT64_FORMAT ", \"concerned_anonymized\": " INT64_FORMAT
						 ", \"shared_kept\": %d%s}",
						 t->delete ? "delete" : (t->set != NULL ? "anonymize" : "keep"),
						 t->deleted, t->anonymized, t->concerned_rows, list_length(t->shared_keys),
						 t->lo_columns != NULL
						 ? psprintf(", \"large_objects_removed\": " INT64_FORMAT
									", \"large_objects_left\": " INT64_FORMAT,
									t->lo_removed, t->lo_left) : "");
	}
	appendStringInfoString(&buf, "}, \"shared\": [");
	foreach(lc, tables)
	{
		EraseTable *t = lfirst(lc);
		ListCell   *k;

		foreach(k, t->shared_keys)
		{
			appendStringInfoString(&buf, first ? "{\"table\": " : ", {\"table\": ");
			first = false;
			escape_json(&buf, t->name);
			appendStringInfo(&buf, ", \"key\": %s, \"reason\": \"also used by other rows\"}",
							 (char *) lfirst(k));
		}
	}
	appendStringInfoString(&buf, "], \"unlinked\": [");
	foreach(lc, unlinked)
	{
		Unlinked   *u = lfirst(lc);

		appendStringInfoString(&buf, foreach_current_index(lc) ? ", {\"table\": " : "{\"table\": ");
		escape_json(&buf, u->table);
		appendStringInfoString(&buf, ", \"foreign_key\": ");
		escape_json(&buf, u->conname);
		appendStringInfo(&buf, ", \"rows\": " INT64_FORMAT "}", u->rows);
	}
	appendStringInfo(&buf, "], \"audit_events_scrubbed\": " INT64_FORMAT
					 ", \"sealed_events_redacted\": " INT64_FORMAT, scrubbed, redacted->events);
	if (redacted->workers >= 0)
		appendStringInfo(&buf, ", \"workers_scrubbed\": %d", redacted->workers);
	if (refreshed != NIL)
		append_names(&buf, "refreshed_views", refreshed);
	unrefreshed = materialized_views(tables, false);
	if (unrefreshed != NIL)
		append_names(&buf, "materialized_views", unrefreshed);
	appendStringInfoChar(&buf, '}');
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}
