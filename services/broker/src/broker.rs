//! The broker's shared state, its listeners and the task that keeps rule indexes current.

use crate::auth::{Authenticator, Principal};
use crate::auth_cache::{AuthCache, CertificateCache, FailureThrottle};
use crate::limits::{LimitSettings, Limits};
use crate::retained_store::RetainedWriter;
use crate::router::{Namespace, NamespaceRoutes, Router};
use crate::rules::{RuleIndex, RuleLoads, RuleSink};
use crate::session_store::SessionWriter;
use crate::sessions::Sessions;
use crate::transport;
use crate::{BrokerConfig, BrokerError};
use iotcore_store::notify::{Change, ChangeListener};
use iotcore_store::{BrokerId, DeviceId, RegistryId, Store, TenantId};
use iotcore_topic::TopicLimits;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Devices whose registry is remembered at most, per process.
const DEVICE_REGISTRY_CACHE: usize = 100_000;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The rule index a caller of [`Shared::reload_rules`] needs.
#[derive(Clone, Copy)]
enum RulesWanted {
    /// Any generation: the namespace has none yet.
    Any,
    /// At least this generation (the one a principal saw when it authenticated).
    AtLeast(i64),
    /// Read after the rules changed: whatever a load in progress read may be older.
    Fresh,
}

/// Everything connection tasks share.
pub struct Shared {
    pub config: BrokerConfig,
    pub limits: TopicLimits,
    pub router: Router,
    pub sessions: Sessions,
    pub auth: Authenticator,
    /// Tenant quotas and rate limits (SPEC §3.5, §7.3).
    pub quotas: Limits,
    pub rules: RuleSink,
    /// Rule index loads in progress, one per tenant at a time.
    rule_loads: RuleLoads,
    pub status: crate::status::StatusWriter,
    pub retained: RetainedWriter,
    pub sessions_writer: SessionWriter,
    pub store: Store,
    /// Cached policy attachments and the rights of every live session (SPEC §4.2).
    pub policies: crate::policies::Policies,
    /// Which registry a device belongs to, for the registry scope of registry clients'
    /// publishes (SPEC §3.4), so that it is not a query per message. Only answers found are
    /// kept: a device never changes registry and ids are never reused.
    device_registries: Mutex<HashMap<(TenantId, DeviceId), RegistryId>>,
    /// Will publications in flight, waited for at shutdown so that the retained and session
    /// writers still see what they publish.
    pub wills: TaskTracker,
    pub shutdown: CancellationToken,
}

impl Shared {
    /// The namespace's routes, with its rule index brought up to the generation the
    /// principal saw when it authenticated (so a rule created before a device connects
    /// applies to that device's first message).
    pub async fn routes_for(&self, principal: &Principal) -> Arc<NamespaceRoutes> {
        let routes = self.router.namespace(&principal.namespace);
        self.load_retained(&routes).await;
        if let Namespace::Tenant(tenant) = &principal.namespace {
            let current = routes.rule_index().map(|index| index.version);
            if current.is_none_or(|version| version < principal.rules_version) {
                self.reload_rules(
                    tenant,
                    &routes,
                    RulesWanted::AtLeast(principal.rules_version),
                )
                .await;
            }
        }
        routes
    }

    /// The namespace's routes with a rule index loaded, for messages that come from no
    /// client (the API).
    pub async fn routes_for_namespace(&self, namespace: &Namespace) -> Arc<NamespaceRoutes> {
        let routes = self.router.namespace(namespace);
        self.load_retained(&routes).await;
        if let Namespace::Tenant(tenant) = namespace {
            if routes.rule_index().is_none() {
                self.reload_rules(tenant, &routes, RulesWanted::Any).await;
            }
        }
        routes
    }

    /// The registry of `device` in `tenant`, or `None` when there is no such device (or the
    /// store cannot say).
    pub async fn device_registry(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
    ) -> Option<RegistryId> {
        let key = (tenant.clone(), device.clone());
        if let Some(registry) = lock(&self.device_registries).get(&key) {
            return Some(registry.clone());
        }
        let registry = self
            .store
            .device_registry(tenant, device)
            .await
            .ok()
            .flatten()?;
        let mut cache = lock(&self.device_registries);
        // Bounded: start over rather than grow past the limit.
        if cache.len() >= DEVICE_REGISTRY_CACHE {
            cache.clear();
        }
        cache.insert(key, registry.clone());
        Some(registry)
    }

    /// Loads the namespace's retained messages the first time it is used; concurrent
    /// first users wait for the one load.
    async fn load_retained(&self, routes: &NamespaceRoutes) {
        routes
            .retained_loaded
            .get_or_init(|| crate::retained_store::load(&self.store, routes.namespace(), routes))
            .await;
    }

