/*-------------------------------------------------------------------------
 *
 * consent.c
 *		gdpr_has_consent(), fast enough for a WHERE clause over every subject,
 *		and gdpr.consent_check(), the trigger gdpr.require_consent() attaches
 *		to refuse a row for a subject who has not consented to the purpose the
 *		table serves.
 *
 * gdpr_has_consent probes consent_active_idx directly, without SPI: a call
 * per row of a large table must cost an index descent, not an executor
 * start.  Its columns (purpose, subject_id, kind) all use the "C" collation,
 * so the scan keys compare as the index does.  The trigger runs once per
 * written row and uses a kept SPI plan; both read gdpr.consent as the
 * extension, since applications may not read consents themselves.  On a
 * Citus worker, which holds no consents, the trigger asks the coordinator
 * (gdpr_citus_consent in citus.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/relscan.h"
#include "access/skey.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/namespace.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "executor/tuptable.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "gdpr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/fmgroids.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

PG_FUNCTION_INFO_V1(gdpr_consent_check);
PG_FUNCTION_INFO_V1(gdpr_has_consent);

/* What one call site of gdpr_has_consent resolved once: kept in fn_extra */
typedef struct ConsentLookup
{
	Oid			heap;			/* gdpr.consent */
	Oid			index;			/* gdpr.consent_active_idx */
	char	   *default_kind;	/* the kind when none is passed, or NULL */
	Oid			typoutput;		/* output function of the subject argument */
} ConsentLookup;

static ConsentLookup *consent_lookup(FunctionCallInfo fcinfo);
static void refuse(TriggerData *trigdata, const char *subject);

/* Prepared on first use; the plan cache replans it when gdpr.consent changes */
static SPIPlanPtr consent_plan = NULL;

/*
 * gdpr_has_consent(subject, purpose, kind DEFAULT NULL): whether the subject
 * has an active consent for the purpose.
 */
Datum
gdpr_has_consent(PG_FUNCTION_ARGS)
{
	ConsentLookup *lookup;
	text	   *subject;
	text	   *purpose;
	text	   *kind;
	Relation	heap;
	Relation	index;
	IndexScanDesc scan;
	TupleTableSlot *slot;
	ScanKeyData keys[3];
	bool		found;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_BOOL(false);
	lookup = consent_lookup(fcinfo);
	subject = get_fn_expr_argtype(fcinfo->flinfo, 0) == TEXTOID
		? PG_GETARG_TEXT_PP(0)
		: cstring_to_text(OidOutputFunctionCall(lookup->typoutput, PG_GETARG_DATUM(0)));
	purpose = PG_GETARG_TEXT_PP(1);
	if (!PG_ARGISNULL(2))
		kind = PG_GETARG_TEXT_PP(2);
	else if (lookup->default_kind != NULL)
		kind = cstring_to_text(lookup->default_kind);
	else
		PG_RETURN_BOOL(false);

	ScanKeyEntryInitialize(&keys[0], 0, 1, BTEqualStrategyNumber, InvalidOid, C_COLLATION_OID,
						   F_TEXTEQ, PointerGetDatum(purpose));
	ScanKeyEntryInitialize(&keys[1], 0, 2, BTEqualStrategyNumber, InvalidOid, C_COLLATION_OID,
						   F_TEXTEQ, PointerGetDatum(subject));
	ScanKeyEntryInitialize(&keys[2], 0, 3, BTEqualStrategyNumber, InvalidOid, C_COLLATION_OID,
						   F_TEXTEQ, PointerGetDatum(kind));

	heap = table_open(lookup->heap, AccessShareLock);
	index = index_open(lookup->index, AccessShareLock);
	slot = table_slot_create(heap, NULL);
	scan = gdpr_index_beginscan(heap, index, GetActiveSnapshot(), 3, 0);
	index_rescan(scan, keys, 3, NULL, 0);
	found = index_getnext_slot(scan, ForwardScanDirection, slot);
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	index_close(index, AccessShareLock);
	table_close(heap, AccessShareLock);
	PG_RETURN_BOOL(found);
}

/*
 * The relations and the default kind, looked up on the first call of each
 * call site; fn_extra lives as long as the query's plan.
 */
