/*-------------------------------------------------------------------------
 *
 * chain.c
 *		The tamper-evident audit trail: events sealed into a SHA-256 hash
 *		chain, redaction by erasure, verification, external digests, and the
 *		guard that refuses changes to the trail outside our own paths.
 *
 * Sealing is off the hot path.  The audit trigger only inserts; a sealer
 * (the background worker, or gdpr.seal_audit() on demand) later gives each
 * committed event the next sequence number and records, in gdpr.audit_seal:
 *
 *	 personal_digest = SHA-256(nonce || the event's personal fields)
 *	 event_digest	 = SHA-256(the other fields || personal_digest)
 *	 chain_hash		 = SHA-256(previous chain_hash || seq || event_digest ||
 *							   retention_until)
 *
 * The personal fields (subject key, row key, related subjects, old and new
 * values, detail) enter the chain only through their digest, salted with a
 * random nonce.  Erasure removes the values and the nonce (what is left can
 * no longer be matched against a guess of the values) and marks the seal row
 * redacted by the erasure's pseudonym; the ERASE event, itself chained, says
 * how many sealed events it redacted, so a redaction nobody asked for shows.
 *
 * Sealers serialize on the single row of gdpr.audit_seal_state; writers never
 * touch it.  An event is sealed once it is visible, in event_id order within
 * a batch, so the chain follows commit order batch by batch.  The state's
 * frontier (every event below it is sealed) advances only past events no
 * transaction can still be writing: the identity value last handed out is
 * noted with the transactions then holding a write lock on gdpr.audit_log,
 * and trusted once they have all ended.  Sealing therefore needs READ
 * COMMITTED: a later snapshot must see what those transactions committed.
 *
 * retention_until is chained on its own as well as inside the event digest:
 * once the event is purged, the seal row's copy is what says the event was
 * allowed to go.
 *
 * Purging drops expired events; their seal rows stay, digests only, so the
 * chain still verifies across them, until a whole prefix of the chain has
 * expired: then it is replaced by a checkpoint from which verification
 * starts.  The checkpoint keeps its last link (the hash before it, the
 * event digest and retention_until), so a checkpoint made up from a seal
 * row whose event has not expired does not verify.
 *
 * UPDATE, DELETE and TRUNCATE of the trail and its seal tables are refused
 * by gdpr.audit_guard() unless gdpr_audit_maintenance is set, which only
 * this file and erasure's scrub do, for the length of one operation.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "common/cryptohash.h"
#include "common/sha2.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "gdpr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "port/pg_bswap.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(gdpr_seal_audit);
PG_FUNCTION_INFO_V1(gdpr_verify_audit);
PG_FUNCTION_INFO_V1(gdpr_audit_digest);
PG_FUNCTION_INFO_V1(gdpr_audit_guard);
PG_FUNCTION_INFO_V1(gdpr_purge_audit_rows);
PG_FUNCTION_INFO_V1(gdpr_move_default_events);

/* Set while our own code changes the trail; see gdpr_audit_guard() */
bool		gdpr_audit_maintenance = false;

#define HASH_LEN	PG_SHA256_DIGEST_LENGTH
#define NONCE_LEN	16

/*
 * The fields of an event, in digest order: first those that stay as
 * written (N_PUBLIC), then those erasure may change (the personal ones).
 */
#define EVENT_COLUMNS \
	"a.event_id, a.event_time, a.event, a.success, a.table_name, a.changed_columns, a.txid, " \
	"a.session_role, a.effective_role, a.actor, a.client_addr, a.user_agent, a.application_name, " \
	"a.retention_until, " \
	"a.subject_kind, a.subject_id, a.related_subject_ids, a.row_key, a.old_values, a.new_values, a.detail"
#define N_PUBLIC	14
#define N_COLUMNS	21

/* The last link of the chain: the newest seal row, else the newest checkpoint, else nothing */
#define CHAIN_END \
	"SELECT seq, chain_hash FROM (" \
	"  (SELECT seq, chain_hash FROM gdpr.audit_seal ORDER BY seq DESC LIMIT 1) UNION ALL " \
	"  (SELECT seq, chain_hash FROM gdpr.audit_checkpoint ORDER BY seq DESC LIMIT 1) UNION ALL " \
	"  SELECT 0, pg_catalog.decode(pg_catalog.repeat('00', 32), 'hex')) c " \
	"ORDER BY seq DESC LIMIT 1"

/* Turns events of one SPI result into digests */
typedef struct Digester
{
	pg_cryptohash_ctx *sha;
	StringInfoData buf;
	int			first;			/* attribute number of event_id in the result */
	Datum	   *values;			/* the current row, deformed once (by attribute number - 1) */
	bool	   *nulls;
	Oid			types[N_COLUMNS];
	FmgrInfo	out[N_COLUMNS];
} Digester;

/* One row of gdpr.audit_seal with its event, if the event is still there */
typedef struct SealRow
{
	int64		seq;
	int64		event_id;
	uint8		event_digest[HASH_LEN];
	uint8		chain_hash[HASH_LEN];
	uint8		personal_digest[HASH_LEN];
	uint8		nonce[NONCE_LEN];
	bool		has_nonce;
	char	   *redacted_by;
	TimestampTz retention_until;
	bool		expired;
	bool		present;
	bool		digest_ok;		/* the event, if present, matches the digests */
	bool		personal_ok;
	uint8		recomputed[HASH_LEN];	/* the event's digest as it is now */
	bool		is_erase;
	char	   *erase_pseudonym;
	int64		erase_redacted;
} SealRow;

/* Redactions seen per erasure pseudonym during a verification */
typedef struct Redactions
{
	char		pseudonym[NAMEDATALEN * 2];
	int64		count;
	int64		unexpired;		/* of count, those whose retention has not ended */
	int64		folded;			/* redacted rows folded into the checkpoint */
	int64		first_seq;
	int64		first_event_id;
	bool		erase_seen;
	int64		erase_says;
} Redactions;

/* Where sealing stands: the sealers' state row and the end of the chain */
typedef struct SealState
{
	int64		frontier;		/* every event below it is sealed */
	Datum		pending_upto;	/* identity values handed out to the writers noted */
	bool		pending_null;
	Datum		pending_writers;	/* int8[]: transactions writing when noted */
	int64		safe;			/* the frontier may pass this, or -1 */
	int64		seq;			/* the chain's last sequence number */
	uint8		prev[HASH_LEN]; /* and its hash */
} SealState;

static void read_seal_state(SealState *st);
static int64 seal_events(SealState *st, int32 max_events, int64 *first_left);
static void seal_one(SealState *st, Digester *d, SPIPlanPtr insert, MemoryContext rowcxt);
static void write_seal_state(const SealState *st);

/* Where gdpr_verify_audit() stands while it walks the chain */
typedef struct Verify
{
	MemoryContext callercxt;
	TimestampTz now;			/* what has expired is judged by this clock */
	Digester	d;
	HTAB	   *redactions;		/* Redactions, by erasure pseudonym */
	int64		digest_seq;		/* a saved digest's sequence number, or -1 */
	uint8		digest_hash[HASH_LEN];
	const char *digest_status;
	uint8		prev[HASH_LEN]; /* the last link checked */
	int64		from_seq;		/* the checkpoint the walk starts from */
	int64		expected;		/* the sequence number the next row must have */
	int64		checked;
	int64		redacted;
	int64		purged;
	Portal		portal;			/* the seal rows, in order */
	MemoryContext rowcxt;		/* holds one batch of them */
	SealRow    *rows;
	int			nrows;
	int			pos;
	bool		exhausted;
} Verify;

static void read_saved_digest(Jsonb *saved, int64 *seq, uint8 *hash);
static const char *digest_before_chain(int64 seq, const uint8 *hash);
static HTAB *redactions_table(void);
static bool next_seal_row(Verify *v, SealRow **row, SealRow **next);
static const char *check_seal_row(Verify *v, const SealRow *r, const SealRow *next, uint8 *chain,
								  char **detail);
