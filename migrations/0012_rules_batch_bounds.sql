-- Batching per rule (SPEC §5): the columns exist since the resource model; these bounds
-- keep one webhook request's size and a partial batch's wait (while its messages are
-- leased) within what the API accepts, whoever writes the row.
ALTER TABLE rules
    ADD CONSTRAINT rules_batch_max_messages_bound CHECK (batch_max_messages <= 100),
    ADD CONSTRAINT rules_batch_max_wait_ms_bound CHECK (batch_max_wait_ms <= 10000);
