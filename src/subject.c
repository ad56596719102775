/*-------------------------------------------------------------------------
 *
 * subject.c
 *		The personal-data map as the C code sees it: which subject a table's
 *		rows belong to and how to get from a row to that subject's key.
 *
 * The map itself is kept in the gdpr.* tables and changed by the SQL
 * functions of the install script; this file reads it (through SPI) and
 * turns a path into SQL.  Generated SQL quotes every identifier, compares
 * with the operators the foreign keys themselves use, schema-qualified, so
 * that neither object names nor the caller's search_path can change its
 * meaning.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_class.h"
#include "catalog/pg_operator.h"
#include "catalog/pg_type.h"
#include "nodes/bitmapset.h"
#include "executor/spi.h"
#include "gdpr.h"
#include "lib/stringinfo.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/regproc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"

static List *text_array_to_list(Datum array);
static void canonical_key(GdprSubject *subject, MemoryContext mcxt);
static List *oid_array_to_list(Datum array);
static char *spi_text(HeapTuple tuple, TupleDesc desc, int col);
static GdprPath *find_path(List *paths, const char *name);
static char *qualified_table(const GdprTableMap *map, Oid relid);
static const char *qualified_operator(Oid opid);
static GdprPathSql path_sql(const GdprTableMap *map, const GdprPath *path, const char *rowprefix);
static void append_step_condition(StringInfo buf, const GdprStep *step, const char *left,
								  const char *right_alias);

/*
 * The table a relation is registered as: partitions are covered by the root
 * of their partition tree.
 */
Oid
gdpr_root_relid(Oid relid)
{
	List	   *ancestors;

	if (!get_rel_relispartition(relid))
		return relid;
	ancestors = get_partition_ancestors(relid);
	return ancestors != NIL ? llast_oid(ancestors) : relid;
}

/*
 * Reads the map of one registered table.  Returns NULL when the table is
 * not registered.  Everything returned is allocated in mcxt.
 */
