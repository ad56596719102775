/*-------------------------------------------------------------------------
 *
 * audit.c
 *		Audit capture: the row and TRUNCATE triggers attached to registered
 *		tables, and gdpr.log_event for what the database cannot see.
 *
 * Every event is one INSERT into gdpr.audit_log through a prepared, kept SPI
 * plan.  The row trigger keeps one plan per relation it fires on (a partition,
 * for partitioned tables), built from the table's map.  Plans are marked
 * stale by the relcache callback (gdpr_audit_invalidate) whenever the
 * relation or its map changes; registration functions send that
 * invalidation explicitly.  A build in use is freed only when its last use
 * ends: user code run by the write can change the table and write it again.
 *
 * Applications may not write the audit table.  The insert therefore runs as
 * the owner of gdpr.audit_log (role.c), and that owner is a superuser: the
 * insert must run no code any other role can define.  So the row images and
 * the row key are made beforehand, in C, as the caller (to_jsonb calls casts
 * to json that anyone can create for a type of their own), and the INSERT
 * itself computes only the subject key, through the foreign keys' btree
 * equality operators and the key type's output function.  Who caused the
 * event is captured before switching.  Transaction abort restores the user,
 * so an error in between needs no cleanup here.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/event_trigger.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "gdpr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/bitmapset.h"
#include "nodes/makefuncs.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/fmgrprotos.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/plancache.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/typcache.h"

PG_FUNCTION_INFO_V1(gdpr_audit_row);
PG_FUNCTION_INFO_V1(gdpr_audit_truncate);
PG_FUNCTION_INFO_V1(gdpr_log_event);
PG_FUNCTION_INFO_V1(gdpr_log_system_event);
PG_FUNCTION_INFO_V1(gdpr_log_ddl_event);
PG_FUNCTION_INFO_V1(gdpr_capture_off_allowed);
PG_FUNCTION_INFO_V1(gdpr_event_trigger);

/* How deep this backend is in the extension's own event triggers (gdpr_event_trigger) */
static int	in_gdpr_event_trigger = 0;

/*
 * The names of the events the extension writes itself, and the prefixes of
 * its families of events (case does not matter): an application's event
 * may not pose as one of them.  Every event the extension writes matches
 * here; a new one is added here.
 */
static const char *const reserved_events[] = {
	"INSERT", "UPDATE", "DELETE", "TRUNCATE", "DDL", "READ", "EXPORT", "RESTRICT",
	"UNRESTRICT", "RETENTION", "OBJECTION", "AUDIT_OFF", NULL
};
static const char *const reserved_prefixes[] = {
	"ERASE", "MAP_", "CONSENT_", "POLICY_", "REQUEST_", "BREACH_", "LEDGER_", "GDPR", NULL
};

/*
 * The columns every event carries about its context, and their parameters,
 * which come first in every audit plan.
 */
#define CONTEXT_NPARAMS 9
static const char context_columns[] =
	"event_time, txid, session_role, effective_role, actor, client_addr, user_agent, "
	"application_name, retention_until";
static const char context_values[] =
	"$1, $2, $3, $4, $5, COALESCE($6, pg_catalog.inet_client_addr()), $7, $8, $9";
static const Oid context_types[CONTEXT_NPARAMS] = {
	TIMESTAMPTZOID, INT8OID, TEXTOID, TEXTOID, TEXTOID, INETOID, TEXTOID, TEXTOID,
	TIMESTAMPTZOID
};

/* Row plan parameters after the context ones */
#define ROW_NPARAMS (CONTEXT_NPARAMS + 7)
#define P_EVENT		9			/* 0-based indexes into the parameter arrays */
#define P_CHANGED	10
#define P_OLD_IMAGE		11			/* jsonb images, computed as the caller */
#define P_NEW_IMAGE		12
#define P_ROWKEY	13
#define P_SUBJECT	14			/* subject keys, computed as the caller */
#define P_RELATED	15

/*
 * Where one path of the map finds a row's subject key: in a column of the
 * row itself, or in a column of the result of the relation's key query,
 * which joins the path's tables (or nowhere: a path that reaches no key).
 */
typedef struct KeySource
{
	AttrNumber	attnum;			/* the row's column holding the key, or 0 */
	Oid			typoutput;		/* its type's output function */
	int			column;			/* else the key query's column, 1-based, or 0 */
} KeySource;

/*
 * The columns of one row image, as a record type of their own (see
 * columns_image).
 */
typedef struct ImageShape
{
	bool	   *which;			/* by attribute number - 1 */
	int			ncols;
	AttrNumber *attnums;		/* the row's attributes, in order */
	TupleDesc	desc;			/* blessed: to_jsonb() finds it by its typmod */
} ImageShape;

/*
 * One build of a relation's audit plans.  A nested write (user code run by
 * the caller's own statement) can invalidate the relation while an outer
 * call still executes this build: the outer call holds a use, and the build
 * is freed when the last use ends, never under it.
 */
typedef struct AuditPlanData
{
	MemoryContext mcxt;			/* holds this struct and all it points to */
	int			uses;
	bool		retired;		/* no longer in the cache: freed at the last release */
	SPIPlanPtr	plan;			/* the INSERT: reads gdpr.* and its parameters only */
	SPIPlanPtr	key_plan;		/* keys reached through other tables, or NULL */
	const char *key_sql;		/* its text, as the executor sees it (reads.c) */
	SPIPlanPtr	batch_key_plan; /* the same for an array of rows, or NULL */
	const char *batch_key_sql;
	Oid			rowarraytype;	/* the type of that array */
	SPIPlanPtr	restrict_plan;	/* the subject's restrictions, or NULL: no subject */
	int			npaths;
	KeySource  *keys;			/* by path, in the map's order: owner paths first */
	bool		owned;			/* keys[0] is the owner path that names the subject */
	int			natts;
	bool	   *secret;			/* by attribute number - 1: never leaves the table */
	bool	   *key_input;		/* by attribute number - 1: a path reads it to find a key */
	Datum	   *attnames;		/* by attribute number - 1: the column name as text */
	bool	   *key_column;		/* by attribute number - 1: in the primary key */
	List	   *shapes;			/* ImageShape *: the record types images were made of */
	char	   *kind;			/* the subject kind of the table's paths */
	Datum		kind_text;		/* the same, as text */
	Datum		table_name;		/* the registered table's qualified name, as text */
	bool		elsewhere;		/* a copy of a Citus reference table whose changes another
								 * node records (citus.c) */
	Oid			table;			/* the registered table (for a Citus shard, its table's) */
} AuditPlanData;

/* The cache entry of one relation */
typedef struct AuditPlan
{
	Oid			relid;			/* hash key: the relation the trigger fires on */
	bool		valid;			/* false once invalidated; rebuilt on next use */
	AuditPlanData *data;		/* NULL until built */
} AuditPlan;

/*
 * Who, when and from where, as the event's first parameters: the same for
 * most events of a statement, so made once and shared while it holds.
 */
typedef struct EventContext
{
	Datum		values[CONTEXT_NPARAMS];
	char		nulls[CONTEXT_NPARAMS];
	/* what it was made from */
	TimestampTz statement_start;
	FullTransactionId xid;
	Oid			session_user;
	Oid			user;
	char	   *settings[4];	/* actor, client address, user agent, application */
} EventContext;

/*
 * One row event, made as the caller when the row changed.  Keys that other
 * tables give may be left to the write (row and oldrow are then set), so
 * that a statement's rows are looked up with one query.
 */
typedef struct RowEvent
{
	AuditPlanData *d;			/* one use of it is held while the event is kept */
	const char *event;			/* "INSERT", "UPDATE" or "DELETE" */
	EventContext *ctx;
	Datum		changed;		/* text[], or 0 for NULL */
	Datum		old_values;		/* jsonb, or 0 */
	Datum		new_values;		/* jsonb, or 0 */
	Datum		row_key;		/* jsonb */
	char	  **keys;			/* by path */
	char	  **oldkeys;		/* the old row's, when an UPDATE changed them; else NULL */
	Datum		row;			/* the row, while the key query's keys are missing; else 0 */
	Datum		oldrow;			/* the old row, the same for oldkeys */
	const char *erasing;		/* the subject an erasure in progress erases, or NULL */
} RowEvent;

/*
 * The row events of one statement that have not been written yet.  Kept in
 * TopMemoryContext, reused by the statements that use the same depth.
 */
typedef struct StatementBatch
{
	MemoryContext cxt;			/* holds what the events point to; NULL until first use */
	RowEvent   *events;
	int			nevents;
	int			maxevents;
	Size		bytes;			/* about how much the events hold */
	EventContext *ctx;			/* the last event's context */
} StatementBatch;

/*
 * The statements that are ending, innermost last: a statement's row
 * triggers fire while it ends (ExecutorFinish, or the end of a COPY), and
 * a trigger's own statements end inside it.  Set by the hooks below.  Each
 * batch is allocated on its own and never moves: callers hold pointers to
 * theirs while statements nested in them push more.
 */
static StatementBatch **batches = NULL;
static int	nbatches = 0;
static int	maxbatches = 0;

/*
 * What a statement gathers before it writes it, and starts again (COPY of
 * millions, rows of megabytes): the batch's arrays stay far below the 1 GB
 * a value may have.
 */
#define CAPTURE_BATCH_ROWS 1000
#define CAPTURE_BATCH_BYTES (32 * 1024 * 1024)

/*
 * The INSERT of a batch of row events, and the row type of its array;
 * NULL until first use.  Stale once gdpr.audit_log may have changed: then
 * made again at the next use, never during one (busy).
 */
static SPIPlanPtr batch_plan = NULL;
static Oid	batch_rowtype = InvalidOid;
static bool batch_plan_stale = false;
static int	batch_plan_busy = 0;

static ExecutorFinish_hook_type prev_ExecutorFinish = NULL;
static ProcessUtility_hook_type prev_ProcessUtility = NULL;

/* Row plans by relation; created on first use, lives for the backend */
static HTAB *audit_plans = NULL;

/* The plan for events without a row (TRUNCATE, log_event); NULL until first use */
static SPIPlanPtr event_plan = NULL;

/*
 * Whether any subject is restricted at all: while none is, writes skip the
 * per-row check.  Reset by the relcache callback for gdpr.restriction, which
 * every function changing that table invalidates.
 */
