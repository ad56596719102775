/*-------------------------------------------------------------------------
 *
 * export.c
 *		gdpr_export: everything held about one data subject as one JSONB
 *		document (Art. 15), or only what they provided (Art. 20); and
 *		gdpr_export_rows, the same rows as a stream.
 *
 * The rows of each registered table are found by following the map's paths
 * backwards from the subject's key: one query per table, an index lookup at
 * every step when the foreign-key columns are indexed (gdpr.export_plan
 * says which are not), so the cost follows the subject's data, not the
 * database's size.
 *
 * Table queries run as the caller, so privileges and row security apply.
 * The subject's audit history is read as the audit table's owner, because
 * applications may not read the trail directly; it carries no row values.
 *
 * Every export is recorded as an EXPORT event with its counts.  A failed
 * export aborts its transaction and the event with it, so failures are
 * written to the server log instead.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "gdpr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/rel.h"
#include "utils/rls.h"

PG_FUNCTION_INFO_V1(gdpr_export);
PG_FUNCTION_INFO_V1(gdpr_export_rows);
PG_FUNCTION_INFO_V1(gdpr_export_sql);

#define GDPR_EXPORT_FORMAT "gdpr-export/1.0"

/* The most of one large object's content an export holds, in bytes */
#define GDPR_EXPORT_MAX_OBJECT (16 * 1024 * 1024)

/* What an export reads: the subject and the registered tables of its kind */
typedef struct ExportTable
{
	Oid			relid;
	char	   *name;			/* schema-qualified, the key in "data" */
	bool		provided;		/* provided_by_subject: part of a portable export */
} ExportTable;

/*
 * The prepared queries of one table, kept for the life of the backend and
 * dropped by the relcache callback (gdpr_export_invalidate) when the table or
 * its map changes.  A change to another table on a path invalidates the plan
 * itself, through the plan cache.
 */
typedef struct ExportPlans
{
	Oid			relid;			/* hash key */
	bool		valid;
	Oid			key_type;		/* the parameter type the plans were prepared for */
	SPIPlanPtr	aggregate;		/* one jsonb array of all rows */
	SPIPlanPtr	stream;			/* one jsonb row per row */
	SPIPlanPtr	shared;			/* the count of rows shared with other subjects, or NULL */
} ExportPlans;

/* What rows_sql() selects */
#define EXPORT_AGGREGATE	1
#define EXPORT_STREAM		2
#define EXPORT_SHARED		3

static HTAB *export_plans = NULL;

/*
 * An export runs the caller's casts to json, and they may change a table
 * and export again: a nested call then rebuilds plans that an outer call
 * is executing.  Those are kept here until no export plan runs.
 */
static int	export_plans_running = 0;
static List *retired_plans = NIL;	/* SPIPlanPtr, in CacheMemoryContext */

static void retire_plan(SPIPlanPtr plan);

static ExportPlans *get_plans(Oid relid, Oid key_type);
static SPIPlanPtr prepare_kept(const char *sql, Oid key_type);
static Jsonb *table_rows(const ExportTable *t, const GdprSubject *subject);
static int64 shared_rows(const ExportTable *t, const GdprSubject *subject);
static Datum run_export_plan(SPIPlanPtr plan, const GdprSubject *subject);
static void end_export_plan(void);
static List *export_tables(const GdprSubject *subject, bool portable);
static List *filtered_tables(List *tables);
static void push_string_elem(JsonbParseState **state, const char *value);
static void push_shared_and_withheld(JsonbParseState **state, List *tables,
									 const GdprSubject *subject, Jsonb **rowsets);
static bool some_row_lacks(Jsonb *rows, const char *column);
static char *rows_sql(Oid relid, int what);
static char *withheld_array(const GdprTableMap *map);
static List *withheld_columns(const GdprTableMap *map);
static void push_int(JsonbParseState **state, int64 value);
static void push_members(JsonbParseState **state, Jsonb *object);
static Jsonb *query_jsonb(const char *sql, const GdprSubject *subject, bool as_owner);
static Jsonb *subject_key_jsonb(const GdprSubject *subject);
static void record_export(const GdprSubject *subject, bool portable, bool streamed,
						  List *tables, int64 *counts, int64 total);
static void log_failure(const char *kind, const char *key);
static GdprSubject *export_subject(FunctionCallInfo fcinfo, const char *kind, MemoryContext mcxt,
								   Jsonb **erasure);
static Jsonb *erased_document(const GdprSubject *subject, Jsonb *erasure);

/*
 * gdpr_export(subject, kind text DEFAULT NULL, portable boolean DEFAULT false,
 *			   request_id bigint DEFAULT NULL)
 */
