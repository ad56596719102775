/*-------------------------------------------------------------------------
 *
 * gdpr.h
 *		What the C files of the gdpr extension share: settings, the cached
 *		personal-data map of one table, and the entry points each file offers
 *		the others.
 *
 * Memory: a GdprTableMap and everything it points to live in the memory
 * context the caller passed to gdpr_load_table_map; nothing in it is shared
 * between backends.  Functions that say "SPI" must be called between
 * SPI_connect and SPI_finish.
 *
 *-------------------------------------------------------------------------
 */
#ifndef GDPR_H
#define GDPR_H

#include "access/xact.h"
#include "catalog/pg_attribute.h"
#include "compat.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "nodes/pg_list.h"
#include "utils/jsonb.h"
#include "utils/relcache.h"
#include "utils/timestamp.h"

/*
 * Our own SQLSTATEs, class GD, documented in the README so applications can
 * catch them.  GD100 and GD101 (no path, ambiguous path) are raised by the
 * install script.
 */
#define ERRCODE_GDPR_SUBJECT_NOT_FOUND	MAKE_SQLSTATE('G','D','2','0','0')
#define ERRCODE_GDPR_LEGAL_HOLD			MAKE_SQLSTATE('G','D','3','0','0')
#define ERRCODE_GDPR_RESTRICTED			MAKE_SQLSTATE('G','D','3','0','1')
#define ERRCODE_GDPR_ERASED				MAKE_SQLSTATE('G','D','3','0','2')
#define ERRCODE_GDPR_ERASE_IMPOSSIBLE	MAKE_SQLSTATE('G','D','3','0','3')
#define ERRCODE_GDPR_CONSENT_REQUIRED	MAKE_SQLSTATE('G','D','3','0','4')
#define ERRCODE_GDPR_GATE_SHUT			MAKE_SQLSTATE('G','D','4','0','0')
#define ERRCODE_GDPR_LEDGER_DAMAGED		MAKE_SQLSTATE('G','D','4','0','1')
#define ERRCODE_GDPR_LEDGER_UNREACHABLE	MAKE_SQLSTATE('G','D','4','0','2')

/* Event classes, for gdpr.audit_events */
#define GDPR_EV_INSERT		0x0001
#define GDPR_EV_UPDATE		0x0002
#define GDPR_EV_DELETE		0x0004
#define GDPR_EV_TRUNCATE	0x0008
#define GDPR_EV_DDL			0x0010
#define GDPR_EV_APP			0x0020
#define GDPR_EV_ALL			0x003F

/* How much of a row the audit trail keeps (gdpr.audit_values) */
typedef enum GdprAuditValues
{
	GDPR_VALUES_NONE,
	GDPR_VALUES_CHANGED,
	GDPR_VALUES_FULL
} GdprAuditValues;

/* guc.c: set by the GUC machinery only */
extern int	gdpr_audit_values;
extern bool gdpr_audit_superusers;
extern bool gdpr_allow_capture_off;
extern bool gdpr_audit_replicated;
extern bool gdpr_audit_unchanged_updates;
extern bool gdpr_audit_reads;
extern char *gdpr_actor;
extern char *gdpr_client_addr;
extern char *gdpr_user_agent;
extern int	gdpr_max_event_detail;
extern char *gdpr_ledger_directory;
extern bool gdpr_ledger_required;
extern char *gdpr_ledger_archive_command;
extern int	gdpr_backup_retention;	/* minutes; 0: not said */

/* Longest name, subject key, actor or user agent an event keeps, in bytes */
#define GDPR_MAX_NAME_LEN	1024

extern void gdpr_define_settings(void);
extern void gdpr_define_preload_settings(void);
extern bool gdpr_event_wanted(int event_class);
extern TimestampTz gdpr_retention_until(TimestampTz from);

/* One step of a path from a row to its subject; see gdpr.path_step */
typedef struct GdprStep
{
	List	   *from_cols;		/* char *, columns of the row we stand on */
	Oid			to_rel;
	List	   *to_cols;		/* char *, columns of to_rel */
	List	   *ops;			/* Oid, one equality operator per column pair */
	bool		reverse;		/* from_cols are referenced by to_cols */
} GdprStep;

typedef struct GdprPath
{
	char	   *name;
	bool		owner;			/* false: the subject is only concerned */
	char	   *subject_column; /* the row holds the key itself, or NULL */
	char	   *condition;		/* canonical SQL over the row's bare columns, or NULL */
	List	   *about_columns;	/* char *: what a concerned path's row says about the subject */
	List	   *steps;			/* GdprStep *, when subject_column is NULL */
} GdprPath;

typedef struct GdprColumn
{
	char	   *name;
	char	   *category;
	char	   *erase;
} GdprColumn;

typedef struct GdprTableMap
{
	Oid			relid;			/* the registered (root) table */
	char	   *qualified_name;
	char	   *from_name;		/* how statements name it: "ONLY x" when an inheritance
								 * child is registered on its own, else x */
	char	   *kind;
	Oid			subject_relid;
	char	   *key_column;
	Oid			key_type;
	char	   *on_erase;
	bool		key_nondeterministic;	/* the key compares under a nondeterministic collation */
	List	   *paths;			/* GdprPath *, owner paths first */
	List	   *columns;		/* GdprColumn *, classified columns */
} GdprTableMap;

