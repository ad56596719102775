/*-------------------------------------------------------------------------
 *
 * condition.c
 *		User-written conditions: the extra condition of a retention policy,
 *		the condition of a legal hold, and the condition of a subject path.
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
#include "access/table.h"
#include "access/transam.h"
#include "catalog/pg_class.h"
#include "catalog/pg_operator.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "gdpr.h"
#include "miscadmin.h"
#include "nodes/nodeFuncs.h"
#include "nodes/parsenodes.h"
#include "parser/parser.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/plancache.h"
#include "utils/syscache.h"

PG_FUNCTION_INFO_V1(gdpr_check_condition);

static List *parse_condition(const char *condition, Oid owner, const char *sql, const char *what);
static void condition_error(MemoryContext cxt, const char *condition, const char *what);

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
	gdpr_check_expression(condition, "legal hold condition");
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
						   psprintf("SELECT 1 FROM %s WHERE (\n%s\n) LIMIT 0", name, condition),
						   "legal hold condition");
	SPI_finish();
	PG_RETURN_VOID();
}

/* Raises an error unless condition is exactly one expression */
void
gdpr_check_expression(const char *condition, const char *what)
{
	List	   *raw = parse_condition(condition, InvalidOid, NULL, what);
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
				 errmsg("%s must be exactly one expression", what),
				 errdetail("Got: %s", condition),
				 errhint("Write a boolean expression over the table's columns, such as status = 'unpaid'.")));
}

/*
 * Parses the condition alone (sql NULL), or runs sql, which contains it, as
 * owner; either way a failure becomes an error about the condition.
 */
/*
 * In a PG_CATCH block: the error that parsing or planning a condition
 * raised, said as what is wrong with the condition.
 */
static void
condition_error(MemoryContext cxt, const char *condition, const char *what)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(cxt);
	edata = CopyErrorData();
	FlushErrorState();
	ereport(ERROR,
			(errcode(edata->sqlerrcode == ERRCODE_SYNTAX_ERROR ? ERRCODE_SYNTAX_ERROR
					 : ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid %s: %s", what, edata->message),
			 errdetail("Condition: %s", condition),
			 errhint("Write one boolean expression over the table's columns, such as status = 'unpaid'.")));
}

static List *
parse_condition(const char *condition, Oid owner, const char *sql, const char *what)
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
		condition_error(cxt, condition, what);
	}
	PG_END_TRY();
	return raw;
}

/*
 * Path conditions.
 *
 * A path condition (owner_type = 'User') is pasted into the statements that
 * follow the path: an export as its caller, the audit trigger as the writer,
 * an erasure, a retention batch.  Parsed again in each of those sessions, a
 * name like lower() or = would be resolved through that session's
 * search_path, and a writer could make its rows reach no one.  So the
 * condition is stored in a canonical form that names every function,
 * operator and type by schema, and is made of built-in functions and
 * operators only: it means the same to every reader and runs nobody's code.
 * The canonical form re-parses to itself, so canonicalizing is idempotent;
 * a trigger on gdpr.subject_path applies it however the row is written.
 */
PG_FUNCTION_INFO_V1(gdpr_check_path_condition);

static void deparse_condition(StringInfo buf, Node *node, Relation rel, const char *condition);
static void deparse_other(StringInfo buf, Node *node, Relation rel, const char *condition);
static void deparse_list(StringInfo buf, List *args, Relation rel, const char *condition);

Datum
gdpr_check_path_condition(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	char	   *condition = text_to_cstring(PG_GETARG_TEXT_PP(1));
	MemoryContext cxt = CurrentMemoryContext;
	SPIPlanPtr	plan = NULL;
	Query	   *query;
	Relation	rel;
	StringInfoData buf;

	rel = table_open(relid, AccessShareLock);
	gdpr_check_expression(condition, "path condition");
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PG_TRY();
	{
		plan = SPI_prepare(psprintf("SELECT 1 FROM ONLY %s WHERE (\n%s\n)",
									gdpr_relation_name(relid), condition), 0, NULL);
	}
	PG_CATCH();
	{
		condition_error(cxt, condition, "path condition");
	}
	PG_END_TRY();
	if (plan == NULL || list_length(SPI_plan_get_plan_sources(plan)) != 1)
		elog(ERROR, "SPI_prepare failed for path condition");
	query = linitial_node(Query, ((CachedPlanSource *) linitial(SPI_plan_get_plan_sources(plan)))->query_list);
	if (query->hasSubLinks || query->hasAggs || query->hasWindowFuncs || query->hasTargetSRFs)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("path condition must be an expression over one row"),
				 errdetail("Condition: %s", condition),
				 errhint("Subqueries, aggregates and set-returning functions cannot stand in a path condition.")));
	initStringInfo(&buf);
	MemoryContextSwitchTo(cxt);
	deparse_condition(&buf, query->jointree->quals, rel, condition);
	SPI_finish();
	table_close(rel, NoLock);
	PG_RETURN_TEXT_P(cstring_to_text(buf.data));
}

