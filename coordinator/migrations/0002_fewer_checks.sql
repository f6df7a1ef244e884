-- PostgreSQL checks every CHECK constraint of a table on every row an UPDATE writes, whichever
-- columns changed, and reads each constraint's stored expression back (stringToNode) once per
-- statement. Every transition of a transaction rewrites its row and its branches' rows, so the
-- checks below ran two or three times per transaction on values that never change after the insert
-- — three of them regular expressions, per branch row. Measured (docs/BENCHMARKS.md, "Where
-- PostgreSQL's time goes"): they were ≈ 20 % of the coordinator database's CPU per checkout.
--
-- Each one only repeated, on values fixed at the insert, a check the submission's parser
-- (`model::Submission::parse`, 422 before anything is written) or a Rust enum already makes:
-- service and branch names, the gid (built from them and the configured prefix), positions, the
-- branches' JSON array, the timeout, mode/state/reason names, attempts. Kept: the checks that tie
-- columns a transition changes to each other (a state of the mode, a final row has no lease and a
-- finish time, a rolled-back row has a reason) — the invariants a wrong transition could break.

ALTER TABLE global_transactions
    DROP CONSTRAINT global_transactions_mode_known,
    DROP CONSTRAINT global_transactions_branches_array,
    DROP CONSTRAINT global_transactions_timeout_positive,
    DROP CONSTRAINT global_transactions_refusal_object,
    DROP CONSTRAINT global_transactions_reason_known,
    DROP CONSTRAINT global_transactions_attempts_positive;

ALTER TABLE branches
    DROP CONSTRAINT branches_position_range,
    DROP CONSTRAINT branches_service_format,
    DROP CONSTRAINT branches_branch_format,
    DROP CONSTRAINT branches_gid_format,
    DROP CONSTRAINT branches_state_known;