static bool restrictions_known = false;
static bool any_restrictions = false;
static Oid	restriction_relid = InvalidOid;

/* gdpr.audit_log and its owner, the role audit inserts run as; reset by the relcache callback */
static Oid	audit_log_relid = InvalidOid;
static Oid	audit_log_owner = InvalidOid;

static AuditPlanData *acquire_row_plan(Relation rel);
static void release_row_plan(AuditPlanData *d);
static void retire_row_plan(AuditPlanData *d);
static AuditPlanData *build_row_plan(Relation rel);
static void fill_context(Datum *values, char *nulls);
static Oid	audit_table_owner(void);
static bool restrictions_exist(void);
static void check_restrictions(Relation rel, HeapTuple oldtup, HeapTuple newtup);
static void check_erasure_scope(Relation rel, HeapTuple oldtup, HeapTuple newtup);
static bool column_changed(TupleDesc desc, int i, HeapTuple oldtup, HeapTuple newtup);
static Datum log_event(FunctionCallInfo fcinfo);
static void plan_keys(AuditPlanData *d, const GdprTableMap *map, Relation rel, MemoryContext mcxt);
static void check_restriction(AuditPlanData *d, const char *subject, bool erased_only);
static char **subject_keys(AuditPlanData *d, HeapTuple tup, TupleDesc desc);
static Datum related_array(AuditPlanData *d, char **keys, char **oldkeys, const char *erasing);
static bool keys_changed(const AuditPlanData *d, const bool *changed);
static AttrNumber attnum_of(TupleDesc desc, const char *name);
static bool *changed_columns(TupleDesc desc, HeapTuple oldtup, HeapTuple newtup);
static Datum names_array(const AuditPlanData *d, const bool *which);
static void check_event_text(const char *what, const char *value);
static void capture_row_event(Relation rel, const char *event, HeapTuple oldtup,
							  HeapTuple newtup, bool *changed);
static void make_row_event(RowEvent *e, AuditPlanData *d, TupleDesc desc, const char *event,
						   HeapTuple oldtup, HeapTuple newtup, bool *changed, bool defer);
static Datum columns_image(AuditPlanData *d, TupleDesc desc, HeapTuple tup, const bool *which);
static ImageShape *image_shape(AuditPlanData *d, TupleDesc desc, const bool *which);
static void query_keys_now(RowEvent *e);
static void write_row_event(RowEvent *e);
static void event_values(const RowEvent *e, Datum *values, bool *isnull);
static char **copy_keys(const AuditPlanData *d, char **keys);
static int	execute_batch(SPIPlanPtr plan, Datum arg);
static char **column_keys(AuditPlanData *d, HeapTuple tup, TupleDesc desc);
static int	run_key_query(SPIPlanPtr plan, const char *sql, Datum *args);
static void query_keys(AuditPlanData *d, Datum row, char **keys);
static EventContext *event_context(StatementBatch *b);
static void keep_row_event(StatementBatch *b, RowEvent *e);
static void capture_ExecutorFinish(QueryDesc *queryDesc);
static void capture_ProcessUtility(PlannedStmt *pstmt, const char *queryString,
								   bool readOnlyTree, ProcessUtilityContext context,
								   ParamListInfo params, QueryEnvironment *queryEnv,
								   DestReceiver *dest, QueryCompletion *qc);
static StatementBatch *push_batch(void);
static void pop_batch(StatementBatch *b, bool written);
static void flush_batch(StatementBatch *b);
static void drop_batch(StatementBatch *b);
static void batch_query_keys(StatementBatch *b);
static void write_batch(StatementBatch *b);
static SPIPlanPtr get_batch_plan(void);

/*
 * AFTER INSERT OR UPDATE OR DELETE ... FOR EACH ROW on registered tables.
 */
Datum
gdpr_audit_row(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	desc;
	HeapTuple	oldtup = NULL;
	HeapTuple	newtup = NULL;
	const char *event;
	int			event_class;
	bool		exempt;
	bool	   *changed = NULL;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		!TRIGGER_FIRED_AFTER(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("gdpr.audit_row() must be fired AFTER ... FOR EACH ROW"),
				 errhint("Attach it with gdpr.register_table(), not by hand.")));

	/*
	 * The triggers fire ALWAYS, so that session_replication_role cannot
	 * silence them; a subscriber whose trail the publisher keeps turns
	 * gdpr.audit_replicated off for the changes it applies.
	 */
	if (SessionReplicationRole == SESSION_REPLICATION_ROLE_REPLICA && !gdpr_audit_replicated)
		return PointerGetDatum(NULL);

	if (TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
	{
		event = "INSERT";
		event_class = GDPR_EV_INSERT;
		newtup = trigdata->tg_trigtuple;
	}
	else if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
	{
		event = "UPDATE";
		event_class = GDPR_EV_UPDATE;
		oldtup = trigdata->tg_trigtuple;
		newtup = trigdata->tg_newtuple;
	}
	else if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
	{
		event = "DELETE";
		event_class = GDPR_EV_DELETE;
		oldtup = trigdata->tg_trigtuple;
	}
	else
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("gdpr.audit_row() fired for an unsupported event")));

	rel = trigdata->tg_relation;
	desc = RelationGetDescr(rel);

	/*
	 * Restrictions hold whatever is audited; erasure itself is exempt, and a
	 * retention batch for its own statement on its policy's table.  A writer
	 * that waited for a row lock (an erasure's) has not read the
	 * invalidations sent meanwhile: read them now.
	 */
	AcceptInvalidationMessages();
	exempt = gdpr_retention_exempt(RelationGetRelid(rel), event_class);
	if (!exempt && !gdpr_erasure_exempt(RelationGetRelid(rel)) && restrictions_exist())
		check_restrictions(rel, oldtup, newtup);
	if (!exempt && gdpr_erasure_running())
		check_erasure_scope(rel, oldtup, newtup);

	/*
	 * Rows purged for retention leave no copy of their values behind: the
	 * batch records one RETENTION event instead (retention.c).
	 */
	if (exempt || !gdpr_event_wanted(event_class))
		return PointerGetDatum(NULL);

	if (oldtup != NULL && newtup != NULL)
	{
		bool		any = false;

		changed = changed_columns(desc, oldtup, newtup);
		for (int i = 0; i < desc->natts && !any; i++)
			any = changed[i];
		/* an UPDATE that wrote every value back as it was changed nothing to keep for years */
		if (!any && !gdpr_audit_unchanged_updates)
			return PointerGetDatum(NULL);
	}
	capture_row_event(rel, event, oldtup, newtup, changed);
	return PointerGetDatum(NULL);
}

/*
 * Captures one row event: made now, as the caller, and written with the
 * rest of its statement's (see "Statement batches" below), or at once when
 * no statement the extension saw begin is ending (a logical replication
 * apply fires row triggers outside the executor).
 */
