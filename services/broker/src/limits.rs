//! Rate and count limits of SPEC §3.5 and the tenant quotas of SPEC §7.3, as the broker
//! enforces them: connections per tenant, CONNECTs per second and authentications in flight
//! per tenant (checked before the password hash, so that one tenant's reconnect storm cannot
//! use up the hashing threads every tenant needs), and messages and bytes per second per
//! tenant and per client.
//!
//! Every check is O(1) and allocates nothing: a token bucket is two numbers behind a short
//! lock (or none, for the client's own bucket), quotas are atomics. A tenant's quotas are
//! read from the store once, when its first client connects, and again only when the
//! control plane changes them (the store's `Principals` notification), never per message.

use iotcore_store::{Store, TenantId};
use iotcore_telemetry::metrics::mqtt::{DROPPED, DROP_QUOTA};
use iotcore_telemetry::{Counter, Family};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::Instant;

/// The default quotas of every tenant, from the control plane's `[api.quotas]` section (the
/// binary copies them here, so that the API shows exactly what the broker enforces).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantQuotaDefaults {
    /// Devices a tenant may have; the broker checks it when it registers a device just in
    /// time by its certificate (SPEC §4.1 b), as the API does when one is created.
    pub max_devices: u64,
    pub max_connections: u64,
    pub max_messages_per_second: u64,
    pub max_bytes_per_second: u64,
    pub max_retained_messages: u64,
}

impl Default for TenantQuotaDefaults {
    fn default() -> Self {
        TenantQuotaDefaults {
            max_devices: 100_000,
            max_connections: 100_000,
            max_messages_per_second: 10_000,
            max_bytes_per_second: 64 * 1024 * 1024,
            max_retained_messages: 100_000,
        }
    }
}

/// A limit that was hit, for the reason code, the log and the refusal counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The tenant has as many connections as its quota allows (0x97).
    TenantConnections,
    /// The tenant's clients connect faster than `mqtt.max_connects_per_second_per_tenant`
    /// (0x9F).
    TenantConnectRate,
    /// The tenant already has `mqtt.max_auth_in_flight_per_tenant` CONNECTs being
    /// authenticated (0x89, server busy).
    TenantAuthInFlight,
    /// The client publishes faster than `mqtt.max_publishes_per_second_per_client`
    /// (DISCONNECT 0x96).
    ClientPublishRate,
    /// The tenant's clients publish more messages per second than its quota (0x97).
    TenantMessageRate,
    /// The tenant's clients publish more bytes per second than its quota (0x97).
    TenantByteRate,
    /// A namespace of the tenant holds as many retained messages as its quota allows: the
    /// message is delivered but not retained.
    TenantRetained,
    /// The tenant has as many devices as its quota allows, so a certificate cannot register
    /// a new one just in time (0x97).
    TenantDevices,
}

/// Refusals at a limit, by tenant and [`Refusal::as_str`] (`deploy/README.md`, metrics).
static REFUSALS: LazyLock<Family<Counter>> = LazyLock::new(|| {
    iotcore_telemetry::counter(
        "iotcore_mqtt_limit_refusals_total",
        "CONNECTs, messages and retained messages refused at a limit or tenant quota",
        &["tenant", "limit"],
    )
});

impl Refusal {
    const COUNT: usize = 8;
    const ALL: [Refusal; Refusal::COUNT] = [
        Refusal::TenantConnections,
        Refusal::TenantConnectRate,
        Refusal::TenantAuthInFlight,
        Refusal::ClientPublishRate,
        Refusal::TenantMessageRate,
        Refusal::TenantByteRate,
        Refusal::TenantRetained,
        Refusal::TenantDevices,
    ];
    /// The name used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::TenantConnections => "tenant_connections",
            Refusal::TenantConnectRate => "tenant_connect_rate",
            Refusal::TenantAuthInFlight => "tenant_auth_in_flight",
            Refusal::ClientPublishRate => "client_publish_rate",
            Refusal::TenantMessageRate => "tenant_message_rate",
            Refusal::TenantByteRate => "tenant_byte_rate",
            Refusal::TenantRetained => "tenant_retained",
            Refusal::TenantDevices => "tenant_devices",
        }
    }

    /// The MQTT 5 reason code that tells the client which limit it hit.
    pub fn reason_code(self) -> iotcore_codec::ReasonCode {
        use iotcore_codec::ReasonCode;
        match self {
            // 0x97 is also the code a PUBACK or PUBREC can carry for a refused message
            // (0x96 is a DISCONNECT reason only).
            Refusal::TenantConnections
            | Refusal::TenantMessageRate
            | Refusal::TenantByteRate
            | Refusal::TenantRetained
            | Refusal::TenantDevices => ReasonCode::QUOTA_EXCEEDED,
            Refusal::TenantConnectRate => ReasonCode::CONNECTION_RATE_EXCEEDED,
            Refusal::TenantAuthInFlight => ReasonCode::SERVER_BUSY,
            Refusal::ClientPublishRate => ReasonCode::MESSAGE_RATE_TOO_HIGH,
        }
    }
}

