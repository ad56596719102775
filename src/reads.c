/*-------------------------------------------------------------------------
 *
 * reads.c
 *		Read auditing, in two forms.  With gdpr.audit_reads on, every
 *		statement that reads a registered table (SELECT, INSERT ... SELECT,
 *		CREATE TABLE AS, cursors, COPY ... TO) leaves one JSON line in the
 *		server log, also when its transaction aborts.  A table under
 *		gdpr.set_read_audit() is read-audited: a statement that reads it
 *		records whose rows it read, as one READ event per statement and table
 *		in the trail, through the queue (queue.c), so that reads never wait,
 *		never fail and work in read-only transactions.
 *
 * Reads cannot be written to a table by the reader: read-only transactions
 * and standbys must work too.  The hooks are installed only when the library
 * is preloaded.
 *
 * Whose rows a statement read is taken where the rows come out of the
 * table: each scan node of a read-audited table (sequential, index,
 * index-only, bitmap, TID) is wrapped, and every row it returns, after its
 * own filters, gives its subject key from the row's own column (the key of
 * a subject table, a subject column, the foreign key of a one-step path).
 * A row whose subject only another table can tell (a path of several steps
 * or a condition) gives the columns the path starts from, and the queue's
 * writer resolves them (queue.c).  Parallel plans are not made for such
 * statements: a parallel worker's rows would not pass through the leader's
 * nodes.
 *
 * The set of registered tables is read straight from gdpr.registered_table
 * with a catalog-style scan (no SPI, so no executor re-entry from inside
 * ExecutorEnd) and cached per backend until a relcache invalidation says the
 * map may have changed: the registration functions send one for every table
 * they touch.  How a read-audited table names its subjects is read from the
 * map (SPI, as the trail's owner) the first time a statement reads it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/parallel.h"
#include "access/relation.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "common/hashfn.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "gdpr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/execnodes.h"
#include "nodes/nodeFuncs.h"
#include "nodes/parsenodes.h"
#include "nodes/plannodes.h"
#include "optimizer/clauses.h"
#include "optimizer/optimizer.h"
#include "optimizer/plancat.h"
#include "optimizer/planner.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

PG_FUNCTION_INFO_V1(gdpr_check_read_audit);

static ExecutorStart_hook_type prev_ExecutorStart = NULL;
static ExecutorRun_hook_type prev_ExecutorRun = NULL;
static ExecutorFinish_hook_type prev_ExecutorFinish = NULL;
static ExecutorEnd_hook_type prev_ExecutorEnd = NULL;
static ProcessUtility_hook_type prev_ProcessUtility = NULL;
static planner_hook_type prev_planner = NULL;
static get_relation_info_hook_type prev_get_relation_info = NULL;

/*
 * The text of the one statement the extension is about to run for its own
 * bookkeeping (a subject-key lookup, a hold's count, a retention batch),
 * set around that call.  A statement whose source text is this very string
 * is not a read; anything it runs in turn (a policy's function, a table's
 * trigger) has other text, and is audited as usual.
 */
const char *gdpr_internal_sql = NULL;

/*
 * A registered table of this database, and, once a statement read it while
 * it is read-audited, how its rows name their subjects.  In CacheMemoryContext.
 */
typedef struct RegisteredTable
{
	Oid			relid;			/* hash key: the registered (root) table */
	bool		read_audit;
	bool		resolved;		/* what follows is filled */
	char	   *kind;
	char	   *name;			/* qualified */
	List	   *key_columns;	/* char *: columns that hold the subject key */
	List	   *row_columns;	/* char *: columns the writer resolves subjects from, or NIL */
} RegisteredTable;

/*
 * A rights function (gdpr_export, gdpr_erase, ...) runs statements of its
 * own that read the subject's rows, and whole tables to verify an erasure:
 * those are its work, recorded as its own event (EXPORT, ERASE), not reads.
 * Only they are: a statement that user code runs meanwhile (a trigger the
 * erasure fires, a row security policy's function) is one executor level
 * deeper, and is a read like any other.  The calls in progress are a stack
 * of (subtransaction, executor level); an aborted subtransaction takes its
 * calls off, so none outlives its call.
 */
#define MAX_OWN_CALLS 32
static struct
{
	SubTransactionId subxact;
	int			level;
}			own_calls[MAX_OWN_CALLS];
static int	n_own_calls = 0;

/* Executor level: ExecutorRun, ExecutorFinish and utility commands in progress */
static int	nesting = 0;

/*
 * Whether the statement that started last at each executor level is a
 * rights function's own: Citus runs parts of an own statement as
 * statements one level down (see own_statement).
 */
#define MAX_OWN_NESTING 64
static bool own_at[MAX_OWN_NESTING];

/*
 * Registered tables of this database, or NULL when they must be read again.
 * Any catalog access can process an invalidation that frees them: an entry
 * is never held across one.
 */
static HTAB *registered = NULL;
static HTAB *ancestors = NULL;	/* relid -> Ancestor */
static MemoryContext registered_cxt = NULL;
static uint64 registered_generation = 0;	/* counts the invalidations (load_registered) */
static bool any_read_audit = false;

/* The registered table a relation's rows belong to (see registered_root) */
typedef struct Ancestor
{
	Oid			relid;			/* hash key */
	Oid			root;
	bool		elsewhere;		/* a reference table's copy whose changes another node records */
} Ancestor;

/* A set of strings, allocated in the statement's memory itself (see TableRead) */
typedef struct KeyEntry
{
	const char *key;
	uint32		hash;
	char		status;
} KeyEntry;

#define SH_PREFIX keyset
#define SH_ELEMENT_TYPE KeyEntry
#define SH_KEY_TYPE const char *
#define SH_KEY key
#define SH_HASH_KEY(tb, k) hash_bytes((const unsigned char *) (k), strlen(k))
#define SH_EQUAL(tb, a, b) (strcmp(a, b) == 0)
#define SH_SCOPE static inline
#define SH_STORE_HASH
#define SH_GET_HASH(tb, a) a->hash
#define SH_DEFINE
#define SH_DECLARE
#include "lib/simplehash.h"

