/*-------------------------------------------------------------------------
 *
 * gdpr.c
 *		Module entry point: settings, the relcache callback that keeps the
 *		per-backend caches honest, and what needs preloading: read auditing,
 *		the retention worker and the erasure ledger's gate.
 *
 * Everything but those works when the library is loaded on first use,
 * without shared_preload_libraries: managed services often forbid
 * preloading (gdpr_enforce_retention() then does the worker's
 * job from cron or a script).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "fmgr.h"
#include "gdpr.h"
#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/inval.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

static void relcache_callback(Datum arg, Oid relid);
static void xact_callback(XactEvent event, void *arg);
static void subxact_callback(SubXactEvent event, SubTransactionId mySubid,
							 SubTransactionId parentSubid, void *arg);

void
_PG_init(void)
{
	gdpr_define_settings();
	CacheRegisterRelcacheCallback(relcache_callback, (Datum) 0);
	RegisterXactCallback(xact_callback, NULL);
	RegisterSubXactCallback(subxact_callback, NULL);
	gdpr_install_capture_hooks();

	if (!process_shared_preload_libraries_in_progress)
		return;

	gdpr_define_preload_settings();
	gdpr_define_worker_settings();
	MarkGUCPrefixReserved("gdpr");
	EnableQueryId();
	gdpr_install_queue();
	gdpr_install_read_hook();
	gdpr_install_gate();
	if (!IsBinaryUpgrade)
		gdpr_register_launcher();
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

/*
 * The pseudonym key may have been made (and cached) by work that rolls back:
 * forget it, so that no pseudonym is made with a key that was never stored.
 */
static void
xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_PRE_COMMIT || event == XACT_EVENT_PRE_PREPARE)
		gdpr_capture_xact_end(true);
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
	{
		gdpr_anonymize_invalidate(InvalidOid);
		gdpr_capture_xact_end(false);
		gdpr_reads_abort(InvalidSubTransactionId);
	}
	/* last: the ledger's lines are written once nothing else can fail the commit */
	gdpr_ledger_xact(event);
}

static void
subxact_callback(SubXactEvent event, SubTransactionId mySubid,
				 SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		gdpr_anonymize_invalidate(InvalidOid);
		gdpr_reads_abort(mySubid);
	}
	gdpr_ledger_subxact(event);
}