    /// Loads the tenant's rule index unless the index there, once the tenant's load in
    /// progress (if any) has finished, is what `wanted` asks for.
    async fn reload_rules(&self, tenant: &TenantId, routes: &NamespaceRoutes, wanted: RulesWanted) {
        let needed = || match wanted {
            RulesWanted::Any => routes.rule_index().is_none(),
            RulesWanted::AtLeast(version) => routes
                .rule_index()
                .is_none_or(|index| index.version < version),
            RulesWanted::Fresh => true,
        };
        let load = || async {
            match self.store.enabled_rule_routes(tenant).await {
                Ok((version, rules)) => {
                    let index = Arc::new(RuleIndex::build(version, rules));
                    let mut slot = routes.rules.write().unwrap_or_else(|e| e.into_inner());
                    if slot.as_ref().is_none_or(|old| old.version <= version) {
                        *slot = Some(index);
                    }
                }
                Err(e) => tracing::error!(tenant_id = %tenant, error = %e, "loading rules failed"),
            }
        };
        self.rule_loads.load_once(tenant, needed, load).await;
    }
}

/// Runs the broker until `shutdown` is cancelled, then closes every connection.
pub async fn run(
    config: BrokerConfig,
    store: Store,
    shutdown: CancellationToken,
) -> Result<(), BrokerError> {
    let limits = TopicLimits {
        max_length: config.max_topic_length,
        max_levels: config.max_topic_levels,
    };
    // Both writers stop only after every connection has ended, parked its session and
    // published its will (retained wills included).
    let retained_stop = CancellationToken::new();
    let (retained, retained_writer) = RetainedWriter::start(store.clone(), retained_stop.clone());
    let sessions_stop = CancellationToken::new();
    let (sessions_writer, sessions_written) =
        SessionWriter::start(store.clone(), sessions_stop.clone());
    let anonymous_broker = match config.anonymous_broker.as_deref().filter(|b| !b.is_empty()) {
        None => None,
        Some(id) => Some(BrokerId::parse(id).ok_or_else(|| BrokerError::Config {
            key: "mqtt.anonymous_broker",
            message: format!("{id:?} is not a virtual broker id (brk_…)"),
        })?),
    };
    let rules = RuleSink::start(
        store.clone(),
        config.rule_commit_max_batch,
        Duration::from_millis(config.rule_commit_max_wait_ms),
        shutdown.clone(),
    );
    let shared = Arc::new(Shared {
        limits,
        router: Router::default(),
        sessions: Sessions::new(config.max_parked_sessions_per_namespace),
        auth: Authenticator::new(
            store.clone(),
            anonymous_broker,
            AuthCache::new(
                config.auth_cache_entries,
                Duration::from_secs(config.auth_cache_ttl_secs),
            ),
            CertificateCache::new(
                config.auth_cache_entries,
                Duration::from_secs(config.auth_cache_ttl_secs),
            ),
            FailureThrottle::new(
                config.auth_failures_before_delay,
                Duration::from_millis(config.auth_failure_max_delay_ms),
            ),
        ),
        quotas: Limits::new(LimitSettings {
            defaults: config.tenant_quotas,
            connects_per_second: config.max_connects_per_second_per_tenant,
            auth_in_flight: config.max_auth_in_flight_per_tenant,
        }),
        rules,
        rule_loads: RuleLoads::default(),
        status: crate::status::StatusWriter::start(store.clone(), shutdown.clone()),
        retained,
        sessions_writer,
        store,
        policies: crate::policies::Policies::default(),
        device_registries: Mutex::default(),
        wills: TaskTracker::new(),
        shutdown: shutdown.clone(),
        config,
    });
    crate::metrics::count_retained_at_scrape(&shared);
    crate::metrics::register();
    tokio::spawn(follow_rule_changes(shared.clone()));
    tokio::spawn(crate::api_publishes::relay(shared.clone()));
    tokio::spawn({
        let shared = shared.clone();
        async move { shared.sessions.expire(shared.shutdown.clone()).await }
    });

    // Before any client can connect, so that a returning client finds its session.
    crate::session_store::restore(&shared).await?;

    let tracker = TaskTracker::new();
    // One limit for the whole process, whichever listener a client comes through.
    let permits = Arc::new(Semaphore::new(shared.config.max_connections));
    for listener in transport::bind(&shared.config).await? {
        tracing::info!(
            addr = %listener.addr,
            transport = %listener.transport,
            proxy_protocol = listener.proxy_protocol,
            "listening"
        );
        tracker.spawn(accept(
            listener,
            shared.clone(),
            permits.clone(),
            tracker.clone(),
        ));
    }
    shutdown.cancelled().await;
    tracker.close();
    // Connections send their DISCONNECT and end on the same token, and wills (delayed ones
    // at once) are published; give them a bounded time.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        tracker.wait().await;
        shared.wills.close();
        shared.wills.wait().await;
    })
    .await;
    // Retained messages set until now (wills included) and the sessions parked as their
    // connections ended are written before the process ends.
    // Together within the process's stop grace (10 s, 5 of them for the connections above).
    retained_stop.cancel();
    sessions_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(4), async {
        let _ = tokio::join!(retained_writer, sessions_written);
    })
    .await;
    Ok(())
}

