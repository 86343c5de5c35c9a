-- Password guessing, throttled per customer id (AuthService Login; the
-- per-caller token buckets are in memory, per replica). One row per id that
-- has failed logins, known or not: a lock says nothing about whether the id
-- is registered. Shared by every replica; the login's transaction locks the
-- row, so concurrent guesses are counted one by one.
CREATE TABLE login_throttle (
    customer_id       TEXT        PRIMARY KEY,
    -- Attempts since the last successful login. An attempt counts before
    -- its password is checked, and a success deletes the row.
    failures          INTEGER     NOT NULL CHECK (failures > 0),
    last_failure_time TIMESTAMPTZ NOT NULL,
    -- Attempts before then are refused unchecked (and not counted).
    locked_until      TIMESTAMPTZ,
    -- From then on the row is forgotten (the failures are old and any lock
    -- is over); failing logins delete a few such rows each.
    forget_time       TIMESTAMPTZ NOT NULL
);

CREATE INDEX login_throttle_forget_time ON login_throttle (forget_time);