GdprTableMap *
gdpr_load_table_map(Oid relid, MemoryContext mcxt)
{
	Oid			argtypes[1] = {OIDOID};
	Datum		args[1] = {ObjectIdGetDatum(relid)};
	GdprTableMap *map;
	MemoryContext oldcxt;
	HeapTuple	tup;
	TupleDesc	desc;
	int			ret;

	ret = SPI_execute_with_args(
		"SELECT r.kind, sk.relid::pg_catalog.oid, sk.key_column::pg_catalog.text, "
		"       sk.key_type::pg_catalog.oid, r.on_erase, gdpr._qualified(r.relid), "
		"       EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i JOIN gdpr.registered_table c "
		"                 ON c.relid::pg_catalog.oid OPERATOR(pg_catalog.=) i.inhrelid "
		"                WHERE i.inhparent OPERATOR(pg_catalog.=) r.relid::pg_catalog.oid) "
		"  FROM gdpr.registered_table r JOIN gdpr.subject_kind sk ON sk.kind = r.kind "
		" WHERE r.relid::pg_catalog.oid = $1",
		1, argtypes, args, NULL, true, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed: %d", ret);
	if (SPI_processed == 0)
		return NULL;

	oldcxt = MemoryContextSwitchTo(mcxt);
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	map = palloc0(sizeof(GdprTableMap));
	map->relid = relid;
	map->kind = spi_text(tup, desc, 1);
	map->subject_relid = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &(bool){false}));
	map->key_column = spi_text(tup, desc, 3);
	map->key_type = DatumGetObjectId(SPI_getbinval(tup, desc, 4, &(bool){false}));
	map->on_erase = spi_text(tup, desc, 5);
	map->qualified_name = spi_text(tup, desc, 6);
	if (map->qualified_name == NULL)
		map->qualified_name = gdpr_relation_name(relid);	/* a dropped table: raises */
	/* a child registered on its own is erased and exported as itself, not through its parent */
	map->from_name = DatumGetBool(SPI_getbinval(tup, desc, 7, &(bool){false}))
		? psprintf("ONLY %s", map->qualified_name) : map->qualified_name;
	map->key_nondeterministic = gdpr_key_nondeterministic(map->subject_relid, map->key_column);
	MemoryContextSwitchTo(oldcxt);

	ret = SPI_execute_with_args(
		"SELECT path_name, relation = 'owner', subject_column::pg_catalog.text, condition, "
		"       about_columns::pg_catalog.text[] "
		"  FROM gdpr.subject_path WHERE relid::pg_catalog.oid = $1 "
		" ORDER BY relation <> 'owner', path_name NOT IN ('self', 'main'), path_name",
		1, argtypes, args, NULL, true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed: %d", ret);
	oldcxt = MemoryContextSwitchTo(mcxt);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		GdprPath   *path = palloc0(sizeof(GdprPath));

		tup = SPI_tuptable->vals[i];
		desc = SPI_tuptable->tupdesc;
		path->name = spi_text(tup, desc, 1);
		path->owner = DatumGetBool(SPI_getbinval(tup, desc, 2, &(bool){false}));
		path->subject_column = spi_text(tup, desc, 3);
		path->condition = spi_text(tup, desc, 4);
		{
			bool		isnull;
			Datum		about = SPI_getbinval(tup, desc, 5, &isnull);

			path->about_columns = isnull ? NIL : text_array_to_list(about);
		}
		/* pasted into statements: one expression, whoever wrote the row (condition.c) */
		if (path->condition != NULL)
			gdpr_check_expression(path->condition, "path condition");
		map->paths = lappend(map->paths, path);
	}
	MemoryContextSwitchTo(oldcxt);

	ret = SPI_execute_with_args(
		"SELECT path_name, from_cols::pg_catalog.text[], to_rel::pg_catalog.oid, "
		"       to_cols::pg_catalog.text[], ops::pg_catalog.oid[], reverse "
		"  FROM gdpr.path_step WHERE relid::pg_catalog.oid = $1 ORDER BY path_name, step",
		1, argtypes, args, NULL, true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed: %d", ret);
	oldcxt = MemoryContextSwitchTo(mcxt);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		GdprStep   *step = palloc0(sizeof(GdprStep));
		GdprPath   *path;
		char	   *name;
		bool		isnull;

		tup = SPI_tuptable->vals[i];
		desc = SPI_tuptable->tupdesc;
		name = spi_text(tup, desc, 1);
		step->from_cols = text_array_to_list(SPI_getbinval(tup, desc, 2, &isnull));
		step->to_rel = DatumGetObjectId(SPI_getbinval(tup, desc, 3, &isnull));
		step->to_cols = text_array_to_list(SPI_getbinval(tup, desc, 4, &isnull));
		step->ops = oid_array_to_list(SPI_getbinval(tup, desc, 5, &isnull));
		step->reverse = DatumGetBool(SPI_getbinval(tup, desc, 6, &isnull));
		path = find_path(map->paths, name);
		if (path == NULL)
			elog(ERROR, "path \"%s\" of step not found", name);
		path->steps = lappend(path->steps, step);
	}
	MemoryContextSwitchTo(oldcxt);

	ret = SPI_execute_with_args(
		"SELECT column_name::pg_catalog.text, category, erase "
		"  FROM gdpr.column_class WHERE relid::pg_catalog.oid = $1 ORDER BY column_name",
		1, argtypes, args, NULL, true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed: %d", ret);
	oldcxt = MemoryContextSwitchTo(mcxt);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		GdprColumn *col = palloc0(sizeof(GdprColumn));

		tup = SPI_tuptable->vals[i];
		desc = SPI_tuptable->tupdesc;
		col->name = spi_text(tup, desc, 1);
		col->category = spi_text(tup, desc, 2);
		col->erase = spi_text(tup, desc, 3);
		map->columns = lappend(map->columns, col);
	}
	MemoryContextSwitchTo(oldcxt);

	return map;
}

/*
 * The subject a rights function is asked about: argument argno of fcinfo, of
 * any type the function was declared with (text, bigint, uuid), read as a key
 * of the subject kind named (or the only kind, or "default").  The result is
 * allocated in mcxt.
 */
