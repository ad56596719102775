/*-------------------------------------------------------------------------
 *
 * condition.c
 *		User-written conditions: the extra condition of a retention policy
 *		and the condition of a legal hold.
 *
 * A condition is SQL text that we later paste inside our own statements
 * (erasure's hold checks, retention batches), so it must be exactly one
 * expression: it is parsed on its own, as PL/pgSQL parses an expression,
 * and refused if it could close our parentheses or add a statement.  The
 * check runs again wherever a condition is used, since a superuser can
 * still write the tables directly.
 *
 * The retention worker evaluates conditions with the rights of the table's
 * owner (see role.c), so setting one is acting as that owner: the check
 * requires the caller to have the owner's privileges.  It is fired by a
 * trigger on gdpr.legal_hold and gdpr.retention_policy, so it also guards
 * rows written there without the functions.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_class.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "gdpr.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "parser/parser.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"

PG_FUNCTION_INFO_V1(gdpr_check_condition);

static List *parse_condition(const char *condition, Oid owner, const char *sql);

/*
 * gdpr._check_condition(tbl regclass, condition text): refuses anything but
 * one boolean expression over the table's rows, set by someone with the
 * rights of the table's owner; then plans it against the table as the owner.
 */
Datum
gdpr_check_condition(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	char	   *condition = text_to_cstring(PG_GETARG_TEXT_PP(1));
	char	   *name;
	Oid			owner;

	LockRelationOid(relid, AccessShareLock);
	name = gdpr_relation_name(relid);
	gdpr_check_expression(condition);
	owner = gdpr_relation_owner(relid);
	if (!has_privs_of_role(GetUserId(), owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to set a condition on table %s", name),
				 errdetail("Conditions are evaluated with the rights of the table's owner, role \"%s\".",
						   GetUserNameFromId(owner, false)),
				 errhint("Ask the table's owner, or a member of its role, to set the condition.")));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	(void) parse_condition(condition, owner,
						   psprintf("SELECT 1 FROM %s WHERE (\n%s\n) LIMIT 0", name, condition));
	SPI_finish();
	PG_RETURN_VOID();
}

/* Raises an error unless condition is exactly one expression */
void
gdpr_check_expression(const char *condition)
{
	List	   *raw = parse_condition(condition, InvalidOid, NULL);
	SelectStmt *select = list_length(raw) == 1 ? (SelectStmt *) ((RawStmt *) linitial(raw))->stmt : NULL;

	if (select == NULL || !IsA(select, SelectStmt) ||
		list_length(select->targetList) != 1 || select->fromClause != NIL ||
		select->whereClause != NULL || select->groupClause != NIL ||
		select->havingClause != NULL || select->windowClause != NIL ||
		select->sortClause != NIL || select->limitCount != NULL ||
		select->limitOffset != NULL || select->lockingClause != NIL ||
		select->distinctClause != NIL || select->withClause != NULL ||
		((ResTarget *) linitial(select->targetList))->name != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("legal hold condition must be exactly one expression"),
				 errdetail("Got: %s", condition),
				 errhint("Write a boolean expression over the table's columns, such as status = 'unpaid'.")));
}

/*
 * Parses the condition alone (sql NULL), or runs sql, which contains it, as
 * owner; either way a failure becomes an error about the condition.
 */
static List *
parse_condition(const char *condition, Oid owner, const char *sql)
{
	MemoryContext cxt = CurrentMemoryContext;
	List	   *volatile raw = NIL;

	PG_TRY();
	{
		if (sql == NULL)
			raw = raw_parser(condition, RAW_PARSE_PLPGSQL_EXPR);
		else if (gdpr_execute_as_role(owner, NULL, sql, 0, NULL, NULL, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "SPI_execute failed");
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		ereport(ERROR,
				(errcode(edata->sqlerrcode == ERRCODE_SYNTAX_ERROR ? ERRCODE_SYNTAX_ERROR
						 : ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid legal hold condition: %s", edata->message),
				 errdetail("Condition: %s", condition),
				 errhint("Write one boolean expression over the table's columns, such as status = 'unpaid'.")));
	}
	PG_END_TRY();
	return raw;
}