static void
capture_row_event(Relation rel, const char *event, HeapTuple oldtup, HeapTuple newtup,
				  bool *changed)
{
	StatementBatch *b = nbatches > 0 ? batches[nbatches - 1] : NULL;
	RowEvent	e;
	AuditPlanData *d;
	volatile bool kept = false;

	/* kept in the batch, the event needs SPI for nothing */
	if (b == NULL && SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	d = acquire_row_plan(rel);
	if (d->elsewhere)
	{
		release_row_plan(d);
		if (b == NULL)
			SPI_finish();
		return;
	}
	PG_TRY();
	{
		make_row_event(&e, d, RelationGetDescr(rel), event, oldtup, newtup, changed, b != NULL);
		if (b == NULL)
			write_row_event(&e);	/* now, in this context */
		else
		{
			keep_row_event(b, &e);
			kept = true;
		}
	}
	PG_FINALLY();
	{
		/* a kept event holds its use of the build until it is written */
		if (!kept)
			release_row_plan(d);
	}
	PG_END_TRY();
	if (b == NULL)
		SPI_finish();
	if (b != NULL && (b->nevents >= CAPTURE_BATCH_ROWS || b->bytes >= CAPTURE_BATCH_BYTES))
		flush_batch(b);
}

/*
 * Everything one row event needs, in the caller's security context: the
 * changed columns, the images without what they must leave out, the row's
 * key and the subject keys its own columns give.  Keys that other tables
 * give are looked up now, or (defer) left to the write, with the rows they
 * come from.
 */
static void
make_row_event(RowEvent *e, AuditPlanData *d, TupleDesc desc, const char *event,
			   HeapTuple oldtup, HeapTuple newtup, bool *changed, bool defer)
{
	HeapTuple	tup = newtup != NULL ? newtup : oldtup;

	memset(e, 0, sizeof(RowEvent));
	e->d = d;
	e->event = event;
	if (changed != NULL)
		e->changed = names_array(d, changed);

	/*
	 * The images, as the caller: to_jsonb() runs casts to json that any role
	 * can define for its own types, and those must never run with the audit
	 * owner's rights.  They leave out secret columns, and under "changed"
	 * the columns an UPDATE left alone.
	 */
	e->row_key = columns_image(d, desc, tup, d->key_column);
	if (gdpr_audit_values != GDPR_VALUES_NONE)
	{
		bool	   *which = palloc(sizeof(bool) * d->natts);

		for (int i = 0; i < d->natts; i++)
			which[i] = !d->secret[i] &&
				(changed == NULL || gdpr_audit_values != GDPR_VALUES_CHANGED || changed[i]);
		if (oldtup != NULL)
			e->old_values = columns_image(d, desc, oldtup, which);
		if (newtup != NULL)
			e->new_values = columns_image(d, desc, newtup, which);
	}

	e->keys = column_keys(d, tup, desc);
	if (d->key_plan != NULL)
		e->row = heap_copy_tuple_as_datum(tup, desc);
	/* an UPDATE that moves the row to another subject is about the old one too */
	if (keys_changed(d, changed))
	{
		e->oldkeys = column_keys(d, oldtup, desc);
		if (d->key_plan != NULL)
			e->oldrow = heap_copy_tuple_as_datum(oldtup, desc);
	}
	if (!defer)
		query_keys_now(e);
	e->erasing = gdpr_erasing_key(d->kind);
}

/* The keys the key query gives one event's rows, looked up now */
static void
query_keys_now(RowEvent *e)
{
	if (e->row != (Datum) 0)
		query_keys(e->d, e->row, e->keys);
	if (e->oldrow != (Datum) 0)
		query_keys(e->d, e->oldrow, e->oldkeys);
	e->row = e->oldrow = (Datum) 0;
}

/*
 * Writes one row event with its relation's own INSERT, as the audit owner.
 * The INSERT reads nothing but its parameters: planning a query over a
 * user's table runs the table owner's code (index predicates, a view's
 * body).  SPI must be connected.
 */
static void
write_row_event(RowEvent *e)
{
	Datum		values[ROW_NPARAMS];
	bool		isnull[ROW_NPARAMS];
	char		nulls[ROW_NPARAMS];
	int			ret;

	query_keys_now(e);
	if (e->ctx == NULL)
		e->ctx = event_context(NULL);
	event_values(e, values, isnull);
	for (int i = 0; i < ROW_NPARAMS; i++)
		nulls[i] = isnull[i] ? 'n' : ' ';
	ret = gdpr_execute_as_owner(e->d->plan, NULL, 0, NULL, values, nulls, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "SPI_execute_plan failed: %d", ret);
}

/*
 * The values of a made event whose keys are complete, in the order of the
 * row plan's parameters (context first; see ROW_NPARAMS).
 */
static void
event_values(const RowEvent *e, Datum *values, bool *isnull)
{
	AuditPlanData *d = e->d;

	for (int i = 0; i < CONTEXT_NPARAMS; i++)
	{
		values[i] = e->ctx->values[i];
		isnull[i] = e->ctx->nulls[i] == 'n';
	}
	values[P_EVENT] = CStringGetTextDatum(e->event);
	isnull[P_EVENT] = false;
	values[P_CHANGED] = e->changed;
	isnull[P_CHANGED] = e->changed == (Datum) 0;
	values[P_OLD_IMAGE] = e->old_values;
	isnull[P_OLD_IMAGE] = e->old_values == (Datum) 0;
	values[P_NEW_IMAGE] = e->new_values;
	isnull[P_NEW_IMAGE] = e->new_values == (Datum) 0;
	values[P_ROWKEY] = e->row_key;
	isnull[P_ROWKEY] = false;
	isnull[P_SUBJECT] = !(d->owned && e->keys[0] != NULL);
	values[P_SUBJECT] = isnull[P_SUBJECT] ? (Datum) 0 : CStringGetTextDatum(e->keys[0]);
	values[P_RELATED] = related_array(d, e->keys, e->oldkeys, e->erasing);
	isnull[P_RELATED] = values[P_RELATED] == (Datum) 0;
}

/*
 * Each path's key source: a column of the row, or a column of the key
 * query (d->key_plan), which follows the paths that leave the row; and the
 * columns an UPDATE must change for the keys to differ.
 */
static void
plan_keys(AuditPlanData *d, const GdprTableMap *map, Relation rel, MemoryContext mcxt)
{
	TupleDesc	desc = RelationGetDescr(rel);
	StringInfoData sql;
	StringInfoData batch;
	int			nkeyed = 0;
	ListCell   *lc;

	initStringInfo(&sql);
	initStringInfo(&batch);
	d->npaths = list_length(map->paths);
	d->keys = MemoryContextAllocZero(mcxt, sizeof(KeySource) * Max(d->npaths, 1));
	d->key_input = MemoryContextAllocZero(mcxt, sizeof(bool) * Max(desc->natts, 1));
	d->owned = map->paths != NIL && ((GdprPath *) linitial(map->paths))->owner;
	foreach(lc, map->paths)
	{
		GdprPath   *path = lfirst(lc);
		KeySource  *k = &d->keys[foreach_current_index(lc)];
		GdprPathSql p = gdpr_path_sql(map, path, "($1).");

		if (p.row_column != NULL)
		{
			bool		isvarlena;

			k->attnum = attnum_of(desc, p.row_column);
			if (k->attnum != InvalidAttrNumber)
			{
				getTypeOutputInfo(TupleDescAttr(desc, k->attnum - 1)->atttypid, &k->typoutput,
								  &isvarlena);
				d->key_input[k->attnum - 1] = true;
			}
		}
		else if (strcmp(p.key, "NULL") != 0)
		{
			ListCell   *c;

			appendStringInfo(&sql, "%s%s", sql.len == 0 ? "SELECT " : ", ",
							 gdpr_subject_sql(map, path, "$1"));
			appendStringInfo(&batch, "%s%s", batch.len == 0 ? "SELECT " : ", ",
							 gdpr_subject_sql(map, path, "gdpr_row"));
			k->column = ++nkeyed;
			if (path->condition != NULL)	/* any column can decide it */
				memset(d->key_input, true, sizeof(bool) * desc->natts);
			else if (path->subject_column != NULL)
			{
				AttrNumber	attnum = attnum_of(desc, path->subject_column);

				if (attnum != InvalidAttrNumber)
					d->key_input[attnum - 1] = true;
			}
			else
				foreach(c, ((GdprStep *) linitial(path->steps))->from_cols)
				{
					AttrNumber	attnum = attnum_of(desc, lfirst(c));

					if (attnum != InvalidAttrNumber)
						d->key_input[attnum - 1] = true;
				}
		}
	}
	if (nkeyed > 0)
	{
		Oid			rowtype = rel->rd_rel->reltype;

		d->key_plan = SPI_prepare(sql.data, 1, &rowtype);
		if (d->key_plan == NULL)
			elog(ERROR, "SPI_prepare failed for \"%s\"", sql.data);

		/* a statement's rows in one query: the output keeps the array's order */
		d->rowarraytype = get_array_type(rowtype);
		if (OidIsValid(d->rowarraytype))
		{
			appendStringInfoString(&batch, " FROM pg_catalog.unnest($1) AS gdpr_row");
			d->batch_key_plan = SPI_prepare(batch.data, 1, &d->rowarraytype);
			if (d->batch_key_plan == NULL)
				elog(ERROR, "SPI_prepare failed for \"%s\"", batch.data);
		}
	}
}

/* Whether attribute i (0-based) of the row differs between the two versions, byte for byte */
static bool
column_changed(TupleDesc desc, int i, HeapTuple oldtup, HeapTuple newtup)
{
	Form_pg_attribute att = TupleDescAttr(desc, i);
	bool		oldnull,
				newnull;
	Datum		oldval,
				newval;

	if (att->attisdropped)
		return false;
	oldval = heap_getattr(oldtup, i + 1, desc, &oldnull);
	newval = heap_getattr(newtup, i + 1, desc, &newnull);
	return oldnull != newnull || (!oldnull && !datumIsEqual(oldval, newval, att->attbyval, att->attlen));
}

/* An erasure changes its subject's rows only (erase.c) */
static void
check_erasure_scope(Relation rel, HeapTuple oldtup, HeapTuple newtup)
{
	TupleDesc	desc = RelationGetDescr(rel);
	HeapTuple	keytup = oldtup != NULL ? oldtup : newtup;
	AuditPlanData *d;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	d = acquire_row_plan(rel);
	PG_TRY();
	{
		gdpr_erasure_check_row(d->table, d->kind,
							   oldtup != NULL ? subject_keys(d, oldtup, desc) : NULL,
							   newtup != NULL ? subject_keys(d, newtup, desc) : NULL,
							   d->npaths,
							   DatumGetJsonbP(columns_image(d, desc, keytup, d->key_column)));
	}
	PG_FINALLY();
	{
		release_row_plan(d);
	}
	PG_END_TRY();
	SPI_finish();
}

/* The restrictions on the subjects of the old and the new row */
static void
check_restrictions(Relation rel, HeapTuple oldtup, HeapTuple newtup)
{
	TupleDesc	desc = RelationGetDescr(rel);
	AuditPlanData *d;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	d = acquire_row_plan(rel);
	PG_TRY();
	{
		/*
		 * A reference table's copies change together: the copy whose
		 * changes are recorded checks them, for every copy.
		 */
		if (d->owned && !d->elsewhere && oldtup != NULL)
			check_restriction(d, subject_keys(d, oldtup, desc)[0], false);
		if (d->owned && !d->elsewhere && newtup != NULL)
			check_restriction(d, subject_keys(d, newtup, desc)[0], true);
	}
	PG_FINALLY();
	{
		release_row_plan(d);
	}
	PG_END_TRY();
	SPI_finish();
}

/*
 * The image of some of a row's columns (which, by attribute number - 1):
 * to_jsonb() of a record of those columns alone, which is to_jsonb() of the
 * row less the others, for the cost of the columns kept.  As the caller.
 */
static Datum
columns_image(AuditPlanData *d, TupleDesc desc, HeapTuple tup, const bool *which)
{
	static FmgrInfo *record_to_jsonb = NULL;
	ImageShape *shape = image_shape(d, desc, which);
	Datum	   *values = palloc(sizeof(Datum) * Max(shape->ncols, 1));
	bool	   *isnull = palloc(sizeof(bool) * Max(shape->ncols, 1));

	if (record_to_jsonb == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
		FmgrInfo   *f = palloc(sizeof(FmgrInfo));

		fmgr_info(F_TO_JSONB, f);
		f->fn_expr = (Node *) makeFuncExpr(F_TO_JSONB, JSONBOID,
										   list_make1(makeNullConst(RECORDOID, -1, InvalidOid)),
										   InvalidOid, InvalidOid, COERCE_EXPLICIT_CALL);
		MemoryContextSwitchTo(old);
		record_to_jsonb = f;
	}
	for (int i = 0; i < shape->ncols; i++)
		values[i] = heap_getattr(tup, shape->attnums[i], desc, &isnull[i]);
	return FunctionCall1(record_to_jsonb,
						 HeapTupleGetDatum(heap_form_tuple(shape->desc, values, isnull)));
}

/*
 * The record type of the columns which names, made on first use and kept
 * with the plan (a statement's rows mostly share one or two).
 */
static ImageShape *
image_shape(AuditPlanData *d, TupleDesc desc, const bool *which)
{
	ImageShape *shape;
	MemoryContext old;
	ListCell   *lc;
	int			n = 0;

	foreach(lc, d->shapes)
	{
		shape = lfirst(lc);
		if (memcmp(shape->which, which, sizeof(bool) * d->natts) == 0)
			return shape;
	}
	old = MemoryContextSwitchTo(d->mcxt);
	shape = palloc0(sizeof(ImageShape));
	shape->which = palloc(sizeof(bool) * d->natts);
	memcpy(shape->which, which, sizeof(bool) * d->natts);
	for (int i = 0; i < d->natts; i++)
		n += which[i] ? 1 : 0;
	shape->ncols = n;
	shape->attnums = palloc(sizeof(AttrNumber) * Max(n, 1));
	shape->desc = CreateTemplateTupleDesc(n);
	n = 0;
	for (int i = 0; i < d->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (!which[i])
			continue;
		shape->attnums[n] = i + 1;
		TupleDescInitEntry(shape->desc, n + 1, NameStr(att->attname), att->atttypid,
						   att->atttypmod, att->attndims);
		TupleDescInitEntryCollation(shape->desc, n + 1, att->attcollation);
		n++;
	}
	BlessTupleDesc(shape->desc);
	d->shapes = lappend(d->shapes, shape);
	MemoryContextSwitchTo(old);
	return shape;
}

/*
 * AFTER TRUNCATE ... FOR EACH STATEMENT.  On a partitioned table it is
 * attached to every partition too, because TRUNCATE of one partition fires
 * only that partition's triggers; the event names the root table, and the
 * partition in its detail.
 */
Datum
gdpr_audit_truncate(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Oid			relid;
	Oid			root;
	Jsonb	   *detail = NULL;
	char	   *table_name;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("gdpr.audit_truncate() must be fired by TRUNCATE"),
				 errhint("Attach it with gdpr.register_table(), not by hand.")));

	if (!gdpr_event_wanted(GDPR_EV_TRUNCATE) ||
		(SessionReplicationRole == SESSION_REPLICATION_ROLE_REPLICA && !gdpr_audit_replicated))
		return PointerGetDatum(NULL);

	relid = RelationGetRelid(trigdata->tg_relation);
	root = gdpr_root_relid(relid);
	table_name = gdpr_relation_name(root);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/* events are undeletable: nobody records one for a table outside the map */
	if (gdpr_load_table_map(root, CurrentMemoryContext) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table %s is not registered with gdpr", table_name),
				 errdetail("gdpr.audit_truncate() audits registered tables only."),
				 errhint("Register the table with gdpr.register_table(), which attaches the trigger.")));
	if (root != relid)
	{
		StringInfoData buf;

		initStringInfo(&buf);
		appendStringInfoString(&buf, "{\"partition\": ");
		escape_json(&buf, quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
													 get_rel_name(relid)));
		appendStringInfoChar(&buf, '}');
		detail = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
	}

	gdpr_audit_event("TRUNCATE", true, NULL, NULL, table_name, detail);
	SPI_finish();
	return PointerGetDatum(NULL);
}

