/*-------------------------------------------------------------------------
 *
 * audit.c
 *		Audit capture: the row and TRUNCATE triggers attached to registered
 *		tables, and gdpr.log_event for what the database cannot see.
 *
 * Every event is one INSERT into gdpr.audit_log through a prepared, kept SPI
 * plan.  The row trigger keeps one plan per relation it fires on (a partition,
 * for partitioned tables), built from the table's map: the plan computes the
 * subject key, the primary key and the row images in SQL, so the trigger
 * itself only hands over the old and new rows.  Plans are dropped by the
 * relcache callback (gdpr_audit_invalidate) whenever the relation or its map
 * changes; registration functions send that invalidation explicitly.
 *
 * Applications may not write the audit table.  The insert therefore runs as
 * the owner of gdpr.audit_log (SetUserIdAndSecContext, as the RI triggers do);
 * who caused the event is captured before switching.  Transaction abort
 * restores the user, so an error in between needs no cleanup here.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "gdpr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/bitmapset.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgrprotos.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

PG_FUNCTION_INFO_V1(gdpr_audit_row);
PG_FUNCTION_INFO_V1(gdpr_audit_truncate);
PG_FUNCTION_INFO_V1(gdpr_log_event);

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
#define ROW_NPARAMS (CONTEXT_NPARAMS + 6)
#define P_EVENT		9			/* 0-based indexes into the parameter arrays */
#define P_CHANGED	10
#define P_OLD		11
#define P_NEW		12
#define P_EXCLUDE	13
#define P_KEYROW	14

/* The cached audit plan of one relation */
typedef struct AuditPlan
{
	Oid			relid;			/* hash key: the relation the trigger fires on */
	bool		valid;			/* false once invalidated; rebuilt on next use */
	SPIPlanPtr	plan;
	SPIPlanPtr	restrict_plan;	/* the row's subject's restrictions, or NULL: no subject */
	int			natts;
	bool	   *secret;			/* by attribute number - 1: never leaves the table */
	Datum	   *attnames;		/* by attribute number - 1: the column name as text */
	char	   *kind;			/* the subject kind, when the table has an owner path */
	MemoryContext mcxt;			/* holds secret, attnames, kind */
} AuditPlan;

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

static AuditPlan *get_row_plan(Relation rel);
static void build_row_plan(AuditPlan *ap, Relation rel);
static void fill_context(Datum *values, char *nulls);
static Oid	audit_table_owner(void);
static bool restrictions_exist(void);
static void check_restriction(AuditPlan *ap, Datum row, bool erased_only);
static bool *changed_columns(const AuditPlan *ap, TupleDesc desc, HeapTuple oldtup,
							 HeapTuple newtup);
