/*-------------------------------------------------------------------------
 *
 * worker.c
 *		The retention background worker: a launcher, registered when the
 *		library is preloaded, that starts one short-lived worker per database
 *		for each pass.
 *
 * The launcher connects to no database (it reads only the shared catalog
 * pg_database), so it never holds a database open.  It never waits for a
 * worker either: every second (and at once on a reload or a worker's start
 * or end) it looks at its workers and at the databases to serve, and starts
 * a pass in each database whose last pass ended gdpr.worker_naptime ago,
 * the longest waiting first, up to gdpr.worker_max_workers at a time.  A
 * long pass in one database therefore holds up no other.  A database
 * worker
 * connects, runs one pass -- the retention policies in batches of
 * gdpr.worker_batch_size rows, one transaction each; sealing new audit
 * events into the hash chain (chain.c); the audit trail's expired
 * partitions and events; due erasure requests -- and exits.  Between
 * batches it checks whether someone is dropping its database (DROP DATABASE
 * holds the database's object lock while it waits for sessions to leave) and
 * leaves at once, so it never blocks DROP DATABASE for more than a batch;
 * and, after a reload, whether its database is still to be served.
 *
 * While other sessions are running statements, the worker rests after each
 * batch in proportion to the time the batch took, so that it uses at most
 * gdpr.worker_duty_cycle percent of one core; with no one else active it
 * goes on at once.
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
#include "commands/dbcommands.h"
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
#include "utils/backend_status.h"
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
static int	worker_max_workers = 3;
static int	worker_duty_cycle = 50;

/*
 * A database the launcher serves: its running pass, if any, and when its
 * last pass ended.  In TopMemoryContext, for the launcher's life.
 */
typedef struct ServedDatabase
{
	Oid			dboid;
	BackgroundWorkerHandle *handle; /* the running pass, or NULL */
	TimestampTz started;		/* when it was started */
	TimestampTz last_end;		/* when the last pass ended; 0: never ran */
	bool		terminated;		/* the launcher ended the running pass */
} ServedDatabase;

static ServedDatabase *served = NULL;
static int	nserved = 0;
static int	maxserved = 0;
static bool no_free_slot = false;	/* the last start found no worker slot */

/* The database worker's own database name, for the check after a reload */
static char *my_database_name = NULL;

/* A table whose last FAILURE_STREAK worker runs all failed waits gdpr.worker_failure_backoff */
#define FAILURE_STREAK 3

