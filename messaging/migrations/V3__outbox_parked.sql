-- Rows the relay can never publish leave the outbox so they block nobody.
--
-- 1. `attempts` counts the times the broker refused a row (unroutable or
--    nacked); `retry_time` is when the relay may try it again (NULL: now).
--    The delay doubles with each attempt; the row is parked once the count
--    reaches RELAY_MAX_ATTEMPTS. Until its retry time, the row and the later
--    rows of its aggregate are not claimed; other rows are. Constant
--    defaults add the columns without rewriting the table, and the partial
--    index stays empty unless a row waits for a retry, so writers pay
--    nothing for it.
ALTER TABLE outbox
    ADD COLUMN attempts   INTEGER     NOT NULL DEFAULT 0,
    ADD COLUMN retry_time TIMESTAMPTZ;
CREATE INDEX outbox_retrying ON outbox (aggregate_id, id) WHERE retry_time IS NOT NULL;

-- 2. The parked rows: the outbox row as it was (same id, so a replay puts it
--    back in its place in the partition's order), why it was parked and
--    when. The relay moves a row here in the transaction that claimed it.
--    Later rows of the same aggregate are parked with it (reason
--    'behind parked row <id>') so per-aggregate order holds; `relay outbox
--    replay` moves an aggregate's rows back together, in id order.
CREATE TABLE outbox_parked (
    id           BIGINT      PRIMARY KEY,
    event_id     UUID        NOT NULL UNIQUE,
    aggregate_id TEXT        NOT NULL,
    routing_key  TEXT        NOT NULL,
    event_type   TEXT        NOT NULL,
    payload      BYTEA       NOT NULL,
    headers      JSONB       NOT NULL,
    create_time  TIMESTAMPTZ NOT NULL,
    attempts     INTEGER     NOT NULL,
    reason       TEXT        NOT NULL,
    park_time    TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);

-- The claim asks, per row, whether its aggregate has a parked row: an index
-- probe on a table that is nearly always empty.
CREATE INDEX outbox_parked_aggregate ON outbox_parked (aggregate_id);
