# gdpr: PGXS build.  See README.md for the test command.

MODULE_big = gdpr
OBJS = src/gdpr.o src/guc.o src/subject.o src/role.o src/audit.o src/reads.o src/ddl.o src/export.o src/anonymize.o src/condition.o src/erase.o src/chain.o src/consent.o src/retention.o src/worker.o

EXTENSION = gdpr
DATA = gdpr--1.0.sql
PGFILEDESC = "gdpr - GDPR compliance inside PostgreSQL"

REGRESS = setup map paths audit audit_settings export erase consent retention chain ddl bad_input hostile security erase_verify whose_data cleanup
REGRESS_OPTS = --inputdir=. --load-extension=gdpr

ISOLATION = audit_concurrent erase_concurrent seal_concurrent retention_concurrent
ISOLATION_OPTS = --inputdir=test/isolation --outputdir=output_iso --load-extension=gdpr

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# Every C file includes the shared header: a change to it rebuilds them all.
$(OBJS): src/gdpr.h