static void count_seal_row(Verify *v, const SealRow *r);
static Jsonb *check_chain_end(Verify *v, bool have_digest);
static Jsonb *check_redactions(Verify *v);
static Jsonb *check_capture(Verify *v);
static Jsonb *verify_verdict(Verify *v, const SealRow *bad, const char *problem, const char *detail);

static int	execute_maintenance(const char *sql, int nargs, Oid *argtypes, Datum *values,
								const char *nulls);
static void digester_init(Digester *d, TupleDesc desc, int first);
static void sha256(Digester *d, const void *data, size_t len, uint8 *out);
static void deform(Digester *d, HeapTuple tup, TupleDesc desc);
static void event_digests(Digester *d, const uint8 *nonce, const uint8 *personal_in,
						  uint8 *personal_out, uint8 *event_out);
static void append_field(Digester *d, int i, Datum value, bool isnull);
static void chain_step(Digester *d, const uint8 *prev, int64 seq, const uint8 *event_digest,
					   TimestampTz retention_until, uint8 *out);
static Oid	audit_log_oid(void);
static bool writers_ended(Datum pending);
static Datum current_writers(void);
static bytea *to_bytea(const uint8 *data, size_t len);
static void from_bytea(Datum d, uint8 *out, size_t len);
static char *hex(const uint8 *data, size_t len);
static bool text_equal_cstr(Datum t, const char *s);
static void read_seal_row(SealRow *r, HeapTuple tup, TupleDesc desc, Digester *d, TimestampTz now);
static void redaction_init(Redactions *red);
static void lock_seal_state(const char *strength);
static int64 latest_checkpoint(uint8 *hash, TimestampTz now, char **problem);
static void load_folded_redactions(HTAB *redactions, int64 checkpoint_seq);
static int64 first_unsealed(TimestampTz now);
static Jsonb *verdict(bool ok, int64 checked, int64 last_seq, const uint8 *last_hash,
					  int64 from_seq, int64 redacted, int64 purged, const char *digest_status,
					  const SealRow *bad, const char *problem, const char *detail);

/*
 * gdpr.seal_audit(max_events int DEFAULT 10000): seals up to max_events
 * committed events; returns how many.
 */
Datum
gdpr_seal_audit(PG_FUNCTION_ARGS)
{
	int32		max_events = PG_GETARG_INT32(0);
	SealState	st;
	Oid			save_userid;
	int			save_sec_context;
	int			nest;
	int64		first_left = -1;
	int64		sealed;

	if (max_events < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_events must be at least 1")));
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TRANSACTION_STATE),
				 errmsg("gdpr.seal_audit() must run in a READ COMMITTED transaction"),
				 errhint("Events committed after this transaction's snapshot would be missed; call it on its own.")));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	nest = gdpr_become_audit_owner(&save_userid, &save_sec_context);
	read_seal_state(&st);
	sealed = seal_events(&st, max_events, &first_left);

	/* everything below the frontier is sealed: what was left, and what may still come */
	if (st.safe >= 0)
	{
		int64		next = st.safe + 1;

		if (first_left >= 0 && first_left < next)
			next = first_left;
		st.frontier = Max(st.frontier, next);
	}
	write_seal_state(&st);
	gdpr_leave_role(save_userid, save_sec_context, nest);
	SPI_finish();
	PG_RETURN_INT64(sealed);
}

/*
 * Locks the sealers' state and reads where sealing stands.
 *
 * The end of the chain is read from the chain itself, so a restored dump
 * (whose state row is not dumped) or a state row made before the restore
 * brought the seal rows cannot disagree with it.  The state row holds only
 * the frontier; locking it serializes sealers, and writers never touch it.
 * Read after the lock: a sealer that waited sees what the one before it
 * wrote.
 */
static void
read_seal_state(SealState *st)
{
	HeapTuple	state;
	TupleDesc	state_desc;
	bool		isnull;

	lock_seal_state("UPDATE");
	if (SPI_execute("SELECT frontier, pending_upto, pending_writers FROM gdpr.audit_seal_state",
					false, 0) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "gdpr.audit_seal_state must hold exactly one row");
	state = SPI_copytuple(SPI_tuptable->vals[0]);
	state_desc = CreateTupleDescCopy(SPI_tuptable->tupdesc);
	st->frontier = DatumGetInt64(SPI_getbinval(state, state_desc, 1, &isnull));
	st->pending_upto = SPI_getbinval(state, state_desc, 2, &st->pending_null);
	st->pending_writers = SPI_getbinval(state, state_desc, 3, &isnull);
	st->safe = -1;

	/*
	 * Not read-only: a snapshot taken after the lock, so a sealer that waited
	 * for another sees the seal rows it committed.
	 */
	if (SPI_execute(CHAIN_END, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "SPI_execute failed");
	st->seq = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	from_bytea(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull), st->prev, HASH_LEN);

	/*
	 * Every identity value up to pending_upto went to a transaction that was
	 * writing when it was noted; once they have all ended, their events are
	 * visible (or gone) and the frontier may pass them.
	 */
	if (!st->pending_null && writers_ended(st->pending_writers))
	{
		st->safe = DatumGetInt64(st->pending_upto);
		st->pending_null = true;
	}
	if (st->pending_null)
	{
		int64		handed_out;

		if (SPI_execute("SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END "
						"  FROM gdpr.audit_log_event_id_seq", true, 1) != SPI_OK_SELECT)
			elog(ERROR, "SPI_execute failed");
		handed_out = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		/* read after the sequence: a writer holding an older value holds its lock already */
		st->pending_writers = current_writers();
		if (st->pending_writers == (Datum) 0)
			st->safe = Max(st->safe, handed_out);
		else
		{
			st->pending_upto = Int64GetDatum(handed_out);
			st->pending_null = false;
		}
	}
}

/*
 * Seals up to max_events unsealed events from the frontier on, in order,
 * extending the chain; *first_left gets the first event left for the next
 * call.  Inserting seal rows needs no exemption: the guard refuses only
 * changes.
 */
static int64
seal_events(SealState *st, int32 max_events, int64 *first_left)
{
	Oid			argtypes[7] = {INT8OID, INT8OID, TIMESTAMPTZOID, BYTEAOID, BYTEAOID, BYTEAOID, BYTEAOID};
	Oid			fargtypes[2] = {INT8OID, INT8OID};
	Datum		fargs[2] = {Int64GetDatum(st->frontier), Int64GetDatum((int64) max_events + 1)};
	Digester	d;
	SPIPlanPtr	insert;
	SPIPlanPtr	scan;
	Portal		portal;
	int64		sealed = 0;
	bool		done = false;

	/* a row's field texts and digests go with it: a large max_events must not pile them up */
	MemoryContext rowcxt = AllocSetContextCreate(CurrentMemoryContext, "gdpr seal row",
												 ALLOCSET_DEFAULT_SIZES);

	insert = SPI_prepare("INSERT INTO gdpr.audit_seal (seq, event_id, retention_until, nonce, "
						 "personal_digest, event_digest, chain_hash) VALUES ($1, $2, $3, $4, $5, $6, $7)",
						 7, argtypes);
	if (insert == NULL)
		elog(ERROR, "SPI_prepare failed");

	/*
	 * An event that expired unsealed stays out of the chain.  After a restore
	 * the frontier starts again from the first event (the state row is not
	 * dumped): the expired events whose seal rows a checkpoint folded in must
	 * not be sealed a second time.
	 */
	/*
	 * With the LIMIT, the events are walked from the frontier along each
	 * partition's key, and each is looked up in the seal's: the cost of a
	 * call follows what it seals, not the backlog behind it.
	 */
	scan = SPI_prepare("SELECT " EVENT_COLUMNS " FROM gdpr.audit_log a "
					   " WHERE a.event_id >= $1 AND a.retention_until >= pg_catalog.now() "
					   "   AND NOT EXISTS (SELECT FROM gdpr.audit_seal s WHERE s.event_id = a.event_id) "
					   " ORDER BY a.event_id LIMIT $2",
					   2, fargtypes);
	if (scan == NULL)
		elog(ERROR, "SPI_prepare failed");
	/* not read-only: a fresh snapshot, taken after the writers were noted */
	portal = SPI_cursor_open(NULL, scan, fargs, NULL, false);

	d.sha = NULL;
	while (!done)
	{
		SPITupleTable *tuptable;
		uint64		n;

		SPI_cursor_fetch(portal, true, 1000);
		tuptable = SPI_tuptable;
		n = SPI_processed;
		if (n == 0)
			break;
		if (d.sha == NULL)
			digester_init(&d, tuptable->tupdesc, 1);
		for (uint64 i = 0; i < n; i++)
		{
			deform(&d, tuptable->vals[i], tuptable->tupdesc);
			if (sealed >= max_events)
			{
				*first_left = DatumGetInt64(d.values[0]);
				done = true;
				break;
			}
			CHECK_FOR_INTERRUPTS();
			seal_one(st, &d, insert, rowcxt);
			sealed++;
		}
		SPI_freetuptable(tuptable);
	}
	SPI_cursor_close(portal);
	if (d.sha != NULL)
		pg_cryptohash_free(d.sha);
	return sealed;
}

