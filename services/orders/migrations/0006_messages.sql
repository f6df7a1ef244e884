-- The message record: one customer notification per order and credit change. Each is written in
-- the same transaction as the change it reports (see docs/CLUSTER.md, "Consistency"), so it cannot
-- be lost or outlive a rolled-back change; the unique (source_id, kind) makes a repeated write of
-- the same event (a retried checkout outcome) a no-op instead of a second message.

CREATE TABLE messages (
    id           uuid        PRIMARY KEY,
    customer_id  uuid        NOT NULL REFERENCES customers (id),
    kind         text        NOT NULL
        CONSTRAINT messages_kind_known CHECK (kind IN (
            'order_placed', 'order_committed', 'order_aborted',
            'credit_topped_up', 'credit_debited', 'credit_refunded')),
    -- What the event is about: the order for order and checkout events, the top-up itself otherwise.
    source_id    uuid        NOT NULL,
    order_id     uuid,
    amount_cents bigint,
    text         text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT messages_once UNIQUE (source_id, kind)
);

-- A customer's messages, newest first, keyset-paginated on (created_at, id).
CREATE INDEX messages_customer_created_idx ON messages (customer_id, created_at DESC, id DESC);
