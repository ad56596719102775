-- Attacks on every place the extension switches user, each tried by the role that could try it:
-- a role without privileges (regress_mallory), a table owner (regress_owner) and a gdpr_admin
-- member (regress_dpo).  Each attack tries to make its role a superuser, or to crash or mislead.
-- The worker's attacks are in test/t/004_security.pl.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE ROLE regress_mallory LOGIN;
CREATE ROLE regress_owner LOGIN;
CREATE ROLE regress_dpo LOGIN IN ROLE gdpr_admin;
CREATE SCHEMA sec AUTHORIZATION regress_owner;
GRANT USAGE ON SCHEMA sec TO PUBLIC;
-- Whether an attack made its role a superuser
CREATE FUNCTION public.supers() RETURNS text LANGUAGE sql
    AS $$ SELECT coalesce(string_agg(rolname, ', ' ORDER BY rolname), 'none') FROM pg_roles
           WHERE rolsuper AND rolname LIKE 'regress_%' $$;

-- 1. A cast to json on a type of one's own, run while the audit trigger makes the row image.
--    (a) on a temporary table by a role without privileges: the trigger refuses the table.
SET ROLE regress_mallory;
CREATE TYPE pg_temp.mood AS ENUM ('x');
CREATE FUNCTION pg_temp.mj(pg_temp.mood) RETURNS json LANGUAGE plpgsql AS $$
BEGIN IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)
THEN EXECUTE 'ALTER ROLE regress_mallory SUPERUSER'; END IF; RETURN '"x"'; END $$;
CREATE CAST (pg_temp.mood AS json) WITH FUNCTION pg_temp.mj(pg_temp.mood);
CREATE TEMP TABLE t (id int PRIMARY KEY, v pg_temp.mood);
CREATE TRIGGER a AFTER INSERT ON pg_temp.t FOR EACH ROW EXECUTE FUNCTION gdpr.audit_row();
INSERT INTO pg_temp.t VALUES (1, 'x');
TRUNCATE pg_temp.t;
CREATE TRIGGER b AFTER TRUNCATE ON pg_temp.t FOR EACH STATEMENT EXECUTE FUNCTION gdpr.audit_truncate();
TRUNCATE pg_temp.t;
RESET ROLE;
SELECT supers();
DISCARD TEMP;

--    (b) on a registered table, by its owner, through a column of the owner's type: the cast runs,
--    as the owner, and the event is recorded.
SET ROLE regress_owner;
CREATE TABLE sec.person (id int PRIMARY KEY, email text);
CREATE TYPE sec.mood AS ENUM ('glad', 'sad');
CREATE FUNCTION sec.mood_json(sec.mood) RETURNS json LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        EXECUTE 'ALTER ROLE regress_owner SUPERUSER';
    END IF;
    RETURN pg_catalog.to_json(current_user::text);
END $$;
CREATE CAST (sec.mood AS json) WITH FUNCTION sec.mood_json(sec.mood);
CREATE TABLE sec.diary (id int PRIMARY KEY, person_id int REFERENCES sec.person, mood sec.mood);
RESET ROLE;
-- the data protection officer maps the owner's tables and sets holds on them, with its rights
GRANT regress_owner TO regress_dpo;
SET ROLE regress_dpo;
SELECT gdpr.register_subject('sec.person', 'id', kind => 'sec');
SELECT gdpr.register_table('sec.diary', kind => 'sec');
RESET ROLE;
CREATE TABLE sec.entry (id int PRIMARY KEY, diary_id int REFERENCES sec.diary, line text);
ALTER TABLE sec.entry OWNER TO regress_owner;
SET ROLE regress_dpo;
SELECT gdpr.register_table('sec.entry', kind => 'sec');
RESET ROLE;
SET ROLE regress_owner;
INSERT INTO sec.person VALUES (1, 'ann@example.com'), (2, 'bob@example.com');
INSERT INTO sec.diary VALUES (1, 1, 'glad');
RESET ROLE;
SELECT supers();
SELECT event, subject_id, effective_role, new_values FROM gdpr.audit_log
 WHERE table_name = 'sec.diary' AND event <> 'DDL' ORDER BY event_id;

-- 2. The same cast, made to change the table's privileges (a relcache invalidation) and write the
--    table again while the outer audit call holds its plan: no crash, both writes recorded.
SET ROLE regress_owner;
CREATE OR REPLACE FUNCTION sec.mood_json(sec.mood) RETURNS json LANGUAGE plpgsql AS $$
BEGIN
    IF pg_catalog.current_setting('sec.depth', true) IS DISTINCT FROM '1' THEN
        PERFORM pg_catalog.set_config('sec.depth', '1', true);
        GRANT SELECT ON sec.diary TO PUBLIC;
        INSERT INTO sec.diary VALUES (3, 2, 'glad');
    END IF;
    RETURN '"x"';
