/*-------------------------------------------------------------------------
 *
 * gate.c
 *		The gate: while the worker has not yet compared a database with its
 *		erasure ledger after the server started (ledger.c), or while its
 *		ledger is unreachable under gdpr.ledger_required, or its replay
 *		failed, applications are kept out of it, so that no one reads from
 *		a restored copy what was erased after the copy was taken.
 *
 * The gate is a small array in shared memory (so it needs preloading): one
 * slot per database the worker has checked since the server started; a
 * database without a slot is shut.  Authentication consults it for every
 * connection, reading shared catalogs only, since no database is chosen
 * yet.  Backends consult it at every statement until they see their
 * database open, for what a connection does not show: background workers
 * running users' SQL, sessions opened before a reload added their database
 * to gdpr.worker_databases, fast-path function calls.
 *
 * Superusers and gdpr_admin (who replay, repair and inspect) always pass; so
 * does everyone on a standby, which follows its primary.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <unistd.h>

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/parallel.h"
#include "access/table.h"
#include "access/xlog.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "executor/executor.h"
#include "gdpr.h"
#include "libpq/auth.h"
#include "miscadmin.h"
#include "replication/walsender.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/fmgroids.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"

/* One slot per database checked since the server started; a full table forgets the oldest */
#define GATE_SLOTS 1024

typedef struct GateSlot
{
	Oid			dboid;
	int			state;			/* GDPR_GATE_* */
} GateSlot;

typedef struct GateShared
{
	slock_t		mutex;
	int			nslots;
	GateSlot	slots[GATE_SLOTS];
} GateShared;

static GateShared *gate = NULL;
static bool gate_passed = false;	/* this backend saw its database open */

static shmem_request_hook_type prev_shmem_request = NULL;
static shmem_startup_hook_type prev_shmem_startup = NULL;
static ExecutorStart_hook_type prev_ExecutorStart = NULL;
static ProcessUtility_hook_type prev_ProcessUtility = NULL;
static object_access_hook_type prev_object_access = NULL;
static ClientAuthentication_hook_type prev_client_authentication = NULL;

static void gate_shmem_request(void);
static void gate_shmem_startup(void);
static int	gate_for(Oid dboid, const char *database, Oid roleid);
static void refuse(int elevel, const char *database, int state);
static void gate_client_authentication(Port *port, int status);
static Oid	database_oid(const char *name);
static void gate_check(void);
static bool database_is_template(Oid dboid);
static void gate_ExecutorStart(QueryDesc *queryDesc, int eflags);
static void gate_ProcessUtility(PlannedStmt *pstmt, const char *queryString,
								bool readOnlyTree, ProcessUtilityContext context,
								ParamListInfo params, QueryEnvironment *queryEnv,
								DestReceiver *dest, QueryCompletion *qc);
static void gate_object_access(ObjectAccessType access, Oid classId, Oid objectId, int subId,
							   void *arg);

/* Installs the gate: called while the library is preloaded */
void
gdpr_install_gate(void)
{
	prev_shmem_request = shmem_request_hook;
	shmem_request_hook = gate_shmem_request;
	prev_shmem_startup = shmem_startup_hook;
	shmem_startup_hook = gate_shmem_startup;
	prev_ExecutorStart = ExecutorStart_hook;
	ExecutorStart_hook = gate_ExecutorStart;
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = gate_ProcessUtility;
	prev_object_access = object_access_hook;
	object_access_hook = gate_object_access;
	prev_client_authentication = ClientAuthentication_hook;
	ClientAuthentication_hook = gate_client_authentication;
}

/*
 * A fast-path function call (the protocol's FunctionCall, as libpq's
 * large-object functions use it) goes through neither hook above: it is
 * gated when the function is about to run.
 */
static void
gate_object_access(ObjectAccessType access, Oid classId, Oid objectId, int subId, void *arg)
{
	if (access == OAT_FUNCTION_EXECUTE)
		gate_check();
	if (prev_object_access)
		prev_object_access(access, classId, objectId, subId, arg);
}

