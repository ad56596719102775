/*-------------------------------------------------------------------------
 *
 * citus.c
 *		Citus clusters: the capture on a worker finds the map of the
 *		distributed table a shard belongs to, and a change of the map on the
 *		coordinator reaches every node (the cluster bus, in citus.sql).
 *
 * Nothing here links to Citus: its catalogs are read by name, and only
 * where they exist, so a server without Citus pays one syscache lookup.
 * Export reads every node's trail (gdpr._subject_history).  An erasure runs
 * on the coordinator, its statements routed by Citus; what the workers must
 * do in its transaction (leave its own writes to restricted subjects alone,
 * check that every row it changes is planned, scrub their trails) reaches
 * them as signals (see "Signals" below).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
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
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

PG_FUNCTION_INFO_V1(gdpr_cluster_forget);
PG_FUNCTION_INFO_V1(gdpr_cluster_receive);

/*
 * How old a signal may be when a worker receives it: a signal travels on
 * the erasure's own connection within seconds; the margin is for clocks.
 */
#define SIGNAL_MAX_AGE_SECS 600

PGDLLEXPORT void gdpr_cluster_catch_up_main(Datum main_arg);

static bool citus_installed(void);
static int64 shard_id(Oid relid);

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
		"   AND pg_catalog.to_regclass(pg_catalog.shard_name(s.logicalrelid, s.shardid, false)) "
		"       OPERATOR(pg_catalog.=) $2::pg_catalog.regclass";
	Oid			argtypes[2] = {INT8OID, OIDOID};
	Datum		args[2];
	int64		shardid = shard_id(relid);
	bool		isnull;
	Oid			table;

	*recorded_here = true;
	if (shardid < 0)
		return InvalidOid;
	args[0] = Int64GetDatum(shardid);
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
 * The shard id a relation's name ends with ("_<shard id>"), or -1: where
 * Citus is not installed, or the name cannot be a shard's.  Catalog lookups
 * only, no SPI: callers on hot paths ask this before gdpr_citus_shard_table.
 */
static int64
shard_id(Oid relid)
{
	char	   *name;
	char	   *suffix;

	if (!citus_installed())
		return -1;
	name = get_rel_name(relid);
	suffix = name != NULL ? strrchr(name, '_') : NULL;
	if (suffix == NULL || suffix[1] == '\0' || strspn(suffix + 1, "0123456789") != strlen(suffix + 1) ||
		strlen(suffix + 1) > 18)
		return -1;
	return strtoi64(suffix + 1, NULL, 10);
}

/* Whether a relation may be a Citus shard (see shard_id) */
bool
gdpr_citus_shard_name(Oid relid)
{
	return shard_id(relid) >= 0;
}

/*
 * While an erasure runs on a cluster, its own change of the restrictions
 * does not go through the bus: Citus lets one role only write the reference
 * tables of a transaction (they share one group of placements), and the
 * erasure's signals write as the erasing role.  Its signal "scrub" makes
 * the same change on each worker.
 */
static bool sync_held = false;

void
gdpr_cluster_hold_sync(bool hold)
{
	sync_held = hold;
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
	if (!citus_installed() || sync_held)
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
 * alone has the whole map and reaches every node: on a worker, refused,
 * once a Citus table is registered.  SPI must be connected.
 */
void
gdpr_citus_check(const char *function)
{
	if (!citus_installed())
		return;
	if (SPI_execute("SELECT gdpr._citus_node() OPERATOR(pg_catalog.=) 'worker' "
					"   AND EXISTS (SELECT FROM gdpr.registered_table r "
					"                WHERE r.relid::pg_catalog.oid IN (SELECT p.logicalrelid::pg_catalog.oid "
					"                                                   FROM pg_catalog.pg_dist_partition p))",
					true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "SPI_execute failed: looking for registered Citus tables");
	if (strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1), "t") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s runs on the coordinator of a Citus cluster, not on a worker", function),
				 errdetail("A worker's map and trail cover the rows it holds, not the subject's."),
				 errhint("Connect to the coordinator and call %s there.", function)));
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

