/*-------------------------------------------------------------------------
 *
 * guc.c
 *		The gdpr.* settings, and the decisions that read them.
 *
 * Settings an application may set for itself (who the end user is, where
 * they connect from) are USERSET; settings that decide what is audited are
 * SUSET, so that an audited role cannot switch its own auditing off.
 *
 * Lists and intervals are parsed once, in check hooks, into "extra" data
 * (allocated as the GUC machinery wants it: it frees it, see compat.h); assign hooks only publish the
 * parsed result.  The hot path (the audit
 * trigger) never parses a setting.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <arpa/inet.h>

#include "gdpr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/guc.h"
#include "utils/varlena.h"

/* Exported settings; see gdpr.h */
int			gdpr_audit_values = GDPR_VALUES_CHANGED;
bool		gdpr_audit_superusers = true;
bool		gdpr_allow_capture_off = false;
bool		gdpr_audit_replicated = true;
bool		gdpr_audit_unchanged_updates = false;
bool		gdpr_audit_reads = false;
int			gdpr_read_audit_max_subjects = 10000;
char	   *gdpr_actor = NULL;
char	   *gdpr_client_addr = NULL;
char	   *gdpr_user_agent = NULL;
int			gdpr_max_event_detail = 8192;
char	   *gdpr_ledger_directory = NULL;
bool		gdpr_ledger_required = false;
char	   *gdpr_ledger_archive_command = NULL;
int			gdpr_backup_retention = 0;

/* Backing strings of the parsed settings, owned by the GUC machinery */
static char *audit_retention_string = NULL;
static char *audit_events_string = NULL;
static char *audit_exclude_roles_string = NULL;

/* Parsed forms, published by the assign hooks */
static Interval audit_retention = {0, 0, 7 * MONTHS_PER_YEAR};
static int	audit_event_mask = GDPR_EV_ALL;
static const char *excluded_roles = NULL;	/* "a\0b\0\0", or NULL for none */

static const struct config_enum_entry audit_values_options[] = {
	{"none", GDPR_VALUES_NONE, false},
	{"changed", GDPR_VALUES_CHANGED, false},
	{"full", GDPR_VALUES_FULL, false},
	{NULL, 0, false}
};

static const struct
{
	const char *name;
	int			mask;
}			event_classes[] = {
	{"insert", GDPR_EV_INSERT},
	{"update", GDPR_EV_UPDATE},
	{"delete", GDPR_EV_DELETE},
	{"truncate", GDPR_EV_TRUNCATE},
	{"write", GDPR_EV_INSERT | GDPR_EV_UPDATE | GDPR_EV_DELETE | GDPR_EV_TRUNCATE},
	{"ddl", GDPR_EV_DDL},
	{"app", GDPR_EV_APP},
	{"all", GDPR_EV_ALL},
	{"none", 0},
};

static bool check_retention(char **newval, void **extra, GucSource source);
static void assign_retention(const char *newval, void *extra);
static bool check_events(char **newval, void **extra, GucSource source);
static void assign_events(const char *newval, void *extra);
static bool check_exclude_roles(char **newval, void **extra, GucSource source);
static void assign_exclude_roles(const char *newval, void *extra);
static bool check_client_addr(char **newval, void **extra, GucSource source);
static bool check_context_text(char **newval, void **extra, GucSource source);
static bool role_excluded(Oid roleid);

