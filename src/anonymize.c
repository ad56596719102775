/*-------------------------------------------------------------------------
 *
 * anonymize.c
 *		Erasure strategies: the SQL expression that rewrites one column, and
 *		the keyed pseudonyms they use.
 *
 * Expressions respect the column: they are cast to the column's exact type
 * (an explicit cast to varchar(n) truncates), never NULL a NOT NULL column,
 * and derive pseudonyms from a seed that includes the row's primary key, so
 * a unique column stays unique.
 *
 * Pseudonyms are HMAC-SHA256 under a key kept in gdpr.secret, which only the
 * extension's owner can read: without the key, a pseudonym cannot be linked
 * back to a subject by trying candidate keys.  The key is made on first use,
 * cached per backend and forgotten by the relcache callback when gdpr.secret
 * changes.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "common/cryptohash.h"
#include "common/hmac.h"
#include "common/sha2.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "gdpr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

PG_FUNCTION_INFO_V1(gdpr_pseudonym_sql);
PG_FUNCTION_INFO_V1(gdpr_random_key);

#define GDPR_KEY_LEN 32

/* The pseudonym key, read from gdpr.secret on first use; see gdpr_anonymize_invalidate */
static uint8 pseudonym_key[GDPR_KEY_LEN];
static bool pseudonym_key_valid = false;
static Oid	secret_relid = InvalidOid;

static void load_key(void);

/*
 * gdpr._pseudonym(seed text): 32 hex digits of HMAC-SHA256(key, seed).
 * Executable by gdpr_admin only: anyone else could test guesses against
 * pseudonymized audit entries.
 */
Datum
gdpr_pseudonym_sql(PG_FUNCTION_ARGS)
{
	text	   *seed = PG_GETARG_TEXT_PP(0);

	PG_RETURN_TEXT_P(cstring_to_text(gdpr_pseudonym(VARDATA_ANY(seed), VARSIZE_ANY_EXHDR(seed))));
}

/* gdpr._random_key(): a fresh key for gdpr.secret, from the strong random source */
Datum
gdpr_random_key(PG_FUNCTION_ARGS)
{
	bytea	   *result = palloc(VARHDRSZ + GDPR_KEY_LEN);

	SET_VARSIZE(result, VARHDRSZ + GDPR_KEY_LEN);
	if (!pg_strong_random(VARDATA(result), GDPR_KEY_LEN))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate a random key")));
	PG_RETURN_BYTEA_P(result);
}

/* 32 hex digits of HMAC-SHA256 under the pseudonym key */
char *
gdpr_pseudonym(const char *seed, size_t len)
{
	pg_hmac_ctx *ctx;
	uint8		digest[PG_SHA256_DIGEST_LENGTH];
	char	   *hex = palloc(33);

	load_key();
	ctx = pg_hmac_create(PG_SHA256);
	if (ctx == NULL ||
		pg_hmac_init(ctx, pseudonym_key, GDPR_KEY_LEN) < 0 ||
		pg_hmac_update(ctx, (const uint8 *) seed, len) < 0 ||
		pg_hmac_final(ctx, digest, sizeof(digest)) < 0)
	{
		pg_hmac_free(ctx);
		elog(ERROR, "could not compute HMAC-SHA256");
	}
	pg_hmac_free(ctx);
	for (int i = 0; i < 16; i++)
		snprintf(hex + 2 * i, 3, "%02x", digest[i]);
	return hex;
}

/* HMAC-SHA256 of data under key (a string), in hex */
char *
gdpr_hmac_hex(const char *key, const char *data, size_t len)
{
	pg_hmac_ctx *ctx = pg_hmac_create(PG_SHA256);
	uint8		digest[PG_SHA256_DIGEST_LENGTH];
	char	   *hex = palloc(2 * PG_SHA256_DIGEST_LENGTH + 1);

	if (ctx == NULL ||
		pg_hmac_init(ctx, (const uint8 *) key, strlen(key)) < 0 ||
		pg_hmac_update(ctx, (const uint8 *) data, len) < 0 ||
		pg_hmac_final(ctx, digest, sizeof(digest)) < 0)
	{
		pg_hmac_free(ctx);
		elog(ERROR, "could not compute HMAC-SHA256");
	}
	pg_hmac_free(ctx);
	for (int i = 0; i < PG_SHA256_DIGEST_LENGTH; i++)
		snprintf(hex + 2 * i, 3, "%02x", digest[i]);
	return hex;
}