Datum
gdpr_export(PG_FUNCTION_ARGS)
{
	char	   *kind = PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));
	bool		portable = !PG_ARGISNULL(2) && PG_GETARG_BOOL(2);
	MemoryContext callercxt = CurrentMemoryContext;
	GdprSubject *subject;
	List	   *tables;
	int64	   *counts;
	Jsonb	  **rowsets;
	int64		total = 0;
	JsonbParseState *state = NULL;
	JsonbValue *result;
	Jsonb	   *doc;
	Jsonb	   *erasure;
	List	   *filtered;
	ListCell   *lc;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	gdpr_own_reads_begin();
	gdpr_citus_check("gdpr_export");
	subject = export_subject(fcinfo, kind, callercxt, &erasure);
	if (erasure != NULL)
	{
		doc = erased_document(subject, erasure);
		MemoryContextSwitchTo(callercxt);
		doc = DatumGetJsonbPCopy(JsonbPGetDatum(doc));
		gdpr_own_reads_end();
		SPI_finish();
		PG_RETURN_JSONB_P(doc);
	}
	tables = export_tables(subject, portable);
	counts = palloc0(sizeof(int64) * Max(list_length(tables), 1));
	rowsets = palloc0(sizeof(Jsonb *) * Max(list_length(tables), 1));

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	gdpr_push_key(&state, "format");
	gdpr_push_string(&state, GDPR_EXPORT_FORMAT);
	gdpr_push_key(&state, "generated_at");
	gdpr_push_jsonb(&state, query_jsonb("SELECT pg_catalog.to_jsonb(pg_catalog.to_char("
								   "pg_catalog.statement_timestamp() AT TIME ZONE 'UTC', "
								   "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'))", subject, false));
	gdpr_push_key(&state, "subject");
	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	gdpr_push_key(&state, "kind");
	gdpr_push_string(&state, subject->kind);
	gdpr_push_key(&state, "key");
	gdpr_push_jsonb(&state, subject_key_jsonb(subject));
	pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	gdpr_push_key(&state, "portable");
	pushJsonbValue(&state, WJB_VALUE, &(JsonbValue) {.type = jbvBool, .val.boolean = portable});

	gdpr_push_key(&state, "data");
	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	foreach(lc, tables)
	{
		ExportTable *t = lfirst(lc);
		Jsonb	   *rows = table_rows(t, subject);

		counts[foreach_current_index(lc)] = JsonContainerSize(&rows->root);
		rowsets[foreach_current_index(lc)] = rows;
		total += counts[foreach_current_index(lc)];
		gdpr_push_key(&state, t->name);
		gdpr_push_jsonb(&state, rows);
	}
	pushJsonbValue(&state, WJB_END_OBJECT, NULL);

	gdpr_push_key(&state, "counts");
	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	foreach(lc, tables)
	{
		gdpr_push_key(&state, ((ExportTable *) lfirst(lc))->name);
		push_int(&state, counts[foreach_current_index(lc)]);
	}
	pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	gdpr_push_key(&state, "total_rows");
	push_int(&state, total);
	push_shared_and_withheld(&state, tables, subject, rowsets);
	filtered = filtered_tables(tables);
	if (filtered != NIL)
	{
		gdpr_push_key(&state, "row_security_filtered");
		pushJsonbValue(&state, WJB_BEGIN_ARRAY, NULL);
		foreach(lc, filtered)
			push_string_elem(&state, lfirst(lc));
		pushJsonbValue(&state, WJB_END_ARRAY, NULL);
	}

	if (!portable)
	{
		/* Art. 15(1): what the data is for, on which basis, for how long, for whom */
		gdpr_push_key(&state, "processing");
		gdpr_push_jsonb(&state, query_jsonb(
			"SELECT COALESCE(pg_catalog.jsonb_object_agg(gdpr._qualified(r.relid), "
			"  pg_catalog.jsonb_build_object("
			"    'categories', COALESCE((SELECT pg_catalog.jsonb_agg(DISTINCT c.category) "
			"                              FROM gdpr.column_class c WHERE c.relid = r.relid), '[]'), "
			"    'purpose', r.purpose, 'legal_basis', r.legal_basis, 'retention', r.retention, "
			"    'recipients', COALESCE(pg_catalog.to_jsonb(r.recipients), '[]'), "
			"    'provided_by_subject', r.provided_by_subject)), '{}') "
			"  FROM gdpr.registered_table r WHERE r.kind = $2",
			subject, false));
		/* the subject's history: when, what, by whom; never the values */
		gdpr_push_key(&state, "audit");
		gdpr_push_jsonb(&state, query_jsonb("SELECT gdpr._subject_history($2, $3)", subject, true));

		/*
		 * Who saw the subject's data (Art. 15(1)(c)), from the reads of
		 * read-audited tables: each reader with counts and first and last
		 * time, never what was read.  A bulk read of a table counts for
		 * everyone in it.
		 */
		gdpr_push_key(&state, "accessed_by");
		gdpr_push_jsonb(&state, query_jsonb(
			"SELECT pg_catalog.jsonb_build_object("
			"    'article', 'GDPR Art. 15(1)(c): the recipients to whom the personal data have been disclosed', "
			"    'readers', COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object("
			"        'session_role', session_role, 'role', effective_role, 'application', application_name, "
			"        'actor', actor, 'reads', n, 'bulk_reads', nb, "
			"        'first', pg_catalog.to_char(f AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), "
			"        'last', pg_catalog.to_char(l AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))) "
			"        ORDER BY f, session_role, effective_role, application_name, actor), '[]')) "
			"  FROM (SELECT a.session_role, a.effective_role, a.application_name, a.actor, "
			"               pg_catalog.count(*) AS n, "
			"               pg_catalog.count(*) FILTER (WHERE a.related_subject_ids IS NULL) AS nb, "
			"               pg_catalog.min((st OPERATOR(pg_catalog.->>) 'at')::pg_catalog.timestamptz) AS f, "
			"               pg_catalog.max((st OPERATOR(pg_catalog.->>) 'at')::pg_catalog.timestamptz) AS l "
			"          FROM gdpr.audit_log a "
			"         CROSS JOIN LATERAL pg_catalog.jsonb_array_elements(a.detail OPERATOR(pg_catalog.->) 'reads') st "
			"         WHERE a.event OPERATOR(pg_catalog.=) 'READ' AND a.subject_kind OPERATOR(pg_catalog.=) $2 "
			"           AND (a.related_subject_ids IS NULL "
			"                OR (a.related_subject_ids OPERATOR(pg_catalog.@>) ARRAY[$3] "
			"                    AND gdpr._read_names(st, pg_catalog.array_position(a.related_subject_ids, $3)))) "
			"         GROUP BY a.session_role, a.effective_role, a.application_name, a.actor) r",
			subject, true));
		/* what the subject agreed to, objected to, accepted and asked for: one query */
		push_members(&state, query_jsonb(
			"SELECT pg_catalog.jsonb_build_object("
			" 'consents', (SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object("
			"     'purpose', purpose, 'version', version, 'granted_at', granted_at, "
			"     'withdrawn_at', withdrawn_at)) ORDER BY consent_id), '[]') "
			"   FROM gdpr.consent WHERE kind = $2 AND subject_id = $3), "
			" 'objections', (SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object("
			"     'purpose', purpose, 'objected_at', objected_at) ORDER BY objection_id), '[]') "
			"   FROM gdpr.objection WHERE kind = $2 AND subject_id = $3), "
			" 'privacy_policies_accepted', (SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object("
			"     'version', version, 'accepted_at', accepted_at) ORDER BY accepted_at, version), '[]') "
			"   FROM gdpr.policy_acceptance WHERE kind = $2 AND subject_id = $3), "
			" 'requests', (SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object("
			"     'request_id', request_id, 'right', \"right\", 'received_at', received_at, 'due_at', due_at, "
			"     'status', status, 'outcome', outcome)) ORDER BY request_id), '[]') "
			"   FROM gdpr.request WHERE kind = $2 AND subject_id = $3))", subject, true));
	}
	result = pushJsonbValue(&state, WJB_END_OBJECT, NULL);

	record_export(subject, portable, false, tables, counts, total);
	if (!PG_ARGISNULL(3))
		gdpr_complete_request(PG_GETARG_INT64(3), subject, "access,portability",
						 psprintf("exported " INT64_FORMAT " rows", total));

	MemoryContextSwitchTo(callercxt);
	doc = JsonbValueToJsonb(result);
	gdpr_own_reads_end();
	SPI_finish();
	PG_RETURN_JSONB_P(doc);
}

