/*-------------------------------------------------------------------------
 *
 * reads.c
 *		Read auditing: with gdpr.audit_reads on, every SELECT that reads a
 *		registered table leaves one JSON line in the server log.
 *
 * Reads cannot be written to a table: read-only transactions and standbys
 * must work too.  The hook is installed only when the library is preloaded.
 *
 * The set of registered tables is read straight from gdpr.registered_table
 * with a catalog-style scan (no SPI, so no executor re-entry from inside
 * ExecutorEnd) and cached per backend until a relcache invalidation says the
 * map may have changed: the registration functions send one for every table
 * they touch.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "executor/executor.h"
#include "gdpr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

static ExecutorEnd_hook_type prev_ExecutorEnd = NULL;

/* Registered tables of this database, or NULL when they must be read again */
static HTAB *registered = NULL;

static void gdpr_ExecutorEnd(QueryDesc *queryDesc);
static void log_read(QueryDesc *queryDesc);
static bool load_registered(void);
static bool is_registered(Oid relid);

void
gdpr_install_read_hook(void)
{
	prev_ExecutorEnd = ExecutorEnd_hook;
	ExecutorEnd_hook = gdpr_ExecutorEnd;
}

void
gdpr_reads_invalidate(Oid relid)
{
	if (registered != NULL)
	{
		hash_destroy(registered);
		registered = NULL;
	}
}

static void
gdpr_ExecutorEnd(QueryDesc *queryDesc)
{
	if (gdpr_audit_reads && queryDesc->operation == CMD_SELECT &&
		queryDesc->plannedstmt != NULL && IsTransactionState())
		log_read(queryDesc);

	if (prev_ExecutorEnd)
		prev_ExecutorEnd(queryDesc);
	else
		standard_ExecutorEnd(queryDesc);
}

static void
log_read(QueryDesc *queryDesc)
{
	StringInfoData buf;
	ListCell   *lc;
	List	   *seen = NIL;
	Oid			userid = GetUserId();

	if (!gdpr_audit_superusers && superuser_arg(userid))
		return;

	foreach(lc, queryDesc->plannedstmt->rtable)
	{
		RangeTblEntry *rte = lfirst(lc);
		Oid			root;

		if (rte->rtekind != RTE_RELATION)
			continue;
		root = gdpr_root_relid(rte->relid);
		if (list_member_oid(seen, root) || !is_registered(root))
			continue;
		seen = lappend_oid(seen, root);
	}
	if (seen == NIL)
		return;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"gdpr_event\": \"READ\", \"role\": ");
	escape_json(&buf, GetUserNameFromId(userid, false));
	appendStringInfoString(&buf, ", \"session_role\": ");
	escape_json(&buf, GetUserNameFromId(GetSessionUserId(), false));
	appendStringInfoString(&buf, ", \"actor\": ");
	if (gdpr_actor != NULL && gdpr_actor[0] != '\0')
		escape_json(&buf, gdpr_actor);
	else
		appendStringInfoString(&buf, "null");
	appendStringInfoString(&buf, ", \"database\": ");
	escape_json(&buf, get_database_name(MyDatabaseId));
	appendStringInfoString(&buf, ", \"tables\": [");
	foreach(lc, seen)
	{
		Oid			relid = lfirst_oid(lc);

		if (foreach_current_index(lc) > 0)
			appendStringInfoString(&buf, ", ");
		escape_json(&buf, quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
													 get_rel_name(relid)));
	}
	appendStringInfo(&buf, "], \"rows\": " UINT64_FORMAT ", \"query_id\": " INT64_FORMAT "}",
					 queryDesc->estate != NULL ? queryDesc->estate->es_processed : 0,
					 (int64) queryDesc->plannedstmt->queryId);

	ereport(LOG,
			(errmsg_internal("%s", buf.data),
			 errhidestmt(true),
			 errhidecontext(true)));
}

static bool
is_registered(Oid relid)
{
	if (registered == NULL && !load_registered())
		return false;
	return hash_search(registered, &relid, HASH_FIND, NULL) != NULL;
}

/*
 * Reads gdpr.registered_table.  Returns false, caching nothing, where the
 * extension is not installed: it may be installed later in this session.
 */
static bool
load_registered(void)
{
	Oid			nsp;
	Oid			relid;
	Relation	rel;
	SysScanDesc scan;
	HeapTuple	tup;
	HASHCTL		ctl;
	HTAB	   *set;

	nsp = get_namespace_oid("gdpr", true);
	if (!OidIsValid(nsp) || !OidIsValid(get_extension_oid("gdpr", true)))
		return false;
	relid = get_relname_relid("registered_table", nsp);
	if (!OidIsValid(relid))
		return false;

	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(Oid);
	ctl.hcxt = CacheMemoryContext;
	set = hash_create("gdpr registered tables", 64, &ctl,
					  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);

	rel = table_open(relid, AccessShareLock);
	scan = systable_beginscan(rel, InvalidOid, false, GetCatalogSnapshot(relid), 0, NULL);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, 1, RelationGetDescr(rel), &isnull);
		Oid			table = DatumGetObjectId(d);

		if (!isnull)
			hash_search(set, &table, HASH_ENTER, NULL);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);

	registered = set;
	return true;
}