/* The SQL of one path; see gdpr_path_sql */
typedef struct GdprPathSql
{
	char	   *from;			/* joined tables, or "" when the key is in the row */
	char	   *where;			/* ties the first joined table to the row */
	char	   *key;			/* the subject key, of its own type */
	bool		many;			/* a reverse step: several subject rows may match */
	char	   *row_column;		/* when from is "": the row's column holding the key */
} GdprPathSql;

/* One data subject, as the rights functions take it */
typedef struct GdprSubject
{
	char	   *kind;
	Oid			relid;			/* the subject table */
	char	   *key_column;
	Oid			key_type;
	Datum		key;			/* of key_type */
	char	   *key_text;		/* canonical text form, as the audit trail records it */
} GdprSubject;

/* subject.c */
extern Oid	gdpr_root_relid(Oid relid);
extern GdprTableMap *gdpr_load_table_map(Oid relid, MemoryContext mcxt);	/* SPI */
extern GdprPathSql gdpr_path_sql(const GdprTableMap *map, const GdprPath *path,
								 const char *rowprefix);
#define GDPR_PATHS_OWNER		1
#define GDPR_PATHS_CONCERNED	2
#define GDPR_PATHS_ALL			3
extern List *gdpr_pk_names(Relation rel);
extern char *gdpr_pk_list(Relation rel, const char *prefix);
extern char *gdpr_pk_json(Relation rel, const char *prefix);
extern char *gdpr_path_rows_sql(const GdprTableMap *map, const char *pk, int which);
extern char *gdpr_subject_sql(const GdprTableMap *map, const GdprPath *path,
							  const char *rowref);
extern char *gdpr_shared_sql(const GdprTableMap *map);
extern GdprSubject *gdpr_resolve_subject(FunctionCallInfo fcinfo, int argno,
										 const char *kind, MemoryContext mcxt);	/* SPI */
extern bool gdpr_subject_exists(const GdprSubject *subject);	/* SPI */
extern bool gdpr_key_nondeterministic(Oid relid, const char *column);
extern bool gdpr_column_is_secret(const GdprTableMap *map, const char *column);
extern char *gdpr_relation_name(Oid relid);

/* condition.c */
extern void gdpr_check_expression(const char *condition, const char *what);

/* audit.c */
extern void gdpr_audit_invalidate(Oid relid);
extern void gdpr_install_capture_hooks(void);
extern void gdpr_capture_xact_end(bool commit);
extern bool gdpr_capture_pending(void);
extern int64 gdpr_audit_event(const char *event, bool success, const char *kind,
							  const char *subject, const char *table_name,
							  Jsonb *detail);	/* SPI */
extern int64 gdpr_audit_event_until(const char *event, bool success, const char *kind,
									 const char *subject, const char *table_name, Jsonb *detail,
									 TimestampTz keep_until);	/* SPI */
extern int	gdpr_become_audit_owner(Oid *save_userid, int *save_sec_context);
extern bool gdpr_reserved_event(const char *event);
extern int	gdpr_execute_as_owner(SPIPlanPtr plan, const char *sql, int nargs, Oid *argtypes,
								  Datum *values, const char *nulls, bool read_only, long count);	/* SPI */

/* role.c */
extern int	gdpr_become_role(Oid role, Oid *save_userid, int *save_sec_context);
extern void gdpr_leave_role(Oid save_userid, int save_sec_context, int nest);
extern int	gdpr_execute_as_role(Oid role, SPIPlanPtr plan, const char *sql, int nargs,
								 Oid *argtypes, Datum *values, const char *nulls,
								 bool read_only, long count);	/* SPI */
extern Oid	gdpr_relation_owner(Oid relid);

/* anonymize.c */
extern char *gdpr_pseudonym(const char *seed, size_t len);
extern char *gdpr_hmac_hex(const char *key, const char *data, size_t len);
extern char *gdpr_subject_pseudonym(const char *kind, const char *key);
extern char *gdpr_anonymize_expr(Form_pg_attribute att, const char *strategy, const char *seed,
								 const char **error);
extern void gdpr_anonymize_invalidate(Oid relid);

/* erase.c */
extern bool gdpr_erasure_exempt(Oid relid);
extern Jsonb *gdpr_erasure_record(const GdprSubject *subject);	/* SPI */
extern bool gdpr_erasure_running(void);
extern void gdpr_erase_cluster_begin(Jsonb *body);	/* SPI */
extern void gdpr_erase_cluster_scrub(Jsonb *body);	/* SPI */
extern const char *gdpr_erasing_key(const char *kind);
extern void gdpr_erasure_check_row(Oid table, const char *kind, char **oldkeys,
								   char **newkeys, int nkeys, Jsonb *rowkey);

/* chain.c */
extern bool gdpr_audit_maintenance;
extern int64 gdpr_chain_redact(Datum event_ids, const char *pseudonym,
								TimestampTz *keep_until);	/* SPI */
