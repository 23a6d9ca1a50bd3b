-- The resource model of iotcore (SPEC §2). PostgreSQL is the system of record.
--
-- Conventions:
-- * IDs are text, server-generated, typed by a prefix (`tnt_`, `reg_`, `dev_`, ...).
-- * Every table that belongs to a tenant carries `tenant_id`; composite foreign keys
--   `(tenant_id, x_id)` make it impossible to attach a row of one tenant to a parent of
--   another, whatever the application code does.
-- * Timestamps are `timestamptz`.

CREATE TABLE tenants (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    -- Per-tenant quota overrides (SPEC §7.3); absent keys fall back to configuration.
    quotas      jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- Bumped whenever a rule of the tenant changes, so brokers can tell that their
    -- cached rule index is stale without a round trip per message.
    rules_version bigint NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE registries (
    id              text PRIMARY KEY,
    tenant_id       text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name            text NOT NULL,
    description     text NOT NULL DEFAULT '',
    labels          jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- Whether the built-in device and registry-client rights of SPEC §4.2 apply.
    default_policy  boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name),
    UNIQUE (tenant_id, id)
);

CREATE TABLE devices (
    id           text PRIMARY KEY,
    tenant_id    text NOT NULL,
    registry_id  text NOT NULL,
    name         text NOT NULL,
    description  text NOT NULL DEFAULT '',
    labels       jsonb NOT NULL DEFAULT '{}'::jsonb,
    status       text NOT NULL DEFAULT 'enabled' CHECK (status IN ('enabled', 'disabled')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, registry_id) REFERENCES registries (tenant_id, id) ON DELETE CASCADE,
    UNIQUE (registry_id, name),
    UNIQUE (tenant_id, id)
);
CREATE INDEX devices_tenant_registry ON devices (tenant_id, registry_id, id);

-- Connection status of a device (SPEC §6.3), written by brokers in batches.
CREATE TABLE device_connections (
    device_id          text PRIMARY KEY,
    tenant_id          text NOT NULL,
    online             boolean NOT NULL DEFAULT false,
    connected_at       timestamptz,
    disconnected_at    timestamptz,
    last_activity_at   timestamptz,
    protocol_version   text,
    client_address     text,
    disconnect_reason  text,
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices (tenant_id, id) ON DELETE CASCADE
);

-- Virtual brokers (SPEC §3.6): isolated free-form namespaces inside a tenant.
CREATE TABLE brokers (
    id           text PRIMARY KEY,
    tenant_id    text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name         text NOT NULL,
    description  text NOT NULL DEFAULT '',
    labels       jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name),
    UNIQUE (tenant_id, id)
);

-- X.509 client certificates registered on exactly one device, registry or virtual broker.
CREATE TABLE certificates (
    -- Lowercase hex SHA-256 of the DER; unique across the whole service.
    fingerprint  text PRIMARY KEY,
    tenant_id    text NOT NULL,
    device_id    text,
    registry_id  text,
    broker_id    text,
    pem          text NOT NULL,
    subject      text NOT NULL,
    issuer       text NOT NULL,
    not_before   timestamptz NOT NULL,
    not_after    timestamptz NOT NULL,
    status       text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (num_nonnulls(device_id, registry_id, broker_id) = 1),
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, registry_id) REFERENCES registries (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, broker_id) REFERENCES brokers (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX certificates_device ON certificates (device_id) WHERE device_id IS NOT NULL;
CREATE INDEX certificates_registry ON certificates (registry_id) WHERE registry_id IS NOT NULL;
CREATE INDEX certificates_broker ON certificates (broker_id) WHERE broker_id IS NOT NULL;

-- Passwords: only argon2id hashes (PHC strings) are stored, never the secret.
CREATE TABLE passwords (
    id           text PRIMARY KEY,
    tenant_id    text NOT NULL,
    device_id    text,
    registry_id  text,
    broker_id    text,
    hash         text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    CHECK (num_nonnulls(device_id, registry_id, broker_id) = 1),
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, registry_id) REFERENCES registries (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, broker_id) REFERENCES brokers (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX passwords_device ON passwords (device_id) WHERE device_id IS NOT NULL;
CREATE INDEX passwords_registry ON passwords (registry_id) WHERE registry_id IS NOT NULL;
CREATE INDEX passwords_broker ON passwords (broker_id) WHERE broker_id IS NOT NULL;

-- CA certificates registered on a registry (chain verification, just-in-time registration).
CREATE TABLE ca_certificates (
    id             text PRIMARY KEY,
    tenant_id      text NOT NULL,
    registry_id    text NOT NULL,
    fingerprint    text NOT NULL UNIQUE,
    pem            text NOT NULL,
    subject        text NOT NULL,
    not_before     timestamptz NOT NULL,
    not_after      timestamptz NOT NULL,
    auto_register  boolean NOT NULL DEFAULT false,
    status         text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, registry_id) REFERENCES registries (tenant_id, id) ON DELETE CASCADE,
    UNIQUE (tenant_id, id)
);

CREATE TABLE policies (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name        text NOT NULL,
    -- [{ "effect": "allow"|"deny", "actions": ["publish"|"subscribe"], "topics": [filter] }]
    statements  jsonb NOT NULL DEFAULT '[]'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name),
    UNIQUE (tenant_id, id)
);

