-- Customers: who may sign in and how much credit they hold.
--
-- Every CHECK mirrors a parser in src/domain, so the database cannot hold what the API would reject,
-- even when a row is written by hand or by a future code path that forgot to validate.

-- Keeps `updated_at` honest on every UPDATE: the warehouse ETL extracts incrementally by it.
CREATE FUNCTION set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE TABLE customers (
    id            uuid        PRIMARY KEY,
    -- Stored trimmed and lower-cased (see domain/email.rs); unique case-insensitively below.
    email         text        NOT NULL
        CONSTRAINT customers_email_format CHECK (
            email = lower(email)
            AND char_length(email) BETWEEN 3 AND 254
            AND email ~ '^[^@[:space:]]{1,64}@[a-z0-9-]+(\.[a-z0-9-]+)+$'
        ),
    name          text        NOT NULL
        CONSTRAINT customers_name_length CHECK (
            char_length(name) BETWEEN 1 AND 200 AND name = btrim(name)
        ),
    -- An argon2id PHC string; never the password itself.
    password_hash text        NOT NULL
        CONSTRAINT customers_password_hash_argon2id CHECK (password_hash LIKE '$argon2id$%'),
    -- Integer cents; a debit that would go below zero fails here even if the code forgot to check.
    credit_cents  bigint      NOT NULL DEFAULT 0
        CONSTRAINT customers_credit_not_negative CHECK (credit_cents >= 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- One account per address whatever its case; the API maps a violation to 409.
CREATE UNIQUE INDEX customers_email_key ON customers (lower(email));

CREATE INDEX customers_updated_at_idx ON customers (updated_at);

CREATE TRIGGER customers_set_updated_at
    BEFORE UPDATE ON customers
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
