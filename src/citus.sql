------------------------------------------------------------------------------------------------
-- Citus clusters (citus.c)
--
-- On a Citus cluster the application's rows live in shards on the workers, and the capture
-- trigger fires there, on the shard.  Each node keeps its own trail; what the workers need of the
-- coordinator's map (the subject kinds, the registered Citus tables with their paths and
-- classification, the restrictions and the pseudonym key) reaches them through the cluster bus: a
-- reference table whose rows every node's copy receives in the writing transaction (two-phase
-- commit), where a trigger applies them.  A rolled-back registration changes no node.
------------------------------------------------------------------------------------------------

-- What this node is: 'none' (no Citus here), 'coordinator' or 'worker'.  pg_dist_* exist only
-- where Citus is installed, so they are read by name.
CREATE FUNCTION gdpr._citus_node() RETURNS text
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    grp int;
BEGIN
    IF pg_catalog.to_regclass('pg_catalog.pg_dist_local_group') IS NULL THEN
        RETURN 'none';
    END IF;
    EXECUTE 'SELECT groupid FROM pg_catalog.pg_dist_local_group' INTO grp;
    RETURN CASE WHEN grp = 0 THEN 'coordinator' ELSE 'worker' END;
END
$$;

-- What a table is to Citus: 'distributed' by a column's hash; 'copied', a reference or Citus
-- local table, whose copies (one per node, or the coordinator's alone) one statement changes;
-- 'sharded' otherwise (a single-shard distributed table, whose one shard is on one node, or an
-- append or range distributed one); NULL when it is not in Citus's metadata.
CREATE FUNCTION gdpr._citus_kind(tbl pg_catalog.regclass) RETURNS text
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    kind text;
BEGIN
    IF pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE 'SELECT CASE WHEN partmethod = ''n'' AND (repmodel = ''t'' OR colocationid = 0) THEN ''copied''
                         WHEN partmethod = ''h'' THEN ''distributed'' ELSE ''sharded'' END
               FROM pg_catalog.pg_dist_partition WHERE logicalrelid = $1'
        INTO kind USING tbl;
    RETURN kind;
END
$$;

CREATE FUNCTION gdpr._citus_table(tbl pg_catalog.regclass) RETURNS boolean
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$ SELECT gdpr._citus_kind(tbl) IS NOT NULL $$;

CREATE FUNCTION gdpr._citus_distributed(tbl pg_catalog.regclass) RETURNS boolean
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$ SELECT gdpr._citus_kind(tbl) IS NOT DISTINCT FROM 'distributed' $$;

CREATE FUNCTION gdpr._citus_copied(tbl pg_catalog.regclass) RETURNS boolean
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$ SELECT gdpr._citus_kind(tbl) IS NOT DISTINCT FROM 'copied' $$;

-- Citus creates triggers on its tables only under citus.enable_unsafe_triggers: the trigger
-- then fires on the node that holds the shard, which is where the capture has to run.  Set for
-- the registration's own statements, and put back as it was.
CREATE FUNCTION gdpr._citus_triggers(enable boolean) RETURNS text
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    was text := pg_catalog.current_setting('citus.enable_unsafe_triggers', true);
BEGIN
    IF was IS NOT NULL THEN
        PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', CASE WHEN enable THEN 'on' ELSE 'off' END, true);
    END IF;
    RETURN was;
END
$$;

-- What the workers need of the map, with every relation named by its text (oids differ between
-- nodes).  A registered Citus table whose path leaves the Citus tables cannot be followed on a
-- worker: refused here, with what to do.
CREATE FUNCTION gdpr._cluster_map() RETURNS jsonb
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tables regclass[];
    bad record;
BEGIN
    SELECT pg_catalog.array_agg(r.relid) INTO tables
      FROM gdpr.registered_table r WHERE gdpr._citus_table(r.relid);
    tables := COALESCE(tables, '{}');
    SELECT r.relid, s.relid AS subject_table INTO bad
      FROM gdpr.registered_table r JOIN gdpr.subject_kind s ON s.kind = r.kind
     WHERE r.relid = ANY (tables) AND NOT gdpr._citus_table(s.relid) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'table % is a Citus table, but its subject table % is not', gdpr._qualified(bad.relid),
              gdpr._qualified(bad.subject_table) USING ERRCODE = '0A000',
              DETAIL = 'The capture runs on the worker that holds each shard, where only Citus tables exist.',
              HINT = pg_catalog.format('Distribute %s (create_distributed_table) or make it a reference table (create_reference_table) first.',
                                       gdpr._qualified(bad.subject_table));
    END IF;
    SELECT p.relid, p.to_rel INTO bad FROM gdpr.path_step p
     WHERE p.relid = ANY (tables) AND NOT gdpr._citus_table(p.to_rel) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'table % is a Citus table, but its path to the subject goes through %, which is not',
              gdpr._qualified(bad.relid), gdpr._qualified(bad.to_rel) USING ERRCODE = '0A000',
              HINT = pg_catalog.format('Make %s a Citus table too, or register %s with subject_column.',
                                       gdpr._qualified(bad.to_rel), gdpr._qualified(bad.relid));
    END IF;
    RETURN pg_catalog.jsonb_build_object(
        'kinds', (SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                      'kind', s.kind, 'relid', gdpr._qualified(s.relid), 'key_column', s.key_column,
                      'key_type', s.key_type::text, 'on_erase', s.on_erase, 'registered_at', s.registered_at)), '[]')
                    FROM gdpr.subject_kind s
                   WHERE s.kind IN (SELECT r.kind FROM gdpr.registered_table r WHERE r.relid = ANY (tables))),
        'tables', (SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(r) OPERATOR(pg_catalog.||)
                      pg_catalog.jsonb_build_object('relid', gdpr._qualified(r.relid))), '[]')
                     FROM gdpr.registered_table r WHERE r.relid = ANY (tables)),
        'paths', (SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(p) OPERATOR(pg_catalog.||)
                      pg_catalog.jsonb_build_object('relid', gdpr._qualified(p.relid))), '[]')
                    FROM gdpr.subject_path p WHERE p.relid = ANY (tables)),
        'steps', (SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(p) OPERATOR(pg_catalog.||)
                      pg_catalog.jsonb_build_object('relid', gdpr._qualified(p.relid),
                                                    'to_rel', gdpr._qualified(p.to_rel),
                                                    'ops', p.ops::text[])), '[]')
                    FROM gdpr.path_step p WHERE p.relid = ANY (tables)),
        'columns', (SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(c) OPERATOR(pg_catalog.||)
                        pg_catalog.jsonb_build_object('relid', gdpr._qualified(c.relid))), '[]')
                      FROM gdpr.column_class c WHERE c.relid = ANY (tables)),
        -- by pseudonym, without their reasons: the bus keeps the latest map on every node, and an
        -- erasure does not rewrite it (see gdpr_erase in citus.c); the capture and retention on a
        -- worker look restrictions up by key and by pseudonym alike
        'restrictions', (SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                             'kind', x.kind,
                             'subject_id', CASE WHEN x.source = 'erased' THEN x.subject_id
                                                ELSE gdpr._pseudonym('subject' OPERATOR(pg_catalog.||) E'\x1f'
                                                         OPERATOR(pg_catalog.||) x.kind OPERATOR(pg_catalog.||) E'\x1f'
                                                         OPERATOR(pg_catalog.||) x.subject_id) END,
                             'source', x.source, 'reason', 'restricted on the coordinator',
                             'restricted_at', x.restricted_at)), '[]')
                           FROM gdpr.restriction x),
        -- retention runs on the nodes that hold the rows, which need the policies and the holds
        'retention', (SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(p) OPERATOR(pg_catalog.||)
                          pg_catalog.jsonb_build_object('relid', gdpr._qualified(p.relid))), '[]')
                        FROM gdpr.retention_policy p WHERE p.relid = ANY (tables)),
        'holds', (SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(h) OPERATOR(pg_catalog.||)
                      pg_catalog.jsonb_build_object('relid', gdpr._qualified(h.relid))), '[]')
                    FROM gdpr.legal_hold h WHERE h.relid = ANY (tables)),
        'pseudonym_key', (SELECT pg_catalog.encode(s.value, 'hex') FROM gdpr.secret s
                           WHERE s.name = 'pseudonym_key' ORDER BY s.made_at LIMIT 1),
        'signal_key', (SELECT pg_catalog.encode(s.value, 'hex') FROM gdpr.secret s
                        WHERE s.name = 'cluster_signal_key' ORDER BY s.made_at LIMIT 1));
