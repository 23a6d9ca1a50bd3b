-- Retained messages (SPEC §3.1), written by brokers in batches so that they survive a
-- restart. One row per topic of a namespace: the tenant's registry namespace has
-- broker_id '', a virtual broker's namespace its id.
CREATE TABLE retained_messages (
    tenant_id        text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    broker_id        text NOT NULL DEFAULT '',
    topic            text NOT NULL,
    payload          bytea NOT NULL,
    qos              smallint NOT NULL CHECK (qos BETWEEN 0 AND 2),
    -- payload_format_indicator, content_type, response_topic, correlation_data (bytes as
    -- an array), user_properties.
    properties       jsonb NOT NULL DEFAULT '{}'::jsonb,
    origin_registry  text,
    expires_at       timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, broker_id, topic)
);