/*
 * gdpr_export_rows(subject, kind, portable): one row per exported record,
 * (table_name, row), table by table in primary-key order.  Rows go through a
 * tuplestore, which spills to disk past work_mem: no single value holds the
 * whole export.
 */
Datum
gdpr_export_rows(PG_FUNCTION_ARGS)
{
	char	   *kind = PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));
	bool		portable = !PG_ARGISNULL(2) && PG_GETARG_BOOL(2);
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContext callercxt = CurrentMemoryContext;
	GdprSubject *subject;
	List	   *tables;
	int64	   *counts;
	int64		total = 0;
	Jsonb	   *erasure;
	ListCell   *lc;

	InitMaterializedSRF(fcinfo, 0);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	gdpr_own_reads_begin();
	gdpr_citus_check("gdpr_export_rows");
	subject = export_subject(fcinfo, kind, callercxt, &erasure);
	if (erasure != NULL)
	{
		/* one row: the erasure's record, in place of the data it removed */
		Datum		values[2] = {CStringGetTextDatum("gdpr.erasure"),
		JsonbPGetDatum(erased_document(subject, erasure))};
		bool		nulls[2] = {false, false};

		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		gdpr_own_reads_end();
		SPI_finish();
		return (Datum) 0;
	}
	tables = export_tables(subject, portable);
	counts = palloc0(sizeof(int64) * Max(list_length(tables), 1));

	foreach(lc, tables)
	{
		ExportTable *t = lfirst(lc);
		Datum		args[1] = {subject->key};
		Portal		portal;
		Datum		values[2];
		bool		nulls[2] = {false, false};

		portal = SPI_cursor_open(NULL, get_plans(t->relid, subject->key_type)->stream, args, NULL,
								 true);
		values[0] = CStringGetTextDatum(t->name);
		for (;;)
		{
			SPI_cursor_fetch(portal, true, 1000);
			if (SPI_processed == 0)
				break;
			for (uint64 i = 0; i < SPI_processed; i++)
			{
				bool		isnull;

				values[1] = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);
				tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
			}
			counts[foreach_current_index(lc)] += SPI_processed;
			total += SPI_processed;
			SPI_freetuptable(SPI_tuptable);
			CHECK_FOR_INTERRUPTS();
		}
		SPI_cursor_close(portal);
	}

	record_export(subject, portable, true, tables, counts, total);
	gdpr_own_reads_end();
	SPI_finish();
	return (Datum) 0;
}

/*
 * gdpr._export_sql(tbl regclass): the query an export runs for one table,
 * with the subject key as $1.  For gdpr.export_plan.
 */