/*
 * gdpr.log_event(event, subject, success, detail, kind, table_name): records
 * an event the application knows of (a login, a failed login, a page that
 * showed personal data).  Returns the event's id, or NULL when the filters
 * leave it out.
 */
/* Whether an event name is one the extension writes itself */
bool
gdpr_reserved_event(const char *event)
{
	for (int i = 0; reserved_events[i] != NULL; i++)
		if (pg_strcasecmp(event, reserved_events[i]) == 0)
			return true;
	for (int i = 0; reserved_prefixes[i] != NULL; i++)
		if (pg_strncasecmp(event, reserved_prefixes[i], strlen(reserved_prefixes[i])) == 0)
			return true;
	return false;
}

/*
 * gdpr.log_event(event, subject, success, detail, kind, table_name): an
 * application's event.  The extension's own names are refused.
 */
Datum
gdpr_log_event(PG_FUNCTION_ARGS)
{
	if (!PG_ARGISNULL(0))
	{
		char	   *event = text_to_cstring(PG_GETARG_TEXT_PP(0));

		if (gdpr_reserved_event(event))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("event name \"%s\" is reserved for the events gdpr writes itself", event),
					 errdetail("Application events may not pose as the extension's (INSERT, DDL, ERASE, MAP_..., see README)."),
					 errhint("Name the application's event after what happened in it, such as 'USER_LOGIN' or 'APP_DELETE'.")));
	}
	return log_event(fcinfo);
}

/*
 * gdpr._log_event(...): the same, for the extension's own SQL functions,
 * which write its reserved names.  Not callable by PUBLIC (privileges.sql).
 */
Datum
gdpr_log_system_event(PG_FUNCTION_ARGS)
{
	return log_event(fcinfo);
}

/*
 * gdpr._log_ddl_event(event, detail, kind, table_name): DDL and AUDIT_OFF
 * events, written by the extension's event triggers as the role whose
 * command fired them (any role may run DDL).  Refused anywhere but in an
 * event trigger, so no role can forge one by calling it.
 */
Datum
gdpr_log_ddl_event(PG_FUNCTION_ARGS)
{
	char	   *event = PG_ARGISNULL(0) ? "" : text_to_cstring(PG_GETARG_TEXT_PP(0));
	Jsonb	   *detail = PG_ARGISNULL(1) ? NULL : PG_GETARG_JSONB_P(1);
	char	   *kind = PG_ARGISNULL(2) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(2));
	char	   *table_name = PG_ARGISNULL(3) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(3));
	int64		id;

	if ((strcmp(event, "DDL") != 0 && strcmp(event, "AUDIT_OFF") != 0) || in_gdpr_event_trigger == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("gdpr._log_ddl_event() records the extension's event triggers' findings only"),
				 errhint("Record an application's event with gdpr.log_event().")));
	if (!gdpr_event_wanted(GDPR_EV_DDL))
		PG_RETURN_NULL();
	check_event_text("table_name", table_name);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	id = gdpr_audit_event(event, true, kind, NULL, table_name, detail);
	SPI_finish();
	PG_RETURN_INT64(id);
}

/* gdpr._capture_off_allowed(): see audit.sql */
Datum
gdpr_capture_off_allowed(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(gdpr_allow_capture_off && superuser());
}

/*
 * gdpr._event_trigger(): the extension's ddl_command_end and sql_drop
 * event triggers.  Runs their PL/pgSQL as the role whose command fired
 * them, and marks that time, so that gdpr._log_ddl_event accepts events
 * from them alone: PostgreSQL lets any SQL run inside a DDL command (CREATE
 * TABLE AS, a USING expression) see the command's event trigger state.
 */
Datum
gdpr_event_trigger(PG_FUNCTION_ARGS)
{
	EventTriggerData *trigdata = (EventTriggerData *) fcinfo->context;
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1];
	const char *sql;

	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_EVENT_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("gdpr._event_trigger() must be fired as an event trigger")));
	sql = strcmp(trigdata->event, "sql_drop") == 0
		? "SELECT gdpr._on_sql_drop($1)" : "SELECT gdpr._on_ddl_command_end($1)";
	args[0] = CStringGetTextDatum(GetCommandTagName(trigdata->tag));
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	in_gdpr_event_trigger++;
	PG_TRY();
	{
		if (SPI_execute_with_args(sql, 1, argtypes, args, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "SPI_execute_with_args failed");
	}
	PG_FINALLY();
	{
		in_gdpr_event_trigger--;
	}
	PG_END_TRY();
	SPI_finish();
	PG_RETURN_NULL();
}

static Datum
log_event(FunctionCallInfo fcinfo)
{
	char	   *event;
	char	   *subject;
	bool		success;
	Jsonb	   *detail;
	char	   *kind;
	char	   *table_name;
	int			event_class;
	int64		id;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("event must not be NULL"),
				 errhint("Name the event, such as 'USER_LOGIN'.")));
	event = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (event[0] == '\0' || strlen(event) > 64 ||
		strspn(event, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-") != strlen(event))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid event name \"%s\"", event),
				 errdetail("Event names are 1 to 64 letters, digits, '_', '.', ':' or '-'."),
				 errhint("Use a name such as 'USER_LOGIN' and put details in the detail argument.")));
	subject = PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));
	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("success must not be NULL"),
				 errhint("Pass true or false.")));
	success = PG_GETARG_BOOL(2);
	detail = PG_ARGISNULL(3) ? NULL : PG_GETARG_JSONB_P(3);
	kind = PG_ARGISNULL(4) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(4));
	table_name = PG_ARGISNULL(5) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(5));

	/* events are kept for years and nobody may delete them: bounded, so no role fills the disk */
	check_event_text("subject", subject);
	check_event_text("kind", kind);
	check_event_text("table_name", table_name);
	if (detail != NULL && VARSIZE(detail) - VARHDRSZ > gdpr_max_event_detail)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("event detail has %zu bytes, more than gdpr.max_event_detail (%d)",
						(size_t) (VARSIZE(detail) - VARHDRSZ), gdpr_max_event_detail),
				 errhint("Keep the detail to identifiers and short facts; a superuser can raise gdpr.max_event_detail.")));

	/* the map's own history is never filtered out */
	if (strncmp(event, "MAP_", 4) == 0)
		event_class = 0;
	else if (strcmp(event, "DDL") == 0)
		event_class = GDPR_EV_DDL;
	else
		event_class = GDPR_EV_APP;
	if (event_class != 0 && !gdpr_event_wanted(event_class))
		PG_RETURN_NULL();

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (kind != NULL)
	{
		Oid			argtypes[1] = {TEXTOID};
		Datum		args[1] = {CStringGetTextDatum(kind)};

		if (SPI_execute_with_args("SELECT 1 FROM gdpr.subject_kind WHERE kind = $1",
								  1, argtypes, args, NULL, true, 1) != SPI_OK_SELECT)
			elog(ERROR, "SPI_execute_with_args failed");
		if (SPI_processed == 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("subject kind \"%s\" is not registered", kind),
					 errhint("See SELECT kind FROM gdpr.subject_kind.")));
	}
	id = gdpr_audit_event(event, success, kind, subject, table_name, detail);
	SPI_finish();
	PG_RETURN_INT64(id);
}

/*
 * The relcache callback's part for audit: forget the plans of one relation,
 * or of all (InvalidOid), and the audit table's owner.  Builds are retired
 * when rebuilt, not here: a callback may run while one is being executed.
 */