END
$$;

-- On the coordinator, after a change of the map: sends the map to every node.  Nothing to do
-- where Citus is absent, on a worker, or while no Citus table was ever registered.
CREATE FUNCTION gdpr._cluster_sync() RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    SET client_min_messages = warning		-- Citus's notices about its own steps
AS $$
DECLARE
    was text;
BEGIN
    IF gdpr._citus_node() <> 'coordinator' THEN
        RETURN;
    END IF;
    IF pg_catalog.to_regclass('gdpr.cluster_bus') IS NULL THEN
        IF NOT EXISTS (SELECT 1 FROM gdpr.registered_table r WHERE gdpr._citus_table(r.relid)) THEN
            RETURN;
        END IF;
        CREATE TABLE gdpr.cluster_bus (
            op       text NOT NULL,
            payload  jsonb NOT NULL,
            sent_at  timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
        );
        REVOKE ALL ON gdpr.cluster_bus FROM PUBLIC;
        -- not a member of the extension: Citus leaves members to the extension's script on a
        -- node it adds, which would lack the bus
        PERFORM pg_catalog.create_reference_table('gdpr.cluster_bus');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
                    WHERE t.tgrelid = 'gdpr.cluster_bus'::regclass AND t.tgname = 'apply') THEN
        was := gdpr._citus_triggers(true);
        CREATE TRIGGER apply AFTER INSERT ON gdpr.cluster_bus FOR EACH ROW EXECUTE FUNCTION gdpr._cluster_apply();
        PERFORM gdpr._citus_triggers(was = 'on');
    END IF;
    -- The erasure's signals to the workers travel on the eraser's own connections, which carry its
    -- statements (citus.c): the eraser inserts them, signed; they are never stored.
    IF pg_catalog.to_regclass('gdpr.cluster_signal') IS NULL THEN
        CREATE TABLE gdpr.cluster_signal (
            op       text NOT NULL,
            payload  jsonb NOT NULL
        );
        REVOKE ALL ON gdpr.cluster_signal FROM PUBLIC;
        PERFORM pg_catalog.create_reference_table('gdpr.cluster_signal');
        GRANT INSERT ON gdpr.cluster_signal TO gdpr_admin;
        was := gdpr._citus_triggers(true);
        CREATE TRIGGER receive BEFORE INSERT ON gdpr.cluster_signal FOR EACH ROW
            EXECUTE FUNCTION gdpr._cluster_receive();
        PERFORM gdpr._citus_triggers(was = 'on');
    END IF;
    -- the key that signs the signals, sent with the map (citus.c)
    INSERT INTO gdpr.secret (name, value)
    SELECT 'cluster_signal_key', gdpr._random_key()
     WHERE NOT EXISTS (SELECT FROM gdpr.secret WHERE name = 'cluster_signal_key');
    -- the bus keeps the latest map, for a node added later (owner only, as gdpr.secret)
    DELETE FROM gdpr.cluster_bus;
    INSERT INTO gdpr.cluster_bus (op, payload) VALUES ('map', gdpr._cluster_map());