static void
gate_shmem_request(void)
{
	if (prev_shmem_request)
		prev_shmem_request();
	RequestAddinShmemSpace(MAXALIGN(sizeof(GateShared)));
}

static void
gate_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup)
		prev_shmem_startup();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	gate = ShmemInitStruct("gdpr gate", sizeof(GateShared), &found);
	if (!found)
	{
		SpinLockInit(&gate->mutex);
		gate->nslots = 0;
	}
	LWLockRelease(AddinShmemInitLock);
}

/* Sets the gate of a database; a full table forgets the oldest slot */
void
gdpr_gate_set(Oid dboid, int state)
{
	int			i;

	if (gate == NULL)
		return;
	SpinLockAcquire(&gate->mutex);
	for (i = 0; i < gate->nslots && gate->slots[i].dboid != dboid; i++)
		;
	if (i == gate->nslots)
	{
		if (gate->nslots == GATE_SLOTS)
		{
			memmove(&gate->slots[0], &gate->slots[1], sizeof(GateSlot) * (GATE_SLOTS - 1));
			i = GATE_SLOTS - 1;
		}
		else
			gate->nslots++;
		gate->slots[i].dboid = dboid;
	}
	gate->slots[i].state = state;
	SpinLockRelease(&gate->mutex);
}

/* The gate of a database: GDPR_GATE_PENDING until the worker has checked it */
int
gdpr_gate_state(Oid dboid)
{
	int			state = GDPR_GATE_PENDING;

	if (gate == NULL)
		return GDPR_GATE_OPEN;
	SpinLockAcquire(&gate->mutex);
	for (int i = 0; i < gate->nslots; i++)
		if (gate->slots[i].dboid == dboid)
			state = gate->slots[i].state;
	SpinLockRelease(&gate->mutex);
	return state;
}

/*
 * Refuses the statement of an application in a database the worker serves
 * while its gate is shut: superusers and gdpr_admin (who replay, repair and
 * inspect) pass.  Once open, the backend stops looking.
 */
/*
 * The state of a database's gate for a role: GDPR_GATE_OPEN when it may
 * come in, else why not.  Superusers and gdpr_admin (who replay, repair
 * and inspect) always may; a database the worker does not serve has no
 * gate (templates included: the worker serves none); nor has a standby,
 * which follows its primary, whose erasures reach it with the WAL.  A
 * server recovering to a point in time (recovery.signal) serves reads of
 * the restored copy before it is promoted: its gate stays shut until then,
 * and the worker's replay after.  Catalog access: shared catalogs only, so
 * that authentication can ask before a database is chosen.
 */
static int
gate_for(Oid dboid, const char *database, Oid roleid)
{
	int			state;

	if (gate == NULL || !gdpr_ledger_enabled() || !OidIsValid(dboid) || !OidIsValid(roleid))
		return GDPR_GATE_OPEN;
	if (RecoveryInProgress() && access(STANDBY_SIGNAL_FILE, F_OK) == 0)
		return GDPR_GATE_OPEN;
	state = gdpr_gate_state(dboid);
	if (state == GDPR_GATE_OPEN || !gdpr_worker_serves(database) || database_is_template(dboid) ||
		superuser_arg(roleid) || has_privs_of_role(roleid, get_role_oid("gdpr_admin", true)))
		return GDPR_GATE_OPEN;
	return state;
}

/* Refuses (at elevel: FATAL for a connection, ERROR for a statement) while the gate is shut */
static void
refuse(int elevel, const char *database, int state)
{
	ereport(elevel,
			(errcode(ERRCODE_GDPR_GATE_SHUT),
			 errmsg("database \"%s\" is not open yet: %s", database,
					state == GDPR_GATE_UNREACHABLE
					? "its erasure ledger is unreachable, and gdpr.ledger_required is on"
					: state == GDPR_GATE_FAILED
					? "its erasure replay failed"
					: "its erasure replay is in progress"),
			 errdetail("After every start the gdpr worker compares the database with the erasure ledger and erases again what a restored copy brought back, before any application may read it."),
			 errhint(state == GDPR_GATE_PENDING
					 ? "Retry in a moment."
					 : "See the server log; gdpr_admin can inspect gdpr.verify_ledger() and run gdpr_replay_erasures().")));
}