void
gdpr_audit_invalidate(Oid relid)
{
	HASH_SEQ_STATUS status;
	AuditPlan  *ap;

	if (!OidIsValid(relid) || relid == audit_log_relid)
	{
		audit_log_owner = InvalidOid;
		batch_plan_stale = true;
	}
	if (!OidIsValid(relid) || relid == restriction_relid)
		restrictions_known = false;
	if (audit_plans == NULL)
		return;
	if (OidIsValid(relid))
	{
		ap = hash_search(audit_plans, &relid, HASH_FIND, NULL);
		if (ap != NULL)
			ap->valid = false;
		return;
	}
	hash_seq_init(&status, audit_plans);
	while ((ap = hash_seq_search(&status)) != NULL)
		ap->valid = false;
}

/*
 * The current build of rel's plans, held until release_row_plan().  The map
 * is read with the latest snapshot, not the statement's: the invalidation
 * that brought us here may come from a map change committed after the
 * statement began.
 */
static AuditPlanData *
acquire_row_plan(Relation rel)
{
	Oid			relid = RelationGetRelid(rel);
	AuditPlan  *ap;
	bool		found;

	if (audit_plans == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(AuditPlan);
		ctl.hcxt = CacheMemoryContext;
		audit_plans = hash_create("gdpr audit plans", 64, &ctl,
								  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	ap = hash_search(audit_plans, &relid, HASH_ENTER, &found);
	if (!found)
	{
		ap->valid = false;
		ap->data = NULL;
	}
	/* valid is set before the build: an invalidation during it makes us build again */
	while (!ap->valid)
	{
		AuditPlanData *d;

		if (ap->data != NULL)
			retire_row_plan(ap->data);
		ap->data = NULL;
		ap->valid = true;
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		PushActiveSnapshot(GetLatestSnapshot());
		PG_TRY();
		{
			d = build_row_plan(rel);
		}
		PG_CATCH();
		{
			ap->valid = false;
			PG_RE_THROW();
		}
		PG_END_TRY();
		PopActiveSnapshot();
		SPI_finish();
		ap->data = d;
	}
	ap->data->uses++;
	return ap->data;
}

static void
release_row_plan(AuditPlanData *d)
{
	Assert(d->uses > 0);
	if (--d->uses == 0 && d->retired)
		retire_row_plan(d);
}

/* Takes a build out of use: freed now, or by the release of its last use */
static void
retire_row_plan(AuditPlanData *d)
{
	d->retired = true;
	if (d->uses > 0)
		return;
	SPI_freeplan(d->plan);
	if (d->key_plan != NULL)
		SPI_freeplan(d->key_plan);
	if (d->batch_key_plan != NULL)
		SPI_freeplan(d->batch_key_plan);
	if (d->restrict_plan != NULL)
		SPI_freeplan(d->restrict_plan);
	MemoryContextDelete(d->mcxt);
}

/*
 * Builds the INSERT of one relation's row events from its map.  The trigger
 * is attached by the map functions only; on a relation outside the map it
 * refuses rather than record events without a subject.
 */
static AuditPlanData *
build_row_plan(Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	Oid			root = gdpr_root_relid(RelationGetRelid(rel));
	MemoryContext mcxt;
	MemoryContext oldcxt;
	AuditPlanData *d;
	GdprTableMap *map;
	StringInfoData sql;
	Oid			argtypes[ROW_NPARAMS];
	Bitmapset  *pkattrs;

	/* a child of the caller's context until complete: an error frees it */
	mcxt = AllocSetContextCreate(CurrentMemoryContext, "gdpr audit plan", ALLOCSET_SMALL_SIZES);
	oldcxt = MemoryContextSwitchTo(mcxt);
	d = palloc0(sizeof(AuditPlanData));
	d->mcxt = mcxt;
	MemoryContextSwitchTo(oldcxt);
	map = gdpr_load_table_map(root, oldcxt);
	/* on a Citus node, a shard is covered by its table's map */
	if (map == NULL)
	{
		bool		recorded_here;
		Oid			table = gdpr_citus_shard_table(root, &recorded_here);

		if (OidIsValid(table))
		{
			map = gdpr_load_table_map(table, oldcxt);
			if (map == NULL && gdpr_cluster_catch_up())
			{
				/* applied and committed apart: a new snapshot sees it, whatever the isolation */
				PushActiveSnapshot(GetLatestSnapshot());
				map = gdpr_load_table_map(table, oldcxt);
				PopActiveSnapshot();
			}
			d->elsewhere = !recorded_here;
		}
	}
	if (map == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table %s is not registered with gdpr", gdpr_relation_name(root)),
				 errdetail("gdpr.audit_row() audits registered tables only."),
				 errhint("Register the table with gdpr.register_table(), which attaches the trigger.")));

	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "INSERT INTO gdpr.audit_log (%s, event, changed_columns, old_values, new_values, "
					 "row_key, subject_id, related_subject_ids, table_name, subject_kind) VALUES (%s, "
					 "$10, $11, $12, $13, $14, $15, $16, %s, %s)",
					 context_columns, context_values, quote_literal_cstr(map->qualified_name),
					 quote_literal_cstr(map->kind));
	memcpy(argtypes, context_types, sizeof(context_types));
	argtypes[P_EVENT] = TEXTOID;
	argtypes[P_CHANGED] = TEXTARRAYOID;
	argtypes[P_OLD_IMAGE] = JSONBOID;
	argtypes[P_NEW_IMAGE] = JSONBOID;
	argtypes[P_ROWKEY] = JSONBOID;
	argtypes[P_SUBJECT] = TEXTOID;
	argtypes[P_RELATED] = TEXTARRAYOID;
	d->plan = SPI_prepare(sql.data, ROW_NPARAMS, argtypes);
	if (d->plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql.data,
			 SPI_result_code_string(SPI_result));

	plan_keys(d, map, rel, mcxt);

	if (d->owned)
	{
		const char *kind = quote_literal_cstr(map->kind);
		Oid			texttype = TEXTOID;

		/* an erased subject is marked by its pseudonym, never by its key (see erase.c) */
		char	   *check = psprintf("SELECT pg_catalog.bool_or(r.source OPERATOR(pg_catalog.=) 'erased'), "
									 "       pg_catalog.min(r.source) "
									 "  FROM gdpr.restriction r "
									 " WHERE r.kind OPERATOR(pg_catalog.=) %s "
									 "   AND r.subject_id OPERATOR(pg_catalog.=) ANY (ARRAY[$1, "
									 "       gdpr._pseudonym('subject' OPERATOR(pg_catalog.||) E'\\x1f' "
									 "         OPERATOR(pg_catalog.||) %s OPERATOR(pg_catalog.||) E'\\x1f' "
									 "         OPERATOR(pg_catalog.||) $1)])",
									 kind, kind);

		d->restrict_plan = SPI_prepare(check, 1, &texttype);
		if (d->restrict_plan == NULL)
			elog(ERROR, "SPI_prepare failed for \"%s\"", check);
	}
	d->table = map->relid;
	d->kind = MemoryContextStrdup(mcxt, map->kind);

	MemoryContextSwitchTo(mcxt);
	d->kind_text = CStringGetTextDatum(map->kind);
	d->table_name = CStringGetTextDatum(map->qualified_name);
	d->natts = desc->natts;
	d->secret = palloc0(sizeof(bool) * desc->natts);
	d->attnames = palloc0(sizeof(Datum) * desc->natts);
	pkattrs = RelationGetIndexAttrBitmap(rel, INDEX_ATTR_BITMAP_PRIMARY_KEY);
	d->key_column = palloc0(sizeof(bool) * desc->natts);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		d->attnames[i] = CStringGetTextDatum(NameStr(att->attname));
		d->secret[i] = att->attisdropped || gdpr_column_is_secret(map, NameStr(att->attname));
		d->key_column[i] = !att->attisdropped &&
			bms_is_member(att->attnum - FirstLowInvalidHeapAttributeNumber, pkattrs);
	}

	/* complete: now it may outlive the statement */
	if (SPI_keepplan(d->plan) != 0 ||
		(d->key_plan != NULL && SPI_keepplan(d->key_plan) != 0) ||
		(d->batch_key_plan != NULL && SPI_keepplan(d->batch_key_plan) != 0) ||
		(d->restrict_plan != NULL && SPI_keepplan(d->restrict_plan) != 0))
		elog(ERROR, "SPI_keepplan failed");
	if (d->key_plan != NULL)
		d->key_sql = ((CachedPlanSource *) linitial(SPI_plan_get_plan_sources(d->key_plan)))->query_string;
	if (d->batch_key_plan != NULL)
		d->batch_key_sql = ((CachedPlanSource *) linitial(SPI_plan_get_plan_sources(d->batch_key_plan)))->query_string;
	MemoryContextSetParent(mcxt, CacheMemoryContext);
	MemoryContextSwitchTo(oldcxt);
	return d;
}

/*
 * Which columns an UPDATE changed, by comparing the stored representations:
 * a value rewritten to itself does not count, a toasted value left alone
 * keeps its toast pointer and compares equal.
 */
static bool *
changed_columns(TupleDesc desc, HeapTuple oldtup, HeapTuple newtup)
{
	bool	   *changed = palloc0(sizeof(bool) * desc->natts);

	for (int i = 0; i < desc->natts; i++)
		changed[i] = column_changed(desc, i, oldtup, newtup);
	return changed;
}

/* The names of the columns flagged in which, as a text[] datum */
static Datum
names_array(const AuditPlanData *d, const bool *which)
{
	Datum	   *elems = palloc(sizeof(Datum) * d->natts);
	int			n = 0;

	for (int i = 0; i < d->natts; i++)
		if (which[i])
			elems[n++] = d->attnames[i];
	return PointerGetDatum(construct_array(elems, n, TEXTOID, -1, false, TYPALIGN_INT));
}

/*
 * Who, when, from where: captured in the caller's security context, before
 * the switch to the audit table's owner.
 */
