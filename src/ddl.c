/*-------------------------------------------------------------------------
 *
 * ddl.c
 *		C helpers of the event triggers that keep the map true and record
 *		DDL on personal data (the triggers themselves are in the install
 *		script), and the explicit invalidation the map functions send.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_inherits.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "gdpr.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "storage/lockdefs.h"
#include "tcop/deparse_utility.h"
#include "utils/acl.h"
#include "utils/aclchk_internal.h"
#include "utils/array.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"

PG_FUNCTION_INFO_V1(gdpr_grant_targets);
PG_FUNCTION_INFO_V1(gdpr_map_changed);
PG_FUNCTION_INFO_V1(gdpr_enables_capture);

/*
 * gdpr._grant_targets(pg_ddl_command): the tables a GRANT or REVOKE acted
 * on.  pg_event_trigger_ddl_commands() reports such commands without an
 * object, so the event trigger asks here.
 */
Datum
gdpr_grant_targets(PG_FUNCTION_ARGS)
{
	CollectedCommand *cmd = (CollectedCommand *) PG_GETARG_POINTER(0);
	InternalGrant *istmt;
	Datum	   *elems;
	int			n = 0;
	ListCell   *lc;

	if (cmd == NULL || cmd->type != SCT_Grant || cmd->d.grant.istmt == NULL)
		PG_RETURN_NULL();
	istmt = cmd->d.grant.istmt;
	if (istmt->objtype != OBJECT_TABLE)
		PG_RETURN_NULL();

	elems = palloc(sizeof(Datum) * Max(list_length(istmt->objects), 1));
	foreach(lc, istmt->objects)
		elems[n++] = ObjectIdGetDatum(lfirst_oid(lc));
	PG_RETURN_ARRAYTYPE_P(construct_array(elems, n, OIDOID, sizeof(Oid), true, TYPALIGN_INT));
}

/*
 * gdpr._enables_capture(pg_ddl_command): whether the command is an ALTER
 * TABLE that only makes the audit triggers fire ALWAYS, as the extension
 * itself issues when a table or a partition gets them: nothing to record.
 */
Datum
gdpr_enables_capture(PG_FUNCTION_ARGS)
{
	CollectedCommand *cmd = (CollectedCommand *) PG_GETARG_POINTER(0);
	ListCell   *lc;

	if (cmd == NULL || cmd->type != SCT_AlterTable || cmd->d.alterTable.subcmds == NIL)
		PG_RETURN_BOOL(false);
	foreach(lc, cmd->d.alterTable.subcmds)
	{
		CollectedATSubcmd *sub = lfirst(lc);
		AlterTableCmd *at = (AlterTableCmd *) sub->parsetree;

		if (at == NULL || !IsA(at, AlterTableCmd) || at->subtype != AT_EnableAlwaysTrig ||
			at->name == NULL ||
			(strcmp(at->name, "gdpr_audit_row") != 0 && strcmp(at->name, "gdpr_audit_truncate") != 0))
			PG_RETURN_BOOL(false);
	}
	PG_RETURN_BOOL(true);
}

/*
 * gdpr._map_changed(regclass): makes every backend drop what it cached about
 * the table and its partitions.  The invalidation is sent at commit, so a
 * rolled-back registration changes nothing anywhere.  The event triggers call
 * it as whoever ran the DDL, so it is executable by everyone, but it acts
 * only for gdpr_admin and for the owner of the table or of one of its
 * partitions: nobody else makes every session rebuild its plans.
 */
Datum
gdpr_map_changed(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	Oid			admin = get_role_oid("gdpr_admin", true);
	List	   *rels;
	ListCell   *lc;
	bool		allowed;

	if (!OidIsValid(get_rel_type_id(relid)))
		PG_RETURN_VOID();
	rels = find_all_inheritors(relid, NoLock, NULL);
	allowed = OidIsValid(admin) && has_privs_of_role(GetUserId(), admin);
	foreach(lc, rels)
		allowed |= has_privs_of_role(GetUserId(), gdpr_relation_owner(lfirst_oid(lc)));
	if (!allowed)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to reset the cached map of table %s",
						gdpr_relation_name(relid)),
				 errhint("Only gdpr_admin and the table's owner change the map.")));
	foreach(lc, rels)
		CacheInvalidateRelcacheByRelid(lfirst_oid(lc));
	/* a Citus coordinator sends the new map to the workers, in this transaction */
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	gdpr_cluster_map_changed();
	SPI_finish();
	PG_RETURN_VOID();
}
