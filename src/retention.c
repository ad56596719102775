/*-------------------------------------------------------------------------
 *
 * retention.c
 *		Storage limitation (Art. 5(1)(e)): one batch of a table's retention
 *		policy, deleting or anonymizing rows past their time.
 *
 * A batch records one RETENTION event (table, action, rows), not an event
 * per row: a purge must not leave a copy of the expired values in the
 * trail, which keeps its events for years.
 *
 * A batch picks at most batch_size expired rows with FOR UPDATE SKIP LOCKED,
 * so rows the application holds are left for a later batch instead of being
 * waited for, and acts on them with one statement.  Rows matching a legal
 * hold of the table are never touched.  Anonymization is idempotent (every
 * strategy gives the same value when applied again), which is how a batch
 * tells rows still to anonymize from rows done: their classified columns
 * differ from what anonymization would write.  So that a pass costs what
 * is new since the last one, an anonymizing policy keeps a progress mark:
 * once a pass finds no row left to anonymize, every row before the cutoff
 * it used is done, and later passes look only at rows from that cutoff on,
 * less three days (through the time column's index, when it has one): a
 * date or timestamp column is compared in the session's time zone, which
 * another pass may not share, and a month is not always as long.  Once a
 * day a pass looks at every row again, for rows an application changed back
 * or whose condition became true; whatever lifts a reason to leave a row
 * out (a hold, a restriction, the policy, the classification, the paths)
 * forgets the mark at once and moves the policy's progress epoch, so that a
 * pass planned before records nothing (retention.sql).
 *
 * The batch runs with the rights of the table's owner (role.c): the worker
 * is a superuser, and the policy's condition, the holds' conditions and the
 * table's triggers must not run with its rights.  Conditions are checked
 * again here (condition.c), since a superuser may have written them by hand.
 *
 * The callers decide the transactions: gdpr_enforce_retention runs its
 * batches in the caller's, the background worker (worker.c) each in its own.
 *
 * On a Citus cluster each node purges its own shards of a distributed
 * table (gdpr._retention_targets): a batch is given a shard and works with
 * its table's policy, map and holds, naming the shard in its statements.
 * The shard's capture then sees the batch's own statement, as on one
 * server.  Shards keep no progress mark: the policy's is one for the table.
 * A reference table has a copy on every node and a Citus local table one on
 * the coordinator; Citus runs a statement on each copy by itself, so a
 * batch that picked its rows there (LIMIT, SKIP LOCKED) could pick other
 * rows on each copy.  The coordinator picks the keys from its own copy and
 * deletes them by key, with the conditions checked again, on every copy
 * in one distributed transaction.  Only the coordinator's copy records its
 * changes (audit.c): the exemption covers it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "gdpr.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

PG_FUNCTION_INFO_V1(gdpr_retention_batch);

/*
 * The table and the kind of change of the batch statement running now
 * (InvalidOid: none).  The audit trigger exempts exactly those writes from
 * the trail and from restrictions (the batch itself leaves out the rows of
 * subjects restricted by hand, Art. 18); whatever else runs meanwhile, such
 * as an application trigger writing another table, is audited as usual.
 */
static Oid	retaining_relid = InvalidOid;
static List *retaining_copies = NIL;	/* this node's copies of a Citus table */
static int	retaining_event = 0;

/*
 * Where the next batch of a table starts looking, by block.  Each batch
 * leaves the rows it removed behind it as dead tuples until vacuum; a scan
 * from the first block would walk over all of them again, and a pass over
 * a large table would cost the square of its size.  A batch resumes at the
 * last block the previous one took rows from and, when it finds too few
 * there, looks from the first block for what it skipped (rows locked then,
 * rows written since).  One table at a time: the worker and
 * gdpr_enforce_retention work through a table before the next.
 */
static Oid	resume_relid = InvalidOid;
static BlockNumber resume_block = 0;

static void expired_rows(Oid relid, const GdprTableMap *map, const char *time_column,
						 const char *keep, const char *condition, bool on_nodes, StringInfo where);