static void
fill_context(Datum *values, char *nulls)
{
	TimestampTz now = GetCurrentStatementStartTimestamp();

	memset(nulls, ' ', CONTEXT_NPARAMS);
	values[0] = TimestampTzGetDatum(now);
	values[1] = Int64GetDatum((int64) U64FromFullTransactionId(GetTopFullTransactionId()));
	values[2] = CStringGetTextDatum(GetUserNameFromId(GetSessionUserId(), false));
	values[3] = CStringGetTextDatum(GetUserNameFromId(GetUserId(), false));
	if (gdpr_actor != NULL && gdpr_actor[0] != '\0')
		values[4] = CStringGetTextDatum(gdpr_actor);
	else
		nulls[4] = 'n';
	if (gdpr_client_addr != NULL && gdpr_client_addr[0] != '\0')
		values[5] = DirectFunctionCall1(inet_in, CStringGetDatum(gdpr_client_addr));
	else
		nulls[5] = 'n';
	if (gdpr_user_agent != NULL && gdpr_user_agent[0] != '\0')
		values[6] = CStringGetTextDatum(gdpr_user_agent);
	else
		nulls[6] = 'n';
	if (application_name != NULL && application_name[0] != '\0')
		values[7] = CStringGetTextDatum(application_name);
	else
		nulls[7] = 'n';
	values[8] = TimestampTzGetDatum(gdpr_retention_until(now));
}

static bool
restrictions_exist(void)
{
	bool		isnull;

	if (restrictions_known)
		return any_restrictions;
	restriction_relid = get_relname_relid("restriction", get_namespace_oid("gdpr", false));
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (gdpr_execute_as_owner(NULL, "SELECT EXISTS (SELECT 1 FROM gdpr.restriction)", 0, NULL, NULL,
							  NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute failed");
	any_restrictions = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	restrictions_known = true;
	return any_restrictions;
}

/*
 * Refuses a change to a row whose subject is restricted (Art. 18), or any
 * write of a row for a subject that was erased.  SPI must be connected.
 */
static void
check_restriction(AuditPlanData *d, const char *subject, bool erased_only)
{
	Datum		values[1];
	bool		isnull;
	bool		erased;
	int			ret;

	if (subject == NULL)
		return;
	values[0] = CStringGetTextDatum(subject);
	/* a fresh snapshot: an erasure this statement waited for has committed its marker */
	ret = gdpr_execute_as_owner(d->restrict_plan, NULL, 0, NULL, values, NULL, false, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "SPI_execute_plan failed: %d", ret);
	erased = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (isnull)
		return;
	if (erased)
		ereport(ERROR,
				(errcode(ERRCODE_GDPR_ERASED),
				 errmsg("subject %s of kind \"%s\" was erased", subject, d->kind),
				 errhint("An erased subject's row is kept anonymized; write nothing new about them.")));
	if (erased_only)
		return;
	/* the reason can be confidential (a legal claim): the error only says where it is */
	if (strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2), "manual") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_GDPR_RESTRICTED),
				 errmsg("processing of subject %s of kind \"%s\" is restricted", subject, d->kind),
				 errdetail("The restriction was set with gdpr_restrict(); gdpr_admin can read its reason in gdpr.restriction."),
				 errhint("Rows of a restricted subject can be read, exported and erased, not changed; lift the restriction with gdpr_unrestrict().")));
	ereport(ERROR,
			(errcode(ERRCODE_GDPR_RESTRICTED),
			 errmsg("processing of subject %s of kind \"%s\" is restricted", subject, d->kind),
			 errdetail("An erasure of the subject was requested and is not yet due; gdpr_admin can see it in gdpr.erasure_request."),
			 errhint("Rows of a subject awaiting erasure can be read, exported and erased, not changed; cancel the request with gdpr_cancel_erasure().")));
}

/*
 * The subject key each path of the map finds for a row, as text (NULL where
 * a path finds none), in the caller's security context.  SPI must be
 * connected.
 */
static char **
subject_keys(AuditPlanData *d, HeapTuple tup, TupleDesc desc)
{
	char	  **keys = column_keys(d, tup, desc);

	if (d->key_plan != NULL)
		query_keys(d, heap_copy_tuple_as_datum(tup, desc), keys);
	return keys;
}

/* The keys a row's own columns give; the key query's left NULL */
static char **
column_keys(AuditPlanData *d, HeapTuple tup, TupleDesc desc)
{
	char	  **keys = palloc0(sizeof(char *) * Max(d->npaths, 1));

	for (int i = 0; i < d->npaths; i++)
	{
		KeySource  *k = &d->keys[i];
		bool		isnull;
		Datum		value;

		if (k->attnum == InvalidAttrNumber)
			continue;
		value = heap_getattr(tup, k->attnum, desc, &isnull);
		if (!isnull)
			keys[i] = OidOutputFunctionCall(k->typoutput, value);
	}
	return keys;
}

/*
 * Runs one of the extension's lookups of subject keys, as the caller.  Not
 * a read (it shows the writer only keys), and run as a statement that may
 * write, so that its snapshot sees rows the writer's own statement made (a
 * CTE that inserted the parent).
 */
static int
run_key_query(SPIPlanPtr plan, const char *sql, Datum *args)
{
	const char *outer = gdpr_internal_sql;
	int			ret;

	gdpr_internal_sql = sql;
	PG_TRY();
	{
		ret = SPI_execute_plan(plan, args, NULL, false, 0);
	}
	PG_FINALLY();
	{
		gdpr_internal_sql = outer;
	}
	PG_END_TRY();
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_plan failed: %d", ret);
	return ret;
}

/* Fills in the keys the key query gives one row (a datum of the relation's row type) */
static void
query_keys(AuditPlanData *d, Datum row, char **keys)
{
	run_key_query(d->key_plan, d->key_sql, &row);
	if (SPI_processed != 1)
		elog(ERROR, "subject key query returned " UINT64_FORMAT " rows", SPI_processed);
	for (int i = 0; i < d->npaths; i++)
		if (d->keys[i].column > 0)
			keys[i] = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, d->keys[i].column);
}

/*
 * The keys of every path but the subject's own, and (oldkeys, of the row
 * before an UPDATE) every key the row had that it no longer has, as text[],
 * or 0 when none: an erasure of any of them scrubs the event.
 */
static Datum
related_array(AuditPlanData *d, char **keys, char **oldkeys, const char *erasing)
{
	Datum	   *elems = palloc(sizeof(Datum) * (2 * d->npaths + 1));
	int			n = 0;

	for (int i = d->owned ? 1 : 0; i < d->npaths; i++)
		if (keys[i] != NULL)
			elems[n++] = CStringGetTextDatum(keys[i]);
	for (int i = 0; oldkeys != NULL && i < d->npaths; i++)
	{
		bool		kept = false;

		if (oldkeys[i] == NULL)
			continue;
		for (int j = 0; j < d->npaths && !kept; j++)
			kept = keys[j] != NULL && strcmp(keys[j], oldkeys[i]) == 0;
		if (!kept)
			elems[n++] = CStringGetTextDatum(oldkeys[i]);
	}

	/*
	 * A row an erasure changes is about the erased subject, whoever it names
	 * by the time the statement reaches it (a foreign key's SET DEFAULT
	 * handed it to a stand-in subject): the event is scrubbed with the
	 * subject's others.
	 */
	if (erasing != NULL)
	{
		bool		named = false;

		for (int i = 0; i < d->npaths && !named; i++)
			named = keys[i] != NULL && strcmp(keys[i], erasing) == 0;
		if (!named)
			elems[n++] = CStringGetTextDatum(erasing);
	}
	if (n == 0)
		return (Datum) 0;
	return PointerGetDatum(construct_array(elems, n, TEXTOID, -1, false, TYPALIGN_INT));
}

/*
 * Whether an UPDATE (changed: its changed columns, or NULL for another event)
 * changed a column the paths read: only then can the row's subjects differ
 * from before, and the old row's keys need looking up.
 */
static bool
keys_changed(const AuditPlanData *d, const bool *changed)
{
	if (changed == NULL)
		return false;
	for (int i = 0; i < d->natts; i++)
		if (changed[i] && d->key_input[i])
			return true;
	return false;
}

/* The attribute number of a column, or InvalidAttrNumber */
static AttrNumber
attnum_of(TupleDesc desc, const char *name)
{
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (!att->attisdropped && strcmp(NameStr(att->attname), name) == 0)
			return att->attnum;
	}
	return InvalidAttrNumber;
}

/*
 * The owner of gdpr.audit_log, looked up once and forgotten by the relcache
 * callback when the table changes (ALTER TABLE ... OWNER TO sends one).
 */
static Oid
audit_table_owner(void)
{
	HeapTuple	tup;

	if (OidIsValid(audit_log_owner))
		return audit_log_owner;

	audit_log_relid = get_relname_relid("audit_log", get_namespace_oid("gdpr", false));
	if (!OidIsValid(audit_log_relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table \"gdpr.audit_log\" does not exist"),
				 errhint("Install the extension with CREATE EXTENSION gdpr.")));
	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(audit_log_relid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", audit_log_relid);
	audit_log_owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	return audit_log_owner;
}

/*
 * Runs what follows as the owner of gdpr.audit_log, the only role that writes
 * it (see role.c), until gdpr_leave_role().  Returns the GUC nest level.
 */
int
gdpr_become_audit_owner(Oid *save_userid, int *save_sec_context)
{
	return gdpr_become_role(audit_table_owner(), save_userid, save_sec_context);
}

/* One statement as the audit table's owner; see gdpr_execute_as_role() */
int
gdpr_execute_as_owner(SPIPlanPtr plan, const char *sql, int nargs, Oid *argtypes,
					  Datum *values, const char *nulls, bool read_only, long count)
{
	return gdpr_execute_as_role(audit_table_owner(), plan, sql, nargs, argtypes, values, nulls,
								read_only, count);
}

/*
 * Records one event without a row (TRUNCATE, log_event, EXPORT, ...), as the
 * audit table's owner.  SPI must be connected.  Returns the event id.
 */
int64
gdpr_audit_event(const char *event, bool success, const char *kind, const char *subject,
				 const char *table_name, Jsonb *detail)
{
	return gdpr_audit_event_until(event, success, kind, subject, table_name, detail, 0);
}

/*
 * The same, kept at least until keep_until (0: the retention of the
 * setting); an erasure's event must outlive the events it redacted.
 */
