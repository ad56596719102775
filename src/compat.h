/*-------------------------------------------------------------------------
 *
 * compat.h
 *		Differences between the PostgreSQL major versions gdpr builds on
 *		(15 to 18), in one place.  Each block names the version that changed
 *		the API; the code elsewhere uses the newest spelling.
 *
 *-------------------------------------------------------------------------
 */
#ifndef GDPR_COMPAT_H
#define GDPR_COMPAT_H

#if PG_VERSION_NUM < 150000
#error "gdpr needs PostgreSQL 15 or later"
#endif

/* 16 moved the query jumbling header from utils/ to nodes/ */
#if PG_VERSION_NUM >= 160000
#include "nodes/queryjumble.h"
#else
#include "utils/queryjumble.h"
#endif

/*
 * 17 names a virtual transaction's backend by its proc number: the chain
 * notes the writers of the trail as (backend << 32 | local xid) either way.
 */
#include "storage/lock.h"
#if PG_VERSION_NUM >= 170000
#define GDPR_VXID_BACKEND(vxid)		((vxid).procNumber)
typedef ProcNumber GdprVxidBackend;
#else
#define GDPR_VXID_BACKEND(vxid)		((vxid).backendId)
typedef BackendId GdprVxidBackend;
#endif

/*
 * A check hook's extra data is freed by the GUC machinery: with free()
 * before 16, with guc_free() since, which needs guc_malloc()'s memory.
 */
#if PG_VERSION_NUM >= 160000
#include "utils/guc.h"
#define gdpr_guc_malloc(size)	guc_malloc(LOG, (size))
#define gdpr_guc_free(ptr)		guc_free(ptr)
#else
#define gdpr_guc_malloc(size)	malloc(size)
#define gdpr_guc_free(ptr)		free(ptr)
#endif

/* 18 dropped ExecutorRun's execute_once */
#if PG_VERSION_NUM >= 180000
#define GDPR_EXECUTOR_RUN_ARGS		QueryDesc *queryDesc, ScanDirection direction, uint64 count
#define GDPR_EXECUTOR_RUN_PASS		queryDesc, direction, count
#else
#define GDPR_EXECUTOR_RUN_ARGS		QueryDesc *queryDesc, ScanDirection direction, uint64 count, \
	bool execute_once
#define GDPR_EXECUTOR_RUN_PASS		queryDesc, direction, count, execute_once
#endif

/* 18 gave index scans an instrumentation argument */
#if PG_VERSION_NUM >= 180000
#define gdpr_index_beginscan(heap, index, snapshot, nkeys, norderbys) \
	index_beginscan(heap, index, snapshot, NULL, nkeys, norderbys)
#else
#define gdpr_index_beginscan(heap, index, snapshot, nkeys, norderbys) \
	index_beginscan(heap, index, snapshot, nkeys, norderbys)
#endif

/* 16 renamed the lookup of a backend's status by its index in the local snapshot */
#if PG_VERSION_NUM >= 160000
#define gdpr_local_beentry(index)	pgstat_get_local_beentry_by_index(index)
#else
#define gdpr_local_beentry(index)	pgstat_fetch_stat_local_beentry(index)
#endif

/*
 * Not a version difference but a packaging one: libpq/libpq-be.h includes
 * the GSSAPI headers when the server was built with GSSAPI, and Debian's
 * postgresql-server-dev packages do not bring them.  The gate (gate.c)
 * needs only the connection's Port, whose layout PostgreSQL keeps the same
 * with or without GSSAPI (a void pointer stands in, for extensions), so the
 * GSSAPI headers are not included.
 */
#undef ENABLE_GSS

#endif							/* GDPR_COMPAT_H */