static char *anonymize_set(const GdprTableMap *map, TupleDesc desc, const char *pk, StringInfo set);
/* What one statement of a batch is, and what the batch needs to know after it */
typedef struct BatchPlan
{
	char	   *sql;			/* the statement */
	char	   *again;			/* the change for rows found again by ctid ($1) or, copies, by key ($1...) */
	char	   *rest;			/* anonymizing: whether a row is left in the range looked at */
	bool		full_sweep;		/* anonymizing: the range is every expired row */
	char	   *cutoff;			/* anonymizing: the expression of the pass's cutoff */
	int64		epoch;			/* the policy's progress epoch the plan was made in */
	bool		anonymize;
	Oid			owner;
	Oid			table;			/* the registered table (relid, or the table of the shard relid) */
	bool		shard;			/* relid is a Citus shard of table */
	List	   *copies;			/* relid is a Citus reference or local table: its copies here */
	int			nkeys;			/* copies: the primary key's columns, */
	Oid		   *keytypes;		/* and the types of their arrays */
} BatchPlan;

static BatchPlan retention_sql(Oid relid, int32 batch_size, bool dry_run, BlockNumber start);
static void copies_sql(BatchPlan *plan, Relation rel, const char *from, const char *where,
					   int32 batch_size);
static int64 run_batch(Oid relid, int32 batch_size, bool dry_run, BlockNumber start,
					   BatchPlan *plan, BlockNumber *last);
static void record_progress(Oid relid, const BatchPlan *plan);
static int64 run_copies_batch(Oid relid, const BatchPlan *plan);
static int	exec_statement(Oid relid, const BatchPlan *plan, const char *sql, int nargs,
						   Oid *argtypes, Datum *args, bool read_only);
static int64 run_statement(Oid relid, const BatchPlan *plan, const char *sql, int nargs,
						   Datum *args, bool read_only);

/*
 * gdpr._retention_batch(tbl regclass, batch_size int, dry_run boolean):
 * the number of rows deleted or anonymized (or, dry, that would be).
 */
Datum
gdpr_retention_batch(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	int32		batch_size = PG_GETARG_INT32(1);
	bool		dry_run = PG_GETARG_BOOL(2);
	BlockNumber start = (!dry_run && relid == resume_relid) ? resume_block : 0;
	BlockNumber last = InvalidBlockNumber;
	int64		n;
	BatchPlan	plan;

	if (batch_size < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("batch size must be at least 1")));
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/* forgotten until this batch succeeds: an error must not leave a stale start */
	resume_relid = InvalidOid;
	n = run_batch(relid, batch_size, dry_run, start, &plan, &last);
	if (start > 0 && n < batch_size)
		n += run_batch(relid, batch_size - n, dry_run, 0, &plan, &last);

	/*
	 * A pass that leaves nothing to anonymize in its range moves the mark to
	 * its cutoff.  Not read-only: the count must see the batch's own changes.
	 */
	if (!dry_run && plan.anonymize && !plan.shard && n < batch_size &&
		run_statement(relid, &plan, plan.rest, 0, NULL, false) == 0)
		record_progress(relid, &plan);
	if (!dry_run && n == batch_size && last != InvalidBlockNumber)
	{
		resume_relid = relid;
		resume_block = last;
	}
	if (!dry_run && n > 0)
		gdpr_audit_event("RETENTION", true, NULL, NULL, gdpr_relation_name(plan.table),
						 DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
															CStringGetDatum(psprintf("{\"rows\": " INT64_FORMAT ", \"action\": \"%s\"}",
																					 n, plan.anonymize ? "anonymize" : "delete")))));
	SPI_finish();
	PG_RETURN_INT64(n);
}

/*
 * Runs one batch from block start; returns the rows it deleted or
 * anonymized and sets *last to the last block it took rows from, when known.
 */