int64
gdpr_audit_event_until(const char *event, bool success, const char *kind, const char *subject,
					   const char *table_name, Jsonb *detail, TimestampTz keep_until)
{
	Datum		values[CONTEXT_NPARAMS + 6];
	char		nulls[CONTEXT_NPARAMS + 6];
	bool		isnull;
	int64		id;
	int			ret;

	if (event_plan == NULL)
	{
		Oid			argtypes[CONTEXT_NPARAMS + 6];
		char	   *sql;
		SPIPlanPtr	plan;

		memcpy(argtypes, context_types, sizeof(context_types));
		argtypes[9] = TEXTOID;
		argtypes[10] = BOOLOID;
		argtypes[11] = TEXTOID;
		argtypes[12] = TEXTOID;
		argtypes[13] = JSONBOID;
		argtypes[14] = TEXTOID;
		sql = psprintf("INSERT INTO gdpr.audit_log (%s, event, success, subject_kind, subject_id, "
					   "detail, table_name) VALUES (%s, $10, $11, "
					   "CASE WHEN $13 IS NOT NULL THEN COALESCE($12, (SELECT pg_catalog.min(kind) "
					   "FROM gdpr.subject_kind HAVING pg_catalog.count(*) = 1)) ELSE $12 END, "
					   "$13, $14, $15) RETURNING event_id",
					   context_columns, context_values);
		plan = SPI_prepare(sql, CONTEXT_NPARAMS + 6, argtypes);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "SPI_keepplan failed");
		event_plan = plan;
	}

	fill_context(values, nulls);
	values[9] = CStringGetTextDatum(event);
	nulls[9] = ' ';
	values[10] = BoolGetDatum(success);
	nulls[10] = ' ';
	values[11] = kind != NULL ? CStringGetTextDatum(kind) : (Datum) 0;
	nulls[11] = kind != NULL ? ' ' : 'n';
	values[12] = subject != NULL ? CStringGetTextDatum(subject) : (Datum) 0;
	nulls[12] = subject != NULL ? ' ' : 'n';
	values[13] = detail != NULL ? JsonbPGetDatum(detail) : (Datum) 0;
	nulls[13] = detail != NULL ? ' ' : 'n';
	values[14] = table_name != NULL ? CStringGetTextDatum(table_name) : (Datum) 0;
	nulls[14] = table_name != NULL ? ' ' : 'n';
	if (keep_until > DatumGetTimestampTz(values[8]))
		values[8] = TimestampTzGetDatum(keep_until);

	ret = gdpr_execute_as_owner(event_plan, NULL, 0, NULL, values, nulls, false, 1);
	if (ret != SPI_OK_INSERT_RETURNING || SPI_processed != 1)
		elog(ERROR, "SPI_execute_plan failed: %d", ret);
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	return id;
}

static void
check_event_text(const char *what, const char *value)
{
	if (value != NULL && strlen(value) > GDPR_MAX_NAME_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("event %s has %zu bytes, more than %d", what, strlen(value), GDPR_MAX_NAME_LEN),
				 errhint("Pass an identifier; put short facts in the detail argument.")));
}

/*
 * Statement batches.
 *
 * A statement's row triggers fire while it ends: in ExecutorFinish, or at
 * the end of a COPY.  The hooks below give each ending statement a batch;
 * its row events are kept there and written together when its triggers
 * have all fired (or every CAPTURE_BATCH_ROWS rows), with one INSERT as
 * the audit owner, and the keys other tables give are looked up for the
 * whole batch with one query, as the caller.  A trigger's own statements
 * end inside their caller's end and have batches of their own, written in
 * the (sub)transaction they ran in.  A statement that fails drops its
 * batch with its rows.  Row triggers that fire outside any ending
 * statement the hooks saw (a logical replication apply) write at once.
 * A batch of one event is written with the relation's own INSERT, the
 * fastest for single-row statements.
 */

/* Installs the hooks that give ending statements their batches; see above */
void
gdpr_install_capture_hooks(void)
{
	prev_ExecutorFinish = ExecutorFinish_hook;
	ExecutorFinish_hook = capture_ExecutorFinish;
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = capture_ProcessUtility;
}

static void
capture_ExecutorFinish(QueryDesc *queryDesc)
{
	StatementBatch *b;

	/* a plain SELECT fires no row triggers of its own */
	if (queryDesc->operation == CMD_SELECT && !queryDesc->plannedstmt->hasModifyingCTE)
	{
		if (prev_ExecutorFinish)
			prev_ExecutorFinish(queryDesc);
		else
			standard_ExecutorFinish(queryDesc);
		return;
	}
	b = push_batch();
	PG_TRY();
	{
		if (prev_ExecutorFinish)
			prev_ExecutorFinish(queryDesc);
		else
			standard_ExecutorFinish(queryDesc);
		flush_batch(b);
	}
	PG_CATCH();
	{
		pop_batch(b, false);
		PG_RE_THROW();
	}
	PG_END_TRY();
	pop_batch(b, true);
}

/* COPY FROM fires its row triggers at its own end, outside the executor */
static void
capture_ProcessUtility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
					   ProcessUtilityContext context, ParamListInfo params,
					   QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *stmt = pstmt->utilityStmt;
	StatementBatch *volatile b = NULL;

	if (IsA(stmt, CopyStmt) && ((CopyStmt *) stmt)->is_from)
		b = push_batch();
	PG_TRY();
	{
		if (prev_ProcessUtility)
			prev_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv,
								dest, qc);
		else
			standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
									queryEnv, dest, qc);
		if (b != NULL)
			flush_batch(b);
	}
	PG_CATCH();
	{
		if (b != NULL)
			pop_batch(b, false);
		PG_RE_THROW();
	}
	PG_END_TRY();
	if (b != NULL)
		pop_batch(b, true);
}

static StatementBatch *
push_batch(void)
{
	StatementBatch *b;

	if (nbatches == maxbatches)
	{
		int			n = Max(8, maxbatches * 2);

		batches = batches == NULL
			? MemoryContextAllocZero(TopMemoryContext, sizeof(StatementBatch *) * n)
			: repalloc(batches, sizeof(StatementBatch *) * n);
		memset(batches + maxbatches, 0, sizeof(StatementBatch *) * (n - maxbatches));
		maxbatches = n;
	}
	if (batches[nbatches] == NULL)
		batches[nbatches] = MemoryContextAllocZero(TopMemoryContext, sizeof(StatementBatch));
	b = batches[nbatches++];
	b->nevents = 0;
	b->bytes = 0;
	b->ctx = NULL;
	return b;
}

/*
 * Ends batch b, the innermost.  One that was not written (its statement
 * failed) is dropped; one written must be empty.
 */
static void
pop_batch(StatementBatch *b, bool written)
{
	if (nbatches == 0 || batches[nbatches - 1] != b)
		elog(ERROR, "statement batches of the audit trail out of order");
	nbatches--;
	if (!written)
		drop_batch(b);
	else if (b->nevents > 0)
	{
		drop_batch(b);
		elog(ERROR, "row events of a statement were not written to the audit trail");
	}
}

/* Forgets a batch's events: their uses of the plans, and their memory */
static void
drop_batch(StatementBatch *b)
{
	for (int i = 0; i < b->nevents; i++)
		release_row_plan(b->events[i].d);
	b->nevents = 0;
	b->bytes = 0;
	b->ctx = NULL;
	if (b->cxt != NULL)
		MemoryContextReset(b->cxt);
}

/*
 * Keeps a made event in the batch, with copies of what it points to; the
 * event's use of its plan passes to the batch.
 */
static void
keep_row_event(StatementBatch *b, RowEvent *e)
{
	AuditPlanData *d = e->d;
	MemoryContext old;
	RowEvent   *k;

	if (b->cxt == NULL)
		b->cxt = AllocSetContextCreate(TopMemoryContext, "gdpr statement events",
									   ALLOCSET_DEFAULT_SIZES);
	if (b->nevents == b->maxevents)
	{
		int			n = Max(16, b->maxevents * 2);

		b->events = b->events == NULL
			? MemoryContextAlloc(TopMemoryContext, sizeof(RowEvent) * n)
			: repalloc(b->events, sizeof(RowEvent) * n);
		b->maxevents = n;
	}
	old = MemoryContextSwitchTo(b->cxt);
	k = &b->events[b->nevents];
	*k = *e;
	k->ctx = event_context(b);
	if (e->changed != (Datum) 0)
		k->changed = datumCopy(e->changed, false, -1);
	if (e->old_values != (Datum) 0)
		k->old_values = datumCopy(e->old_values, false, -1);
	if (e->new_values != (Datum) 0)
		k->new_values = datumCopy(e->new_values, false, -1);
	k->row_key = datumCopy(e->row_key, false, -1);
	if (e->row != (Datum) 0)
		k->row = datumCopy(e->row, false, -1);
	if (e->oldrow != (Datum) 0)
		k->oldrow = datumCopy(e->oldrow, false, -1);
	k->keys = copy_keys(d, e->keys);
	if (e->oldkeys != NULL)
		k->oldkeys = copy_keys(d, e->oldkeys);
	if (e->erasing != NULL)
		k->erasing = pstrdup(e->erasing);
	MemoryContextSwitchTo(old);
	b->nevents++;
	b->bytes += VARSIZE_ANY(DatumGetPointer(k->row_key)) +
		(k->old_values != (Datum) 0 ? VARSIZE_ANY(DatumGetPointer(k->old_values)) : 0) +
		(k->new_values != (Datum) 0 ? VARSIZE_ANY(DatumGetPointer(k->new_values)) : 0) +
		(k->row != (Datum) 0 ? VARSIZE_ANY(DatumGetPointer(k->row)) : 0) +
		(k->oldrow != (Datum) 0 ? VARSIZE_ANY(DatumGetPointer(k->oldrow)) : 0);
}

/* A copy of keys (by path), in the current memory context */
static char **
copy_keys(const AuditPlanData *d, char **keys)
{
	char	  **copy = palloc0(sizeof(char *) * Max(d->npaths, 1));

	for (int i = 0; i < d->npaths; i++)
		if (keys[i] != NULL)
			copy[i] = pstrdup(keys[i]);
	return copy;
}

/*
 * Writes a batch's events and empties it.  Runs in the statement's own
 * (sub)transaction, as the statement's user: the keys are looked up as
 * that user, the INSERT runs as the audit owner.
 */
