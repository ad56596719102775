/*-------------------------------------------------------------------------
 *
 * worker.c
 *		The retention background worker: a launcher, registered when the
 *		library is preloaded, that starts one short-lived worker per database
 *		for each pass.
 *
 * The launcher connects to no database (it reads only the shared catalog
 * pg_database), so it never holds a database open.  A database worker
 * connects, runs one pass -- the retention policies in batches of
 * gdpr.worker_batch_size rows, one transaction each; sealing new audit
 * events into the hash chain (chain.c); the audit trail's expired
 * partitions and events; due erasure requests -- and exits.  Between
 * batches it checks whether someone is dropping its database (DROP DATABASE
 * holds the database's object lock while it waits for sessions to leave) and
 * leaves at once, so it never blocks DROP DATABASE for more than a batch.
 *
 * An error in one table (or any other step) is recorded in
 * gdpr.retention_history and the pass goes on with the next.  Policies run
 * with the rights of their table's owner (in _retention_batch), due erasures
 * with those of the role that requested them: the worker itself is the
 * bootstrap superuser, and user-written conditions and triggers must not
 * run with its rights.  Settings are reloaded on SIGHUP; SIGTERM ends the
 * worker at the next CHECK_FOR_INTERRUPTS; the postmaster restarts the
 * launcher after a crash.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "gdpr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "pgtime.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

PGDLLEXPORT void gdpr_launcher_main(Datum main_arg);
PGDLLEXPORT void gdpr_database_worker_main(Datum main_arg);

/* Settings (gdpr.worker_*), all reloadable; defined in gdpr_define_worker_settings */
static char *worker_databases = NULL;
static int	worker_naptime = 60;
static char *worker_window = NULL;
static int	worker_batch_size = 1000;
static int	worker_lock_timeout = 1000;
static int	worker_max_pass_time = 600;
static int	worker_batch_delay = 0;
static int	worker_failure_backoff = 3600;
static bool worker_erase_as_superuser = false;

/* A table whose last FAILURE_STREAK worker runs all failed waits gdpr.worker_failure_backoff */
#define FAILURE_STREAK 3

static List *databases_to_serve(void);
static void wait_for_worker(BackgroundWorkerHandle *handle);
static bool in_window(void);
static void run_pass(void);
static bool drop_pending(void);
static List *list_of_rows(const char *sql, int ncolumns);
static char *run_step(const char *sql, Oid role, bool repeat, TimestampTz deadline, int64 *total);
static int64 run_batch(const char *sql, Oid role, TimestampTz deadline);
static bool backing_off(const char *table);
static int64 mark_started(TimestampTz started, const char *table);
static void mark_finished(int64 run_id, int64 deleted, int64 anonymized, const char *error);
static void run_due_erasures(TimestampTz started, TimestampTz deadline);
static void record(TimestampTz started, const char *table, int64 deleted, int64 anonymized,
				   const char *error);	/* what a pass did to one table: only when it did something */