/*
 * Signals
 *
 * A worker knows nothing of an erasure the coordinator runs: Citus sends it
 * the erasure's statements, on connections of the erasing role.  Whatever
 * the worker must do in that transaction has to happen in the session that
 * runs those statements, where their uncommitted events are visible.  So
 * the erasure inserts its signals into gdpr.cluster_signal, a reference
 * table, as the erasing role and with citus.multi_shard_modify_mode =
 * sequential: Citus then uses one connection per node for the whole
 * transaction, and the insert reaches every node on the connection that
 * carries the statements.  The table's trigger acts on the signal there and
 * keeps no row.
 *
 * gdpr_admin may insert into the table (every role that may erase must), so
 * a signal carries an HMAC under a key that only the extension's owner
 * reads, over its operation, time, Citus's distributed transaction, a
 * nonce and its body: only an erasure running on the coordinator makes one,
 * and a worker takes it only in that distributed transaction, once, and
 * within SIGNAL_MAX_AGE_SECS.  Citus's own log of remote commands is off
 * while a signal is sent: the signal's text is not shown to the eraser.
 */

/*
 * The HMAC of a signal, under the cluster's signal key: a secret of its own
 * (gdpr_admin may compute HMACs under the pseudonym key, gdpr._pseudonym),
 * made on the coordinator and sent to the workers with the map.
 */
static char *
signal_signature(const char *op, const char *sent_at, const char *txn, const char *nonce,
				 const char *body)
{
	char	   *seed = psprintf("%s\x1f%s\x1f%s\x1f%s\x1f%s", op, sent_at, txn, nonce, body);
	char	   *key;

	if (gdpr_execute_as_owner(NULL, "SELECT pg_catalog.encode(value, 'hex') FROM gdpr.secret "
							  " WHERE name OPERATOR(pg_catalog.=) 'cluster_signal_key' ORDER BY made_at LIMIT 1",
							  0, NULL, NULL, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute failed: reading the cluster signal key");
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("this node has no cluster signal key"),
				 errhint("The coordinator sends it with the map: change the map there (gdpr._map_changed('gdpr.restriction') resends it).")));
	key = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	return gdpr_hmac_hex(key, seed, strlen(seed));
}

/*
 * Citus's distributed transaction of this backend, as text that does not
 * depend on the session's settings, or NULL while it has none.
 */
static char *
distributed_transaction(void)
{
	char	   *txn;

	if (SPI_execute("SELECT CASE WHEN t.transaction_number OPERATOR(pg_catalog.<>) 0 THEN "
					"       pg_catalog.concat_ws('/', t.initiator_node_identifier, t.transaction_number, "
					"           (pg_catalog.extract('epoch', t.transaction_stamp) "
					"            OPERATOR(pg_catalog.*) 1000000)::pg_catalog.int8) END "
					"  FROM pg_catalog.get_current_transaction_id() t", true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "SPI_execute failed: reading Citus's distributed transaction");
	txn = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	return txn;
}

/* The nonces of the signals this backend took in its transaction */
static List *received_nonces = NIL;

/*
 * On a worker, the subtransaction in which an erasure's signal "rights"
 * arrived, until its "scrub" (or "done", when it had nothing to erase) or
 * the rollback of that subtransaction: the statements the coordinator sends
 * meanwhile are the erasure's own, not reads (reads.c).
 */
static SubTransactionId rights_subid = InvalidSubTransactionId;

static void
forget_nonces(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT || event == XACT_EVENT_PREPARE ||
		event == XACT_EVENT_PARALLEL_COMMIT || event == XACT_EVENT_PARALLEL_ABORT)
	{
		received_nonces = NIL;	/* freed with the transaction's memory */
		rights_subid = InvalidSubTransactionId;
	}
}

static void
forget_rights(SubXactEvent event, SubTransactionId mySubid, SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB && rights_subid != InvalidSubTransactionId && rights_subid >= mySubid)
		rights_subid = InvalidSubTransactionId;
}

/*
 * On a worker: whether the statements arriving now are a running erasure's
 * (see rights_subid).
 */
bool
gdpr_citus_erasure_statements(void)
{
	return rights_subid != InvalidSubTransactionId;
}

/*
 * Whether this node is the coordinator of a cluster on which Citus tables
 * are registered (and so the signal table exists).  SPI must be connected.
 */
bool
gdpr_citus_cluster(void)
{
	if (!citus_installed())
		return false;
	if (SPI_execute("SELECT gdpr._citus_node() OPERATOR(pg_catalog.=) 'coordinator' "
					"   AND pg_catalog.to_regclass('gdpr.cluster_signal') IS NOT NULL",
					true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "SPI_execute failed: looking for the cluster signal table");
	return strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1), "t") == 0;
}

/*
 * On the coordinator, before an erasure's first statement: one connection
 * per node for the rest of the transaction (see "Signals").  Citus refuses
 * when the transaction has already run a statement in parallel.
 */
void
gdpr_citus_sequential(void)
{
	(void) set_config_option("citus.multi_shard_modify_mode", "sequential", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_LOCAL, true, 0, false);
}

