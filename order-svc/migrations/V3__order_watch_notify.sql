-- WatchOrder: a NOTIFY on channel `ordermesh_order_changes` (payload: the
-- order id) whenever an order's version changes, but only while someone
-- watches it. A transaction that NOTIFYs holds PostgreSQL's cluster-wide
-- notify lock through its commit flush, so notifying writers commit one
-- fsync at a time (see the platform's V2 outbox migration; about 400 tx/s
-- here): every payment result must not pay that for orders nobody watches.
--
-- The gate: orders fall into 1024 buckets, hashtext(order_id) & 1023. Each
-- order-svc process (watch.rs) holds, on its one LISTEN connection, the
-- SHARED session advisory lock (1869414410, bucket) of every bucket with
-- at least one watcher, and releases it with the bucket's last watcher.
-- A writer tries the same lock EXCLUSIVELY for its transaction: getting it
-- means nobody watches the bucket and the NOTIFY is skipped; failing means
-- a watcher's process holds it (or, rarely, a concurrent writer of the same
-- bucket does: a spurious NOTIFY is harmless).
--
-- Why no change is missed: a new watcher first registers with its process's
-- hub, which LISTENs and then takes the shared lock, and only once the lock
-- is held does the watcher read the order and send it. Taking the shared
-- lock waits for every writer that already took the exclusive lock (and so
-- skipped the NOTIFY) to commit, so the watcher's read sees those changes;
-- a writer after that fails to take the lock and NOTIFYs, which the hub,
-- already listening, receives after the commit. When the hub's connection
-- is lost its locks go with it; it reconnects, LISTENs, re-takes the locks
-- and then wakes every watcher to re-read.
CREATE FUNCTION orders_watch_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock(1869414410, hashtext(NEW.order_id) & 1023) THEN
        PERFORM pg_notify('ordermesh_order_changes', NEW.order_id);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER orders_watch_notify
    AFTER UPDATE ON orders
    FOR EACH ROW
    WHEN (OLD.version IS DISTINCT FROM NEW.version)
    EXECUTE FUNCTION orders_watch_notify();
