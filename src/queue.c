/*-------------------------------------------------------------------------
 *
 * queue.c
 *		Events the session that caused them cannot write: reads of
 *		read-audited tables (reads.c), and the events of rights functions run
 *		in a read-only transaction (gdpr_record_event).  Sessions append them
 *		to a ring in shared memory; a writer per database, started by the
 *		launcher (worker.c), inserts them into the trail in batches.
 *
 * A session never waits for the writer and never fails because of the
 * queue: when the ring is full, the event goes to the server log instead,
 * as a JSON line; not_queued counts it.  Records are binary (the strings
 * and keys of a GdprQueuedEvent one after another), so that neither the
 * session nor the writer formats or parses text on the way.
 *
 * The writer keeps one trail row per run of reads that share everything but
 * their time and subjects (the same table, roles, actor, address and
 * application) within one batch: the row's related_subject_ids is the union
 * of their subjects, and detail.reads lists each statement with its time,
 * row count and the positions of its subjects in that array ("subjects",
 * or "first" and "count" for consecutive ones; gdpr._read_positions).  An
 * erasure replaces a key by its pseudonym in place, so the positions stay
 * true.
 * One row per statement cost the writer more than the statements it
 * records (five indexes and the seal, for every point lookup).
 *
 * The ring holds records of every database, in the order they came.  The
 * writer of one database takes its database's records wherever they are
 * (marking them in flight), inserts them, and only once that committed marks
 * them done; the tail then moves over every record at its front that is done.
 * A batch that fails is written again event by event; an event that still
 * fails goes to the server log and is marked done, so that no record can
 * block the ring for ever.  A record is thus in the trail
 * or in the server log, but for two cases, both documented: a crash (or an
 * immediate shutdown) loses the ring, and on a clean shutdown the records no
 * writer took go to the server log with the launcher's exit (log_pending).
 *
 * The lock is the queue's one LWLock; it is held only to copy bytes and
 * flip states, never across I/O or a transaction.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "commands/extension.h"
#include "common/ip.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "gdpr.h"
#include "libpq/libpq-be.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

PGDLLEXPORT void gdpr_queue_writer_main(Datum main_arg);

PG_FUNCTION_INFO_V1(gdpr_queue_stats);

/* Databases with records in the ring at the same time; a record of one more is not queued */
#define QUEUE_DATABASES		64

/* Every record, padding included, is a multiple of this: a header always fits at the end */
#define RECORD_ALIGN		16

#define RECORD_PENDING		0
#define RECORD_IN_FLIGHT	1
#define RECORD_DONE			2
#define RECORD_PADDING		3

/* writer_pid of a database whose writer the launcher has asked for */
#define WRITER_STARTING		(-1)

/* How long a writer lets records gather after a batch, unless the ring fills */
#define WRITER_PAUSE_MS		250

/* A writer with nothing to write leaves after this long */
#define WRITER_IDLE_MS		30000

/* What one writer transaction takes at most */
#define BATCH_RECORDS		2000
#define BATCH_BYTES			(4 * 1024 * 1024)

typedef struct RecordHeader
{
	uint32		size;			/* the whole record, header included */
	Oid			dboid;
	uint32		state;
	uint32		len;			/* the encoded event after the header (see encode) */
} RecordHeader;

StaticAssertDecl(sizeof(RecordHeader) == RECORD_ALIGN, "a record header fills one alignment unit");

typedef struct QueueDatabase
{
	Oid			dboid;			/* InvalidOid: a free slot */
	int			pending;		/* its records not yet done */
	pid_t		writer_pid;		/* 0: none; WRITER_STARTING: asked for */
	Latch	   *writer_latch;	/* set when a record comes; NULL without a writer */
} QueueDatabase;

typedef struct QueueShared
{
	LWLock	   *lock;
	Latch	   *launcher_latch; /* set when a database without writer has a record */
	uint64		head;			/* bytes ever appended, padding included */
	uint64		tail;			/* bytes ever freed */
	uint64		queued;			/* records appended */
	uint64		written;		/* records in the trail */
	uint64		not_queued;		/* events sent to the server log: the ring was full */
	uint64		logged;			/* records sent to the server log: no writer could write them */
	Size		capacity;
	QueueDatabase db[QUEUE_DATABASES];
	char		ring[FLEXIBLE_ARRAY_MEMBER];
} QueueShared;

/* Whether this process is a writer: what it reads to resolve subjects is no one's read */
bool		gdpr_queue_writer = false;

/* Settings, read when shared memory is sized (PGC_POSTMASTER) */
int			gdpr_queue_size_kb = 8192;

static QueueShared *queue = NULL;
static shmem_request_hook_type prev_shmem_request = NULL;
static shmem_startup_hook_type prev_shmem_startup = NULL;

/* In the launcher: the writers it started, by slot */
static BackgroundWorkerHandle *writer_handles[QUEUE_DATABASES];

static void queue_shmem_request(void);
static void queue_shmem_startup(void);
static Size queue_size(void);
static QueueDatabase *database_slot(Oid dboid, bool claim);
static RecordHeader *record_at(uint64 pos);
static void advance_tail(void);
static List *take_records(QueueDatabase *slot, GdprQueuedEvent **events, int *n);
static void finish_records(QueueDatabase *slot, List *positions, int written);
static void log_record(const char *payload, const char *why);
static void writer_leaves(int code, Datum arg);
static bool write_batch(QueueDatabase *slot);
static bool write_events(GdprQueuedEvent *events, int n, MemoryContext cxt);
static void resolve_rows_or_bulk(GdprQueuedEvent *e, MemoryContext cxt);
static bool pressing(void);
static void insert_events(GdprQueuedEvent *events, int n, MemoryContext cxt);
typedef struct TrailRow TrailRow;
static List *trail_rows(GdprQueuedEvent *events, int n, MemoryContext cxt);
static TrailRow *new_row(GdprQueuedEvent *e, MemoryContext cxt);
static const char *run_context(const GdprQueuedEvent *e);
static void add_read(TrailRow *row, const GdprQueuedEvent *e);
static void trail_arrays(List *rows, Datum *args);
static char *ids_literal(List *keys);
static uint32 string_pointer_hash(const void *key, Size keysize);
static int	string_pointer_match(const void *key1, const void *key2, Size keysize);
static void resolve_rows(GdprQueuedEvent *e, MemoryContext cxt);
static void log_pending(int code, Datum arg);
static void discard_database(int i);
static int	log_records(Oid dboid, const char *why);
static const char *copy_nonempty(const char *value);
static const char *client_address(void);
static char *event_json(const GdprQueuedEvent *e);
static void append_member(StringInfo buf, const char *key, const char *value);
typedef enum QueueResult
{
	QUEUE_DONE,
	QUEUE_FULL,					/* no room, or no slot for the database */
	QUEUE_TOO_LARGE				/* more than a quarter of the ring */
} QueueResult;
static QueueResult queue_event(const GdprQueuedEvent *e);
static void encode(const GdprQueuedEvent *e, const char **strings, char *out);
static void decode(const char *buf, GdprQueuedEvent *e);
static void event_strings(const GdprQueuedEvent *e, const char **strings);
static Size payload_size(const GdprQueuedEvent *e, const char **strings);

