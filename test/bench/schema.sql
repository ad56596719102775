-- The schema the export and erase benchmarks share: eleven registered tables with a two-hop
-- path, a reverse path and a partitioned table, and load_subjects(first, last), which gives every
-- subject 931 rows.
CREATE EXTENSION gdpr;
CREATE TABLE address (id bigint PRIMARY KEY, street text, city text);
CREATE TABLE customer (id bigint PRIMARY KEY, email text UNIQUE, name text, address_id bigint REFERENCES address);
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint REFERENCES customer, total numeric(10,2), placed timestamptz);
CREATE TABLE order_item (order_id bigint REFERENCES orders, line int, product text, PRIMARY KEY (order_id, line));
CREATE TABLE payment (id bigint PRIMARY KEY, customer_id bigint REFERENCES customer, amount numeric(10,2), payer text);
CREATE TABLE review (id bigint PRIMARY KEY, customer_id bigint REFERENCES customer, stars int, body text);
CREATE TABLE wishlist (id bigint PRIMARY KEY, customer_id bigint REFERENCES customer, product text);
CREATE TABLE session_log (id bigint, at date, customer_id bigint, ip inet, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE session_log_a PARTITION OF session_log FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE session_log_b PARTITION OF session_log FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
ALTER TABLE session_log_a ADD FOREIGN KEY (customer_id) REFERENCES customer;
ALTER TABLE session_log_b ADD FOREIGN KEY (customer_id) REFERENCES customer;
CREATE TABLE support_ticket (id bigint PRIMARY KEY, customer_id bigint REFERENCES customer, subject text);
CREATE TABLE ticket_message (id bigint PRIMARY KEY, ticket_id bigint REFERENCES support_ticket, body text);
CREATE TABLE newsletter (id bigint PRIMARY KEY, customer_id bigint REFERENCES customer, topic text);
-- every lookup the export makes has an index (gdpr.export_plan lists them)
CREATE INDEX ON orders (customer_id);
CREATE INDEX ON payment (customer_id);
CREATE INDEX ON review (customer_id);
CREATE INDEX ON wishlist (customer_id);
CREATE INDEX ON session_log (customer_id);
CREATE INDEX ON support_ticket (customer_id);
CREATE INDEX ON ticket_message (ticket_id);
CREATE INDEX ON newsletter (customer_id);
CREATE INDEX ON customer (address_id);

SELECT gdpr.register_subject('customer', 'id');
SELECT gdpr.register_table(t) FROM unnest(ARRAY['address', 'orders', 'order_item', 'review',
    'wishlist', 'session_log', 'support_ticket', 'ticket_message', 'newsletter']) t;
SELECT gdpr.register_table('payment', on_erase => 'anonymize');     -- kept by law
SELECT gdpr.classify_column('customer', 'email', 'contact');
SELECT gdpr.classify_column('customer', 'name', 'identity');
SELECT gdpr.classify_column('payment', 'payer', 'identity');
SELECT gdpr.classify_column('address', 'street', 'location');

-- Subjects first..last, each with the same shape: 931 rows about customer 1 in 11 tables.
CREATE PROCEDURE load_subjects(first bigint, last bigint) LANGUAGE sql AS $$
    INSERT INTO address SELECT c, 'street ' || c, 'city' FROM generate_series(first, last) c;
    INSERT INTO customer SELECT c, 'user' || c || '@example.com', 'User ' || c, c FROM generate_series(first, last) c;
    INSERT INTO orders SELECT c * 1000 + o, c, o, '2025-01-01' FROM generate_series(first, last) c, generate_series(1, 100) o;
    INSERT INTO order_item SELECT c * 1000 + o, l, 'product ' || l FROM generate_series(first, last) c, generate_series(1, 100) o, generate_series(1, 3) l;
    INSERT INTO payment SELECT c * 1000 + p, c, p, 'User ' || c FROM generate_series(first, last) c, generate_series(1, 100) p;
    INSERT INTO review SELECT c * 1000 + r, c, 5, 'fine' FROM generate_series(first, last) c, generate_series(1, 50) r;
    INSERT INTO wishlist SELECT c * 1000 + w, c, 'thing ' || w FROM generate_series(first, last) c, generate_series(1, 50) w;
    INSERT INTO session_log SELECT c * 1000 + s, date '2024-01-01' + s * 2, c, '10.0.0.1' FROM generate_series(first, last) c, generate_series(1, 200) s;
    INSERT INTO support_ticket SELECT c * 1000 + t, c, 'help ' || t FROM generate_series(first, last) c, generate_series(1, 20) t;
    INSERT INTO ticket_message SELECT (c * 1000 + t) * 10 + m, c * 1000 + t, 'message' FROM generate_series(first, last) c, generate_series(1, 20) t, generate_series(1, 5) m;
    INSERT INTO newsletter SELECT c * 1000 + n, c, 'topic ' || n FROM generate_series(first, last) c, generate_series(1, 10) n;
$$;
