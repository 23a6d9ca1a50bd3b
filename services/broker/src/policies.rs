//! Policies applied to clients (SPEC §4.2): a tenant's attachments cached in memory, the
//! rights of each connection built from them, and those rights kept current while the
//! connection (or its parked session) lives.
//!
//! A tenant's attachments are read in one query when its first client connects and again
//! when the control plane notifies a change, never per CONNECT or per message. Each session
//! holds its rights in a [`LiveAcl`], shared with its subscriptions in the router, so that a
//! changed deny applies to the next message routed; the connection task is woken to drop
//! the subscriptions its new rights no longer grant.

use crate::acl::Acl;
use crate::auth::Principal;
use iotcore_store::auth::PrincipalKind;
use iotcore_store::policies::{Attachment, TopicTemplate, Variable};
use iotcore_store::{Store, TenantId};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use tokio::sync::Notify;

/// Tenants whose attachments are kept at most; beyond it the cache starts over.
const MAX_CACHED_TENANTS: usize = 10_000;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// One statement with its topics parsed once.
#[derive(Debug)]
struct CompiledStatement {
    effect: iotcore_store::policies::Effect,
    actions: Vec<iotcore_store::policies::Action>,
    topics: Vec<TopicTemplate>,
}

/// The statements attached to each target of a tenant.
#[derive(Debug, Default)]
pub struct TenantPolicies {
    by_target: HashMap<(String, String), Vec<Arc<CompiledStatement>>>,
}

impl TenantPolicies {
    fn build(attachments: Vec<Attachment>) -> TenantPolicies {
        let mut by_target: HashMap<(String, String), Vec<Arc<CompiledStatement>>> = HashMap::new();
        for attachment in attachments {
            let statements = by_target
                .entry((attachment.target_kind, attachment.target_id))
                .or_default();
            for statement in attachment.statements {
                // The API accepts only valid templates; one that no longer parses (stored by
                // a newer version) is left out rather than guessed at.
                let topics = statement
                    .topics
                    .iter()
                    .filter_map(|t| TopicTemplate::parse(t).ok())
                    .collect();
                statements.push(Arc::new(CompiledStatement {
                    effect: statement.effect,
                    actions: statement.actions,
                    topics,
                }));
            }
        }
        TenantPolicies { by_target }
    }

    fn attached(&self, kind: &str, id: &str) -> &[Arc<CompiledStatement>] {
        self.by_target
            .get(&(kind.to_owned(), id.to_owned()))
            .map_or(&[], Vec::as_slice)
    }
}

/// The rights of `principal` connected as `client_id`: the built-in defaults plus the
/// policies attached to the tenant, its registry and the device (or, for a virtual broker
/// client, to the broker), with variables expanded for this client.
pub fn acl_for(principal: &Principal, client_id: &str, policies: &TenantPolicies) -> Acl {
    let mut acl = Acl::for_principal(principal);
    let tenant = principal.tenant_id.as_str();
    let (registry, device, labels) = match &principal.kind {
        PrincipalKind::Device {
            device_id,
            registry_id,
            labels,
            ..
        } => (
            Some(registry_id.as_str()),
            Some(device_id.as_str()),
            Some(labels),
        ),
        PrincipalKind::Registry { registry_id } => (Some(registry_id.as_str()), None, None),
        PrincipalKind::Broker { .. } => (None, None, None),
    };
    let mut sources: Vec<&[Arc<CompiledStatement>]> = Vec::new();
    match &principal.kind {
        PrincipalKind::Broker { broker_id } => {
            sources.push(policies.attached("broker", broker_id.as_str()));
        }
        _ => {
            sources.push(policies.attached("tenant", tenant));
            if let Some(registry) = registry {
                sources.push(policies.attached("registry", registry));
            }
            if let Some(device) = device {
                sources.push(policies.attached("device", device));
            }
        }
    }
    let cert_cn = principal.cert_cn();
    let value = |variable: &Variable| -> Option<&str> {
        match variable {
            Variable::TenantId => Some(tenant),
            Variable::RegistryId => registry,
            Variable::DeviceId => device,
            Variable::ClientId => Some(client_id),
            Variable::CertSubjectCn => cert_cn,
            Variable::DeviceLabel(key) => labels.and_then(|l| l.get(key)).map(String::as_str),
        }
    };
    for statement in sources.into_iter().flatten() {
        // SPEC §4.2: a variable without a safe value makes the whole statement not match.
        let topics: Option<Vec<String>> =
            statement.topics.iter().map(|t| t.expand(value)).collect();
        if let Some(topics) = topics {
            acl.add(statement.effect, &statement.actions, &topics);
        }
    }
    acl
}