/*
 * Whose rows one statement read from one read-audited table: the distinct
 * subject keys (or, for a table whose subjects the writer resolves, the
 * distinct partial rows), up to gdpr.read_audit_max_subjects; past that
 * the read is bulk and only rows are counted.  In the statement's memory
 * itself, not a context under it: the memory's reset callback, which sends
 * the event of a statement an error cut short, runs after its children
 * are gone.
 */
typedef struct TableRead
{
	MemoryContext cxt;			/* the statement's memory, where the keys are kept */
	Oid			relid;
	RegisteredTable capture;	/* a copy: the cache can go while the statement runs */
	keyset_hash *seen;			/* NULL once bulk */
	const char **keys;			/* the same, in the order they were read */
	int			nkeys;
	int			maxkeys;
	uint64		rows;
	bool		bulk;
} TableRead;

/* A scan node of a read-audited table, wrapped by capture_node */
typedef struct WrappedScan
{
	PlanState  *node;
	ExecProcNodeMtd real;
	TableRead  *read;
	int			ncolumns;
	AttrNumber *attnums;		/* in the node's scan slot */
	char	  **names;			/* for row_columns: the JSON keys */
	FmgrInfo   *output;
	bool		by_row;			/* the writer resolves: keys are partial rows */
	ExprState  *qual;			/* a leaky filter, whose rows are noted, or NULL */
	ExprStateEvalFunc qual_real;
} WrappedScan;

/* WrappedScan *, innermost statement first; each leaves with its statement's memory */
static List *wrapped_scans = NIL;

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
	char	   *head;			/* the JSON line up to the row count, or NULL */
	GdprQueuedEvent *context;	/* who, when, from where, for its READ events */
	List	   *reads;			/* TableRead * of the read-audited tables */
	List	   *wrapped;		/* WrappedScan * of its scan nodes */
	MemoryContextCallback gone;
} PendingRead;

/* PendingRead *, in TopMemoryContext; a statement leaves it when its executor memory goes */
static List *pending_reads = NIL;

static void gdpr_ExecutorStart(QueryDesc *queryDesc, int eflags);
static void gdpr_ExecutorRun(GDPR_EXECUTOR_RUN_ARGS);
static void gdpr_ExecutorFinish(QueryDesc *queryDesc);
static void gdpr_ExecutorEnd(QueryDesc *queryDesc);
static bool own_statement(QueryDesc *queryDesc);
static bool shards_only(PlannedStmt *stmt);
static void gdpr_ProcessUtility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
								ProcessUtilityContext context, ParamListInfo params,
								QueryEnvironment *queryEnv, DestReceiver *dest,
								QueryCompletion *qc);
static PlannedStmt *gdpr_planner(Query *parse, const char *query_string, int cursorOptions,
								  ParamListInfo boundParams);
static bool reads_audited_table(Node *node, void *context);
static bool plans_audited_table(PlannedStmt *stmt);
static void gdpr_get_relation_info(PlannerInfo *root, Oid relid, bool inhparent, RelOptInfo *rel);
static char *read_head(List *tables, Oid userid);
static RegisteredTable *registered_table(Oid relid);
static void resolve_capture(Oid relid, RegisteredTable *out);
static void copy_capture(RegisteredTable *dst, const RegisteredTable *src);
static bool wrap_scans(PlanState *node, void *context);
static void wrap_scan(ScanState *ss, PendingRead *pr);
static void note_key(TableRead *r, char *key);
static void go_bulk(TableRead *r);
static List *append_name(List *names, const char *name);
static WrappedScan *find_wrapped(const PlanState *node, const ExprState *qual);
static TupleTableSlot *capture_node(PlanState *node);
static Datum capture_qual(ExprState *state, ExprContext *econtext, bool *isnull);
static void note_row(WrappedScan *w, TupleTableSlot *slot);
static void finish_reads(PendingRead *pr, bool aborted, uint64 query_id);
static void send_read(const GdprQueuedEvent *context, TableRead *r, uint64 query_id, bool aborted);
static List *tables_read(PlannedStmt *stmt, List **written);
static Oid	registered_root(Oid relid, bool *elsewhere);
static Oid	inheritance_parent(Oid relid);
static bool is_key_check(QueryDesc *queryDesc);
static bool run_by_foreign_key(void);
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
	prev_ExecutorFinish = ExecutorFinish_hook;
	ExecutorFinish_hook = gdpr_ExecutorFinish;
	prev_ExecutorEnd = ExecutorEnd_hook;
	ExecutorEnd_hook = gdpr_ExecutorEnd;
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = gdpr_ProcessUtility;
	prev_planner = planner_hook;
	planner_hook = gdpr_planner;
	prev_get_relation_info = get_relation_info_hook;
	get_relation_info_hook = gdpr_get_relation_info;
}

void
gdpr_own_reads_begin(void)
{
	if (n_own_calls == MAX_OWN_CALLS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("gdpr rights functions are nested more than %d deep", MAX_OWN_CALLS)));
	own_calls[n_own_calls].subxact = GetCurrentSubTransactionId();
	own_calls[n_own_calls].level = nesting;
	n_own_calls++;
}

void
gdpr_own_reads_end(void)
{
	if (n_own_calls > 0)
		n_own_calls--;
}

/* A (sub)transaction aborted (mySubid; InvalidSubTransactionId: the top one) */
void
gdpr_reads_abort(SubTransactionId mySubid)
{
	while (n_own_calls > 0 &&
		   (mySubid == InvalidSubTransactionId || own_calls[n_own_calls - 1].subxact >= mySubid))
		n_own_calls--;
	if (mySubid == InvalidSubTransactionId)
		nesting = 0;
}