/// Accepts connections on one listener. Each connection runs in its own task, holding one
/// permit of the connection limit, and does its TLS or WebSocket handshake there; the
/// accept loop itself never waits on a client.
async fn accept(
    listener: transport::Listener,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => return },
            _ = shared.shutdown.cancelled() => return,
        };
        let accepted = tokio::select! {
            accepted = listener.socket.accept() => accepted,
            _ = shared.shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(10);
                let _ = stream.set_nodelay(true);
                let (transport, shared) = (listener.transport.clone(), shared.clone());
                let proxy_protocol = listener.proxy_protocol;
                tracker.spawn(async move {
                    transport::serve(transport, proxy_protocol, stream, peer, shared).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Typically EMFILE: wait instead of spinning, then carry on.
                tracing::warn!(addr = %listener.addr, error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Keeps loaded rule indexes current as the control plane changes rules.
async fn follow_rule_changes(shared: Arc<Shared>) {
    loop {
        let mut listener = loop {
            match ChangeListener::connect(&shared.store).await {
                Ok(listener) => break listener,
                Err(e) => {
                    tracing::warn!(error = %e, "listening for changes failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shared.shutdown.cancelled() => return,
                    }
                }
            }
        };
        loop {
            let change = tokio::select! {
                change = listener.recv() => change,
                _ = shared.shutdown.cancelled() => return,
            };
            match change {
                Ok(Some(Change::Rules { tenant_id })) => {
                    let namespace = Namespace::Tenant(tenant_id.clone());
                    if let Some((_, routes)) = shared
                        .router
                        .loaded()
                        .into_iter()
                        .find(|(n, _)| *n == namespace)
                    {
                        shared
                            .reload_rules(&tenant_id, &routes, RulesWanted::Fresh)
                            .await;
                    }
                }
                Ok(Some(Change::Policies { tenant_id })) => {
                    shared
                        .policies
                        .refresh_tenant(&shared.store, &tenant_id)
                        .await;
                }
                Ok(Some(Change::Principals { tenant_id })) => {
                    shared.auth.forget_tenant(&tenant_id);
                    // Quota changes come with this notification too.
                    shared.quotas.refresh(&shared.store, Some(&tenant_id)).await;
                    recheck_principals(&shared, &tenant_id).await;
                }
                // Notifications may have been missed: reload every loaded index.
                Ok(None) => {
                    shared.auth.forget_all();
                    shared.quotas.refresh(&shared.store, None).await;
                    shared.policies.refresh_all(&shared.store).await;
                    for (namespace, routes) in shared.router.loaded() {
                        if let Namespace::Tenant(tenant) = namespace {
                            shared
                                .reload_rules(&tenant, &routes, RulesWanted::Fresh)
                                .await;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "change listener failed; reconnecting");
                    break;
                }
            }
        }
    }
}

/// Disconnects the live connections of `tenant` whose principal is gone, disabled or out
/// of passwords, or whose tenant is suspended (SPEC §4.1). A principal that still has
/// other passwords stays connected: which password a connection used is not kept.
async fn recheck_principals(shared: &Shared, tenant: &TenantId) {
    // A device's labels or its registry's defaults may have changed: applied to the
    // rights of live sessions in one pass at the end.
    let mut current = HashMap::new();
    for principal in shared.sessions.live_principals(tenant) {
        if let Some(rechecked) = crate::x509::recheck(&shared.store, tenant, &principal).await {
            if let Some((id, kind, default_policy)) = rechecked.current {
                current.insert(id, (kind, default_policy));
            }
            if !rechecked.valid {
                tracing::info!(tenant_id = %tenant, principal, "certificate no longer valid; disconnecting");
                shared.sessions.revoke(tenant, &principal);
            }
            continue;
        }
        let valid = match shared.store.find_password_principal(&principal).await {
            Ok(Some(found)) => {
                current.insert(
                    principal.clone(),
                    (found.kind.clone(), found.default_policy),
                );
                found.tenant_active
                    && !matches!(
                        found.kind,
                        iotcore_store::auth::PrincipalKind::Device { enabled: false, .. }
                    )
                    && (!found.hashes.is_empty()
                        || shared.config.anonymous_broker.as_deref() == Some(principal.as_str()))
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(error = %e, "re-checking a principal failed; left connected");
                true
            }
        };
        if !valid {
            tracing::info!(tenant_id = %tenant, principal, "credential no longer valid; disconnecting");
            shared.sessions.revoke(tenant, &principal);
        }
    }
    shared
        .policies
        .update_principals(&shared.store, tenant, &current)
        .await;
}