/// A token bucket that holds at most one second's worth of tokens: a client may burst up to
/// its rate, then continues at the rate. A rate of 0 means unlimited.
#[derive(Debug)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u64) -> TokenBucket {
        TokenBucket {
            tokens: rate as f64,
            last: Instant::now(),
        }
    }

    /// Takes `cost` tokens if there are that many (refilled at `rate` per second since the
    /// last call). A cost larger than a whole second's tokens passes when the bucket is full,
    /// so that one message bigger than the byte rate is slowed down, not refused forever.
    pub fn take(&mut self, rate: u64, cost: u64, now: Instant) -> bool {
        if rate == 0 {
            return true;
        }
        let capacity = rate as f64;
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * capacity).min(capacity);
        let cost = (cost as f64).min(capacity);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

/// A token bucket shared by every connection of a tenant, without a lock: the same
/// bucket as [`TokenBucket`] (one second's worth of tokens at most), kept as the time at
/// which it would be full again (the generic cell rate algorithm) in one atomic, so that
/// publishers on every core charge it with a compare-and-swap.
#[derive(Debug)]
pub struct SharedBucket {
    /// When the bucket is full again, in nanoseconds since `origin`; at or before now
    /// when it is full.
    full_at: AtomicU64,
    origin: Instant,
}

const SECOND_NANOS: u64 = 1_000_000_000;

impl SharedBucket {
    pub fn new() -> SharedBucket {
        SharedBucket {
            full_at: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }

    /// As [`TokenBucket::take`]: takes `cost` tokens if there are that many, refilled at
    /// `rate` per second; a cost larger than a second's tokens passes when the bucket is
    /// full. A rate of 0 means unlimited.
    pub fn take(&self, rate: u64, cost: u64, now: Instant) -> bool {
        if rate == 0 {
            return true;
        }
        let now = u64::try_from(now.saturating_duration_since(self.origin).as_nanos())
            .unwrap_or(u64::MAX - SECOND_NANOS);
        // The time `cost` tokens take to come back, at most a second.
        let refill =
            u64::try_from(u128::from(cost.min(rate)) * u128::from(SECOND_NANOS) / u128::from(rate))
                .unwrap_or(SECOND_NANOS);
        let mut full_at = self.full_at.load(Ordering::Relaxed);
        loop {
            // The bucket holds `(now + 1 s - full_at) × rate` tokens, at most `rate`.
            let after = full_at.max(now).saturating_add(refill);
            if after > now.saturating_add(SECOND_NANOS) {
                return false;
            }
            match self.full_at.compare_exchange_weak(
                full_at,
                after,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(current) => full_at = current,
            }
        }
    }
}

impl Default for SharedBucket {
    fn default() -> Self {
        SharedBucket::new()
    }
}

/// The live limits of one tenant in this process.
#[derive(Debug)]
pub struct TenantLimits {
    max_connections: AtomicU64,
    max_messages_per_second: AtomicU64,
    max_bytes_per_second: AtomicU64,
    max_retained_messages: AtomicU64,
    connections: AtomicU64,
    auth_in_flight: AtomicUsize,
    connects: Mutex<TokenBucket>,
    /// Charged by every PUBLISH of the tenant's clients: no lock.
    messages: SharedBucket,
    bytes: SharedBucket,
    /// The tenant's series, resolved once so that counting is one atomic add.
    refusals: [Counter; Refusal::COUNT],
    /// QoS 0 messages dropped at a tenant rate quota.
    pub dropped_quota: Counter,
}

impl TenantLimits {
    fn new(tenant: &str, quotas: TenantQuotaDefaults, connect_rate: u64) -> TenantLimits {
        TenantLimits {
            refusals: Refusal::ALL.map(|refusal| REFUSALS.with(&[tenant, refusal.as_str()])),
            dropped_quota: DROPPED.with(&[tenant, DROP_QUOTA]),
            max_connections: AtomicU64::new(quotas.max_connections),
            max_messages_per_second: AtomicU64::new(quotas.max_messages_per_second),
            max_bytes_per_second: AtomicU64::new(quotas.max_bytes_per_second),
            max_retained_messages: AtomicU64::new(quotas.max_retained_messages),
            connections: AtomicU64::new(0),
            auth_in_flight: AtomicUsize::new(0),
            connects: Mutex::new(TokenBucket::new(connect_rate)),
            messages: SharedBucket::new(),
            bytes: SharedBucket::new(),
        }
    }

