/*-------------------------------------------------------------------------
 *
 * ledger.c
 *		The erasure ledger: a file outside the database, one per database
 *		identity, where every committed erasure (and withdrawn consent,
 *		objection, restriction) is written, so that a restored copy that
 *		lacks one can be told, and replays it.
 *
 * Writing.  An entry is noted during the transaction (gdpr_ledger_note:
 * its row in gdpr.ledger is inserted then, in the same transaction) and its
 * line is appended and fsynced at PRE_COMMIT, after everything else that
 * can fail: a transaction cannot commit without its line.  If it aborts
 * after that all the same, its abort callback appends an "aborted" line
 * naming the entry.  A crash between the fsync and the commit leaves a line
 * without either; readers take it as committed (the erasure was decided),
 * and the next check replays it.  Appenders hold an exclusive flock on the
 * file while they read its last line (for the sequence number and the hash
 * it chains on) and write theirs.  A torn last line (a crash mid-write,
 * whose transaction cannot have committed) is cut off by the next append
 * and ignored by readers.
 *
 * The chain: each line ends with "hash", an HMAC-SHA256 of everything
 * before it in the line under a key derived from the pseudonym key
 * (gdpr.secret, which dumps and base backups carry), and holds "prev", the
 * hash of the line before.  An edited, removed or truncated line breaks it.
 *
 * Nothing here runs SQL at PRE_COMMIT or in the abort callback: what the
 * line needs (identity, key, entry) is gathered when the entry is noted.
 *
 * The gate that keeps applications out until the replay is done is gate.c.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "common/hmac.h"
#include "common/sha2.h"
#include "executor/spi.h"
#include "gdpr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(gdpr_system_identifier);
PG_FUNCTION_INFO_V1(gdpr_ledger_read);
PG_FUNCTION_INFO_V1(gdpr_ledger_keys);
PG_FUNCTION_INFO_V1(gdpr_ledger_note_sql);
PG_FUNCTION_INFO_V1(gdpr_ledger_state);
PG_FUNCTION_INFO_V1(gdpr_ledger_check);

/* An entry noted in this transaction, or appended at its PRE_COMMIT */
typedef struct LedgerNote
{
	int			level;			/* transaction nesting level that noted it */
	char	   *entry;			/* erase, consent_withdrawn, objection, restriction */
	char	   *entry_id;
	char	   *kind;
	char	   *pseudonym;
	char	   *purpose;		/* or NULL */
	char	   *identity;
	char	   *chain_key;		/* hex; see chain_key() */
	char	   *directory;
} LedgerNote;

/*
 * Entries noted by the running transaction (TopTransactionContext), and
 * those appended at its PRE_COMMIT (TopMemoryContext, until the commit or
 * the abort that follows).
 */
static List *noted = NIL;
static List *appended = NIL;

/*
 * The lines of the ledger as this transaction last read and verified it,
 * and the ids of the entries marked aborted there (TopTransactionContext):
 * a replay acts only on what the ledger says, whoever calls it.
 */
static List *verified_entries = NIL;
static List *verified_aborted = NIL;
static bool verified_read = false;

static const char *checked_directory(bool *unreachable);
static bool path_within(const char *path, const char *dir);
static char *chain_key(void);
static bool append_line(const LedgerNote *note, const char *entry, bool quiet);
static bool read_last_line(int fd, off_t size, int64 *seq, char *prev_hash, off_t *keep);
static void run_archive_command(const char *directory, const char *identity);
static void end_of_transaction(bool committed);
static bool noted_fact_holds(const char *entry, const char *kind, Datum subject, Datum purpose);
static bool scan_field(const char *line, const char *field, char *out, size_t outlen);
static void remember_verified(const char *line);
static int	compare_strings(const void *a, const void *b);

#define HASH_HEX_LEN	(2 * PG_SHA256_DIGEST_LENGTH)

/* Whether a ledger is set: erasures are then written to it */
bool
gdpr_ledger_enabled(void)
{
	return gdpr_ledger_directory != NULL && gdpr_ledger_directory[0] != '\0';
}

/* gdpr._system_identifier(): this cluster's system identifier, as text */
Datum
gdpr_system_identifier(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(psprintf(UINT64_FORMAT, GetSystemIdentifier())));
}

/*
 * The ledger directory, resolved, once it passes the checks: an absolute
 * path, that exists, outside the data directory and every tablespace (a
 * restore would roll a ledger there back with the data).  A directory that
 * does not exist is unreachable: with *unreachable given, that returns NULL
 * and sets it; else it is an error.  The extension never creates the
 * directory: an empty new ledger must not pass for a complete one.
 */