static int64
run_batch(Oid relid, int32 batch_size, bool dry_run, BlockNumber start, BatchPlan *plan,
		  BlockNumber *last)
{
	int64		n;
	bool		isnull;
	Datum		locked = (Datum) 0;

	*plan = retention_sql(relid, batch_size, dry_run, start);
	if (plan->copies != NIL && !dry_run)
		return run_copies_batch(relid, plan);
	n = run_statement(relid, plan, plan->sql, 0, NULL, dry_run);
	if (SPI_tuptable->tupdesc->natts > 1)
	{
		Datum		tid = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);

		if (!isnull)
			*last = ItemPointerGetBlockNumber((ItemPointer) DatumGetPointer(tid));
		locked = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull);
		if (isnull)
			locked = (Datum) 0;
	}

	/*
	 * A row updated by a transaction that committed after this statement's
	 * snapshot was locked in its new version (rechecked against the policy
	 * and the holds), which that snapshot cannot see to change.  A new
	 * statement sees it, and the lock keeps it as it was checked.  Rows
	 * already changed are dead to the new statement and are not touched
	 * twice.
	 */
	if (locked != (Datum) 0 && plan->again != NULL)
		n += run_statement(relid, plan, plan->again, 1, &locked, false);
	return n;
}

/*
 * Every row of an anonymizing policy's table before the cutoff of this
 * transaction's batch is done; a full sweep says when it was made.  Nothing
 * is recorded when the policy's progress was forgotten since the plan.
 */
static void
record_progress(Oid relid, const BatchPlan *plan)
{
	Oid			argtypes[2] = {OIDOID, INT8OID};
	Datum		args[2] = {ObjectIdGetDatum(relid), Int64GetDatum(plan->epoch)};

	if (gdpr_execute_as_owner(NULL, psprintf("UPDATE gdpr.retention_policy "
											 "   SET anonymized_through = %s%s "
											 " WHERE relid::pg_catalog.oid OPERATOR(pg_catalog.=) $1 "
											 "   AND progress_epoch OPERATOR(pg_catalog.=) $2",
											 plan->cutoff,
											 plan->full_sweep ? ", swept_at = pg_catalog.now()" : ""),
							  2, argtypes, args, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "SPI_execute_with_args failed");
}

/*
 * Whether a write to relid (a registered table or one of its partitions) of
 * event_class is the retention batch's own.
 */
bool
gdpr_retention_exempt(Oid relid, int event_class)
{
	return OidIsValid(retaining_relid) && event_class == retaining_event &&
		(gdpr_root_relid(relid) == retaining_relid || list_member_oid(retaining_copies, relid));
}

/*
 * A batch of a Citus reference or local table: the keys of the expired rows
 * of the coordinator's copy, then one DELETE of those keys, conditions
 * checked again, that Citus runs on every copy.
 */
static int64
run_copies_batch(Oid relid, const BatchPlan *plan)
{
	Datum	   *keys = palloc(sizeof(Datum) * plan->nkeys);
	bool		isnull;

	if (exec_statement(relid, plan, plan->sql, 0, NULL, NULL, false) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "SPI_execute failed: picking the keys of a retention batch");
	for (int i = 0; i < plan->nkeys; i++)
	{
		keys[i] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, i + 1, &isnull);
		if (isnull)
			return 0;			/* no expired row */
		keys[i] = PointerGetDatum(PG_DETOAST_DATUM_COPY(keys[i]));
	}
	if (exec_statement(relid, plan, plan->again, plan->nkeys, plan->keytypes, keys, false) != SPI_OK_DELETE)
		elog(ERROR, "SPI_execute failed: deleting a retention batch");
	return (int64) SPI_processed;
}

/* Runs a statement of the batch as the table's owner; returns its first column */
static int64
run_statement(Oid relid, const BatchPlan *plan, const char *sql, int nargs, Datum *args,
			  bool read_only)
{
	Oid			argtypes[1] = {TIDARRAYOID};
	int			ret;
	bool		isnull;
	Datum		n;

	Assert(nargs <= 1);
	ret = exec_statement(relid, plan, sql, nargs, argtypes, args, read_only);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "SPI_execute failed: %d", ret);
	n = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? 0 : DatumGetInt64(n);
}

