# gdpr: PGXS build.  See README.md for the test command.
#
# Where each concern lives: its C file and its SQL side by side in src/.  The install script
# gdpr--$(EXTVERSION).sql is built from the SQL files, in the order of SQL_PARTS (each part may
# use what an earlier one created):
#
#   gdpr        gdpr.c        the script's header and the roles (gdpr.c loads the library)
#   audit       audit.c       the trail (gdpr.audit_log), the row and TRUNCATE triggers and the
#                             statement batches they write through, log_event
#   chain       chain.c       the hash chain: seal, verify, digest, purge of expired events
#   paths       subject.c     foreign keys as edges, the shortest path from a table to its subject
#   subject     subject.c     the map: subject kinds, registered tables, paths, classification
#   coverage    -             views over the map: gdpr.map, gdpr.coverage_gaps
#   ddl         ddl.c         event triggers: the map follows the schema, DDL is recorded
#   export      export.c      gdpr_export, gdpr_export_rows, gdpr.export_plan (Art. 15, 20)
#   anonymize   anonymize.c   the pseudonym key
#   condition   condition.c   conditions users write: path conditions, legal hold conditions
#   erase       erase.c       erasure, legal holds, restriction, erasure requests (Art. 17, 18)
#   consent     consent.c     consent, objection, privacy notices (Art. 6, 7, 13, 14, 21)
#   requests    -             data subject requests and breaches (Art. 12, 33, 34)
#   processing  -             the record of processing activities (Art. 30)
#   retention   retention.c   retention policies and their enforcement (Art. 5(1)(e)); worker.c
#   ledger      ledger.c      the erasure ledger outside the database and its replay; gate.c
#   reads       reads.c       read auditing: whose data was read (Art. 15(1)(c), 33); queue.c
#   citus       citus.c       Citus clusters: the map on every node, capture on the shards
#   privileges  -             who may call and read what
#
# guc.c (settings), role.c (switching user), worker.c (the background worker), gate.c
# (applications kept out until the ledger's replay is done) and queue.c (events written for
# sessions that cannot: read-only transactions, reads) have no SQL of their own.

MODULE_big = gdpr
OBJS = src/gdpr.o src/guc.o src/subject.o src/role.o src/audit.o src/reads.o src/ddl.o src/export.o src/anonymize.o src/condition.o src/erase.o src/chain.o src/consent.o src/retention.o src/worker.o src/ledger.o src/gate.o src/queue.o src/citus.o

EXTENSION = gdpr
EXTVERSION = 1.0
SQL_PARTS = gdpr audit chain paths subject coverage ddl export anonymize condition erase consent requests processing retention ledger reads citus privileges
DATA_built = gdpr--$(EXTVERSION).sql
PGFILEDESC = "gdpr - GDPR compliance inside PostgreSQL"

REGRESS = setup map paths audit audit_settings export erase consent retention chain ddl bad_input hostile security erase_verify whose_data capture bulk ledger read_audit cleanup
REGRESS_OPTS = --inputdir=. --load-extension=gdpr

ISOLATION = audit_concurrent erase_concurrent seal_concurrent retention_concurrent ledger_concurrent
ISOLATION_OPTS = --inputdir=test/isolation --outputdir=output_iso --load-extension=gdpr

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

gdpr--$(EXTVERSION).sql: $(addprefix src/,$(addsuffix .sql,$(SQL_PARTS)))
	for f in $^; do cat $$f; echo; done > $@

# Every C file includes the shared header: a change to it rebuilds them all.
$(OBJS): src/gdpr.h src/compat.h