END $$;
INSERT INTO sec.diary VALUES (2, 1, 'sad');
RESET ROLE;
SELECT row_key, subject_id FROM gdpr.audit_log WHERE table_name = 'sec.diary' AND event = 'INSERT'
 ORDER BY event_id;
-- and an export whose cast exports again after an invalidation
SET ROLE regress_owner;
CREATE OR REPLACE FUNCTION sec.mood_json(sec.mood) RETURNS json LANGUAGE plpgsql AS $$
BEGIN
    IF pg_catalog.current_setting('sec.depth2', true) IS DISTINCT FROM '1' THEN
        PERFORM pg_catalog.set_config('sec.depth2', '1', true);
        GRANT SELECT ON sec.diary TO PUBLIC;
        PERFORM gdpr_export(1, 'sec');
    END IF;
    RETURN '"x"';
END $$;
RESET ROLE;
GRANT EXECUTE ON FUNCTION gdpr_export(bigint, text, boolean, bigint) TO regress_owner;
SET ROLE regress_owner;
SELECT jsonb_array_length(gdpr_export(1, 'sec')->'data'->'sec.diary') AS diary_rows;
RESET ROLE;
REVOKE EXECUTE ON FUNCTION gdpr_export(bigint, text, boolean, bigint) FROM regress_owner;
SET ROLE regress_owner;
CREATE OR REPLACE FUNCTION sec.mood_json(sec.mood) RETURNS json LANGUAGE sql
    AS $$ SELECT pg_catalog.to_json($1::text) $$;
RESET ROLE;

-- 3. A legal hold whose condition calls the table owner's function: it runs as the owner, also
--    when a superuser asks gdpr_can_erase or erases.
SET ROLE regress_dpo;
CREATE FUNCTION sec.held() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        EXECUTE 'ALTER ROLE regress_owner SUPERUSER';
    END IF;
    RAISE NOTICE 'hold condition runs as %', current_user;
    RETURN false;
END $$;
ALTER FUNCTION sec.held() OWNER TO regress_owner;
SELECT gdpr.add_legal_hold('sec.diary', 'sec.held()', 'tax audit');
RESET ROLE;
SET client_min_messages = notice;
SELECT gdpr_can_erase(2, 'sec')->>'can_erase' AS can_erase;
SET client_min_messages = warning;
SELECT supers();

-- 4. gdpr_admin forging the requester of an erasure, and writing the map by hand.
SET ROLE regress_dpo;
INSERT INTO gdpr.erasure_request (kind, subject_id, due_at, requested_by)
VALUES ('sec', '2', now() + interval '1 day', 'postgres') RETURNING requested_by;
UPDATE gdpr.erasure_request SET requested_by = 'postgres' WHERE kind = 'sec';
UPDATE gdpr.erasure_request SET subject_id = '1', due_at = now() WHERE kind = 'sec';
UPDATE gdpr.erasure_request SET status = 'failed' WHERE kind = 'sec';
UPDATE gdpr.erasure_request SET status = 'pending' WHERE kind = 'sec';
DELETE FROM gdpr.erasure_request WHERE kind = 'sec';
DELETE FROM gdpr.restriction WHERE kind = 'sec';
RESET ROLE;
CREATE FUNCTION public.evil_eq(int, int) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN EXECUTE 'ALTER ROLE regress_dpo SUPERUSER'; RETURN $1 = $2; END $$;
CREATE OPERATOR public.=== (LEFTARG = int, RIGHTARG = int, FUNCTION = public.evil_eq);
SET ROLE regress_dpo;
UPDATE gdpr.path_step SET ops = ARRAY['public.===(int,int)'::regoperator]
 WHERE relid = 'sec.entry'::regclass AND step = 1;
SELECT gdpr._map_changed('sec.entry');
INSERT INTO sec.entry VALUES (5, 1, 'x');         -- the audit trigger follows the path: refused
SELECT gdpr_export(1, 'sec') IS NOT NULL;         -- and so do exports, holds and erasures
RESET ROLE;
SELECT supers();
UPDATE gdpr.path_step s SET ops = e.ops FROM gdpr._fk_edge e
 WHERE s.relid = 'sec.entry'::regclass AND s.step = 1 AND e.src = s.relid AND e.dst = s.to_rel;
SELECT gdpr._map_changed('sec.entry');