static ConsentLookup *
consent_lookup(FunctionCallInfo fcinfo)
{
	ConsentLookup *lookup = fcinfo->flinfo->fn_extra;
	Oid			nsp;
	bool		isvarlena;

	if (lookup != NULL)
		return lookup;

	lookup = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(ConsentLookup));
	nsp = get_namespace_oid("gdpr", false);
	lookup->heap = get_relname_relid("consent", nsp);
	lookup->index = get_relname_relid("consent_active_idx", nsp);
	if (!OidIsValid(lookup->heap) || !OidIsValid(lookup->index))
		elog(ERROR, "gdpr.consent or its index consent_active_idx is missing");
	getTypeOutputInfo(get_fn_expr_argtype(fcinfo->flinfo, 0), &lookup->typoutput, &isvarlena);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute("SELECT CASE WHEN pg_catalog.count(*) = 1 THEN pg_catalog.min(kind) "
					"            ELSE pg_catalog.max(kind) FILTER (WHERE kind = 'default') END "
					"  FROM gdpr.subject_kind", true, 1) != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute failed");
	{
		char	   *k = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		lookup->default_kind = k != NULL ? MemoryContextStrdup(fcinfo->flinfo->fn_mcxt, k) : NULL;
	}
	SPI_finish();
	fcinfo->flinfo->fn_extra = lookup;
	return lookup;
}

Datum
gdpr_consent_check(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Trigger    *trigger;
	HeapTuple	row;
	TupleDesc	desc;
	int			attnum;
	bool		isnull;
	Datum		value;
	Oid			typoutput;
	bool		typisvarlena;
	char	   *subject;
	Datum		args[3];
	int			ret;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		TRIGGER_FIRED_BY_DELETE(trigdata->tg_event) ||
		trigdata->tg_trigger->tgnargs != 3)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("gdpr.consent_check() must be fired BEFORE INSERT OR UPDATE ... FOR EACH ROW with three arguments"),
				 errhint("Attach it with gdpr.require_consent(), not by hand.")));

	trigger = trigdata->tg_trigger;
	row = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ? trigdata->tg_newtuple : trigdata->tg_trigtuple;
	desc = RelationGetDescr(trigdata->tg_relation);
	attnum = SPI_fnumber(desc, trigger->tgargs[1]);
	if (attnum <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("column \"%s\" of table \"%s\" named by a consent requirement does not exist",
						trigger->tgargs[1], RelationGetRelationName(trigdata->tg_relation)),
				 errhint("Drop the trigger %s and call gdpr.require_consent() again.", trigger->tgname)));

	value = heap_getattr(row, attnum, desc, &isnull);
	if (isnull)
		return PointerGetDatum(row);	/* a row about nobody needs nobody's consent */
	getTypeOutputInfo(TupleDescAttr(desc, attnum - 1)->atttypid, &typoutput, &typisvarlena);
	subject = OidOutputFunctionCall(typoutput, value);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (gdpr_citus_worker())
	{
		if (!gdpr_citus_consent(trigger->tgargs[0], subject, trigger->tgargs[2]))
			refuse(trigdata, subject);
		SPI_finish();
		return PointerGetDatum(row);
	}
	if (consent_plan == NULL)
	{
		Oid			argtypes[3] = {TEXTOID, TEXTOID, TEXTOID};
		SPIPlanPtr	plan = SPI_prepare("SELECT 1 FROM gdpr.consent "
									   " WHERE purpose = $3 AND subject_id = $2 AND kind = $1 "
									   "   AND withdrawn_at IS NULL", 3, argtypes);

		if (plan == NULL || SPI_keepplan(plan) != 0)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		consent_plan = plan;
	}
	args[0] = CStringGetTextDatum(trigger->tgargs[0]);
	args[1] = CStringGetTextDatum(subject);
	args[2] = CStringGetTextDatum(trigger->tgargs[2]);
	ret = gdpr_execute_as_owner(consent_plan, NULL, 0, NULL, args, NULL, true, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_plan failed: %d", ret);
	if (SPI_processed == 0)
		refuse(trigdata, subject);
	SPI_finish();
	return PointerGetDatum(row);
}

/* The refusal of a row whose subject has not consented */
static void
refuse(TriggerData *trigdata, const char *subject)
{
	Trigger    *trigger = trigdata->tg_trigger;

	ereport(ERROR,
			(errcode(ERRCODE_GDPR_CONSENT_REQUIRED),
			 errmsg("subject %s of kind \"%s\" has not consented to \"%s\"", subject,
					trigger->tgargs[0], trigger->tgargs[2]),
			 errdetail("Table \"%s\" holds data only for subjects who consented to \"%s\".",
					   RelationGetRelationName(trigdata->tg_relation), trigger->tgargs[2]),
			 errhint("Record the consent with gdpr_grant_consent() first, or do not write the row.")));
}