END
$$;

-- The trigger of the bus, on every node's copy: a worker's map becomes the coordinator's.
CREATE FUNCTION gdpr._cluster_apply() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.op = 'map' AND gdpr._citus_node() = 'worker' THEN
        PERFORM gdpr._cluster_apply_map(NEW.payload);
    END IF;
    RETURN NULL;
END
$$;

-- A worker that finds a shard of a table its map lacks (a node added after the map was sent:
-- Citus copies the bus's rows to it without firing the trigger) applies the map the bus holds, in
-- a background worker's transaction (citus.c).  Returns whether there was one.
CREATE FUNCTION gdpr._cluster_catch_up() RETURNS boolean
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    m jsonb;
BEGIN
    IF gdpr._citus_node() <> 'worker' OR pg_catalog.to_regclass('gdpr.cluster_bus') IS NULL THEN
        RETURN false;
    END IF;
    -- one session of the node applies it at a time
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('gdpr._cluster_catch_up'));
    SELECT b.payload INTO m FROM gdpr.cluster_bus b WHERE b.op = 'map' ORDER BY b.sent_at DESC LIMIT 1;
    IF m IS NULL THEN
        RETURN false;
    END IF;
    PERFORM gdpr._cluster_apply_map(m);
    RETURN true;
END
$$;

