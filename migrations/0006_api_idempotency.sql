-- Responses to creations made with an `Idempotency-Key` header (SPEC §6.1), so that a
-- retried request gets the first one's result instead of creating a second resource.
CREATE TABLE api_idempotency (
    -- The tenant the request acted in, or 'operator' for operator-level creations.
    scope         text NOT NULL,
    key           text NOT NULL,
    -- SHA-256 of the request's path and body: the same key with another request is refused.
    request_hash  bytea NOT NULL,
    -- NULL while the first request is still being processed.
    status        smallint,
    content_type  text,
    location      text,
    body          bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX api_idempotency_expiry ON api_idempotency (expires_at);
