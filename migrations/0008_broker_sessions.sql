-- Persistent MQTT sessions (SPEC §3.1), written by brokers in batches so that a client
-- resumes its session after a broker restart. Keyed like retained messages: the tenant's
-- registry namespace has broker_id '', a virtual broker's namespace its id.
CREATE TABLE broker_sessions (
    tenant_id       text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    broker_id       text NOT NULL DEFAULT '',
    client_id       text NOT NULL,
    -- The Session Expiry Interval in force, seconds.
    expiry_secs     bigint NOT NULL CHECK (expiry_secs >= 0),
    -- When the session ends if its client does not come back; NULL while it is connected
    -- (a session connected when its broker stopped is kept expiry_secs from the restart).
    expires_at      timestamptz,
    -- For registry clients: the registry whose $devices/… messages the session receives.
    registry_scope  text,
    -- [{filter, qos, no_local, retain_as_published, subscription_id}], as the client wrote
    -- the filters.
    subscriptions   jsonb NOT NULL DEFAULT '[]'::jsonb,
    -- Packet ids of incoming QoS 2 messages between PUBREC and PUBREL.
    incoming_qos2   integer[] NOT NULL DEFAULT '{}',
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, broker_id, client_id)
);

-- QoS 1/2 messages of a session: queued (packet_id NULL) or in flight (sent, not yet
-- acknowledged). seq orders them as they were queued.
CREATE TABLE broker_session_messages (
    tenant_id         text NOT NULL,
    broker_id         text NOT NULL,
    client_id         text NOT NULL,
    seq               bigint NOT NULL,
    packet_id         integer CHECK (packet_id BETWEEN 1 AND 65535),
    -- 0: PUBACK, 1: PUBREC, 2: PUBCOMP (PUBREL sent); NULL while queued.
    awaiting          smallint CHECK (awaiting BETWEEN 0 AND 2),
    topic             text NOT NULL,
    payload           bytea NOT NULL,
    -- The QoS it is delivered with, and the RETAIN flag as sent.
    qos               smallint NOT NULL CHECK (qos BETWEEN 1 AND 2),
    retain            boolean NOT NULL,
    subscription_ids  bigint[] NOT NULL DEFAULT '{}',
    properties        jsonb NOT NULL DEFAULT '{}'::jsonb,
    expires_at        timestamptz,
    PRIMARY KEY (tenant_id, broker_id, client_id, seq),
    FOREIGN KEY (tenant_id, broker_id, client_id)
        REFERENCES broker_sessions (tenant_id, broker_id, client_id) ON DELETE CASCADE
);
