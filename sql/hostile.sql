-- Hostile identifiers register, audit and report correctly.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE SCHEMA "we""ird; schema";
CREATE TABLE "we""ird; schema"."Üser Table" (
    "select" bigint PRIMARY KEY,
    "E-Mail; DROP TABLE x" text,
    "from" text
);
CREATE TABLE "we""ird; schema"."order" (
    "Order Id" int PRIMARY KEY,
    "user" bigint REFERENCES "we""ird; schema"."Üser Table" ("select"),
    "'quoted'" text
);
SELECT gdpr.register_subject('"we""ird; schema"."Üser Table"', 'select', kind => 'we"ird kind');
SELECT gdpr.register_table('"we""ird; schema"."order"', kind => 'we"ird kind', via => '{user}');
SELECT gdpr.classify_column('"we""ird; schema"."Üser Table"', 'E-Mail; DROP TABLE x', 'contact');
SELECT gdpr.classify_column('"we""ird; schema"."Üser Table"', 'from', 'secret');
SELECT path FROM gdpr.map WHERE subject_kind = 'we"ird kind' ORDER BY 1;

CALL reset_trail();
INSERT INTO "we""ird; schema"."Üser Table" VALUES (1, 'x@example.com', 'hidden');
INSERT INTO "we""ird; schema"."order" VALUES (5, 1, 'it''s');
UPDATE "we""ird; schema"."order" SET "'quoted'" = 'ok' WHERE "Order Id" = 5;
DELETE FROM "we""ird; schema"."order";
SELECT event, table_name, subject_kind, subject_id, row_key, changed_columns, old_values, new_values
  FROM gdpr.audit_log ORDER BY event_id;
ALTER TABLE "we""ird; schema"."order" ADD COLUMN "x;y" int;
SELECT event, table_name, detail FROM gdpr.audit_log WHERE event = 'DDL';
DROP SCHEMA "we""ird; schema" CASCADE;
SELECT count(*) FROM gdpr.registered_table r WHERE r.kind = 'we"ird kind';
SELECT count(*) FROM gdpr.subject_kind WHERE kind = 'we"ird kind';
