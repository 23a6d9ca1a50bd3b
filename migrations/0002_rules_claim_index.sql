-- Rules workers claim the due deliveries of each enabled rule separately (so that one
-- rule's backlog never hides another rule's messages); this index serves that per-rule
-- probe in due order.
CREATE INDEX deliveries_rule_due ON deliveries (tenant_id, rule_id, next_attempt_at);