static const char *
checked_directory(bool *unreachable)
{
	char		resolved[PATH_MAX];
	char		data_dir[PATH_MAX];
	struct stat st;
	DIR		   *tblspc;
	struct dirent *de;

	if (unreachable != NULL)
		*unreachable = false;
	if (!is_absolute_path(gdpr_ledger_directory))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("gdpr.ledger_directory \"%s\" is not an absolute path", gdpr_ledger_directory),
				 errhint("Set it to an absolute path outside the data directory, such as /var/lib/gdpr-ledger.")));
	if (realpath(gdpr_ledger_directory, resolved) == NULL || stat(resolved, &st) != 0 ||
		!S_ISDIR(st.st_mode) || access(resolved, R_OK | W_OK | X_OK) != 0)
	{
		int			save_errno = errno;

		if (unreachable != NULL)
		{
			*unreachable = true;
			return NULL;
		}
		errno = save_errno;
		ereport(ERROR,
				(errcode(ERRCODE_GDPR_LEDGER_UNREACHABLE),
				 errmsg("the erasure ledger directory \"%s\" is unreachable: %m", gdpr_ledger_directory),
				 errdetail("An erasure cannot commit without its line in the ledger."),
				 errhint("Create the directory, writable by the server's operating system user (the extension never creates it), or correct gdpr.ledger_directory.")));
	}
	if (realpath(DataDir, data_dir) != NULL && path_within(resolved, data_dir))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("gdpr.ledger_directory \"%s\" is inside the data directory", gdpr_ledger_directory),
				 errdetail("A restore rolls the data directory back, and a ledger inside it with it."),
				 errhint("Choose a directory outside the data directory and every tablespace, best on another disk, and archive it (gdpr.ledger_archive_command).")));
	tblspc = AllocateDir("pg_tblspc");
	while ((de = ReadDir(tblspc, "pg_tblspc")) != NULL)
	{
		char		location[PATH_MAX];

		if (de->d_name[0] == '.' ||
			realpath(psprintf("pg_tblspc/%s", de->d_name), location) == NULL)
			continue;
		if (path_within(resolved, location))
		{
			FreeDir(tblspc);
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("gdpr.ledger_directory \"%s\" is inside the tablespace at \"%s\"",
							gdpr_ledger_directory, location),
					 errdetail("A restore rolls tablespaces back, and a ledger inside one with them."),
					 errhint("Choose a directory outside the data directory and every tablespace.")));
		}
	}
	FreeDir(tblspc);
	return pstrdup(resolved);
}

/* Whether path is dir or below it */
static bool
path_within(const char *path, const char *dir)
{
	size_t		len = strlen(dir);

	return strncmp(path, dir, len) == 0 && (path[len] == '\0' || path[len] == '/' ||
											(len > 0 && dir[len - 1] == '/'));
}

/* The key of the chain, derived from the pseudonym key (SPI-free once loaded) */
static char *
chain_key(void)
{
	static const char seed[] = "ledger\x1f" "chain";

	return gdpr_pseudonym(seed, sizeof(seed) - 1);
}

/*
 * Notes an entry for the ledger: its row in gdpr.ledger now (as the
 * extension's owner), its line when the transaction commits.  Returns the
 * entry's id, or NULL without a ledger.  The directory is checked now, so
 * that an erasure fails before it changes anything rather than at commit.
 * SPI.
 */
char *
gdpr_ledger_note(const char *entry, const char *kind, const char *pseudonym, const char *purpose)
{
	Oid			argtypes[4] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID};
	Datum		args[4] = {CStringGetTextDatum(entry), CStringGetTextDatum(kind),
	CStringGetTextDatum(pseudonym), purpose ? CStringGetTextDatum(purpose) : (Datum) 0};
	const char *directory;
	MemoryContext old;
	LedgerNote *note;
	char	   *entry_id;
	char	   *identity;
	int			ret;

	if (!gdpr_ledger_enabled())
		return NULL;
	directory = checked_directory(NULL);
	ret = gdpr_execute_as_owner(NULL,
								"INSERT INTO gdpr.ledger (entry_id, entry, kind, pseudonym, purpose) "
								"VALUES (pg_catalog.gen_random_uuid(), $1, $2, $3, $4) "
								"RETURNING entry_id::pg_catalog.text, gdpr.ledger_identity()::pg_catalog.text",
								4, argtypes, args, purpose ? NULL : "   n", false, 1);
	if (ret != SPI_OK_INSERT_RETURNING || SPI_processed != 1)
		elog(ERROR, "could not record the ledger entry: %d", ret);
	entry_id = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	identity = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	if (identity == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("this database has no identity for the erasure ledger"),
				 errhint("Run SELECT gdpr.new_database_identity() as gdpr_admin.")));

	/*
	 * The writer is of the identity's lineage: a restored copy of this very
	 * database replays what it wrote (a clone's entries, by contrast, are
	 * not replayed in the original, which never wrote as the clone).
	 */
	ret = gdpr_execute_as_owner(NULL,
								"INSERT INTO gdpr.database_identity (identity, system_identifier, database_oid) "
								"VALUES (gdpr.ledger_identity(), gdpr._system_identifier(), $1) "
								"ON CONFLICT DO NOTHING",
								1, (Oid[]) {OIDOID}, (Datum[]) {ObjectIdGetDatum(MyDatabaseId)},
								NULL, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "could not record the ledger's writer: %d", ret);

	old = MemoryContextSwitchTo(TopTransactionContext);
	note = palloc0(sizeof(LedgerNote));
	note->level = GetCurrentTransactionNestLevel();
	note->entry = pstrdup(entry);
	note->entry_id = pstrdup(entry_id);
	note->kind = pstrdup(kind);
	note->pseudonym = pstrdup(pseudonym);
	note->purpose = purpose ? pstrdup(purpose) : NULL;
	note->identity = pstrdup(identity);
	note->chain_key = chain_key();
	note->directory = pstrdup(directory);
	noted = lappend(noted, note);
	MemoryContextSwitchTo(old);
	return entry_id;
}

