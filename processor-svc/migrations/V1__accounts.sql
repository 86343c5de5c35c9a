-- Customer balances, the deposits that funded them, and the payment decision
-- taken for every order. The outbox and inbox tables come from the platform
-- migrations.

-- One account per customer, in one currency. Money is integer minor units;
-- the CHECK is the last line of defence against a double debit.
CREATE TABLE accounts (
    customer_id   TEXT        PRIMARY KEY,
    currency_code TEXT        NOT NULL CHECK (currency_code ~ '^[A-Z]{3}$'),
    balance_minor BIGINT      NOT NULL DEFAULT 0 CHECK (balance_minor >= 0),
    create_time   TIMESTAMPTZ NOT NULL DEFAULT now(),
    update_time   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Applied deposits, keyed by the client's idempotency key: a deposit id seen
-- again is not applied again.
CREATE TABLE deposits (
    deposit_id   TEXT        PRIMARY KEY,
    customer_id  TEXT        NOT NULL REFERENCES accounts (customer_id),
    amount_minor BIGINT      NOT NULL CHECK (amount_minor > 0),
    create_time  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX deposits_customer_id ON deposits (customer_id);

-- The decision for each order, taken once: the primary key makes a second
-- event for the same order (under another message id) unable to pay again.
CREATE TABLE payments (
    order_id      TEXT        PRIMARY KEY,
    customer_id   TEXT        NOT NULL,
    -- Debited amount when SUCCEEDED; the amount the order asked for when FAILED.
    amount_minor  BIGINT      NOT NULL,
    currency_code TEXT        NOT NULL,
    status        TEXT        NOT NULL CHECK (status IN ('SUCCEEDED', 'FAILED')),
    reason        TEXT        CHECK ((status = 'FAILED') = (reason IS NOT NULL)),
    -- The message that decided, for tracing a payment back to its event.
    message_id    TEXT        NOT NULL,
    create_time   TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX payments_customer_id ON payments (customer_id);