/// The current rights of one session, shared by its connection task and its
/// subscriptions in the router.
#[derive(Clone)]
pub struct LiveAcl(Arc<LiveInner>);

struct LiveInner {
    acl: RwLock<Arc<Acl>>,
    /// Counts changes of `acl`, so that a subscription can tell cheaply whether the rights
    /// it was checked against still hold ([`LiveAcl::delivers_all`]).
    generation: AtomicU64,
    /// Wakes the connection task to re-check its subscriptions.
    changed: Notify,
    /// The principal the rights were built for; the connection's own until a change of
    /// its attributes replaces it here.
    principal: RwLock<Arc<Principal>>,
    client_id: String,
}

impl std::fmt::Debug for LiveAcl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LiveAcl").field(&self.current()).finish()
    }
}

impl LiveAcl {
    fn new(principal: Arc<Principal>, client_id: String, acl: Arc<Acl>) -> LiveAcl {
        LiveAcl(Arc::new(LiveInner {
            acl: RwLock::new(acl),
            generation: AtomicU64::new(0),
            changed: Notify::new(),
            principal: RwLock::new(principal),
            client_id,
        }))
    }

    /// The rights as they are now.
    pub fn current(&self) -> Arc<Acl> {
        self.0.acl.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether a message on `topic` may be delivered to this session now.
    pub fn delivers(&self, topic: &str) -> bool {
        self.0
            .acl
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .delivers(topic)
    }

    /// When the current rights deliver every topic of `filter` ([`Acl::delivers_all`]):
    /// their generation, for [`LiveAcl::delivers_from`].
    pub fn delivers_all(&self, filter: &str) -> Option<u64> {
        let acl = self.0.acl.read().unwrap_or_else(|e| e.into_inner());
        let generation = self.0.generation.load(Ordering::Acquire);
        acl.delivers_all(filter).then_some(generation)
    }

    /// [`LiveAcl::delivers`] for a message of a subscription whose filter every topic of
    /// was delivered under the rights of generation `all` (from [`LiveAcl::delivers_all`]):
    /// while those rights last, no topic match.
    pub fn delivers_from(&self, all: Option<u64>, topic: &str) -> bool {
        all == Some(self.0.generation.load(Ordering::Acquire)) || self.delivers(topic)
    }

    /// Resolves when the rights changed since the last call.
    pub async fn changed(&self) {
        self.0.changed.notified().await
    }

    pub fn same(&self, other: &LiveAcl) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    fn set(&self, acl: Arc<Acl>) {
        let mut current = self.0.acl.write().unwrap_or_else(|e| e.into_inner());
        *current = acl;
        self.0.generation.fetch_add(1, Ordering::AcqRel);
        drop(current);
        // A permit is kept when the task is not waiting, so no change is missed.
        self.0.changed.notify_one();
    }

    fn principal(&self) -> Arc<Principal> {
        self.0
            .principal
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Live sessions of one tenant, pruned of ended ones as it grows.
#[derive(Default)]
struct TenantSessions {
    sessions: Vec<Weak<LiveInner>>,
    prune_at: usize,
}

/// The broker's policy state: cached attachments per tenant and every live session's
/// rights.
#[derive(Default)]
pub struct Policies {
    tenants: Mutex<HashMap<TenantId, Arc<TenantPolicies>>>,
    live: Mutex<HashMap<TenantId, TenantSessions>>,
    shared: Mutex<SharedRights>,
}

/// The principals and rights of live sessions, one copy for the sessions whose are equal:
/// the connections of one registry client or virtual broker credential. A device has one
/// connection at a time and rights that name it, so its own are never looked up here.
/// Held weakly, keyed by a hash of the value (a collision only means a copy of its own).
#[derive(Default)]
struct SharedRights {
    hasher: std::hash::RandomState,
    acls: HashMap<u64, Weak<Acl>>,
    principals: HashMap<u64, Weak<Principal>>,
    /// The size at which ended sessions' entries are dropped next.
    prune_at: usize,
}

impl SharedRights {
    /// `value`, or an equal one kept in `table`.
    fn share<T: Eq>(table: &mut HashMap<u64, Weak<T>>, key: u64, value: T) -> Arc<T> {
        if let Some(kept) = table.get(&key).and_then(Weak::upgrade) {
            if *kept == value {
                return kept;
            }
        }
        let value = Arc::new(value);
        table.insert(key, Arc::downgrade(&value));
        value
    }

    fn prune(&mut self) {
        if self.acls.len() + self.principals.len() >= self.prune_at {
            self.acls.retain(|_, kept| kept.strong_count() > 0);
            self.principals.retain(|_, kept| kept.strong_count() > 0);
            self.prune_at = ((self.acls.len() + self.principals.len()) * 2).max(64);
        }
    }
}

/// Whether a principal's connections can share their principal and rights.
fn shareable(principal: &Principal) -> bool {
    !matches!(principal.kind, PrincipalKind::Device { .. })
}

impl Policies {
    /// The principal a connection authenticated as: for a registry client or virtual
    /// broker credential, the copy its other live connections share, if equal.
    pub fn shared_principal(&self, principal: Principal) -> Arc<Principal> {
        if !shareable(&principal) {
            return Arc::new(principal);
        }
        let mut shared = lock(&self.shared);
        shared.prune();
        let key =
            shared
                .hasher
                .hash_one((&principal.tenant_id, principal.id(), &principal.cert_cn));
        SharedRights::share(&mut shared.principals, key, principal)
    }

    /// `acl`, built for `principal`, or an equal one other sessions share.
    fn shared_acl(&self, principal: &Principal, acl: Acl) -> Arc<Acl> {
        if !shareable(principal) {
            return Arc::new(acl);
        }
        let mut shared = lock(&self.shared);
        shared.prune();
        let key = shared.hasher.hash_one(&acl);
        SharedRights::share(&mut shared.acls, key, acl)
    }

    /// The rights of a new connection, registered to follow policy changes. `Err` when the
    /// tenant's policies cannot be read: better no connection than one with wrong rights.
    /// The principal is shared with the connection, not copied.
    pub async fn live_acl(
        &self,
        store: &Store,
        principal: &Arc<Principal>,
        client_id: &str,
    ) -> Result<LiveAcl, iotcore_store::StoreError> {
        let policies = self.tenant(store, &principal.tenant_id).await?;
        let acl = self.shared_acl(principal, acl_for(principal, client_id, &policies));
        let live = LiveAcl::new(principal.clone(), client_id.to_owned(), acl);
        let mut all = lock(&self.live);
        let tenant = all.entry(principal.tenant_id.clone()).or_default();
        if tenant.sessions.len() >= tenant.prune_at {
            tenant.sessions.retain(|w| w.strong_count() > 0);
            tenant.prune_at = (tenant.sessions.len() * 2).max(64);
        }
        tenant.sessions.push(Arc::downgrade(&live.0));
        Ok(live)
    }

    async fn tenant(
        &self,
        store: &Store,
        tenant: &TenantId,
    ) -> Result<Arc<TenantPolicies>, iotcore_store::StoreError> {
        if let Some(policies) = lock(&self.tenants).get(tenant) {
            return Ok(policies.clone());
        }
        self.load(store, tenant).await
    }

    async fn load(
        &self,
        store: &Store,
        tenant: &TenantId,
    ) -> Result<Arc<TenantPolicies>, iotcore_store::StoreError> {
        let policies = Arc::new(TenantPolicies::build(
            store.tenant_attachments(tenant).await?,
        ));
        let mut tenants = lock(&self.tenants);
        if tenants.len() >= MAX_CACHED_TENANTS && !tenants.contains_key(tenant) {
            tenants.clear();
        }
        tenants.insert(tenant.clone(), policies.clone());
        Ok(policies)
    }

    /// The tenant's policies changed: reload them and rebuild the rights of its live
    /// sessions.
    pub async fn refresh_tenant(&self, store: &Store, tenant: &TenantId) {
        let cached = lock(&self.tenants).contains_key(tenant);
        let live = self.live_sessions(tenant);
        if !cached && live.is_empty() {
            return;
        }
        match self.load(store, tenant).await {
            Ok(policies) => {
                for session in live {
                    let principal = session.principal();
                    let acl = acl_for(&principal, &session.0.client_id, &policies);
                    session.set(self.shared_acl(&principal, acl));
                }
            }
            Err(e) => {
                // Keep the old rights rather than none; the next change or reconnect of the
                // listener reloads.
                lock(&self.tenants).remove(tenant);
                tracing::error!(tenant_id = %tenant, error = %e, "reloading policies failed");
            }
        }
    }

    /// Notifications may have been missed: reload every tenant with live sessions.
    pub async fn refresh_all(&self, store: &Store) {
        let tenants: Vec<TenantId> = {
            let mut known: Vec<TenantId> = lock(&self.tenants).keys().cloned().collect();
            known.extend(lock(&self.live).keys().cloned());
            known.sort();
            known.dedup();
            known
        };
        lock(&self.tenants).clear();
        for tenant in tenants {
            self.refresh_tenant(store, &tenant).await;
        }
    }

    /// Principals' attributes may have changed (a device's labels, a registry's defaults):
    /// the live sessions of those in `current` (principal id → kind and defaults) whose
    /// attributes differ get rights built from the new ones.
    pub async fn update_principals(
        &self,
        store: &Store,
        tenant: &TenantId,
        current: &HashMap<String, (PrincipalKind, bool)>,
    ) {
        let changed: Vec<(LiveAcl, &PrincipalKind, bool)> = self
            .live_sessions(tenant)
            .into_iter()
            .filter_map(|session| {
                let p = session.principal();
                let (kind, default_policy) = current.get(p.id())?;
                (p.kind != *kind || p.default_policy != *default_policy).then_some((
                    session,
                    kind,
                    *default_policy,
                ))
            })
            .collect();
        if changed.is_empty() {
            return;
        }
        let Ok(policies) = self.tenant(store, tenant).await else {
            return;
        };
        for (session, kind, default_policy) in changed {
            let principal = {
                let mut p = session
                    .0
                    .principal
                    .write()
                    .unwrap_or_else(|e| e.into_inner());
                let mut changed = Principal::clone(&p);
                changed.kind = kind.clone();
                changed.default_policy = default_policy;
                *p = Arc::new(changed);
                p.clone()
            };
            let acl = acl_for(&principal, &session.0.client_id, &policies);
            session.set(self.shared_acl(&principal, acl));
        }
    }

    fn live_sessions(&self, tenant: &TenantId) -> Vec<LiveAcl> {
        let mut all = lock(&self.live);
        let Some(entry) = all.get_mut(tenant) else {
            return Vec::new();
        };
        entry.sessions.retain(|w| w.strong_count() > 0);
        let live: Vec<LiveAcl> = entry
            .sessions
            .iter()
            .filter_map(Weak::upgrade)
            .map(LiveAcl)
            .collect();
        if live.is_empty() {
            all.remove(tenant);
        }
        live
    }
}

#[cfg(test)]
mod tests;
