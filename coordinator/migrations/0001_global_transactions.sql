-- The coordinator's log: every global transaction (two-phase commit or saga) and what is known about
-- each of its branches. A row is written, and committed, before the first prepare or action is sent,
-- so a participant can never hold a prepared gid the coordinator has not heard of (see the orphan
-- scan). See docs/TRANSACTIONS.md.

CREATE TABLE global_transactions (
    gxid        uuid        PRIMARY KEY,
    mode        text        NOT NULL
        CONSTRAINT global_transactions_mode_known CHECK (mode IN ('2pc', 'saga')),
    state       text        NOT NULL
        CONSTRAINT global_transactions_state_of_mode CHECK (
            (mode = '2pc' AND state IN ('preparing', 'committing', 'committed', 'aborting', 'aborted'))
            OR (mode = 'saga' AND state IN ('running', 'completed', 'compensating', 'compensated'))
        ),
    -- The branches as submitted, in order: [{"service", "branch", "payload"}]. The payloads live only
    -- here; `branches` below tracks each one's state.
    branches    jsonb       NOT NULL
        CONSTRAINT global_transactions_branches_array CHECK (
            jsonb_typeof(branches) = 'array' AND jsonb_array_length(branches) BETWEEN 1 AND 16
        ),
    timeout_ms  bigint      NOT NULL
        CONSTRAINT global_transactions_timeout_positive CHECK (timeout_ms > 0),
    -- Prepares (2PC) or actions (saga) not done by then are rolled back.
    deadline    timestamptz NOT NULL,
    -- The refusal ({"kind", "detail", ...}) that rolled the transaction back, if one did.
    refusal     jsonb
        CONSTRAINT global_transactions_refusal_object CHECK (
            refusal IS NULL OR jsonb_typeof(refusal) = 'object'
        ),
    reason      text
        CONSTRAINT global_transactions_reason_known CHECK (
            reason IN ('refused', 'blocked', 'invalid', 'timeout', 'presumed-abort')
        ),
    -- The coordinator instance driving it and until when; NULL once final. Every write a driver
    -- makes is fenced on (lease_owner, attempts), so a driver whose lease was taken over cannot
    -- write any more.
    lease_owner text,
    lease_until timestamptz,
    -- How many times a coordinator took it: 1 at creation, +1 on every recovery claim. The lease's
    -- fencing epoch.
    attempts    integer     NOT NULL DEFAULT 1
        CONSTRAINT global_transactions_attempts_positive CHECK (attempts > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- When the outcome was decided (committing / aborting / compensating / completed).
    decided_at  timestamptz,
    finished_at timestamptz,
    CONSTRAINT global_transactions_final_has_no_lease CHECK (
        state NOT IN ('committed', 'aborted', 'completed', 'compensated') OR lease_until IS NULL
    ),
    CONSTRAINT global_transactions_finished_when_final CHECK (
        (state IN ('committed', 'aborted', 'completed', 'compensated')) = (finished_at IS NOT NULL)
    ),
    CONSTRAINT global_transactions_rolled_back_has_reason CHECK (
        (state IN ('aborting', 'aborted', 'compensating', 'compensated')) = (reason IS NOT NULL)
    )
);

-- The recovery loop's query (unfinished, lease expired, oldest lease first) and the in-doubt gauge
-- read only unfinished rows; final rows, the vast majority, stay out of this index.
CREATE INDEX global_transactions_unfinished_idx ON global_transactions (lease_until, state)
    WHERE state IN ('preparing', 'committing', 'aborting', 'running', 'compensating');

CREATE INDEX global_transactions_created_at_idx ON global_transactions (created_at);

CREATE TABLE branches (
    gxid       uuid        NOT NULL REFERENCES global_transactions (gxid) ON DELETE CASCADE,
    -- The branch's place in the submission, from 0: prepares and actions go in this order,
    -- compensations in reverse.
    position   integer     NOT NULL
        CONSTRAINT branches_position_range CHECK (position BETWEEN 0 AND 15),
    service    text        NOT NULL
        CONSTRAINT branches_service_format CHECK (service ~ '^[a-z][a-z0-9_-]{0,63}$'),
    branch     text        NOT NULL
        CONSTRAINT branches_branch_format CHECK (branch ~ '^[a-z0-9_]{1,32}$'),
    gid        text        NOT NULL
        CONSTRAINT branches_gid_format CHECK (gid ~ '^[a-z0-9]{1,16}:[0-9a-f-]{36}:[a-z0-9_]{1,32}$'),
    state      text        NOT NULL DEFAULT 'pending'
        CONSTRAINT branches_state_known CHECK (
            state IN ('pending', 'prepared', 'committed', 'aborted', 'done', 'compensated', 'refused')
        ),
    refusal    jsonb,
    -- The last unexpected answer (protocol violation, misconfiguration), for operators.
    last_error text,
    -- Calls sent for this branch, retries included.
    calls      integer     NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gxid, position),
    CONSTRAINT branches_branch_unique UNIQUE (gxid, branch),
    CONSTRAINT branches_gid_unique UNIQUE (gid)
);