GdprSubject *
gdpr_resolve_subject(FunctionCallInfo fcinfo, int argno, const char *kind, MemoryContext mcxt)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1];
	char		nulls[1];
	GdprSubject *subject;
	Oid			argtype;
	Oid			typfunc;
	Oid			typioparam;
	bool		isvarlena;
	char	   *argtext;
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	MemoryContext oldcxt;
	int			ret;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("subject must not be NULL"),
				 errhint("Pass the subject's key, such as 42, 'alice' or a uuid.")));

	args[0] = kind != NULL ? CStringGetTextDatum(kind) : (Datum) 0;
	nulls[0] = kind != NULL ? ' ' : 'n';
	ret = SPI_execute_with_args(
		"SELECT kind, relid::pg_catalog.oid, key_column::pg_catalog.text, key_type::pg_catalog.oid "
		"  FROM gdpr.subject_kind "
		" WHERE kind = COALESCE($1, (SELECT CASE WHEN pg_catalog.count(*) = 1 "
		"                                        THEN pg_catalog.min(kind) ELSE 'default' END "
		"                              FROM gdpr.subject_kind))",
		1, argtypes, args, nulls, true, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed: %d", ret);
	if (SPI_processed == 0)
	{
		if (kind != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("subject kind \"%s\" is not registered", kind),
					 errhint("See SELECT kind FROM gdpr.subject_kind.")));
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("no subject kind to choose"),
				 errdetail("Either no subject table is registered, or several are and none is of kind \"default\"."),
				 errhint("Register one with gdpr.register_subject(), or pass kind => ...")));
	}

	oldcxt = MemoryContextSwitchTo(mcxt);
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	subject = palloc(sizeof(GdprSubject));
	subject->kind = spi_text(tup, desc, 1);
	subject->key_column = spi_text(tup, desc, 3);
	subject->relid = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
	subject->key_type = DatumGetObjectId(SPI_getbinval(tup, desc, 4, &isnull));

	argtype = get_fn_expr_argtype(fcinfo->flinfo, argno);
	if (!OidIsValid(argtype))
		argtype = TEXTOID;
	if ((argtype == UUIDOID && subject->key_type != UUIDOID &&
		 subject->key_type != TEXTOID && subject->key_type != VARCHAROID) ||
		((argtype == INT2OID || argtype == INT4OID || argtype == INT8OID) &&
		 subject->key_type == UUIDOID))
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("a subject key of type %s cannot identify a subject of kind \"%s\"",
						format_type_be(argtype), subject->kind),
				 errdetail("Subjects of kind \"%s\" have keys of type %s.", subject->kind,
						   format_type_be(subject->key_type)),
				 errhint("Pass the key as %s or as text.", format_type_be(subject->key_type))));

	getTypeOutputInfo(argtype, &typfunc, &isvarlena);
	argtext = OidOutputFunctionCall(typfunc, PG_GETARG_DATUM(argno));

	getTypeInputInfo(subject->key_type, &typfunc, &typioparam);
	PG_TRY();
	{
		subject->key = OidInputFunctionCall(typfunc, argtext, typioparam, -1);
	}
	PG_CATCH();
	{
		/* the input function only parses: nothing to clean up but the error itself */
		MemoryContextSwitchTo(mcxt);
		FlushErrorState();
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("\"%s\" is not a valid key for subjects of kind \"%s\"", argtext,
						subject->kind),
				 errdetail("Subjects of kind \"%s\" have keys of type %s.", subject->kind,
						   format_type_be(subject->key_type)),
				 errhint("Pass the key of the subject's row in %s.", gdpr_relation_name(subject->relid))));
	}
	PG_END_TRY();

	getTypeOutputInfo(subject->key_type, &typfunc, &isvarlena);
	subject->key_text = OidOutputFunctionCall(typfunc, subject->key);
	MemoryContextSwitchTo(oldcxt);

	canonical_key(subject, mcxt);
	return subject;
}

/*
 * Under a nondeterministic collation (case-insensitive e-mail keys) the key
 * the caller typed is one of several spellings of the stored one:
 * everything after (the trail, restrictions, pseudonyms) uses the stored
 * spelling, as the audit trigger records it.
 */
static void
canonical_key(GdprSubject *subject, MemoryContext mcxt)
{
	Oid			keytypes[1] = {subject->key_type};
	Datum		keyargs[1] = {subject->key};
	MemoryContext oldcxt;
	Oid			typfunc;
	bool		isvarlena;
	bool		isnull;
	int16		typlen;
	bool		typbyval;
	int			ret;

	if (!gdpr_key_nondeterministic(subject->relid, subject->key_column))
		return;
	ret = SPI_execute_with_args(psprintf("SELECT %s FROM %s WHERE %s OPERATOR(pg_catalog.=) $1",
										 quote_identifier(subject->key_column),
										 gdpr_relation_name(subject->relid),
										 quote_identifier(subject->key_column)),
								1, keytypes, keyargs, NULL, true, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed: %d", ret);
	if (SPI_processed != 1)
		return;
	getTypeOutputInfo(subject->key_type, &typfunc, &isvarlena);
	get_typlenbyval(subject->key_type, &typlen, &typbyval);
	oldcxt = MemoryContextSwitchTo(mcxt);
	subject->key = datumCopy(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull),
							 typbyval, typlen);
	subject->key_text = OidOutputFunctionCall(typfunc, subject->key);
	MemoryContextSwitchTo(oldcxt);
}