extern void gdpr_chain_hold_sealers(void);	/* SPI */

/* retention.c */
extern bool gdpr_retention_exempt(Oid relid, int event_class);

/* export.c */
extern void gdpr_export_invalidate(Oid relid);
extern void gdpr_push_key(JsonbParseState **state, const char *key);
extern void gdpr_push_string(JsonbParseState **state, const char *value);
extern void gdpr_push_jsonb(JsonbParseState **state, Jsonb *value);
extern void gdpr_complete_request(int64 request_id, const GdprSubject *subject, const char *rights,
								  const char *outcome);	/* SPI */

/* worker.c */
extern void gdpr_define_worker_settings(void);
extern void gdpr_register_launcher(void);
extern bool gdpr_worker_serves(const char *database);
struct BackgroundWorkerHandle;
extern struct BackgroundWorkerHandle *gdpr_start_database_worker(const char *function,
																 const char *type, Oid dboid);

/* ledger.c */
extern bool gdpr_ledger_enabled(void);
extern char *gdpr_ledger_note(const char *entry, const char *kind, const char *pseudonym,
							  const char *purpose);	/* SPI */
extern const char *gdpr_ledger_replayable(const char *entry_id, const char *entry, const char *kind,
										  const char *pseudonym);	/* SPI */
extern char *gdpr_ledger_replay_diagnostics(const char *line);
extern void gdpr_ledger_xact(XactEvent event);
extern void gdpr_ledger_subxact(SubXactEvent event);
extern TimestampTz gdpr_backups_clear_by(TimestampTz erased_at);

/* gate.c */
/* A database's gate, as the worker left it (GDPR_GATE_PENDING: not checked since the start) */
#define GDPR_GATE_PENDING		0
#define GDPR_GATE_OPEN			1
#define GDPR_GATE_UNREACHABLE	2
#define GDPR_GATE_FAILED		3

extern void gdpr_install_gate(void);
extern void gdpr_gate_set(Oid dboid, int state);
extern int	gdpr_gate_state(Oid dboid);

/* queue.c */

/* An event handed to the queue; a string is NULL where the event has none */
typedef struct GdprQueuedEvent
{
	const char *event;
	TimestampTz time;			/* the statement's start */
	TimestampTz until;			/* retention_until */
	const char *session_role;
	const char *role;
	const char *actor;
	const char *client_addr;
	const char *user_agent;
	const char *application;
	const char *table;
	Oid			relid;
	const char *kind;
	const char *subject;
	const char *detail;			/* JSON, for events other than READ */
	/* READ only */
	uint64		rows;			/* rows the statement's scans of the table returned */
	int64		query_id;
	bool		bulk;			/* too many subjects to list, or no way to tell them */
	bool		aborted;		/* the statement did not end normally */
	bool		by_row;			/* keys are rows (JSON objects) the writer resolves */
	bool		unresolved;		/* the writer could not resolve them: bulk */
	int			nkeys;
	const char **keys;
} GdprQueuedEvent;

extern int	gdpr_queue_size_kb;
extern bool gdpr_queue_writer;
extern void gdpr_install_queue(void);
extern bool gdpr_queue_available(void);
extern void gdpr_event_context(GdprQueuedEvent *e, const char *event, Oid userid);
extern void gdpr_send_event(const GdprQueuedEvent *e);
extern void gdpr_queue_start_writers(void);
extern void gdpr_queue_launcher_started(void);
extern int64 gdpr_record_event(const char *event, const char *kind, const char *subject,
							   const char *table_name, Jsonb *detail);	/* SPI */

/* citus.c */
extern Oid	gdpr_citus_shard_table(Oid relid, bool *recorded_here);	/* SPI */
extern bool gdpr_citus_shard_name(Oid relid);
extern void gdpr_cluster_map_changed(void);	/* SPI */
extern bool gdpr_cluster_catch_up(void);	/* SPI */
extern void gdpr_citus_check(const char *function);	/* SPI */
extern bool gdpr_citus_cluster(void);	/* SPI */
extern void gdpr_citus_sequential(void);
extern void gdpr_cluster_hold_sync(bool hold);
extern int	gdpr_citus_signal(const char *op, const char *body);	/* SPI */
extern List *gdpr_citus_local_shards(Oid table);	/* SPI */
extern bool gdpr_citus_distributed(Oid relid);	/* SPI */
extern bool gdpr_citus_copied(Oid relid);	/* SPI */
extern bool gdpr_citus_erasure_statements(void);
extern bool gdpr_citus_worker(void);	/* SPI */
extern bool gdpr_citus_consent(const char *kind, const char *subject, const char *purpose);	/* SPI */

/* reads.c */
extern int	gdpr_read_audit_max_subjects;
extern const char *gdpr_internal_sql;
extern void gdpr_install_read_hook(void);
extern void gdpr_reads_invalidate(Oid relid);
extern bool gdpr_read_audit_any(void);
extern void gdpr_own_reads_begin(void);
extern void gdpr_own_reads_end(void);
extern void gdpr_reads_abort(SubTransactionId mySubid);

#endif							/* GDPR_H */