/*
 * Runs a statement of the batch as the table's owner, its writes exempt
 * from the trail and the restrictions (see retaining_relid); returns what
 * SPI returned.
 */
static int
exec_statement(Oid relid, const BatchPlan *plan, const char *sql, int nargs, Oid *argtypes,
			   Datum *args, bool read_only)
{
	const char *outer;
	int			ret;
	volatile int nest = -1;

	retaining_relid = relid;
	retaining_copies = plan->copies;
	retaining_event = plan->anonymize ? GDPR_EV_UPDATE : GDPR_EV_DELETE;
	/* the batch's own statement is no read; the table's triggers it fires are (reads.c) */
	outer = gdpr_internal_sql;
	gdpr_internal_sql = sql;
	/* Citus refuses writes to a shard by name unless told they are meant */
	if (plan->shard)
	{
		nest = NewGUCNestLevel();
		(void) set_config_option("citus.enable_manual_changes_to_shards", "on", PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
	}
	PG_TRY();
	{
		ret = gdpr_execute_as_role(plan->owner, NULL, sql, nargs, argtypes, args, NULL, read_only, 0);
	}
	PG_FINALLY();
	{
		retaining_relid = InvalidOid;
		retaining_copies = NIL;
		gdpr_internal_sql = outer;
	}
	PG_END_TRY();
	if (nest >= 0)
		AtEOXact_GUC(true, nest);
	return ret;
}

/*
 * The statement of one batch, looking from block start (or, dry, the count
 * of rows a full pass would touch).  Where rows are found again by ctid,
 * *again is the change for the ctids in $1 (see run_batch).
 */
static BatchPlan
retention_sql(Oid relid, int32 batch_size, bool dry_run, BlockNumber start)
{
	BatchPlan	plan = {0};
	Oid			argtypes[1] = {OIDOID};
	Datum		args[1] = {ObjectIdGetDatum(relid)};
	GdprTableMap *map;
	Relation	rel;
	TupleDesc	desc;
	StringInfoData where;
	StringInfoData set;
	char	   *time_column;
	char	   *keep;
	char	   *action;
	char	   *condition;
	char	   *mark;
	char	   *pk;
	char	   *pk_outer;
	bool		by_ctid;
	bool		copied;
	char	   *batch;
	char	   *change;
	const char *from;

	/* a shard of a distributed table works with its table's policy */
	plan.table = relid;
	if (SPI_execute_with_args("SELECT FROM gdpr.retention_policy WHERE relid::pg_catalog.oid = $1",
							  1, argtypes, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed");
	if (SPI_processed == 0)
	{
		bool		recorded_here;
		Oid			table = gdpr_citus_shard_table(relid, &recorded_here);

		if (OidIsValid(table))
		{
			plan.table = table;
			plan.shard = true;
			args[0] = ObjectIdGetDatum(table);
		}
	}

	if (SPI_execute_with_args("SELECT time_column::pg_catalog.text, keep::pg_catalog.text, action, condition, "
							  "       CASE WHEN swept_at OPERATOR(pg_catalog.>) (pg_catalog.now() "
							  "                 OPERATOR(pg_catalog.-) '1 day'::pg_catalog.interval) "
							  "            THEN anonymized_through::pg_catalog.text END, progress_epoch "
							  "  FROM gdpr.retention_policy WHERE relid::pg_catalog.oid = $1",
							  1, argtypes, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("table with OID %u has no retention policy", relid),
				 errhint("Set one with gdpr.set_retention().")));
	time_column = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	keep = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	action = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3);
	plan.anonymize = strcmp(action, "anonymize") == 0;
	condition = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4);
	mark = plan.shard ? NULL : SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 5);
	plan.epoch = pg_strtoint64(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 6));
	/* the cutoff expired_rows compares with, as this pass computes it */
	plan.cutoff = keep != NULL
		? psprintf("pg_catalog.now() OPERATOR(pg_catalog.-) %s::pg_catalog.interval", quote_literal_cstr(keep))
		: "pg_catalog.now()";

	map = gdpr_load_table_map(plan.table, CurrentMemoryContext);
	if (map == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("table with OID %u is not registered", plan.table)));
	from = plan.shard ? gdpr_relation_name(relid) : map->qualified_name;
	copied = gdpr_citus_copied(plan.table);
	if (plan.shard && copied)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s is a copy of %s, which retention purges through the coordinator",
						gdpr_relation_name(relid), map->qualified_name),
				 errhint("Run the table's retention on the coordinator: every copy loses the same rows.")));
	if (copied)
	{
		if (gdpr_citus_worker())
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("retention of %s runs on the coordinator, not on a worker", map->qualified_name),
					 errhint("A reference or Citus local table is purged through the coordinator, on every copy at once.")));
		plan.copies = gdpr_citus_local_shards(relid);
		if (plan.copies == NIL)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("the coordinator holds no copy of %s", map->qualified_name),
					 errdetail("Only the node that records a reference table's changes may purge it without leaving them in the trail."),
					 errhint("Add the coordinator to the cluster's metadata: SELECT citus_set_coordinator_host(...).")));
		if (plan.anonymize)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("retention cannot anonymize Citus reference or local tables: %s is one", map->qualified_name),
					 errhint("Purge its rows (action => 'delete').")));
	}

	initStringInfo(&where);
	expired_rows(plan.table, map, time_column, keep, condition, plan.shard || plan.copies != NIL, &where);

	rel = table_open(relid, AccessShareLock);
	plan.owner = rel->rd_rel->relowner;
	desc = RelationGetDescr(rel);
	pk = gdpr_pk_list(rel, "t.");
	pk_outer = gdpr_pk_list(rel, "");

	/*
	 * The rows of a batch are found again by ctid, a direct fetch, where
	 * matching their keys lets the planner join against a scan of the
	 * whole table on every batch.  A ctid names a row only within one
	 * table: partitioned and inheritance trees are matched by table and key
	 * (keys repeat across an inheritance tree).  The ctid statements name
	 * the table ONLY: a child attached since this was decided is left for
	 * the next batch, which matches by key.
	 */
	by_ctid = rel->rd_rel->relkind == RELKIND_RELATION && !rel->rd_rel->relhassubclass;

	/* anonymization: the SET list, and a condition true while a row is not yet anonymized */
	/* anonymizing: from the progress mark on, and rows not yet anonymized */
	plan.full_sweep = mark == NULL;
	if (plan.anonymize && !dry_run && mark != NULL)
		appendStringInfo(&where, " AND t.%s OPERATOR(pg_catalog.>=) (%s::pg_catalog.timestamptz "
						 "OPERATOR(pg_catalog.-) '3 days'::pg_catalog.interval)",
						 quote_identifier(time_column), quote_literal_cstr(mark));
	initStringInfo(&set);
	if (plan.anonymize)
		appendStringInfo(&where, " AND (%s)", anonymize_set(map, desc, pk, &set));
	if (plan.copies != NIL)
		copies_sql(&plan, rel, from, where.data, batch_size);
	table_close(rel, NoLock);

	if (dry_run)
	{
		plan.sql = psprintf("SELECT pg_catalog.count(*) FROM %s t WHERE %s", from, where.data);
		return plan;
	}
	if (plan.copies != NIL)
		return plan;
	if (plan.anonymize)
		plan.rest = psprintf("SELECT pg_catalog.count(*) FROM (SELECT FROM %s t WHERE %s LIMIT 1) r",
							 from, where.data);
	if (!by_ctid)
	{
		batch = psprintf("SELECT t.tableoid, %s FROM %s t WHERE %s LIMIT %d FOR UPDATE SKIP LOCKED",
						 pk, from, where.data, batch_size);
		if (set.len > 0)
			plan.sql = psprintf("WITH u AS (UPDATE %s t SET %s WHERE (t.tableoid, %s) IN (%s) RETURNING 1) "
								"SELECT pg_catalog.count(*) FROM u",
								from, set.data, pk, batch);
		else
			plan.sql = psprintf("WITH d AS (DELETE FROM %s WHERE (tableoid, %s) IN (%s) RETURNING 1) "
								"SELECT pg_catalog.count(*) FROM d",
								from, pk_outer, batch);
		return plan;
	}

	/*
	 * The batch's locked rows, by ctid: the last of them says where the next
	 * batch starts, and all of them are returned when some were not changed.
	 */
	batch = psprintf("SELECT t.ctid FROM ONLY %s t WHERE %s%s LIMIT %d FOR UPDATE SKIP LOCKED",
					 from, where.data,
					 start > 0 ? psprintf(" AND t.ctid OPERATOR(pg_catalog.>=) '(%u,0)'::pg_catalog.tid", start) : "",
					 batch_size);
	if (set.len > 0)
		change = psprintf("UPDATE ONLY %s t SET %s", from, set.data);
	else
		change = psprintf("DELETE FROM ONLY %s", from);
	plan.again = psprintf("WITH c AS (%s WHERE ctid OPERATOR(pg_catalog.=) ANY ($1) RETURNING 1) "
						  "SELECT pg_catalog.count(*) FROM c", change);
	plan.sql = psprintf("WITH b AS (%s), "
						"c AS (%s WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT b.ctid FROM b)) RETURNING 1) "
						"SELECT pg_catalog.count(*), (SELECT pg_catalog.max(b.ctid) FROM b), "
						"       CASE WHEN pg_catalog.count(*) < (SELECT pg_catalog.count(*) FROM b) "
						"            THEN ARRAY(SELECT b.ctid FROM b) END "
						"  FROM c",
						batch, change);
	return plan;
}