    fn set_quotas(&self, quotas: TenantQuotaDefaults) {
        self.max_connections
            .store(quotas.max_connections, Ordering::Relaxed);
        self.max_messages_per_second
            .store(quotas.max_messages_per_second, Ordering::Relaxed);
        self.max_bytes_per_second
            .store(quotas.max_bytes_per_second, Ordering::Relaxed);
        self.max_retained_messages
            .store(quotas.max_retained_messages, Ordering::Relaxed);
    }

    /// The retained messages a namespace of this tenant may hold.
    pub fn max_retained(&self) -> usize {
        usize::try_from(self.max_retained_messages.load(Ordering::Relaxed)).unwrap_or(usize::MAX)
    }

    /// Counts a connection of the tenant, or refuses it at the tenant's quota. The count
    /// goes down when the returned guard is dropped.
    pub fn open_connection(self: &Arc<Self>) -> Result<ConnectionSlot, Refusal> {
        let max = self.max_connections.load(Ordering::Relaxed);
        let previous = self.connections.fetch_add(1, Ordering::AcqRel);
        if previous >= max {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::TenantConnections);
        }
        Ok(ConnectionSlot {
            tenant: self.clone(),
        })
    }

    /// Charges one published message of `bytes` bytes to the tenant's rates. A quota of 0
    /// allows nothing (an operator's way to stop a tenant's traffic).
    pub fn charge_publish(&self, bytes: usize, now: Instant) -> Result<(), Refusal> {
        let rate = self.max_messages_per_second.load(Ordering::Relaxed);
        if rate == 0 || !self.messages.take(rate, 1, now) {
            return Err(Refusal::TenantMessageRate);
        }
        let rate = self.max_bytes_per_second.load(Ordering::Relaxed);
        if rate == 0 || !self.bytes.take(rate, bytes as u64, now) {
            return Err(Refusal::TenantByteRate);
        }
        Ok(())
    }
}

/// One counted connection of a tenant; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnectionSlot {
    tenant: Arc<TenantLimits>,
}