/* The pseudonym that replaces a subject's key in the trail and the erasure record */
char *
gdpr_subject_pseudonym(const char *kind, const char *key)
{
	char	   *seed = psprintf("subject\x1f%s\x1f%s", kind, key);

	return gdpr_pseudonym(seed, strlen(seed));
}

void
gdpr_anonymize_invalidate(Oid relid)
{
	if (!OidIsValid(relid) || relid == secret_relid)
		pseudonym_key_valid = false;
}

static void
load_key(void)
{
	Oid			save_userid;
	int			save_sec_context;
	int			nest;
	bool		connected;
	bool		isnull;
	bytea	   *key;
	int			ret;

	if (pseudonym_key_valid)
		return;

	secret_relid = get_relname_relid("secret", get_namespace_oid("gdpr", false));
	connected = SPI_connect() == SPI_OK_CONNECT;
	if (!connected)
		elog(ERROR, "SPI_connect failed");
	nest = gdpr_become_audit_owner(&save_userid, &save_sec_context);
	ret = SPI_execute("SELECT value FROM gdpr.secret WHERE name = 'pseudonym_key' "
					  "ORDER BY made_at LIMIT 1", true, 1);

	/*
	 * Made by CREATE EXTENSION; made again only if someone removed it, and
	 * only where the transaction can write (a standby, a read-only
	 * transaction only read it: gdpr_export works there).
	 */
	if (ret == SPI_OK_SELECT && SPI_processed == 0 && !RecoveryInProgress() && !XactReadOnly)
	{
		ret = SPI_execute("INSERT INTO gdpr.secret (name, value) "
						  "SELECT 'pseudonym_key', gdpr._random_key() "
						  " WHERE NOT EXISTS (SELECT FROM gdpr.secret WHERE name = 'pseudonym_key')",
						  false, 0);
		if (ret != SPI_OK_INSERT)
			elog(ERROR, "SPI_execute failed: %d", ret);
		ret = SPI_execute("SELECT value FROM gdpr.secret WHERE name = 'pseudonym_key' "
						  "ORDER BY made_at LIMIT 1", false, 1);
	}
	gdpr_leave_role(save_userid, save_sec_context, nest);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read the pseudonym key: %d", ret);
	key = DatumGetByteaPP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (VARSIZE_ANY_EXHDR(key) != GDPR_KEY_LEN)
		elog(ERROR, "the pseudonym key has %d bytes, not %d", (int) VARSIZE_ANY_EXHDR(key), GDPR_KEY_LEN);
	memcpy(pseudonym_key, VARDATA_ANY(key), GDPR_KEY_LEN);
	SPI_finish();
	pseudonym_key_valid = true;
}

/*
 * The expression that replaces column att of the row "t" under strategy, or
 * NULL for "keep".  seed is a text expression unique to the subject, table,
 * column and row.  Returns NULL too, with *error set, when no expression of
 * that strategy fits the column.
 */