/*
 * gdpr._ledger_note(entry, kind, subject, purpose): the same for the SQL
 * functions that withdraw a consent, record an objection or restrict.
 * gdpr_admin only (privileges.sql), as they are.
 */
Datum
gdpr_ledger_note_sql(PG_FUNCTION_ARGS)
{
	char	   *entry;
	char	   *kind;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("a ledger entry needs its type, kind and subject")));
	if (!gdpr_ledger_enabled())
		PG_RETURN_VOID();
	entry = text_to_cstring(PG_GETARG_TEXT_PP(0));
	kind = text_to_cstring(PG_GETARG_TEXT_PP(1));
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (strcmp(entry, "erase") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("an erasure is written to the ledger by gdpr_erase() only")));
	if (!noted_fact_holds(entry, kind, PG_GETARG_DATUM(2), PG_ARGISNULL(3) ? (Datum) 0 : PG_GETARG_DATUM(3)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("no %s of subject %s of kind \"%s\" to write to the ledger: none happened in this transaction",
						entry, text_to_cstring(PG_GETARG_TEXT_PP(2)), kind),
				 errhint("The ledger records what gdpr_withdraw_consent(), gdpr_object() and gdpr_restrict() do.")));
	(void) gdpr_ledger_note(entry, kind,
							gdpr_subject_pseudonym(kind, text_to_cstring(PG_GETARG_TEXT_PP(2))),
							PG_ARGISNULL(3) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(3)));
	SPI_finish();
	PG_RETURN_VOID();
}

/*
 * Whether what a SQL function asks the ledger to record is so: a consent
 * withdrawn or an objection recorded in this transaction, a manual
 * restriction in force.  An erasure is never noted from SQL.  gdpr_admin
 * may call gdpr._ledger_note, and a line in the ledger erases, withdraws
 * or restricts in every restored copy.  SPI.
 */
static bool
noted_fact_holds(const char *entry, const char *kind, Datum subject, Datum purpose)
{
	Oid			argtypes[3] = {TEXTOID, TEXTOID, TEXTOID};
	Datum		args[3] = {CStringGetTextDatum(kind), subject, purpose};
	const char *sql;
	int			ret;

	if (purpose == (Datum) 0 && strcmp(entry, "restriction") != 0)
		return false;			/* a withdrawal and an objection are for a purpose */
	if (strcmp(entry, "consent_withdrawn") == 0)
		sql = "SELECT EXISTS (SELECT FROM gdpr.consent c WHERE c.kind OPERATOR(pg_catalog.=) $1 "
			"   AND c.subject_id OPERATOR(pg_catalog.=) $2 AND c.purpose OPERATOR(pg_catalog.=) $3 "
			"   AND c.withdrawn_at OPERATOR(pg_catalog.=) pg_catalog.now())";
	else if (strcmp(entry, "objection") == 0)
		sql = "SELECT EXISTS (SELECT FROM gdpr.objection o WHERE o.kind OPERATOR(pg_catalog.=) $1 "
			"   AND o.subject_id OPERATOR(pg_catalog.=) $2 AND o.purpose OPERATOR(pg_catalog.=) $3 "
			"   AND o.objected_at OPERATOR(pg_catalog.=) pg_catalog.now())";
	else if (strcmp(entry, "restriction") == 0)
		sql = "SELECT EXISTS (SELECT FROM gdpr.restriction r WHERE r.kind OPERATOR(pg_catalog.=) $1 "
			"   AND r.subject_id OPERATOR(pg_catalog.=) $2 AND r.source OPERATOR(pg_catalog.=) 'manual')";
	else
		return false;
	ret = gdpr_execute_as_owner(NULL, sql, 3, argtypes, args, purpose == (Datum) 0 ? "  n" : NULL,
								true, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "SPI_execute_with_args failed: %d", ret);
	return DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &(bool) {false}));
}

/*
 * The transaction's end.  PRE_COMMIT writes the noted entries; COMMIT
 * ships the ledger (gdpr.ledger_archive_command); an abort after
 * PRE_COMMIT writes an "aborted" line for each entry it wrote.
 */
void
gdpr_ledger_xact(XactEvent event)
{
	ListCell   *lc;

	switch (event)
	{
		case XACT_EVENT_PRE_PREPARE:
			if (noted != NIL)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot PREPARE a transaction that erased, withdrew a consent, objected or restricted"),
						 errdetail("Its entry in the erasure ledger must be written when it commits.")));
			break;
		case XACT_EVENT_PRE_COMMIT:
			foreach(lc, noted)
			{
				LedgerNote *note = lfirst(lc);
				MemoryContext old;

				/*
				 * Listed before it is written: a write that fails half-way (or
				 * whose fsync fails) is marked aborted too.  The note stays in
				 * TopTransactionContext until the callbacks of the end.
				 */
				old = MemoryContextSwitchTo(TopMemoryContext);
				appended = lappend(appended, note);
				MemoryContextSwitchTo(old);
				(void) append_line(note, note->entry, false);
			}
			break;
		case XACT_EVENT_COMMIT:
			end_of_transaction(true);
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			end_of_transaction(false);
			break;
		default:
			break;
	}
}

/*
 * After the commit, ships each ledger written (once per identity); after an
 * abort, first marks each line written at PRE_COMMIT as aborted.  Then
 * forgets the transaction's notes and verified lines.
 */