impl ConnectionSlot {
    pub fn tenant(&self) -> &Arc<TenantLimits> {
        &self.tenant
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.tenant.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An authentication of the tenant in progress; dropping it lets the next one in.
#[derive(Debug)]
pub struct AuthPermit {
    tenant: Arc<TenantLimits>,
}

impl Drop for AuthPermit {
    fn drop(&mut self) {
        self.tenant.auth_in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The settings of [`Limits`] that come from `[mqtt]`.
#[derive(Debug, Clone, Copy)]
pub struct LimitSettings {
    pub defaults: TenantQuotaDefaults,
    pub connects_per_second: u64,
    pub auth_in_flight: usize,
}

/// A first read of a tenant's quotas, shared by every CONNECT of the tenant that arrives
/// while it runs; it holds the quotas and the [`Limits::changes`] count it started at.
type QuotaRead = Arc<tokio::sync::OnceCell<(u64, TenantQuotaDefaults)>>;

/// The limits of every tenant with clients in this process.
pub struct Limits {
    settings: LimitSettings,
    tenants: RwLock<HashMap<TenantId, Arc<TenantLimits>>>,
    /// First reads in progress, so that a storm of a tenant's first CONNECTs is one query,
    /// not one per CONNECT until the first answer arrives.
    reading: Mutex<HashMap<TenantId, QuotaRead>>,
    /// Refreshes so far: a first read that a refresh overlapped may have read the quotas
    /// from before the change, and reads them again.
    changes: AtomicU64,
}

impl Limits {
    pub fn new(settings: LimitSettings) -> Limits {
        Limits {
            settings,
            tenants: RwLock::default(),
            reading: Mutex::default(),
            changes: AtomicU64::new(0),
        }
    }

    /// The limits of `tenant`, reading its quotas from the store the first time (once,
    /// however many of its clients connect meanwhile). A store that cannot answer leaves
    /// the defaults in force until the next change notification.
    pub async fn tenant(&self, store: &Store, tenant: &TenantId) -> Arc<TenantLimits> {
        self.tenant_or_read(tenant, || self.quotas_of(store, tenant))
            .await
    }

    async fn tenant_or_read<F, Fut>(&self, tenant: &TenantId, read_quotas: F) -> Arc<TenantLimits>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = TenantQuotaDefaults>,
    {
        if let Some(limits) = read(&self.tenants).get(tenant) {
            return limits.clone();
        }
        let first_read = {
            let mut reading = lock(&self.reading);
            // Again under the lock: a read that finished meanwhile published the tenant
            // before it left `reading`.
            if let Some(limits) = read(&self.tenants).get(tenant) {
                return limits.clone();
            }
            reading.entry(tenant.clone()).or_default().clone()
        };
        // If the connection that runs the read goes away, a waiting one runs it instead.
        let (started_at, quotas) = *first_read
            .get_or_init(|| async {
                let changes = self.changes.load(Ordering::Acquire);
                (changes, read_quotas().await)
            })
            .await;
        let limits = write(&self.tenants)
            .entry(tenant.clone())
            .or_insert_with(|| {
                Arc::new(TenantLimits::new(
                    tenant.as_str(),
                    quotas,
                    self.settings.connects_per_second,
                ))
            })
            .clone();
        let finished_it = {
            let mut reading = lock(&self.reading);
            let ours = reading
                .get(tenant)
                .is_some_and(|r| Arc::ptr_eq(r, &first_read));
            if ours {
                reading.remove(tenant);
            }
            ours
        };
        // A refresh that ran while the tenant was not yet published skipped it.
        if finished_it && self.changes.load(Ordering::Acquire) != started_at {
            limits.set_quotas(read_quotas().await);
        }
        limits
    }

    /// The limits of `tenant` if one of its clients connected to this process.
    pub fn loaded(&self, tenant: &TenantId) -> Option<Arc<TenantLimits>> {
        read(&self.tenants).get(tenant).cloned()
    }

    /// Re-reads the quotas of `tenant` (after the control plane changed them), or of every
    /// loaded tenant (`None`: notifications may have been missed).
    pub async fn refresh(&self, store: &Store, tenant: Option<&TenantId>) {
        self.refresh_with(tenant, |id: TenantId| async move {
            self.quotas_of(store, &id).await
        })
        .await
    }

    async fn refresh_with<F, Fut>(&self, tenant: Option<&TenantId>, read_quotas: F)
    where
        F: Fn(TenantId) -> Fut,
        Fut: std::future::Future<Output = TenantQuotaDefaults>,
    {
        self.changes.fetch_add(1, Ordering::AcqRel);
        let loaded: Vec<(TenantId, Arc<TenantLimits>)> = read(&self.tenants)
            .iter()
            .filter(|(id, _)| tenant.is_none_or(|t| t == *id))
            .map(|(id, limits)| (id.clone(), limits.clone()))
            .collect();
        for (id, limits) in loaded {
            limits.set_quotas(read_quotas(id).await);
        }
    }

    async fn quotas_of(&self, store: &Store, tenant: &TenantId) -> TenantQuotaDefaults {
        let defaults = self.settings.defaults;
        match store.get_quota_overrides(tenant).await {
            Ok(own) => TenantQuotaDefaults {
                max_devices: own.max_devices.unwrap_or(defaults.max_devices),
                max_connections: own.max_connections.unwrap_or(defaults.max_connections),
                max_messages_per_second: own
                    .max_messages_per_second
                    .unwrap_or(defaults.max_messages_per_second),
                max_bytes_per_second: own
                    .max_bytes_per_second
                    .unwrap_or(defaults.max_bytes_per_second),
                max_retained_messages: own
                    .max_retained_messages
                    .unwrap_or(defaults.max_retained_messages),
            },
            Err(e) => {
                tracing::warn!(tenant_id = %tenant, error = %e, "reading quotas failed; defaults apply");
                defaults
            }
        }
    }

    /// The configured default of the tenant device quota (`api.quotas.max_devices`), for
    /// tenants that do not override it.
    pub fn default_max_devices(&self) -> u64 {
        self.settings.defaults.max_devices
    }

    /// Admits one CONNECT of the tenant to authentication: within its CONNECT rate and its
    /// authentications in flight. The permit is held while the password is checked.
    pub fn admit_connect(&self, tenant: &Arc<TenantLimits>) -> Result<AuthPermit, Refusal> {
        let previous = tenant.auth_in_flight.fetch_add(1, Ordering::AcqRel);
        let permit = AuthPermit {
            tenant: tenant.clone(),
        };
        if self.settings.auth_in_flight > 0 && previous >= self.settings.auth_in_flight {
            return Err(Refusal::TenantAuthInFlight);
        }
        if !lock(&tenant.connects).take(self.settings.connects_per_second, 1, Instant::now()) {
            return Err(Refusal::TenantConnectRate);
        }
        Ok(permit)
    }
}

impl TenantLimits {
    /// Counts a refusal of one of the tenant's clients and logs it.
    pub fn refused(&self, refusal: Refusal) {
        if let Some(counter) = self.refusals.get(refusal as usize) {
            counter.inc();
        }
        tracing::debug!(limit = refusal.as_str(), "limit reached; refused");
    }

    /// Refusals of `refusal`'s kind counted for this tenant.
    #[cfg(test)]
    pub fn refusals(&self, refusal: Refusal) -> u64 {
        self.refusals.get(refusal as usize).map_or(0, |c| c.get())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn tenant(quotas: TenantQuotaDefaults) -> Arc<TenantLimits> {
        Arc::new(TenantLimits::new(TenantId::generate().as_str(), quotas, 2))
    }

    #[test]
    fn a_bucket_allows_its_rate_then_refills_over_time() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(2);
        assert!(bucket.take(2, 1, start));
        assert!(bucket.take(2, 1, start));
        assert!(!bucket.take(2, 1, start), "a third in the same instant");
        assert!(bucket.take(2, 1, start + Duration::from_millis(500)));
        assert!(!bucket.take(2, 1, start + Duration::from_millis(500)));
        // Idle time never banks more than one second's worth.
        let later = start + Duration::from_secs(60);
        assert!(bucket.take(2, 1, later) && bucket.take(2, 1, later));
        assert!(!bucket.take(2, 1, later));
        assert!(bucket.take(0, u64::MAX, later), "rate 0 is unlimited");
    }

    #[test]
    fn a_cost_above_the_rate_passes_only_with_a_full_bucket() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(100);
        assert!(bucket.take(100, 1000, start));
        assert!(!bucket.take(100, 1, start));
    }

    #[test]
    fn connections_are_counted_up_to_the_quota_and_freed_on_drop() {
        let limits = tenant(TenantQuotaDefaults {
            max_connections: 1,
            ..TenantQuotaDefaults::default()
        });
        let first = limits.open_connection().expect("first");
        assert_eq!(
            limits.open_connection().err(),
            Some(Refusal::TenantConnections)
        );
        drop(first);
        assert!(limits.open_connection().is_ok());
    }

    #[test]
    fn authentications_in_flight_are_bounded_per_tenant_only() {
        let limits = Limits::new(LimitSettings {
            defaults: TenantQuotaDefaults::default(),
            connects_per_second: 0,
            auth_in_flight: 1,
        });
        let (a, b) = (
            tenant(TenantQuotaDefaults::default()),
            tenant(TenantQuotaDefaults::default()),
        );
        let held = limits.admit_connect(&a).expect("first of a");
        assert_eq!(
            limits.admit_connect(&a).err(),
            Some(Refusal::TenantAuthInFlight)
        );
        assert!(
            limits.admit_connect(&b).is_ok(),
            "another tenant is not held up"
        );
        drop(held);
        assert!(limits.admit_connect(&a).is_ok());
    }

    #[test]
    fn connects_beyond_the_rate_are_refused() {
        let limits = Limits::new(LimitSettings {
            defaults: TenantQuotaDefaults::default(),
            connects_per_second: 2,
            auth_in_flight: 0,
        });
        let a = tenant(TenantQuotaDefaults::default());
        assert!(limits.admit_connect(&a).is_ok());
        assert!(limits.admit_connect(&a).is_ok());
        assert_eq!(
            limits.admit_connect(&a).err(),
            Some(Refusal::TenantConnectRate)
        );
        a.refused(Refusal::TenantConnectRate);
        assert_eq!(a.refusals(Refusal::TenantConnectRate), 1);
    }

    fn limits() -> Limits {
        Limits::new(LimitSettings {
            defaults: TenantQuotaDefaults::default(),
            connects_per_second: 0,
            auth_in_flight: 0,
        })
    }

    fn with_connections(max_connections: u64) -> TenantQuotaDefaults {
        TenantQuotaDefaults {
            max_connections,
            ..TenantQuotaDefaults::default()
        }
    }

    #[tokio::test]
    async fn a_storm_of_first_connects_reads_the_tenant_quotas_once() {
        use futures_util::FutureExt;
        let limits = limits();
        let tenant = TenantId::generate();
        let reads = AtomicUsize::new(0);
        let answer = tokio::sync::Semaphore::new(0);
        let read_quotas = || async {
            reads.fetch_add(1, Ordering::SeqCst);
            let _ = answer.acquire().await;
            with_connections(7)
        };
        let mut connects = Box::pin(futures_util::future::join_all(
            (0..50).map(|_| limits.tenant_or_read(&tenant, read_quotas)),
        ));
        assert!(
            (&mut connects).now_or_never().is_none(),
            "every CONNECT waits for the store"
        );
        answer.add_permits(1);
        let all = connects.await;
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        assert!(all.iter().all(|l| Arc::ptr_eq(l, &all[0])));
        assert_eq!(all[0].max_connections.load(Ordering::Relaxed), 7);
        limits.tenant_or_read(&tenant, read_quotas).await;
        assert_eq!(reads.load(Ordering::SeqCst), 1, "then answered from memory");
    }

    #[tokio::test]
    async fn a_change_during_the_first_read_is_read_again() {
        use futures_util::FutureExt;
        let limits = limits();
        let tenant = TenantId::generate();
        let reads = AtomicUsize::new(0);
        let answer = tokio::sync::Semaphore::new(0);
        let read_quotas = || async {
            let n = reads.fetch_add(1, Ordering::SeqCst);
            let _ = answer.acquire().await;
            with_connections(if n == 0 { 1 } else { 5 })
        };
        let mut first = Box::pin(limits.tenant_or_read(&tenant, read_quotas));
        assert!((&mut first).now_or_never().is_none());
        // The notification of a change arrives while the tenant is not loaded yet: there
        // is nothing to refresh.
        limits
            .refresh_with(Some(&tenant), |_| async { unreachable!("not loaded yet") })
            .await;
        answer.add_permits(1);
        let loaded = first.await;
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        assert_eq!(loaded.max_connections.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn a_shared_bucket_refills_at_its_rate_and_holds_a_second_at_most() {
        let bucket = SharedBucket::new();
        let start = Instant::now();
        assert!((0..10).all(|_| bucket.take(10, 1, start)), "full at first");
        assert!(!bucket.take(10, 1, start));
        let later = start + Duration::from_millis(250);
        assert!(bucket.take(10, 2, later) && !bucket.take(10, 1, later));
        // Long idle: still one second's worth, no more.
        let idle = start + Duration::from_secs(60);
        assert!((0..10).all(|_| bucket.take(10, 1, idle)));
        assert!(!bucket.take(10, 1, idle));
        // More than a second's worth passes when full only.
        let full = idle + Duration::from_secs(1);
        assert!(bucket.take(10, 500, full) && !bucket.take(10, 1, full));
        assert!(bucket.take(0, u64::MAX, full), "0: unlimited");
    }

    /// Charged from many threads at once, the bucket gives out exactly its tokens.
    #[test]
    fn a_shared_bucket_gives_out_no_more_than_its_tokens_across_threads() {
        let bucket = Arc::new(SharedBucket::new());
        let now = Instant::now();
        let taken: usize = (0..4)
            .map(|_| {
                let bucket = bucket.clone();
                std::thread::spawn(move || (0..1000).filter(|_| bucket.take(2000, 1, now)).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|thread| thread.join().unwrap_or(0))
            .sum();
        assert_eq!(taken, 2000);
    }

    #[test]
    fn tenant_message_and_byte_rates_are_charged_together() {
        let now = Instant::now();
        let limits = tenant(TenantQuotaDefaults {
            max_messages_per_second: 3,
            max_bytes_per_second: 100,
            ..TenantQuotaDefaults::default()
        });
        assert!(limits.charge_publish(60, now).is_ok());
        assert_eq!(
            limits.charge_publish(60, now).err(),
            Some(Refusal::TenantByteRate)
        );
        assert!(limits.charge_publish(10, now).is_ok());
        assert_eq!(
            limits.charge_publish(1, now).err(),
            Some(Refusal::TenantMessageRate)
        );
        limits.set_quotas(TenantQuotaDefaults {
            max_messages_per_second: 0,
            ..TenantQuotaDefaults::default()
        });
        assert_eq!(
            limits.charge_publish(1, now + Duration::from_secs(5)).err(),
            Some(Refusal::TenantMessageRate),
            "a quota of 0 allows nothing"
        );
    }
}
