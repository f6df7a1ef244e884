CREATE TABLE tx_barrier (
    gid        text        NOT NULL,
    op         text        NOT NULL CHECK (op IN ('prepare', 'action', 'compensate')),
    -- 'applied': the op's work ran in the same transaction; 'blocked': written by an abort or a
    -- compensation that came first, so the late prepare/action is refused.
    kind       text        NOT NULL CHECK (kind IN ('applied', 'blocked')),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gid, op)
);