static void
flush_batch(StatementBatch *b)
{
	if (b->nevents == 0)
		return;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PG_TRY();
	{
		if (b->nevents == 1)
			write_row_event(&b->events[0]);
		else
		{
			batch_query_keys(b);
			write_batch(b);
		}
	}
	PG_FINALLY();
	{
		drop_batch(b);
	}
	PG_END_TRY();
	SPI_finish();
}

/*
 * The keys the key queries give, for every event of the batch that lacks
 * them: one query per relation, over the array of its rows.
 */
static void
batch_query_keys(StatementBatch *b)
{
	for (int i = 0; i < b->nevents; i++)
	{
		AuditPlanData *d = b->events[i].d;
		Datum	   *rows;
		int			nrows = 0;
		int16		typlen;
		bool		typbyval;
		char		typalign;
		Datum		arg;
		uint64		row = 0;

		if (b->events[i].row == (Datum) 0 && b->events[i].oldrow == (Datum) 0)
			continue;
		if (d->batch_key_plan == NULL)
		{
			for (int j = i; j < b->nevents; j++)
				if (b->events[j].d == d)
					query_keys_now(&b->events[j]);
			continue;
		}

		/* this relation's rows, in the batch's order: new (or deleted) row, then old */
		rows = palloc(sizeof(Datum) * 2 * (b->nevents - i));
		for (int j = i; j < b->nevents; j++)
		{
			RowEvent   *e = &b->events[j];

			if (e->d != d)
				continue;
			if (e->row != (Datum) 0)
				rows[nrows++] = e->row;
			if (e->oldrow != (Datum) 0)
				rows[nrows++] = e->oldrow;
		}
		get_typlenbyvalalign(get_element_type(d->rowarraytype), &typlen, &typbyval, &typalign);
		arg = PointerGetDatum(construct_array(rows, nrows, get_element_type(d->rowarraytype),
											  typlen, typbyval, typalign));
		run_key_query(d->batch_key_plan, d->batch_key_sql, &arg);
		if (SPI_processed != (uint64) nrows)
			elog(ERROR, "subject key query returned " UINT64_FORMAT " rows for %d",
				 SPI_processed, nrows);
		for (int j = i; j < b->nevents; j++)
		{
			RowEvent   *e = &b->events[j];

			if (e->d != d)
				continue;
			for (int pass = 0; pass < 2; pass++)
			{
				char	  **keys = pass == 0 ? e->keys : e->oldkeys;

				if ((pass == 0 ? e->row : e->oldrow) == (Datum) 0)
					continue;
				for (int p = 0; p < d->npaths; p++)
					if (d->keys[p].column > 0)
						keys[p] = SPI_getvalue(SPI_tuptable->vals[row], SPI_tuptable->tupdesc,
											   d->keys[p].column);
				row++;
			}
			e->row = e->oldrow = (Datum) 0;
		}
	}
}

/*
 * Writes a batch with one INSERT ... SELECT over an array of gdpr.audit_log
 * rows, in the batch's order.  The INSERT reads nothing but that array.
 */
static void
write_batch(StatementBatch *b)
{
	static const char *const columns[] = {
		"event_time", "txid", "session_role", "effective_role", "actor", "client_addr",
		"user_agent", "application_name", "retention_until", "event", "changed_columns",
		"old_values", "new_values", "row_key", "subject_id", "related_subject_ids",
		"table_name", "subject_kind"
	};
	SPIPlanPtr	plan = get_batch_plan();
	Oid			rowtype = batch_rowtype;
	TupleDesc	desc = lookup_rowtype_tupdesc(rowtype, -1);
	int			attnums[lengthof(columns)];
	Datum	   *rows = palloc(sizeof(Datum) * b->nevents);
	Datum	   *values = palloc(sizeof(Datum) * desc->natts);
	bool	   *isnull = palloc(sizeof(bool) * desc->natts);
	Datum		arg;
	int16		typlen;
	bool		typbyval;
	char		typalign;
	int			ret;

	StaticAssertStmt(lengthof(columns) == ROW_NPARAMS + 2,
					 "the batch's columns are the row plan's parameters, table_name and subject_kind");
	for (int c = 0; c < (int) lengthof(columns); c++)
	{
		attnums[c] = -1;
		for (int a = 0; a < desc->natts; a++)
			if (!TupleDescAttr(desc, a)->attisdropped &&
				strcmp(NameStr(TupleDescAttr(desc, a)->attname), columns[c]) == 0)
				attnums[c] = a;
		if (attnums[c] < 0)
			elog(ERROR, "gdpr.audit_log has no column \"%s\"", columns[c]);
	}
	for (int i = 0; i < b->nevents; i++)
	{
		RowEvent   *e = &b->events[i];
		AuditPlanData *d = e->d;
		Datum		v[lengthof(columns)];
		bool		n[lengthof(columns)];
		HeapTuple	tup;

		/* the row plan's parameters, then what that plan has as constants */
		event_values(e, v, n);
		v[P_RELATED + 1] = d->table_name;
		n[P_RELATED + 1] = false;
		v[P_RELATED + 2] = d->kind_text;
		n[P_RELATED + 2] = false;

		memset(isnull, true, sizeof(bool) * desc->natts);
		for (int c = 0; c < (int) lengthof(columns); c++)
		{
			values[attnums[c]] = v[c];
			isnull[attnums[c]] = n[c];
		}
		tup = heap_form_tuple(desc, values, isnull);
		rows[i] = HeapTupleGetDatum(tup);
	}
	ReleaseTupleDesc(desc);
	get_typlenbyvalalign(rowtype, &typlen, &typbyval, &typalign);
	arg = PointerGetDatum(construct_array(rows, b->nevents, rowtype, typlen, typbyval, typalign));
	ret = execute_batch(plan, arg);
	if (ret != SPI_OK_INSERT || SPI_processed != (uint64) b->nevents)
		elog(ERROR, "SPI_execute_plan failed: %d", ret);
}

/* Runs the batch INSERT as the audit owner, marked busy meanwhile (see get_batch_plan) */
static int
execute_batch(SPIPlanPtr plan, Datum arg)
{
	int			ret;

	batch_plan_busy++;
	PG_TRY();
	{
		ret = gdpr_execute_as_owner(plan, NULL, 0, NULL, &arg, NULL, false, 0);
	}
	PG_FINALLY();
	{
		batch_plan_busy--;
	}
	PG_END_TRY();
	return ret;
}

/*
 * The batch INSERT, prepared once.  Its parameter's type is the trail's
 * row type, which a new installation of the extension replaces: then it is
 * prepared again.
 */
static SPIPlanPtr
get_batch_plan(void)
{
	Oid			rowtype;
	Oid			arraytype;
	SPIPlanPtr	plan;

	if (batch_plan != NULL && (!batch_plan_stale || batch_plan_busy > 0))
		return batch_plan;
	if (batch_plan != NULL)
		SPI_freeplan(batch_plan);
	batch_plan = NULL;
	batch_plan_stale = false;
	(void) audit_table_owner();
	rowtype = get_rel_type_id(audit_log_relid);
	if (!OidIsValid(rowtype))
		elog(ERROR, "gdpr.audit_log has no row type");
	arraytype = get_array_type(rowtype);
	if (!OidIsValid(arraytype))
		elog(ERROR, "type of gdpr.audit_log has no array type");
	plan = SPI_prepare("INSERT INTO gdpr.audit_log (event_time, txid, session_role, effective_role, "
					   "actor, client_addr, user_agent, application_name, retention_until, event, "
					   "changed_columns, old_values, new_values, row_key, subject_id, "
					   "related_subject_ids, table_name, subject_kind) "
					   "SELECT e.event_time, e.txid, e.session_role, e.effective_role, e.actor, "
					   "COALESCE(e.client_addr, pg_catalog.inet_client_addr()), e.user_agent, "
					   "e.application_name, e.retention_until, e.event, e.changed_columns, "
					   "e.old_values, e.new_values, e.row_key, e.subject_id, "
					   "e.related_subject_ids, e.table_name, e.subject_kind "
					   "FROM pg_catalog.unnest($1) AS e",
					   1, &arraytype);
	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "SPI_keepplan failed");
	batch_plan = plan;
	batch_rowtype = rowtype;
	return plan;
}

/*
 * The context of an event made now: the batch's last one while nothing it
 * was made from has changed, else a new one (in the batch's memory, or the
 * current context without a batch).
 */
static EventContext *
event_context(StatementBatch *b)
{
	const char *settings[4] = {gdpr_actor, gdpr_client_addr, gdpr_user_agent, application_name};
	TimestampTz now = GetCurrentStatementStartTimestamp();
	FullTransactionId xid = GetTopFullTransactionId();
	EventContext *c = b != NULL ? b->ctx : NULL;
	MemoryContext old;

	if (c != NULL && c->statement_start == now &&
		FullTransactionIdEquals(c->xid, xid) &&
		c->session_user == GetSessionUserId() && c->user == GetUserId())
	{
		bool		same = true;

		for (int i = 0; i < 4 && same; i++)
			same = strcmp(c->settings[i], settings[i] != NULL ? settings[i] : "") == 0;
		if (same)
			return c;
	}
	old = MemoryContextSwitchTo(b != NULL ? b->cxt : CurrentMemoryContext);
	c = palloc(sizeof(EventContext));
	fill_context(c->values, c->nulls);
	c->statement_start = now;
	c->xid = xid;
	c->session_user = GetSessionUserId();
	c->user = GetUserId();
	for (int i = 0; i < 4; i++)
		c->settings[i] = pstrdup(settings[i] != NULL ? settings[i] : "");
	MemoryContextSwitchTo(old);
	if (b != NULL)
		b->ctx = c;
	return c;
}

/* Whether a statement still ending holds row events not yet written */
bool
gdpr_capture_pending(void)
{
	for (int i = 0; i < nbatches; i++)
		if (batches[i]->nevents > 0)
			return true;
	return false;
}

/*
 * At the end of a transaction every batch has been written: a statement
 * writes its batch before it ends, and one that fails drops it.  Anything
 * left would be events lost, so commit refuses rather than lose them.
 */
void
gdpr_capture_xact_end(bool commit)
{
	if (commit && gdpr_capture_pending())
		elog(ERROR, "row events of this transaction were not written to the audit trail");
	while (nbatches > 0)
		pop_batch(batches[nbatches - 1], false);
}