/*
 * The OID of a database by name, or InvalidOid, as authentication may
 * look it up: before the relcache of the shared catalogs' indexes is
 * built, a heap scan (as InitPostgres does itself).
 */
static Oid
database_oid(const char *name)
{
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData key;
	HeapTuple	tup;
	Oid			dboid = InvalidOid;

	ScanKeyInit(&key, Anum_pg_database_datname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum(name));
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = systable_beginscan(rel, DatabaseNameIndexId, criticalSharedRelcachesBuilt, NULL, 1, &key);
	if (HeapTupleIsValid(tup = systable_getnext(scan)))
		dboid = ((Form_pg_database) GETSTRUCT(tup))->oid;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return dboid;
}

/*
 * Connections: refused while the gate of their database is shut, before
 * the session starts.  Authentication runs in a transaction, with the
 * shared catalogs (roles, memberships, databases) readable.
 */
static void
gate_client_authentication(Port *port, int status)
{
	int			state;

	if (prev_client_authentication)
		prev_client_authentication(port, status);
	if (status != STATUS_OK || port->database_name == NULL || (am_walsender && !am_db_walsender))
		return;
	state = gate_for(database_oid(port->database_name), port->database_name,
					 get_role_oid(port->user_name, true));
	if (state != GDPR_GATE_OPEN)
		refuse(FATAL, port->database_name, state);
}

/*
 * Statements: what the connection check cannot see.  Background workers
 * that run users' SQL (a scheduler's jobs) connect without authenticating;
 * a database added to gdpr.worker_databases by a reload has sessions
 * already.  The session's user decides, not the current one: a SECURITY
 * DEFINER function of a gdpr_admin member (a subject table's owner is one)
 * must not read for an application.  Parallel workers are their leader's.
 * Once the gate is seen open, the backend stops looking.
 */
static void
gate_check(void)
{
	static char *database = NULL;
	int			state;

	if (gate_passed || gate == NULL || !OidIsValid(MyDatabaseId) || IsParallelWorker() ||
		(MyBackendType != B_BACKEND && MyBackendType != B_WAL_SENDER && MyBackendType != B_BG_WORKER) ||
		!gdpr_ledger_enabled())
		return;
	if (gdpr_gate_state(MyDatabaseId) == GDPR_GATE_OPEN)
	{
		gate_passed = true;
		return;
	}
	if (database == NULL)
		database = MemoryContextStrdup(TopMemoryContext, get_database_name(MyDatabaseId));
	state = gate_for(MyDatabaseId, database, GetSessionUserId());
	if (state != GDPR_GATE_OPEN)
		refuse(ERROR, database, state);
}

/* Whether the database is a template */
static bool
database_is_template(Oid dboid)
{
	HeapTuple	tup = SearchSysCache1(DATABASEOID, ObjectIdGetDatum(dboid));
	bool		template;

	if (!HeapTupleIsValid(tup))
		return false;
	template = ((Form_pg_database) GETSTRUCT(tup))->datistemplate;
	ReleaseSysCache(tup);
	return template;
}

static void
gate_ExecutorStart(QueryDesc *queryDesc, int eflags)
{
	gate_check();
	if (prev_ExecutorStart)
		prev_ExecutorStart(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
}

static void
gate_ProcessUtility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
					ProcessUtilityContext context, ParamListInfo params,
					QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	/* ending a transaction reads nothing: a refused session can still roll back */
	if (!IsA(pstmt->utilityStmt, TransactionStmt))
		gate_check();
	if (prev_ProcessUtility)
		prev_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv,
								dest, qc);
}
