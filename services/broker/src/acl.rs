//! What a connection may publish and subscribe to (SPEC §4.2).
//!
//! The built-in rights of devices, registry clients and virtual broker clients, plus the
//! statements of the policies attached to them (see [`crate::policies`]). Filters are
//! expanded once at CONNECT (and again when a policy changes), so checking a PUBLISH is a
//! few topic matches with no allocation. Deny wins over allow; nothing allowed is denied.

use crate::auth::Principal;
use iotcore_store::auth::PrincipalKind;
use iotcore_store::policies::{Action, Effect};
use iotcore_store::{DeviceId, RegistryId};
use iotcore_topic::{contains, is_valid_filter, is_valid_topic_name, matches_valid, overlaps};

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Acl {
    publish: Vec<String>,
    subscribe: Vec<String>,
    deny_publish: Vec<String>,
    deny_subscribe: Vec<String>,
    /// A registry client's registry: its `$devices/{id}/…` topics are limited to devices of
    /// this registry (SPEC §3.4).
    pub registry_scope: Option<RegistryId>,
}

impl Acl {
    pub fn for_principal(principal: &Principal) -> Acl {
        let mut acl = Acl::default();
        match &principal.kind {
            PrincipalKind::Device {
                device_id,
                registry_id,
                ..
            } => {
                if principal.default_policy {
                    acl.publish = vec![
                        format!("$devices/{device_id}/events/#"),
                        format!("$devices/{device_id}/state/#"),
                        format!("$registries/{registry_id}/events/#"),
                    ];
                    acl.subscribe = vec![
                        format!("$devices/{device_id}/commands/#"),
                        format!("$registries/{registry_id}/commands/#"),
                    ];
                }
            }
            PrincipalKind::Registry { registry_id } => {
                if principal.default_policy {
                    acl.publish = vec![
                        "$devices/+/commands/#".into(),
                        format!("$registries/{registry_id}/commands/#"),
                    ];
                    acl.subscribe = vec![
                        "$devices/+/events/#".into(),
                        "$devices/+/state/#".into(),
                        format!("$registries/{registry_id}/#"),
                    ];
                }
                acl.registry_scope = Some(registry_id.clone());
            }
            // A virtual broker is a free-form namespace of its own: everything inside it.
            PrincipalKind::Broker { .. } => {
                acl.publish = vec!["#".into()];
                acl.subscribe = vec!["#".into()];
            }
        }
        acl
    }

    /// Adds the rights of one policy statement, its topics already expanded.
    pub fn add(&mut self, effect: Effect, actions: &[Action], topics: &[String]) {
        for action in actions {
            let list = match (effect, action) {
                (Effect::Allow, Action::Publish) => &mut self.publish,
                (Effect::Allow, Action::Subscribe) => &mut self.subscribe,
                (Effect::Deny, Action::Publish) => &mut self.deny_publish,
                (Effect::Deny, Action::Subscribe) => &mut self.deny_subscribe,
            };
            // No deduplication: policies are bounded in size (the API's limits), and a
            // repeated filter only costs one more match. An invalid filter matches,
            // contains and overlaps nothing: it is not kept, so that the filters kept need
            // no syntax check per message.
            list.extend(
                topics
                    .iter()
                    .filter(|topic| is_valid_filter(topic))
                    .cloned(),
            );
        }
    }

    /// Whether a PUBLISH to `topic` is allowed by the topic rights alone: it matches an
    /// allowed filter and no denied one. For registry clients, [`Acl::scoped_device`] names
    /// a device whose registry must be checked too.
    pub fn allows_publish(&self, topic: &str) -> bool {
        // The filters are valid (`add`); the topic is checked once for all of them.
        is_valid_topic_name(topic)
            && self
                .publish
                .iter()
                .any(|allowed| matches_valid(allowed, topic))
            && !self
                .deny_publish
                .iter()
                .any(|denied| matches_valid(denied, topic))
    }