static List *databases_to_serve(void);
static void look_after_workers(List *databases);
static void start_due_passes(bool open_window);
static bool gate_due(const ServedDatabase *db, TimestampTz now);
static long next_due_ms(void);
static int	running_workers(void);
static bool start_worker(ServedDatabase *db);
static bool database_listed(const char *name);
static bool first_in_database(void);
static bool unlisted(void);
static void leave_if_unlisted(void);
static bool others_active(void);
static void rest_after_batch(TimestampTz batch_start);
static bool in_window(void);
static void run_pass(void);
static bool drop_pending(void);
static bool being_dropped(Oid dboid);
static List *list_of_rows(const char *sql, int ncolumns);
static char *run_step(const char *sql, Oid role, bool repeat, TimestampTz deadline, int64 *total);
static int64 run_batch(const char *sql, Oid role, TimestampTz deadline);
static bool backing_off(const char *table);
static int64 mark_started(TimestampTz started, const char *table);
static void mark_finished(int64 run_id, int64 deleted, int64 anonymized, const char *error);
static void run_due_erasures(TimestampTz started, TimestampTz deadline);
static void check_ledger(void);
static bool replay_erasures(TimestampTz deadline);
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
	DefineCustomIntVariable("gdpr.worker_max_workers",
							"Databases the retention worker serves at the same time.",
							"Each pass takes one background worker slot (max_worker_processes).",
							&worker_max_workers, 3, 1, 64, PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("gdpr.worker_duty_cycle",
							"Percent of one core the retention worker uses while other sessions are running statements.",
							"After each batch the worker rests in proportion to the time the batch took; "
							"with no other session active it does not rest.  100: never rest.",
							&worker_duty_cycle, 50, 1, 100, PGC_SIGHUP, 0,
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
	bool		open_window;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname("gdpr retention launcher");
	cycle_cxt = AllocSetContextCreate(TopMemoryContext, "gdpr launcher cycle",
									  ALLOCSET_DEFAULT_SIZES);
	gdpr_queue_launcher_started();

	for (;;)
	{
		/* the launcher lives for ever: what one look allocates goes with it */
		MemoryContextReset(cycle_cxt);
		MemoryContextSwitchTo(cycle_cxt);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		look_after_workers(databases_to_serve());
		gdpr_queue_start_writers();
		open_window = in_window();
		start_due_passes(open_window);

		/*
		 * Until the next pass is due, a second at most; a reload, and a
		 * worker starting or ending (bgw_notify_pid), set the latch.
		 */
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 open_window ? next_due_ms() : 1000L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/*
 * Notes which passes ended, terminates one that overran gdpr.worker_max_pass_time
 * by more than a little (its statements run under a statement_timeout, but
 * user code such as a table owner's trigger can catch the cancel and go on),
 * and brings the list of served databases in line with databases: those no
 * longer there are forgotten once their pass is over (the worker itself
 * stops at its next batch, see run_batch), new ones are served at once.
 */
static void
look_after_workers(List *databases)
{
	TimestampTz now = GetCurrentTimestamp();
	ListCell   *lc;
	int			kept = 0;

	for (int i = 0; i < nserved; i++)
	{
		ServedDatabase *db = &served[i];
		pid_t		pid;

		if (db->handle != NULL)
		{
			if (GetBackgroundWorkerPid(db->handle, &pid) == BGWH_STOPPED)
			{
				pfree(db->handle);
				db->handle = NULL;
				db->last_end = now;
			}
			else if (!db->terminated &&
					 now >= TimestampTzPlusMilliseconds(db->started,
														worker_max_pass_time * 1000L + 5000L))
			{
				ereport(LOG,
						(errmsg("gdpr: terminating the retention worker of the database with OID %u: its pass overran gdpr.worker_max_pass_time",
								db->dboid)));
				TerminateBackgroundWorker(db->handle);
				db->terminated = true;
			}
		}
		if (db->handle == NULL && !list_member_oid(databases, db->dboid))
			continue;
		served[kept++] = *db;
	}
	nserved = kept;

	foreach(lc, databases)
	{
		bool		known = false;

		for (int i = 0; i < nserved && !known; i++)
			known = served[i].dboid == lfirst_oid(lc);
		if (known)
			continue;
		if (nserved == maxserved)
		{
			maxserved = Max(8, maxserved * 2);
			served = served == NULL
				? MemoryContextAlloc(TopMemoryContext, sizeof(ServedDatabase) * maxserved)
				: repalloc(served, sizeof(ServedDatabase) * maxserved);
		}
		memset(&served[nserved], 0, sizeof(ServedDatabase));
		served[nserved++].dboid = lfirst_oid(lc);
	}
}

/*
 * Starts a pass in every database due for one (its last pass ended
 * gdpr.worker_naptime ago, or it never had one), the longest waiting
 * first, while fewer than gdpr.worker_max_workers passes run.  Outside the
 * window only databases whose gate is shut are due (gate_due): their pass
 * checks the ledger and ends.
 */
static void
start_due_passes(bool open_window)
{
	TimestampTz now = GetCurrentTimestamp();
	int			running = running_workers();

	while (running < worker_max_workers)
	{
		ServedDatabase *next = NULL;

		for (int i = 0; i < nserved; i++)
		{
			ServedDatabase *db = &served[i];

			if (db->handle != NULL)
				continue;
			if (!gate_due(db, now) &&
				(!open_window ||
				 (db->last_end != 0 &&
				  now < TimestampTzPlusMilliseconds(db->last_end, worker_naptime * 1000L))))
				continue;
			if (next == NULL || db->last_end < next->last_end)
				next = db;
		}
		no_free_slot = next != NULL && !start_worker(next);
		if (next == NULL || no_free_slot)
			return;
		running++;
	}
}

/*
 * Whether a database's gate is shut and its check is due: at once after the
 * start, then every 10 seconds while the ledger is unreachable or the replay
 * fails.
 */
static bool
gate_due(const ServedDatabase *db, TimestampTz now)
{
	int			state;

	if (!gdpr_ledger_enabled())
		return false;
	state = gdpr_gate_state(db->dboid);
	return state != GDPR_GATE_OPEN &&
		(state == GDPR_GATE_PENDING || db->last_end == 0 ||
		 now >= TimestampTzPlusMilliseconds(db->last_end, 10000L));
}

/* Milliseconds until the next database without a running pass is due: 50 to 1000 */
static long
next_due_ms(void)
{
	TimestampTz now = GetCurrentTimestamp();
	long		wait = 1000;

	/* with every slot taken, the end of a pass sets the latch */
	if (running_workers() >= worker_max_workers || no_free_slot)
		return wait;
	for (int i = 0; i < nserved; i++)
		if (served[i].handle == NULL && served[i].last_end != 0)
			wait = Min(wait, TimestampDifferenceMilliseconds(now,
															 TimestampTzPlusMilliseconds(served[i].last_end,
																						 worker_naptime * 1000L)));
	return Max(wait, 50);
}

/*
 * The retention workers running: this launcher's, and those a launcher
 * before it started (it was killed or crashed), which it no longer knows
 * but which take their slots until their passes end.
 */
static int
running_workers(void)
{
	int			running = 0;
	int			n;

	for (int i = 0; i < nserved; i++)
		running += served[i].handle != NULL ? 1 : 0;
	pgstat_clear_backend_activity_snapshot();
	n = pgstat_fetch_stat_numbackends();
	for (int i = 1; i <= n; i++)
	{
		LocalPgBackendStatus *local = gdpr_local_beentry(i);
		pid_t		pid;
		const char *type;
		bool		ours = false;

		if (local == NULL || local->backendStatus.st_backendType != B_BG_WORKER)
			continue;
		pid = local->backendStatus.st_procpid;
		type = GetBackgroundWorkerTypeByPid(pid);
		if (type == NULL || strcmp(type, "gdpr retention worker") != 0)
			continue;
		for (int j = 0; j < nserved && !ours; j++)
		{
			pid_t		their;

			ours = served[j].handle != NULL &&
				GetBackgroundWorkerPid(served[j].handle, &their) == BGWH_STARTED && their == pid;
		}
		running += ours ? 0 : 1;
	}
	pgstat_clear_backend_activity_snapshot();
	return running;
}

/* Starts the pass of one database; false when no worker slot is free */
static bool
start_worker(ServedDatabase *db)
{
	static TimestampTz last_complaint = 0;
	BackgroundWorkerHandle *handle = gdpr_start_database_worker("gdpr_database_worker_main",
																 "gdpr retention worker", db->dboid);

	if (handle == NULL)
	{
		/* said once a minute, not at every look */
		if (GetCurrentTimestamp() >= TimestampTzPlusMilliseconds(last_complaint, 60000L))
		{
			ereport(LOG,
					(errmsg("gdpr: could not start a retention worker: no background worker slot is free"),
					 errhint("Raise max_worker_processes, or lower gdpr.worker_max_workers.")));
			last_complaint = GetCurrentTimestamp();
		}
		return false;
	}
	db->handle = handle;
	db->started = GetCurrentTimestamp();
	db->terminated = false;
	return true;
}

/*
 * Starts a background worker of the launcher's in a database: a retention
 * pass, or a queue's writer (queue.c).  Its handle lives in TopMemoryContext
 * and the launcher is told when it starts and ends; NULL when no worker
 * slot is free.
 */
BackgroundWorkerHandle *
gdpr_start_database_worker(const char *function, const char *type, Oid dboid)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	MemoryContext old;
	bool		started;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	worker.bgw_main_arg = ObjectIdGetDatum(dboid);
	worker.bgw_notify_pid = MyProcPid;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "gdpr");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "%s", function);
	snprintf(worker.bgw_name, BGW_MAXLEN, "%s", type);
	snprintf(worker.bgw_type, BGW_MAXLEN, "%s", type);
	old = MemoryContextSwitchTo(TopMemoryContext);
	started = RegisterDynamicBackgroundWorker(&worker, &handle);
	MemoryContextSwitchTo(old);
	return started ? handle : NULL;
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
		static TimestampTz last_complaint = 0;

		/* said once a minute, not at every look */
		if (GetCurrentTimestamp() >= TimestampTzPlusMilliseconds(last_complaint, 60000L))
		{
			ereport(LOG, (errmsg("gdpr: gdpr.worker_databases is not a valid list")));
			last_complaint = GetCurrentTimestamp();
		}
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
		if (listed && being_dropped(db->oid))
			continue;
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

/*
 * Whether DROP DATABASE holds the database's lock, which it takes before it
 * deletes the database's row and keeps until it commits (a checkpoint
 * later): a worker started now would wait for it and then die with FATAL.
 */
static bool
being_dropped(Oid dboid)
{
	LOCKTAG		tag;

	SET_LOCKTAG_OBJECT(tag, InvalidOid, DatabaseRelationId, dboid, 0);
	if (LockAcquire(&tag, AccessShareLock, false, true) == LOCKACQUIRE_NOT_AVAIL)
		return true;
	LockRelease(&tag, AccessShareLock, false);
	return false;
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
	bool		serving;

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
	my_database_name = MemoryContextStrdup(TopMemoryContext, get_database_name(MyDatabaseId));
	serving = installed && first_in_database();
	CommitTransactionCommand();
	if (!installed)
		gdpr_gate_set(MyDatabaseId, GDPR_GATE_OPEN);
	if (serving)
		check_ledger();
	/* a shut gate is retried every ten seconds: the pass waits for it to open */
	if (serving && in_window() && gdpr_gate_state(MyDatabaseId) == GDPR_GATE_OPEN)
		run_pass();
	proc_exit(0);
}

/*
 * Compares the database with the erasure ledger, replays what it lacks,
 * and opens its gate once it holds every entry.  Every pass does it, the
 * first right after the server starts.  An unreachable or damaged ledger
 * keeps the gate shut under gdpr.ledger_required; a failed replay keeps it
 * shut in any case (the replay is not done); the launcher tries again ten
 * seconds later.
 */
static void
check_ledger(void)
{
	static const char state_sql[] =
		"SELECT CASE gdpr._ledger_state() WHEN 'missing' THEN 1 WHEN 'unreachable' THEN 2 "
		"       WHEN 'incomplete' THEN 3 ELSE 0 END::pg_catalog.int8";
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   worker_max_pass_time * 1000L);
	int			closed = gdpr_ledger_required ? GDPR_GATE_UNREACHABLE : GDPR_GATE_OPEN;
	int64		state;
	char	   *error;

	if (!gdpr_ledger_enabled())
	{
		gdpr_gate_set(MyDatabaseId, GDPR_GATE_OPEN);
		return;
	}
	pgstat_report_activity(STATE_RUNNING, "gdpr: comparing the database with the erasure ledger");
	error = run_step(state_sql, InvalidOid, false, deadline, &state);
	if (error == NULL && state == 1)
	{
		if (!replay_erasures(deadline))
		{
			gdpr_gate_set(MyDatabaseId, GDPR_GATE_FAILED);
			pgstat_report_activity(STATE_IDLE, NULL);
			return;
		}
		error = run_step(state_sql, InvalidOid, false, deadline, &state);
		if (error == NULL && state == 1)
		{
			ereport(LOG,
					(errmsg("gdpr: database \"%s\" still lacks entries of the erasure ledger after its replay",
							my_database_name),
					 errhint("gdpr_admin can see them in gdpr.ledger_entries() and run gdpr_replay_erasures().")));
			gdpr_gate_set(MyDatabaseId, GDPR_GATE_FAILED);
			pgstat_report_activity(STATE_IDLE, NULL);
			return;
		}
	}
	if (error != NULL || state == 2 || state == 3)
	{
		ereport(LOG,
				(errmsg("gdpr: database \"%s\" cannot be compared with its erasure ledger: %s",
						my_database_name,
						error != NULL ? error
						: state == 2 ? "the ledger directory is unreachable"
						: "the ledger lacks entries the database holds (replaced, or cut short)"),
				 errhint(gdpr_ledger_required
						 ? "Applications stay out (gdpr.ledger_required is on) until the ledger is back."
						 : "Applications are let in: gdpr.ledger_required is off.")));
		gdpr_gate_set(MyDatabaseId, closed);
	}
	else
		gdpr_gate_set(MyDatabaseId, GDPR_GATE_OPEN);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * The replay: each erasure with the rights of its subject table's owner
 * (the worker is a superuser, and the erasure runs the tables' triggers),
 * who must be a member of gdpr_admin, as anyone who erases; then the
 * entries that change only the extension's own tables.  False if
 * any failed; each failure is logged.
 */
static bool
replay_erasures(TimestampTz deadline)
{
	List	   *erasures;
	ListCell   *lc;
	bool		ok = true;
	int64		n;
	char	   *error;

	error = run_step("SELECT 1::pg_catalog.int8 FROM gdpr._ledger_adopt()", InvalidOid, false,
					 deadline, &n);
	if (error != NULL)
		return false;
	erasures = list_of_rows("SELECT m.subject, m.kind, m.entry_id::pg_catalog.text, m.seq::pg_catalog.text, "
							"       m.owner::pg_catalog.text, r.rolsuper::pg_catalog.text, r.rolname::pg_catalog.text, "
							"       pg_catalog.pg_has_role(m.owner, 'gdpr_admin', 'USAGE')::pg_catalog.text "
							"  FROM gdpr._ledger_missing() m "
							"  JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) m.owner "
							" WHERE m.entry OPERATOR(pg_catalog.=) 'erase' AND m.subject IS NOT NULL "
							" ORDER BY m.seq", 8);
	foreach(lc, erasures)
	{
		List	   *e = lfirst(lc);
		const char *owner = list_nth(e, 4);
		bool		super = strcmp(list_nth(e, 5), "true") == 0;
		bool		admin = strcmp(list_nth(e, 7), "true") == 0;

		pgstat_report_activity(STATE_RUNNING,
							   psprintf("gdpr: replaying erasure %s of the ledger", (char *) list_nth(e, 3)));
		if ((super && !worker_erase_as_superuser) || (!super && !admin))
		{
			ereport(LOG,
					(errmsg("gdpr: cannot replay erasure %s of the ledger in database \"%s\": role \"%s\", the owner of its subject table, %s",
							(char *) list_nth(e, 3), my_database_name, (char *) list_nth(e, 6),
							super ? "is a superuser, and gdpr.worker_erase_as_superuser is off"
							: "is not a member of gdpr_admin"),
					 errhint(super
							 ? "Run SELECT * FROM gdpr_replay_erasures() as gdpr_admin, or allow it with gdpr.worker_erase_as_superuser."
							 : "Run SELECT * FROM gdpr_replay_erasures() as gdpr_admin, or grant gdpr_admin to the owner.")));
			ok = false;
			continue;
		}
		error = run_step(psprintf("SELECT 1::pg_catalog.int8 FROM gdpr._erase_replay(%s, %s, %s::pg_catalog.uuid, %s, %s)",
								  quote_literal_cstr(linitial(e)), quote_literal_cstr(lsecond(e)),
								  quote_literal_cstr(lthird(e)), (char *) list_nth(e, 3), owner),
						 InvalidOid, false, deadline, &n);
		ok &= error == NULL;
	}
	error = run_step("SELECT pg_catalog.count(*) FROM public.gdpr_replay_erasures(false)", InvalidOid,
					 false, deadline, &n);
	return ok && error == NULL;
}

/*
 * Whether no other retention worker serves this database now: a launcher
 * restarted after a crash does not know the passes its predecessor began.
 * The lock is the session's (taken in a transaction, kept after it), held
 * until the worker exits.
 */
static bool
first_in_database(void)
{
	LOCKTAG		tag;

	/* an advisory lock the SQL functions cannot take: their fourth field is 1 or 2 */
	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, 0x67647072, 0x72657465, 0x7e);
	if (LockAcquire(&tag, ExclusiveLock, true, true) != LOCKACQUIRE_NOT_AVAIL)
		return true;
	ereport(LOG,
			(errmsg("gdpr: another retention worker is serving database \"%s\"; this one leaves",
					my_database_name)));
	return false;
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
	/* a distributed table's policy works on this node's shards, each on its own */
	policies = list_of_rows("SELECT t::pg_catalog.oid, t::pg_catalog.text, p.action "
							"  FROM gdpr.retention_policy p "
							"  JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) p.relid, "
							"       pg_catalog.unnest(gdpr._retention_targets(p.relid)) t "
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
		leave_if_unlisted();
	}

	/* sealed before purged: an event that expires unsealed never enters the chain */
	leave_if_unlisted();
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

	leave_if_unlisted();
	pgstat_report_activity(STATE_RUNNING, "gdpr retention: gdpr.audit_log");
	error = run_step(psprintf("SELECT gdpr.purge_audit_log(%d)", worker_batch_size), InvalidOid,
					 true, deadline, &total);
	if (total > 0 || error != NULL)
		record(started, "gdpr.audit_log", total, 0, error);

	leave_if_unlisted();
	pgstat_report_activity(STATE_RUNNING, "gdpr retention: due erasure requests");
	run_due_erasures(started, deadline);
	leave_if_unlisted();

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
	if (SPI_execute(sql, false, 0) != SPI_OK_SELECT)
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
			TimestampTz batch_start = GetCurrentTimestamp();

			CHECK_FOR_INTERRUPTS();
			if (unlisted())
			{
				error = "skipped: the database was taken out of gdpr.worker_databases";
				break;
			}
			n = run_batch(sql, role, deadline);
			sum += n;
			if (repeat && n >= worker_batch_size)
				rest_after_batch(batch_start);
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

/*
 * Whether a reload took this database out of gdpr.worker_databases: the
 * pass stops at its next batch (the step then records itself as skipped,
 * which is no failure) and the worker leaves (leave_if_unlisted).
 */
static bool
unlisted(void)
{
	static bool gone = false;

	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
		gone = my_database_name != NULL && !database_listed(my_database_name);
	}
	return gone;
}

static void
leave_if_unlisted(void)
{
	if (!unlisted())
		return;
	ereport(LOG,
			(errmsg("gdpr: retention worker stops: database \"%s\" is no longer in gdpr.worker_databases",
					my_database_name)));
	proc_exit(0);
}

/* Whether gdpr.worker_databases (empty: every database) names this one */
/* Whether the worker serves database (ledger.c's gate applies to those only) */
bool
gdpr_worker_serves(const char *database)
{
	return database_listed(database);
}

static bool
database_listed(const char *name)
{
	char	   *raw = pstrdup(worker_databases != NULL ? worker_databases : "");
	List	   *wanted = NIL;
	ListCell   *lc;

	if (!SplitIdentifierString(raw, ',', &wanted))
		return true;			/* the launcher says what is wrong with it */
	if (wanted == NIL)
		return true;
	foreach(lc, wanted)
		if (strcmp(lfirst(lc), name) == 0)
			return true;
	return false;
}

/*
 * Whether another client session is running a statement now, in any
 * database: the application is busy, and the worker leaves it room.
 */
static bool
others_active(void)
{
	int			n;
	bool		active = false;

	pgstat_clear_backend_activity_snapshot();
	n = pgstat_fetch_stat_numbackends();
	for (int i = 1; i <= n && !active; i++)
	{
		LocalPgBackendStatus *local = gdpr_local_beentry(i);

		active = local != NULL &&
			local->backendStatus.st_backendType == B_BACKEND &&
			local->backendStatus.st_procpid != MyProcPid &&
			(local->backendStatus.st_state == STATE_RUNNING ||
			 local->backendStatus.st_state == STATE_FASTPATH);
	}
	pgstat_clear_backend_activity_snapshot();
	return active;
}

/*
 * The duty cycle: after a batch that took t, while others are active, the
 * worker rests t * (100 - duty) / duty, so that it takes at most duty
 * percent of one core however fast the machine (a slow, contended batch
 * rests longer).  gdpr.worker_batch_delay is added always.
 */
static void
rest_after_batch(TimestampTz batch_start)
{
	long		took = TimestampDifferenceMilliseconds(batch_start, GetCurrentTimestamp());
	long		rest = worker_batch_delay;

	if (worker_duty_cycle < 100 && others_active())
		rest += Min(took * (100 - worker_duty_cycle) / worker_duty_cycle, 10000L);
	if (rest <= 0)
		return;
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, rest,
					 PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
}

/* DROP DATABASE holds an exclusive lock on the database object while it waits for us */
static bool
drop_pending(void)
{
	return being_dropped(MyDatabaseId);
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