/*
 * Only immutable built-in functions: a stable or volatile one can read or
 * change the database (query_to_xml runs any query, set_config changes
 * settings, lo_export writes files) in every session that follows the path.
 */
static bool
is_user_function(Oid funcid, void *context)
{
	return funcid >= FirstNormalObjectId || func_volatile(funcid) != PROVOLATILE_IMMUTABLE;
}

/*
 * A type by schema-qualified name; built-in types only, and none whose
 * constants a session's settings read differently (an OID alias type
 * through search_path, a date through DateStyle).
 */
static char *
qualified_type(Oid typid, int32 typmod, const char *condition)
{
	char		category;
	bool		preferred;

	get_type_category_preferred(typid, &category, &preferred);
	if (typid < FirstNormalObjectId &&
		(category == TYPCATEGORY_DATETIME || category == TYPCATEGORY_TIMESPAN ||
		 typid == REGPROCOID || typid == REGPROCEDUREOID || typid == REGOPEROID ||
		 typid == REGOPERATOROID || typid == REGCLASSOID || typid == REGTYPEOID ||
		 typid == REGCONFIGOID || typid == REGDICTIONARYOID || typid == REGNAMESPACEOID ||
		 typid == REGROLEOID || typid == REGCOLLATIONOID))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("path condition uses type %s, whose values each session reads its own way",
						format_type_be(typid)),
				 errdetail("Condition: %s", condition),
				 errhint("Compare with text or numbers, such as owner_type = 'User'.")));
	if (typid >= FirstNormalObjectId)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("path condition uses type %s, which is not built in", format_type_be(typid)),
				 errdetail("Condition: %s", condition),
				 errhint("Compare the column as a built-in type, such as col::text = 'x'.")));
	return format_type_extended(typid, typmod, FORMAT_TYPE_TYPEMOD_GIVEN | FORMAT_TYPE_FORCE_QUALIFY);
}

static char *
qualified_function(Oid funcid)
{
	return quote_qualified_identifier(get_namespace_name(get_func_namespace(funcid)),
									  get_func_name(funcid));
}

static char *
qualified_operator_name(Oid opno)
{
	HeapTuple	tup = SearchSysCache1(OPEROID, ObjectIdGetDatum(opno));
	char	   *result;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for operator %u", opno);
	result = psprintf("OPERATOR(%s.%s)",
					  quote_identifier(get_namespace_name(((Form_pg_operator) GETSTRUCT(tup))->oprnamespace)),
					  NameStr(((Form_pg_operator) GETSTRUCT(tup))->oprname));
	ReleaseSysCache(tup);
	return result;
}

/*
 * Prints an analyzed condition with every name qualified.  Only the shapes a
 * row filter needs are accepted; anything else is refused by name.
 */
static void
deparse_condition(StringInfo buf, Node *node, Relation rel, const char *condition)
{
	ListCell   *lc;

	if (node == NULL)
	{
		appendStringInfoString(buf, "NULL");
		return;
	}
	if (check_functions_in_node(node, is_user_function, NULL))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("path condition calls a function or operator that is not built in and immutable"),
				 errdetail("Condition: %s", condition),
				 errhint("A path condition runs in every session that follows the path: use immutable built-in functions and operators only.")));
	switch (nodeTag(node))
	{
		case T_Var:
			{
				Var		   *var = (Var *) node;

				if (var->varattno <= 0)
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("path condition must name columns of the table"),
							 errdetail("Condition: %s", condition)));
				appendStringInfoString(buf, quote_identifier(get_attname(RelationGetRelid(rel),
																		 var->varattno, false)));
				break;
			}
		case T_Const:
			{
				Const	   *c = (Const *) node;
				char	   *type = qualified_type(c->consttype, c->consttypmod, condition);

				if (c->constisnull)
					appendStringInfo(buf, "NULL::%s", type);
				else
				{
					Oid			typoutput;
					bool		isvarlena;

					getTypeOutputInfo(c->consttype, &typoutput, &isvarlena);
					appendStringInfo(buf, "%s::%s",
									 quote_literal_cstr(OidOutputFunctionCall(typoutput, c->constvalue)),
									 type);
				}
				break;
			}
		case T_OpExpr:
			{
				OpExpr	   *op = (OpExpr *) node;

				appendStringInfoChar(buf, '(');
				if (list_length(op->args) == 2)
				{
					deparse_condition(buf, linitial(op->args), rel, condition);
					appendStringInfo(buf, " %s ", qualified_operator_name(op->opno));
					deparse_condition(buf, lsecond(op->args), rel, condition);
				}
				else
				{
					appendStringInfo(buf, "%s ", qualified_operator_name(op->opno));
					deparse_condition(buf, linitial(op->args), rel, condition);
				}
				appendStringInfoChar(buf, ')');
				break;
			}
		case T_ScalarArrayOpExpr:
			{
				ScalarArrayOpExpr *op = (ScalarArrayOpExpr *) node;

				appendStringInfoChar(buf, '(');
				deparse_condition(buf, linitial(op->args), rel, condition);
				appendStringInfo(buf, " %s %s (", qualified_operator_name(op->opno),
								 op->useOr ? "ANY" : "ALL");
				deparse_condition(buf, lsecond(op->args), rel, condition);
				appendStringInfoString(buf, "))");
				break;
			}
		case T_FuncExpr:
			{
				FuncExpr   *f = (FuncExpr *) node;

				if (f->funcvariadic)
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("path condition must not call a function with VARIADIC"),
							 errdetail("Condition: %s", condition)));
				appendStringInfo(buf, "%s(", qualified_function(f->funcid));
				deparse_list(buf, f->args, rel, condition);
				appendStringInfoChar(buf, ')');
				break;
			}
		case T_BoolExpr:
			{
				BoolExpr   *b = (BoolExpr *) node;
				const char *sep = b->boolop == AND_EXPR ? " AND " : " OR ";

				appendStringInfoChar(buf, '(');
				if (b->boolop == NOT_EXPR)
				{
					appendStringInfoString(buf, "NOT ");
					deparse_condition(buf, linitial(b->args), rel, condition);
				}
				else
					foreach(lc, b->args)
					{
						if (foreach_current_index(lc) > 0)
							appendStringInfoString(buf, sep);
						deparse_condition(buf, lfirst(lc), rel, condition);
					}
				appendStringInfoChar(buf, ')');
				break;
			}
		default:
			deparse_other(buf, node, rel, condition);
	}
}