    /// Whether a subscription to `filter` is granted: every topic it can match must be
    /// matched by an allowed filter (containment, not overlap), and not every one by a
    /// denied filter. One that only overlaps a denied filter is granted, and
    /// [`Acl::delivers`] holds back the denied topics.
    pub fn allows_subscribe(&self, filter: &str) -> bool {
        self.subscribe
            .iter()
            .any(|allowed| contains(allowed, filter))
            && !self
                .deny_subscribe
                .iter()
                .any(|denied| contains(denied, filter))
    }

    /// Whether a message on `topic` may reach this client's subscriptions (retained ones
    /// included): when an allowed subscribe filter matches it and no denied one does.
    ///
    /// For rights that have not changed since a subscription was granted, the allow part
    /// always holds (the subscription is contained in an allowed filter); after a policy
    /// change it stops a subscription no longer granted at the next message, before its
    /// connection has removed it.
    pub fn delivers(&self, topic: &str) -> bool {
        is_valid_topic_name(topic)
            && self
                .subscribe
                .iter()
                .any(|allowed| matches_valid(allowed, topic))
            && !self
                .deny_subscribe
                .iter()
                .any(|denied| matches_valid(denied, topic))
    }

    /// Whether [`Acl::delivers`] holds for every topic `filter` matches: it is contained in
    /// an allowed subscribe filter and overlaps no denied one. Such a subscription needs no
    /// check per message while these rights last.
    pub fn delivers_all(&self, filter: &str) -> bool {
        self.subscribe
            .iter()
            .any(|allowed| contains(allowed, filter))
            && !self
                .deny_subscribe
                .iter()
                .any(|denied| overlaps(denied, filter))
    }

    /// For a registry client publishing to `$devices/{id}/…`: the device whose registry
    /// must be the client's own.
    pub fn scoped_device(&self, topic: &str) -> Option<Result<DeviceId, ()>> {
        self.registry_scope.as_ref()?;
        let rest = topic.strip_prefix("$devices/")?;
        let id = rest.split('/').next().unwrap_or_default();
        Some(DeviceId::parse(id).ok_or(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::Namespace;
    use iotcore_store::TenantId;
    use std::collections::BTreeMap;

    fn device(default_policy: bool) -> (Principal, DeviceId, RegistryId) {
        let tenant = TenantId::generate();
        let device_id = DeviceId::generate();
        let registry_id = RegistryId::generate();
        let principal = Principal {
            namespace: Namespace::Tenant(tenant.clone()),
            tenant_id: tenant,
            kind: PrincipalKind::Device {
                device_id: device_id.clone(),
                registry_id: registry_id.clone(),
                name: "d".into(),
                labels: BTreeMap::new(),
                enabled: true,
            },
            default_policy,
            rules_version: 0,
            cert_cn: None,
            certificate: None,
        };
        (principal, device_id, registry_id)
    }

    #[test]
    fn device_defaults_allow_its_own_topics_only() {
        let (principal, d, r) = device(true);
        let acl = Acl::for_principal(&principal);
        assert!(acl.allows_publish(&format!("$devices/{d}/events")));
        assert!(acl.allows_publish(&format!("$devices/{d}/events/temperature")));
        assert!(acl.allows_publish(&format!("$devices/{d}/state")));
        assert!(acl.allows_publish(&format!("$registries/{r}/events/x")));
        let other = DeviceId::generate();
        assert!(!acl.allows_publish(&format!("$devices/{other}/events")));
        assert!(!acl.allows_publish(&format!("$devices/{d}/commands")));
        assert!(!acl.allows_publish("free/form"));
        assert!(acl.allows_subscribe(&format!("$devices/{d}/commands/#")));
        assert!(acl.allows_subscribe(&format!("$devices/{d}/commands/+/x")));
        assert!(acl.allows_subscribe(&format!("$registries/{r}/commands")));
        assert!(!acl.allows_subscribe("#"));
        assert!(!acl.allows_subscribe("$devices/+/commands/#"));
        assert!(!acl.allows_subscribe(&format!("$devices/{d}/events")));
    }

    #[test]
    fn registry_turning_defaults_off_leaves_nothing_allowed() {
        let (principal, d, _) = device(false);
        let acl = Acl::for_principal(&principal);
        assert!(!acl.allows_publish(&format!("$devices/{d}/events")));
        assert!(!acl.allows_subscribe(&format!("$devices/{d}/commands")));
    }
}
