-- CancelOrder withdraws a PENDING order's unpublished `order.created` outbox
-- row by its event id (the outbox's unique index), instead of scanning the
-- outbox by aggregate id. NULL for orders created before this column
-- existed: their withdraw falls back to the scan.
--
-- No index for the oldest-PENDING gauge: it reads the first PENDING order by
-- `seq` through orders_status_seq (V1), and `seq` follows creation closely
-- enough for an age in seconds.
ALTER TABLE orders ADD COLUMN created_event_id UUID;