static void
end_of_transaction(bool committed)
{
	const char *shipped = NULL;
	ListCell   *lc;

	foreach(lc, appended)
	{
		LedgerNote *note = lfirst(lc);

		if (!committed && !append_line(note, "aborted", true))
			continue;
		if (shipped == NULL || strcmp(shipped, note->identity) != 0)
			run_archive_command(note->directory, note->identity);
		shipped = note->identity;
	}
	list_free(appended);
	appended = NIL;
	noted = NIL;
	verified_entries = verified_aborted = NIL;
	verified_read = false;
}

/*
 * Keeps the notes in step with subtransactions: an aborted one drops what
 * it noted, a committed one hands it to its parent.
 */
void
gdpr_ledger_subxact(SubXactEvent event)
{
	int			level = GetCurrentTransactionNestLevel();
	ListCell   *lc;

	if (event != SUBXACT_EVENT_ABORT_SUB && event != SUBXACT_EVENT_COMMIT_SUB)
		return;
	foreach(lc, noted)
	{
		LedgerNote *note = lfirst(lc);

		if (note->level < level)
			continue;
		if (event == SUBXACT_EVENT_COMMIT_SUB)
			note->level = level - 1;
		else
			noted = foreach_delete_current(noted, lc);
	}
}

/*
 * Appends the line of note (entry: its type, or "aborted") to its
 * identity's ledger and fsyncs it.  quiet (the abort callback, which must
 * not fail): a failure is a WARNING and returns false; else an ERROR.
 */
static bool
append_line(const LedgerNote *note, const char *entry, bool quiet)
{
	int			elevel = quiet ? WARNING : ERROR;
	char	   *path = psprintf("%s/%s.ledger", note->directory, note->identity);
	StringInfoData line;
	char		prev[HASH_HEX_LEN + 1];
	char		lsn[32];
	struct stat st;
	int64		seq;
	off_t		keep;
	bool		created;
	int			fd;

	/* transient: an error between here and the close closes it, and drops the lock */
	fd = OpenTransientFilePerm(path, O_RDWR | O_CREAT | PG_BINARY, S_IRUSR | S_IWUSR);
	if (fd < 0)
	{
		ereport(elevel,
				(errcode_for_file_access(),
				 errmsg("could not open the erasure ledger \"%s\": %m", path),
				 errhint("Check that gdpr.ledger_directory is writable by the server's operating system user.")));
		return false;
	}
	if (flock(fd, LOCK_EX) != 0 || fstat(fd, &st) != 0)
		goto failed;
	created = st.st_size == 0;
	if (!read_last_line(fd, st.st_size, &seq, prev, &keep))
	{
		CloseTransientFile(fd);
		ereport(elevel,
				(errcode(ERRCODE_GDPR_LEDGER_DAMAGED),
				 errmsg("the erasure ledger \"%s\" is damaged: its last line cannot be read", path),
				 errhint("See gdpr.verify_ledger(); restore the ledger from its archive.")));
		return false;
	}
	if (keep < st.st_size && ftruncate(fd, keep) != 0)
		goto failed;

	snprintf(lsn, sizeof(lsn), "%X/%X", LSN_FORMAT_ARGS(GetXLogInsertRecPtr()));
	initStringInfo(&line);
	appendStringInfo(&line, "{\"seq\":" INT64_FORMAT ",\"identity\":\"%s\",\"entry\":", seq + 1,
					 note->identity);
	escape_json(&line, entry);
	appendStringInfo(&line, ",\"entry_id\":\"%s\",\"kind\":", note->entry_id);
	escape_json(&line, note->kind);
	appendStringInfo(&line, ",\"pseudonym\":\"%s\",\"purpose\":", note->pseudonym);
	if (note->purpose != NULL)
		escape_json(&line, note->purpose);
	else
		appendStringInfoString(&line, "null");
	appendStringInfoString(&line, ",\"written_at\":");
	escape_json(&line, timestamptz_to_str(GetCurrentTimestamp()));
	appendStringInfo(&line, ",\"xid\":\"" UINT64_FORMAT "\",\"lsn\":\"%s\",\"system_identifier\":\""
					 UINT64_FORMAT "\",\"timeline\":%u,\"database_oid\":%u,\"prev\":\"%s\"",
					 U64FromFullTransactionId(GetTopFullTransactionIdIfAny()), lsn,
					 GetSystemIdentifier(), GetWALInsertionTimeLine(), MyDatabaseId, prev);
	appendStringInfo(&line, ",\"hash\":\"%s\"}\n", gdpr_hmac_hex(note->chain_key, line.data, line.len));

	if (pwrite(fd, line.data, line.len, keep) != line.len || pg_fsync(fd) != 0)
		goto failed;
	CloseTransientFile(fd);
	/* a new file's name must be durable too; a failure is ours to report, not a PANIC */
	if (created && fsync_fname_ext(note->directory, true, false, elevel) != 0)
		return false;
	return true;

failed:
	{
		int			save_errno = errno;

		CloseTransientFile(fd);
		errno = save_errno;
		ereport(elevel,
				(errcode_for_file_access(),
				 errmsg("could not write the erasure ledger \"%s\": %m", path),
				 errdetail("An erasure cannot commit without its line in the ledger."),
				 errhint("Check the disk and the permissions of gdpr.ledger_directory.")));
		return false;
	}
}

