/*-------------------------------------------------------------------------
 *
 * citus.c
 *		Citus clusters: the capture on a worker finds the map of the
 *		distributed table a shard belongs to, and a change of the map on the
 *		coordinator reaches every node (the cluster bus, in citus.sql).
 *
 * Nothing here links to Citus: its catalogs are read by name, and only
 * where they exist, so a server without Citus pays one syscache lookup.
 * Export reads every node's trail (gdpr._subject_history); erasure does not
 * scrub the workers' trails yet, so where a registered table is a Citus
 * table it refuses rather than report a success it could not check.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "gdpr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"

PG_FUNCTION_INFO_V1(gdpr_cluster_forget);

PGDLLEXPORT void gdpr_cluster_catch_up_main(Datum main_arg);

static bool citus_installed(void);

/*
 * The Citus table a shard on this node belongs to, or InvalidOid when relid
 * is not a shard.  Citus names a shard after its table with "_<shard id>"
 * appended; the name alone proves nothing (anyone may create a table called
 * so), so the shard must be in Citus's catalog and its name, as Citus builds
 * it, must be this very relation.
 *
 * *recorded_here says whether this node records the shard's changes.  A
 * reference table's shard has a copy on every node, each changed by the same
 * statement: one node records them, the first group that holds a copy (the
 * coordinator, once it is in the metadata), so that a change is one event.
 * SPI must be connected.
 */
Oid
gdpr_citus_shard_table(Oid relid, bool *recorded_here)
{
	static const char *sql =
		"SELECT s.logicalrelid::pg_catalog.oid, "
		"       p.partmethod OPERATOR(pg_catalog.<>) 'n' "
		"       OR (SELECT pg_catalog.min(pl.groupid) FROM pg_catalog.pg_dist_placement pl "
		"            WHERE pl.shardid OPERATOR(pg_catalog.=) s.shardid) "
		"          OPERATOR(pg_catalog.=) (SELECT l.groupid FROM pg_catalog.pg_dist_local_group l) "
		"  FROM pg_catalog.pg_dist_shard s JOIN pg_catalog.pg_dist_partition p "
		"       ON p.logicalrelid OPERATOR(pg_catalog.=) s.logicalrelid "
		" WHERE s.shardid OPERATOR(pg_catalog.=) $1 "
		"   AND pg_catalog.to_regclass(pg_catalog.shard_name(s.logicalrelid, s.shardid)) "
		"       OPERATOR(pg_catalog.=) $2::pg_catalog.regclass";
	Oid			argtypes[2] = {INT8OID, OIDOID};
	Datum		args[2];
	char	   *name;
	char	   *suffix;
	bool		isnull;
	Oid			table;

	*recorded_here = true;
	if (!citus_installed())
		return InvalidOid;
	name = get_rel_name(relid);
	suffix = name != NULL ? strrchr(name, '_') : NULL;
	if (suffix == NULL || suffix[1] == '\0' || strspn(suffix + 1, "0123456789") != strlen(suffix + 1) ||
		strlen(suffix + 1) > 18)
		return InvalidOid;
	args[0] = Int64GetDatum(strtoi64(suffix + 1, NULL, 10));
	args[1] = ObjectIdGetDatum(relid);
	if (SPI_execute_with_args(sql, 2, argtypes, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed for \"%s\"", sql);
	if (SPI_processed == 0)
		return InvalidOid;
	table = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (isnull)
		return InvalidOid;
	{
		Datum		here = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);

		/* unknown (a shard without placements): recorded here rather than nowhere */
		*recorded_here = isnull || DatumGetBool(here);
	}
	return table;
}

/*
 * After a change of the map: on a Citus coordinator, every node gets the new
 * map in this transaction (gdpr._cluster_sync).  Run as the extension's
 * owner, who alone writes the bus; what it runs reads only the map and
 * Citus's catalogs, so no object of the caller's runs with those rights.
 * SPI must be connected.
 */