static Datum names_array(const AuditPlan *ap, const bool *which);

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
	AuditPlan  *ap;
	Datum		values[ROW_NPARAMS];
	char		nulls[ROW_NPARAMS];
	bool	   *dropped;
	bool	   *changed = NULL;
	Datum		keyrow;
	int			ret;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		!TRIGGER_FIRED_AFTER(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("gdpr.audit_row() must be fired AFTER ... FOR EACH ROW"),
				 errhint("Attach it with gdpr.register_table(), not by hand.")));

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
	 * Restrictions hold whatever is audited; erasure itself is exempt.  A
	 * writer that waited for a row lock (an erasure's) has not read the
	 * invalidations sent meanwhile: read them now.
	 */
	AcceptInvalidationMessages();
	if (!gdpr_erasing && !gdpr_retaining && restrictions_exist())
	{
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		ap = get_row_plan(rel);
		if (oldtup != NULL)
			check_restriction(ap, heap_copy_tuple_as_datum(oldtup, desc), false);
		if (newtup != NULL)
			check_restriction(ap, heap_copy_tuple_as_datum(newtup, desc), true);
		SPI_finish();
	}

	/*
	 * Rows purged for retention leave no copy of their values behind: the
	 * batch records one RETENTION event instead (retention.c).
	 */
	if (gdpr_retaining || !gdpr_event_wanted(event_class))
		return PointerGetDatum(NULL);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	ap = get_row_plan(rel);

	fill_context(values, nulls);
	values[P_EVENT] = CStringGetTextDatum(event);
	nulls[P_EVENT] = ' ';

	nulls[P_CHANGED] = 'n';
	values[P_CHANGED] = (Datum) 0;
	if (oldtup != NULL && newtup != NULL)
	{
		changed = changed_columns(ap, desc, oldtup, newtup);
		values[P_CHANGED] = names_array(ap, changed);
		nulls[P_CHANGED] = ' ';
	}

	/* the key row (subject and primary key) is the new row, or the old one of a DELETE */
	keyrow = heap_copy_tuple_as_datum(newtup != NULL ? newtup : oldtup, desc);
	values[P_KEYROW] = keyrow;
	nulls[P_KEYROW] = ' ';
	nulls[P_OLD] = nulls[P_NEW] = 'n';
	values[P_OLD] = values[P_NEW] = (Datum) 0;
	if (gdpr_audit_values != GDPR_VALUES_NONE)
	{
		if (oldtup != NULL)
		{
			values[P_OLD] = newtup != NULL ? heap_copy_tuple_as_datum(oldtup, desc) : keyrow;
			nulls[P_OLD] = ' ';
		}
		if (newtup != NULL)
		{
			values[P_NEW] = keyrow;
			nulls[P_NEW] = ' ';
		}
	}

	/* what the row images leave out: secret columns, and unchanged ones under "changed" */
	dropped = palloc(sizeof(bool) * ap->natts);
	for (int i = 0; i < ap->natts; i++)
		dropped[i] = ap->secret[i] ||
			(changed != NULL && gdpr_audit_values == GDPR_VALUES_CHANGED && !changed[i]);
	values[P_EXCLUDE] = names_array(ap, dropped);
	nulls[P_EXCLUDE] = ' ';

	ret = gdpr_execute_as_owner(ap->plan, NULL, 0, NULL, values, nulls, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "SPI_execute_plan failed: %d", ret);

	SPI_finish();
	return PointerGetDatum(NULL);
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

	if (!gdpr_event_wanted(GDPR_EV_TRUNCATE))
		return PointerGetDatum(NULL);

	relid = RelationGetRelid(trigdata->tg_relation);
	root = gdpr_root_relid(relid);
	table_name = quote_qualified_identifier(get_namespace_name(get_rel_namespace(root)),
											get_rel_name(root));
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

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
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
Datum
gdpr_log_event(PG_FUNCTION_ARGS)
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
 * The relcache callback's part for audit plans: forget the plan of one
 * relation, or of all (InvalidOid), and the audit table's owner.  Plans are freed when rebuilt, not here:
 * a callback may run while a plan is being executed.
 */
void
gdpr_audit_invalidate(Oid relid)
{
	HASH_SEQ_STATUS status;
	AuditPlan  *ap;

	if (!OidIsValid(relid) || relid == audit_log_relid)
		audit_log_owner = InvalidOid;
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

static AuditPlan *
get_row_plan(Relation rel)
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
		ap->plan = ap->restrict_plan = NULL;
		ap->mcxt = AllocSetContextCreate(CacheMemoryContext, "gdpr audit plan",
										 ALLOCSET_SMALL_SIZES);
	}
	/*
	 * Valid is set before the build: an invalidation that arrives while the
	 * map is read clears it, and the plan is built again.  The map is read
	 * with the latest snapshot, not the statement's: the invalidation that
	 * brought us here may come from a map change committed after the
	 * statement began.
	 */
	while (!ap->valid)
	{
		if (ap->plan != NULL)
			SPI_freeplan(ap->plan);
		if (ap->restrict_plan != NULL)
			SPI_freeplan(ap->restrict_plan);
		ap->plan = ap->restrict_plan = NULL;
		ap->kind = NULL;
		MemoryContextReset(ap->mcxt);
		ap->valid = true;
		PushActiveSnapshot(GetLatestSnapshot());
		PG_TRY();
		{
			build_row_plan(ap, rel);
		}
		PG_CATCH();
		{
			ap->valid = false;
			PG_RE_THROW();
		}
		PG_END_TRY();
		PopActiveSnapshot();
	}
	return ap;
}