/* Whether a key column compares under a nondeterministic collation */
bool
gdpr_key_nondeterministic(Oid relid, const char *column)
{
	AttrNumber	attnum = get_attnum(relid, column);
	Oid			collid;
	Oid			typid;
	int32		typmod;

	if (attnum == InvalidAttrNumber)
		return false;
	get_atttypetypmodcoll(relid, attnum, &typid, &typmod, &collid);
	return OidIsValid(collid) && !get_collation_isdeterministic(collid);
}

/* Whether the subject's row exists, as the caller sees it */
bool
gdpr_subject_exists(const GdprSubject *subject)
{
	Oid			argtypes[1] = {subject->key_type};
	Datum		args[1] = {subject->key};
	char	   *sql;
	int			ret;

	sql = psprintf("SELECT 1 FROM %s WHERE %s OPERATOR(pg_catalog.=) $1",
				   gdpr_relation_name(subject->relid),
				   quote_identifier(subject->key_column));
	ret = SPI_execute_with_args(sql, 1, argtypes, args, NULL, true, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed: %d", ret);
	return SPI_processed > 0;
}

bool
gdpr_column_is_secret(const GdprTableMap *map, const char *column)
{
	ListCell   *lc;

	foreach(lc, map->columns)
	{
		GdprColumn *col = lfirst(lc);

		if (strcmp(col->name, column) == 0)
			return strcmp(col->category, "secret") == 0;
	}
	return false;
}

/*
 * The SQL that follows one path from a row to its subject's key.  rowprefix
 * names the row's columns: "($15)." for a row passed as a parameter, "t."
 * for a table alias.
 *
 * The result's "from" lists the joined tables ("s.orders h1 JOIN s.customer
 * h2 ON ..."), empty when the key is in the row itself; "where" ties the
 * first of them to the row; "key" is the subject key, of the key column's
 * own type.  When the last step is a foreign key onto the subject's key
 * column, the key is already in the previous row and the subject table is
 * not joined.
 */
GdprPathSql
gdpr_path_sql(const GdprTableMap *map, const GdprPath *path, const char *rowprefix)
{
	GdprPathSql result = path_sql(map, path, rowprefix);

	/*
	 * The condition names the row's columns bare: evaluated over the row
	 * alone, where no joined table's column can answer for them.
	 */
	if (path->condition != NULL)
	{
		result.where = psprintf("%s AND COALESCE((SELECT %s FROM (SELECT %s*) c), false)",
								result.where, path->condition, rowprefix);
		result.row_column = NULL;	/* the key alone no longer says whose row it is */
	}
	if (map->key_nondeterministic)
		result.row_column = NULL;	/* the row's spelling is not the stored one */
	return result;
}

static GdprPathSql
path_sql(const GdprTableMap *map, const GdprPath *path, const char *rowprefix)
{
	GdprPathSql result = {NULL, NULL, NULL, false, NULL};
	StringInfoData from;
	const GdprStep *last;
	int			nsteps = list_length(path->steps);
	int			njoined = nsteps;
	const char *keycol = map->key_column;
	char		prev[64];
	ListCell   *lc;

	if (path->subject_column != NULL || nsteps == 0)
	{
		result.from = pstrdup("");
		result.where = pstrdup("true");
		result.key = path->subject_column != NULL
			? psprintf("%s%s", rowprefix, quote_identifier(path->subject_column))
			: pstrdup("NULL");
		result.row_column = path->subject_column;
		return result;
	}

	last = llast(path->steps);
	if (!last->reverse && last->to_rel == map->subject_relid &&
		list_length(last->to_cols) == 1 &&
		strcmp(linitial(last->to_cols), map->key_column) == 0)
	{
		njoined = nsteps - 1;
		keycol = linitial(last->from_cols);
	}
	foreach(lc, path->steps)
		result.many |= ((GdprStep *) lfirst(lc))->reverse;

	if (njoined == 0)
	{
		result.from = pstrdup("");
		result.where = pstrdup("true");
		result.key = psprintf("%s%s", rowprefix, quote_identifier(keycol));
		result.row_column = pstrdup(keycol);
		return result;
	}

	initStringInfo(&from);
	for (int i = 1; i <= njoined; i++)
	{
		const GdprStep *step = list_nth(path->steps, i - 1);
		char		alias[32];

		snprintf(alias, sizeof(alias), "h%d", i);
		if (i > 1)
			appendStringInfoString(&from, " JOIN ");
		appendStringInfo(&from, "%s %s", qualified_table(map, step->to_rel), alias);
		if (i > 1)
		{
			appendStringInfoString(&from, " ON ");
			snprintf(prev, sizeof(prev), "h%d.", i - 1);
			append_step_condition(&from, step, prev, alias);
		}
	}
	result.from = from.data;

	initStringInfo(&from);
	append_step_condition(&from, linitial(path->steps), rowprefix, "h1");
	result.where = from.data;
	result.key = psprintf("h%d.%s", njoined, quote_identifier(keycol));
	return result;
}

/* The names of rel's primary key columns, in attribute order */
List *
gdpr_pk_names(Relation rel)
{
	Bitmapset  *pkattrs = RelationGetIndexAttrBitmap(rel, INDEX_ATTR_BITMAP_PRIMARY_KEY);
	TupleDesc	desc = RelationGetDescr(rel);
	List	   *names = NIL;
	int			attno = -1;

	while ((attno = bms_next_member(pkattrs, attno)) >= 0)
		names = lappend(names, NameStr(TupleDescAttr(desc, attno + FirstLowInvalidHeapAttributeNumber - 1)->attname));
	return names;
}

/*
 * The primary key of rel as a column list with every name prefixed ("t.a,
 * t.b"), or NULL when it has none.
 */
char *
gdpr_pk_list(Relation rel, const char *prefix)
{
	StringInfoData buf;
	ListCell   *lc;

	initStringInfo(&buf);
	foreach(lc, gdpr_pk_names(rel))
		appendStringInfo(&buf, "%s%s%s", buf.len > 0 ? ", " : "", prefix,
						 quote_identifier(lfirst(lc)));
	return buf.len > 0 ? buf.data : NULL;
}

/* The primary key of a row of rel as an SQL expression of a JSON object */
char *
gdpr_pk_json(Relation rel, const char *prefix)
{
	StringInfoData buf;
	ListCell   *lc;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "pg_catalog.jsonb_build_object(");
	foreach(lc, gdpr_pk_names(rel))
		appendStringInfo(&buf, "%s%s, %s%s", foreach_current_index(lc) > 0 ? ", " : "",
						 quote_literal_cstr(lfirst(lc)), prefix, quote_identifier(lfirst(lc)));
	appendStringInfoChar(&buf, ')');
	return buf.data;
}