/* Called while the library is preloaded */
void
gdpr_install_queue(void)
{
	prev_shmem_request = shmem_request_hook;
	shmem_request_hook = queue_shmem_request;
	prev_shmem_startup = shmem_startup_hook;
	shmem_startup_hook = queue_shmem_startup;
}

static Size
queue_size(void)
{
	return TYPEALIGN(RECORD_ALIGN, (Size) gdpr_queue_size_kb * 1024);
}

static void
queue_shmem_request(void)
{
	if (prev_shmem_request)
		prev_shmem_request();
	RequestAddinShmemSpace(MAXALIGN(offsetof(QueueShared, ring) + queue_size()));
	RequestNamedLWLockTranche("gdpr queue", 1);
}

static void
queue_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup)
		prev_shmem_startup();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	queue = ShmemInitStruct("gdpr queue", offsetof(QueueShared, ring) + queue_size(), &found);
	if (!found)
	{
		memset(queue, 0, offsetof(QueueShared, ring));
		queue->lock = &(GetNamedLWLockTranche("gdpr queue"))->lock;
		queue->capacity = queue_size();
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * Records an event of a rights function (EXPORT, ERASE_CHECK, ...): in the
 * trail at once where the transaction can write, through the queue in a
 * read-only transaction, in the server log on a standby.  Returns the
 * event's id, or 0 when it was not written now.  SPI must be connected.
 */
int64
gdpr_record_event(const char *event, const char *kind, const char *subject,
				  const char *table_name, Jsonb *detail)
{
	GdprQueuedEvent e;

	if (!RecoveryInProgress() && !XactReadOnly)
		return gdpr_audit_event(event, true, kind, subject, table_name, detail);
	gdpr_event_context(&e, event, GetUserId());
	e.kind = kind;
	e.subject = subject;
	e.table = table_name;
	e.detail = detail != NULL ? JsonbToCString(NULL, &detail->root, VARSIZE(detail)) : NULL;
	gdpr_send_event(&e);
	return 0;
}

/*
 * Who, when and from where: made in the session, when the catalogs can be
 * read, since a read's event is sent also while its transaction aborts.
 * Everything else is zero.
 */
void
gdpr_event_context(GdprQueuedEvent *e, const char *event, Oid userid)
{
	memset(e, 0, sizeof(GdprQueuedEvent));
	e->event = event;
	e->time = GetCurrentStatementStartTimestamp();
	e->until = gdpr_retention_until(e->time);
	e->session_role = GetUserNameFromId(GetSessionUserId(), false);
	e->role = GetUserNameFromId(userid, false);
	/* copies: a SET during the statement frees a setting's string */
	e->actor = copy_nonempty(gdpr_actor);
	e->client_addr = copy_nonempty(client_address());
	e->user_agent = copy_nonempty(gdpr_user_agent);
	e->application = copy_nonempty(application_name);
}

/* To the queue; on a standby, or when the queue is full, to the server log */
void
gdpr_send_event(const GdprQueuedEvent *e)
{
	QueueResult result;

	if (RecoveryInProgress())
	{
		log_record(event_json(e), "an event on a standby goes to the server log");
		return;
	}
	result = queue_event(e);
	if (result == QUEUE_TOO_LARGE && strcmp(e->event, "READ") == 0)
	{
		/* too many subjects for the ring: the table and a count, as a bulk read */
		GdprQueuedEvent bulk = *e;

		bulk.bulk = true;
		bulk.by_row = false;
		bulk.nkeys = 0;
		result = queue_event(&bulk);
	}
	if (result != QUEUE_DONE)
	{
		if (queue != NULL)
		{
			LWLockAcquire(queue->lock, LW_EXCLUSIVE);
			queue->not_queued++;
			LWLockRelease(queue->lock);
		}
		log_record(event_json(e), queue != NULL ? "not queued: the queue is full (gdpr.queue_size)"
				   : "not queued: gdpr is not in shared_preload_libraries");
	}
}

static const char *
copy_nonempty(const char *value)
{
	return value != NULL && value[0] != '\0' ? pstrdup(value) : NULL;
}

/* gdpr.client_addr, else the connection's address, as inet_client_addr() gives it */
static const char *
client_address(void)
{
	static char *connection = NULL;
	static bool known = false;
	char		host[NI_MAXHOST];

	if (gdpr_client_addr != NULL && gdpr_client_addr[0] != '\0')
		return gdpr_client_addr;
	if (known)
		return connection;
	known = true;
	if (MyProcPort == NULL)
		return NULL;
	switch (MyProcPort->raddr.addr.ss_family)
	{
		case AF_INET:
		case AF_INET6:
			break;
		default:
			return NULL;
	}
	host[0] = '\0';
	if (pg_getnameinfo_all(&MyProcPort->raddr.addr, MyProcPort->raddr.salen, host, sizeof(host),
						   NULL, 0, NI_NUMERICHOST | NI_NUMERICSERV) != 0)
		return NULL;
	clean_ipv6_addr(MyProcPort->raddr.addr.ss_family, host);
	connection = MemoryContextStrdup(TopMemoryContext, host);
	return connection;
}

/* The event as one JSON object, for the server log */
static char *
event_json(const GdprQueuedEvent *e)
{
	static const int utc = 0;
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"event\": ");
	escape_json(&buf, e->event);
	appendStringInfo(&buf, ", \"time\": \"%s\"",
					 JsonEncodeDateTime(NULL, TimestampTzGetDatum(e->time), TIMESTAMPTZOID, &utc));
	append_member(&buf, "session_role", e->session_role);
	append_member(&buf, "role", e->role);
	append_member(&buf, "actor", e->actor);
	append_member(&buf, "client_addr", e->client_addr);
	append_member(&buf, "user_agent", e->user_agent);
	append_member(&buf, "application", e->application);
	append_member(&buf, "table", e->table);
	append_member(&buf, "kind", e->kind);
	append_member(&buf, "subject", e->subject);
	if (strcmp(e->event, "READ") == 0)
	{
		/* rows to resolve are the rows' own columns: personal data, never logged */
		if (e->by_row)
			appendStringInfoString(&buf, ", \"ids\": null, \"unresolved\": true");
		else if (!e->bulk)
		{
			appendStringInfoString(&buf, ", \"ids\": [");
			for (int i = 0; i < e->nkeys; i++)
			{
				if (i > 0)
					appendStringInfoString(&buf, ", ");
				escape_json(&buf, e->keys[i]);
			}
			appendStringInfoChar(&buf, ']');
		}
		appendStringInfo(&buf, ", \"rows\": " UINT64_FORMAT ", \"bulk\": %s", e->rows,
						 e->bulk ? "true" : "false");
		if (e->query_id != 0)
			appendStringInfo(&buf, ", \"query_id\": " INT64_FORMAT, e->query_id);
		if (e->aborted)
			appendStringInfoString(&buf, ", \"aborted\": true");
	}
	else
		appendStringInfo(&buf, ", \"detail\": %s", e->detail != NULL ? e->detail : "null");
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

/* , "key": value, or null */
static void
append_member(StringInfo buf, const char *key, const char *value)
{
	appendStringInfo(buf, ", \"%s\": ", key);
	if (value != NULL)
		escape_json(buf, value);
	else
		appendStringInfoString(buf, "null");
}

/* Whether the queue exists: the library was preloaded */
bool
gdpr_queue_available(void)
{
	return queue != NULL;
}

/*
 * The record's layout after its header: a RecordFixed, then each string of
 * EVENT_STRINGS as a byte (1: present) and its text with its NUL, then the
 * keys with their NULs.
 */
typedef struct RecordFixed
{
	TimestampTz time;
	TimestampTz until;
	uint64		rows;
	int64		query_id;
	Oid			relid;
	uint32		flags;
	int32		nkeys;
} RecordFixed;

#define FLAG_BULK		1
#define FLAG_ABORTED	2
#define FLAG_BY_ROW		4

#define EVENT_STRINGS 11

static void
event_strings(const GdprQueuedEvent *e, const char **strings)
{
	strings[0] = e->event;
	strings[1] = e->session_role;
	strings[2] = e->role;
	strings[3] = e->actor;
	strings[4] = e->client_addr;
	strings[5] = e->user_agent;
	strings[6] = e->application;
	strings[7] = e->table;
	strings[8] = e->kind;
	strings[9] = e->subject;
	strings[10] = e->detail;
}

static Size
payload_size(const GdprQueuedEvent *e, const char **strings)
{
	Size		size = sizeof(RecordFixed);

	for (int i = 0; i < EVENT_STRINGS; i++)
		size += 1 + (strings[i] != NULL ? strlen(strings[i]) + 1 : 0);
	for (int i = 0; i < e->nkeys; i++)
		size += strlen(e->keys[i]) + 1;
	return size;
}

static void
encode(const GdprQueuedEvent *e, const char **strings, char *out)
{
	RecordFixed fixed;

	fixed.time = e->time;
	fixed.until = e->until;
	fixed.rows = e->rows;
	fixed.query_id = e->query_id;
	fixed.relid = e->relid;
	fixed.flags = (e->bulk ? FLAG_BULK : 0) | (e->aborted ? FLAG_ABORTED : 0) | (e->by_row ? FLAG_BY_ROW : 0);
	fixed.nkeys = e->nkeys;
	memcpy(out, &fixed, sizeof(RecordFixed));
	out += sizeof(RecordFixed);
	for (int i = 0; i < EVENT_STRINGS; i++)
	{
		*out++ = strings[i] != NULL ? 1 : 0;
		if (strings[i] != NULL)
		{
			Size		len = strlen(strings[i]) + 1;

			memcpy(out, strings[i], len);
			out += len;
		}
	}
	for (int i = 0; i < e->nkeys; i++)
	{
		Size		len = strlen(e->keys[i]) + 1;

		memcpy(out, e->keys[i], len);
		out += len;
	}
}

/* The event of a record copied out of the ring; its strings point into buf */
static void
decode(const char *buf, GdprQueuedEvent *e)
{
	RecordFixed fixed;
	const char *strings[EVENT_STRINGS];
	const char **keys;

	memcpy(&fixed, buf, sizeof(RecordFixed));
	buf += sizeof(RecordFixed);
	for (int i = 0; i < EVENT_STRINGS; i++)
	{
		bool		present = *buf++ == 1;

		strings[i] = present ? buf : NULL;
		if (present)
			buf += strlen(buf) + 1;
	}
	keys = palloc(sizeof(char *) * Max(fixed.nkeys, 1));
	for (int i = 0; i < fixed.nkeys; i++)
	{
		keys[i] = buf;
		buf += strlen(buf) + 1;
	}
	memset(e, 0, sizeof(GdprQueuedEvent));
	e->event = strings[0];
	e->session_role = strings[1];
	e->role = strings[2];
	e->actor = strings[3];
	e->client_addr = strings[4];
	e->user_agent = strings[5];
	e->application = strings[6];
	e->table = strings[7];
	e->kind = strings[8];
	e->subject = strings[9];
	e->detail = strings[10];
	e->time = fixed.time;
	e->until = fixed.until;
	e->rows = fixed.rows;
	e->query_id = fixed.query_id;
	e->relid = fixed.relid;
	e->bulk = (fixed.flags & FLAG_BULK) != 0;
	e->aborted = (fixed.flags & FLAG_ABORTED) != 0;
	e->by_row = (fixed.flags & FLAG_BY_ROW) != 0;
	e->nkeys = fixed.nkeys;
	e->keys = keys;
}

/*
 * Appends one event for the current database.  Never waits but for the
 * lock, never fails: false means the event was not queued.
 */
static QueueResult
queue_event(const GdprQueuedEvent *e)
{
	const char *strings[EVENT_STRINGS];
	Size		len;
	Size		size;
	QueueDatabase *slot;
	Latch	   *latch = NULL;
	bool		queued = false;

	if (queue == NULL)
		return QUEUE_FULL;
	event_strings(e, strings);
	len = payload_size(e, strings);
	size = TYPEALIGN(RECORD_ALIGN, sizeof(RecordHeader) + len);
	if (size > queue->capacity / 4)
		return QUEUE_TOO_LARGE;
	LWLockAcquire(queue->lock, LW_EXCLUSIVE);
	slot = database_slot(MyDatabaseId, true);
	if (slot != NULL)
	{
		Size		at = queue->head % queue->capacity;
		Size		pad = at + size > queue->capacity ? queue->capacity - at : 0;

		if (queue->head - queue->tail + pad + size <= queue->capacity)
		{
			uint64		used = queue->head - queue->tail;
			RecordHeader *h;

			if (pad > 0)
			{
				h = record_at(queue->head);
				h->size = pad;
				h->dboid = InvalidOid;
				h->state = RECORD_PADDING;
				h->len = 0;
				queue->head += pad;
			}
			h = record_at(queue->head);
			h->size = size;
			h->dboid = MyDatabaseId;
			h->state = RECORD_PENDING;
			h->len = len;
			encode(e, strings, (char *) h + sizeof(RecordHeader));
			queue->head += size;
			queue->queued++;

			/*
			 * Only the first record a writer has to take wakes it, or the
			 * launcher to start one, and the record that makes the ring a
			 * quarter full (the writer's pause ends): a wakeup per record
			 * would cost a signal, and the writer waits on its latch also
			 * for locks.
			 */
			if (slot->pending++ == 0 ||
				(used < queue->capacity / 4 && used + pad + size >= queue->capacity / 4))
				latch = slot->writer_latch != NULL ? slot->writer_latch : queue->launcher_latch;
			queued = true;
		}
	}
	LWLockRelease(queue->lock);
	if (latch != NULL)
		SetLatch(latch);
	return queued ? QUEUE_DONE : QUEUE_FULL;
}

/* The slot of a database; with claim, a free one if it has none.  Lock held. */
static QueueDatabase *
database_slot(Oid dboid, bool claim)
{
	QueueDatabase *free_slot = NULL;

	for (int i = 0; i < QUEUE_DATABASES; i++)
	{
		QueueDatabase *s = &queue->db[i];

		if (s->dboid == dboid)
			return s;
		if (free_slot == NULL && s->pending == 0 && s->writer_pid == 0)
			free_slot = s;
	}
	if (!claim || free_slot == NULL)
		return NULL;
	free_slot->dboid = dboid;
	return free_slot;
}

static RecordHeader *
record_at(uint64 pos)
{
	return (RecordHeader *) (queue->ring + pos % queue->capacity);
}

/* Frees the records at the front that are done.  Lock held exclusively. */
static void
advance_tail(void)
{
	while (queue->tail < queue->head)
	{
		RecordHeader *h = record_at(queue->tail);

		if (h->state != RECORD_DONE && h->state != RECORD_PADDING)
			break;
		queue->tail += h->size;
	}
}

/*
 * Marks the pending records of the slot's database in flight, up to a
 * batch, and decodes copies of them into events.  Returns their positions.
 */
static List *
take_records(QueueDatabase *slot, GdprQueuedEvent **events, int *n)
{
	List	   *positions = NIL;
	List	   *copies = NIL;
	Size		bytes = 0;
	ListCell   *lc;

	*n = 0;
	LWLockAcquire(queue->lock, LW_EXCLUSIVE);
	for (uint64 pos = queue->tail; pos < queue->head && *n < BATCH_RECORDS && bytes < BATCH_BYTES;)
	{
		RecordHeader *h = record_at(pos);

		if (h->dboid == slot->dboid && h->state == RECORD_PENDING)
		{
			char	   *copy = palloc(h->len);

			h->state = RECORD_IN_FLIGHT;
			memcpy(copy, (char *) h + sizeof(RecordHeader), h->len);
			copies = lappend(copies, copy);
			positions = lappend(positions, palloc(sizeof(uint64)));
			*(uint64 *) llast(positions) = pos;
			bytes += h->len;
			(*n)++;
		}
		pos += h->size;
	}
	LWLockRelease(queue->lock);
	*events = palloc(sizeof(GdprQueuedEvent) * Max(*n, 1));
	foreach(lc, copies)
		decode(lfirst(lc), &(*events)[foreach_current_index(lc)]);
	return positions;
}

/* The records taken are in the trail (written of them) or in the server log (the rest) */
static void
finish_records(QueueDatabase *slot, List *positions, int written)
{
	ListCell   *lc;

	LWLockAcquire(queue->lock, LW_EXCLUSIVE);
	foreach(lc, positions)
	{
		RecordHeader *h = record_at(*(uint64 *) lfirst(lc));

		h->state = RECORD_DONE;
		slot->pending--;
	}
	queue->written += written;
	queue->logged += list_length(positions) - written;
	advance_tail();
	LWLockRelease(queue->lock);
}

static void
log_record(const char *payload, const char *why)
{
	ereport(LOG,
			(errmsg_internal("%s", payload),
			 errdetail_internal("gdpr: %s", why),
			 errhidestmt(true),
			 errhidecontext(true)));
}

/*
 * The launcher: starts a writer for every database with records and none,
 * and notices the writers that ended.  A writer that ended without ever
 * taking its slot (its database was dropped, it could not connect) leaves
 * records no one will write: they go to the server log.
 */
void
gdpr_queue_start_writers(void)
{
	if (queue == NULL)
		return;
	LWLockAcquire(queue->lock, LW_EXCLUSIVE);
	queue->launcher_latch = MyLatch;
	LWLockRelease(queue->lock);

	for (int i = 0; i < QUEUE_DATABASES; i++)
	{
		QueueDatabase *s = &queue->db[i];
		BackgroundWorkerHandle *handle;
		pid_t		pid;
		bool		wanted;
		Oid			dboid;

		if (writer_handles[i] != NULL &&
			GetBackgroundWorkerPid(writer_handles[i], &pid) == BGWH_STOPPED)
		{
			pfree(writer_handles[i]);
			writer_handles[i] = NULL;
			LWLockAcquire(queue->lock, LW_EXCLUSIVE);
			wanted = s->writer_pid == WRITER_STARTING;
			LWLockRelease(queue->lock);
			if (wanted)
				discard_database(i);
		}

		LWLockAcquire(queue->lock, LW_EXCLUSIVE);
		wanted = s->pending > 0 && s->writer_pid == 0 && writer_handles[i] == NULL;
		if (wanted)
			s->writer_pid = WRITER_STARTING;
		dboid = s->dboid;
		LWLockRelease(queue->lock);
		if (!wanted)
			continue;

		handle = gdpr_start_database_worker("gdpr_queue_writer_main", "gdpr trail writer", dboid);
		if (handle != NULL)
			writer_handles[i] = handle;
		else
		{
			/* no slot: tried again at the next look; sessions go on queueing meanwhile */
			LWLockAcquire(queue->lock, LW_EXCLUSIVE);
			s->writer_pid = 0;
			LWLockRelease(queue->lock);
		}
	}
}

/* The launcher's exit hook: what no writer took goes to the server log */
void
gdpr_queue_launcher_started(void)
{
	if (queue == NULL)
		return;
	/* a launcher before this one may have died between asking for a writer and seeing it start */
	LWLockAcquire(queue->lock, LW_EXCLUSIVE);
	for (int i = 0; i < QUEUE_DATABASES; i++)
		if (queue->db[i].writer_pid == WRITER_STARTING)
			queue->db[i].writer_pid = 0;
	LWLockRelease(queue->lock);
	before_shmem_exit(log_pending, (Datum) 0);
}

static void
log_pending(int code, Datum arg)
{
	int			n;

	LWLockAcquire(queue->lock, LW_EXCLUSIVE);
	queue->launcher_latch = NULL;
	LWLockRelease(queue->lock);
	n = log_records(InvalidOid, "not written to the trail: the server is shutting down");
	if (n > 0)
		ereport(LOG,
				(errmsg("gdpr: %d queued events went to the server log, not to the trail, as the server shut down",
						n)));
}

/* The records of a database no writer can serve go to the server log */
static void
discard_database(int i)
{
	(void) log_records(queue->db[i].dboid, "not written to the trail: no writer could connect to the database");
	LWLockAcquire(queue->lock, LW_EXCLUSIVE);
	queue->db[i].writer_pid = 0;
	LWLockRelease(queue->lock);
}

/*
 * Sends the pending records of a database (InvalidOid: of all) to the
 * server log, marked done.  Logged once the lock is free: sessions
 * queueing meanwhile do not wait for the log.  Returns how many.
 */
static int
log_records(Oid dboid, const char *why)
{
	List	   *copies = NIL;
	ListCell   *lc;
	int			n;

	LWLockAcquire(queue->lock, LW_EXCLUSIVE);
	for (uint64 pos = queue->tail; pos < queue->head;)
	{
		RecordHeader *h = record_at(pos);

		if (h->state == RECORD_PENDING && (!OidIsValid(dboid) || h->dboid == dboid))
		{
			QueueDatabase *slot = database_slot(h->dboid, false);
			char	   *copy = palloc(h->len);

			memcpy(copy, (const char *) h + sizeof(RecordHeader), h->len);
			copies = lappend(copies, copy);
			h->state = RECORD_DONE;
			if (slot != NULL)
				slot->pending--;
			queue->logged++;
		}
		pos += h->size;
	}
	advance_tail();
	LWLockRelease(queue->lock);
	foreach(lc, copies)
	{
		GdprQueuedEvent e;

		decode(lfirst(lc), &e);
		log_record(event_json(&e), why);
	}
	n = list_length(copies);
	list_free_deep(copies);
	return n;
}

/*
 * A database's writer: takes the slot, writes batches while there are
 * records, waits on its latch for more, and leaves once idle for a while
 * or asked to (then after writing what is left).
 */
void
gdpr_queue_writer_main(Datum main_arg)
{
	Oid			dboid = DatumGetObjectId(main_arg);
	QueueDatabase *slot;
	TimestampTz idle_since;

	gdpr_queue_writer = true;
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	pgstat_report_appname("gdpr trail writer");
	/* as in the retention worker (worker.c): a superuser resolves nothing through a path others set */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("default_transaction_isolation", "read committed", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("default_transaction_read_only", "off", PGC_SUSET, PGC_S_OVERRIDE);
	/* a database's settings must not fail every batch; resolving has its own limits */
	SetConfigOption("statement_timeout", "0", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("lock_timeout", "0", PGC_SUSET, PGC_S_OVERRIDE);

	LWLockAcquire(queue->lock, LW_EXCLUSIVE);
	slot = database_slot(dboid, false);
	/* one writer per database: another one that runs keeps it */
	if (slot != NULL && slot->writer_pid > 0)
		slot = NULL;
	if (slot != NULL)
	{
		slot->writer_pid = MyProcPid;
		slot->writer_latch = MyLatch;
	}
	LWLockRelease(queue->lock);
	if (slot == NULL)
		proc_exit(0);
	before_shmem_exit(writer_leaves, PointerGetDatum(slot));

	idle_since = GetCurrentTimestamp();
	for (;;)
	{
		bool		leave = false;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (write_batch(slot))
		{
			idle_since = GetCurrentTimestamp();

			/*
			 * Then a pause while the ring is not pressing: a batch a few
			 * times a second costs the server a fraction of a batch per
			 * arrival, and keeps the trail within a second of the reads.
			 */
			if (!ShutdownRequestPending && !pressing())
			{
				(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
								 WRITER_PAUSE_MS, PG_WAIT_EXTENSION);
				ResetLatch(MyLatch);
			}
			continue;
		}
		if (ShutdownRequestPending)
			break;
		if (GetCurrentTimestamp() >= TimestampTzPlusMilliseconds(idle_since, WRITER_IDLE_MS))
		{
			LWLockAcquire(queue->lock, LW_EXCLUSIVE);
			leave = slot->pending == 0;
			LWLockRelease(queue->lock);
		}
		if (leave)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 1000L,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	proc_exit(0);
}

/* Whether the ring is a quarter full: the writer does not pause */
static bool
pressing(void)
{
	bool		full;

	LWLockAcquire(queue->lock, LW_SHARED);
	full = queue->head - queue->tail > queue->capacity / 4;
	LWLockRelease(queue->lock);
	return full;
}

/* Gives the slot up; records taken and not finished go back to pending */
static void
writer_leaves(int code, Datum arg)
{
	QueueDatabase *slot = (QueueDatabase *) DatumGetPointer(arg);

	LWLockAcquire(queue->lock, LW_EXCLUSIVE);
	for (uint64 pos = queue->tail; pos < queue->head;)
	{
		RecordHeader *h = record_at(pos);

		if (h->dboid == slot->dboid && h->state == RECORD_IN_FLIGHT)
			h->state = RECORD_PENDING;
		pos += h->size;
	}
	slot->writer_pid = 0;
	slot->writer_latch = NULL;
	if (slot->pending == 0)
		slot->dboid = InvalidOid;
	else if (queue->launcher_latch != NULL)
		SetLatch(queue->launcher_latch);
	LWLockRelease(queue->lock);
}

/*
 * Writes one batch in one transaction.  Returns whether there was anything
 * to write.  A batch that fails is written again event by event, each in a
 * transaction of its own: an event that cannot be written (its database
 * lost gdpr, a value the trail refuses) goes to the server log, and holds
 * up neither the others nor the next batch.
 */
static bool
write_batch(QueueDatabase *slot)
{
	static MemoryContext batch_cxt = NULL;
	MemoryContext cxt;
	GdprQueuedEvent *events;
	int			n;
	List	   *positions;
	int			written = 0;

	if (batch_cxt == NULL)
		batch_cxt = AllocSetContextCreate(TopMemoryContext, "gdpr queue batch",
										  ALLOCSET_DEFAULT_SIZES);
	MemoryContextReset(batch_cxt);
	cxt = MemoryContextSwitchTo(batch_cxt);
	positions = take_records(slot, &events, &n);
	if (n == 0)
	{
		MemoryContextSwitchTo(cxt);
		return false;
	}
	pgstat_report_activity(STATE_RUNNING, "gdpr: writing queued events to the trail");
	if (write_events(events, n, batch_cxt))
		written = n;
	else
		for (int i = 0; i < n; i++)
		{
			if (write_events(&events[i], 1, batch_cxt))
				written++;
			else
				log_record(event_json(&events[i]),
						   "not written to the trail: it failed, or gdpr is not installed in the database");
		}
	finish_records(slot, positions, written);
	pgstat_report_activity(STATE_IDLE, NULL);
	MemoryContextSwitchTo(cxt);
	return true;
}

/* The events in one transaction; false, with the error in the server log, if it failed */
static bool
write_events(GdprQueuedEvent *events, int n, MemoryContext cxt)
{
	volatile bool written = false;

	SetCurrentStatementStartTimestamp();
	PG_TRY();
	{
		StartTransactionCommand();
		if (OidIsValid(get_extension_oid("gdpr", true)))
		{
			if (SPI_connect() != SPI_OK_CONNECT)
				elog(ERROR, "SPI_connect failed");
			PushActiveSnapshot(GetTransactionSnapshot());
			insert_events(events, n, cxt);
			PopActiveSnapshot();
			SPI_finish();
			written = true;
		}
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
		written = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	return written;
}

/*
 * A trail row being made: one event, or a run of reads that share their
 * context (see the header comment).
 */
typedef struct TrailRow
{
	GdprQueuedEvent *first;
	TimestampTz time;			/* the earliest of its events' (a long statement ends late) */
	TimestampTz until;			/* the latest of its events' */
	HTAB	   *positions;		/* KeyPosition by key, for a run of reads */
	List	   *keys;			/* char *, in the order of their positions */
	StringInfoData reads;		/* detail.reads so far */
	uint64		rows;
} TrailRow;

typedef struct KeyPosition
{
	const char *key;			/* hash key */
	int			position;		/* 1-based, in related_subject_ids */
} KeyPosition;

typedef struct RunEntry
{
	const char *context;		/* hash key: run_context() */
	TrailRow   *row;
} RunEntry;

/*
 * Inserts the batch's events, as the trail's owner, in one statement planned
 * once per writer (re-planning it for every batch cost more than the
 * writing).
 *
 * An erasure may have committed since a read of its subject was queued, and
 * a subject erased with its row kept (anonymized) can still be read: a key
 * of an erased subject is written as its pseudonym, as the erasure left the
 * trail.  The pseudonyms are computed only for the kinds that have erased
 * subjects at all.  The sealers' lock, FOR UPDATE, orders this with
 * erasures, which take it FOR SHARE before they scrub (chain.c): one that
 * ran first has its mark (gdpr.restriction) committed before the INSERT's
 * snapshot; one that runs later waits for this transaction and scrubs what
 * it wrote (erase.c scrubs reads with the latest snapshot, whatever its
 * isolation level).
 */
static void
insert_events(GdprQueuedEvent *events, int n, MemoryContext cxt)
{
#define ERASED_KEY(key) \
	"(SELECT r.subject_id FROM gdpr.restriction r " \
	"  WHERE r.source OPERATOR(pg_catalog.=) 'erased' AND r.kind OPERATOR(pg_catalog.=) t.kind " \
	"    AND r.subject_id OPERATOR(pg_catalog.=) gdpr._pseudonym('subject' " \
	"        OPERATOR(pg_catalog.||) E'\\x1f' OPERATOR(pg_catalog.||) t.kind " \
	"        OPERATOR(pg_catalog.||) E'\\x1f' OPERATOR(pg_catalog.||) " key "))"
	static const char sql[] =
		"INSERT INTO gdpr.audit_log (event_time, session_role, effective_role, actor, client_addr, "
		"       user_agent, application_name, retention_until, event, table_name, subject_kind, "
		"       subject_id, related_subject_ids, detail) "
		"SELECT t.at, t.srole, t.erole, t.actor, t.addr::pg_catalog.inet, t.agent, t.app, t.until, "
		"       t.event, t.tbl, t.kind, "
		"       CASE WHEN t.kind OPERATOR(pg_catalog.=) ANY ($15) "
		"            THEN COALESCE(" ERASED_KEY("t.subject") ", t.subject) ELSE t.subject END, "
		"       CASE WHEN t.ids IS NULL THEN NULL "
		"            WHEN t.kind OPERATOR(pg_catalog.=) ANY ($15) "
		"            THEN ARRAY(SELECT COALESCE(" ERASED_KEY("i.k") ", i.k) "
		"                         FROM pg_catalog.unnest(t.ids::pg_catalog.text[]) WITH ORDINALITY AS i(k, n) "
		"                        ORDER BY i.n) "
		"            ELSE t.ids::pg_catalog.text[] END, "
		"       t.detail::pg_catalog.jsonb "
		"  FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), "
		"                  pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6), "
		"                  pg_catalog.unnest($7), pg_catalog.unnest($8), pg_catalog.unnest($9), "
		"                  pg_catalog.unnest($10), pg_catalog.unnest($11), pg_catalog.unnest($12), "
		"                  pg_catalog.unnest($13), pg_catalog.unnest($14)) "
		"       AS t(at, srole, erole, actor, addr, agent, app, until, event, tbl, kind, subject, ids, detail)";
#undef ERASED_KEY
	static SPIPlanPtr insert_plan = NULL;
	static SPIPlanPtr kinds_plan = NULL;
	static SPIPlanPtr lock_plan = NULL;
	Oid			argtypes[15];
	Datum		args[15];
	List	   *rows;
	Oid			save_userid;
	int			save_sec_context;
	int			nest;
	bool		isnull;

	for (int i = 0; i < 15; i++)
		argtypes[i] = TEXTARRAYOID;
	argtypes[0] = argtypes[7] = TIMESTAMPTZARRAYOID;

	for (int i = 0; i < n; i++)
		if (events[i].by_row && !events[i].bulk)
			resolve_rows_or_bulk(&events[i], cxt);
	rows = trail_rows(events, n, cxt);
	trail_arrays(rows, args);

	nest = gdpr_become_audit_owner(&save_userid, &save_sec_context);
	if (insert_plan == NULL)
	{
		SPIPlanPtr	plans[3];

		plans[0] = SPI_prepare("SELECT FROM gdpr.audit_seal_state FOR UPDATE", 0, NULL);
		plans[1] = SPI_prepare("SELECT COALESCE(pg_catalog.array_agg(k.kind), '{}') FROM gdpr.subject_kind k "
							   " WHERE EXISTS (SELECT FROM gdpr.restriction r "
							   "                WHERE r.kind OPERATOR(pg_catalog.=) k.kind "
							   "                  AND r.source OPERATOR(pg_catalog.=) 'erased')", 0, NULL);
		plans[2] = SPI_prepare(sql, 15, argtypes);
		for (int i = 0; i < 3; i++)
			if (plans[i] == NULL || SPI_keepplan(plans[i]) != 0)
				elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		lock_plan = plans[0];
		kinds_plan = plans[1];
		insert_plan = plans[2];
	}
	if (SPI_execute_plan(lock_plan, NULL, NULL, false, 0) != SPI_OK_SELECT ||
		SPI_execute_plan(kinds_plan, NULL, NULL, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "SPI_execute_plan failed");
	args[14] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (SPI_execute_plan(insert_plan, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "SPI_execute_plan failed");
	gdpr_leave_role(save_userid, save_sec_context, nest);
}

/* The rows the events make: each event its own, but runs of reads (see the header comment) */
static List *
trail_rows(GdprQueuedEvent *events, int n, MemoryContext cxt)
{
	List	   *rows = NIL;
	HASHCTL		ctl;
	HTAB	   *runs;

	ctl.keysize = sizeof(char *);
	ctl.entrysize = sizeof(RunEntry);
	ctl.hash = string_pointer_hash;
	ctl.match = string_pointer_match;
	ctl.hcxt = cxt;
	runs = hash_create("gdpr runs of reads", 16, &ctl, HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
	for (int i = 0; i < n; i++)
	{
		GdprQueuedEvent *e = &events[i];
		TrailRow   *row = NULL;
		bool		is_read = strcmp(e->event, "READ") == 0;

		if (is_read && !e->bulk)
		{
			const char *context = run_context(e);
			bool		found;
			RunEntry   *run = hash_search(runs, &context, HASH_ENTER, &found);

			if (found)
				row = run->row;
			else
				run->row = NULL;
			if (row == NULL)
			{
				row = new_row(e, cxt);
				run->row = row;
				rows = lappend(rows, row);
			}
		}
		else
		{
			row = new_row(e, cxt);
			rows = lappend(rows, row);
		}
		if (is_read)
			add_read(row, e);
	}
	return rows;
}

static TrailRow *
new_row(GdprQueuedEvent *e, MemoryContext cxt)
{
	TrailRow   *row = palloc0(sizeof(TrailRow));
	HASHCTL		ctl;

	row->first = e;
	row->time = e->time;
	row->until = e->until;
	initStringInfo(&row->reads);
	if (strcmp(e->event, "READ") == 0 && !e->bulk)
	{
		ctl.keysize = sizeof(char *);
		ctl.entrysize = sizeof(KeyPosition);
		ctl.hash = string_pointer_hash;
		ctl.match = string_pointer_match;
		ctl.hcxt = cxt;
		row->positions = hash_create("gdpr subjects of a run", 64, &ctl,
									 HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
	}
	return row;
}

/* What the reads of one run share, as one string */
static const char *
run_context(const GdprQueuedEvent *e)
{
	const char *parts[8] = {e->session_role, e->role, e->actor, e->client_addr, e->user_agent,
	e->application, e->table, e->kind};
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "%u", e->relid);
	for (int i = 0; i < 8; i++)
	{
		appendStringInfoChar(&buf, '\x1f');
		if (parts[i] == NULL)
			appendStringInfoChar(&buf, '\x1e');
		else
			appendStringInfoString(&buf, parts[i]);
	}
	return buf.data;
}

/* One statement's read into its row's detail.reads, its subjects into the row's union */
static void
add_read(TrailRow *row, const GdprQueuedEvent *e)
{
	static const int utc = 0;

	row->time = Min(row->time, e->time);
	row->until = Max(row->until, e->until);
	row->rows += e->rows;
	appendStringInfo(&row->reads, "%s{\"at\": \"%s\", \"rows\": " UINT64_FORMAT,
					 row->reads.len > 0 ? ", " : "",
					 JsonEncodeDateTime(NULL, TimestampTzGetDatum(e->time), TIMESTAMPTZOID, &utc),
					 e->rows);
	if (row->positions != NULL)
	{
		int		   *positions = palloc(sizeof(int) * Max(e->nkeys, 1));
		bool		run = true;

		for (int i = 0; i < e->nkeys; i++)
		{
			bool		found;
			KeyPosition *p = hash_search(row->positions, &e->keys[i], HASH_ENTER, &found);

			if (!found)
			{
				row->keys = lappend(row->keys, (char *) e->keys[i]);
				p->position = list_length(row->keys);
			}
			positions[i] = p->position;
			run &= i == 0 || positions[i] == positions[i - 1] + 1;
		}

		/*
		 * Consecutive positions (a statement's subjects all new to the row,
		 * as in a large read) as where they start and how many: a list of
		 * ten thousand numbers cost more to store than the read.
		 */
		if (run && e->nkeys > 1)
			appendStringInfo(&row->reads, ", \"first\": %d, \"count\": %d", positions[0], e->nkeys);
		else
		{
			appendStringInfoString(&row->reads, ", \"subjects\": [");
			for (int i = 0; i < e->nkeys; i++)
				appendStringInfo(&row->reads, "%s%d", i > 0 ? ", " : "", positions[i]);
			appendStringInfoChar(&row->reads, ']');
		}
		pfree(positions);
	}
	else
		appendStringInfoString(&row->reads, e->unresolved ? ", \"bulk\": true, \"unresolved\": true"
							   : ", \"bulk\": true");
	if (e->query_id != 0)
		appendStringInfo(&row->reads, ", \"query_id\": " INT64_FORMAT, e->query_id);
	if (e->aborted)
		appendStringInfoString(&row->reads, ", \"aborted\": true");
	appendStringInfoChar(&row->reads, '}');
}

/* The rows as the INSERT's fourteen arrays, one per column */
static void
trail_arrays(List *rows, Datum *args)
{
	int			n = list_length(rows);
	Datum	   *values[14];
	bool	   *nulls[14];
	int			dims[1] = {n};
	int			lbs[1] = {1};
	ListCell   *lc;

	for (int c = 0; c < 14; c++)
	{
		values[c] = palloc0(sizeof(Datum) * Max(n, 1));
		nulls[c] = palloc0(sizeof(bool) * Max(n, 1));
	}
	foreach(lc, rows)
	{
		TrailRow   *row = lfirst(lc);
		GdprQueuedEvent *e = row->first;
		int			i = foreach_current_index(lc);
		const char *text[14] = {NULL, e->session_role, e->role, e->actor, e->client_addr,
			e->user_agent, e->application, NULL, e->event, e->table, e->kind, e->subject,
		NULL, NULL};

		if (strcmp(e->event, "READ") == 0)
		{
			text[12] = row->positions != NULL ? ids_literal(row->keys) : NULL;
			text[13] = psprintf("{\"reads\": [%s], \"rows\": " UINT64_FORMAT "%s}", row->reads.data,
								row->rows, row->positions == NULL ? ", \"bulk\": true" : "");
		}
		else
			text[13] = e->detail;
		values[0][i] = TimestampTzGetDatum(row->time);
		values[7][i] = TimestampTzGetDatum(row->until);
		for (int c = 1; c < 14; c++)
		{
			if (c == 7)
				continue;
			nulls[c][i] = text[c] == NULL;
			if (text[c] != NULL)
				values[c][i] = CStringGetTextDatum(text[c]);
		}
	}
	for (int c = 0; c < 14; c++)
	{
		bool		ts = c == 0 || c == 7;

		args[c] = PointerGetDatum(construct_md_array(values[c], nulls[c], 1, dims, lbs,
													 ts ? TIMESTAMPTZOID : TEXTOID,
													 ts ? sizeof(TimestampTz) : -1,
													 ts ? FLOAT8PASSBYVAL : false,
													 ts ? TYPALIGN_DOUBLE : TYPALIGN_INT));
	}
}

/* The keys as a text[] literal */
static char *
ids_literal(List *keys)
{
	StringInfoData buf;
	ListCell   *lc;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	foreach(lc, keys)
	{
		const char *k = lfirst(lc);

		if (foreach_current_index(lc) > 0)
			appendStringInfoChar(&buf, ',');
		appendStringInfoChar(&buf, '"');
		for (; *k != '\0'; k++)
		{
			if (*k == '"' || *k == '\\')
				appendStringInfoChar(&buf, '\\');
			appendStringInfoChar(&buf, *k);
		}
		appendStringInfoChar(&buf, '"');
	}
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

static uint32
string_pointer_hash(const void *key, Size keysize)
{
	const char *s = *(char *const *) key;

	return hash_bytes((const unsigned char *) s, strlen(s));
}

static int
string_pointer_match(const void *key1, const void *key2, Size keysize)
{
	return strcmp(*(char *const *) key1, *(char *const *) key2);
}

/*
 * A read of a table whose rows name their subject only through other
 * tables carries the rows' starting columns (reads.c): the subjects are
 * found now, by the map's paths, as the table's owner, and the read names
 * them like any other.  The paths are those of the map at the time of
 * writing, against the data as it is then: a row re-parented between the
 * read and its writing (a second or so, as long as the writer keeps up) is
 * attributed to its new subject.  A table no longer in the map cannot say:
 * the read becomes bulk.
 */
/*
 * Resolves in a subtransaction, under a lock timeout: a path a session
 * keeps locked, or a table owner's type whose input fails, makes the read
 * bulk and unresolved (it still names the table and its rows), and blocks
 * no one's events behind it.
 */
static void
resolve_rows_or_bulk(GdprQueuedEvent *e, MemoryContext cxt)
{
	ResourceOwner owner = CurrentResourceOwner;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		int			nest = NewGUCNestLevel();

		(void) set_config_option("lock_timeout", "1s", PGC_SUSET, PGC_S_OVERRIDE, GUC_ACTION_SAVE,
								 true, 0, false);
		(void) set_config_option("statement_timeout", "10s", PGC_SUSET, PGC_S_OVERRIDE,
								 GUC_ACTION_SAVE, true, 0, false);
		resolve_rows(e, cxt);
		AtEOXact_GUC(true, nest);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		EmitErrorReport();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		e->by_row = false;
		e->bulk = true;
		e->unresolved = true;
		e->nkeys = 0;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
}

static void
resolve_rows(GdprQueuedEvent *e, MemoryContext cxt)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1];
	GdprTableMap *map = gdpr_load_table_map(e->relid, CurrentMemoryContext);
	StringInfoData sql;
	StringInfoData rows;
	ListCell   *lc;
	Datum		ids;
	bool		isnull;
	Datum	   *keys;
	int			nkeys;

	e->by_row = false;
	if (map == NULL)
	{
		e->bulk = true;
		e->unresolved = true;
		e->nkeys = 0;
		return;
	}
	initStringInfo(&rows);
	appendStringInfoChar(&rows, '[');
	for (int i = 0; i < e->nkeys; i++)
		appendStringInfo(&rows, "%s%s", i > 0 ? ", " : "", e->keys[i]);
	appendStringInfoChar(&rows, ']');
	args[0] = CStringGetTextDatum(rows.data);

	initStringInfo(&sql);
	appendStringInfoString(&sql, "SELECT ARRAY(SELECT DISTINCT k FROM (SELECT NULL::pg_catalog.text AS k");
	foreach(lc, map->paths)
		appendStringInfo(&sql, " UNION ALL SELECT %s FROM pg_catalog.jsonb_populate_recordset(NULL::%s, "
						 "$1::pg_catalog.jsonb) AS gdpr_row",
						 gdpr_subject_sql(map, lfirst(lc), "gdpr_row"), map->qualified_name);
	appendStringInfoString(&sql, ") x WHERE k IS NOT NULL ORDER BY k)");
	/* conditions, operators and the columns' input functions run as the table's owner, never as the writer */
	if (gdpr_execute_as_role(gdpr_relation_owner(e->relid), NULL, sql.data, 1, argtypes, args, NULL,
							 true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "SPI_execute_with_args failed");
	ids = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	deconstruct_array(DatumGetArrayTypeP(ids), TEXTOID, -1, false, TYPALIGN_INT, &keys, NULL, &nkeys);
	/* in the batch's memory: a batch that fails is written again event by event */
	{
		MemoryContext old = MemoryContextSwitchTo(cxt);
		const char **copies = palloc(sizeof(char *) * Max(nkeys, 1));

		for (int i = 0; i < nkeys; i++)
			copies[i] = TextDatumGetCString(keys[i]);
		MemoryContextSwitchTo(old);
		e->keys = copies;
		e->nkeys = nkeys;
	}
}

/* gdpr._queue_stats(): what the view gdpr.event_queue shows */
Datum
gdpr_queue_stats(PG_FUNCTION_ARGS)
{
	TupleDesc	desc;
	Datum		values[7];
	bool		nulls[7] = {false};
	uint64		head,
				tail;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	if (queue == NULL)
	{
		memset(nulls, true, sizeof(nulls));
		values[0] = BoolGetDatum(false);
		nulls[0] = false;
		PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
	}
	LWLockAcquire(queue->lock, LW_SHARED);
	values[0] = BoolGetDatum(true);
	values[1] = Int64GetDatum((int64) queue->capacity);
	head = queue->head;
	tail = queue->tail;
	values[2] = Int64GetDatum((int64) (head - tail));
	values[3] = Int64GetDatum((int64) queue->queued);
	values[4] = Int64GetDatum((int64) queue->written);
	values[5] = Int64GetDatum((int64) queue->not_queued);
	values[6] = Int64GetDatum((int64) queue->logged);
	LWLockRelease(queue->lock);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}
