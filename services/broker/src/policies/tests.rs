//! Policy cases (SPEC §4.2): variables, injection through names and labels, deny over
//! allow, containment and overlap, `$`-topics, and which attachments apply to whom.

use super::*;
use crate::router::Namespace;
use iotcore_store::policies::{Action, Effect, Statement};
use iotcore_store::{BrokerId, DeviceId, PolicyId, RegistryId};
use std::collections::BTreeMap;

struct World {
    tenant: TenantId,
    registry: RegistryId,
    device: DeviceId,
}

const DEVICE: &str = "dev_0000000000000000000d";
const REGISTRY: &str = "reg_0000000000000000000r";
const OTHER_REGISTRY: &str = "reg_0000000000000000000o";
const BROKER: &str = "brk_0000000000000000000b";

fn world() -> World {
    World {
        tenant: TenantId::parse("tnt_0000000000000000000t").unwrap(),
        registry: RegistryId::parse(REGISTRY).unwrap(),
        device: DeviceId::parse(DEVICE).unwrap(),
    }
}

fn device(w: &World, labels: &[(&str, &str)], default_policy: bool) -> Principal {
    Principal {
        tenant_id: w.tenant.clone(),
        namespace: Namespace::Tenant(w.tenant.clone()),
        kind: PrincipalKind::Device {
            device_id: w.device.clone(),
            registry_id: w.registry.clone(),
            name: "d".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            enabled: true,
        },
        default_policy,
        rules_version: 0,
        cert_cn: None,
        certificate: None,
    }
}

fn registry_client(w: &World) -> Principal {
    Principal {
        kind: PrincipalKind::Registry {
            registry_id: w.registry.clone(),
        },
        ..device(w, &[], true)
    }
}

fn broker_client(w: &World) -> Principal {
    let broker = BrokerId::parse(BROKER).unwrap();
    Principal {
        namespace: Namespace::Broker(w.tenant.clone(), broker.clone()),
        kind: PrincipalKind::Broker { broker_id: broker },
        ..device(w, &[], true)
    }
}

fn statement(effect: Effect, actions: &[Action], topics: &[&str]) -> Statement {
    Statement {
        effect,
        actions: actions.to_vec(),
        topics: topics.iter().map(|t| t.to_string()).collect(),
    }
}

fn attach(kind: &str, id: &str, statements: Vec<Statement>) -> Attachment {
    Attachment {
        target_kind: kind.into(),
        target_id: id.into(),
        policy_id: PolicyId::generate(),
        statements,
    }
}

use Action::{Publish as P, Subscribe as S};
use Effect::{Allow, Deny};