/*
 * The two statements of a batch of a Citus reference or local table (see
 * run_copies_batch): plan->sql gives an array of each primary key column,
 * and plan->again deletes the rows of those keys that are still expired,
 * the arrays its parameters.
 */
static void
copies_sql(BatchPlan *plan, Relation rel, const char *from, const char *where, int32 batch_size)
{
	List	   *names = gdpr_pk_names(rel);
	StringInfoData aggs;
	StringInfoData cols;
	StringInfoData unnest;
	ListCell   *lc;

	initStringInfo(&aggs);
	initStringInfo(&cols);
	initStringInfo(&unnest);
	plan->keytypes = palloc(sizeof(Oid) * Max(list_length(names), 1));
	plan->nkeys = 0;
	foreach(lc, names)
	{
		const char *name = quote_identifier(lfirst(lc));
		const char *sep = plan->nkeys > 0 ? ", " : "";
		Oid			arraytype = get_array_type(get_atttype(RelationGetRelid(rel),
														   get_attnum(RelationGetRelid(rel), lfirst(lc))));

		if (!OidIsValid(arraytype))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("retention cannot purge %s by key: its key column \"%s\" has a type without arrays",
							gdpr_relation_name(RelationGetRelid(rel)), (char *) lfirst(lc))));
		appendStringInfo(&aggs, "%spg_catalog.array_agg(k.%s)", sep, name);
		appendStringInfo(&cols, "%st.%s", sep, name);
		appendStringInfo(&unnest, "%spg_catalog.unnest($%d)", sep, plan->nkeys + 1);
		plan->keytypes[plan->nkeys++] = arraytype;
	}
	/* registered tables have a primary key (gdpr._check_table) */
	if (plan->nkeys == 0)
		elog(ERROR, "table %s has no primary key", gdpr_relation_name(RelationGetRelid(rel)));
	plan->sql = psprintf("SELECT %s FROM (SELECT %s FROM %s t WHERE %s LIMIT %d) k",
						 aggs.data, cols.data, from, where, batch_size);
	plan->again = psprintf("DELETE FROM %s t WHERE (%s) IN (SELECT * FROM ROWS FROM (%s)) AND %s",
						   from, cols.data, unnest.data, where);
}

