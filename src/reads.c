/*-------------------------------------------------------------------------
 *
 * reads.c
 *		Read auditing: with gdpr.audit_reads on, every statement that reads a
 *		registered table (SELECT, INSERT ... SELECT, CREATE TABLE AS, cursors,
 *		COPY ... TO) leaves one JSON line in the server log, also when its
 *		transaction aborts.
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
#include "access/parallel.h"
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
#include "nodes/plannodes.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"

static ExecutorStart_hook_type prev_ExecutorStart = NULL;
static ExecutorRun_hook_type prev_ExecutorRun = NULL;
static ExecutorEnd_hook_type prev_ExecutorEnd = NULL;
static ProcessUtility_hook_type prev_ProcessUtility = NULL;

/*
 * The text of the one statement the extension is about to run for its own
 * bookkeeping (a subject-key lookup, a hold's count, a retention batch),
 * set around that call.  A statement whose source text is this very string
 * is not a read; anything it runs in turn (a policy's function, a table's
 * trigger) has other text, and is audited as usual.
 */
const char *gdpr_internal_sql = NULL;

/* Registered tables of this database, or NULL when they must be read again */
static HTAB *registered = NULL;

/*
 * A statement that reads registered tables, from ExecutorStart to
 * ExecutorEnd.  It is logged at its end with the rows it produced.  It lives
 * in the statement's executor memory, whose deletion calls forget_read: a
 * statement whose executor state goes without ExecutorEnd (an error closed
 * its cursor, a (sub)transaction aborted under it) has still shown rows,
 * and is logged then, as cut short.
 */
typedef struct PendingRead
{
	QueryDesc  *query;
	bool		ran;			/* ExecutorRun was called: rows may have been produced */
	bool		logged;
	char	   *head;			/* the JSON line up to the row count */
	MemoryContextCallback gone;
} PendingRead;

/* PendingRead *, in TopMemoryContext; a statement leaves it when its executor memory goes */
static List *pending_reads = NIL;

static void gdpr_ExecutorStart(QueryDesc *queryDesc, int eflags);
static void gdpr_ExecutorRun(GDPR_EXECUTOR_RUN_ARGS);
static void gdpr_ExecutorEnd(QueryDesc *queryDesc);
static void gdpr_ProcessUtility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
								ProcessUtilityContext context, ParamListInfo params,
								QueryEnvironment *queryEnv, DestReceiver *dest,
								QueryCompletion *qc);
static char *read_head(List *tables, Oid userid);
static List *tables_read(PlannedStmt *stmt);
static bool is_key_check(QueryDesc *queryDesc);
static bool key_condition(Node *node);
static PendingRead *find_pending(QueryDesc *queryDesc);
static void forget_read(void *arg);
static void emit(const char *head, const char *rows, bool aborted);
static bool load_registered(void);
static bool is_registered(Oid relid);

