-- Orders as OrderService stores them. `order_id` is the client's idempotency
-- key (or a server UUIDv7); `seq` orders the listing (newest first) and is
-- what page tokens point at; `request_fingerprint` is a digest of the
-- creating request's content, compared when the same order_id comes again.
CREATE TABLE orders (
    order_id            TEXT        PRIMARY KEY,
    seq                 BIGINT      GENERATED ALWAYS AS IDENTITY UNIQUE,
    customer_id         TEXT        NOT NULL,
    currency_code       TEXT        NOT NULL CHECK (currency_code ~ '^[A-Z]{3}$'),
    items               JSONB       NOT NULL,
    total_minor         BIGINT      NOT NULL CHECK (total_minor >= 0),
    status              TEXT        NOT NULL
                        CHECK (status IN ('PENDING', 'PAID', 'FAILED', 'CANCELLED')),
    failure_reason      TEXT,
    version             BIGINT      NOT NULL DEFAULT 1 CHECK (version >= 1),
    request_fingerprint BYTEA       NOT NULL,
    create_time         TIMESTAMPTZ NOT NULL DEFAULT now(),
    update_time         TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- ListOrders by customer, and by status, newest first.
CREATE INDEX orders_customer_seq ON orders (customer_id, seq);
CREATE INDEX orders_status_seq ON orders (status, seq);
