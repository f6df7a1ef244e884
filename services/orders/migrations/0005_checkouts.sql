-- Every checkout a customer started, keyed by its Idempotency-Key: the record that makes a repeated
-- POST /api/checkout return the first answer. The id is the coordinator's global transaction id. The
-- order row itself only exists once the checkout committed; until then (and when it aborted)
-- GET /api/orders/{order_id} shows the order from this record, as pending (or aborted).

CREATE TABLE checkouts (
    id              uuid        PRIMARY KEY,
    customer_id     uuid        NOT NULL REFERENCES customers (id),
    idempotency_key text        NOT NULL
        CONSTRAINT checkouts_key_format CHECK (idempotency_key ~ '^[!-~]{1,255}$'),
    -- SHA-256 of the canonical request, so the same key with another basket is refused.
    request_hash    bytea       NOT NULL
        CONSTRAINT checkouts_request_hash_sha256 CHECK (octet_length(request_hash) = 32),
    mode            text        NOT NULL
        CONSTRAINT checkouts_mode_known CHECK (mode IN ('2pc', 'saga')),
    -- The order this checkout creates when it commits.
    order_id        uuid        NOT NULL UNIQUE,
    -- started: recorded, not yet handed to the coordinator; pending: the coordinator has it and has
    -- not finished; committed / aborted: final.
    status          text        NOT NULL DEFAULT 'started'
        CONSTRAINT checkouts_status_known CHECK (status IN ('started', 'pending', 'committed', 'aborted')),
    -- The coordinator's own state name (committed, aborted, completed, compensated, ...).
    protocol_state  text,
    total_cents     bigint
        CONSTRAINT checkouts_total_not_negative CHECK (total_cents >= 0),
    -- The order's lines at the quoted prices, once quoted: [{book_id, quantity, price_cents}].
    lines           jsonb,
    -- The problem+json answered when the checkout was refused or failed.
    problem         jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT checkouts_key_unique UNIQUE (customer_id, idempotency_key),
    CONSTRAINT checkouts_problem_when_aborted CHECK ((status = 'aborted') = (problem IS NOT NULL))
);

CREATE TRIGGER checkouts_set_updated_at
    BEFORE UPDATE ON checkouts
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