/*
 * Sends a signal (body: a JSON object) to every node, on the connections of
 * the current role.  Returns the number of workers it reached: every node
 * holding a copy of the signal table, whose insert Citus runs on all of
 * them or fails.  SPI must be connected.
 */
int
gdpr_citus_signal(const char *op, const char *body)
{
	Jsonb	   *canonical = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(body)));
	char	   *body_text = JsonbToCString(NULL, &canonical->root, VARSIZE(canonical));
	const char *sent_at = timestamptz_to_str(GetCurrentTimestamp());
	char	   *txn;
	uint8		random[16];
	char		nonce[33];
	StringInfoData payload;
	Oid			argtypes[2] = {TEXTOID, JSONBOID};
	Datum		args[2];
	bool		isnull;
	int			nest;
	int			ret;

	nest = NewGUCNestLevel();
	(void) set_config_option("citus.log_remote_commands", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);

	/*
	 * Citus gives the transaction its distributed identity at its first
	 * statement on another node; until then a signal without effect, which
	 * needs no signature, opens it.
	 */
	txn = distributed_transaction();
	if (txn == NULL)
	{
		if (SPI_execute("INSERT INTO gdpr.cluster_signal (op, payload) VALUES ('open', '{}')", false, 0) != SPI_OK_INSERT)
			elog(ERROR, "SPI_execute failed: opening the distributed transaction");
		txn = distributed_transaction();
		if (txn == NULL)
			elog(ERROR, "Citus gave the transaction no distributed identity");
	}
	if (!pg_strong_random(random, sizeof(random)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate a random nonce")));
	for (int i = 0; i < (int) sizeof(random); i++)
		snprintf(nonce + 2 * i, 3, "%02x", random[i]);

	initStringInfo(&payload);
	appendStringInfoString(&payload, "{\"sent_at\": ");
	escape_json(&payload, sent_at);
	appendStringInfoString(&payload, ", \"txn\": ");
	escape_json(&payload, txn);
	appendStringInfo(&payload, ", \"nonce\": \"%s\", \"sig\": ", nonce);
	escape_json(&payload, signal_signature(op, sent_at, txn, nonce, body_text));
	appendStringInfo(&payload, ", \"body\": %s}", body_text);
	args[0] = CStringGetTextDatum(op);
	args[1] = DirectFunctionCall1(jsonb_in, CStringGetDatum(payload.data));
	ret = SPI_execute_with_args("INSERT INTO gdpr.cluster_signal (op, payload) VALUES ($1, $2)",
								2, argtypes, args, NULL, false, 0);
	AtEOXact_GUC(true, nest);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "SPI_execute_with_args failed: sending the cluster signal \"%s\"", op);
	if (SPI_execute("SELECT pg_catalog.count(*)::pg_catalog.int4 FROM pg_catalog.pg_dist_placement p "
					"  JOIN pg_catalog.pg_dist_shard s ON s.shardid OPERATOR(pg_catalog.=) p.shardid "
					" WHERE s.logicalrelid OPERATOR(pg_catalog.=) 'gdpr.cluster_signal'::pg_catalog.regclass "
					"   AND p.groupid OPERATOR(pg_catalog.<>) 0", true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "SPI_execute failed: counting the nodes of the cluster");
	return DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * The relations of this node that are shards (or a reference table's copy)
 * of a Citus table: its writes come to them.  SPI must be connected.
 */
List *
gdpr_citus_local_shards(Oid table)
{
	Oid			argtypes[1] = {OIDOID};
	Datum		args[1] = {ObjectIdGetDatum(table)};
	List	   *shards = NIL;

	if (!citus_installed())
		return NIL;
	if (SPI_execute_with_args("SELECT r FROM (SELECT pg_catalog.to_regclass(pg_catalog.shard_name(s.logicalrelid, s.shardid, false))::pg_catalog.oid r "
							  "                 FROM pg_catalog.pg_dist_shard s "
							  "                WHERE s.logicalrelid OPERATOR(pg_catalog.=) $1::pg_catalog.regclass) x "
							  " WHERE r IS NOT NULL",
							  1, argtypes, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed: listing the shards of this node");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;

		shards = lappend_oid(shards, DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i],
																	SPI_tuptable->tupdesc, 1, &isnull)));
	}
	return shards;
}

/* Whether this node is a Citus worker.  SPI must be connected. */
bool
gdpr_citus_worker(void)
{
	bool		isnull;
	Datum		group;

	if (!citus_installed())
		return false;
	if (SPI_execute("SELECT groupid FROM pg_catalog.pg_dist_local_group", true, 1) != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute failed: reading pg_dist_local_group");
	if (SPI_processed != 1)
		return false;
	group = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return !isnull && DatumGetInt32(group) != 0;
}

/*
 * On a worker: whether the subject has an active consent for the purpose,
 * as the coordinator, which keeps the consents, answers.  Asked as the
 * extension's owner (applications may not read consents), on a connection
 * of its own: a consent counts once committed.  A coordinator that cannot
 * answer refuses the row rather than let it pass unchecked.  SPI must be
 * connected.
 */
bool
gdpr_citus_consent(const char *kind, const char *subject, const char *purpose)
{
	/* run there under that database's search_path: every name and operator is qualified */
	char	   *command = psprintf("SELECT EXISTS (SELECT FROM gdpr.consent c "
								   " WHERE c.purpose OPERATOR(pg_catalog.=) %s::pg_catalog.text "
								   "   AND c.subject_id OPERATOR(pg_catalog.=) %s::pg_catalog.text "
								   "   AND c.kind OPERATOR(pg_catalog.=) %s::pg_catalog.text "
								   "   AND c.withdrawn_at IS NULL)",
								   quote_literal_cstr(purpose), quote_literal_cstr(subject),
								   quote_literal_cstr(kind));
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1] = {CStringGetTextDatum(command)};
	char	   *success;
	char	   *result;

	if (gdpr_execute_as_owner(NULL, "SELECT success::pg_catalog.text, result "
							  "  FROM pg_catalog.run_command_on_coordinator($1)",
							  1, argtypes, args, NULL, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "SPI_execute_with_args failed: asking the coordinator for a consent");
	success = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	result = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	if (success == NULL || strcmp(success, "true") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("cannot check the consent of subject %s to \"%s\": the coordinator did not answer", subject, purpose),
				 result != NULL ? errdetail("%s", result) : 0,
				 errhint("Consents are kept on the coordinator; the row is refused until it can be checked.")));
	return result != NULL && strcmp(result, "t") == 0;
}

/* What relid is to Citus (gdpr._citus_kind), or NULL.  SPI must be connected. */
static char *
citus_kind(Oid relid)
{
	Oid			argtypes[1] = {REGCLASSOID};
	Datum		args[1] = {ObjectIdGetDatum(relid)};

	if (!citus_installed())
		return NULL;
	if (SPI_execute_with_args("SELECT gdpr._citus_kind($1)", 1, argtypes, args, NULL, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "SPI_execute_with_args failed: gdpr._citus_kind");
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}

/* Whether a table is a Citus table distributed by a column (sharded by hash) */
bool
gdpr_citus_distributed(Oid relid)
{
	char	   *kind = citus_kind(relid);

	return kind != NULL && strcmp(kind, "distributed") == 0;
}

/*
 * Whether a table is a Citus reference or local table: one shard, whose
 * copies (one per node, or the coordinator's alone) one statement changes.
 */
bool
gdpr_citus_copied(Oid relid)
{
	char	   *kind = citus_kind(relid);

	return kind != NULL && strcmp(kind, "copied") == 0;
}

/* Compares two signatures in time that does not depend on where they differ */
static bool
same_signature(const char *a, const char *b)
{
	size_t		len = strlen(a);
	unsigned char diff = 0;

	if (len != strlen(b))
		return false;
	for (size_t i = 0; i < len; i++)
		diff |= (unsigned char) a[i] ^ (unsigned char) b[i];
	return diff == 0;
}

/* A text field of a jsonb object, or NULL */
static char *
jsonb_field(Jsonb *object, const char *key)
{
	JsonbValue *v;

	if (!JB_ROOT_IS_OBJECT(object))
		return NULL;
	v = getKeyJsonValueFromContainer(&object->root, key, strlen(key), NULL);
	if (v == NULL || v->type != jbvString)
		return NULL;
	return pnstrdup(v->val.string.val, v->val.string.len);
}

/*
 * gdpr._cluster_receive(): the BEFORE INSERT trigger of gdpr.cluster_signal
 * on every node.  On a worker it checks the signal and hands it to the
 * erasure (erase.c); the coordinator, whose erasure sent it, has nothing to
 * do.  No row is kept.
 */
Datum
gdpr_cluster_receive(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	HeapTuple	tuple;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;
	char	   *op;
	Jsonb	   *payload;
	Jsonb	   *body;
	char	   *sent_at;
	char	   *txn;
	char	   *nonce;
	char	   *sig;
	char	   *body_text;
	char	   *own_txn;
	TimestampTz sent;
	ListCell   *lc;
	static bool callback = false;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) || !TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("gdpr._cluster_receive() must be a BEFORE INSERT row trigger")));
	tuple = trigdata->tg_trigtuple;
	desc = RelationGetDescr(trigdata->tg_relation);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute("SELECT gdpr._citus_node()", true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "SPI_execute failed for gdpr._citus_node()");
	if (strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1), "worker") != 0)
	{
		SPI_finish();
		return PointerGetDatum(NULL);
	}

	if (desc->natts != 2 || TupleDescAttr(desc, 0)->atttypid != TEXTOID ||
		TupleDescAttr(desc, 1)->atttypid != JSONBOID)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("gdpr._cluster_receive() is the trigger of gdpr.cluster_signal (op text, payload jsonb)")));
	op = SPI_getvalue(tuple, desc, 1);
	/* opens the distributed transaction, and does nothing else */
	if (op != NULL && strcmp(op, "open") == 0)
	{
		SPI_finish();
		return PointerGetDatum(NULL);
	}
	d = SPI_getbinval(tuple, desc, 2, &isnull);
	payload = isnull ? NULL : DatumGetJsonbP(d);
	body = NULL;
	sent_at = txn = nonce = sig = NULL;
	if (payload != NULL && JB_ROOT_IS_OBJECT(payload))
	{
		JsonbValue *b = getKeyJsonValueFromContainer(&payload->root, "body", 4, NULL);

		if (b != NULL && b->type == jbvBinary)
			body = JsonbValueToJsonb(b);
		sent_at = jsonb_field(payload, "sent_at");
		txn = jsonb_field(payload, "txn");
		nonce = jsonb_field(payload, "nonce");
		sig = jsonb_field(payload, "sig");
	}
	if (op == NULL || body == NULL || !JB_ROOT_IS_OBJECT(body) || sent_at == NULL || txn == NULL ||
		nonce == NULL || sig == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a cluster signal needs an operation and a signed body"),
				 errhint("Signals are sent by gdpr_erase() on the coordinator; nothing else writes gdpr.cluster_signal.")));
	body_text = JsonbToCString(NULL, &body->root, VARSIZE(body));
	if (!same_signature(sig, signal_signature(op, sent_at, txn, nonce, body_text)))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("cluster signal \"%s\" is not signed by this cluster's gdpr", op),
				 errhint("Signals are sent by gdpr_erase() on the coordinator; nothing else writes gdpr.cluster_signal.")));
	sent = DatumGetTimestampTz(DirectFunctionCall3(timestamptz_in, CStringGetDatum(sent_at),
												   ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1)));
	if (TimestampDifferenceExceeds(sent, GetCurrentTimestamp(), SIGNAL_MAX_AGE_SECS * 1000) ||
		TimestampDifferenceExceeds(GetCurrentTimestamp(), sent, SIGNAL_MAX_AGE_SECS * 1000))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("cluster signal \"%s\" was sent at %s, more than %d seconds from this node's time",
						op, sent_at, SIGNAL_MAX_AGE_SECS),
				 errhint("A signal is sent once, by a running erasure.  If the nodes' clocks differ that much, synchronize them.")));
	own_txn = distributed_transaction();
	if (own_txn == NULL || strcmp(own_txn, txn) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("cluster signal \"%s\" belongs to another distributed transaction", op),
				 errhint("A signal is taken only in the transaction of the erasure that sent it.")));
	foreach(lc, received_nonces)
		if (strcmp(lfirst(lc), nonce) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("cluster signal \"%s\" was received before", op),
					 errhint("A signal is taken once.")));
	if (!callback)
	{
		RegisterXactCallback(forget_nonces, NULL);
		RegisterSubXactCallback(forget_rights, NULL);
		callback = true;
	}
	/* kept to the end of the transaction, whatever savepoint is rolled back */
	{
		MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);

		received_nonces = lappend(received_nonces, pstrdup(nonce));
		MemoryContextSwitchTo(old);
	}
	if (strcmp(op, "rights") == 0)
		rights_subid = GetCurrentSubTransactionId();
	else if (strcmp(op, "done") == 0)
		rights_subid = InvalidSubTransactionId;
	else if (strcmp(op, "erase") == 0)
		gdpr_erase_cluster_begin(body);
	else if (strcmp(op, "scrub") == 0)
	{
		gdpr_erase_cluster_scrub(body);
		rights_subid = InvalidSubTransactionId;
	}
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown cluster signal \"%s\"", op)));
	SPI_finish();
	return PointerGetDatum(NULL);
}

/* Citus's catalogs exist in this database */
static bool
citus_installed(void)
{
	return OidIsValid(get_relname_relid("pg_dist_partition", PG_CATALOG_NAMESPACE));
}
