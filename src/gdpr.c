/*-------------------------------------------------------------------------
 *
 * gdpr.c
 *		Module entry point: settings, the relcache callback that keeps the
 *		per-backend caches honest, and the hooks that need preloading.
 *
 * Everything but read auditing works when the library is loaded on first
 * use, without shared_preload_libraries: managed services often forbid
 * preloading.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "gdpr.h"
#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/queryjumble.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

static void relcache_callback(Datum arg, Oid relid);

void
_PG_init(void)
{
	gdpr_define_settings();
	CacheRegisterRelcacheCallback(relcache_callback, (Datum) 0);

	if (!process_shared_preload_libraries_in_progress)
		return;

	gdpr_define_preload_settings();
	MarkGUCPrefixReserved("gdpr");
	EnableQueryId();
	gdpr_install_read_hook();
}

/* A relation changed, or (InvalidOid) everything may have. */
static void
relcache_callback(Datum arg, Oid relid)
{
	gdpr_audit_invalidate(relid);
	gdpr_export_invalidate(relid);
	gdpr_anonymize_invalidate(relid);
	gdpr_reads_invalidate(relid);
}