void
gdpr_cluster_map_changed(void)
{
	if (!citus_installed())
		return;
	if (gdpr_execute_as_owner(NULL, "SELECT gdpr._cluster_sync()", 0, NULL, NULL, NULL,
							  false, 0) != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute failed for gdpr._cluster_sync()");
}

/*
 * On a worker whose map lacks a shard's table (a node added after the map
 * was sent: Citus copies the bus's rows to it without firing the trigger):
 * applies the map the cluster bus holds.  Not in the caller's transaction:
 * a distributed statement writes to several shards of this node at once,
 * from several sessions of one distributed transaction, which would wait on
 * each other's uncommitted map until Citus cancels them as a deadlock.  A
 * background worker applies it and commits; the caller then reads the map
 * under a new snapshot.  Returns whether a map was applied (false when the
 * library is not preloaded or no worker slot is free: the capture then
 * refuses the change, as for any table outside the map).
 */
bool
gdpr_cluster_catch_up(void)
{
	BackgroundWorkerHandle *handle;
	BgwHandleStatus status;
	pid_t		pid;

	if (!process_shared_preload_libraries_done)
		return false;
	handle = gdpr_start_database_worker("gdpr_cluster_catch_up_main", "gdpr map catch-up", MyDatabaseId);
	if (handle == NULL)
		return false;
	status = WaitForBackgroundWorkerStartup(handle, &pid);
	if (status == BGWH_STARTED)
		status = WaitForBackgroundWorkerShutdown(handle);
	pfree(handle);
	return status == BGWH_STOPPED;
}

/*
 * The catch-up's background worker: gdpr._cluster_catch_up() in a
 * transaction of its own, as the bootstrap superuser, with the search_path
 * pinned (the database's owner can set the database's).
 */
void
gdpr_cluster_catch_up_main(Datum main_arg)
{
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(DatumGetObjectId(main_arg), InvalidOid, 0);
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "applying the cluster's gdpr map");
	if (SPI_execute("SELECT gdpr._cluster_catch_up()", false, 1) != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute failed for gdpr._cluster_catch_up()");
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * The rights functions on a cluster.  They run on the coordinator, which
 * alone has the whole map and reaches every node: on a worker, refused.
 * Erasure does not cover the workers' trails yet (cluster_ready false):
 * refused on the coordinator too, rather than report an erasure whose
 * values are still in a worker's trail.  Both only once a Citus table is
 * registered.  SPI must be connected.
 */
void
gdpr_citus_check(const char *function, bool cluster_ready)
{
	char	   *table;
	bool		worker;

	if (!citus_installed())
		return;
	if (SPI_execute("SELECT pg_catalog.min(gdpr._qualified(r.relid)), gdpr._citus_node() OPERATOR(pg_catalog.=) 'worker' "
					"  FROM gdpr.registered_table r "
					" WHERE r.relid::pg_catalog.oid IN (SELECT p.logicalrelid::pg_catalog.oid "
					"                                    FROM pg_catalog.pg_dist_partition p)",
					true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "SPI_execute failed: listing the registered Citus tables");
	table = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	if (table == NULL)
		return;
	worker = strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2), "t") == 0;
	if (worker)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s runs on the coordinator of a Citus cluster, not on a worker", function),
				 errdetail("A worker's map and trail cover the rows it holds, not the subject's."),
				 errhint("Connect to the coordinator and call %s there.", function)));
	if (!cluster_ready)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s does not cover Citus tables yet", function),
				 errdetail("Table %s is a Citus table: the subject's events are in the audit trail of each node that holds their rows, which erasure does not scrub yet.",
						   table),
				 errhint("On a Citus cluster, gdpr captures changes on every node and exports from all of them; erasure is not available there yet (see README, \"Scaling out\").")));
}

/*
 * gdpr._cluster_forget(): every backend of this node drops its cached plans
 * and maps.  A worker's capture plans are keyed by its shards, which no map
 * row names, so the invalidation cannot be narrower.  The bus calls it after
 * a new map is applied; maps change rarely.
 */
Datum
gdpr_cluster_forget(PG_FUNCTION_ARGS)
{
	CacheInvalidateRelcacheAll();
	PG_RETURN_VOID();
}

/* Citus's catalogs exist in this database */
static bool
citus_installed(void)
{
	return OidIsValid(get_relname_relid("pg_dist_partition", PG_CATALOG_NAMESPACE));
}
