-- Customers who log in with a password (AuthService). Registering opens no
-- account; CreateAccount does. Only an argon2id hash of the password is
-- kept, as a PHC string (algorithm, parameters and salt included), so the
-- parameters can be raised later without a migration.
CREATE TABLE credentials (
    customer_id   TEXT        PRIMARY KEY,
    password_hash TEXT        NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
    -- The role of the tokens issued at login.
    role          TEXT        NOT NULL DEFAULT 'customer' CHECK (role IN ('customer', 'admin')),
    create_time   TIMESTAMPTZ NOT NULL DEFAULT now()
);