void
gdpr_install_read_hook(void)
{
	prev_ExecutorStart = ExecutorStart_hook;
	ExecutorStart_hook = gdpr_ExecutorStart;
	prev_ExecutorRun = ExecutorRun_hook;
	ExecutorRun_hook = gdpr_ExecutorRun;
	prev_ExecutorEnd = ExecutorEnd_hook;
	ExecutorEnd_hook = gdpr_ExecutorEnd;
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = gdpr_ProcessUtility;
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
gdpr_ExecutorStart(QueryDesc *queryDesc, int eflags)
{
	if (prev_ExecutorStart)
		prev_ExecutorStart(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);

	if (gdpr_audit_reads && !(eflags & EXEC_FLAG_EXPLAIN_ONLY) && !IsParallelWorker() &&
		queryDesc->plannedstmt != NULL && IsTransactionState())
	{
		Oid			userid = GetUserId();
		List	   *tables;

		if (!gdpr_audit_superusers && superuser_arg(userid))
			return;
		if ((gdpr_internal_sql != NULL && queryDesc->sourceText == gdpr_internal_sql) ||
			is_key_check(queryDesc))
			return;
		tables = tables_read(queryDesc->plannedstmt);
		if (tables != NIL && queryDesc->estate != NULL)
		{
			MemoryContext old = MemoryContextSwitchTo(queryDesc->estate->es_query_cxt);
			PendingRead *pr = palloc0(sizeof(PendingRead));

			pr->query = queryDesc;
			pr->head = read_head(tables, userid);
			pr->gone.func = forget_read;
			pr->gone.arg = pr;
			MemoryContextRegisterResetCallback(queryDesc->estate->es_query_cxt, &pr->gone);
			MemoryContextSwitchTo(TopMemoryContext);
			pending_reads = lappend(pending_reads, pr);
			MemoryContextSwitchTo(old);
		}
	}
}

static void
gdpr_ExecutorRun(GDPR_EXECUTOR_RUN_ARGS)
{
	PendingRead *pr = pending_reads != NIL ? find_pending(queryDesc) : NULL;

	if (pr != NULL)
		pr->ran = true;
	if (prev_ExecutorRun)
		prev_ExecutorRun(GDPR_EXECUTOR_RUN_PASS);
	else
		standard_ExecutorRun(GDPR_EXECUTOR_RUN_PASS);
}

static void
gdpr_ExecutorEnd(QueryDesc *queryDesc)
{
	PendingRead *pr = pending_reads != NIL ? find_pending(queryDesc) : NULL;

	if (pr != NULL)
	{
		if (pr->ran)
			emit(pr->head, psprintf(UINT64_FORMAT ", \"query_id\": " INT64_FORMAT,
									queryDesc->estate != NULL ? queryDesc->estate->es_processed : 0,
									(int64) queryDesc->plannedstmt->queryId), false);
		pr->logged = true;
		pending_reads = list_delete_ptr(pending_reads, pr);
	}

	if (prev_ExecutorEnd)
		prev_ExecutorEnd(queryDesc);
	else
		standard_ExecutorEnd(queryDesc);
}

/*
 * COPY table TO reads the table without the executor (unless row security
 * turns it into a query, which the executor hooks see).
 */
static void
gdpr_ProcessUtility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
					ProcessUtilityContext context, ParamListInfo params,
					QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;
	char	   *volatile head = NULL;

	if (gdpr_audit_reads && IsA(parsetree, CopyStmt) && !((CopyStmt *) parsetree)->is_from &&
		((CopyStmt *) parsetree)->relation != NULL && IsTransactionState() &&
		(gdpr_audit_superusers || !superuser_arg(GetUserId())))
	{
		Oid			relid = RangeVarGetRelid(((CopyStmt *) parsetree)->relation, NoLock, true);

		if (OidIsValid(relid) && is_registered(gdpr_root_relid(relid)) &&
			check_enable_rls(relid, InvalidOid, true) != RLS_ENABLED)
			head = read_head(list_make1_oid(gdpr_root_relid(relid)), GetUserId());
	}

	PG_TRY();
	{
		if (prev_ProcessUtility)
			prev_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv,
								dest, qc);
		else
			standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv,
									dest, qc);
	}
	PG_CATCH();
	{
		if (head != NULL)
			emit(head, "null", true);
		PG_RE_THROW();
	}
	PG_END_TRY();
	if (head != NULL)
		emit(head, psprintf(UINT64_FORMAT ", \"query_id\": " INT64_FORMAT,
							qc != NULL ? qc->nprocessed : 0, (int64) pstmt->queryId), false);
}

/*
 * The registered tables a statement reads: every table in its range table
 * but the ones it writes, which the audit triggers record, unless it
 * returns their rows (RETURNING): the audit events of a write rolled back
 * are gone, the rows it returned were read.
 */
static List *
tables_read(PlannedStmt *stmt)
{
	List	   *seen = NIL;
	ListCell   *lc;

	foreach(lc, stmt->rtable)
	{
		RangeTblEntry *rte = lfirst(lc);
		Oid			root;

		if (rte->rtekind != RTE_RELATION)
			continue;
		if (stmt->commandType != CMD_SELECT && !stmt->hasReturning &&
			list_member_int(stmt->resultRelations, foreach_current_index(lc) + 1))
			continue;
		root = gdpr_root_relid(rte->relid);
		if (list_member_oid(seen, root) || !is_registered(root))
			continue;
		seen = lappend_oid(seen, root);
	}
	return seen;
}

/*
 * A foreign key's check, run by the RI triggers of a write: SELECT 1 FROM
 * ONLY pk x WHERE pk.col = $1 ... FOR KEY SHARE OF x.  It shows no data but
 * whether the key exists, and is not a read.  Only that exact shape counts:
 * one table, a constant result, a scan whose conditions compare columns
 * with parameters (or constants) through btree equality operators; a
 * statement that merely locks FOR KEY SHARE is a read like any other.
 */