/*
 * The rows of a policy's table whose time has come: expired, not excluded
 * by the policy's condition, held by no legal hold, and of no subject who
 * asked for them to be kept.
 */
static void
expired_rows(Oid relid, const GdprTableMap *map, const char *time_column, const char *keep,
			 const char *condition, bool on_nodes, StringInfo where)
{
	Oid			argtypes[1] = {OIDOID};
	Datum		args[1] = {ObjectIdGetDatum(relid)};

	if (keep != NULL)
		appendStringInfo(where, "t.%s < pg_catalog.now() - %s::pg_catalog.interval",
						 quote_identifier(time_column), quote_literal_cstr(keep));
	else
		appendStringInfo(where, "t.%s < pg_catalog.now()", quote_identifier(time_column));
	if (condition != NULL)
	{
		gdpr_check_expression(condition, "retention condition");
		appendStringInfo(where, " AND (\n%s\n)", condition);
	}
	if (SPI_execute_with_args("SELECT condition FROM gdpr.legal_hold WHERE relid::pg_catalog.oid = $1",
							  1, argtypes, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		char	   *hold = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);

		gdpr_check_expression(hold, "legal hold condition");
		appendStringInfo(where, " AND (\n%s\n) IS NOT TRUE", hold);
	}

	/*
	 * Art. 18(1)(c): a subject may have their data kept past its time for
	 * legal claims.  Erased subjects' kept rows and subjects awaiting
	 * erasure are no reason to keep anything.  A Citus worker's copy of the
	 * restrictions names subjects by pseudonym (citus.sql): a statement that
	 * runs on the nodes asks gdpr._restricted_by_hand, which knows both.
	 */
	if (map->paths != NIL && ((GdprPath *) linitial(map->paths))->owner && on_nodes)
		appendStringInfo(where, " AND NOT gdpr._restricted_by_hand(%s, %s)",
						 quote_literal_cstr(map->kind), gdpr_subject_sql(map, linitial(map->paths), "t"));
	else if (map->paths != NIL && ((GdprPath *) linitial(map->paths))->owner)
		appendStringInfo(where,
						 " AND NOT EXISTS (SELECT FROM gdpr.restriction r WHERE r.kind = %s "
						 "AND r.subject_id = %s AND r.source = 'manual')",
						 quote_literal_cstr(map->kind), gdpr_subject_sql(map, linitial(map->paths), "t"));
}