char *
gdpr_anonymize_expr(Form_pg_attribute att, const char *strategy, const char *seed,
					const char **error)
{
	const char *col = quote_identifier(NameStr(att->attname));
	const char *colname = NameStr(att->attname);
	char	   *type = format_type_with_typemod(att->atttypid, att->atttypmod);
	char		category;
	bool		preferred;
	char	   *ps = psprintf("gdpr._pseudonym(%s)", seed);
	char	   *expr = NULL;

	*error = NULL;
	if (strcmp(strategy, "keep") == 0)
		return NULL;
	if (strcmp(strategy, "null") == 0)
	{
		if (!att->attnotnull)
			return pstrdup("NULL");
		strategy = "redact";	/* the column became NOT NULL after it was classified */
	}

	get_type_category_preferred(att->atttypid, &category, &preferred);
	if (att->atttypid == UUIDOID)
		expr = strcmp(strategy, "pseudonym") == 0 || strcmp(strategy, "fake") == 0
			? psprintf("pg_catalog.substr(%1$s, 1, 8) || '-' || pg_catalog.substr(%1$s, 9, 4) || '-' || "
					   "pg_catalog.substr(%1$s, 13, 4) || '-' || pg_catalog.substr(%1$s, 17, 4) || '-' || "
					   "pg_catalog.substr(%1$s, 21, 12)", ps)
			: pstrdup("'00000000-0000-0000-0000-000000000000'");
	else if (category == TYPCATEGORY_STRING)
	{
		bool		email = pg_strcasecmp(colname, "email") == 0 || strstr(colname, "mail") != NULL;
		bool		phone = strstr(colname, "phone") != NULL || strstr(colname, "mobile") != NULL;

		if (strcmp(strategy, "redact") == 0)
			expr = pstrdup("'[erased]'");
		else if (strcmp(strategy, "pseudonym") == 0)
			expr = email
				? psprintf("'erased-' || pg_catalog.left(%s, 16) || '@invalid'", ps)
				: psprintf("'erased-' || pg_catalog.left(%s, 16)", ps);
		else if (strcmp(strategy, "fake") == 0)
		{
			if (email)
				expr = psprintf("'user-' || pg_catalog.left(%s, 10) || '@example.invalid'", ps);
			else if (phone)
				expr = psprintf("'+000' || pg_catalog.translate(pg_catalog.left(%s, 9), 'abcdef', '012345')", ps);
			else
				expr = psprintf("(ARRAY['Alex Morgan', 'Sam Taylor', 'Robin Lee', 'Jamie Fox', "
								"'Chris Novak', 'Kim Jansen', 'Noa Peeters', 'Lou Martin'])"
								"[1 + ('x' || pg_catalog.left(%s, 2))::bit(8)::int %% 8]", ps);
		}
		else					/* mask */
			expr = psprintf("CASE WHEN t.%1$s LIKE '%%@%%' "
							"THEN pg_catalog.left(t.%1$s, 1) || '***@' || pg_catalog.split_part(t.%1$s, '@', 2) "
							"ELSE pg_catalog.left(t.%1$s, 1) || '***' END", col);
	}
	else if (category == TYPCATEGORY_NUMERIC)
	{
		if (strcmp(strategy, "pseudonym") == 0 && att->atttypid != INT2OID)
			expr = psprintf("('x' || pg_catalog.left(%s, 7))::bit(28)::int", ps);
		else
			expr = pstrdup("0");
	}
	else if (category == TYPCATEGORY_DATETIME)
		expr = strcmp(strategy, "mask") == 0 && att->atttypid != TIMEOID && att->atttypid != TIMETZOID
			? psprintf("pg_catalog.date_trunc('year', t.%s)", col)
			: pstrdup(att->atttypid == TIMEOID || att->atttypid == TIMETZOID ? "'00:00'" : "'1900-01-01'");
	else if (category == TYPCATEGORY_BOOLEAN)
		expr = pstrdup("false");
	else if (category == TYPCATEGORY_NETWORK)
		expr = strcmp(strategy, "mask") == 0
			? psprintf("pg_catalog.network(pg_catalog.set_masklen(t.%s::pg_catalog.inet, "
					   "CASE WHEN pg_catalog.family(t.%s) = 4 THEN 24 ELSE 48 END))", col, col)
			: pstrdup("'0.0.0.0'");
	else if (category == TYPCATEGORY_ARRAY)
		expr = pstrdup("'{}'");
	else if (att->atttypid == JSONBOID || att->atttypid == JSONOID)
		expr = pstrdup("'{}'");
	else if (att->atttypid == BYTEAOID)
		expr = pstrdup("''");
	else if (!att->attnotnull)
		return pstrdup("NULL");
	else
	{
		*error = psprintf("column \"%s\" of type %s is NOT NULL and has no redaction of its type",
						  colname, type);
		return NULL;
	}
	return psprintf("(%s)::%s", expr, type);
}
