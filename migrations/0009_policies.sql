-- Policies (SPEC §4.2): attachments go with what they are attached to.
--
-- `policy_attachments` names its target by kind and id, so no foreign key can remove a
-- registry's, device's or virtual broker's attachments when it is deleted; these triggers
-- do (row triggers also fire for rows removed by a cascade, such as the devices of a
-- deleted registry). A deleted policy or tenant takes its attachments with it through the
-- foreign key on the policy.

-- Attachments left behind by deletions before this migration.
DELETE FROM policy_attachments a
 WHERE (a.target_kind = 'tenant' AND NOT EXISTS (SELECT 1 FROM tenants t WHERE t.id = a.target_id))
    OR (a.target_kind = 'registry' AND NOT EXISTS (
            SELECT 1 FROM registries r WHERE r.tenant_id = a.tenant_id AND r.id = a.target_id))
    OR (a.target_kind = 'device' AND NOT EXISTS (
            SELECT 1 FROM devices d WHERE d.tenant_id = a.tenant_id AND d.id = a.target_id))
    OR (a.target_kind = 'broker' AND NOT EXISTS (
            SELECT 1 FROM brokers b WHERE b.tenant_id = a.tenant_id AND b.id = a.target_id));

CREATE FUNCTION policy_attachments_detach() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM policy_attachments
     WHERE tenant_id = OLD.tenant_id AND target_kind = TG_ARGV[0] AND target_id = OLD.id;
    RETURN OLD;
END;
$$;

CREATE TRIGGER registries_detach_policies AFTER DELETE ON registries
    FOR EACH ROW EXECUTE FUNCTION policy_attachments_detach('registry');
CREATE TRIGGER devices_detach_policies AFTER DELETE ON devices
    FOR EACH ROW EXECUTE FUNCTION policy_attachments_detach('device');
CREATE TRIGGER brokers_detach_policies AFTER DELETE ON brokers
    FOR EACH ROW EXECUTE FUNCTION policy_attachments_detach('broker');

-- Listing a target's policies in a stable order, and a policy's attachments.
CREATE INDEX policy_attachments_policy ON policy_attachments (tenant_id, policy_id);
