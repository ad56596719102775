-- A shop schema used by the following tests.  pg_regress has already run CREATE EXTENSION gdpr.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
-- Tests start from an empty trail and chain.  The trail refuses TRUNCATE even to superusers, so
-- this does what only a superuser can: switch triggers off (chain.sql shows that caught).
CREATE PROCEDURE public.reset_trail() LANGUAGE sql SET session_replication_role = replica
    AS $$ TRUNCATE gdpr.audit_log, gdpr.audit_seal, gdpr.audit_checkpoint, gdpr.audit_seal_state $$;
CREATE SCHEMA shop;
SET search_path = shop, public;

CREATE TABLE address (id int PRIMARY KEY, street text, city text);
CREATE TABLE staff (id int PRIMARY KEY, name text, address_id int REFERENCES address);
CREATE TABLE customer (
    id bigint PRIMARY KEY,
    email text UNIQUE NOT NULL,
    full_name text,
    password_hash text,
    address_id int REFERENCES address,
    support_rep_id int REFERENCES staff
);
CREATE TABLE orders (id int PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customer, total numeric(10,2));
CREATE TABLE order_item (
    order_id int REFERENCES orders,
    line int,
    product text,
    PRIMARY KEY (order_id, line)
);
CREATE TABLE rental (id int PRIMARY KEY, customer_id bigint REFERENCES customer);
CREATE TABLE payment (id int PRIMARY KEY, customer_id bigint REFERENCES customer,
                      rental_id int REFERENCES rental, amount numeric);
CREATE TABLE message (
    id int PRIMARY KEY,
    sender_id bigint REFERENCES customer,
    recipient_id bigint REFERENCES customer,
    recipient_email text,
    body text
);
-- A partitioned table whose foreign key exists only on its partitions.
CREATE TABLE visit (id int, at date, customer_id bigint, page text, PRIMARY KEY (id, at))
    PARTITION BY RANGE (at);
CREATE TABLE visit_2025 PARTITION OF visit FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE visit_2026 PARTITION OF visit FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
ALTER TABLE visit_2025 ADD FOREIGN KEY (customer_id) REFERENCES customer;
ALTER TABLE visit_2026 ADD FOREIGN KEY (customer_id) REFERENCES customer;
-- A composite key, in another schema.
CREATE SCHEMA billing;
CREATE TABLE billing.invoice (year int, no int, customer_id bigint REFERENCES customer, total numeric,
                              PRIMARY KEY (year, no));
CREATE TABLE billing.invoice_line (year int, no int, line int, text text,
                                   PRIMARY KEY (year, no, line),
                                   FOREIGN KEY (year, no) REFERENCES billing.invoice);

-- What the tests read of the trail: no ids, no timestamps.
CREATE VIEW trail AS
SELECT event, success, table_name, subject_kind, subject_id, related_subject_ids, row_key,
       changed_columns, old_values, new_values, actor, detail
  FROM gdpr.audit_log ORDER BY event_id;
