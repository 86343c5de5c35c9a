-- Relay replicas and cheap wake-ups.
--
-- 1. Every outbox row belongs to one of 64 partitions, a hash of its
--    aggregate id (an order id), so all events of one order share a
--    partition. A relay publishes a partition only while it holds that
--    partition's lease (a session advisory lock), in id order: per-aggregate
--    order holds with any number of relays. 64 is fixed here; the relay
--    reads it from `platform::outbox::PARTITIONS`.
ALTER TABLE outbox
    ADD COLUMN partition SMALLINT NOT NULL
    GENERATED ALWAYS AS ((hashtext(aggregate_id) & 63)::smallint) STORED;

-- 2. NOTIFY only when the partition's relay is asleep. A transaction that
--    NOTIFYs holds PostgreSQL's cluster-wide notify lock through its commit
--    flush, so notifying writers commit one fsync at a time (about 400 tx/s
--    here) instead of sharing group commits. While a relay polls a partition
--    it holds the "warm" lock (class 1869414402, partition) and writers skip
--    the NOTIFY. Every writer also holds the "gate" lock (class 1869414403)
--    shared until it commits; a relay that stops polling releases its warm
--    locks, then takes the gate exclusively once (waiting only for writers
--    already in flight, which may have skipped the NOTIFY) and claims once
--    more, so no row waits for the fallback tick. A writer that finds the
--    gate being taken simply notifies.
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_try_advisory_xact_lock_shared(1869414403, 0) THEN
        IF NOT pg_try_advisory_lock_shared(1869414402, NEW.partition) THEN
            RETURN NULL; -- the partition's relay is polling: it will see this row
        END IF;
        PERFORM pg_advisory_unlock_shared(1869414402, NEW.partition);
    END IF;
    PERFORM pg_notify('ordermesh_outbox', NEW.partition::text);
    RETURN NULL;
END;
$$;

DROP TRIGGER outbox_notify ON outbox;
CREATE TRIGGER outbox_notify
    AFTER INSERT ON outbox
    FOR EACH ROW EXECUTE FUNCTION outbox_notify();

-- 3. Housekeeping: inbox rows expire after a retention window
--    (platform::inbox::expire deletes them oldest first through this index).
CREATE INDEX inbox_received_time ON inbox (received_time);