/* Seals the event d holds: a fresh nonce, its digests, the next link */
static void
seal_one(SealState *st, Digester *d, SPIPlanPtr insert, MemoryContext rowcxt)
{
	uint8		nonce[NONCE_LEN];
	uint8		personal[HASH_LEN];
	uint8		event_digest[HASH_LEN];
	uint8		chain[HASH_LEN];
	Datum		values[7];
	MemoryContext old;

	if (!pg_strong_random(nonce, NONCE_LEN))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate a random nonce")));
	old = MemoryContextSwitchTo(rowcxt);
	event_digests(d, nonce, NULL, personal, event_digest);
	st->seq++;
	chain_step(d, st->prev, st->seq, event_digest, DatumGetTimestampTz(d->values[N_PUBLIC - 1]), chain);
	memcpy(st->prev, chain, HASH_LEN);

	values[0] = Int64GetDatum(st->seq);
	values[1] = d->values[0];
	values[2] = d->values[N_PUBLIC - 1];
	values[3] = PointerGetDatum(to_bytea(nonce, NONCE_LEN));
	values[4] = PointerGetDatum(to_bytea(personal, HASH_LEN));
	values[5] = PointerGetDatum(to_bytea(event_digest, HASH_LEN));
	values[6] = PointerGetDatum(to_bytea(chain, HASH_LEN));
	MemoryContextSwitchTo(old);
	if (SPI_execute_plan(insert, values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "SPI_execute_plan failed");
	MemoryContextReset(rowcxt);
}

/* Writes the frontier, and the writers it waits for, back */
static void
write_seal_state(const SealState *st)
{
	Oid			uargtypes[3] = {INT8OID, INT8OID, INT8ARRAYOID};
	Datum		uvalues[3] = {Int64GetDatum(st->frontier), st->pending_upto, st->pending_writers};
	char		unulls[3] = {' ', st->pending_null ? 'n' : ' ', st->pending_null ? 'n' : ' '};

	if (execute_maintenance("UPDATE gdpr.audit_seal_state SET frontier = $1, pending_upto = $2, "
							"       pending_writers = $3",
							3, uargtypes, uvalues, unulls) != SPI_OK_UPDATE)
		elog(ERROR, "SPI_execute_with_args failed");
}

/*
 * gdpr_verify_audit(digest jsonb DEFAULT NULL): recomputes the chain from
 * the latest checkpoint (or the start) and checks every sealed event still
 * there against its digests.  With a digest saved earlier from
 * gdpr_audit_digest(), also checks that the chain still passes through it.
 */
Datum
gdpr_verify_audit(PG_FUNCTION_ARGS)
{
	Jsonb	   *saved = PG_ARGISNULL(0) ? NULL : PG_GETARG_JSONB_P(0);
	Verify		v;
	SPIPlanPtr	plan;
	Oid			argtypes[1] = {INT8OID};
	Datum		args[1];
	char	   *checkpoint_problem = NULL;
	uint8		checkpoint_hash[HASH_LEN];
	Jsonb	   *result = NULL;
	Oid			save_userid;
	int			save_sec_context;
	int			nest;

	memset(&v, 0, sizeof(v));
	v.callercxt = CurrentMemoryContext;

	/*
	 * What has expired is judged by the clock after the snapshot was taken:
	 * a purge this snapshot sees judged by a clock no later than this one.
	 * The transaction's start may lie before a purge it sees.
	 */
	v.now = GetCurrentTimestamp();
	v.digest_seq = -1;
	v.digest_status = saved == NULL ? "none" : "not reached";

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	nest = gdpr_become_audit_owner(&save_userid, &save_sec_context);
	/* the events are sorted by sequence number: in memory, not on disk (restored on leaving) */
	(void) set_config_option("work_mem", "262144", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	if (saved != NULL)
		read_saved_digest(saved, &v.digest_seq, v.digest_hash);

	/* start from the latest checkpoint, or from nothing */
	v.from_seq = latest_checkpoint(v.prev, v.now, &checkpoint_problem);
	memcpy(checkpoint_hash, v.prev, HASH_LEN);
	v.expected = v.from_seq + 1;
	if (saved != NULL && v.digest_seq <= v.from_seq)
		v.digest_status = digest_before_chain(v.digest_seq, v.digest_hash);
	v.redactions = redactions_table();
	load_folded_redactions(v.redactions, v.from_seq);

	plan = SPI_prepare("SELECT s.seq, s.event_id, s.event_digest, s.chain_hash, s.personal_digest, "
					   "       s.nonce, s.redacted_by, s.retention_until, "
					   "       a.event_id IS NOT NULL, " EVENT_COLUMNS ", "
					   "       CASE WHEN a.event IN ('ERASE', 'ERASE_REPLAY') "
					   "            THEN (a.detail->>'sealed_events_redacted')::pg_catalog.int8 END "
					   "  FROM gdpr.audit_seal s LEFT JOIN gdpr.audit_log a ON a.event_id = s.event_id "
					   " WHERE s.seq > $1 ORDER BY s.seq",
					   1, argtypes);
	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed");
	args[0] = Int64GetDatum(v.from_seq);
	v.portal = SPI_cursor_open(NULL, plan, args, NULL, true);
	v.rowcxt = AllocSetContextCreate(CurrentMemoryContext, "gdpr verify rows", ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		SealRow    *r;
		SealRow    *next;
		uint8		chain[HASH_LEN];
		const char *problem;
		char	   *detail = NULL;

		if (!next_seal_row(&v, &r, &next))
			break;
		CHECK_FOR_INTERRUPTS();
		problem = check_seal_row(&v, r, next, chain, &detail);
		if (problem == NULL && v.digest_seq == r->seq)
		{
			if (memcmp(chain, v.digest_hash, HASH_LEN) != 0)
			{
				problem = "rewritten";
				detail = psprintf("the chain no longer passes through the saved digest at sequence number " INT64_FORMAT,
								  v.digest_seq);
			}
			else
				v.digest_status = "matched";
		}
		if (problem != NULL)
		{
			MemoryContextSwitchTo(v.callercxt);
			result = verify_verdict(&v, r, problem, detail);
			break;
		}
		count_seal_row(&v, r);
	}
	SPI_cursor_close(v.portal);
	if (v.d.sha != NULL)
		pg_cryptohash_free(v.d.sha);
	MemoryContextSwitchTo(v.callercxt);

	/* the checkpoint comes first in the chain, so does its verdict */
	if (checkpoint_problem != NULL)
		result = verdict(false, 0, v.from_seq, checkpoint_hash, v.from_seq, 0, 0, v.digest_status, NULL,
						 "rewritten", checkpoint_problem);
	if (result == NULL)
		result = check_chain_end(&v, saved != NULL);
	if (result == NULL)
		result = check_redactions(&v);
	if (result == NULL)
		result = check_capture(&v);
	if (result == NULL)
		result = verify_verdict(&v, NULL, NULL, NULL);
	gdpr_leave_role(save_userid, save_sec_context, nest);
	/* SPI calls leave SPI's context current: the result must outlive SPI_finish */
	MemoryContextSwitchTo(v.callercxt);
	result = DatumGetJsonbPCopy(JsonbPGetDatum(result));
	SPI_finish();
	PG_RETURN_JSONB_P(result);
}

/* The sequence number and hash of a digest gdpr_audit_digest() returned */
static void
read_saved_digest(Jsonb *saved, int64 *seq, uint8 *hash)
{
	Oid			jtypes[1] = {JSONBOID};
	Datum		jargs[1] = {JsonbPGetDatum(saved)};
	char	   *hash_text;
	bool		isnull;

	if (SPI_execute_with_args("SELECT CASE WHEN pg_catalog.jsonb_typeof($1->'seq') = 'number' "
							  "            THEN ($1->>'seq')::pg_catalog.numeric::pg_catalog.int8 END, "
							  "       CASE WHEN $1->>'hash' ~ '^[0-9a-f]{64}$' THEN $1->>'hash' END",
							  1, jtypes, jargs, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed");
	*seq = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	hash_text = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	if (isnull || *seq < 0 || hash_text == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("digest must be an object with \"seq\" and a 64-digit hex \"hash\""),
				 errhint("Pass what gdpr_audit_digest() returned.")));
	hex_decode(hash_text, HASH_LEN * 2, (char *) hash);
}

/*
 * The status of a digest at or before the latest checkpoint: every chain
 * starts from the empty one, and a checkpoint may still carry the hash of
 * a purged event.
 */
static const char *
digest_before_chain(int64 seq, const uint8 *hash)
{
	Oid			ctypes[1] = {INT8OID};
	Datum		cargs[1] = {Int64GetDatum(seq)};
	uint8		h[HASH_LEN] = {0};
	bool		isnull;

	if (seq == 0)
		return memcmp(h, hash, HASH_LEN) == 0 ? "matched" : "mismatch";
	if (SPI_execute_with_args("SELECT chain_hash FROM gdpr.audit_checkpoint WHERE seq = $1",
							  1, ctypes, cargs, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed");
	if (SPI_processed == 0)
		return "purged";
	from_bytea(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull), h, HASH_LEN);
	return memcmp(h, hash, HASH_LEN) == 0 ? "matched" : "mismatch";
}

/* Redactions by erasure pseudonym */
static HTAB *
redactions_table(void)
{
	HASHCTL		ctl;

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(((Redactions *) NULL)->pseudonym);
	ctl.entrysize = sizeof(Redactions);
	ctl.hcxt = CurrentMemoryContext;
	return hash_create("gdpr redactions", 64, &ctl, HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
}

/*
 * The next seal row, and the one after it: one row of lookahead, since an
 * inserted or swapped row shows in its neighbour.  Rows are fetched in
 * batches into rowcxt; the kept row's strings are moved out before it is
 * reset.  False at the end of the chain.
 */
static bool
next_seal_row(Verify *v, SealRow **row, SealRow **next)
{
	if (v->pos + 1 >= v->nrows && !v->exhausted)
	{
		SealRow    *keep = v->pos < v->nrows ? &v->rows[v->pos] : NULL;
		SealRow		saved_row;
		MemoryContext old;

		if (keep != NULL)
			saved_row = *keep;
		SPI_cursor_fetch(v->portal, true, 10000);
		if (SPI_processed == 0)
			v->exhausted = true;
		else
		{
			if (v->d.sha == NULL)
				digester_init(&v->d, SPI_tuptable->tupdesc, 10);
			if (keep != NULL && saved_row.redacted_by != NULL)
				saved_row.redacted_by = MemoryContextStrdup(v->callercxt, saved_row.redacted_by);
			if (keep != NULL && saved_row.erase_pseudonym != NULL)
				saved_row.erase_pseudonym = MemoryContextStrdup(v->callercxt, saved_row.erase_pseudonym);
			MemoryContextReset(v->rowcxt);
			old = MemoryContextSwitchTo(v->rowcxt);
			v->rows = palloc(sizeof(SealRow) * (SPI_processed + 1));
			v->nrows = 0;
			if (keep != NULL)
				v->rows[v->nrows++] = saved_row;
			for (uint64 i = 0; i < SPI_processed; i++)
				read_seal_row(&v->rows[v->nrows++], SPI_tuptable->vals[i], SPI_tuptable->tupdesc,
							  &v->d, v->now);
			MemoryContextSwitchTo(old);
			v->pos = 0;
		}
		SPI_freetuptable(SPI_tuptable);
	}
	if (v->pos >= v->nrows)
		return false;
	*row = &v->rows[v->pos];
	*next = v->pos + 1 < v->nrows ? &v->rows[v->pos + 1] : NULL;
	return true;
}

/*
 * What is wrong with seal row r, or NULL; *detail says it in words.  chain
 * gets the hash r's link computes.  A row that does not follow is told
 * apart: swapped with the next, inserted, or changed.
 */
static const char *
check_seal_row(Verify *v, const SealRow *r, const SealRow *next, uint8 *chain, char **detail)
{
	bool		event_ok = !r->present || (r->personal_ok && r->digest_ok);
	uint8		alt[HASH_LEN];
	uint8		back[HASH_LEN];

	if (r->seq != v->expected)
	{
		*detail = psprintf("sequence numbers " INT64_FORMAT " to " INT64_FORMAT " are missing from the chain",
						   v->expected, r->seq - 1);
		return "missing";
	}
	if (!r->present && !r->expired)
	{
		*detail = psprintf("event " INT64_FORMAT " was deleted before its retention ended", r->event_id);
		return "missing";
	}
	chain_step(&v->d, v->prev, r->seq, r->event_digest, r->retention_until, chain);
	if (event_ok && memcmp(chain, r->chain_hash, HASH_LEN) == 0)
		return NULL;

	/* does the chain go on from the next row as if this one were not there? */
	if (next != NULL)
		chain_step(&v->d, v->prev, r->seq, next->event_digest, next->retention_until, alt);
	if (next != NULL && memcmp(alt, next->chain_hash, HASH_LEN) == 0)
	{
		chain_step(&v->d, next->chain_hash, r->seq + 1, r->event_digest, r->retention_until, back);
		if (memcmp(back, r->chain_hash, HASH_LEN) == 0)
		{
			*detail = psprintf("sequence numbers " INT64_FORMAT " and " INT64_FORMAT " were swapped",
							   r->seq, r->seq + 1);
			return "reordered";
		}
		*detail = psprintf("event " INT64_FORMAT " was put into the chain after it was sealed", r->event_id);
		return "inserted";
	}
	if (!event_ok && next != NULL && next->present &&
		memcmp(r->recomputed, next->event_digest, HASH_LEN) == 0)
	{
		*detail = psprintf("event " INT64_FORMAT " holds what was sealed as the next event", r->event_id);
		return "reordered";
	}
	if (!r->personal_ok)
		*detail = psprintf("a personal field of event " INT64_FORMAT " no longer matches its digest",
						   r->event_id);
	else if (!event_ok)
		*detail = psprintf("event " INT64_FORMAT " no longer matches its digest", r->event_id);
	else
		*detail = psprintf("the chain hash of sequence number " INT64_FORMAT " does not follow from the events before it",
						   r->seq);
	return "changed";
}

/* Takes a checked row into the counts, and its redaction into the erasures' */
static void
count_seal_row(Verify *v, const SealRow *r)
{
	Redactions *red;
	bool		found;

	if (!r->present)
		v->purged++;
	if (r->redacted_by != NULL)
	{
		v->redacted++;
		red = hash_search(v->redactions, r->redacted_by, HASH_ENTER, &found);
		if (!found)
			redaction_init(red);
		if (red->count == 0)
		{
			red->first_seq = r->seq;
			red->first_event_id = r->event_id;
		}
		red->count++;
		if (!r->expired)
			red->unexpired++;
	}
	if (r->is_erase && r->erase_pseudonym != NULL)
	{
		red = hash_search(v->redactions, r->erase_pseudonym, HASH_ENTER, &found);
		if (!found)
			redaction_init(red);
		red->erase_seen = true;
		red->erase_says = r->erase_redacted;
	}
	memcpy(v->prev, r->chain_hash, HASH_LEN);
	v->expected = r->seq + 1;
	v->checked++;
	v->pos++;
}

/*
 * Once the chain checked out: no event of the sealed part may be outside
 * it, and a saved digest must have been reached and matched.
 */
static Jsonb *
check_chain_end(Verify *v, bool have_digest)
{
	int64		unsealed = first_unsealed(v->now);

	if (unsealed >= 0)
		return verify_verdict(v, NULL, "unsealed",
							  psprintf("event " INT64_FORMAT " lies in the sealed part of the trail but is not in the chain: "
									   "it was added afterwards or its seal row was removed", unsealed));
	if (have_digest && strcmp(v->digest_status, "not reached") == 0)
		return verify_verdict(v, NULL, "missing",
							  psprintf("the chain ends at sequence number " INT64_FORMAT ", before the saved digest's " INT64_FORMAT,
									   v->expected - 1, v->digest_seq));
	if (have_digest && strcmp(v->digest_status, "mismatch") == 0)
		return verify_verdict(v, NULL, "rewritten",
							  pstrdup("the checkpoint at the saved digest's sequence number has another hash"));
	return NULL;
}

/* Every redaction must come from an erasure that says it made that many */
static Jsonb *
check_redactions(Verify *v)
{
	HASH_SEQ_STATUS status;
	Redactions *red;
	bool		isnull;

	hash_seq_init(&status, v->redactions);
	while ((red = hash_seq_search(&status)) != NULL)
	{
		SealRow		bad;
		const char *why = NULL;

		if (red->count == 0)
			continue;
		if (!red->erase_seen)
		{
			Oid			ptypes[1] = {TEXTOID};
			Datum		pargs[1] = {CStringGetTextDatum(red->pseudonym)};

			/* an erasure not sealed yet: its event is in the trail, not in the chain */
			if (SPI_execute_with_args("SELECT (detail->>'sealed_events_redacted')::pg_catalog.int8 "
									  "  FROM gdpr.audit_log WHERE event IN ('ERASE', 'ERASE_REPLAY') AND subject_id = $1",
									  1, ptypes, pargs, NULL, true, 1) != SPI_OK_SELECT)
				elog(ERROR, "SPI_execute_with_args failed");
			if (SPI_processed == 1)
			{
				red->erase_seen = true;
				red->erase_says = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
				if (isnull)
					red->erase_says = -1;
			}
		}

		/*
		 * An erasure's event is kept as long as the events it redacted, but
		 * their seal rows can stay longer, until everything sealed before
		 * them has expired too: once expired, they need it no more.
		 */
		if (!red->erase_seen)
		{
			if (red->unexpired > 0)
				why = "no erasure of that subject is in the trail";
		}
		else if (red->erase_says != red->count + red->folded)
			why = psprintf("its erasure redacted " INT64_FORMAT " sealed events, the chain shows " INT64_FORMAT,
						   red->erase_says, red->count + red->folded);
		if (why == NULL)
			continue;
		memset(&bad, 0, sizeof(bad));
		bad.seq = red->first_seq;
		bad.event_id = red->first_event_id;
		hash_seq_term(&status);
		return verify_verdict(v, &bad, "redacted without an erasure",
							  psprintf("event " INT64_FORMAT " is redacted by %s, but %s",
									   red->first_event_id, red->pseudonym, why));
	}
	return NULL;
}

/*
 * A chain that verifies proves nothing about changes that were never
 * captured: registered tables whose audit triggers are missing or do not
 * fire fail the verification too.
 */
static Jsonb *
check_capture(Verify *v)
{
	char	   *off;

	if (SPI_execute("SELECT pg_catalog.string_agg(pg_catalog.format('%s: %s', "
					"gdpr._qualified(g.table_name), g.problem), '; ' ORDER BY 1) FROM gdpr._capture_gaps() g",
					true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "SPI_execute failed");
	off = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	if (off == NULL)
		return NULL;
	return verify_verdict(v, NULL, "capture off",
						  psprintf("registered tables whose changes are not captured (%s): repair with gdpr.repair_capture()",
								   off));
}

/* The verdict as far as the chain was checked; ok when no problem is given */
static Jsonb *
verify_verdict(Verify *v, const SealRow *bad, const char *problem, const char *detail)
{
	return verdict(problem == NULL, v->checked, v->expected - 1, v->prev, v->from_seq, v->redacted,
				   v->purged, v->digest_status, bad, problem, detail);
}

/*
 * gdpr_audit_digest(): the last sealed sequence number and chain hash, to be
 * kept outside the database and passed to gdpr_verify_audit() later.
 */
Datum
gdpr_audit_digest(PG_FUNCTION_ARGS)
{
	Oid			save_userid;
	int			save_sec_context;
	int			nest;
	Datum		result;
	bool		isnull;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	nest = gdpr_become_audit_owner(&save_userid, &save_sec_context);
	if (SPI_execute("SELECT pg_catalog.jsonb_build_object('seq', e.seq, "
					"       'hash', pg_catalog.encode(e.chain_hash, 'hex'), "
					"       'sealed_at', (SELECT sealed_at FROM gdpr.audit_seal WHERE seq = e.seq), "
					"       'database', pg_catalog.current_database()) "
					"  FROM (" CHAIN_END ") e", true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "SPI_execute failed");
	gdpr_leave_role(save_userid, save_sec_context, nest);
	result = SPI_datumTransfer(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull),
							   false, -1);
	SPI_finish();
	PG_RETURN_DATUM(result);
}

/*
 * BEFORE UPDATE OR DELETE (row) and BEFORE TRUNCATE (statement) on the trail
 * and its seal tables: only our own erasure, sealing and purge may change
 * them.  A superuser can still get past a trigger; verification catches it.
 */
Datum
gdpr_audit_guard(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("gdpr.audit_guard() must be fired as a trigger")));
	if (!gdpr_audit_maintenance)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("the audit trail of gdpr cannot be changed"),
				 errdetail("%s on %s is refused: events are only added, erased by gdpr_erase() and purged by retention.",
						   TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event) ? "TRUNCATE" :
						   TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ? "UPDATE" : "DELETE",
						   RelationGetRelationName(trigdata->tg_relation)),
				 errhint("Erase a subject with gdpr_erase(); expired events go with gdpr.purge_audit_log().")));
	if (TRIGGER_FIRED_FOR_STATEMENT(trigdata->tg_event))
		return PointerGetDatum(NULL);
	return PointerGetDatum(TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ? trigdata->tg_newtuple
						   : trigdata->tg_trigtuple);
}

/*
 * gdpr._move_default_events(part regclass, lo timestamptz, hi timestamptz):
 * moves the events of the default partition whose retention_until falls in
 * [lo, hi) into part, a table made like the trail and not yet attached, so
 * that part can then be attached for that month.  Values, event ids and so
 * their seal rows are unchanged.  Run by gdpr.create_audit_partitions,
 * which holds the default partition's lock meanwhile.
 */
Datum
gdpr_move_default_events(PG_FUNCTION_ARGS)
{
	Oid			part = PG_GETARG_OID(0);
	Oid			argtypes[2] = {TIMESTAMPTZOID, TIMESTAMPTZOID};
	Datum		args[2] = {PG_GETARG_DATUM(1), PG_GETARG_DATUM(2)};
	int64		moved;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (execute_maintenance(psprintf("WITH m AS (DELETE FROM gdpr.audit_log_default d "
									 " WHERE d.retention_until OPERATOR(pg_catalog.>=) $1 "
									 "   AND d.retention_until OPERATOR(pg_catalog.<) $2 RETURNING d.*) "
									 "INSERT INTO %s SELECT * FROM m", gdpr_relation_name(part)),
							2, argtypes, args, NULL) != SPI_OK_INSERT)
		elog(ERROR, "moving events out of the default partition failed");
	moved = (int64) SPI_processed;
	SPI_finish();
	PG_RETURN_INT64(moved);
}

/*
 * gdpr._purge_audit_rows(batch_size int): deletes up to batch_size expired
 * events from the default partition; forgets the nonces of expired seal rows
 * and, once a whole prefix of the chain has expired, replaces it with a
 * checkpoint.  Returns the number of events deleted.
 */
Datum
gdpr_purge_audit_rows(PG_FUNCTION_ARGS)
{
	int32		batch_size = PG_GETARG_INT32(0);
	Oid			argtypes[1] = {INT4OID};
	Datum		args[1] = {Int32GetDatum(batch_size)};
	int64		deleted = 0;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	/*
	 * Sealers and erasures wait while a checkpoint is made, and it is made
	 * after a running erasure has committed: its redactions and its ERASE
	 * event must be seen to be counted, not deleted uncounted.
	 */
	lock_seal_state("UPDATE");
	if (execute_maintenance("DELETE FROM gdpr.audit_log_default d "
							" WHERE d.ctid OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT x.ctid FROM gdpr.audit_log_default x "
							"                           WHERE x.retention_until < pg_catalog.now() LIMIT $1))",
							1, argtypes, args, NULL) != SPI_OK_DELETE)
		elog(ERROR, "SPI_execute_with_args failed");
	deleted = SPI_processed;
	if (execute_maintenance("UPDATE gdpr.audit_seal SET nonce = NULL "
							" WHERE retention_until < pg_catalog.now() AND nonce IS NOT NULL",
							0, NULL, NULL, NULL) != SPI_OK_UPDATE)
		elog(ERROR, "SPI_execute failed");
	if (execute_maintenance("WITH horizon AS ("
							"  SELECT COALESCE((SELECT pg_catalog.min(seq) FROM gdpr.audit_seal "
							"                    WHERE retention_until >= pg_catalog.now()), "
							"                  (SELECT pg_catalog.max(seq) + 1 FROM gdpr.audit_seal)) - 1 AS seq), "
							"folded AS ("
							"  SELECT m.pseudonym, pg_catalog.sum(m.n)::pg_catalog.int8 AS n FROM ("
							"    SELECT e.key AS pseudonym, e.value::pg_catalog.text::pg_catalog.int8 AS n "
							"      FROM (SELECT c.redactions FROM gdpr.audit_checkpoint c ORDER BY c.seq DESC LIMIT 1) p, "
							"           pg_catalog.jsonb_each(p.redactions) e "
							"     WHERE e.value::pg_catalog.text ~ '^[0-9]{1,18}$' "
							"    UNION ALL "
							"    SELECT s.redacted_by, pg_catalog.count(*) FROM gdpr.audit_seal s, horizon h "
							"     WHERE s.seq <= h.seq AND s.redacted_by IS NOT NULL GROUP BY s.redacted_by) m "
							"   WHERE EXISTS (SELECT FROM gdpr.erasure er JOIN gdpr.audit_log a "
							"                   ON a.subject_kind = er.kind AND a.subject_id = er.pseudonym "
							"                  WHERE er.pseudonym = m.pseudonym AND a.event IN ('ERASE', 'ERASE_REPLAY')) "
							"   GROUP BY m.pseudonym), "
							"cp AS (INSERT INTO gdpr.audit_checkpoint (seq, chain_hash, prev_hash, event_digest, retention_until, "
							"                                          redactions) "
							"       SELECT s.seq, s.chain_hash, "
							"              COALESCE((SELECT p.chain_hash FROM gdpr.audit_seal p WHERE p.seq = s.seq - 1), "
							"                       (SELECT c.chain_hash FROM gdpr.audit_checkpoint c WHERE c.seq = s.seq - 1), "
							"                       pg_catalog.decode(pg_catalog.repeat('00', 32), 'hex')), "
							"              s.event_digest, s.retention_until, "
							"              COALESCE((SELECT pg_catalog.jsonb_object_agg(f.pseudonym, f.n) FROM folded f), '{}') "
							"         FROM gdpr.audit_seal s, horizon h WHERE s.seq = h.seq "
							"       ON CONFLICT DO NOTHING RETURNING seq) "
							"DELETE FROM gdpr.audit_seal s USING cp WHERE s.seq <= cp.seq",
							0, NULL, NULL, NULL) != SPI_OK_DELETE)
		elog(ERROR, "SPI_execute failed");
	SPI_finish();
	PG_RETURN_INT64(deleted);
}

/*
 * Marks sealed events redacted by the erasure whose pseudonym is given:
 * their nonce goes, so their remaining digest cannot be matched against a
 * guess of the erased values.  event_ids is an int8[] of the events the
 * erasure scrubbed.  Returns how many were sealed (and are now redacted),
 * and in *keep_until the latest retention among them (0 for none).
 * SPI must be connected; runs as the trail's owner.
 */
int64
gdpr_chain_redact(Datum event_ids, const char *pseudonym, TimestampTz *keep_until)
{
	Oid			argtypes[2] = {INT8ARRAYOID, TEXTOID};
	Datum		args[2] = {event_ids, CStringGetTextDatum(pseudonym)};
	int64		n;
	bool		isnull;
	Datum		latest;
	Oid			save_userid;
	int			save_sec_context;
	int			nest = gdpr_become_audit_owner(&save_userid, &save_sec_context);

	if (execute_maintenance("WITH r AS (UPDATE gdpr.audit_seal SET nonce = NULL, redacted_at = pg_catalog.now(), "
							"                  redacted_by = $2 "
							"            WHERE event_id = ANY ($1) AND redacted_by IS NULL RETURNING retention_until) "
							"SELECT pg_catalog.count(*), pg_catalog.max(retention_until) FROM r",
							2, argtypes, args, NULL) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "SPI_execute_with_args failed");
	n = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	latest = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
	*keep_until = isnull ? 0 : DatumGetTimestampTz(latest);
	gdpr_leave_role(save_userid, save_sec_context, nest);
	return n;
}

/*
 * Makes sealers wait for the caller's transaction.  An erasure takes this
 * before it scrubs: a sealer already running has then committed, and its
 * seal rows are there to be redacted; one that starts later sees only the
 * scrubbed events.  Otherwise a sealer could keep the nonce and the digest
 * of values the erasure removed.  A share lock: erasures do not wait for
 * each other.  Under REPEATABLE READ a seal committed since the snapshot
 * makes this fail with a serialization error, as it must: the redaction
 * could not see that seal's rows.  SPI must be connected.
 */
void
gdpr_chain_hold_sealers(void)
{
	Oid			save_userid;
	int			save_sec_context;
	int			nest = gdpr_become_audit_owner(&save_userid, &save_sec_context);

	lock_seal_state("SHARE");
	gdpr_leave_role(save_userid, save_sec_context, nest);
}

/*
 * Locks the state row FOR UPDATE (sealers, purges) or FOR SHARE (erasures).
 * CREATE EXTENSION makes the row; it is made again here only where it is
 * gone, since an insert of it would make every other locker wait for the
 * inserting transaction.
 */
static void
lock_seal_state(const char *strength)
{
	char	   *lock = psprintf("SELECT FROM gdpr.audit_seal_state FOR %s", strength);

	if (SPI_execute(lock, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute failed");
	if (SPI_processed == 0 &&
		(SPI_execute("INSERT INTO gdpr.audit_seal_state DEFAULT VALUES ON CONFLICT DO NOTHING",
					 false, 0) != SPI_OK_INSERT ||
		 SPI_execute(lock, false, 0) != SPI_OK_SELECT))
		elog(ERROR, "SPI_execute failed");
}

/*
 * Runs one statement that changes the trail or its seal, which the guard
 * lets through while gdpr_audit_maintenance is set.  Returns SPI's code.
 */
static int
execute_maintenance(const char *sql, int nargs, Oid *argtypes, Datum *values, const char *nulls)
{
	volatile int ret = 0;

	gdpr_audit_maintenance = true;
	PG_TRY();
	{
		ret = SPI_execute_with_args(sql, nargs, argtypes, values, nulls, false, 0);
	}
	PG_FINALLY();
	{
		gdpr_audit_maintenance = false;
	}
	PG_END_TRY();
	return ret;
}

static void
digester_init(Digester *d, TupleDesc desc, int first)
{
	d->sha = pg_cryptohash_create(PG_SHA256);
	if (d->sha == NULL)
		elog(ERROR, "could not create a SHA-256 context");
	initStringInfo(&d->buf);
	d->first = first;
	d->values = palloc(sizeof(Datum) * desc->natts);
	d->nulls = palloc(sizeof(bool) * desc->natts);
	for (int i = 0; i < N_COLUMNS; i++)
	{
		Oid			out;
		bool		varlena;

		d->types[i] = TupleDescAttr(desc, first - 1 + i)->atttypid;
		getTypeOutputInfo(d->types[i], &out, &varlena);
		fmgr_info(out, &d->out[i]);
	}
}

/* Deforms a row once; reading columns one by one walks the tuple again for each */
static void
deform(Digester *d, HeapTuple tup, TupleDesc desc)
{
	heap_deform_tuple(tup, desc, d->values, d->nulls);
}

static void
sha256(Digester *d, const void *data, size_t len, uint8 *out)
{
	if (pg_cryptohash_init(d->sha) < 0 ||
		pg_cryptohash_update(d->sha, data, len) < 0 ||
		pg_cryptohash_final(d->sha, out, HASH_LEN) < 0)
		elog(ERROR, "could not compute a SHA-256 digest");
}

/*
 * The digests of one event.  With a nonce, the personal digest is computed
 * from the row; without (a redacted event), personal_in is taken as it is.
 */
static void
event_digests(Digester *d, const uint8 *nonce, const uint8 *personal_in,
			  uint8 *personal_out, uint8 *event_out)
{
	Datum	   *values = d->values + d->first - 1;
	bool	   *nulls = d->nulls + d->first - 1;

	if (nonce != NULL)
	{
		resetStringInfo(&d->buf);
		appendBinaryStringInfo(&d->buf, (const char *) nonce, NONCE_LEN);
		for (int i = N_PUBLIC; i < N_COLUMNS; i++)
			append_field(d, i, values[i], nulls[i]);
		sha256(d, d->buf.data, d->buf.len, personal_out);
	}
	else
		memcpy(personal_out, personal_in, HASH_LEN);

	resetStringInfo(&d->buf);
	for (int i = 0; i < N_PUBLIC; i++)
		append_field(d, i, values[i], nulls[i]);
	appendBinaryStringInfo(&d->buf, (const char *) personal_out, HASH_LEN);
	sha256(d, d->buf.data, d->buf.len, event_out);
}

/*
 * One field, unambiguously: a marker for NULL or a value; fixed-width types
 * in network order, the others as their length and text.  Text output of
 * the remaining types (arrays, jsonb, inet) does not depend on settings.
 */
static void
append_field(Digester *d, int i, Datum value, bool isnull)
{
	if (isnull)
	{
		appendStringInfoChar(&d->buf, 0);
		return;
	}
	appendStringInfoChar(&d->buf, 1);
	switch (d->types[i])
	{
		case INT8OID:
		case TIMESTAMPTZOID:
			{
				uint64		v = pg_hton64((uint64) DatumGetInt64(value));

				appendBinaryStringInfo(&d->buf, (const char *) &v, sizeof(v));
				break;
			}
		case BOOLOID:
			appendStringInfoChar(&d->buf, DatumGetBool(value) ? 1 : 0);
			break;
		case TEXTOID:
			{
				text	   *t = DatumGetTextPP(value);
				uint32		len = pg_hton32((uint32) VARSIZE_ANY_EXHDR(t));

				appendBinaryStringInfo(&d->buf, (const char *) &len, sizeof(len));
				appendBinaryStringInfo(&d->buf, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
				break;
			}
		default:
			{
				char	   *s = OutputFunctionCall(&d->out[i], value);
				uint32		len = pg_hton32((uint32) strlen(s));

				appendBinaryStringInfo(&d->buf, (const char *) &len, sizeof(len));
				appendBinaryStringInfo(&d->buf, s, strlen(s));
				pfree(s);
				break;
			}
	}
}

static void
chain_step(Digester *d, const uint8 *prev, int64 seq, const uint8 *event_digest,
		   TimestampTz retention_until, uint8 *out)
{
	uint8		buf[HASH_LEN + sizeof(uint64) + HASH_LEN + sizeof(uint64)];
	uint64		nseq = pg_hton64((uint64) seq);
	uint64		nretention = pg_hton64((uint64) retention_until);

	memcpy(buf, prev, HASH_LEN);
	memcpy(buf + HASH_LEN, &nseq, sizeof(nseq));
	memcpy(buf + HASH_LEN + sizeof(nseq), event_digest, HASH_LEN);
	memcpy(buf + HASH_LEN + sizeof(nseq) + HASH_LEN, &nretention, sizeof(nretention));
	sha256(d, buf, sizeof(buf), out);
}

static Oid
audit_log_oid(void)
{
	Oid			relid = get_relname_relid("audit_log", get_namespace_oid("gdpr", false));

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table \"gdpr.audit_log\" does not exist")));
	return relid;
}

/*
 * The transactions now writing the trail (holding a lock that conflicts
 * with SHARE on gdpr.audit_log), as an int8[] of virtual transaction ids;
 * (Datum) 0 when there are none.
 */
static Datum
current_writers(void)
{
	LOCKTAG		tag;
	VirtualTransactionId *vxids;
	int			count = 0;
	Datum	   *elems;
	int			n = 0;

	SET_LOCKTAG_RELATION(tag, MyDatabaseId, audit_log_oid());
	vxids = GetLockConflicts(&tag, ShareLock, &count);
	if (count == 0)
		return (Datum) 0;
	elems = palloc(sizeof(Datum) * count);
	for (int i = 0; i < count && VirtualTransactionIdIsValid(vxids[i]); i++)
		elems[n++] = Int64GetDatum(((int64) GDPR_VXID_BACKEND(vxids[i]) << 32) |
								   (int64) vxids[i].localTransactionId);
	if (n == 0)
		return (Datum) 0;
	return PointerGetDatum(construct_array(elems, n, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

/* Whether every virtual transaction in the int8[] has ended */
static bool
writers_ended(Datum pending)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;

	/* a state row written by hand may lack the writers: nothing to wait for */
	if (pending == (Datum) 0)
		return true;
	deconstruct_array(DatumGetArrayTypeP(pending), INT8OID, sizeof(int64), FLOAT8PASSBYVAL,
					  TYPALIGN_DOUBLE, &elems, &nulls, &n);
	for (int i = 0; i < n; i++)
	{
		int64		v = DatumGetInt64(elems[i]);
		VirtualTransactionId vxid;

		GDPR_VXID_BACKEND(vxid) = (GdprVxidBackend) (v >> 32);
		vxid.localTransactionId = (LocalTransactionId) (v & 0xFFFFFFFF);
		if (!VirtualXactLock(vxid, false))
			return false;
	}
	return true;
}

static bytea *
to_bytea(const uint8 *data, size_t len)
{
	bytea	   *b = palloc(VARHDRSZ + len);

	SET_VARSIZE(b, VARHDRSZ + len);
	memcpy(VARDATA(b), data, len);
	return b;
}

/* A bytea of the expected length into out; anything else becomes zeros, which never verify */
static void
from_bytea(Datum d, uint8 *out, size_t len)
{
	bytea	   *b = DatumGetByteaPP(d);

	if (VARSIZE_ANY_EXHDR(b) == len)
		memcpy(out, VARDATA_ANY(b), len);
	else
		memset(out, 0, len);
}

static bool
text_equal_cstr(Datum t, const char *s)
{
	text	   *txt = DatumGetTextPP(t);

	return VARSIZE_ANY_EXHDR(txt) == strlen(s) && memcmp(VARDATA_ANY(txt), s, strlen(s)) == 0;
}

static char *
hex(const uint8 *data, size_t len)
{
	char	   *s = palloc(len * 2 + 1);

	hex_encode((const char *) data, len, s);
	s[len * 2] = '\0';
	return s;
}

/*
 * Reads one row of the verification query: the seal columns, then (from
 * column 10) the event's, and checks the event against its digests.
 */
static void
read_seal_row(SealRow *r, HeapTuple tup, TupleDesc desc, Digester *d, TimestampTz now)
{
	Datum	   *v = d->values;
	bool	   *n = d->nulls;

	deform(d, tup, desc);
	memset(r, 0, sizeof(*r));
	r->seq = DatumGetInt64(v[0]);
	r->event_id = DatumGetInt64(v[1]);
	from_bytea(v[2], r->event_digest, HASH_LEN);
	from_bytea(v[3], r->chain_hash, HASH_LEN);
	from_bytea(v[4], r->personal_digest, HASH_LEN);
	r->has_nonce = !n[5];
	if (r->has_nonce)
		from_bytea(v[5], r->nonce, NONCE_LEN);
	r->redacted_by = n[6] ? NULL : TextDatumGetCString(v[6]);
	r->retention_until = DatumGetTimestampTz(v[7]);
	r->expired = r->retention_until < now;
	r->present = DatumGetBool(v[8]);
	r->digest_ok = true;
	/* only an erasure or the end of retention takes a nonce away */
	r->personal_ok = r->has_nonce || r->redacted_by != NULL || r->expired;
	if (!r->present)
		return;

	if (r->has_nonce)
	{
		uint8		personal[HASH_LEN];

		event_digests(d, r->nonce, NULL, personal, r->recomputed);
		r->personal_ok = r->personal_ok && memcmp(personal, r->personal_digest, HASH_LEN) == 0;
	}
	else
		event_digests(d, NULL, r->personal_digest, (uint8[HASH_LEN]) {0}, r->recomputed);
	r->digest_ok = memcmp(r->recomputed, r->event_digest, HASH_LEN) == 0;

	/* columns from d->first (10): event is the third, subject_id the sixteenth */
	/* an erasure, or its replay in a restored copy (ledger.c) */
	if (!n[d->first + 1] && (text_equal_cstr(v[d->first + 1], "ERASE") ||
							 text_equal_cstr(v[d->first + 1], "ERASE_REPLAY")))
	{
		r->is_erase = true;
		r->erase_pseudonym = n[d->first + 14] ? NULL : TextDatumGetCString(v[d->first + 14]);
		r->erase_redacted = n[d->first + N_COLUMNS - 1] ? -1 : DatumGetInt64(v[d->first + N_COLUMNS - 1]);
	}
}

/*
 * The latest checkpoint's sequence number (0 without one), its hash in
 * *hash (zeros without one).  A checkpoint is only made where the whole
 * chain before it has expired: one that does not follow from its last link,
 * whose last event has not expired, or below which seal rows remain, was
 * not made by the purge, and *problem says so.
 */
static int64
latest_checkpoint(uint8 *hash, TimestampTz now, char **problem)
{
	HeapTuple	cp;
	TupleDesc	desc;
	int64		seq;
	uint8		link_prev[HASH_LEN];
	uint8		link_digest[HASH_LEN];
	uint8		link[HASH_LEN];
	TimestampTz link_retention;
	Digester	linker;
	bool		isnull;

	memset(hash, 0, HASH_LEN);
	*problem = NULL;
	if (SPI_execute("SELECT seq, chain_hash, prev_hash, event_digest, retention_until "
					"  FROM gdpr.audit_checkpoint ORDER BY seq DESC LIMIT 1",
					true, 1) != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute failed");
	if (SPI_processed == 0)
		return 0;
	cp = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	seq = DatumGetInt64(SPI_getbinval(cp, desc, 1, &isnull));
	from_bytea(SPI_getbinval(cp, desc, 2, &isnull), hash, HASH_LEN);
	from_bytea(SPI_getbinval(cp, desc, 3, &isnull), link_prev, HASH_LEN);
	from_bytea(SPI_getbinval(cp, desc, 4, &isnull), link_digest, HASH_LEN);
	link_retention = DatumGetTimestampTz(SPI_getbinval(cp, desc, 5, &isnull));
	linker.sha = pg_cryptohash_create(PG_SHA256);
	if (linker.sha == NULL)
		elog(ERROR, "could not create a SHA-256 context");
	chain_step(&linker, link_prev, seq, link_digest, link_retention, link);
	pg_cryptohash_free(linker.sha);

	if (memcmp(link, hash, HASH_LEN) != 0)
		*problem = psprintf("the checkpoint at sequence number " INT64_FORMAT " does not follow from its last link",
							seq);
	else if (link_retention >= now)
		*problem = psprintf("the checkpoint at sequence number " INT64_FORMAT " hides events whose retention has not ended",
							seq);
	else
	{
		int64		lowest;

		if (SPI_execute("SELECT pg_catalog.min(seq) FROM gdpr.audit_seal", true, 1) != SPI_OK_SELECT)
			elog(ERROR, "SPI_execute failed");
		lowest = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		if (!isnull && lowest <= seq)
			*problem = psprintf("the checkpoint at sequence number " INT64_FORMAT " hides sealed events still in the chain",
								seq);
	}
	return seq;
}

/* The redactions of each erasure folded into the checkpoint at checkpoint_seq */
static void
load_folded_redactions(HTAB *redactions, int64 checkpoint_seq)
{
	Oid			argtypes[1] = {INT8OID};
	Datum		args[1] = {Int64GetDatum(checkpoint_seq)};

	if (SPI_execute_with_args("SELECT e.key, e.value::pg_catalog.text::pg_catalog.int8 "
							  "  FROM gdpr.audit_checkpoint c, pg_catalog.jsonb_each(c.redactions) e "
							  " WHERE c.seq = $1 AND e.value::pg_catalog.text ~ '^[0-9]{1,18}$'",
							  1, argtypes, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		char	   *pseudonym = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		Redactions *red;
		bool		found;
		bool		isnull;

		if (pseudonym == NULL || strlen(pseudonym) >= sizeof(red->pseudonym))
			continue;
		red = hash_search(redactions, pseudonym, HASH_ENTER, &found);
		if (!found)
			redaction_init(red);
		red->folded = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));
	}
}

/*
 * The first unexpired event below the frontier without a seal row, or -1.
 * Below the frontier every event was sealed, and a seal row leaves only
 * with its expired prefix: such an event was added with an old identity
 * value, or its seal row removed.
 */
static int64
first_unsealed(TimestampTz now)
{
	Oid			argtypes[1] = {TIMESTAMPTZOID};
	Datum		args[1] = {TimestampTzGetDatum(now)};
	Datum		first;
	bool		isnull;

	if (SPI_execute_with_args("SELECT pg_catalog.min(a.event_id) FROM gdpr.audit_log a, gdpr.audit_seal_state st "
							  " WHERE a.event_id < st.frontier AND a.retention_until >= $1 "
							  "   AND NOT EXISTS (SELECT FROM gdpr.audit_seal s WHERE s.event_id = a.event_id)",
							  1, argtypes, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed");
	if (SPI_processed != 1)
		return -1;
	first = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? -1 : DatumGetInt64(first);
}

/* A new entry: the key is set by hash_search, the rest is ours */
static void
redaction_init(Redactions *red)
{
	red->count = 0;
	red->unexpired = 0;
	red->folded = 0;
	red->first_seq = -1;
	red->first_event_id = -1;
	red->erase_seen = false;
	red->erase_says = -1;
}

static Jsonb *
verdict(bool ok, int64 checked, int64 last_seq, const uint8 *last_hash, int64 from_seq,
		int64 redacted, int64 purged, const char *digest_status, const SealRow *bad,
		const char *problem, const char *detail)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"ok\": %s, \"events_checked\": " INT64_FORMAT
					 ", \"last_verified_seq\": " INT64_FORMAT ", \"last_hash\": \"%s\""
					 ", \"from_checkpoint\": " INT64_FORMAT ", \"redacted\": " INT64_FORMAT
					 ", \"purged\": " INT64_FORMAT ", \"digest\": \"%s\"",
					 ok ? "true" : "false", checked, last_seq, hex(last_hash, HASH_LEN), from_seq,
					 redacted, purged, digest_status);
	if (problem != NULL)
	{
		appendStringInfoString(&buf, ", \"first_bad\": {");
		if (bad != NULL)
			appendStringInfo(&buf, "\"seq\": " INT64_FORMAT ", \"event_id\": " INT64_FORMAT ", ",
							 bad->seq, bad->event_id);
		appendStringInfoString(&buf, "\"problem\": ");
		escape_json(&buf, problem);
		appendStringInfoString(&buf, ", \"detail\": ");
		escape_json(&buf, detail);
		appendStringInfoChar(&buf, '}');
	}
	appendStringInfoChar(&buf, '}');
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}