-- 5. Errors tell what, not the secret; nothing readable identifies an erased subject.
SELECT gdpr_restrict(1, 'legal claim: Alice v. Shop Ltd, case 2026-1234', 'sec');
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA sec TO regress_mallory;
SET ROLE regress_mallory;
UPDATE sec.diary SET mood = 'sad' WHERE id = 1;
SELECT kind, subject_id, source FROM gdpr.restriction WHERE kind = 'sec';
SELECT condition FROM gdpr.legal_hold WHERE relid = 'sec.diary'::regclass;
SELECT reason FROM gdpr.legal_hold;
RESET ROLE;
SELECT gdpr_unrestrict(1, 'sec');
SELECT gdpr_erase(2, kind => 'sec')->>'status' AS erased;
SET ROLE regress_mallory;
SELECT kind, subject_id = '2' AS holds_key, length(subject_id) AS len, source
  FROM gdpr.restriction WHERE kind = 'sec';
INSERT INTO sec.diary VALUES (9, 2, 'glad');                  -- the erased subject is still known
-- 6. Internal functions: not callable to disturb other sessions.
SELECT gdpr._map_changed('sec.diary');
SELECT gdpr._forget('sec.diary'::regclass::oid, 'x', 'y');
SELECT gdpr._forget_dropped();
RESET ROLE;

-- 6b. The owner of a table on another table's path plans its code into every lookup of that path:
--    a partial index whose predicate calls the owner's function, evaluated by the planner.  The
--    lookup of the subject key runs as the writer, never as the audit owner.
SET ROLE regress_owner;
CREATE FUNCTION sec.grab() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        EXECUTE 'ALTER ROLE regress_owner SUPERUSER';
    END IF;
END $$;
CREATE FUNCTION sec.pred() RETURNS boolean LANGUAGE plpgsql IMMUTABLE
    AS $$ BEGIN PERFORM sec.grab(); RETURN true; END $$;
CREATE INDEX diary_pred ON sec.diary (person_id) WHERE sec.pred();
RESET ROLE;
SET ROLE regress_mallory;
INSERT INTO sec.entry VALUES (6, 1, 'y');
RESET ROLE;
SELECT supers();
SELECT subject_id, effective_role FROM gdpr.audit_log WHERE table_name = 'sec.entry' AND row_key = '{"id": 6}';
DROP INDEX sec.diary_pred;
-- The key is looked up on a snapshot that sees what the writer's own statement wrote before.
WITH d AS (INSERT INTO sec.diary VALUES (8, 1, 'glad') RETURNING id)
INSERT INTO sec.entry SELECT 9, id, 'z' FROM d;
SELECT subject_id FROM gdpr.audit_log WHERE table_name = 'sec.entry' AND row_key = '{"id": 9}';

-- 7. Bounded events: no role fills the disk with events nobody can delete.
SET ROLE regress_mallory;
SELECT gdpr.log_event('PAGE_VIEW', NULL::text, true, jsonb_build_object('x', repeat('x', 9000)));
SELECT gdpr.log_event('PAGE_VIEW', repeat('k', 1025));
DO $$
DECLARE d text;
BEGIN
    PERFORM set_config('gdpr.actor', repeat('a', 2000), false);
EXCEPTION WHEN invalid_parameter_value THEN
    GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL;
    RAISE WARNING 'gdpr.actor refused: %', d;
END $$;
SELECT gdpr.log_event('PAGE_VIEW', '1', true, jsonb_build_object('x', repeat('x', 8000))) IS NOT NULL AS logged;
RESET ROLE;

-- 7b. An erasure's exemption from restrictions covers its own tables only: an application trigger
--    that writes a restricted subject of another kind meanwhile is refused, and so is the erasure.
CREATE TABLE sec.member (id int PRIMARY KEY, nick text);
ALTER TABLE sec.member OWNER TO regress_owner;
SELECT gdpr.register_subject('sec.member', 'id', kind => 'sec_member');
INSERT INTO sec.member VALUES (1, 'm1');
SELECT gdpr_restrict(1, 'complaint pending', 'sec_member');
INSERT INTO sec.person VALUES (3, 'cid@example.com');
INSERT INTO sec.diary VALUES (7, 3, 'glad');
SET ROLE regress_owner;
CREATE FUNCTION sec.note_member() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN UPDATE sec.member SET nick = 'touched' WHERE id = 1; RETURN OLD; END $$;
CREATE TRIGGER note_member AFTER DELETE ON sec.diary FOR EACH ROW EXECUTE FUNCTION sec.note_member();
RESET ROLE;
SELECT gdpr_erase(3, kind => 'sec')->>'status' AS erased;
SELECT nick FROM sec.member;
DROP TRIGGER note_member ON sec.diary;
SELECT gdpr_unrestrict(1, 'sec_member');

-- 8. DDL is recorded as whoever ran it, superusers included, whatever gdpr.audit_superusers says.
SET gdpr.audit_superusers = off;
SET ROLE regress_owner;
DROP TRIGGER gdpr_audit_row ON sec.diary;              -- capture cannot be switched off
RESET ROLE;
ALTER TABLE sec.diary ADD COLUMN note text;
SELECT effective_role, detail->>'command' AS command, detail->>'object' AS object
  FROM gdpr.audit_log WHERE event = 'DDL' AND table_name = 'sec.diary' ORDER BY event_id;
