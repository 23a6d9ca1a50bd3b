-- X.509 certificate authentication (SPEC §4.1, §6.2): what the certificate tables of the
-- resource model lack.

-- A CA the service created for a registry keeps its private key here, so that the service
-- can issue device certificates with it. Stored unencrypted (see the README); NULL for a
-- CA a tenant uploaded, whose key the service never sees.
ALTER TABLE ca_certificates ADD COLUMN private_key_pem text;

-- Brokers look CAs up by the issuer names of the chain a client presents.
CREATE INDEX ca_certificates_subject ON ca_certificates (subject) WHERE status = 'active';
CREATE INDEX ca_certificates_registry ON ca_certificates (tenant_id, registry_id, id);

-- A certificate issued by the service from a registry CA, or registered just in time
-- through one, names that CA: it stops working when the CA is deleted.
ALTER TABLE certificates
    ADD COLUMN ca_certificate_id text,
    ADD COLUMN revoked_at timestamptz,
    ADD CONSTRAINT certificates_ca_certificate_fkey
        FOREIGN KEY (tenant_id, ca_certificate_id) REFERENCES ca_certificates (tenant_id, id)
        ON DELETE CASCADE;
CREATE INDEX certificates_ca ON certificates (ca_certificate_id) WHERE ca_certificate_id IS NOT NULL;