CREATE FUNCTION gdpr._cluster_apply_map(m jsonb) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM gdpr.subject_kind;		-- and, by their foreign keys, tables, paths, steps, columns,
                                        -- retention policies and legal holds
    INSERT INTO gdpr.subject_kind (kind, relid, key_column, key_type, on_erase, registered_at)
    SELECT k.kind, k.relid::regclass, k.key_column, k.key_type::regtype, k.on_erase, k.registered_at
      FROM pg_catalog.jsonb_to_recordset(m -> 'kinds')
           AS k(kind text, relid text, key_column name, key_type text, on_erase text, registered_at timestamptz);
    INSERT INTO gdpr.registered_table (relid, kind, on_erase, purpose, legal_basis, retention, recipients,
                                       provided_by_subject, registered_at, read_audit)
    SELECT t.relid::regclass, t.kind, t.on_erase, t.purpose, t.legal_basis, t.retention, t.recipients,
           t.provided_by_subject, t.registered_at, t.read_audit
      FROM pg_catalog.jsonb_to_recordset(m -> 'tables')
           AS t(relid text, kind text, on_erase text, purpose text, legal_basis text, retention text,
                recipients text[], provided_by_subject boolean, registered_at timestamptz, read_audit boolean);
    INSERT INTO gdpr.subject_path (relid, path_name, relation, subject_column, about_columns, condition)
    SELECT p.relid::regclass, p.path_name, p.relation, p.subject_column, p.about_columns, p.condition
      FROM pg_catalog.jsonb_to_recordset(m -> 'paths')
           AS p(relid text, path_name text, relation text, subject_column name, about_columns name[], condition text);
    INSERT INTO gdpr.path_step (relid, path_name, step, from_cols, to_rel, to_cols, ops, reverse, constraint_name)
    SELECT s.relid::regclass, s.path_name, s.step, s.from_cols, s.to_rel::regclass, s.to_cols,
           s.ops::regoperator[], s.reverse, s.constraint_name
      FROM pg_catalog.jsonb_to_recordset(m -> 'steps')
           AS s(relid text, path_name text, step int, from_cols name[], to_rel text, to_cols name[],
                ops text[], reverse boolean, constraint_name name);
    INSERT INTO gdpr.column_class (relid, column_name, category, erase)
    SELECT c.relid::regclass, c.column_name, c.category, c.erase
      FROM pg_catalog.jsonb_to_recordset(m -> 'columns')
           AS c(relid text, column_name name, category text, erase text);
    INSERT INTO gdpr.retention_policy (relid, time_column, keep, action, condition, created_at)
    SELECT p.relid::regclass, p.time_column, p.keep, p.action, p.condition, p.created_at
      FROM pg_catalog.jsonb_to_recordset(COALESCE(m -> 'retention', '[]'))
           AS p(relid text, time_column name, keep interval, action text, condition text, created_at timestamptz);
    INSERT INTO gdpr.legal_hold (hold_id, relid, condition, reason, created_at) OVERRIDING SYSTEM VALUE
    SELECT h.hold_id, h.relid::regclass, h.condition, h.reason, h.created_at
      FROM pg_catalog.jsonb_to_recordset(COALESCE(m -> 'holds', '[]'))
           AS h(hold_id int, relid text, condition text, reason text, created_at timestamptz);
    DELETE FROM gdpr.restriction;
    INSERT INTO gdpr.restriction (kind, subject_id, source, reason, restricted_at)
    SELECT x.kind, x.subject_id, x.source, x.reason, x.restricted_at
      FROM pg_catalog.jsonb_populate_recordset(NULL::gdpr.restriction, m -> 'restrictions') x;
    IF m ->> 'pseudonym_key' IS NOT NULL THEN
        DELETE FROM gdpr.secret WHERE name = 'pseudonym_key';
        INSERT INTO gdpr.secret (name, value) VALUES ('pseudonym_key', pg_catalog.decode(m ->> 'pseudonym_key', 'hex'));
    END IF;
    IF m ->> 'signal_key' IS NOT NULL THEN
        DELETE FROM gdpr.secret WHERE name = 'cluster_signal_key';
        INSERT INTO gdpr.secret (name, value) VALUES ('cluster_signal_key', pg_catalog.decode(m ->> 'signal_key', 'hex'));
    END IF;
    PERFORM gdpr._cluster_forget();