/*
 * Whether the statement starting now is a rights function's own (see
 * own_calls).  On a Citus cluster, so are the statements Citus makes of an
 * own statement: one level down, a subplan (Citus gives it no text and
 * sends its rows on as COPY data; a SQL-standard function body has no text
 * either, but its own receiver) or the part of the shards this node holds
 * (local execution); and, on a worker,
 * the statements an erasure sends, which arrive at the top level once its
 * signal "rights" did (citus.c).  A trigger they fire has text of its own
 * and names tables, not shards: it is a read like any other.  An export
 * sends no signal: its reads on the workers are recorded there (README,
 * "Scaling out").
 */
static bool
own_statement(QueryDesc *queryDesc)
{
	bool		own;

	if (n_own_calls > 0 && own_calls[n_own_calls - 1].level == nesting)
		own = true;
	else if (nesting > 0 && nesting <= MAX_OWN_NESTING && own_at[nesting - 1])
		own = (queryDesc->sourceText != NULL && queryDesc->sourceText[0] == '\0' &&
			   queryDesc->dest != NULL && queryDesc->dest->mydest == DestCopyOut) ||
			shards_only(queryDesc->plannedstmt);
	else
		own = nesting == 0 && gdpr_citus_erasure_statements();
	if (nesting < MAX_OWN_NESTING)
		own_at[nesting] = own;
	return own;
}

/* Whether every relation a statement names is a Citus shard (or a copy of a reference table) */
static bool
shards_only(PlannedStmt *stmt)
{
	List	   *relids = NIL;
	bool		all = true;
	ListCell   *lc;

	/* by name first: statements under a rights function's own are mostly triggers' */
	foreach(lc, stmt->rtable)
	{
		RangeTblEntry *rte = lfirst(lc);

		if (rte->rtekind != RTE_RELATION)
			continue;
		if (!gdpr_citus_shard_name(rte->relid))
			return false;
		relids = lappend_oid(relids, rte->relid);
	}
	if (relids == NIL)
		return false;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	foreach(lc, relids)
	{
		bool		recorded_here;

		all = all && OidIsValid(gdpr_citus_shard_table(lfirst_oid(lc), &recorded_here));
	}
	SPI_finish();
	return all;
}

/* Whether a registered table of this database is read-audited */
bool
gdpr_read_audit_any(void)
{
	return (registered != NULL || load_registered()) && any_read_audit;
}

void
gdpr_reads_invalidate(Oid relid)
{
	registered_generation++;
	if (registered_cxt != NULL)
		MemoryContextDelete(registered_cxt);
	registered_cxt = NULL;
	registered = NULL;
	ancestors = NULL;
}

static void
gdpr_ExecutorStart(QueryDesc *queryDesc, int eflags)
{
	Oid			userid;
	List	   *tables;
	List	   *written = NIL;
	List	   *audited = NIL;
	ListCell   *lc;
	MemoryContext old;
	PendingRead *pr;

	if (prev_ExecutorStart)
		prev_ExecutorStart(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);

	if (nesting < MAX_OWN_NESTING)
		own_at[nesting] = false;	/* until own_statement says otherwise */
	if ((eflags & EXEC_FLAG_EXPLAIN_ONLY) || IsParallelWorker() ||
		queryDesc->plannedstmt == NULL || queryDesc->estate == NULL || !IsTransactionState())
		return;
	/* every statement passes here: a database with nothing to record leaves at once */
	if (!gdpr_audit_reads && !((registered != NULL || load_registered()) && any_read_audit))
		return;
	userid = GetUserId();
	if (!gdpr_audit_superusers && superuser_arg(userid))
		return;
	/* the writer's own lookups of subjects, and a rights function's own statements, are not reads */
	if (gdpr_queue_writer || own_statement(queryDesc))
		return;
	if (gdpr_internal_sql != NULL && queryDesc->sourceText == gdpr_internal_sql)
	{
		/* what Citus makes of it is the extension's too (see own_statement) */
		if (nesting < MAX_OWN_NESTING)
			own_at[nesting] = true;
		return;
	}
	if (is_key_check(queryDesc))
		return;

	/*
	 * A read-audited table an UPDATE or DELETE writes is read too: its WHERE
	 * saw the rows.  Not a foreign key's cascade, which the RI triggers run
	 * as the table's owner: those rows are written, and recorded as such.
	 */
	tables = tables_read(queryDesc->plannedstmt, run_by_foreign_key() ? NULL : &written);
	foreach(lc, list_concat_unique_oid(list_copy(tables), written))
	{
		RegisteredTable *t = registered_table(lfirst_oid(lc));

		if (t != NULL && t->read_audit)
			audited = lappend_oid(audited, lfirst_oid(lc));
	}
	if (audited == NIL && (!gdpr_audit_reads || tables == NIL))
		return;

	old = MemoryContextSwitchTo(queryDesc->estate->es_query_cxt);
	pr = palloc0(sizeof(PendingRead));
	pr->query = queryDesc;
	if (gdpr_audit_reads && tables != NIL)
		pr->head = read_head(tables, userid);
	if (audited != NIL)
	{
		pr->context = palloc(sizeof(GdprQueuedEvent));
		gdpr_event_context(pr->context, "READ", userid);
		foreach(lc, audited)
		{
			TableRead  *r = palloc0(sizeof(TableRead));

			r->cxt = CurrentMemoryContext;
			r->relid = lfirst_oid(lc);
			resolve_capture(r->relid, &r->capture);
			r->seen = keyset_create(CurrentMemoryContext, 8, NULL);
			pr->reads = lappend(pr->reads, r);
		}
	}
	/* known before any scan is wrapped: an error while wrapping leaves nothing behind */
	pr->gone.func = forget_read;
	pr->gone.arg = pr;
	MemoryContextRegisterResetCallback(queryDesc->estate->es_query_cxt, &pr->gone);
	MemoryContextSwitchTo(TopMemoryContext);
	pending_reads = lappend(pending_reads, pr);
	MemoryContextSwitchTo(queryDesc->estate->es_query_cxt);
	if (pr->reads != NIL && queryDesc->planstate != NULL)
		(void) wrap_scans(queryDesc->planstate, pr);
	MemoryContextSwitchTo(old);
}