Datum
gdpr_export_sql(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	MemoryContext callercxt = CurrentMemoryContext;
	char	   *sql;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	sql = rows_sql(relid, EXPORT_STREAM);
	MemoryContextSwitchTo(callercxt);
	sql = pstrdup(sql);
	SPI_finish();
	PG_RETURN_TEXT_P(cstring_to_text(sql));
}

/* One string element of an array being built */
static void
push_string_elem(JsonbParseState **state, const char *value)
{
	pushJsonbValue(state, WJB_ELEM, &(JsonbValue) {.type = jbvString,
				   .val.string.val = (char *) value, .val.string.len = strlen(value)});
}

/* The relcache callback's part for export: forget one table's plans, or all */
void
gdpr_export_invalidate(Oid relid)
{
	HASH_SEQ_STATUS status;
	ExportPlans *ep;

	if (export_plans == NULL)
		return;
	if (OidIsValid(relid))
	{
		ep = hash_search(export_plans, &relid, HASH_FIND, NULL);
		if (ep != NULL)
			ep->valid = false;
		return;
	}
	hash_seq_init(&status, export_plans);
	while ((ep = hash_seq_search(&status)) != NULL)
		ep->valid = false;
}

/* The kept plans of one table, prepared on first use.  SPI must be connected. */
static ExportPlans *
get_plans(Oid relid, Oid key_type)
{
	ExportPlans *ep;
	char	   *sql;
	bool		found;

	if (export_plans == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(ExportPlans);
		ctl.hcxt = CacheMemoryContext;
		export_plans = hash_create("gdpr export plans", 64, &ctl,
								   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	ep = hash_search(export_plans, &relid, HASH_ENTER, &found);
	if (!found)
	{
		ep->valid = false;
		ep->aggregate = ep->stream = ep->shared = NULL;
	}
	if (!ep->valid || ep->key_type != key_type)
	{
		if (ep->aggregate != NULL)
			retire_plan(ep->aggregate);
		if (ep->stream != NULL)
			retire_plan(ep->stream);
		if (ep->shared != NULL)
			retire_plan(ep->shared);
		ep->aggregate = ep->stream = ep->shared = NULL;
		ep->aggregate = prepare_kept(rows_sql(relid, EXPORT_AGGREGATE), key_type);
		ep->stream = prepare_kept(rows_sql(relid, EXPORT_STREAM), key_type);
		sql = rows_sql(relid, EXPORT_SHARED);
		if (sql != NULL)
			ep->shared = prepare_kept(sql, key_type);
		ep->key_type = key_type;
		ep->valid = true;
	}
	return ep;
}

/* Frees a plan now, or once no export plan runs */
static void
retire_plan(SPIPlanPtr plan)
{
	MemoryContext old;

	if (export_plans_running == 0)
	{
		SPI_freeplan(plan);
		return;
	}
	old = MemoryContextSwitchTo(CacheMemoryContext);
	retired_plans = lappend(retired_plans, plan);
	MemoryContextSwitchTo(old);
}

static SPIPlanPtr
prepare_kept(const char *sql, Oid key_type)
{
	Oid			argtypes[1] = {key_type};
	SPIPlanPtr	plan = SPI_prepare(sql, 1, argtypes);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql, SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "SPI_keepplan failed");
	return plan;
}

/* All of a table's rows for the subject, as one jsonb array */
static Jsonb *
table_rows(const ExportTable *t, const GdprSubject *subject)
{
	return DatumGetJsonbPCopy(run_export_plan(get_plans(t->relid, subject->key_type)->aggregate,
											  subject));
}

/* How many rows of t the subject shares with other subjects (see gdpr_shared_sql) */
static int64
shared_rows(const ExportTable *t, const GdprSubject *subject)
{
	SPIPlanPtr	plan = get_plans(t->relid, subject->key_type)->shared;

	return plan != NULL ? DatumGetInt64(run_export_plan(plan, subject)) : 0;
}

/* One export plan less running: plans retired meanwhile are freed once none runs */
static void
end_export_plan(void)
{
	ListCell   *lc;

	if (--export_plans_running > 0 || retired_plans == NIL)
		return;
	foreach(lc, retired_plans)
		SPI_freeplan(lfirst(lc));
	list_free(retired_plans);
	retired_plans = NIL;
}

/*
 * Runs one of a table's kept plans for the subject; its single value.  A
 * plan retired meanwhile (the map changed under a nested call) is freed
 * once no export plan runs.
 */
static Datum
run_export_plan(SPIPlanPtr plan, const GdprSubject *subject)
{
	Datum		args[1] = {subject->key};
	bool		isnull;
	volatile int ret;

	export_plans_running++;
	PG_TRY();
	{
		ret = SPI_execute_plan(plan, args, NULL, true, 1);
	}
	PG_CATCH();
	{
		end_export_plan();
		PG_RE_THROW();
	}
	PG_END_TRY();
	end_export_plan();
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "SPI_execute_plan failed: %d", ret);
	return SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
}

/*
 * "shared": the rows of each table the subject shares with other subjects,
 * by count (no one's export holds them); "withheld_columns": the columns
 * that rows only about the subject leave out, by name, so that the person
 * knows they exist.  Each only when not empty.
 */