/*
 * Appends to set the SET list that anonymizes a row by its columns'
 * strategies; returns the condition that holds while a row is not yet
 * anonymized.
 */
static char *
anonymize_set(const GdprTableMap *map, TupleDesc desc, const char *pk, StringInfo set)
{
	StringInfoData pending;

	initStringInfo(&pending);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		ListCell   *lc;
		const char *strategy = NULL;
		const char *error;
		char	   *expr;

		if (att->attisdropped)
			continue;
		foreach(lc, map->columns)
			if (strcmp(((GdprColumn *) lfirst(lc))->name, NameStr(att->attname)) == 0)
				strategy = ((GdprColumn *) lfirst(lc))->erase;
		if (strategy == NULL)
			continue;
		expr = gdpr_anonymize_expr(att, strategy,
								   psprintf("%s || (ROW(%s))::pg_catalog.text",
											quote_literal_cstr(psprintf("retention\x1f%s\x1f%s\x1f",
																		map->qualified_name,
																		NameStr(att->attname))),
											pk),
								   &error);
		if (error != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_GDPR_ERASE_IMPOSSIBLE),
					 errmsg("cannot anonymize table %s: %s", map->qualified_name, error)));
		if (expr == NULL)
			continue;
		appendStringInfo(set, "%s%s = %s", set->len ? ", " : "",
						 quote_identifier(NameStr(att->attname)), expr);
		appendStringInfo(&pending, "%st.%s IS DISTINCT FROM %s", pending.len ? " OR " : "",
						 quote_identifier(NameStr(att->attname)), expr);
	}
	if (set->len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_GDPR_ERASE_IMPOSSIBLE),
				 errmsg("table %s has no classified column to anonymize", map->qualified_name),
				 errhint("Classify its personal columns with gdpr.classify_column(), or retain with action => 'delete'.")));
	return pending.data;
}