void
gdpr_define_settings(void)
{
	DefineCustomStringVariable("gdpr.actor",
							   "The application's end user, recorded with every audit event.",
							   "Set by the application per session or transaction, e.g. SET gdpr.actor = 'alice@example.com'.",
							   &gdpr_actor, NULL, PGC_USERSET, 0,
							   check_context_text, NULL, NULL);
	DefineCustomStringVariable("gdpr.client_addr",
							   "The end user's network address, when the application sits behind a proxy.",
							   "When empty, the address of the database connection is recorded.",
							   &gdpr_client_addr, NULL, PGC_USERSET, 0,
							   check_client_addr, NULL, NULL);
	DefineCustomStringVariable("gdpr.user_agent",
							   "The end user's user agent, recorded with every audit event.",
							   NULL,
							   &gdpr_user_agent, NULL, PGC_USERSET, 0,
							   check_context_text, NULL, NULL);
	DefineCustomIntVariable("gdpr.max_event_detail",
							"Largest detail, in bytes, that gdpr.log_event() accepts.",
							"Application events are kept for gdpr.audit_retention and nobody can delete them: "
							"any role that may log events must not be able to fill the disk.",
							&gdpr_max_event_detail, 8192, 0, 1024 * 1024, PGC_SUSET, GUC_UNIT_BYTE,
							NULL, NULL, NULL);
	DefineCustomStringVariable("gdpr.ledger_directory",
							   "Directory of the erasure ledger, outside the data directory and every tablespace.",
							   "Every committed erasure, withdrawn consent, objection and restriction is written there, and replayed in a restored copy that lacks it. Empty: no ledger.",
							   &gdpr_ledger_directory, "", PGC_SIGHUP, 0,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("gdpr.ledger_archive_command",
							   "Shell command that ships the erasure ledger after each write (%p: its path, %f: its file name).",
							   NULL,
							   &gdpr_ledger_archive_command, "", PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("gdpr.backup_retention",
							"How long backups are kept: erasure reports say by when no backup holds the subject.",
							"0: not said.",
							&gdpr_backup_retention, 0, 0, INT_MAX, PGC_SIGHUP, GUC_UNIT_MIN,
							NULL, NULL, NULL);
	DefineCustomEnumVariable("gdpr.audit_values",
							 "How much of each changed row the audit trail keeps: none, changed or full.",
							 "changed keeps the changed columns of an UPDATE and the whole row of INSERT and DELETE; secret columns are never kept.",
							 &gdpr_audit_values, GDPR_VALUES_CHANGED, audit_values_options,
							 PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("gdpr.audit_retention",
							   "How long audit events are kept; sets retention_until of each event.",
							   NULL,
							   &audit_retention_string, "7 years", PGC_SUSET, 0,
							   check_retention, assign_retention, NULL);
	DefineCustomStringVariable("gdpr.audit_events",
							   "Comma-separated event classes to audit: insert, update, delete, truncate, write, ddl, app, all or none.",
							   "Changes to the personal-data map itself are always recorded.",
							   &audit_events_string, "all", PGC_SUSET, GUC_LIST_INPUT,
							   check_events, assign_events, NULL);
	DefineCustomStringVariable("gdpr.audit_exclude_roles",
							   "Comma-separated roles whose actions are not audited.",
							   NULL,
							   &audit_exclude_roles_string, "", PGC_SUSET, GUC_LIST_INPUT,
							   check_exclude_roles, assign_exclude_roles, NULL);
	DefineCustomBoolVariable("gdpr.audit_superusers",
							 "Whether actions of superusers are audited.",
							 NULL,
							 &gdpr_audit_superusers, true, PGC_SUSET, 0,
							 NULL, NULL, NULL);
	DefineCustomBoolVariable("gdpr.allow_capture_off",
							 "Lets a superuser drop or disable the audit triggers of registered tables.",
							 "Each such command is recorded as an AUDIT_OFF event; gdpr.coverage_gaps "
							 "and gdpr_verify_audit() name the tables until capture is repaired.",
							 &gdpr_allow_capture_off, false, PGC_SUSET, 0,
							 NULL, NULL, NULL);
	DefineCustomBoolVariable("gdpr.audit_unchanged_updates",
							 "Whether an UPDATE that changes no column of a row is recorded.",
							 NULL,
							 &gdpr_audit_unchanged_updates, false, PGC_SUSET, 0,
							 NULL, NULL, NULL);
	DefineCustomBoolVariable("gdpr.audit_replicated",
							 "Whether changes applied under session_replication_role = replica are audited.",
							 "Off on a logical replication subscriber whose trail the publisher keeps.",
							 &gdpr_audit_replicated, true, PGC_SUSET, 0,
							 NULL, NULL, NULL);
}

/* Settings that only mean something when the library is preloaded. */
void
gdpr_define_preload_settings(void)
{
	DefineCustomBoolVariable("gdpr.ledger_required",
							 "Keep applications out of a database while its erasure ledger is unreachable.",
							 "Fail closed: a restored copy or a clone without its ledger serves no one until the ledger is back.",
							 &gdpr_ledger_required, false, PGC_SIGHUP, 0,
							 NULL, NULL, NULL);
	DefineCustomIntVariable("gdpr.queue_size",
							"Shared memory for the events sessions cannot write themselves (reads of read-audited tables, events of read-only transactions).",
							"When it is full, such events go to the server log; gdpr.queue counts them.",
							&gdpr_queue_size_kb, 8192, 64, 1024 * 1024, PGC_POSTMASTER, GUC_UNIT_KB,
							NULL, NULL, NULL);
	DefineCustomIntVariable("gdpr.read_audit_max_subjects",
							"Subjects a READ event lists at most; a statement that reads more records a bulk read of the table.",
							NULL,
							&gdpr_read_audit_max_subjects, 10000, 1, 1000000, PGC_SUSET, 0,
							NULL, NULL, NULL);
	DefineCustomBoolVariable("gdpr.audit_reads",
							 "Record reads of registered tables as one JSON line per statement in the server log.",
							 "Needs gdpr in shared_preload_libraries; works in read-only transactions and on standbys.",
							 &gdpr_audit_reads, false, PGC_SUSET, 0,
							 NULL, NULL, NULL);
}

/*
 * Whether an event of the given class, caused by the current user, goes to
 * the audit trail.  Runs once per audited row: only cached decisions here.
 */
bool
gdpr_event_wanted(int event_class)
{
	Oid			userid;

	if ((audit_event_mask & event_class) == 0)
		return false;
	userid = GetUserId();
	/* a superuser's DDL on personal data is always recorded: it changes what is captured */
	if (!gdpr_audit_superusers && event_class != GDPR_EV_DDL && superuser_arg(userid))
		return false;
	if (excluded_roles != NULL &&
		(role_excluded(userid) || role_excluded(GetSessionUserId())))
		return false;
	return true;
}

TimestampTz
gdpr_retention_until(TimestampTz from)
{
	return DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
												   TimestampTzGetDatum(from),
												   PointerGetDatum(&audit_retention)));
}

/*
 * Decisions for the last role asked about, dropped whenever the list
 * changes (assign_exclude_roles bumps the generation).
 */
static int	exclude_generation = 0;

static bool
role_excluded(Oid roleid)
{
	static Oid	cached_role = InvalidOid;
	static int	cached_generation = -1;
	static bool cached_answer = false;
	const char *name;
	const char *p;

	if (roleid == cached_role && cached_generation == exclude_generation)
		return cached_answer;

	cached_answer = false;
	name = GetUserNameFromId(roleid, true);
	if (name != NULL)
	{
		for (p = excluded_roles; *p != '\0'; p += strlen(p) + 1)
		{
			if (strcmp(p, name) == 0)
			{
				cached_answer = true;
				break;
			}
		}
	}
	cached_role = roleid;
	cached_generation = exclude_generation;
	return cached_answer;
}

static bool
check_retention(char **newval, void **extra, GucSource source)
{
	char		workbuf[256];
	char	   *field[MAXDATEFIELDS];
	int			ftype[MAXDATEFIELDS];
	int			nf;
	int			dtype;
	struct pg_itm_in itm;
	Interval   *result;

	if (ParseDateTime(*newval, workbuf, sizeof(workbuf), field, ftype,
					  MAXDATEFIELDS, &nf) != 0 ||
		DecodeInterval(field, ftype, nf, INTERVAL_FULL_RANGE, &dtype, &itm) != 0 ||
		dtype != DTK_DELTA)
	{
		GUC_check_errdetail("\"%s\" is not an interval.", *newval);
		GUC_check_errhint("Use an interval such as '7 years' or '90 days'.");
		return false;
	}
	result = (Interval *) gdpr_guc_malloc(sizeof(Interval));
	if (result == NULL)
		return false;
	if (itmin2interval(&itm, result) != 0 ||
		result->month < 0 || result->day < 0 || result->time < 0 ||
		(result->month == 0 && result->day == 0 && result->time == 0))
	{
		gdpr_guc_free(result);
		GUC_check_errdetail("The audit retention must be a positive interval.");
		return false;
	}
	*extra = result;
	return true;
}

static void
assign_retention(const char *newval, void *extra)
{
	audit_retention = *(Interval *) extra;
}

static bool
check_events(char **newval, void **extra, GucSource source)
{
	char	   *raw = pstrdup(*newval);
	List	   *items;
	ListCell   *lc;
	int			mask = 0;
	int		   *result;

	if (!SplitIdentifierString(raw, ',', &items))
	{
		GUC_check_errdetail("List syntax is invalid.");
		return false;
	}
	foreach(lc, items)
	{
		const char *item = lfirst(lc);
		bool		known = false;

		for (int i = 0; i < lengthof(event_classes); i++)
		{
			if (pg_strcasecmp(item, event_classes[i].name) == 0)
			{
				mask |= event_classes[i].mask;
				known = true;
				break;
			}
		}
		if (!known)
		{
			GUC_check_errdetail("Unknown event class \"%s\".", item);
			GUC_check_errhint("Use insert, update, delete, truncate, write, ddl, app, all or none.");
			return false;
		}
	}
	result = (int *) gdpr_guc_malloc(sizeof(int));
	if (result == NULL)
		return false;
	*result = mask;
	*extra = result;
	return true;
}

static void
assign_events(const char *newval, void *extra)
{
	audit_event_mask = *(int *) extra;
}

/* Parses the role list into one block of NUL-terminated names, ended by an empty name. */
static bool
check_exclude_roles(char **newval, void **extra, GucSource source)
{
	char	   *raw = pstrdup(*newval);
	List	   *items;
	ListCell   *lc;
	Size		len = 1;
	char	   *result;
	char	   *p;

	if (!SplitIdentifierString(raw, ',', &items))
	{
		GUC_check_errdetail("List syntax is invalid.");
		return false;
	}
	foreach(lc, items)
		len += strlen(lfirst(lc)) + 1;
	result = gdpr_guc_malloc(len);
	if (result == NULL)
		return false;
	p = result;
	foreach(lc, items)
	{
		strcpy(p, lfirst(lc));
		p += strlen(p) + 1;
	}
	*p = '\0';
	*extra = result;
	return true;
}

static void
assign_exclude_roles(const char *newval, void *extra)
{
	const char *list = (const char *) extra;

	excluded_roles = (list != NULL && list[0] != '\0') ? list : NULL;
	exclude_generation++;
}

/* An address or network, as the inet type takes it, checked without raising an error. */
static bool
check_client_addr(char **newval, void **extra, GucSource source)
{
	char		buf[INET6_ADDRSTRLEN + 8];
	unsigned char addr[sizeof(struct in6_addr)];
	char	   *slash;
	long		bits = -1;

	if (*newval == NULL || (*newval)[0] == '\0')
		return true;
	if (strlen(*newval) >= sizeof(buf))
		goto bad;
	strcpy(buf, *newval);
	slash = strchr(buf, '/');
	if (slash != NULL)
	{
		char	   *end;

		/* digits only, as the inet type reads them: strtol also takes signs and spaces */
		if (strspn(slash + 1, "0123456789") != strlen(slash + 1) || strlen(slash + 1) > 3)
			goto bad;
		bits = strtol(slash + 1, &end, 10);
		if (end == slash + 1 || *end != '\0' || bits < 0)
			goto bad;
		*slash = '\0';
	}
	if (inet_pton(AF_INET, buf, addr) == 1 && bits <= 32)
		return true;
	if (inet_pton(AF_INET6, buf, addr) == 1 && bits <= 128)
		return true;
bad:
	GUC_check_errdetail("\"%s\" is not an IP address.", *newval);
	GUC_check_errhint("Set gdpr.client_addr to the end user's address, such as '203.0.113.7', or to '' to record the connection's.");
	return false;
}

/*
 * gdpr.actor and gdpr.user_agent go into every event, kept for years and
 * undeletable: any role may set them, so they are capped.
 */
static bool
check_context_text(char **newval, void **extra, GucSource source)
{
	if (*newval != NULL && strlen(*newval) > GDPR_MAX_NAME_LEN)
	{
		GUC_check_errdetail("The value has %zu bytes; at most %d are kept with each event.",
							strlen(*newval), GDPR_MAX_NAME_LEN);
		GUC_check_errhint("Record an identifier of the user or agent, not a document.");
		return false;
	}
	return true;
}
