-- Messages published through the control plane (SPEC §6.2 "Publish from the API"). The api
-- inserts a row and notifies channel `iotcore_publishes` in one transaction; a broker claims
-- rows (DELETE … RETURNING, FOR UPDATE SKIP LOCKED), routes them and so removes them. This
-- works whether the api and the broker share a process or not.
CREATE TABLE api_publishes (
    -- Monotonic, so brokers claim messages in the order they were accepted.
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id     text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    topic         text NOT NULL,
    payload       bytea NOT NULL,
    qos           smallint NOT NULL CHECK (qos BETWEEN 0 AND 2),
    retain        boolean NOT NULL DEFAULT false,
    content_type  text,
    created_at    timestamptz NOT NULL DEFAULT now()
);