static void
gdpr_ExecutorRun(GDPR_EXECUTOR_RUN_ARGS)
{
	PendingRead *pr = pending_reads != NIL ? find_pending(queryDesc) : NULL;

	if (pr != NULL)
		pr->ran = true;
	nesting++;
	PG_TRY();
	{
		if (prev_ExecutorRun)
			prev_ExecutorRun(GDPR_EXECUTOR_RUN_PASS);
		else
			standard_ExecutorRun(GDPR_EXECUTOR_RUN_PASS);
	}
	PG_FINALLY();
	{
		nesting--;
	}
	PG_END_TRY();
}

/* Only to know the executor's level (AFTER triggers run here) */
static void
gdpr_ExecutorFinish(QueryDesc *queryDesc)
{
	nesting++;
	PG_TRY();
	{
		if (prev_ExecutorFinish)
			prev_ExecutorFinish(queryDesc);
		else
			standard_ExecutorFinish(queryDesc);
	}
	PG_FINALLY();
	{
		nesting--;
	}
	PG_END_TRY();
}

static void
gdpr_ExecutorEnd(QueryDesc *queryDesc)
{
	PendingRead *pr = pending_reads != NIL ? find_pending(queryDesc) : NULL;

	if (pr != NULL)
	{
		if (pr->ran && pr->head != NULL)
			emit(pr->head, psprintf(UINT64_FORMAT ", \"query_id\": " INT64_FORMAT,
									queryDesc->estate != NULL ? queryDesc->estate->es_processed : 0,
									(int64) queryDesc->plannedstmt->queryId), false);
		finish_reads(pr, false, queryDesc->plannedstmt->queryId);
		pr->logged = true;
		pending_reads = list_delete_ptr(pending_reads, pr);
	}

	if (nesting < MAX_OWN_NESTING)
		own_at[nesting] = false;
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
	TableRead  *volatile copied = NULL;
	GdprQueuedEvent *volatile event_context = NULL;

	if (IsA(parsetree, CopyStmt) && !((CopyStmt *) parsetree)->is_from &&
		((CopyStmt *) parsetree)->relation != NULL && IsTransactionState() &&
		(gdpr_audit_superusers || !superuser_arg(GetUserId())))
	{
		Oid			relid = RangeVarGetRelid(((CopyStmt *) parsetree)->relation, NoLock, true);
		Oid			root = OidIsValid(relid) ? registered_root(relid, NULL) : InvalidOid;
		RegisteredTable *t = OidIsValid(root) ? registered_table(root) : NULL;
		bool		registered = t != NULL;
		bool		audited = t != NULL && t->read_audit;	/* t is not held across a lookup */

		if (registered && check_enable_rls(relid, InvalidOid, true) != RLS_ENABLED)
		{
			if (gdpr_audit_reads)
				head = read_head(list_make1_oid(root), GetUserId());
			/* every row of the table, no scan node to see whose: a bulk read */
			if (audited)
			{
				copied = palloc0(sizeof(TableRead));
				copied->relid = root;
				resolve_capture(copied->relid, &copied->capture);
				copied->bulk = true;
				event_context = palloc(sizeof(GdprQueuedEvent));
				gdpr_event_context(event_context, "READ", GetUserId());
			}
		}
	}

	if (nesting < MAX_OWN_NESTING)
		own_at[nesting] = false;	/* what it runs is no part of an earlier statement */
	nesting++;
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
		nesting--;
		if (head != NULL)
			emit(head, "null", true);
		if (copied != NULL)
			send_read(event_context, copied, pstmt->queryId, true);
		PG_RE_THROW();
	}
	PG_END_TRY();
	nesting--;
	if (head != NULL)
		emit(head, psprintf(UINT64_FORMAT ", \"query_id\": " INT64_FORMAT,
							qc != NULL ? qc->nprocessed : 0, (int64) pstmt->queryId), false);
	if (copied != NULL)
	{
		copied->rows = qc != NULL ? qc->nprocessed : 0;
		send_read(event_context, copied, pstmt->queryId, false);
	}
}

/*
 * The registered tables a statement reads: every table in its range table
 * but the ones it writes, which the audit triggers record, unless it
 * returns their rows (RETURNING): the audit events of a write rolled back
 * are gone, the rows it returned were read.  Those it writes go to
 * *written, unless written is NULL.
 */
