-- Answers already given to requests that carried an `Idempotency-Key`, so a retry (for instance by the
-- gateway across a failover) is answered the same way and never applies its effect twice.
--
-- A row is inserted at the start of the request's transaction and completed in that same transaction,
-- so other transactions only ever see completed rows: a concurrent request with the same key waits on
-- the row lock of the first and then reads its answer.

CREATE TABLE idempotency_keys (
    -- What the key applies to, e.g. 'credit:<customer id>'; a key is unique within its scope.
    scope        text        NOT NULL,
    key          text        NOT NULL
        CONSTRAINT idempotency_keys_key_format CHECK (key ~ '^[!-~]{1,255}$'),
    -- SHA-256 of the canonical request, so the same key with a different body can be refused.
    request_hash bytea       NOT NULL
        CONSTRAINT idempotency_keys_request_hash_sha256 CHECK (octet_length(request_hash) = 32),
    -- The answer given; NULL only while the first request's transaction is still open.
    status       smallint
        CONSTRAINT idempotency_keys_status_http CHECK (status BETWEEN 100 AND 599),
    response     jsonb,
    -- The Location header of the answer, when it had one (201/202 answers).
    location     text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key),
    CONSTRAINT idempotency_keys_complete CHECK ((status IS NULL) = (response IS NULL))
);

-- For expiring old keys.
CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);