/// What a check asks: publish to a topic, subscribe to a filter, or whether a topic is
/// delivered to granted subscriptions.
#[derive(Clone, Copy, Debug)]
enum Check {
    Pub(&'static str),
    Sub(&'static str),
    Deliver(&'static str),
}

fn run(acl: &Acl, check: Check) -> bool {
    match check {
        Check::Pub(t) => acl.allows_publish(t),
        Check::Sub(f) => acl.allows_subscribe(f),
        Check::Deliver(t) => acl.delivers(t),
    }
}

#[test]
fn policy_table() {
    use Check::*;
    let w = world();
    let fleet = vec![
        statement(Allow, &[P], &["fleet/${registry.id}/${device.id}/#"]),
        statement(Allow, &[S], &["fleet/${registry.id}/broadcast/#"]),
        statement(Deny, &[S], &["fleet/+/broadcast/secret/#"]),
    ];
    // (case, principal labels, attachments, check, expected)
    type Case = (
        &'static str,
        &'static [(&'static str, &'static str)],
        Vec<Attachment>,
        Check,
        bool,
    );
    let t = w.tenant.as_str();
    let cases: Vec<Case> = vec![
        (
            "variables expand",
            &[],
            vec![attach("tenant", t, fleet.clone())],
            Pub("fleet/reg_0000000000000000000r/dev_0000000000000000000d/t"),
            true,
        ),
        (
            "another device's topic",
            &[],
            vec![attach("tenant", t, fleet.clone())],
            Pub("fleet/reg_0000000000000000000r/dev_0000000000000000000x/t"),
            false,
        ),
        (
            "another registry's topic",
            &[],
            vec![attach("tenant", t, fleet.clone())],
            Pub("fleet/reg_0000000000000000000o/dev_0000000000000000000d"),
            false,
        ),
        (
            "x/# matches x itself",
            &[],
            vec![attach("tenant", t, fleet.clone())],
            Pub("fleet/reg_0000000000000000000r/dev_0000000000000000000d"),
            true,
        ),
        (
            "subscribe contained in allow",
            &[],
            vec![attach("tenant", t, fleet.clone())],
            Sub("fleet/reg_0000000000000000000r/broadcast/+/x"),
            true,
        ),
        (
            "subscribe wider than allow",
            &[],
            vec![attach("tenant", t, fleet.clone())],
            Sub("fleet/reg_0000000000000000000r/#"),
            false,
        ),
        (
            "subscribe inside a deny is refused",
            &[],
            vec![attach("tenant", t, fleet.clone())],
            Sub("fleet/reg_0000000000000000000r/broadcast/secret/x"),
            false,
        ),
        (
            "overlap with a deny is granted",
            &[],
            vec![attach("tenant", t, fleet.clone())],
            Sub("fleet/reg_0000000000000000000r/broadcast/#"),
            true,
        ),
        (
            "denied topics are not delivered",
            &[],
            vec![attach("tenant", t, fleet.clone())],
            Deliver("fleet/reg_0000000000000000000r/broadcast/secret/k"),
            false,
        ),
        (
            "other topics are delivered",
            &[],
            vec![attach("tenant", t, fleet.clone())],
            Deliver("fleet/reg_0000000000000000000r/broadcast/news"),
            true,
        ),
        (
            "allow does not grant the other action",
            &[],
            vec![attach("tenant", t, fleet.clone())],
            Sub("fleet/reg_0000000000000000000r/dev_0000000000000000000d/t"),
            false,
        ),
        (
            "deny wins over allow",
            &[],
            vec![attach(
                "tenant",
                t,
                vec![
                    statement(Allow, &[P], &["a/#"]),
                    statement(Deny, &[P], &["a/b"]),
                ],
            )],
            Pub("a/b"),
            false,
        ),
        (
            "deny of another attachment wins",
            &[],
            vec![
                attach("tenant", t, vec![statement(Allow, &[P], &["a/#"])]),
                attach("device", DEVICE, vec![statement(Deny, &[P], &["a/+"])]),
            ],
            Pub("a/b"),
            false,
        ),
        (
            "deny of one level leaves deeper topics",
            &[],
            vec![attach(
                "tenant",
                t,
                vec![
                    statement(Allow, &[P], &["a/#"]),
                    statement(Deny, &[P], &["a/+"]),
                ],
            )],
            Pub("a/b/c"),
            true,
        ),
        (
            "nothing allowed is denied",
            &[],
            vec![],
            Pub("free/form"),
            false,
        ),
        (
            "registry attachment applies",
            &[],
            vec![attach(
                "registry",
                REGISTRY,
                vec![statement(Allow, &[P, S], &["r/#"])],
            )],
            Sub("r/+"),
            true,
        ),
        (
            "other registry's attachment does not",
            &[],
            vec![attach(
                "registry",
                OTHER_REGISTRY,
                vec![statement(Allow, &[P], &["r/#"])],
            )],
            Pub("r/x"),
            false,
        ),
        (
            "device attachment applies",
            &[],
            vec![attach(
                "device",
                DEVICE,
                vec![statement(Allow, &[P], &["d/${client.id}"])],
            )],
            Pub("d/dev_0000000000000000000d"),
            true,
        ),
        (
            "broker attachments do not apply to devices",
            &[],
            vec![attach(
                "broker",
                BROKER,
                vec![statement(Allow, &[P], &["#"])],
            )],
            Pub("x"),
            false,
        ),
        (
            "label variable",
            &[("site", "north")],
            vec![attach(
                "tenant",
                t,
                vec![statement(Allow, &[P], &["site/${device.labels.site}/#"])],
            )],
            Pub("site/north/t"),
            true,
        ),
        (
            "label variable is that label only",
            &[("site", "north")],
            vec![attach(
                "tenant",
                t,
                vec![statement(Allow, &[P], &["site/${device.labels.site}/#"])],
            )],
            Pub("site/south/t"),
            false,
        ),
        (
            "missing label: no match",
            &[],
            vec![attach(
                "tenant",
                t,
                vec![statement(Allow, &[P], &["site/${device.labels.site}/#"])],
            )],
            Pub("site//t"),
            false,
        ),
        (
            "empty label: no match",
            &[("site", "")],
            vec![attach(
                "tenant",
                t,
                vec![statement(Allow, &[P], &["site/${device.labels.site}/#"])],
            )],
            Pub("site//t"),
            false,
        ),
        (
            "label with #: no injection",
            &[("site", "#")],
            vec![attach(
                "tenant",
                t,
                vec![statement(Allow, &[P, S], &["site/${device.labels.site}"])],
            )],
            Sub("site/#"),
            false,
        ),
        (
            "label with +: no injection",
            &[("site", "+")],
            vec![attach(
                "tenant",
                t,
                vec![statement(Allow, &[S], &["site/${device.labels.site}"])],
            )],
            Sub("site/+"),
            false,
        ),
        (
            "label with /: no injection",
            &[("site", "a/b")],
            vec![attach(
                "tenant",
                t,
                vec![statement(Allow, &[P], &["site/${device.labels.site}"])],
            )],
            Pub("site/a/b"),
            false,
        ),
        (
            "bad variable drops the whole statement",
            &[("site", "+")],
            vec![attach(
                "tenant",
                t,
                vec![statement(
                    Allow,
                    &[P],
                    &["ok/#", "site/${device.labels.site}"],
                )],
            )],
            Pub("ok/x"),
            false,
        ),
        (
            "bad variable in a deny drops only that deny",
            &[("site", "#")],
            vec![attach(
                "tenant",
                t,
                vec![
                    statement(Allow, &[P], &["ok/#"]),
                    statement(Deny, &[P], &["ok/${device.labels.site}"]),
                ],
            )],
            Pub("ok/x"),
            true,
        ),
        (
            "label reaching a $-topic: no injection",
            &[("root", "$devices")],
            vec![attach(
                "tenant",
                t,
                vec![statement(Allow, &[S], &["${device.labels.root}/#"])],
            )],
            Sub("$devices/#"),
            false,
        ),
        (
            "cert cn is empty for passwords",
            &[],
            vec![attach(
                "tenant",
                t,
                vec![statement(Allow, &[P], &["c/${cert.subject.cn}"])],
            )],
            Pub("c/"),
            false,
        ),
        (
            "tenant variable",
            &[],
            vec![attach(
                "tenant",
                t,
                vec![statement(Allow, &[P], &["t/${tenant.id}"])],
            )],
            Pub("t/tnt_0000000000000000000t"),
            true,
        ),
        (
            "# allow does not reach $-topics",
            &[],
            vec![attach("tenant", t, vec![statement(Allow, &[P, S], &["#"])])],
            Sub("$devices/+/commands/#"),
            false,
        ),
        (
            "# allow does not publish to $-topics",
            &[],
            vec![attach("tenant", t, vec![statement(Allow, &[P], &["#"])])],
            Pub("$devices/dev_0000000000000000000x/commands"),
            false,
        ),
        (
            "defaults stay",
            &[],
            vec![],
            Pub("$devices/dev_0000000000000000000d/events/t"),
            true,
        ),
        (
            "a policy can deny a default",
            &[],
            vec![attach(
                "device",
                DEVICE,
                vec![statement(Deny, &[P], &["$devices/${device.id}/state/#"])],
            )],
            Pub("$devices/dev_0000000000000000000d/state"),
            false,
        ),
        (
            "a deny on # blocks delivery of everything but $-topics",
            &[],
            vec![attach("tenant", t, vec![statement(Deny, &[S], &["#"])])],
            Deliver("$devices/dev_0000000000000000000d/commands"),
            true,
        ),
    ];
    for (name, labels, attachments, check, expected) in cases {
        let policies = TenantPolicies::build(attachments);
        let acl = acl_for(&device(&w, labels, true), DEVICE, &policies);
        assert_eq!(run(&acl, check), expected, "{name}: {check:?}");
    }
}

#[test]
fn cert_cn_of_a_certificate_principal_fills_its_variable() {
    let w = world();
    let policies = TenantPolicies::build(vec![attach(
        "tenant",
        w.tenant.as_str(),
        vec![statement(Allow, &[P], &["c/${cert.subject.cn}"])],
    )]);
    let with_cn = |cn: &str| Principal {
        cert_cn: Some(cn.to_owned()),
        ..device(&w, &[], true)
    };
    let acl = acl_for(&with_cn("sensor-1"), DEVICE, &policies);
    assert!(acl.allows_publish("c/sensor-1"));
    assert!(!acl.allows_publish("c/sensor-2"));
    // A CN with a topic separator or wildcard makes the statement not match.
    let acl = acl_for(&with_cn("a/b"), DEVICE, &policies);
    assert!(!acl.allows_publish("c/a/b"));
    let acl = acl_for(&with_cn("+"), DEVICE, &policies);
    assert!(!acl.allows_publish("c/+"));
}

#[test]
fn registry_clients_get_tenant_and_registry_policies_without_device_variables() {
    let w = world();
    let t = w.tenant.as_str();
    let policies = TenantPolicies::build(vec![
        attach(
            "tenant",
            t,
            vec![statement(Allow, &[P], &["ops/${registry.id}/#"])],
        ),
        attach(
            "registry",
            REGISTRY,
            vec![statement(Allow, &[S], &["dev/${device.id}/#", "x/#"])],
        ),
        attach(
            "device",
            DEVICE,
            vec![statement(Allow, &[P], &["device-only"])],
        ),
    ]);
    let acl = acl_for(&registry_client(&w), REGISTRY, &policies);
    assert!(acl.allows_publish("ops/reg_0000000000000000000r/a"));
    // `${device.id}` has no value for a registry client: the statement does not match.
    assert!(!acl.allows_subscribe("x/y"));
    assert!(!acl.allows_publish("device-only"));
    // Defaults of registry clients stay.
    assert!(acl.allows_subscribe("$devices/+/events/#"));
}

#[test]
fn virtual_broker_clients_get_only_their_brokers_policies() {
    let w = world();
    let policies = TenantPolicies::build(vec![
        attach(
            "tenant",
            w.tenant.as_str(),
            vec![statement(Deny, &[P], &["#"])],
        ),
        attach(
            "broker",
            BROKER,
            vec![statement(Deny, &[S], &["test/nosubscribe"])],
        ),
    ]);
    let acl = acl_for(&broker_client(&w), "any-client", &policies);
    assert!(acl.allows_publish("anything/at/all"));
    assert!(!acl.allows_subscribe("test/nosubscribe"));
    assert!(acl.allows_subscribe("test/#"));
    assert!(!acl.delivers("test/nosubscribe"));
}

#[test]
fn registry_without_defaults_has_only_its_policies() {
    let w = world();
    let policies = TenantPolicies::build(vec![attach(
        "registry",
        REGISTRY,
        vec![statement(Allow, &[P], &["$devices/${device.id}/events"])],
    )]);
    let acl = acl_for(&device(&w, &[], false), DEVICE, &policies);
    assert!(acl.allows_publish("$devices/dev_0000000000000000000d/events"));
    assert!(!acl.allows_publish("$devices/dev_0000000000000000000d/state"));
    assert!(!acl.allows_subscribe("$devices/dev_0000000000000000000d/commands"));
}

#[tokio::test]
async fn live_acls_follow_changes_and_wake_their_connection() {
    let w = world();
    let principal = device(&w, &[("site", "north")], true);
    let allow = statement(Allow, &[S], &["site/#"]);
    let before = TenantPolicies::build(vec![attach("device", DEVICE, vec![allow.clone()])]);
    let live = LiveAcl::new(
        Arc::new(principal.clone()),
        DEVICE.into(),
        Arc::new(acl_for(&principal, DEVICE, &before)),
    );
    assert!(live.delivers("site/north"));
    assert!(!live.delivers("elsewhere"));
    let policies = TenantPolicies::build(vec![attach(
        "device",
        DEVICE,
        vec![
            allow,
            statement(Deny, &[S], &["site/${device.labels.site}"]),
        ],
    )]);
    live.set(Arc::new(acl_for(&principal, DEVICE, &policies)));
    // The permit is kept for a task that was not waiting yet.
    tokio::time::timeout(std::time::Duration::from_secs(5), live.changed())
        .await
        .expect("woken");
    assert!(!live.delivers("site/north"));
    assert!(live.delivers("site/south"));
}

#[test]
fn one_credential_shares_its_principal_and_equal_rights_and_a_device_keeps_its_own() {
    let w = world();
    let policies = Policies::default();
    let first = policies.shared_principal(registry_client(&w));
    let second = policies.shared_principal(registry_client(&w));
    assert!(Arc::ptr_eq(&first, &second));
    let changed = policies.shared_principal(Principal {
        default_policy: false,
        ..registry_client(&w)
    });
    assert!(!Arc::ptr_eq(&first, &changed));
    assert!(!changed.default_policy);

    // The rights of one client id and of another are equal unless a policy names it.
    let none = TenantPolicies::default();
    let same_a = policies.shared_acl(&first, acl_for(&first, &format!("{REGISTRY}:a"), &none));
    let same_b = policies.shared_acl(&second, acl_for(&second, &format!("{REGISTRY}:b"), &none));
    assert!(Arc::ptr_eq(&same_a, &same_b));
    let by_client = TenantPolicies::build(vec![attach(
        "registry",
        REGISTRY,
        vec![statement(Allow, &[P], &["own/${client.id}"])],
    )]);
    let a = policies.shared_acl(
        &first,
        acl_for(&first, &format!("{REGISTRY}:a"), &by_client),
    );
    let b = policies.shared_acl(
        &second,
        acl_for(&second, &format!("{REGISTRY}:b"), &by_client),
    );
    assert!(!Arc::ptr_eq(&a, &b));
    assert!(a.allows_publish(&format!("own/{REGISTRY}:a")));
    assert!(!b.allows_publish(&format!("own/{REGISTRY}:a")));

    // Once no session holds them, they are not kept.
    drop((first, second, same_a, same_b, a, b));
    let device_principal = policies.shared_principal(device(&w, &[], true));
    let again = policies.shared_principal(device(&w, &[], true));
    assert!(!Arc::ptr_eq(&device_principal, &again));
    let shared = lock(&policies.shared);
    assert!(shared
        .principals
        .values()
        .all(|kept| kept.strong_count() <= 1));
    assert!(shared.acls.values().all(|kept| kept.strong_count() == 0));
}
