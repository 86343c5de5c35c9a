-- The transactional outbox: services insert rows here in the same transaction
-- as their state change; the relay publishes them to RabbitMQ and deletes
-- them after the broker confirmed. `id` gives the publish order.
CREATE TABLE outbox (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id     UUID        NOT NULL UNIQUE,
    aggregate_id TEXT        NOT NULL,
    routing_key  TEXT        NOT NULL,
    event_type   TEXT        NOT NULL,
    payload      BYTEA       NOT NULL,
    headers      JSONB       NOT NULL DEFAULT '{}'::jsonb,
    create_time  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);

-- Wake the relay on commit. Statement level and a constant payload, so
-- PostgreSQL folds the notifications of one transaction into one.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ordermesh_outbox', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_notify
    AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- The consumer inbox: one row per (consumer, message id) already applied,
-- written in the same transaction as the effect, so a redelivery is a no-op.
CREATE TABLE inbox (
    consumer      TEXT        NOT NULL,
    message_id    TEXT        NOT NULL,
    received_time TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