/*
 * The sequence number and hash of the last complete line of the ledger
 * open on fd (0 and zeros for an empty one), and where to write the next:
 * after that line, which cuts off a torn last line.  false if the last
 * line is not ours.
 */
static bool
read_last_line(int fd, off_t size, int64 *seq, char *prev_hash, off_t *keep)
{
	off_t		want = 4096;

	*seq = 0;
	memset(prev_hash, '0', HASH_HEX_LEN);
	prev_hash[HASH_HEX_LEN] = '\0';
	*keep = 0;
	while (size > 0)
	{
		off_t		from = size > want ? size - want : 0;
		size_t		len = size - from;
		char	   *buf = palloc(len + 1);
		char	   *end;
		char	   *start;
		char		number[32];

		if (pread(fd, buf, len, from) != (ssize_t) len)
			return false;
		buf[len] = '\0';
		/* the end of the last complete line */
		end = buf + len;
		while (end > buf && end[-1] != '\n')
			end--;
		if (end == buf)
		{
			if (from == 0)
				return true;	/* no complete line: an empty ledger with a torn first line */
			want *= 4;
			continue;
		}
		*keep = from + (end - buf);
		end[-1] = '\0';
		start = end - 1;
		while (start > buf && start[-1] != '\n')
			start--;
		if (start == buf && from > 0)
		{
			want *= 4;
			continue;
		}
		if (!scan_field(start, "seq", number, sizeof(number)) ||
			!scan_field(start, "hash", prev_hash, HASH_HEX_LEN + 1) ||
			strlen(prev_hash) != HASH_HEX_LEN)
			return false;
		*seq = strtoi64(number, NULL, 10);
		return *seq > 0;
	}
	return true;
}

/*
 * The value of a top-level field of one of our lines ("field":value or
 * "field":"value"), which has no spaces and names each field once.
 */
static bool
scan_field(const char *line, const char *field, char *out, size_t outlen)
{
	char	   *pattern = psprintf("\"%s\":", field);
	const char *p = strstr(line, pattern);
	size_t		n = 0;

	if (p == NULL)
		return false;
	p += strlen(pattern);
	if (*p == '"')
		p++;
	while (p[n] != '\0' && p[n] != '"' && p[n] != ',' && p[n] != '}')
		n++;
	if (n >= outlen)
		return false;
	memcpy(out, p, n);
	out[n] = '\0';
	return true;
}

/*
 * Ships the ledger with gdpr.ledger_archive_command (%p: its path, %f: its
 * file name).  After the commit, so it cannot fail the transaction: a
 * failure is logged, and the next run ships the whole file again.
 */
static void
run_archive_command(const char *directory, const char *identity)
{
	StringInfoData cmd;
	char	   *file = psprintf("%s.ledger", identity);
	char	   *path = psprintf("%s/%s", directory, file);
	int			rc;

	if (gdpr_ledger_archive_command == NULL || gdpr_ledger_archive_command[0] == '\0')
		return;
	initStringInfo(&cmd);
	for (const char *c = gdpr_ledger_archive_command; *c; c++)
	{
		if (c[0] == '%' && c[1] == 'p')
			appendStringInfoString(&cmd, path), c++;
		else if (c[0] == '%' && c[1] == 'f')
			appendStringInfoString(&cmd, file), c++;
		else if (c[0] == '%' && c[1] == '%')
			appendStringInfoChar(&cmd, '%'), c++;
		else
			appendStringInfoChar(&cmd, *c);
	}
	fflush(NULL);
	rc = system(cmd.data);
	if (rc != 0)
		ereport(WARNING,
				(errmsg("gdpr.ledger_archive_command failed with status %d", rc),
				 errdetail("The command was: %s", cmd.data),
				 errhint("The ledger is complete locally; the next erasure ships it again.")));
}

/*
 * gdpr._ledger_read(identity): the ledger of identity as
 * {"lines": [...], "torn_tail": bool}, each line checked along the chain.
 * A line that does not verify raises GD401 and nothing is returned from
 * the ledger; an unreachable directory raises GD402; a ledger that does not
 * exist yet has no lines.
 */
