-- Cancelled orders and the account ledger.

-- A payments row may now also be:
--   CANCELLED  a tombstone: the order was cancelled before it was charged.
--              It holds the order id, so a later order.created conflicts on
--              the primary key and changes nothing. Nothing was asked for
--              yet, so amount_minor is 0 and currency_code is 'XXX' (ISO
--              4217 "no currency"); message_id is the cancel's.
--   REFUNDED   it was SUCCEEDED, then cancelled and the debit given back;
--              amount_minor and currency_code stay those of the debit.
-- The reason CHECK (payments_check) stays as it is: only FAILED has one.
ALTER TABLE payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments ADD CONSTRAINT payments_status_check
    CHECK (status IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'REFUNDED'));
ALTER TABLE payments ADD CONSTRAINT payments_tombstone_check
    CHECK (status <> 'CANCELLED' OR (amount_minor = 0 AND currency_code = 'XXX'));

-- Every movement of a balance, so a balance can be explained and
-- reconciled: the amounts of a customer sum to the balance, and each row
-- keeps the balance it left. Rows are written in the transaction that moves
-- the money, under the account's row lock, so per customer `seq` order is
-- the order the balance changed in.
CREATE TABLE transactions (
    seq                 BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id         TEXT        NOT NULL REFERENCES accounts (customer_id),
    kind                TEXT        NOT NULL CHECK (kind IN ('DEPOSIT', 'DEBIT', 'REFUND')),
    -- Signed change of the balance: money in is positive, a debit negative.
    amount_minor        BIGINT      NOT NULL,
    -- No CHECK >= 0: accounts.balance_minor guards the balance itself, and
    -- backfilled history (below) orders by transaction start time, which
    -- may differ from the order the account lock was taken in.
    balance_after_minor BIGINT      NOT NULL,
    -- The order of a debit or refund.
    order_id            TEXT,
    -- The deposit's idempotency key.
    deposit_id          TEXT        UNIQUE REFERENCES deposits (deposit_id),
    -- The clock when written (not the transaction's start), so it follows
    -- seq within a customer.
    create_time         TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT transactions_sign_check
        CHECK (CASE kind WHEN 'DEBIT' THEN amount_minor < 0 ELSE amount_minor > 0 END),
    CONSTRAINT transactions_reference_check
        CHECK (CASE kind
                   WHEN 'DEPOSIT' THEN deposit_id IS NOT NULL AND order_id IS NULL
                   ELSE order_id IS NOT NULL AND deposit_id IS NULL
               END)
);

-- ListTransactions: one customer, newest first, keyset on seq.
CREATE INDEX transactions_customer_id_seq ON transactions (customer_id, seq);

-- An order is debited at most once and refunded at most once, whatever the
-- code above it does.
CREATE UNIQUE INDEX transactions_order_id_kind ON transactions (order_id, kind)
    WHERE order_id IS NOT NULL;

-- Backfill from the history V1 kept: deposits and SUCCEEDED payments (no
-- other status existed), oldest first; at equal times deposits first. The
-- identity values follow the ORDER BY of the INSERT's SELECT.
INSERT INTO transactions
    (customer_id, kind, amount_minor, balance_after_minor, order_id, deposit_id, create_time)
SELECT customer_id, kind, amount_minor,
       sum(amount_minor) OVER (PARTITION BY customer_id
                               ORDER BY create_time, rank, ref
                               ROWS UNBOUNDED PRECEDING),
       order_id, deposit_id, create_time
FROM (
    SELECT customer_id, 'DEPOSIT' AS kind, amount_minor, NULL AS order_id,
           deposit_id, create_time, 0 AS rank, deposit_id AS ref
    FROM deposits
    UNION ALL
    SELECT customer_id, 'DEBIT', -amount_minor, order_id,
           NULL, create_time, 1, order_id
    FROM payments
    WHERE status = 'SUCCEEDED'
) AS history
ORDER BY create_time, rank, ref;

-- The backfill must explain every balance; if one was changed outside the
-- service, stop here (the migration rolls back) rather than keep a ledger
-- that does not add up.
DO $$
DECLARE
    off TEXT;
BEGIN
    SELECT string_agg(format('%s (balance %s, ledger %s)',
                             a.customer_id, a.balance_minor, coalesce(l.total, 0)), ', ')
    INTO off
    FROM accounts a
    LEFT JOIN (SELECT customer_id, sum(amount_minor) AS total
               FROM transactions GROUP BY customer_id) l USING (customer_id)
    WHERE a.balance_minor <> coalesce(l.total, 0);
    IF off IS NOT NULL THEN
        RAISE EXCEPTION 'balances do not match their deposits and payments: %', off;
    END IF;
END
$$;