/*
 * A query selecting the primary key (pk, as "t.a, t.b") of the rows of the
 * map's table that reach the subject whose key is $1, through the owner paths
 * (GDPR_PATHS_OWNER), the concerned ones (GDPR_PATHS_CONCERNED) or both;
 * NULL when the table has no such path.
 */
char *
gdpr_path_rows_sql(const GdprTableMap *map, const char *pk, int which)
{
	StringInfoData buf;
	ListCell   *lc;

	initStringInfo(&buf);
	foreach(lc, map->paths)
	{
		GdprPath   *path = lfirst(lc);
		GdprPathSql p;

		if ((path->owner && !(which & GDPR_PATHS_OWNER)) ||
			(!path->owner && !(which & GDPR_PATHS_CONCERNED)))
			continue;
		p = gdpr_path_sql(map, path, "t.");
		if (strcmp(p.key, "NULL") == 0)
			continue;
		appendStringInfo(&buf, "%sSELECT %s FROM %s t%s%s WHERE %s AND %s OPERATOR(pg_catalog.=) $1",
						 buf.len > 0 ? " UNION " : "", pk, map->from_name,
						 p.from[0] ? ", " : "", p.from, p.where, p.key);
	}
	return buf.len > 0 ? buf.data : NULL;
}

/*
 * An SQL expression of type text giving the subject key a row (rowref: a
 * parameter of the table's row type such as "$15", or the alias of a FROM
 * item such as "t") reaches through one path, or NULL when it reaches none.
 * An alias is written alias.column, never (alias).column: in the latter a
 * column of that name in any table of the query would be taken instead.  The key becomes text through its
 * type's output function (format's %s), as gdpr_resolve_subject makes it,
 * never through a cast: anyone may create a cast from a type of their own,
 * and this expression runs with the audit owner's rights.
 */