END
$$;

-- The subject's history for gdpr_export: this node's, and on a Citus coordinator every worker's
-- too, read by Citus on connections of its own (committed events), ordered by time.  A worker
-- that cannot be read fails the export: it never leaves out a node's part unsaid.
CREATE FUNCTION gdpr._subject_history(kind text, subject text) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    history jsonb := gdpr._node_history(kind, subject);
    r record;
BEGIN
    IF gdpr._citus_node() <> 'coordinator' OR pg_catalog.to_regclass('gdpr.cluster_bus') IS NULL THEN
        RETURN history;
    END IF;
    FOR r IN EXECUTE 'SELECT nodename, nodeport, success, result FROM pg_catalog.run_command_on_workers($1)'
               USING pg_catalog.format('SELECT gdpr._node_history(%L, %L)', kind, subject) LOOP
        IF NOT r.success THEN
            RAISE EXCEPTION 'the audit trail of node %:% cannot be read', r.nodename, r.nodeport
                USING ERRCODE = '08006', DETAIL = r.result,
                      HINT = 'The export covers every node of the cluster: bring the node back, or remove it with citus_remove_node().';
        END IF;
        history := history OPERATOR(pg_catalog.||) r.result::jsonb;
    END LOOP;
    RETURN (SELECT COALESCE(pg_catalog.jsonb_agg(e ORDER BY e OPERATOR(pg_catalog.->>) 'time'), '[]')
              FROM pg_catalog.jsonb_array_elements(history) e);
END
$$;

-- Whether a worker's trail still names the subject (as gdpr_erase finds it after an erasure:
-- a restored node can bring events back).  Committed events, read by Citus on connections of its
-- own; a worker that cannot be read is an error, never a "no".
CREATE FUNCTION gdpr._workers_hold_subject(kind text, subject text) RETURNS boolean
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
BEGIN
    IF gdpr._citus_node() <> 'coordinator' OR pg_catalog.to_regclass('gdpr.cluster_bus') IS NULL THEN
        RETURN false;
    END IF;
    FOR r IN EXECUTE 'SELECT nodename, nodeport, success, result FROM pg_catalog.run_command_on_workers($1)'
               -- run on the workers as the owner, under their database's search_path: nothing resolved there
               USING pg_catalog.format('SELECT EXISTS (SELECT FROM gdpr.audit_log WHERE subject_kind OPERATOR(pg_catalog.=) %L::pg_catalog.text '
                                       '   AND (subject_id OPERATOR(pg_catalog.=) %L::pg_catalog.text '
                                       '        OR related_subject_ids OPERATOR(pg_catalog.@>) ARRAY[%L::pg_catalog.text]))',
                                       kind, subject, subject) LOOP
        IF NOT r.success THEN
            RAISE EXCEPTION 'the audit trail of node %:% cannot be read', r.nodename, r.nodeport
                USING ERRCODE = '08006', DETAIL = r.result,
                      HINT = 'An erasure covers every node of the cluster: bring the node back, or remove it with citus_remove_node().';
        END IF;
        IF r.result = 't' THEN
            RETURN true;
        END IF;
    END LOOP;
    RETURN false;