/*
 * Builds the INSERT of one relation's row events from its map.  A relation
 * that carries the trigger but is no longer in the map is still audited,
 * without a subject, rather than letting its changes pass unrecorded.
 */
static void
build_row_plan(AuditPlan *ap, Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	Oid			root = gdpr_root_relid(RelationGetRelid(rel));
	MemoryContext tmpcxt;
	MemoryContext oldcxt;
	GdprTableMap *map;
	StringInfoData sql;
	Oid			argtypes[ROW_NPARAMS];
	char	   *table_name;
	int			nrelated = 0;
	ListCell   *lc;
	SPIPlanPtr	plan;

	tmpcxt = AllocSetContextCreate(CurrentMemoryContext, "gdpr plan build",
								   ALLOCSET_DEFAULT_SIZES);
	oldcxt = MemoryContextSwitchTo(tmpcxt);
	map = gdpr_load_table_map(root, tmpcxt);
	table_name = map != NULL ? map->qualified_name :
		quote_qualified_identifier(get_namespace_name(get_rel_namespace(root)),
								   get_rel_name(root));

	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "INSERT INTO gdpr.audit_log (%s, event, changed_columns, old_values, new_values, "
					 "table_name, subject_kind, subject_id, related_subject_ids, row_key) VALUES (%s, "
					 "$10, $11, pg_catalog.to_jsonb($12) OPERATOR(pg_catalog.-) $14, "
					 "pg_catalog.to_jsonb($13) OPERATOR(pg_catalog.-) $14, %s, %s, ",
					 context_columns, context_values, quote_literal_cstr(table_name),
					 map != NULL ? quote_literal_cstr(map->kind) : "NULL");

	/* subject_id: the first owner path; related_subject_ids: every other path */
	if (map != NULL && map->paths != NIL && ((GdprPath *) linitial(map->paths))->owner)
		appendStringInfoString(&sql, gdpr_subject_sql(map, linitial(map->paths), "$15"));
	else
		appendStringInfoString(&sql, "NULL");
	appendStringInfoString(&sql, ", ");
	if (map != NULL)
	{
		foreach(lc, map->paths)
		{
			if (foreach_current_index(lc) == 0 && ((GdprPath *) lfirst(lc))->owner)
				continue;
			appendStringInfoString(&sql, nrelated == 0
								   ? "NULLIF(pg_catalog.array_remove(ARRAY["
								   : ", ");
			appendStringInfoString(&sql, gdpr_subject_sql(map, lfirst(lc), "$15"));
			nrelated++;
		}
	}
	if (nrelated > 0)
		appendStringInfoString(&sql, "]::pg_catalog.text[], NULL), '{}')");
	else
		appendStringInfoString(&sql, "NULL");

	/* row_key: the primary key columns as a JSON object */
	appendStringInfo(&sql, ", %s)", gdpr_pk_json(rel, "($15)."));

	memcpy(argtypes, context_types, sizeof(context_types));
	argtypes[P_EVENT] = TEXTOID;
	argtypes[P_CHANGED] = TEXTARRAYOID;
	argtypes[P_OLD] = rel->rd_rel->reltype;
	argtypes[P_NEW] = rel->rd_rel->reltype;
	argtypes[P_EXCLUDE] = TEXTARRAYOID;
	argtypes[P_KEYROW] = rel->rd_rel->reltype;

	plan = SPI_prepare(sql.data, ROW_NPARAMS, argtypes);
	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql.data,
			 SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "SPI_keepplan failed");

	if (map != NULL && map->paths != NIL && ((GdprPath *) linitial(map->paths))->owner)
	{
		char	   *check = psprintf("SELECT s, pg_catalog.bool_or(source = 'erased'), pg_catalog.min(reason) "
									 "  FROM (SELECT %s AS s) k JOIN gdpr.restriction r "
									 "    ON r.kind = %s AND r.subject_id = k.s GROUP BY s",
									 gdpr_subject_sql(map, linitial(map->paths), "$1"),
									 quote_literal_cstr(map->kind));

		ap->restrict_plan = SPI_prepare(check, 1, &argtypes[P_KEYROW]);
		if (ap->restrict_plan == NULL || SPI_keepplan(ap->restrict_plan) != 0)
			elog(ERROR, "SPI_prepare failed for \"%s\"", check);
		ap->kind = MemoryContextStrdup(ap->mcxt, map->kind);
	}

	MemoryContextSwitchTo(ap->mcxt);
	ap->natts = desc->natts;
	ap->secret = palloc0(sizeof(bool) * desc->natts);
	ap->attnames = palloc0(sizeof(Datum) * desc->natts);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		ap->attnames[i] = CStringGetTextDatum(NameStr(att->attname));
		ap->secret[i] = att->attisdropped ||
			(map != NULL && gdpr_column_is_secret(map, NameStr(att->attname)));
	}
	MemoryContextSwitchTo(oldcxt);
	MemoryContextDelete(tmpcxt);
	ap->plan = plan;
}