static List *
tables_read(PlannedStmt *stmt, List **written)
{
	List	   *seen = NIL;
	ListCell   *lc;

	foreach(lc, stmt->rtable)
	{
		RangeTblEntry *rte = lfirst(lc);
		Oid			root;
		bool		write;
		bool		elsewhere;

		if (rte->rtekind != RTE_RELATION)
			continue;
		write = stmt->commandType != CMD_SELECT && !stmt->hasReturning &&
			list_member_int(stmt->resultRelations, foreach_current_index(lc) + 1);
		if (write && written == NULL)
			continue;
		root = registered_root(rte->relid, &elsewhere);
		if (!is_registered(root))
			continue;
		/* a write reaches every copy of a reference table: the node that records it reads once */
		if (elsewhere && stmt->commandType != CMD_SELECT)
			continue;
		if (write)
			*written = list_append_unique_oid(*written, root);
		else
			seen = list_append_unique_oid(seen, root);
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

/* Whether the statement is a foreign key's, run by its RI trigger as the table's owner */
static bool
run_by_foreign_key(void)
{
	Oid			userid;
	int			sec_context;

	GetUserIdAndSecContext(&userid, &sec_context);
	return (sec_context & (SECURITY_LOCAL_USERID_CHANGE | SECURITY_NOFORCE_RLS)) ==
		(SECURITY_LOCAL_USERID_CHANGE | SECURITY_NOFORCE_RLS);
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
	if (pr->ran && pr->head != NULL)
		emit(pr->head, "null", true);
	finish_reads(pr, true, 0);
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

/*
 * The registered table a relation's rows belong to: itself, the root of its
 * partition tree, a registered ancestor by inheritance (whose export and
 * erasure include it), or the Citus table of a shard (on a worker, Citus
 * reads a distributed table's rows as scans of its shards); the relation's
 * own OID where there is none.
 */
static Oid
registered_root(Oid relid, bool *elsewhere)
{
	Oid			root = gdpr_root_relid(relid);
	Oid			up = root;
	bool		copy_elsewhere = false;
	Ancestor   *cached;

	if (elsewhere != NULL)
		*elsewhere = false;
	if (is_registered(root) || registered == NULL || !any_read_audit)
		return root;
	cached = hash_search(ancestors, &relid, HASH_FIND, NULL);
	if (cached != NULL)
	{
		if (elsewhere != NULL)
			*elsewhere = cached->elsewhere;
		return cached->root;
	}
	for (int depth = 0; depth < 32 && OidIsValid(up = inheritance_parent(up)); depth++)
		if (is_registered(up))
		{
			root = up;
			break;
		}
	if (!is_registered(root) && gdpr_citus_shard_name(relid))
	{
		bool		recorded_here;
		Oid			table;

		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		table = gdpr_citus_shard_table(relid, &recorded_here);
		SPI_finish();
		if (OidIsValid(table) && is_registered(table))
		{
			root = table;
			copy_elsewhere = !recorded_here;
		}
	}
	/* looked up again: the scans above may have processed an invalidation */
	if (registered != NULL)
	{
		cached = hash_search(ancestors, &relid, HASH_ENTER, NULL);
		cached->root = root;
		cached->elsewhere = copy_elsewhere;
	}
	if (elsewhere != NULL)
		*elsewhere = copy_elsewhere;
	return root;
}

/* The first parent of a relation by inheritance, or InvalidOid */
static Oid
inheritance_parent(Oid relid)
{
	Relation	rel = table_open(InheritsRelationId, AccessShareLock);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	Oid			parent = InvalidOid;

	ScanKeyInit(&key, Anum_pg_inherits_inhrelid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(relid));
	scan = systable_beginscan(rel, InheritsRelidSeqnoIndexId, true, NULL, 1, &key);
	if (HeapTupleIsValid(tup = systable_getnext(scan)))
		parent = ((Form_pg_inherits) GETSTRUCT(tup))->inhparent;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return parent;
}

static bool
is_registered(Oid relid)
{
	return registered_table(relid) != NULL;
}

static RegisteredTable *
registered_table(Oid relid)
{
	if (registered == NULL && !load_registered())
		return NULL;
	return hash_search(registered, &relid, HASH_FIND, NULL);
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
	AttrNumber	read_audit_att;

	nsp = get_namespace_oid("gdpr", true);
	if (!OidIsValid(nsp) || !OidIsValid(get_extension_oid("gdpr", true)))
		return false;
	relid = get_relname_relid("registered_table", nsp);
	if (!OidIsValid(relid))
		return false;
	read_audit_att = get_attnum(relid, "read_audit");

	/*
	 * Built apart and published whole: an invalidation that arrives while it
	 * is built (seen on Citus workers, whose map a concurrent transaction
	 * replaces) frees only what was published, and makes it build again
	 * from what is there then.
	 */
	for (int attempt = 0;; attempt++)
	{
		uint64		generation;
		MemoryContext cxt;
		Relation	rel;
		SysScanDesc scan;
		HeapTuple	tup;
		HASHCTL		ctl;
		HTAB	   *set;
		HTAB	   *anc;
		bool		any = false;

		/* the lock may process invalidations: the generation is read after it */
		rel = table_open(relid, AccessShareLock);
		generation = registered_generation;
		cxt = AllocSetContextCreate(CacheMemoryContext, "gdpr registered tables", ALLOCSET_SMALL_SIZES);
		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(RegisteredTable);
		ctl.hcxt = cxt;
		set = hash_create("gdpr registered tables", 64, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(Ancestor);
		ctl.hcxt = cxt;
		anc = hash_create("gdpr inheritance ancestors", 64, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);

		scan = systable_beginscan(rel, InvalidOid, false, GetCatalogSnapshot(relid), 0, NULL);
		while (HeapTupleIsValid(tup = systable_getnext(scan)))
		{
			bool		isnull;
			Datum		d = heap_getattr(tup, 1, RelationGetDescr(rel), &isnull);
			Oid			table = DatumGetObjectId(d);
			RegisteredTable *t;

			if (isnull)
				continue;
			t = hash_search(set, &table, HASH_ENTER, NULL);
			memset((char *) t + sizeof(Oid), 0, sizeof(RegisteredTable) - sizeof(Oid));
			if (read_audit_att != InvalidAttrNumber)
			{
				d = heap_getattr(tup, read_audit_att, RelationGetDescr(rel), &isnull);
				t->read_audit = !isnull && DatumGetBool(d);
				any |= t->read_audit;
			}
		}
		systable_endscan(scan);
		table_close(rel, AccessShareLock);

		/* a map that keeps changing under it is used as read the tenth time */
		if (generation != registered_generation && attempt < 10)
		{
			MemoryContextDelete(cxt);
			continue;
		}
		if (registered_cxt != NULL)
			MemoryContextDelete(registered_cxt);
		registered_cxt = cxt;
		registered = set;
		ancestors = anc;
		any_read_audit = any;
		return true;
	}
}

/*
 * How the rows of a read-audited table name their subjects, from the map:
 * the key column of a subject table, else the columns that hold the key in
 * the row (a subject column, the foreign key of a path of one step); a
 * table with any path that needs other tables or a condition gives the
 * columns those paths start from (every column, under a condition), for
 * the writer to resolve.  Cached per session; out is filled in the
 * caller's memory.
 */
static void
resolve_capture(Oid relid, RegisteredTable *out)
{
	MemoryContext cxt = CurrentMemoryContext;
	RegisteredTable *t = registered_table(relid);
	GdprTableMap *map;
	Oid			save_userid;
	int			save_sec_context;
	int			nest;
	bool		in_row = true;
	bool		every_column = false;
	List	   *keys = NIL;
	List	   *from = NIL;
	ListCell   *lc;

	memset(out, 0, sizeof(RegisteredTable));
	out->relid = relid;
	out->read_audit = true;
	if (t != NULL && t->resolved)
	{
		copy_capture(out, t);
		return;
	}

	/* the reader may not see gdpr's tables: the map is read as the trail's owner */
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	nest = gdpr_become_audit_owner(&save_userid, &save_sec_context);
	map = gdpr_load_table_map(relid, cxt);
	gdpr_leave_role(save_userid, save_sec_context, nest);
	SPI_finish();
	MemoryContextSwitchTo(cxt);
	if (map == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table %s is read-audited but no longer registered", gdpr_relation_name(relid)),
				 errhint("Run the statement again.")));

	out->kind = map->kind;
	out->name = map->qualified_name;
	if (relid == map->subject_relid)
		keys = list_make1(map->key_column);
	else
		foreach(lc, map->paths)
		{
			GdprPath   *path = lfirst(lc);
			GdprPathSql p = gdpr_path_sql(map, path, "r.");

			if (p.row_column != NULL)
			{
				keys = append_name(keys, p.row_column);
				from = append_name(from, p.row_column);
				continue;
			}
			in_row = false;
			if (path->condition != NULL || map->key_nondeterministic)
				every_column = true;
			else if (path->subject_column != NULL)
				from = append_name(from, path->subject_column);
			else if (path->steps != NIL)
			{
				ListCell   *c;

				foreach(c, ((GdprStep *) linitial(path->steps))->from_cols)
					from = append_name(from, lfirst(c));
			}
		}
	if (relid == map->subject_relid || in_row)
		out->key_columns = keys;
	else if (every_column)
	{
		Relation	rel = relation_open(relid, AccessShareLock);
		TupleDesc	desc = RelationGetDescr(rel);

		for (int i = 0; i < desc->natts; i++)
			if (!TupleDescAttr(desc, i)->attisdropped)
				out->row_columns = lappend(out->row_columns,
										   pstrdup(NameStr(TupleDescAttr(desc, i)->attname)));
		relation_close(rel, AccessShareLock);
	}
	else
		out->row_columns = from;
	out->resolved = true;

	/* looked up again: reading the map may have processed an invalidation */
	t = registered_table(relid);
	if (t != NULL && !t->resolved)
	{
		MemoryContext old = MemoryContextSwitchTo(registered_cxt);

		copy_capture(t, out);
		MemoryContextSwitchTo(old);
	}
}

/* A resolved capture into dst, in the current memory */
static void
copy_capture(RegisteredTable *dst, const RegisteredTable *src)
{
	ListCell   *lc;

	dst->kind = pstrdup(src->kind);
	dst->name = pstrdup(src->name);
	dst->key_columns = NIL;
	foreach(lc, src->key_columns)
		dst->key_columns = lappend(dst->key_columns, pstrdup(lfirst(lc)));
	dst->row_columns = NIL;
	foreach(lc, src->row_columns)
		dst->row_columns = lappend(dst->row_columns, pstrdup(lfirst(lc)));
	dst->resolved = true;
}

/* Wraps the scan nodes of the statement's read-audited tables (a planstate_tree_walker) */
static bool
wrap_scans(PlanState *node, void *context)
{
	PendingRead *pr = context;

	if (node == NULL)
		return false;
	switch (nodeTag(node))
	{
		case T_SeqScanState:
		case T_SampleScanState:
		case T_IndexScanState:
		case T_IndexOnlyScanState:
		case T_BitmapHeapScanState:
		case T_TidScanState:
		case T_TidRangeScanState:
			wrap_scan((ScanState *) node, pr);
			break;
		default:
			break;
	}
	return planstate_tree_walker(node, wrap_scans, context);
}

/*
 * Wraps one scan node if it reads a read-audited table.  The key columns
 * are found in the node's scan slot: the table's row, or for an index-only
 * scan the index's columns.  A scan whose slot lacks one of them is blind:
 * the read becomes bulk.
 */
static void
wrap_scan(ScanState *ss, PendingRead *pr)
{
	Relation	rel = ss->ss_currentRelation;
	TupleDesc	slotdesc;
	TableRead  *r = NULL;
	WrappedScan *w;
	List	   *columns;
	ListCell   *lc;
	Oid			root;

	/* a subplan used twice (a key in CASE and in format) is one node, visited twice */
	if (rel == NULL || ss->ss_ScanTupleSlot == NULL || ss->ps.ExecProcNodeReal == capture_node)
		return;
	root = registered_root(RelationGetRelid(rel), NULL);
	foreach(lc, pr->reads)
		if (((TableRead *) lfirst(lc))->relid == root)
			r = lfirst(lc);
	if (r == NULL)
		return;

	w = palloc0(sizeof(WrappedScan));
	w->node = &ss->ps;
	w->real = ss->ps.ExecProcNodeReal;
	w->read = r;

	/*
	 * A filter that can leak what it sees (a function not marked leakproof:
	 * set_config, RAISE, a write) sees every row it is given, not only those
	 * it lets through: those rows are noted as the filter sees them.
	 */
	if (ss->ps.qual != NULL && contain_leaked_vars((Node *) ss->ps.plan->qual))
	{
		w->qual = ss->ps.qual;
		w->qual_real = ss->ps.qual->evalfunc;
		ss->ps.qual->evalfunc = capture_qual;
	}
	w->by_row = r->capture.row_columns != NIL;
	columns = w->by_row ? r->capture.row_columns : r->capture.key_columns;
	w->ncolumns = list_length(columns);
	w->attnums = palloc0(sizeof(AttrNumber) * Max(w->ncolumns, 1));
	w->names = palloc0(sizeof(char *) * Max(w->ncolumns, 1));
	w->output = palloc0(sizeof(FmgrInfo) * Max(w->ncolumns, 1));
	slotdesc = ss->ss_ScanTupleSlot->tts_tupleDescriptor;
	foreach(lc, columns)
	{
		int			i = foreach_current_index(lc);
		AttrNumber	attnum = get_attnum(RelationGetRelid(rel), lfirst(lc));
		Oid			typoutput;
		bool		isvarlena;

		if (attnum != InvalidAttrNumber && IsA(ss, IndexOnlyScanState))
		{
			ListCell   *t;
			AttrNumber	found = InvalidAttrNumber;

			foreach(t, ((IndexOnlyScan *) ss->ps.plan)->indextlist)
			{
				TargetEntry *tle = lfirst(t);

				if (IsA(tle->expr, Var) && ((Var *) tle->expr)->varattno == attnum)
					found = foreach_current_index(t) + 1;
			}
			attnum = found;
		}
		/* a parallel scan's rows are partly the workers': the leader cannot say whose */
		if (attnum == InvalidAttrNumber || attnum > slotdesc->natts || ss->ps.plan->parallel_aware)
		{
			w->ncolumns = 0;
			break;
		}
		w->attnums[i] = attnum;
		w->names[i] = lfirst(lc);
		getTypeOutputInfo(TupleDescAttr(slotdesc, attnum - 1)->atttypid, &typoutput, &isvarlena);
		fmgr_info(typoutput, &w->output[i]);
	}

	ExecSetExecProcNode(&ss->ps, capture_node);
	pr->wrapped = lappend(pr->wrapped, w);
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		wrapped_scans = lcons(w, wrapped_scans);
		MemoryContextSwitchTo(old);
	}
}

/* The wrapped scan of a node, or of a filter (qual): every call of a wrapper looks it up */
static WrappedScan *
find_wrapped(const PlanState *node, const ExprState *qual)
{
	ListCell   *lc;

	foreach(lc, wrapped_scans)
	{
		WrappedScan *w = lfirst(lc);

		if (node != NULL ? w->node == node : w->qual == qual)
			return w;
	}
	elog(ERROR, "gdpr: a read-audited scan is not known");
	return NULL;				/* keep compiler quiet */
}

/* A wrapped scan node: the node's own function, then the row it returned is noted */
static TupleTableSlot *
capture_node(PlanState *node)
{
	WrappedScan *w = find_wrapped(node, NULL);
	TupleTableSlot *slot = w->real(node);

	if (!TupIsNull(slot) && w->qual == NULL)
		note_row(w, ((ScanState *) node)->ss_ScanTupleSlot);
	return slot;
}

/*
 * A leaky filter of a wrapped scan: the row it is given is noted, then
 * the filter runs.  The executor replaces an expression's function on its
 * first call (to check the plan is still valid, or to compile it): the
 * wrapper puts itself back each time.
 */
static Datum
capture_qual(ExprState *state, ExprContext *econtext, bool *isnull)
{
	WrappedScan *w = find_wrapped(NULL, state);
	Datum		result;

	if (econtext->ecxt_scantuple != NULL)
		note_row(w, econtext->ecxt_scantuple);
	result = w->qual_real(state, econtext, isnull);
	if (state->evalfunc != capture_qual)
	{
		w->qual_real = state->evalfunc;
		state->evalfunc = capture_qual;
	}
	return result;
}

static void
note_row(WrappedScan *w, TupleTableSlot *slot)
{
	TableRead  *r = w->read;
	MemoryContext old;

	r->rows++;
	if (r->bulk)
		return;
	if (w->ncolumns == 0)
	{
		go_bulk(r);
		return;
	}
	/* a filter runs in per-row memory: the keys are kept in the statement's */
	old = MemoryContextSwitchTo(r->cxt);
	if (w->by_row)
	{
		StringInfoData buf;

		initStringInfo(&buf);
		appendStringInfoChar(&buf, '{');
		for (int i = 0; i < w->ncolumns; i++)
		{
			bool		isnull;
			Datum		value = slot_getattr(slot, w->attnums[i], &isnull);

			if (i > 0)
				appendStringInfoString(&buf, ", ");
			escape_json(&buf, w->names[i]);
			appendStringInfoString(&buf, ": ");
			if (isnull)
				appendStringInfoString(&buf, "null");
			else
				escape_json(&buf, OutputFunctionCall(&w->output[i], value));
		}
		appendStringInfoChar(&buf, '}');
		note_key(r, buf.data);
	}
	else
		for (int i = 0; i < w->ncolumns && !r->bulk; i++)
		{
			bool		isnull;
			Datum		value = slot_getattr(slot, w->attnums[i], &isnull);

			if (!isnull)
				note_key(r, OutputFunctionCall(&w->output[i], value));
		}
	MemoryContextSwitchTo(old);
}

/* key: palloc'd for this call; kept if new, freed if known */
static void
note_key(TableRead *r, char *key)
{
	bool		found;

	(void) keyset_insert(r->seen, key, &found);
	if (found)
	{
		pfree(key);
		return;
	}
	if (r->seen->members > gdpr_read_audit_max_subjects)
	{
		go_bulk(r);
		return;
	}
	/* in reading order: a range read's subjects are then consecutive in the trail's row (queue.c) */
	if (r->nkeys == r->maxkeys)
	{
		r->maxkeys = Max(16, r->maxkeys * 2);
		r->keys = r->keys == NULL ? palloc(sizeof(char *) * r->maxkeys)
			: repalloc(r->keys, sizeof(char *) * r->maxkeys);
	}
	r->keys[r->nkeys++] = key;
}

/* Too many subjects to list, or a scan that cannot tell whose rows: the table and a count */
static void
go_bulk(TableRead *r)
{
	r->bulk = true;
	r->seen = NULL;				/* its memory goes with the statement's */
}

/*
 * The statement ended (aborted: its executor state went without
 * ExecutorEnd): one READ event per read-audited table it read rows of.
 */
static void
finish_reads(PendingRead *pr, bool aborted, uint64 query_id)
{
	ListCell   *lc;

	List	   *reads = pr->reads;

	foreach(lc, pr->wrapped)
		wrapped_scans = list_delete_ptr(wrapped_scans, lfirst(lc));
	pr->wrapped = NIL;
	/* cleared first: an error while sending must not send them again from the abort */
	pr->reads = NIL;
	foreach(lc, reads)
	{
		TableRead  *r = lfirst(lc);

		if (r->rows > 0)
		{
			/* the statement's memory may be going: what this makes goes at once */
			MemoryContext tmp = AllocSetContextCreate(TopMemoryContext, "gdpr read event",
													  ALLOCSET_SMALL_SIZES);
			MemoryContext old = MemoryContextSwitchTo(tmp);

			send_read(pr->context, r, query_id, aborted);
			MemoryContextSwitchTo(old);
			MemoryContextDelete(tmp);
		}
	}
}

static List *
append_name(List *names, const char *name)
{
	ListCell   *lc;

	foreach(lc, names)
		if (strcmp(lfirst(lc), name) == 0)
			return names;
	return lappend(names, pstrdup(name));
}

/* The READ event of one table's read */
static void
send_read(const GdprQueuedEvent *context, TableRead *r, uint64 query_id, bool aborted)
{
	GdprQueuedEvent e = *context;

	e.table = r->capture.name;
	e.relid = r->relid;
	e.kind = r->capture.kind;
	e.rows = r->rows;
	e.query_id = (int64) query_id;
	e.bulk = r->bulk;
	e.aborted = aborted;
	e.by_row = r->capture.row_columns != NIL;
	if (!r->bulk)
	{
		e.keys = r->keys;
		e.nkeys = r->nkeys;
	}
	gdpr_send_event(&e);
}

/*
 * No parallel plan for a statement that reads a read-audited table: the
 * rows a parallel worker scans would not pass through the leader's nodes,
 * where whose they are is taken.
 */
static PlannedStmt *
gdpr_planner(Query *parse, const char *query_string, int cursorOptions, ParamListInfo boundParams)
{
	Query	   *copy = NULL;
	PlannedStmt *result;

	if ((cursorOptions & CURSOR_OPT_PARALLEL_OK) && !IsParallelWorker() && IsTransactionState() &&
		(gdpr_audit_superusers || !superuser_arg(GetUserId())) &&
		(registered != NULL || load_registered()) && any_read_audit)
	{
		bool		functions = false;

		if (reads_audited_table((Node *) parse, &functions))
			cursorOptions &= ~CURSOR_OPT_PARALLEL_OK;
		else if (functions)
			copy = copyObject(parse);	/* planning changes the query */
	}
	result = prev_planner ? prev_planner(parse, query_string, cursorOptions, boundParams)
		: standard_planner(parse, query_string, cursorOptions, boundParams);

	/* a SQL function in FROM is inlined while planning: only the plan shows its tables */
	if (copy != NULL && result->parallelModeNeeded && plans_audited_table(result))
		result = prev_planner ? prev_planner(copy, query_string, cursorOptions & ~CURSOR_OPT_PARALLEL_OK, boundParams)
			: standard_planner(copy, query_string, cursorOptions & ~CURSOR_OPT_PARALLEL_OK, boundParams);
	return result;
}

static bool
plans_audited_table(PlannedStmt *stmt)
{
	ListCell   *lc;

	foreach(lc, stmt->relationOids)
	{
		RegisteredTable *t = registered_table(registered_root(lfirst_oid(lc), NULL));

		if (t != NULL && t->read_audit)
			return true;
	}
	return false;
}

/* context: a bool set where the query has a function in FROM, which planning may inline */
static bool
reads_audited_table(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (IsA(node, RangeTblEntry))
	{
		RangeTblEntry *rte = (RangeTblEntry *) node;
		RegisteredTable *t;

		if (rte->rtekind == RTE_FUNCTION)
			*(bool *) context = true;
		if (rte->rtekind != RTE_RELATION)
			return false;
		t = registered_table(registered_root(rte->relid, NULL));
		return t != NULL && t->read_audit;
	}
	if (IsA(node, Query))
		return query_tree_walker((Query *) node, reads_audited_table, context,
								 QTW_EXAMINE_RTES_BEFORE);
	return expression_tree_walker(node, reads_audited_table, context);
}

/*
 * An index-only scan returns the index's columns only: of a read-audited
 * table, an index without the columns that name the subject may not be
 * scanned that way (a plain index scan reads the row), or the read could
 * not say whose rows it returned.
 */
static void
gdpr_get_relation_info(PlannerInfo *root, Oid relid, bool inhparent, RelOptInfo *rel)
{
	RegisteredTable *t;
	RegisteredTable capture;
	Oid			table;
	ListCell   *lc;

	if (prev_get_relation_info)
		prev_get_relation_info(root, relid, inhparent, rel);
	if (rel->indexlist == NIL || IsParallelWorker() || !IsTransactionState() ||
		(!gdpr_audit_superusers && superuser_arg(GetUserId())) ||
		!(registered != NULL || load_registered()) || !any_read_audit)
		return;
	table = registered_root(relid, NULL);
	t = registered_table(table);
	if (t == NULL || !t->read_audit)
		return;
	resolve_capture(table, &capture);
	foreach(lc, rel->indexlist)
	{
		IndexOptInfo *index = lfirst(lc);
		bool		covers = true;
		ListCell   *c;

		foreach(c, capture.row_columns != NIL ? capture.row_columns : capture.key_columns)
		{
			AttrNumber	attnum = get_attnum(relid, lfirst(c));
			bool		found = false;

			for (int i = 0; i < index->ncolumns && !found; i++)
				found = index->indexkeys[i] == attnum;
			covers &= found;
		}
		if (!covers)
			for (int i = 0; i < index->ncolumns; i++)
				index->canreturn[i] = false;
	}
}

/*
 * gdpr._check_read_audit(): read auditing needs the queue, which only a
 * preloaded library has.
 */
Datum
gdpr_check_read_audit(PG_FUNCTION_ARGS)
{
	if (!gdpr_queue_available())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("read auditing needs gdpr in shared_preload_libraries"),
				 errdetail("Reads are recorded through a queue in shared memory, which only a library loaded at server start has."),
				 errhint("Add gdpr to shared_preload_libraries in postgresql.conf and restart the server.")));
	PG_RETURN_VOID();
}