Datum
gdpr_ledger_read(PG_FUNCTION_ARGS)
{
	char	   *identity = DatumGetCString(DirectFunctionCall1(uuid_out, PG_GETARG_DATUM(0)));
	const char *directory;
	char	   *path;
	char	   *key;
	char	   *data;
	char	   *line;
	char		prev[HASH_HEX_LEN + 1];
	StringInfoData out;
	struct stat st;
	int64		seq = 0;
	bool		torn = false;
	int			fd;

	if (!gdpr_ledger_enabled())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("no erasure ledger is set"),
				 errhint("Set gdpr.ledger_directory in postgresql.conf and reload.")));
	directory = checked_directory(NULL);
	path = psprintf("%s/%s.ledger", directory, identity);
	initStringInfo(&out);
	appendStringInfoString(&out, "{\"lines\": [");
	fd = OpenTransientFile(path, O_RDONLY | PG_BINARY);
	if (fd < 0 && errno != ENOENT)
		ereport(ERROR,
				(errcode(ERRCODE_GDPR_LEDGER_UNREACHABLE),
				 errmsg("could not open the erasure ledger \"%s\": %m", path)));
	if (fd < 0)
	{
		appendStringInfoString(&out, "], \"torn_tail\": false}");
		PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(out.data)));
	}
	if (fstat(fd, &st) != 0)
		ereport(ERROR, (errcode_for_file_access(), errmsg("could not stat \"%s\": %m", path)));
	if (st.st_size > (off_t) (MaxAllocSize / 2))
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("the erasure ledger \"%s\" is too large to read (%lld bytes)", path,
						(long long) st.st_size)));
	data = palloc(st.st_size + 1);
	if (read(fd, data, st.st_size) != st.st_size)
		ereport(ERROR, (errcode_for_file_access(), errmsg("could not read \"%s\": %m", path)));
	data[st.st_size] = '\0';
	CloseTransientFile(fd);

	key = chain_key();
	memset(prev, '0', HASH_HEX_LEN);
	prev[HASH_HEX_LEN] = '\0';
	verified_entries = verified_aborted = NIL;
	verified_read = false;
	line = data;
	while (*line != '\0')
	{
		char	   *nl = strchr(line, '\n');
		char	   *mark;
		char		field[128];
		char	   *problem = NULL;

		if (nl == NULL)
		{
			/* torn by a crash mid-write: its transaction cannot have committed */
			torn = true;
			break;
		}
		*nl = '\0';
		mark = strstr(line, ",\"hash\":\"");
		if (mark == NULL || strlen(mark) != strlen(",\"hash\":\"\"}") + HASH_HEX_LEN)
			problem = "it does not end with its hash";
		else if (strncmp(mark + 9, gdpr_hmac_hex(key, line, mark - line), HASH_HEX_LEN) != 0)
			problem = "its hash does not match its content (edited, or written with another key)";
		else if (!scan_field(line, "seq", field, sizeof(field)) || strtoi64(field, NULL, 10) != seq + 1)
			problem = psprintf("its sequence number is not " INT64_FORMAT " (a line before it is missing)", seq + 1);
		else if (!scan_field(line, "prev", field, sizeof(field)) || strcmp(field, prev) != 0)
			problem = "it does not chain on the line before it";
		else if (!scan_field(line, "identity", field, sizeof(field)) || strcmp(field, identity) != 0)
			problem = "it belongs to another database identity";
		if (problem != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_GDPR_LEDGER_DAMAGED),
					 errmsg("the erasure ledger \"%s\" is damaged at line " INT64_FORMAT ": %s",
							path, seq + 1, problem),
					 errdetail("Nothing is replayed from a damaged ledger."),
					 errhint("Restore the ledger from its archive (gdpr.ledger_archive_command), then run gdpr_replay_erasures().")));
		memcpy(prev, mark + 9, HASH_HEX_LEN);
		seq++;
		remember_verified(line);
		appendStringInfoString(&out, seq > 1 ? ", " : "");
		appendStringInfoString(&out, line);
		line = nl + 1;
	}
	appendStringInfo(&out, "], \"torn_tail\": %s}", torn ? "true" : "false");
	verified_read = true;
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(out.data)));
}

/* Notes a verified line, or its aborted mark, for gdpr_ledger_replayable */
static void
remember_verified(const char *line)
{
	char		entry[32];
	char		entry_id[64];
	MemoryContext old;

	if (!scan_field(line, "entry", entry, sizeof(entry)) ||
		!scan_field(line, "entry_id", entry_id, sizeof(entry_id)))
		return;
	old = MemoryContextSwitchTo(TopTransactionContext);
	if (strcmp(entry, "aborted") == 0)
		verified_aborted = lappend(verified_aborted, pstrdup(entry_id));
	else
		verified_entries = lappend(verified_entries, pstrdup(line));
	MemoryContextSwitchTo(old);
}

/*
 * The verified ledger's line of entry entry_id, of that type and for the
 * subject of that kind and pseudonym, when a replay may act on it: not
 * aborted, written by this database or a copy it descends from, and not
 * held here yet.  NULL otherwise.  What the replay functions check before
 * they act, whoever calls them: no caller names an entry of its own.
 * Reads the ledger if this transaction has not.  SPI.
 */