/* The shapes of deparse_condition() that test, cast or choose */
static void
deparse_other(StringInfo buf, Node *node, Relation rel, const char *condition)
{
	ListCell   *lc;

	switch (nodeTag(node))
	{
		case T_NullTest:
			{
				NullTest   *n = (NullTest *) node;

				appendStringInfoChar(buf, '(');
				deparse_condition(buf, (Node *) n->arg, rel, condition);
				appendStringInfoString(buf, n->nulltesttype == IS_NULL ? " IS NULL)" : " IS NOT NULL)");
				break;
			}
		case T_BooleanTest:
			{
				static const char *const tests[] = {" IS TRUE)", " IS NOT TRUE)", " IS FALSE)",
				" IS NOT FALSE)", " IS UNKNOWN)", " IS NOT UNKNOWN)"};
				BooleanTest *t = (BooleanTest *) node;

				appendStringInfoChar(buf, '(');
				deparse_condition(buf, (Node *) t->arg, rel, condition);
				appendStringInfoString(buf, tests[t->booltesttype]);
				break;
			}
		case T_RelabelType:
			{
				RelabelType *r = (RelabelType *) node;

				appendStringInfoChar(buf, '(');
				deparse_condition(buf, (Node *) r->arg, rel, condition);
				appendStringInfo(buf, ")::%s", qualified_type(r->resulttype, r->resulttypmod, condition));
				break;
			}
		case T_CoerceViaIO:
			{
				CoerceViaIO *c = (CoerceViaIO *) node;

				appendStringInfoChar(buf, '(');
				deparse_condition(buf, (Node *) c->arg, rel, condition);
				appendStringInfo(buf, ")::%s", qualified_type(c->resulttype, -1, condition));
				break;
			}
		case T_CoalesceExpr:
			{
				CoalesceExpr *c = (CoalesceExpr *) node;

				appendStringInfoString(buf, "COALESCE(");
				deparse_list(buf, c->args, rel, condition);
				appendStringInfoChar(buf, ')');
				break;
			}
		case T_ArrayExpr:
			{
				ArrayExpr  *a = (ArrayExpr *) node;

				appendStringInfoString(buf, "ARRAY[");
				deparse_list(buf, a->elements, rel, condition);
				appendStringInfo(buf, "]::%s", qualified_type(a->array_typeid, -1, condition));
				break;
			}
		case T_CaseExpr:
			{
				CaseExpr   *c = (CaseExpr *) node;

				if (c->arg != NULL)
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("path condition must use CASE WHEN <condition>, not CASE <value> WHEN"),
							 errdetail("Condition: %s", condition)));
				appendStringInfoString(buf, "CASE");
				foreach(lc, c->args)
				{
					CaseWhen   *w = lfirst_node(CaseWhen, lc);

					appendStringInfoString(buf, " WHEN ");
					deparse_condition(buf, (Node *) w->expr, rel, condition);
					appendStringInfoString(buf, " THEN ");
					deparse_condition(buf, (Node *) w->result, rel, condition);
				}
				appendStringInfoString(buf, " ELSE ");
				deparse_condition(buf, (Node *) c->defresult, rel, condition);
				appendStringInfoString(buf, " END");
				break;
			}
		default:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("path condition uses an expression of a kind it cannot hold"),
					 errdetail("Condition: %s", condition),
					 errhint("Use comparisons, AND, OR, NOT, IS NULL, IN lists, COALESCE, CASE WHEN and built-in functions over the table's columns.")));
	}
}

/* Expressions separated by commas */
static void
deparse_list(StringInfo buf, List *args, Relation rel, const char *condition)
{
	ListCell   *lc;

	foreach(lc, args)
	{
		if (foreach_current_index(lc) > 0)
			appendStringInfoString(buf, ", ");
		deparse_condition(buf, lfirst(lc), rel, condition);
	}
}
