/*-------------------------------------------------------------------------
 *
 * role.c
 *		Statements run with another role's rights: the audit trail's owner
 *		(who alone writes it), a table's owner (whose retention policy the
 *		background worker enforces), the role that asked for an erasure.
 *
 * The switch is the one PostgreSQL makes for maintenance commands: the user
 * id changes for the statement only, as a security-restricted operation
 * (no SET ROLE, no temporary objects, no deferred code left behind), and
 * search_path is pinned to pg_catalog so that an operator or function a
 * caller put earlier on its path cannot run with the new role's rights.
 * Transaction abort restores both, so an error in between needs no cleanup.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_class.h"
#include "executor/spi.h"
#include "gdpr.h"
#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/syscache.h"

/*
 * Runs what follows as role, until gdpr_leave_role().  Returns the GUC nest
 * level to leave.
 */
int
gdpr_become_role(Oid role, Oid *save_userid, int *save_sec_context)
{
	int			nest;

	GetUserIdAndSecContext(save_userid, save_sec_context);
	SetUserIdAndSecContext(role, *save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION | SECURITY_NOFORCE_RLS);
	nest = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	return nest;
}

void
gdpr_leave_role(Oid save_userid, int save_sec_context, int nest)
{
	AtEOXact_GUC(true, nest);
	SetUserIdAndSecContext(save_userid, save_sec_context);
}

/*
 * One statement as role: the kept plan, or else the SQL with its arguments.
 * SPI must be connected.  Returns SPI's result code.
 */
int
gdpr_execute_as_role(Oid role, SPIPlanPtr plan, const char *sql, int nargs, Oid *argtypes,
					 Datum *values, const char *nulls, bool read_only, long count)
{
	Oid			save_userid;
	int			save_sec_context;
	int			nest = gdpr_become_role(role, &save_userid, &save_sec_context);
	int			ret;

	if (plan != NULL)
		ret = SPI_execute_plan(plan, values, nulls, read_only, count);
	else
		ret = SPI_execute_with_args(sql, nargs, argtypes, values, nulls, read_only, count);
	gdpr_leave_role(save_userid, save_sec_context, nest);
	return ret;
}

/*
 * The owner of a relation: user-written conditions on a table (legal holds,
 * retention policies) run with these rights, in every caller.
 */
Oid
gdpr_relation_owner(Oid relid)
{
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Oid			owner;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	return owner;
}