RESET gdpr.audit_superusers;

-- 9. A retention batch is exempt from the trail for its own deletes only: a write that an
--    application trigger makes meanwhile is recorded (and refused for an erased subject).
SET ROLE regress_owner;
CREATE TABLE sec.visit (id int PRIMARY KEY, person_id int REFERENCES sec.person, at timestamptz);
CREATE FUNCTION sec.touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN UPDATE sec.person SET email = 'visited@example.com' WHERE id = OLD.person_id; RETURN OLD; END $$;
CREATE TRIGGER touch AFTER DELETE ON sec.visit FOR EACH ROW EXECUTE FUNCTION sec.touch();
RESET ROLE;
SELECT gdpr.register_table('sec.visit', kind => 'sec');
SELECT gdpr.set_retention('sec.visit', 'at', interval '1 day', 'delete');
INSERT INTO sec.visit VALUES (1, 1, now() - interval '2 days');
SELECT gdpr._retention_batch('sec.visit', 100, false) AS purged;
SELECT event, table_name, subject_id, changed_columns FROM gdpr.audit_log
 WHERE table_name IN ('sec.visit', 'sec.person') AND event IN ('DELETE', 'UPDATE', 'RETENTION')
 ORDER BY event_id;

-- 9. Erasure's own switches of user.
--    (a) A registered materialized view is refreshed through PostgreSQL's REFRESH, which runs the
--        view's query as the view's owner: mallory's function in it never runs as a superuser.
RESET ROLE;
GRANT REFERENCES ON sec.member TO regress_owner;
SET ROLE regress_owner;
CREATE TABLE sec.badge (id int PRIMARY KEY, member_id int REFERENCES sec.member, label text, picture oid);
GRANT SELECT ON sec.badge TO PUBLIC;
RESET ROLE;
SELECT gdpr.register_table('sec.badge', kind => 'sec_member');
SELECT gdpr.classify_column('sec.badge', 'picture', 'special', erase => 'null');
GRANT CREATE ON SCHEMA sec TO regress_mallory;
SET ROLE regress_mallory;
CREATE TABLE sec.who_refreshed (who name, super boolean);
CREATE FUNCTION sec.spy(text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sec.who_refreshed SELECT current_user, rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user;
    IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        EXECUTE 'ALTER ROLE regress_mallory SUPERUSER';
    END IF;
    RETURN $1;
END $$;
CREATE MATERIALIZED VIEW sec.badge_labels AS SELECT id, sec.spy(label) AS label FROM sec.badge;
RESET ROLE;
SELECT gdpr.register_derived('sec.badge_labels');
--    (b) A large object another role owns, written into the subject's row: the erasure unlinks
--        only objects the table's owner owns, and leaves the other role's one alone.
SET ROLE regress_owner;
SELECT lo_from_bytea(0, 'owner''s picture') AS own_lo \gset
SELECT lo_from_bytea(0, 'a picture two rows share') AS shared_lo \gset
RESET ROLE;
SELECT lo_from_bytea(0, 'a superuser''s object') AS other_lo \gset
INSERT INTO sec.member VALUES (90, 'victim'), (91, 'bystander');
INSERT INTO sec.badge VALUES (1, 90, 'gold', :own_lo), (2, 90, 'silver', :other_lo), (3, 91, 'bronze', NULL),
                             (4, 90, 'copper', :shared_lo), (5, 91, 'tin', :shared_lo);
TRUNCATE sec.who_refreshed;
SELECT r->'refreshed_views' AS refreshed, r->'tables'->'sec.badge'->'large_objects_removed' AS removed,
       r->'tables'->'sec.badge'->'large_objects_left' AS left_alone
  FROM gdpr_erase(90, kind => 'sec_member') r;
SELECT DISTINCT who, super FROM sec.who_refreshed;
SELECT (SELECT count(*) FROM pg_largeobject_metadata WHERE oid = :own_lo) AS owners_left,
       (SELECT count(*) FROM pg_largeobject_metadata WHERE oid = :other_lo) AS others_left,
       (SELECT count(*) FROM pg_largeobject_metadata WHERE oid = :shared_lo) AS shared_left;
SELECT lo_unlink(:other_lo) AS unlinked_by_its_owner;

SELECT supers();
SET client_min_messages = error;
DROP SCHEMA sec CASCADE;
DROP FUNCTION public.supers();
DROP OPERATOR public.=== (int, int);
DROP FUNCTION public.evil_eq(int, int);
DELETE FROM gdpr.subject_kind WHERE kind IN ('sec', 'sec_member');
DROP OWNED BY regress_mallory, regress_owner, regress_dpo;
DROP ROLE regress_mallory, regress_owner, regress_dpo;