static void
push_shared_and_withheld(JsonbParseState **state, List *tables, const GdprSubject *subject,
						 Jsonb **rowsets)
{
	int64	   *shared = palloc0(sizeof(int64) * Max(list_length(tables), 1));
	List	  **withheld = palloc0(sizeof(List *) * Max(list_length(tables), 1));
	bool		any_shared = false;
	bool		any_withheld = false;
	ListCell   *lc;

	foreach(lc, tables)
	{
		ExportTable *t = lfirst(lc);
		int			i = foreach_current_index(lc);

		shared[i] = shared_rows(t, subject);
		any_shared |= shared[i] > 0;
		if (JsonContainerSize(&rowsets[i]->root) > 0)
		{
			GdprTableMap *map = gdpr_load_table_map(t->relid, CurrentMemoryContext);

			withheld[i] = map != NULL ? withheld_columns(map) : NIL;
			/* only rows about the subject leave them out: said only when one was exported */
			if (withheld[i] != NIL && !some_row_lacks(rowsets[i], linitial(withheld[i])))
				withheld[i] = NIL;
			any_withheld |= withheld[i] != NIL;
		}
	}
	if (any_shared)
	{
		gdpr_push_key(state, "shared");
		pushJsonbValue(state, WJB_BEGIN_OBJECT, NULL);
		foreach(lc, tables)
			if (shared[foreach_current_index(lc)] > 0)
			{
				gdpr_push_key(state, ((ExportTable *) lfirst(lc))->name);
				push_int(state, shared[foreach_current_index(lc)]);
			}
		pushJsonbValue(state, WJB_END_OBJECT, NULL);
	}
	if (any_withheld)
	{
		gdpr_push_key(state, "withheld_columns");
		pushJsonbValue(state, WJB_BEGIN_OBJECT, NULL);
		foreach(lc, tables)
		{
			ListCell   *c;

			if (withheld[foreach_current_index(lc)] == NIL)
				continue;
			gdpr_push_key(state, ((ExportTable *) lfirst(lc))->name);
			pushJsonbValue(state, WJB_BEGIN_ARRAY, NULL);
			foreach(c, withheld[foreach_current_index(lc)])
				push_string_elem(state, lfirst(c));
			pushJsonbValue(state, WJB_END_ARRAY, NULL);
		}
		pushJsonbValue(state, WJB_END_OBJECT, NULL);
	}
}

/* Whether an element of the array rows (of objects) has no key column */
static bool
some_row_lacks(Jsonb *rows, const char *column)
{
	JsonbIterator *it = JsonbIteratorInit(&rows->root);
	JsonbValue	v;
	JsonbValue	key = {.type = jbvString, .val.string.val = (char *) column,
	.val.string.len = strlen(column)};
	JsonbIteratorToken tok;

	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		if (tok == WJB_ELEM && v.type == jbvBinary &&
			findJsonbValueFromContainer(v.val.binary.data, JB_FOBJECT, &key) == NULL)
			return true;
	return false;
}

/*
 * The exported tables whose rows row security can hide from the caller:
 * the table itself or a table its paths go through.  The document names
 * them, so that a copy with rows missing does not pass for complete.
 */
static List *
filtered_tables(List *tables)
{
	List	   *filtered = NIL;
	ListCell   *lc;

	foreach(lc, tables)
	{
		ExportTable *t = lfirst(lc);
		GdprTableMap *map = gdpr_load_table_map(t->relid, CurrentMemoryContext);
		bool		hidden = check_enable_rls(t->relid, InvalidOid, true) == RLS_ENABLED;
		ListCell   *p;

		foreach(p, map != NULL ? map->paths : NIL)
		{
			ListCell   *st;

			foreach(st, ((GdprPath *) lfirst(p))->steps)
				hidden |= check_enable_rls(((GdprStep *) lfirst(st))->to_rel, InvalidOid, true) == RLS_ENABLED;
		}
		if (hidden)
			filtered = lappend(filtered, t->name);
	}
	return filtered;
}

/* The registered tables of the subject's kind, by name */
static List *
export_tables(const GdprSubject *subject, bool portable)
{
	Oid			argtypes[2] = {TEXTOID, BOOLOID};
	Datum		args[2] = {CStringGetTextDatum(subject->kind), BoolGetDatum(portable)};
	List	   *result = NIL;
	int			ret;

	ret = SPI_execute_with_args(
		"SELECT r.relid::pg_catalog.oid, gdpr._qualified(r.relid), r.provided_by_subject "
		"  FROM gdpr.registered_table r "
		" WHERE r.kind = $1 AND (NOT $2 OR r.provided_by_subject) "
		" ORDER BY 2",
		2, argtypes, args, NULL, true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed: %d", ret);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		ExportTable *t = palloc(sizeof(ExportTable));
		bool		isnull;

		t->relid = DatumGetObjectId(SPI_getbinval(tup, desc, 1, &isnull));
		t->name = SPI_getvalue(tup, desc, 2);
		t->provided = DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull));
		result = lappend(result, t);
	}
	return result;
}

/*
 * The query that selects a table's rows for the subject whose key is $1, as
 * JSON objects without secret columns, bytea in base64, in primary-key
 * order; aggregated into one array, or one row each.
 *
 * One path: a join from the table to the key.  Several: the primary keys
 * each path reaches, united, so a row reached twice is exported once.
 */