-- A policy attached to the tenant itself, a registry, a device or a virtual broker.
CREATE TABLE policy_attachments (
    tenant_id    text NOT NULL,
    policy_id    text NOT NULL,
    target_kind  text NOT NULL CHECK (target_kind IN ('tenant', 'registry', 'device', 'broker')),
    target_id    text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (policy_id, target_kind, target_id),
    FOREIGN KEY (tenant_id, policy_id) REFERENCES policies (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX policy_attachments_target ON policy_attachments (tenant_id, target_kind, target_id);

CREATE TABLE rules (
    id                   text PRIMARY KEY,
    tenant_id            text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name                 text NOT NULL,
    topic_filter         text NOT NULL,
    registry_id          text,
    condition            text,
    webhook_url          text NOT NULL,
    webhook_headers      jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- Write-only: never returned by the API, never logged.
    webhook_secret       text,
    timeout_ms           integer NOT NULL DEFAULT 5000 CHECK (timeout_ms > 0),
    max_in_flight        integer NOT NULL DEFAULT 64 CHECK (max_in_flight > 0),
    batch_max_messages   integer NOT NULL DEFAULT 1 CHECK (batch_max_messages > 0),
    batch_max_wait_ms    integer NOT NULL DEFAULT 0 CHECK (batch_max_wait_ms >= 0),
    enabled              boolean NOT NULL DEFAULT true,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name),
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, registry_id) REFERENCES registries (tenant_id, id) ON DELETE CASCADE
);

-- Per-rule delivery statistics and the last error (SPEC §5), updated by rules workers.
CREATE TABLE rule_stats (
    rule_id         text PRIMARY KEY,
    tenant_id       text NOT NULL,
    delivered       bigint NOT NULL DEFAULT 0,
    retried         bigint NOT NULL DEFAULT 0,
    dead_lettered   bigint NOT NULL DEFAULT 0,
    last_error      text,
    last_error_at   timestamptz,
    last_success_at timestamptz,
    FOREIGN KEY (tenant_id, rule_id) REFERENCES rules (tenant_id, id) ON DELETE CASCADE
);

-- The durable delivery queue: one row per (message, rule) match, written by brokers
-- before they acknowledge a QoS 1/2 publish, claimed by rules workers with leases.
CREATE TABLE deliveries (
    -- The envelope id: the same on every retry (Idempotency-Key / X-Iotcore-Message-Id).
    id               text PRIMARY KEY,
    tenant_id        text NOT NULL,
    rule_id          text NOT NULL,
    registry_id      text,
    device_id        text,
    topic            text NOT NULL,
    qos              smallint NOT NULL CHECK (qos BETWEEN 0 AND 2),
    retain           boolean NOT NULL DEFAULT false,
    payload          bytea NOT NULL,
    content_type     text,
    user_properties  jsonb NOT NULL DEFAULT '[]'::jsonb,
    received_at      timestamptz NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    -- A worker holds a delivery until lease_until; a crashed worker's lease simply expires.
    lease_until      timestamptz,
    leased_by        text,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, rule_id) REFERENCES rules (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at);
CREATE INDEX deliveries_rule ON deliveries (tenant_id, rule_id);

CREATE TABLE dead_letters (
    id               text PRIMARY KEY,
    tenant_id        text NOT NULL,
    rule_id          text NOT NULL,
    registry_id      text,
    device_id        text,
    topic            text NOT NULL,
    qos              smallint NOT NULL,
    retain           boolean NOT NULL DEFAULT false,
    payload          bytea NOT NULL,
    content_type     text,
    user_properties  jsonb NOT NULL DEFAULT '[]'::jsonb,
    received_at      timestamptz NOT NULL,
    attempts         integer NOT NULL,
    last_error       text NOT NULL,
    dead_at          timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, rule_id) REFERENCES rules (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX dead_letters_rule ON dead_letters (tenant_id, rule_id, dead_at);