void
gdpr_define_worker_settings(void)
{
	DefineCustomStringVariable("gdpr.worker_databases",
							   "Comma-separated databases the retention worker serves; empty: every database with the extension.",
							   NULL, &worker_databases, "", PGC_SIGHUP, GUC_LIST_INPUT,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("gdpr.worker_naptime",
							"Seconds between two retention passes.",
							NULL, &worker_naptime, 60, 1, 86400, PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomStringVariable("gdpr.worker_window",
							   "Time of day the worker may run in, such as '02:00-05:00'; empty: any time.",
							   NULL, &worker_window, "", PGC_SIGHUP, 0,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("gdpr.worker_batch_size",
							"Rows deleted or anonymized per transaction by the retention worker.",
							NULL, &worker_batch_size, 1000, 1, 1000000, PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("gdpr.worker_lock_timeout",
							"lock_timeout of the retention worker's statements.",
							NULL, &worker_lock_timeout, 1000, 0, INT_MAX, PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("gdpr.worker_batch_delay",
							"Milliseconds the retention worker rests between two batches, leaving the machine to the application.",
							NULL, &worker_batch_delay, 0, 0, 10000, PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("gdpr.worker_max_pass_time",
							"Seconds one database's retention pass may take before it stops until the next.",
							"Every statement of the pass runs under a statement_timeout of the time left; "
							"a worker still running a little after it is terminated by the launcher.",
							&worker_max_pass_time, 600, 1, 86400, PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("gdpr.worker_failure_backoff",
							"Seconds the worker leaves alone a table whose last three retention runs failed.",
							NULL, &worker_failure_backoff, 3600, 0, 7 * 86400, PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomBoolVariable("gdpr.worker_erase_as_superuser",
							 "Whether the worker carries out due erasures requested by a superuser, with superuser rights.",
							 "Off: such requests fail, and their error says to request the erasure again as a role without superuser rights.",
							 &worker_erase_as_superuser, false, PGC_SIGHUP, 0,
							 NULL, NULL, NULL);
}

void
gdpr_register_launcher(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 10;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "gdpr");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "gdpr_launcher_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "gdpr retention launcher");
	snprintf(worker.bgw_type, BGW_MAXLEN, "gdpr retention launcher");
	RegisterBackgroundWorker(&worker);
}

void
gdpr_launcher_main(Datum main_arg)
{
	MemoryContext cycle_cxt;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname("gdpr retention launcher");
	cycle_cxt = AllocSetContextCreate(TopMemoryContext, "gdpr launcher cycle",
									  ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		ListCell   *lc;

		/* the launcher lives for ever: what one cycle allocates goes with it */
		MemoryContextReset(cycle_cxt);
		MemoryContextSwitchTo(cycle_cxt);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (in_window())
		{
			List	   *databases = databases_to_serve();

			foreach(lc, databases)
			{
				BackgroundWorker worker;
				BackgroundWorkerHandle *handle;
				pid_t		pid;

				/*
				 * The list was read when the cycle began: a database dropped,
				 * or taken out of gdpr.worker_databases by a reload, since
				 * then is not served.
				 */
				if (ConfigReloadPending)
				{
					ConfigReloadPending = false;
					ProcessConfigFile(PGC_SIGHUP);
				}
				if (!list_member_oid(databases_to_serve(), lfirst_oid(lc)))
					continue;
				memset(&worker, 0, sizeof(worker));
				worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
				worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
				worker.bgw_restart_time = BGW_NEVER_RESTART;
				worker.bgw_main_arg = ObjectIdGetDatum(lfirst_oid(lc));
				worker.bgw_notify_pid = MyProcPid;
				snprintf(worker.bgw_library_name, BGW_MAXLEN, "gdpr");
				snprintf(worker.bgw_function_name, BGW_MAXLEN, "gdpr_database_worker_main");
				snprintf(worker.bgw_name, BGW_MAXLEN, "gdpr retention worker");
				snprintf(worker.bgw_type, BGW_MAXLEN, "gdpr retention worker");
				if (!RegisterDynamicBackgroundWorker(&worker, &handle))
				{
					ereport(LOG,
							(errmsg("gdpr: could not start a retention worker"),
							 errhint("Raise max_worker_processes.")));
					break;
				}
				/* one database at a time: a pass is light, and the next waits its turn */
				if (WaitForBackgroundWorkerStartup(handle, &pid) == BGWH_STARTED)
					wait_for_worker(handle);
				CHECK_FOR_INTERRUPTS();
			}
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 worker_naptime * 1000L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/*
 * Waits for a database worker to end, at most a little longer than a pass
 * may take: its statements run under a statement_timeout, but user code
 * (a table owner's trigger) can catch the cancel and go on.  Then the
 * worker is terminated, so that one database never holds up the others.
 */
static void
wait_for_worker(BackgroundWorkerHandle *handle)
{
	TimestampTz limit = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													worker_max_pass_time * 1000L + 5000L);
	bool		terminated = false;
	pid_t		pid;

	while (GetBackgroundWorkerPid(handle, &pid) == BGWH_STARTED)
	{
		if (!terminated && GetCurrentTimestamp() >= limit)
		{
			ereport(LOG,
					(errmsg("gdpr: terminating retention worker %d: its pass overran gdpr.worker_max_pass_time",
							(int) pid)));
			TerminateBackgroundWorker(handle);
			terminated = true;
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 1000L,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
	}
}

/* The databases to visit: those listed, or every one that accepts connections */
static List *
databases_to_serve(void)
{
	MemoryContext cxt = CurrentMemoryContext;
	List	   *result = NIL;
	List	   *wanted = NIL;
	char	   *raw = pstrdup(worker_databases != NULL ? worker_databases : "");
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;

	if (!SplitIdentifierString(raw, ',', &wanted))
	{
		ereport(LOG, (errmsg("gdpr: gdpr.worker_databases is not a valid list")));
		return NIL;
	}
	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while (HeapTupleIsValid(tup = heap_getnext(scan, ForwardScanDirection)))
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);
		ListCell   *lc;
		bool		listed = wanted == NIL;

		if (!db->datallowconn || db->datistemplate)
			continue;
		foreach(lc, wanted)
			listed |= strcmp(lfirst(lc), NameStr(db->datname)) == 0;
		if (listed)
		{
			MemoryContext old = MemoryContextSwitchTo(cxt);

			result = lappend_oid(result, db->oid);
			MemoryContextSwitchTo(old);
		}
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);
	return result;
}

/* Whether now is inside gdpr.worker_window ("HH:MM-HH:MM", possibly across midnight) */
static bool
in_window(void)
{
	int			h1,
				m1,
				h2,
				m2;
	pg_time_t	now = timestamptz_to_time_t(GetCurrentTimestamp());
	struct pg_tm *tm = pg_localtime(&now, log_timezone);
	int			minute,
				from,
				to;

	if (worker_window == NULL || worker_window[0] == '\0')
		return true;
	if (sscanf(worker_window, "%d:%d-%d:%d", &h1, &m1, &h2, &m2) != 4)
	{
		ereport(LOG, (errmsg("gdpr: gdpr.worker_window \"%s\" is not of the form HH:MM-HH:MM", worker_window)));
		return true;
	}
	minute = tm->tm_hour * 60 + tm->tm_min;
	from = h1 * 60 + m1;
	to = h2 * 60 + m2;
	return from <= to ? (minute >= from && minute < to) : (minute >= from || minute < to);
}

void
gdpr_database_worker_main(Datum main_arg)
{
	bool		installed;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(DatumGetObjectId(main_arg), InvalidOid, 0);
	pgstat_report_appname("gdpr retention worker");
	/* sealing needs a fresh snapshot per statement, whatever the server's default */
	SetConfigOption("default_transaction_isolation", "read committed", PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * The worker is a superuser, and a database's owner can set the
	 * database's search_path (ALTER DATABASE ... SET), which background
	 * workers apply too: an operator or function of theirs found first
	 * would run with superuser rights.  Nothing the worker runs resolves a
	 * name through a path anyone else chose.
	 */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);

	StartTransactionCommand();
	installed = OidIsValid(get_extension_oid("gdpr", true));
	CommitTransactionCommand();
	if (installed)
		run_pass();
	proc_exit(0);
}

/*
 * One pass over this database.  Each batch is its own transaction; an error
 * ends its step, is recorded, and the pass goes on with the next step.
 */
static void
run_pass(void)
{
	TimestampTz started = GetCurrentTimestamp();
	TimestampTz deadline = TimestampTzPlusMilliseconds(started, worker_max_pass_time * 1000L);
	List	   *policies;
	ListCell   *lc;
	int64		total;
	char	   *error;

	error = run_step("SELECT gdpr.create_audit_partitions()::pg_catalog.int8", InvalidOid,
					 false, deadline, &total);
	if (error != NULL)
		record(started, "gdpr.audit_log", 0, 0, error);

	/* tables dropped behind the event triggers' back have no pg_class row */
	policies = list_of_rows("SELECT p.relid::pg_catalog.oid, gdpr._qualified(p.relid), p.action "
							"  FROM gdpr.retention_policy p "
							"  JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) p.relid "
							" ORDER BY 2", 3);
	foreach(lc, policies)
	{
		List	   *p = lfirst(lc);
		const char *table = lsecond(p);
		bool		anonymize = strcmp(lthird(p), "anonymize") == 0;
		char	   *sql = psprintf("SELECT gdpr._retention_batch(%s, %d, false)",
								   (char *) linitial(p), worker_batch_size);
		int64		run_id;

		if (GetCurrentTimestamp() >= deadline)
			break;
		if (backing_off(table))
			continue;
		pgstat_report_activity(STATE_RUNNING, psprintf("gdpr retention: %s", table));
		/* a worker terminated mid-table leaves this mark, which counts as a failure */
		run_id = mark_started(started, table);
		error = run_step(sql, InvalidOid, true, deadline, &total);
		mark_finished(run_id, anonymize ? 0 : total, anonymize ? total : 0, error);
	}

	/* sealed before purged: an event that expires unsealed never enters the chain */
	pgstat_report_activity(STATE_RUNNING, "gdpr retention: sealing gdpr.audit_log");
	error = run_step(psprintf("SELECT gdpr.seal_audit(%d)", worker_batch_size), InvalidOid,
					 true, deadline, &total);
	if (error != NULL)
		record(started, "gdpr.audit_seal", 0, 0, error);
	else
	{
		/* a pass that could not catch up says how far behind the chain is */
		List	   *lag = list_of_rows("SELECT events_behind::pg_catalog.text, seconds_behind::pg_catalog.text "
									   "  FROM gdpr.seal_lag WHERE events_behind OPERATOR(pg_catalog.>) 0", 2);

		if (lag != NIL)
			ereport(LOG,
					(errmsg("gdpr: sealing is %s events (%s s) behind in the database with OID %u",
							(char *) linitial(linitial(lag)), (char *) lsecond(linitial(lag)),
							MyDatabaseId),
					 errhint("See gdpr.seal_lag; gdpr.worker_batch_size and gdpr.worker_max_pass_time set how much a pass seals.")));
	}

	pgstat_report_activity(STATE_RUNNING, "gdpr retention: gdpr.audit_log");
	error = run_step(psprintf("SELECT gdpr.purge_audit_log(%d)", worker_batch_size), InvalidOid,
					 true, deadline, &total);
	if (total > 0 || error != NULL)
		record(started, "gdpr.audit_log", total, 0, error);

	pgstat_report_activity(STATE_RUNNING, "gdpr retention: due erasure requests");
	run_due_erasures(started, deadline);

	error = run_step("WITH d AS (DELETE FROM gdpr.retention_history "
					 " WHERE started_at OPERATOR(pg_catalog.<) "
					 "       (pg_catalog.now() OPERATOR(pg_catalog.-) '90 days'::pg_catalog.interval) "
					 " RETURNING 1) SELECT pg_catalog.count(*) FROM d",
					 InvalidOid, false, deadline, &total);
	if (error != NULL)
		record(started, "gdpr.retention_history", 0, 0, error);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * Due erasures, each with the rights of the role that asked for it
 * (requested_by is set by the database, see gdpr._erasure_request_guard),
 * recorded and backed off per requester as tables are.
 * A request by a role that no longer exists fails; one by a superuser fails
 * too unless gdpr.worker_erase_as_superuser allows it: the erasure runs the
 * tables' triggers and hold conditions, which must not get superuser rights
 * by being due.
 */
static void
run_due_erasures(TimestampTz started, TimestampTz deadline)
{
	List	   *requesters;
	ListCell   *lc;
	int64		total;
	char	   *error;

	requesters = list_of_rows("SELECT DISTINCT q.requested_by::pg_catalog.text, r.oid, r.rolsuper "
							  "  FROM gdpr.erasure_request q "
							  "  LEFT JOIN pg_catalog.pg_roles r ON r.rolname OPERATOR(pg_catalog.=) q.requested_by "
							  " WHERE q.status OPERATOR(pg_catalog.=) 'pending' "
							  "   AND q.due_at OPERATOR(pg_catalog.<=) pg_catalog.now()", 3);
	foreach(lc, requesters)
	{
		const char *requester = linitial(lfirst(lc));
		const char *role_oid = lsecond(lfirst(lc));
		Oid			role = role_oid != NULL ? atooid(role_oid) : InvalidOid;
		bool		super = role_oid != NULL && strcmp(lthird(lfirst(lc)), "t") == 0;
		const char *refusal = NULL;
		char	   *name;
		int64		run_id;

		if (!OidIsValid(role))
			refusal = psprintf("role \"%s\", who requested the erasure, no longer exists", requester);
		else if (super && !worker_erase_as_superuser)
			refusal = psprintf("role \"%s\", who requested the erasure, is a superuser, and gdpr.worker_erase_as_superuser is off: "
							   "request it again as a role without superuser rights, or run gdpr.run_due_erasures() yourself",
							   requester);
		if (refusal != NULL)
		{
			error = run_step(psprintf("WITH f AS (UPDATE gdpr.erasure_request "
									  "   SET status = 'failed', finished_at = pg_catalog.now(), error = %s "
									  " WHERE status OPERATOR(pg_catalog.=) 'pending' "
									  "   AND due_at OPERATOR(pg_catalog.<=) pg_catalog.now() "
									  "   AND requested_by OPERATOR(pg_catalog.=) %s::pg_catalog.name "
									  " RETURNING 1) SELECT pg_catalog.count(*) FROM f",
									  quote_literal_cstr(refusal), quote_literal_cstr(requester)),
							 InvalidOid, false, deadline, &total);
			if (error != NULL)
				record(started, "due erasure requests", 0, 0, error);
			continue;
		}

		/*
		 * An erasure runs the tables' triggers and hold conditions: one that
		 * never finishes must not hold up every later pass.
		 */
		name = psprintf("due erasures requested by %s", requester);
		if (GetCurrentTimestamp() >= deadline || backing_off(name))
			continue;
		run_id = mark_started(started, name);
		error = run_step(psprintf("SELECT pg_catalog.count(*) FROM gdpr.run_due_erasures(%s)",
								  quote_literal_cstr(requester)),
						 role, false, deadline, &total);
		mark_finished(run_id, total, 0, error);
	}
}

/*
 * Whether the worker leaves a table alone for now: its last runs all failed
 * (or never finished), the latest within gdpr.worker_failure_backoff.
 * Skipping is recorded once per pass, as a run that does not count.
 */
static bool
backing_off(const char *table)
{
	char	   *sql;
	List	   *volatile rows;

	if (worker_failure_backoff == 0)
		return false;
	sql = psprintf("SELECT (pg_catalog.count(*) OPERATOR(pg_catalog.=) %d) "
				   "       AND (pg_catalog.max(h.started_at) OPERATOR(pg_catalog.>) "
				   "            (pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(secs => %d))) "
				   "  FROM (SELECT started_at, error FROM gdpr.retention_history "
				   "         WHERE by_worker AND table_name OPERATOR(pg_catalog.=) %s "
				   "           AND NOT skipped "
				   "         ORDER BY run_id DESC LIMIT %d) h "
				   " WHERE h.error IS NOT NULL",
				   FAILURE_STREAK, worker_failure_backoff, quote_literal_cstr(table), FAILURE_STREAK);
	PG_TRY();
	{
		rows = list_of_rows(sql, 1);
	}
	PG_CATCH();
	{
		/* the history could not be read: try the table, and let its run record what happens */
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
		rows = NIL;
	}
	PG_END_TRY();
	if (rows == NIL || linitial(rows) == NULL || strcmp(linitial((List *) linitial(rows)), "t") != 0)
		return false;
	record(GetCurrentTimestamp(), table, 0, 0,
		   psprintf("skipped: the last %d runs failed; next try %d s after the last",
					FAILURE_STREAK, worker_failure_backoff));
	return true;
}

/*
 * The rows of a query, each a list of ncolumns strings (NULL for SQL NULL),
 * in the worker's long-lived context.  An error here ends the pass: without
 * the list there is nothing to do.
 */
static List *
list_of_rows(const char *sql, int ncolumns)
{
	List	   *rows = NIL;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_execute(sql, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute failed: %s", sql);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
		List	   *row = NIL;

		for (int c = 1; c <= ncolumns; c++)
		{
			char	   *value = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, c);

			row = lappend(row, value != NULL ? pstrdup(value) : NULL);
		}
		rows = lappend(rows, row);
		MemoryContextSwitchTo(old);
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	return rows;
}

/*
 * Runs sql, as role unless InvalidOid, once or (repeat) batch after batch
 * until one comes back short or the pass is out of time.  Returns NULL, or
 * the message of the error that ended the step (its transaction is rolled
 * back; earlier batches stay); *total is the sum of the counts.
 */
static char *
run_step(const char *sql, Oid role, bool repeat, TimestampTz deadline, int64 *total)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile int64 sum = 0;
	char	   *volatile error = NULL;

	PG_TRY();
	{
		int64		n;

		do
		{
			CHECK_FOR_INTERRUPTS();
			n = run_batch(sql, role, deadline);
			sum += n;
			if (repeat && n >= worker_batch_size && worker_batch_delay > 0)
			{
				(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
								 worker_batch_delay, PG_WAIT_EXTENSION);
				ResetLatch(MyLatch);
			}
		} while (repeat && n >= worker_batch_size && GetCurrentTimestamp() < deadline);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		error = edata->message;
		ereport(LOG, (errmsg("gdpr: retention step failed: %s", error),
					  errcontext("%s", sql)));
	}
	PG_END_TRY();
	*total = sum;
	return error;
}

/*
 * Runs one statement returning a count in a transaction of its own, unless
 * the database is being dropped: then the worker leaves.  The statement may
 * take what is left of the pass (deadline 0: a second), not more.
 */
static int64
run_batch(const char *sql, Oid role, TimestampTz deadline)
{
	int64		n = 0;
	long		left_ms = 1000;
	bool		isnull;
	int			ret;

	if (deadline != 0)
		left_ms = Max(TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline), 1000);
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (drop_pending())
	{
		AbortCurrentTransaction();
		ereport(LOG, (errmsg("gdpr: retention worker leaves a database being dropped")));
		proc_exit(0);
	}
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	SetConfigOption("lock_timeout", psprintf("%d", worker_lock_timeout), PGC_SUSET, PGC_S_SESSION);
	SetConfigOption("statement_timeout", psprintf("%ld", Min(left_ms, (long) INT_MAX)),
					PGC_SUSET, PGC_S_SESSION);
	SetConfigOption("application_name", "gdpr retention worker", PGC_USERSET, PGC_S_SESSION);
	if (OidIsValid(role))
		ret = gdpr_execute_as_role(role, NULL, sql, 0, NULL, NULL, NULL, false, 1);
	else
		ret = SPI_execute(sql, false, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute failed: %s", sql);
	if (SPI_processed == 1)
		n = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	return n;
}

/* DROP DATABASE holds an exclusive lock on the database object while it waits for us */
static bool
drop_pending(void)
{
	LOCKTAG		tag;

	SET_LOCKTAG_OBJECT(tag, InvalidOid, DatabaseRelationId, MyDatabaseId, 0);
	if (LockAcquire(&tag, AccessShareLock, false, true) == LOCKACQUIRE_NOT_AVAIL)
		return true;
	LockRelease(&tag, AccessShareLock, false);
	return false;
}

static void
record(TimestampTz started, const char *table, int64 deleted, int64 anonymized, const char *error)
{
	int64		run_id = mark_started(started, table);

	mark_finished(run_id, deleted, anonymized, error);
}

/*
 * Writes a history row that says the table's run has not finished; 0 if
 * even that failed (the server log has why).
 */
static int64
mark_started(TimestampTz started, const char *table)
{
	volatile int64 run_id = 0;

	PG_TRY();
	{
		run_id = run_batch(psprintf("WITH i AS (INSERT INTO gdpr.retention_history "
									"(started_at, table_name, by_worker, error) "
									"VALUES (pg_catalog.to_timestamp(%.6f), %s, true, "
									"'the worker was stopped before this table was done') "
									"RETURNING run_id) SELECT run_id FROM i",
									(double) started / USECS_PER_SEC +
									(POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY,
									quote_literal_cstr(table)),
						   InvalidOid, 0);
	}
	PG_CATCH();
	{
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
	}
	PG_END_TRY();
	return run_id;
}

/*
 * What a run did to one table: kept when it did something or failed, gone
 * otherwise.  A skip is kept but does not count towards a failure streak.
 */
static void
mark_finished(int64 run_id, int64 deleted, int64 anonymized, const char *error)
{
	char	   *sql;

	if (run_id == 0)
		return;
	if (deleted == 0 && anonymized == 0 && error == NULL)
		sql = psprintf("WITH d AS (DELETE FROM gdpr.retention_history "
					   " WHERE run_id OPERATOR(pg_catalog.=) " INT64_FORMAT " RETURNING 1) "
					   "SELECT pg_catalog.count(*) FROM d", run_id);
	else
		sql = psprintf("WITH u AS (UPDATE gdpr.retention_history "
					   "   SET deleted = " INT64_FORMAT ", anonymized = " INT64_FORMAT ", "
					   "       error = %s, skipped = %s, finished_at = pg_catalog.clock_timestamp() "
					   " WHERE run_id OPERATOR(pg_catalog.=) " INT64_FORMAT " RETURNING 1) "
					   "SELECT pg_catalog.count(*) FROM u",
					   deleted, anonymized, error != NULL ? quote_literal_cstr(error) : "NULL",
					   error != NULL && strncmp(error, "skipped:", 8) == 0 ? "true" : "false",
					   run_id);
	PG_TRY();
	{
		run_batch(sql, InvalidOid, 0);
	}
	PG_CATCH();
	{
		/* the history is best effort: the server log has the failure too */
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
	}
	PG_END_TRY();
}
