//! Hostile input shared by every service's tests.

/// Text that would do harm if it were ever spliced into SQL (or a LIKE
/// pattern) rather than bound as a parameter. Each is a valid customer id,
/// deposit id, SKU and cancel reason (not a valid order id: see the id rule).
pub const SQL_LOOKING: &[&str] = &[
    "'; DROP TABLE orders; --",
    "'; DROP TABLE accounts; --",
    "\\' OR 1=1",
    "' OR '1'='1' --",
    "$1",
    "%",
    "_",
    "\\",
    "\"; SELECT pg_sleep(10); --",
    "Robert'); DROP TABLE outbox;--",
    "Robert'); DROP TABLE ledger;--",
];