/*
 * Which columns an UPDATE changed, by comparing the stored representations:
 * a value rewritten to itself does not count, a toasted value left alone
 * keeps its toast pointer and compares equal.
 */
static bool *
changed_columns(const AuditPlan *ap, TupleDesc desc, HeapTuple oldtup, HeapTuple newtup)
{
	bool	   *changed = palloc0(sizeof(bool) * ap->natts);

	for (int i = 0; i < ap->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		bool		oldnull,
					newnull;
		Datum		oldval,
					newval;

		if (att->attisdropped)
			continue;
		oldval = heap_getattr(oldtup, i + 1, desc, &oldnull);
		newval = heap_getattr(newtup, i + 1, desc, &newnull);
		if (oldnull != newnull)
			changed[i] = true;
		else if (!oldnull)
			changed[i] = !datumIsEqual(oldval, newval, att->attbyval, att->attlen);
	}
	return changed;
}

/* The names of the columns flagged in which, as a text[] datum */
static Datum
names_array(const AuditPlan *ap, const bool *which)
{
	Datum	   *elems = palloc(sizeof(Datum) * ap->natts);
	int			n = 0;

	for (int i = 0; i < ap->natts; i++)
		if (which[i])
			elems[n++] = ap->attnames[i];
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
check_restriction(AuditPlan *ap, Datum row, bool erased_only)
{
	Datum		values[1] = {row};
	bool		isnull;
	bool		erased;
	int			ret;

	if (ap->restrict_plan == NULL)
		return;
	/* a fresh snapshot: an erasure this statement waited for has committed its marker */
	ret = gdpr_execute_as_owner(ap->restrict_plan, NULL, 0, NULL, values, NULL, false, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_plan failed: %d", ret);
	if (SPI_processed == 0)
		return;
	erased = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	if (erased)
		ereport(ERROR,
				(errcode(ERRCODE_GDPR_ERASED),
				 errmsg("subject %s of kind \"%s\" was erased",
						SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1), ap->kind),
				 errhint("An erased subject's row is kept anonymized; write nothing new about them.")));
	if (!erased_only)
		ereport(ERROR,
				(errcode(ERRCODE_GDPR_RESTRICTED),
				 errmsg("processing of subject %s of kind \"%s\" is restricted",
						SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1), ap->kind),
				 errdetail("Reason: %s.", SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3)),
				 errhint("Rows of a restricted subject can be read, exported and erased, not changed; lift it with gdpr_unrestrict().")));
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