static bool
is_key_check(QueryDesc *queryDesc)
{
	PlannedStmt *stmt = queryDesc->plannedstmt;
	Plan	   *plan = stmt->planTree;
	Plan	   *scan;
	ListCell   *lc;
	Oid			userid;
	int			sec_context;

	/* the RI triggers run their checks as the table's owner, with row security not forced */
	GetUserIdAndSecContext(&userid, &sec_context);
	if ((sec_context & (SECURITY_LOCAL_USERID_CHANGE | SECURITY_NOFORCE_RLS)) !=
		(SECURITY_LOCAL_USERID_CHANGE | SECURITY_NOFORCE_RLS))
		return false;
	if (stmt->commandType != CMD_SELECT || stmt->rowMarks == NIL || stmt->subplans != NIL ||
		list_length(stmt->rtable) != 1 || plan == NULL || !IsA(plan, LockRows) ||
		plan->initPlan != NIL)
		return false;
	foreach(lc, stmt->rowMarks)
		if (((PlanRowMark *) lfirst(lc))->strength != LCS_FORKEYSHARE)
			return false;
	foreach(lc, plan->targetlist)
	{
		TargetEntry *tle = lfirst(lc);

		if (!tle->resjunk && !IsA(tle->expr, Const))
			return false;
	}
	scan = plan->lefttree;
	if (scan == NULL || scan->initPlan != NIL || scan->lefttree != NULL || scan->righttree != NULL ||
		!key_condition((Node *) scan->qual))
		return false;
	switch (nodeTag(scan))
	{
		case T_SeqScan:
			return true;
		case T_IndexScan:
			return key_condition((Node *) ((IndexScan *) scan)->indexqualorig);
		case T_IndexOnlyScan:
			return key_condition((Node *) ((IndexOnlyScan *) scan)->indexqual);
		default:
			return false;
	}
}

/* Whether node is only ANDed comparisons of columns with parameters or constants by btree equality */
static bool
key_condition(Node *node)
{
	if (node == NULL)
		return true;
	switch (nodeTag(node))
	{
		case T_List:
			{
				ListCell   *lc;

				foreach(lc, (List *) node)
					if (!key_condition(lfirst(lc)))
						return false;
				return true;
			}
		case T_BoolExpr:
			return ((BoolExpr *) node)->boolop == AND_EXPR &&
				key_condition((Node *) ((BoolExpr *) node)->args);
		case T_OpExpr:
			return get_mergejoin_opfamilies(((OpExpr *) node)->opno) != NIL &&
				key_condition((Node *) ((OpExpr *) node)->args);
		case T_RelabelType:
			return key_condition((Node *) ((RelabelType *) node)->arg);
		case T_Var:
		case T_Param:
		case T_Const:			/* a parameter of a custom plan */
			return true;
		default:
			return false;
	}
}

/* The JSON line of a read, up to "rows": made at the start, when the catalogs can be read */
static char *
read_head(List *tables, Oid userid)
{
	StringInfoData buf;
	ListCell   *lc;

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
	foreach(lc, tables)
	{
		Oid			relid = lfirst_oid(lc);

		if (foreach_current_index(lc) > 0)
			appendStringInfoString(&buf, ", ");
		escape_json(&buf, quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
													 get_rel_name(relid)));
	}
	appendStringInfoString(&buf, "], \"rows\": ");
	return buf.data;
}

/*
 * The executor memory of a pending read is going: logged already, or cut
 * short.  Runs during cleanup, also of an abort: it only logs what it
 * prepared at the start and leaves the list.
 */
static void
forget_read(void *arg)
{
	PendingRead *pr = arg;

	if (pr->logged)
		return;
	if (pr->ran)
		emit(pr->head, "null", true);
	pending_reads = list_delete_ptr(pending_reads, pr);
}

static PendingRead *
find_pending(QueryDesc *queryDesc)
{
	ListCell   *lc;

	foreach(lc, pending_reads)
	{
		PendingRead *pr = lfirst(lc);

		if (pr->query == queryDesc)
			return pr;
	}
	return NULL;
}

/* rows: the count and what follows it, or "null" for a read an abort cut short */
static void
emit(const char *head, const char *rows, bool aborted)
{
	ereport(LOG,
			(errmsg_internal("%s%s%s}", head, rows, aborted ? ", \"aborted\": true" : ""),
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