END
$$;

-- What a retention pass of this node works on for a policy's table: the table itself, or, for a
-- distributed table (a single-shard one too), its shards on this node (none on a coordinator that
-- holds none).  A reference or Citus local table is the coordinator's: one statement there
-- changes every copy.
CREATE FUNCTION gdpr._retention_targets(tbl pg_catalog.regclass) RETURNS pg_catalog.regclass[]
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    shards regclass[];
BEGIN
    IF NOT gdpr._citus_table(tbl) THEN
        RETURN ARRAY[tbl];
    END IF;
    IF gdpr._citus_copied(tbl) THEN
        RETURN CASE WHEN gdpr._citus_node() = 'coordinator' THEN ARRAY[tbl] ELSE '{}' END;
    END IF;
    EXECUTE 'SELECT COALESCE(pg_catalog.array_agg(r ORDER BY r::text), ''{}'') FROM (
                 SELECT pg_catalog.to_regclass(pg_catalog.shard_name(s.logicalrelid, s.shardid, false)) r
                   FROM pg_catalog.pg_dist_shard s WHERE s.logicalrelid = $1) x
              WHERE r IS NOT NULL'
       INTO shards USING tbl;
    RETURN shards;
END
$$;

-- Whether a subject is restricted by hand (Art. 18(1)(c)), by key or, on a worker, whose copy of
-- the restrictions holds pseudonyms, by pseudonym: for retention batches on a worker's shards, which
-- run as the table's owner.  It tells what gdpr.restriction's public columns tell on the
-- coordinator, nothing more.
CREATE FUNCTION gdpr._restricted_by_hand(kind text, subject text) RETURNS boolean
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT FROM gdpr.restriction r
                    WHERE r.kind = $1 AND r.source = 'manual'
                      AND r.subject_id = ANY (ARRAY[$2, gdpr._pseudonym('subject' || E'\x1f' || $1 || E'\x1f' || $2)]))
$$;

-- Holds, retention policies and restrictions reach the workers with the map, whichever way they
-- change (gdpr_admin may also write these tables directly).  On a worker only the map's
-- application and an erasure's scrub, as the extension's owner, change them: anything else would
-- be undone by the next map, or hide a hold from retention meanwhile.
CREATE FUNCTION gdpr._cluster_resync() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF gdpr._citus_node() = 'worker' AND NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
        RAISE EXCEPTION '% of a Citus worker is the coordinator''s', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME
            USING ERRCODE = '0A000', HINT = 'Change it on the coordinator, which sends it to every node.';
    END IF;
    PERFORM gdpr._map_changed(TG_RELID::regclass);
    RETURN NULL;
END
$$;
CREATE TRIGGER cluster_resync AFTER INSERT OR UPDATE OR DELETE ON gdpr.legal_hold
    FOR EACH STATEMENT EXECUTE FUNCTION gdpr._cluster_resync();
CREATE TRIGGER cluster_resync AFTER INSERT OR DELETE OR UPDATE OF relid, time_column, keep, action, condition ON gdpr.retention_policy
    FOR EACH STATEMENT EXECUTE FUNCTION gdpr._cluster_resync();
CREATE TRIGGER cluster_resync AFTER INSERT OR UPDATE OR DELETE ON gdpr.restriction
    FOR EACH STATEMENT EXECUTE FUNCTION gdpr._cluster_resync();

-- The trigger of gdpr.cluster_signal: on a worker, an erasure's signal (citus.c)
CREATE FUNCTION gdpr._cluster_receive() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'gdpr_cluster_receive';

-- Every backend of the node drops what it cached of the map: the shards' capture plans are
-- keyed by the shards, which the map does not name.
CREATE FUNCTION gdpr._cluster_forget() RETURNS void
    LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'gdpr_cluster_forget';