char *
gdpr_subject_sql(const GdprTableMap *map, const GdprPath *path, const char *rowref)
{
	char	   *prefix = rowref[0] == '$' ? psprintf("(%s).", rowref) : psprintf("%s.", rowref);
	GdprPathSql p = gdpr_path_sql(map, path, prefix);
	char	   *text = psprintf("CASE WHEN (%s) IS NULL THEN NULL ELSE pg_catalog.format('%%s', %s) END",
								p.key, p.key);

	/* a row may spell a case-insensitive key its own way: the trail names the stored spelling */
	if (map->key_nondeterministic)
		text = psprintf("COALESCE((SELECT pg_catalog.format('%%s', sk.%s) FROM %s sk "
						"WHERE sk.%s OPERATOR(pg_catalog.=) (%s)), %s)",
						quote_identifier(map->key_column), gdpr_relation_name(map->subject_relid),
						quote_identifier(map->key_column), p.key, text);

	if (p.from[0] == '\0')
		return strcmp(p.where, "true") == 0 ? text
			: psprintf("CASE WHEN %s THEN %s END", p.where, text);
	/* a reverse step may find several subject rows: a row they share is no one's alone */
	if (p.many)
		return psprintf("(SELECT CASE WHEN pg_catalog.count(DISTINCT k) OPERATOR(pg_catalog.=) 1 "
						"THEN pg_catalog.min(k) END FROM (SELECT %s AS k FROM %s WHERE %s) s)",
						text, p.from, p.where);
	return psprintf("(SELECT %s FROM %s WHERE %s)", text, p.from, p.where);
}

/*
 * A condition on row t (of the map's table) that holds when the row is
 * shared: an owner path that steps back from a parent to the subject rows
 * referencing it (payment_method -> account <- users) reaches a subject
 * other than $1, and no path that names one subject reaches $1.  NULL when
 * no owner path steps back.
 */
char *
gdpr_shared_sql(const GdprTableMap *map)
{
	StringInfoData others;
	StringInfoData mine;
	ListCell   *lc;

	initStringInfo(&others);
	initStringInfo(&mine);
	foreach(lc, map->paths)
	{
		GdprPath   *path = lfirst(lc);
		GdprPathSql p;
		StringInfo	buf;

		if (!path->owner)
			continue;
		p = gdpr_path_sql(map, path, "t.");
		if (strcmp(p.key, "NULL") == 0)
			continue;
		buf = p.many ? &others : &mine;
		if (buf->len > 0)
			appendStringInfoString(buf, " OR ");
		if (p.from[0] == '\0')
			appendStringInfo(buf, "(%s AND %s OPERATOR(pg_catalog.=) $1)", p.where, p.key);
		else
			appendStringInfo(buf, "EXISTS (SELECT 1 FROM %s WHERE %s AND %s %s $1)",
							 p.from, p.where, p.key,
							 p.many ? "OPERATOR(pg_catalog.<>)" : "OPERATOR(pg_catalog.=)");
	}
	if (others.len == 0)
		return NULL;
	if (mine.len == 0)
		return psprintf("(%s)", others.data);
	return psprintf("((%s) AND NOT (%s))", others.data, mine.data);
}

/*
 * "right.to_col = left.from_col AND ...", with the foreign key's operator in
 * the order the operator takes its arguments (referenced side first).
 */
static void
append_step_condition(StringInfo buf, const GdprStep *step, const char *left,
					  const char *right_alias)
{
	ListCell   *fc,
			   *tc,
			   *oc;
	bool		first = true;

	forthree(fc, step->from_cols, tc, step->to_cols, oc, step->ops)
	{
		const char *from = quote_identifier(lfirst(fc));
		const char *to = quote_identifier(lfirst(tc));
		const char *op = qualified_operator(lfirst_oid(oc));

		if (!first)
			appendStringInfoString(buf, " AND ");
		first = false;
		if (step->reverse)
			appendStringInfo(buf, "%s%s %s %s.%s", left, from, op, right_alias, to);
		else
			appendStringInfo(buf, "%s.%s %s %s%s", right_alias, to, op, left, from);
	}
}