const char *
gdpr_ledger_replayable(const char *entry_id, const char *entry, const char *kind,
					   const char *pseudonym)
{
	const char *found = NULL;
	ListCell   *lc;
	char		sysid[32];
	char		dboid[16];
	Oid			argtypes[3] = {TEXTOID, TEXTOID, TEXTOID};
	Datum		args[3];
	int			ret;

	if (!verified_read &&
		SPI_execute("SELECT gdpr._ledger_read(gdpr.ledger_identity()) IS NOT NULL", true, 1) != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute failed");
	foreach(lc, verified_aborted)
		if (strcmp(lfirst(lc), entry_id) == 0)
			return NULL;
	foreach(lc, verified_entries)
	{
		const char *line = lfirst(lc);
		char		value[64];

		if (scan_field(line, "entry_id", value, sizeof(value)) && strcmp(value, entry_id) == 0 &&
			scan_field(line, "entry", value, sizeof(value)) && strcmp(value, entry) == 0 &&
			scan_field(line, "pseudonym", value, sizeof(value)) && strcmp(value, pseudonym) == 0)
			found = line;
	}
	if (found == NULL || !scan_field(found, "system_identifier", sysid, sizeof(sysid)) ||
		!scan_field(found, "database_oid", dboid, sizeof(dboid)))
		return NULL;
	/* kind: escaped in the line, so compared through the record the database keeps */
	args[0] = CStringGetTextDatum(entry_id);
	args[1] = CStringGetTextDatum(sysid);
	args[2] = CStringGetTextDatum(dboid);
	ret = gdpr_execute_as_owner(NULL,
								"SELECT EXISTS (SELECT FROM gdpr.database_identity i "
								"                WHERE i.identity OPERATOR(pg_catalog.=) gdpr.ledger_identity() "
								"                  AND i.system_identifier OPERATOR(pg_catalog.=) $2 "
								"                  AND i.database_oid OPERATOR(pg_catalog.=) $3::pg_catalog.oid) "
								"   AND NOT EXISTS (SELECT FROM gdpr.ledger l "
								"                    WHERE l.entry_id OPERATOR(pg_catalog.=) $1::pg_catalog.uuid)",
								3, argtypes, args, NULL, true, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "SPI_execute_with_args failed: %d", ret);
	if (!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &(bool) {false})))
		return NULL;
	{
		StringInfoData want;

		/* the kind, as the line has it */
		initStringInfo(&want);
		appendStringInfoString(&want, "\"kind\":");
		escape_json(&want, kind);
		appendStringInfoChar(&want, ',');
		if (strstr(found, want.data) == NULL)
			return NULL;
	}
	return found;
}

/*
 * gdpr._ledger_check(entry_id, entry, kind, pseudonym, subject): refuses,
 * unless the ledger holds that entry for this database to replay and
 * subject is the key behind the pseudonym (NULL: the database holds no key
 * of that pseudonym).  For gdpr._replay_record, which gdpr_admin may call.
 */
Datum
gdpr_ledger_check(PG_FUNCTION_ARGS)
{
	char	   *entry_id;
	char	   *entry;
	char	   *kind;
	char	   *pseudonym;
	bool		ok;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2) || PG_ARGISNULL(3))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("a ledger entry to replay needs its id, type, kind and pseudonym")));
	entry_id = DatumGetCString(DirectFunctionCall1(uuid_out, PG_GETARG_DATUM(0)));
	entry = text_to_cstring(PG_GETARG_TEXT_PP(1));
	kind = text_to_cstring(PG_GETARG_TEXT_PP(2));
	pseudonym = text_to_cstring(PG_GETARG_TEXT_PP(3));
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	ok = gdpr_ledger_replayable(entry_id, entry, kind, pseudonym) != NULL;
	if (ok && !PG_ARGISNULL(4))
		ok = strcmp(gdpr_subject_pseudonym(kind, text_to_cstring(PG_GETARG_TEXT_PP(4))), pseudonym) == 0;
	else if (ok)
	{
		Oid			argtypes[2] = {TEXTOID, TEXTOID};
		Datum		args[2] = {CStringGetTextDatum(kind), CStringGetTextDatum(pseudonym)};

		if (SPI_execute_with_args("SELECT NOT EXISTS (SELECT FROM gdpr.subject_kind k WHERE k.kind OPERATOR(pg_catalog.=) $1) "
								  "    OR gdpr._ledger_keys($1, ARRAY[$2]) ->> $2 IS NULL",
								  2, argtypes, args, NULL, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "SPI_execute_with_args failed");
		ok = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &(bool) {false}));
	}
	SPI_finish();
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the %s of kind \"%s\" to replay is not an entry of the ledger that this database lacks, for that subject",
						entry, kind),
				 errhint("See gdpr.ledger_entries(); gdpr_replay_erasures() replays what is missing.")));
	PG_RETURN_VOID();
}

/*
 * What a replay report says of the line it replays and of the copy that
 * replays it: system identifier, timeline and WAL position of both (the
 * sequence comparison decides; these are for whoever investigates).
 */
char *
gdpr_ledger_replay_diagnostics(const char *line)
{
	static const char *const fields[] = {"seq", "written_at", "xid", "lsn", "system_identifier",
	"timeline", "database_oid"};
	StringInfoData buf;
	char		value[128];

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"written\": {");
	for (int i = 0; i < (int) lengthof(fields); i++)
	{
		if (!scan_field(line, fields[i], value, sizeof(value)))
			continue;
		appendStringInfoString(&buf, buf.data[buf.len - 1] == '{' ? "" : ", ");
		escape_json(&buf, fields[i]);
		appendStringInfoString(&buf, ": ");
		escape_json(&buf, value);
	}
	appendStringInfo(&buf, "}, \"here\": {\"system_identifier\": \"" UINT64_FORMAT "\", "
					 "\"timeline\": \"%u\", \"lsn\": \"%X/%X\", \"database_oid\": \"%u\"}}",
					 GetSystemIdentifier(), GetWALInsertionTimeLine(),
					 LSN_FORMAT_ARGS(GetXLogInsertRecPtr()), MyDatabaseId);
	return buf.data;
}