static char *
rows_sql(Oid relid, int what)
{
	MemoryContext cxt = CurrentMemoryContext;
	GdprTableMap *map = gdpr_load_table_map(relid, cxt);
	Relation	rel;
	TupleDesc	desc;
	StringInfoData rowexpr;
	StringInfoData secret;
	char	   *pk;
	char	   *owned;
	char	   *concerned;
	char	   *shared;
	char	   *withheld;
	char	   *selected;
	char	   *row;
	GdprPathSql only = {0};
	int			npaths = 0;
	ListCell   *lc;

	if (map == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("table with OID %u is not registered", relid)));

	rel = table_open(relid, AccessShareLock);
	desc = RelationGetDescr(rel);

	initStringInfo(&secret);
	initStringInfo(&rowexpr);
	foreach(lc, map->columns)
	{
		GdprColumn *col = lfirst(lc);

		if (strcmp(col->category, "secret") == 0)
			appendStringInfo(&secret, "%s%s", secret.len > 0 ? ", " : "",
							 quote_literal_cstr(col->name));
	}
	/* t.*, not t: a column named t would be taken for the row */
	appendStringInfoString(&rowexpr, "pg_catalog.to_jsonb(t.*)");
	if (secret.len > 0)
		appendStringInfo(&rowexpr, " OPERATOR(pg_catalog.-) ARRAY[%s]::pg_catalog.text[]", secret.data);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		const char *col = quote_identifier(NameStr(att->attname));

		if (att->attisdropped || gdpr_column_is_secret(map, NameStr(att->attname)))
			continue;
		if (att->atttypid == BYTEAOID)
			appendStringInfo(&rowexpr,
							 " OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object(%s, "
							 "pg_catalog.translate(pg_catalog.encode(t.%s, 'base64'), E'\\n', ''))",
							 quote_literal_cstr(NameStr(att->attname)), col);

		/*
		 * An oid column references a large object (what Hibernate's @Lob
		 * maps to): the person gets its content, not its number, up to
		 * GDPR_EXPORT_MAX_OBJECT bytes.
		 */
		else if (getBaseType(att->atttypid) == OIDOID)
			appendStringInfo(&rowexpr,
							 " OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object(%s, "
							 "(SELECT pg_catalog.jsonb_build_object('large_object', o, "
							 "        'content', pg_catalog.translate(pg_catalog.encode("
							 "            pg_catalog.lo_get(o, 0, %d), 'base64'), E'\\n', ''), "
							 "        'truncated', pg_catalog.length(pg_catalog.lo_get(o, %d, 1)) OPERATOR(pg_catalog.>) 0) "
							 "   FROM (SELECT t.%s::pg_catalog.oid) l(o) "
							 "  WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_largeobject_metadata m "
							 "                 WHERE m.oid OPERATOR(pg_catalog.=) l.o)))",
							 quote_literal_cstr(NameStr(att->attname)), GDPR_EXPORT_MAX_OBJECT,
							 GDPR_EXPORT_MAX_OBJECT, col);
	}

	pk = gdpr_pk_list(rel, "t.");
	table_close(rel, NoLock);
	if (pk == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table %s has no primary key", map->qualified_name),
				 errhint("Add a primary key: export orders and identifies rows by it.")));

	foreach(lc, map->paths)
	{
		GdprPathSql p = gdpr_path_sql(map, lfirst(lc), "t.");

		if (strcmp(p.key, "NULL") == 0)
			continue;
		only = p;
		npaths++;
	}
	owned = gdpr_path_rows_sql(map, pk, GDPR_PATHS_OWNER);
	concerned = gdpr_path_rows_sql(map, pk, GDPR_PATHS_CONCERNED);
	shared = gdpr_shared_sql(map);
	withheld = withheld_array(map);

	if (what == EXPORT_SHARED)
		return shared != NULL && owned != NULL
			? psprintf("SELECT pg_catalog.count(*) FROM %s t WHERE (%s) IN (%s) AND %s",
					   map->from_name, pk, owned, shared)
			: NULL;
	if (npaths == 0)
		return pstrdup(what == EXPORT_AGGREGATE ? "SELECT '[]'::pg_catalog.jsonb"
					   : "SELECT NULL::pg_catalog.jsonb WHERE false");
	if (npaths == 1 && shared == NULL && (owned != NULL || withheld == NULL))
	{
		/* one path's join selects the rows themselves */
		if (what == EXPORT_AGGREGATE)
			return psprintf("SELECT COALESCE(pg_catalog.jsonb_agg(%s ORDER BY %s), '[]') "
							"FROM %s t%s%s WHERE %s AND %s OPERATOR(pg_catalog.=) $1",
							rowexpr.data, pk, map->from_name, only.from[0] ? ", " : "",
							only.from, only.where, only.key);
		return psprintf("SELECT %s FROM %s t%s%s WHERE %s AND %s OPERATOR(pg_catalog.=) $1 ORDER BY %s",
						rowexpr.data, map->from_name, only.from[0] ? ", " : "", only.from,
						only.where, only.key, pk);
	}

	/*
	 * The subject's own rows, less those it shares with other subjects, and
	 * the rows only about it, which leave out what is personal data of
	 * their owner: each path's keys united, so a row reached twice comes
	 * once.
	 */
	if (owned != NULL)
		owned = shared != NULL ? psprintf("((%s) IN (%s) AND NOT %s)", pk, owned, shared)
			: psprintf("(%s) IN (%s)", pk, owned);
	if (concerned != NULL)
		concerned = psprintf("(%s) IN (%s)", pk, concerned);
	selected = owned == NULL ? concerned : concerned == NULL ? owned
		: psprintf("(%s OR %s)", owned, concerned);
	row = rowexpr.data;
	if (concerned != NULL && withheld != NULL)
		row = owned == NULL ? psprintf("%s OPERATOR(pg_catalog.-) %s", rowexpr.data, withheld)
			: psprintf("CASE WHEN %s THEN %s ELSE %s OPERATOR(pg_catalog.-) %s END",
					   owned, rowexpr.data, rowexpr.data, withheld);
	if (what == EXPORT_AGGREGATE)
		return psprintf("SELECT COALESCE(pg_catalog.jsonb_agg(%s ORDER BY %s), '[]') "
						"FROM %s t WHERE %s", row, pk, map->from_name, selected);
	return psprintf("SELECT %s FROM %s t WHERE %s ORDER BY %s",
					row, map->from_name, selected, pk);
}