/*
 * The operator of a step, schema-qualified.  Paths are followed with the
 * audit owner's rights, and gdpr_admin can write gdpr.path_step directly
 * (as can a restore): only an equality operator of a btree operator family
 * is accepted, as a foreign key's is.  Only superusers make those.
 */
static const char *
qualified_operator(Oid opid)
{
	HeapTuple	tup;
	Form_pg_operator form;
	char	   *result;

	tup = SearchSysCache1(OPEROID, ObjectIdGetDatum(opid));
	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("equality operator with OID %u of a subject path does not exist", opid),
				 errhint("Register the table again so that its path is derived from the current foreign keys.")));
	form = (Form_pg_operator) GETSTRUCT(tup);
	result = psprintf("OPERATOR(%s.%s)",
					  quote_identifier(get_namespace_name(form->oprnamespace)),
					  NameStr(form->oprname));
	ReleaseSysCache(tup);
	if (get_mergejoin_opfamilies(opid) == NIL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FOREIGN_KEY),
				 errmsg("operator %s of a subject path is not the equality operator of a foreign key",
						format_operator(opid)),
				 errhint("Register the table again with gdpr.register_table() or gdpr.add_path(), which take paths from foreign keys.")));
	return result;
}

/*
 * The schema-qualified, quoted name of a relation the map names.  The map can
 * outlive a table dropped while event triggers were off
 * (session_replication_role = replica): that is an error, not a NULL.
 */
char *
gdpr_relation_name(Oid relid)
{
	char	   *relname = get_rel_name(relid);
	char	   *nspname = relname != NULL ? get_namespace_name(get_rel_namespace(relid)) : NULL;

	if (relname == NULL || nspname == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table with OID %u does not exist", relid),
				 errhint("The map still names a dropped table; remove it with gdpr.unregister_table(%u).",
						 relid)));
	/* a session's temporary schema has a number that means nothing to the reader */
	if (isAnyTempNamespace(get_rel_namespace(relid)))
		nspname = "pg_temp";
	return quote_qualified_identifier(nspname, relname);
}

/*
 * The schema-qualified, quoted name of a table on a path: a table, never a
 * view or anything else that runs code when read with the audit owner's
 * rights.
 */
static char *
qualified_table(const GdprTableMap *map, Oid relid)
{
	char	   *relname = get_rel_name(relid);
	char	   *nspname = relname != NULL ? get_namespace_name(get_rel_namespace(relid)) : NULL;
	char		relkind = relname != NULL ? get_rel_relkind(relid) : '\0';

	if (relname == NULL || nspname == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table with OID %u on a path of table %s does not exist",
						relid, map->qualified_name),
				 errhint("Register the table again with gdpr.unregister_table() and gdpr.register_table().")));
	if (relkind != RELKIND_RELATION && relkind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("%s on a path of table %s is not a table",
						quote_qualified_identifier(nspname, relname), map->qualified_name),
				 errhint("Register the table again with gdpr.register_table() or gdpr.add_path(), which take paths from foreign keys.")));
	return quote_qualified_identifier(nspname, relname);
}

static GdprPath *
find_path(List *paths, const char *name)
{
	ListCell   *lc;

	foreach(lc, paths)
	{
		GdprPath   *path = lfirst(lc);

		if (strcmp(path->name, name) == 0)
			return path;
	}
	return NULL;
}

static char *
spi_text(HeapTuple tuple, TupleDesc desc, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tuple, desc, col, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

static List *
text_array_to_list(Datum array)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	List	   *result = NIL;

	deconstruct_array(DatumGetArrayTypeP(array), TEXTOID, -1, false, TYPALIGN_INT,
					  &elems, &nulls, &n);
	for (int i = 0; i < n; i++)
		if (!nulls[i])
			result = lappend(result, TextDatumGetCString(elems[i]));
	return result;
}

static List *
oid_array_to_list(Datum array)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	List	   *result = NIL;

	deconstruct_array(DatumGetArrayTypeP(array), OIDOID, sizeof(Oid), true, TYPALIGN_INT,
					  &elems, &nulls, &n);
	for (int i = 0; i < n; i++)
		if (!nulls[i])
			result = lappend_oid(result, DatumGetObjectId(elems[i]));
	return result;
}
