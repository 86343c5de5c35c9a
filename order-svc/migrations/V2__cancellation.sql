-- CancelOrder: the caller's reason, and the refund the processor reports
-- after a charged order was cancelled (0 until then, and for orders that
-- were never charged). Recorded once: the refund is applied only while
-- `refunded_minor = 0`.
ALTER TABLE orders
    ADD COLUMN cancel_reason  TEXT,
    ADD COLUMN refunded_minor BIGINT NOT NULL DEFAULT 0 CHECK (refunded_minor >= 0);