/*
 * The columns a row reached only by a concerned path leaves out, as a
 * text[] literal, or NULL: those classified as personal data (of the row's
 * owner), less the about_columns of the table's concerned paths.
 */
static char *
withheld_array(const GdprTableMap *map)
{
	StringInfoData buf;
	List	   *names = withheld_columns(map);
	ListCell   *lc;

	if (names == NIL)
		return NULL;
	initStringInfo(&buf);
	foreach(lc, names)
		appendStringInfo(&buf, "%s%s", buf.len > 0 ? ", " : "ARRAY[", quote_literal_cstr(lfirst(lc)));
	appendStringInfoString(&buf, "]::pg_catalog.text[]");
	return buf.data;
}

static List *
withheld_columns(const GdprTableMap *map)
{
	List	   *about = NIL;
	List	   *names = NIL;
	bool		concerned = false;
	ListCell   *lc;

	foreach(lc, map->paths)
	{
		GdprPath   *path = lfirst(lc);

		if (!path->owner)
		{
			concerned = true;
			about = list_concat(about, path->about_columns);
		}
	}
	if (!concerned)
		return NIL;
	foreach(lc, map->columns)
	{
		GdprColumn *col = lfirst(lc);
		ListCell   *a;
		bool		about_subject = false;

		if (strcmp(col->category, "secret") == 0)
			continue;
		foreach(a, about)
			about_subject |= strcmp(lfirst(a), col->name) == 0;
		if (!about_subject)
			names = lappend(names, col->name);
	}
	return names;
}

/*
 * Runs a query returning one jsonb value, with $1 the subject key, $2 its kind
 * and $3 its key as text.  as_owner: as the audit table's owner.
 */
static Jsonb *
query_jsonb(const char *sql, const GdprSubject *subject, bool as_owner)
{
	Oid			argtypes[3] = {subject->key_type, TEXTOID, TEXTOID};
	Datum		args[3] = {subject->key, CStringGetTextDatum(subject->kind),
	CStringGetTextDatum(subject->key_text)};
	bool		isnull;
	Datum		d;
	int			ret;

	ret = as_owner
		? gdpr_execute_as_owner(NULL, sql, 3, argtypes, args, NULL, true, 1)
		: SPI_execute_with_args(sql, 3, argtypes, args, NULL, true, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "SPI_execute_with_args failed: %d", ret);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum("null")));
	return DatumGetJsonbPCopy(d);
}

/* The key in its natural JSON form: a number for integer keys, else a string */
static Jsonb *
subject_key_jsonb(const GdprSubject *subject)
{
	StringInfoData buf;

	initStringInfo(&buf);
	if (subject->key_type == INT2OID || subject->key_type == INT4OID ||
		subject->key_type == INT8OID)
		appendStringInfoString(&buf, subject->key_text);
	else
		escape_json(&buf, subject->key_text);
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}

/* Helpers that build jsonb documents, for export and erasure reports */
void
gdpr_push_key(JsonbParseState **state, const char *key)
{
	JsonbValue	v;

	v.type = jbvString;
	v.val.string.val = (char *) key;
	v.val.string.len = strlen(key);
	pushJsonbValue(state, WJB_KEY, &v);
}

void
gdpr_push_string(JsonbParseState **state, const char *value)
{
	JsonbValue	v;

	v.type = jbvString;
	v.val.string.val = (char *) value;
	v.val.string.len = strlen(value);
	pushJsonbValue(state, WJB_VALUE, &v);
}

static void
push_int(JsonbParseState **state, int64 value)
{
	JsonbValue	v;

	v.type = jbvNumeric;
	v.val.numeric = int64_to_numeric(value);
	pushJsonbValue(state, WJB_VALUE, &v);
}

