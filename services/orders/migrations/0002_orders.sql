-- Orders and their lines. Checkout (2PC or saga) writes them; this service reads them.
-- Money is integer cents; a line's `price_cents` is the unit price at the time of the order.

CREATE TABLE orders (
    id          uuid        PRIMARY KEY,
    customer_id uuid        NOT NULL REFERENCES customers (id),
    mode        text        NOT NULL
        CONSTRAINT orders_mode_known CHECK (mode IN ('2pc', 'saga')),
    status      text        NOT NULL
        CONSTRAINT orders_status_known
            CHECK (status IN ('pending', 'committed', 'aborted', 'compensated')),
    total_cents bigint      NOT NULL
        CONSTRAINT orders_total_not_negative CHECK (total_cents >= 0),
    -- Why an order was aborted or compensated; NULL otherwise.
    reason      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- A customer's orders, newest first, keyset-paginated on (created_at, id).
CREATE INDEX orders_customer_created_idx ON orders (customer_id, created_at DESC, id DESC);

CREATE INDEX orders_updated_at_idx ON orders (updated_at);

CREATE TRIGGER orders_set_updated_at
    BEFORE UPDATE ON orders
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE order_lines (
    order_id    uuid   NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    -- Position of the line in the order as the customer gave it, from 1.
    line_no     int    NOT NULL CONSTRAINT order_lines_line_no_positive CHECK (line_no > 0),
    book_id     uuid   NOT NULL,
    quantity    int    NOT NULL CONSTRAINT order_lines_quantity_positive CHECK (quantity > 0),
    price_cents bigint NOT NULL CONSTRAINT order_lines_price_not_negative CHECK (price_cents >= 0),
    PRIMARY KEY (order_id, line_no)
);

-- The invariant "credit debited = order totals" needs totals that match their lines. Lines are written
-- after their order, so the check runs at commit (deferred) once per touched order.
CREATE FUNCTION check_order_total() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    checked_id uuid;
    expected   bigint;
    actual     bigint;
BEGIN
    IF TG_TABLE_NAME = 'orders' THEN
        checked_id := NEW.id;
    ELSIF TG_OP = 'DELETE' THEN
        checked_id := OLD.order_id;
    ELSE
        checked_id := NEW.order_id;
    END IF;
    SELECT total_cents INTO expected FROM orders WHERE id = checked_id;
    IF NOT FOUND THEN
        RETURN NULL; -- the order is gone (deleted later in the same transaction)
    END IF;
    SELECT coalesce(sum(quantity::bigint * price_cents), 0) INTO actual
        FROM order_lines WHERE order_id = checked_id;
    IF actual <> expected THEN
        RAISE EXCEPTION 'order % has total_cents % but its lines add up to %',
            checked_id, expected, actual
            USING ERRCODE = 'check_violation', CONSTRAINT = 'orders_total_matches_lines';
    END IF;
    RETURN NULL;
END;
$$;

CREATE CONSTRAINT TRIGGER orders_total_matches_lines
    AFTER INSERT OR UPDATE OF total_cents ON orders
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION check_order_total();

CREATE CONSTRAINT TRIGGER order_lines_total_matches_order
    AFTER INSERT OR UPDATE OR DELETE ON order_lines
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION check_order_total();