/* For bsearch and qsort over C strings */
static int
compare_strings(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

/*
 * gdpr._ledger_keys(kind, pseudonyms): the keys behind the pseudonyms, as
 * {pseudonym: key}, recomputed from every key of that kind the database
 * holds: its subject table, and the trail and bookkeeping that name keys
 * (a subject whose row is gone may still be there).  One pass over them,
 * whatever the number of pseudonyms.  The subject table is read as its
 * owner, the extension's tables as theirs.
 */
Datum
gdpr_ledger_keys(PG_FUNCTION_ARGS)
{
	char	   *kind = text_to_cstring(PG_GETARG_TEXT_PP(0));
	ArrayType  *array = PG_GETARG_ARRAYTYPE_P(1);
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	char	  **wanted;
	bool	   *done;
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1] = {CStringGetTextDatum(kind)};
	StringInfoData out;
	int			found = 0;
	char	   *table_sql;
	Oid			owner = InvalidOid;

	deconstruct_array(array, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	wanted = palloc(sizeof(char *) * Max(n, 1));
	done = palloc0(sizeof(bool) * Max(n, 1));
	for (int i = 0; i < n; i++)
		wanted[i] = nulls[i] ? "" : TextDatumGetCString(elems[i]);
	qsort(wanted, n, sizeof(char *), compare_strings);

	initStringInfo(&out);
	appendStringInfoChar(&out, '{');
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("SELECT pg_catalog.format('SELECT DISTINCT %I::pg_catalog.text FROM %s', "
							  "       k.key_column, gdpr._qualified(k.relid)), c.relowner "
							  "  FROM gdpr.subject_kind k JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) k.relid "
							  " WHERE k.kind OPERATOR(pg_catalog.=) $1",
							  1, argtypes, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed");
	table_sql = SPI_processed == 1 ? SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1) : NULL;
	if (table_sql != NULL)
		owner = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2,
											   &(bool) {false}));

	for (int pass = 0; pass < 2; pass++)
	{
		int			ret;

		if (pass == 0 && table_sql == NULL)
			continue;
		/*
		 * The subject table is read with its owner's rights, whoever calls:
		 * the worker and the replay's SECURITY DEFINER parts are superusers,
		 * and the relation (or the cast of its key to text) may run code
		 * its owner wrote.
		 */
		if (pass == 0)
			ret = gdpr_execute_as_role(owner, NULL, table_sql, 0, NULL, NULL, NULL, true, 0);
		else
			ret = gdpr_execute_as_owner(NULL,
										"SELECT DISTINCT k FROM ("
										" SELECT subject_id FROM gdpr.audit_log WHERE subject_kind OPERATOR(pg_catalog.=) $1"
										" UNION ALL SELECT subject_id FROM gdpr.consent WHERE kind OPERATOR(pg_catalog.=) $1"
										" UNION ALL SELECT subject_id FROM gdpr.objection WHERE kind OPERATOR(pg_catalog.=) $1"
										" UNION ALL SELECT subject_id FROM gdpr.restriction WHERE kind OPERATOR(pg_catalog.=) $1"
										" UNION ALL SELECT subject_id FROM gdpr.request WHERE kind OPERATOR(pg_catalog.=) $1"
										" UNION ALL SELECT subject_id FROM gdpr.erasure_request WHERE kind OPERATOR(pg_catalog.=) $1"
										") s(k) WHERE k IS NOT NULL",
										1, argtypes, args, NULL, true, 0);
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "SPI_execute failed: %d", ret);
		for (uint64 i = 0; i < SPI_processed && found < n; i++)
		{
			char	   *key = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
			char	   *pseudonym;
			char	  **hit;

			if (key == NULL)
				continue;
			pseudonym = gdpr_subject_pseudonym(kind, key);
			hit = bsearch(&pseudonym, wanted, n, sizeof(char *), compare_strings);
			if (hit == NULL || done[hit - wanted])
				continue;
			appendStringInfoString(&out, found > 0 ? ", " : "");
			escape_json(&out, pseudonym);
			appendStringInfoString(&out, ": ");
			escape_json(&out, key);
			done[hit - wanted] = true;
			found++;
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_finish();
	appendStringInfoChar(&out, '}');
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(out.data)));
}

/*
 * gdpr._ledger_state(): how this database stands against the ledger, for
 * the worker's gate: off, unreachable, incomplete (it holds entries the
 * ledger lacks: a ledger replaced or cut short), missing (entries to
 * replay) or current.  A damaged ledger raises GD401.
 */
Datum
gdpr_ledger_state(PG_FUNCTION_ARGS)
{
	bool		unreachable;
	char	   *missing;
	char	   *incomplete;
	const char *state;

	if (!gdpr_ledger_enabled())
		PG_RETURN_TEXT_P(cstring_to_text("off"));
	(void) checked_directory(&unreachable);
	if (unreachable)
		PG_RETURN_TEXT_P(cstring_to_text("unreachable"));
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute("SELECT v->>'missing', v->>'not_in_ledger' FROM gdpr.verify_ledger() v",
					true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "SPI_execute failed");
	missing = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	incomplete = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	state = strcmp(incomplete, "0") != 0 ? "incomplete" : strcmp(missing, "0") != 0 ? "missing" : "current";
	SPI_finish();
	PG_RETURN_TEXT_P(cstring_to_text(state));
}

/* The date by which no backup holds what was erased at erased_at, or 0 if unknown */
TimestampTz
gdpr_backups_clear_by(TimestampTz erased_at)
{
	if (gdpr_backup_retention <= 0)
		return 0;
	return erased_at + (TimestampTz) gdpr_backup_retention * 60 * USECS_PER_SEC;
}