/* Every key and value of a jsonb object, into the object being built */
static void
push_members(JsonbParseState **state, Jsonb *object)
{
	JsonbIterator *it = JsonbIteratorInit(&object->root);
	JsonbValue	v;
	JsonbIteratorToken token;

	while ((token = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		if (token == WJB_KEY || token == WJB_VALUE)
			pushJsonbValue(state, token, &v);
}

/* A whole jsonb value as the value of the current key; scalars are unwrapped */
void
gdpr_push_jsonb(JsonbParseState **state, Jsonb *value)
{
	JsonbValue	v;

	if (JB_ROOT_IS_SCALAR(value))
	{
		if (!JsonbExtractScalar(&value->root, &v))
			elog(ERROR, "could not extract a jsonb scalar");
	}
	else
	{
		v.type = jbvBinary;
		v.val.binary.data = &value->root;
		v.val.binary.len = VARSIZE(value) - VARHDRSZ;
	}
	pushJsonbValue(state, WJB_VALUE, &v);
}

/* The EXPORT event: who asked, how many rows of which table; never a value */
static void
record_export(const GdprSubject *subject, bool portable, bool streamed, List *tables,
			  int64 *counts, int64 total)
{
	JsonbParseState *state = NULL;
	JsonbValue *detail;
	ListCell   *lc;

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	gdpr_push_key(&state, "portable");
	pushJsonbValue(&state, WJB_VALUE, &(JsonbValue) {.type = jbvBool, .val.boolean = portable});
	gdpr_push_key(&state, "streamed");
	pushJsonbValue(&state, WJB_VALUE, &(JsonbValue) {.type = jbvBool, .val.boolean = streamed});
	gdpr_push_key(&state, "total_rows");
	push_int(&state, total);
	gdpr_push_key(&state, "counts");
	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	foreach(lc, tables)
	{
		gdpr_push_key(&state, ((ExportTable *) lfirst(lc))->name);
		push_int(&state, counts[foreach_current_index(lc)]);
	}
	pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	detail = pushJsonbValue(&state, WJB_END_OBJECT, NULL);

	gdpr_record_event("EXPORT", subject->kind, subject->key_text, NULL, JsonbValueToJsonb(detail));
}

/*
 * Closes the data subject request the caller named as completed: it must be
 * open and verified, about this subject, and for one of the rights given
 * (comma-separated).
 */
void
gdpr_complete_request(int64 request_id, const GdprSubject *subject, const char *rights,
				 const char *outcome)
{
	Oid			argtypes[5] = {INT8OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID};
	Datum		args[5] = {Int64GetDatum(request_id), CStringGetTextDatum(subject->kind),
		CStringGetTextDatum(subject->key_text), CStringGetTextDatum(rights),
	CStringGetTextDatum(outcome)};

	if (SPI_execute_with_args("SELECT gdpr._complete_request($1, $2, $3, pg_catalog.string_to_array($4, ','), $5)",
							  5, argtypes, args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed");
}

/*
 * The subject an export is about, which must exist: an access request about
 * nobody is an error, not an empty export.  SPI must be connected.
 */
static GdprSubject *
export_subject(FunctionCallInfo fcinfo, const char *kind, MemoryContext mcxt, Jsonb **erasure)
{
	GdprSubject *subject = gdpr_resolve_subject(fcinfo, 0, kind, mcxt);

	*erasure = gdpr_erasure_record(subject);
	if (*erasure == NULL && !gdpr_subject_exists(subject))
	{
		log_failure(subject->kind, subject->key_text);
		ereport(ERROR,
				(errcode(ERRCODE_GDPR_SUBJECT_NOT_FOUND),
				 errmsg("subject %s of kind \"%s\" does not exist", subject->key_text, subject->kind),
				 errdetail("No row of %s has %s = %s.", gdpr_relation_name(subject->relid),
						   subject->key_column, subject->key_text),
				 errhint("Check the key; an access request about nobody has nothing to export.")));
	}
	return subject;
}

/*
 * The answer to an access request about an erased subject: that it was
 * erased, when, and which tables kept rows anonymized, under the pseudonym
 * only; recorded so, since the erasure took the key out of the trail.
 */
static Jsonb *
erased_document(const GdprSubject *subject, Jsonb *erasure)
{
	JsonbParseState *state = NULL;
	JsonbValue *v;
	Jsonb	   *doc;

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	gdpr_push_key(&state, "format");
	gdpr_push_string(&state, GDPR_EXPORT_FORMAT);
	gdpr_push_key(&state, "subject");
	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	gdpr_push_key(&state, "kind");
	gdpr_push_string(&state, subject->kind);
	gdpr_push_key(&state, "erased");
	pushJsonbValue(&state, WJB_VALUE, &(JsonbValue) {.type = jbvBool, .val.boolean = true});
	pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	gdpr_push_key(&state, "erasure");
	gdpr_push_jsonb(&state, erasure);
	v = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	doc = JsonbValueToJsonb(v);
	gdpr_record_event("EXPORT", subject->kind,
					  gdpr_subject_pseudonym(subject->kind, subject->key_text), NULL,
					  DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum("{\"erased\": true}"))));
	return doc;
}

/* The transaction of a failed export rolls back its event: leave a line in the server log */
static void
log_failure(const char *kind, const char *key)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"gdpr_event\": \"EXPORT\", \"success\": false, \"kind\": ");
	escape_json(&buf, kind);
	appendStringInfoString(&buf, ", \"subject\": ");
	escape_json(&buf, key);
	appendStringInfoString(&buf, ", \"role\": ");
	escape_json(&buf, GetUserNameFromId(GetUserId(), false));
	appendStringInfoString(&buf, ", \"actor\": ");
	if (gdpr_actor != NULL && gdpr_actor[0] != '\0')
		escape_json(&buf, gdpr_actor);
	else
		appendStringInfoString(&buf, "null");
	appendStringInfoChar(&buf, '}');
	ereport(LOG, (errmsg_internal("%s", buf.data), errhidestmt(true)));
}
