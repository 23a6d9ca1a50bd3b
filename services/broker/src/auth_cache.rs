//! What authentication remembers (SPEC §4.1): successful password checks and the
//! principals client certificates resolved to, so that a reconnect storm does not cost one
//! PostgreSQL query and one argon2 verification (or chain verification) per CONNECT, and
//! recent failures, so that guessing passwords is slowed down.
//!
//! All are bounded in entries. Remembered checks are keyed by a keyed hash of the
//! username and password (the key is random per process, so the table is no shortcut to
//! the passwords) or by the certificate's SHA-256 fingerprint, expire after a TTL (and a
//! certificate's at its `not_after`), and are forgotten for a whole tenant when the
//! control plane changes its credentials, devices or the tenant itself.
//!
//! A check that was running while its tenant changed is not remembered: each cache counts
//! the times it forgot something, and an answer read from the store before the last of
//! them may already be out of date.

use crate::x509::CertificateCredential;
use chrono::{DateTime, Utc};
use iotcore_store::auth::PasswordPrincipal;
use iotcore_store::TenantId;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Successful password checks.
pub struct AuthCache {
    key: [u8; 32],
    max_entries: usize,
    ttl: Duration,
    /// The principal, and until when the check may be used.
    entries: Mutex<HashMap<[u8; 32], (PasswordPrincipal, Instant)>>,
    /// How many times entries were forgotten (see the module's comment).
    forgotten: AtomicU64,
}

impl AuthCache {
    pub fn new(max_entries: usize, ttl: Duration) -> AuthCache {
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        AuthCache {
            key,
            max_entries,
            ttl,
            entries: Mutex::default(),
            forgotten: AtomicU64::new(0),
        }
    }

    /// Taken before the store is asked, and given back to [`AuthCache::insert`].
    pub fn generation(&self) -> u64 {
        self.forgotten.load(Ordering::Acquire)
    }

    fn digest(&self, username: &str, password: &[u8]) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(self.key);
        hash.update((username.len() as u64).to_be_bytes());
        hash.update(username.as_bytes());
        hash.update(password);
        hash.finalize().into()
    }

    /// The principal a previous CONNECT with this username and password authenticated as,
    /// if that is still remembered.
    pub fn get(&self, username: &str, password: &[u8]) -> Option<PasswordPrincipal> {
        if self.max_entries == 0 {
            return None;
        }
        let digest = self.digest(username, password);
        let mut entries = lock(&self.entries);
        match entries.get(&digest) {
            Some((principal, until)) if Instant::now() < *until => Some(principal.clone()),
            Some(_) => {
                entries.remove(&digest);
                None
            }
            None => None,
        }
    }

    /// Remembers that this username and password authenticate as `principal`, for the
    /// TTL or until the first of its passwords expires, whichever comes first; unless
    /// something was forgotten since `generation` was taken.
    pub fn insert(
        &self,
        username: &str,
        password: &[u8],
        principal: PasswordPrincipal,
        generation: u64,
    ) {
        if self.max_entries == 0 {
            return;
        }
        let mut life = self.ttl;
        if let Some(expires_at) = principal.expires_at {
            match (expires_at - chrono::Utc::now()).to_std() {
                Ok(left) => life = life.min(left),
                // Already expired (or the clock disagrees): not worth remembering.
                Err(_) => return,
            }
        }
        let digest = self.digest(username, password);
        let mut entries = lock(&self.entries);
        // Read under the lock that forgetting takes too, so none can slip in between.
        if self.generation() != generation {
            return;
        }
        make_room(&mut entries, self.max_entries);
        entries.insert(digest, (principal, Instant::now() + life));
    }

    /// Forgets every check of `tenant`'s principals (its credentials, devices, registries
    /// or the tenant itself changed).
    pub fn forget_tenant(&self, tenant: &TenantId) {
        let mut entries = lock(&self.entries);
        self.forgotten.fetch_add(1, Ordering::AcqRel);
        entries.retain(|_, (principal, _)| principal.tenant_id != *tenant);
    }

    /// Forgets everything (change notifications may have been missed).
    pub fn clear(&self) {
        let mut entries = lock(&self.entries);
        self.forgotten.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }
}

/// Makes room for one more entry in a table of at most `max` entries: drops the expired
/// ones, then (still full) any one, which costs one more lookup later.
fn make_room<K: Clone + Eq + std::hash::Hash, V>(
    entries: &mut HashMap<K, (V, Instant)>,
    max: usize,
) {
    if entries.len() < max {
        return;
    }
    let now = Instant::now();
    entries.retain(|_, (_, until)| now < *until);
    if entries.len() >= max {
        if let Some(evicted) = entries.keys().next().cloned() {
            entries.remove(&evicted);
        }
    }
}

/// What a client certificate resolved to: the principal as the store had it, the
/// credential recorded on the connection, and the subject CN for policies.
#[derive(Clone, Debug)]
pub struct CertifiedPrincipal {
    pub principal: PasswordPrincipal,
    pub credential: CertificateCredential,
    pub common_name: Option<String>,
}

/// Principals that client certificates resolved to, by the SHA-256 fingerprint of the
/// leaf. The TLS handshake still proves each client holds the certificate's key; what is
/// saved is the store's answer and the chain verification. An entry is never used at or
/// after the certificate's `not_after` (the chain's earliest, see
/// [`CertificateCredential::not_after`]).
pub struct CertificateCache {
    max_entries: usize,
    ttl: Duration,
    entries: Mutex<HashMap<String, (CertifiedPrincipal, Instant)>>,
    forgotten: AtomicU64,
}

impl CertificateCache {
    pub fn new(max_entries: usize, ttl: Duration) -> CertificateCache {
        CertificateCache {
            max_entries,
            ttl,
            entries: Mutex::default(),
            forgotten: AtomicU64::new(0),
        }
    }

    /// Taken before the store is asked, and given back to [`CertificateCache::insert`].
    pub fn generation(&self) -> u64 {
        self.forgotten.load(Ordering::Acquire)
    }

    /// What the certificate `fingerprint` resolved to, if that is remembered and the
    /// certificate is still valid at `now`.
    pub fn get(&self, fingerprint: &str, now: DateTime<Utc>) -> Option<CertifiedPrincipal> {
        if self.max_entries == 0 {
            return None;
        }
        let mut entries = lock(&self.entries);
        match entries.get(fingerprint) {
            Some((found, until)) if Instant::now() < *until && now < found.credential.not_after => {
                Some(found.clone())
            }
            Some(_) => {
                entries.remove(fingerprint);
                None
            }
            None => None,
        }
    }

    /// Remembers what `fingerprint` resolved to, for the TTL; unless something was
    /// forgotten since `generation` was taken.
    pub fn insert(&self, fingerprint: &str, found: CertifiedPrincipal, generation: u64) {
        if self.max_entries == 0 {
            return;
        }
        let mut entries = lock(&self.entries);
        if self.generation() != generation {
            return;
        }
        make_room(&mut entries, self.max_entries);
        entries.insert(fingerprint.to_owned(), (found, Instant::now() + self.ttl));
    }

    /// Forgets every certificate of `tenant`'s principals.
    pub fn forget_tenant(&self, tenant: &TenantId) {
        let mut entries = lock(&self.entries);
        self.forgotten.fetch_add(1, Ordering::AcqRel);
        entries.retain(|_, (found, _)| found.principal.tenant_id != *tenant);
    }

    /// Forgets everything (change notifications may have been missed).
    pub fn clear(&self) {
        let mut entries = lock(&self.entries);
        self.forgotten.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }
}

/// Failures are forgotten after this long without another one.
const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Most addresses and usernames whose failures are counted at once.
const MAX_FAILURE_ENTRIES: usize = 100_000;
/// The first delay once the threshold is reached; it doubles with each further failure.
const FIRST_DELAY: Duration = Duration::from_millis(100);
/// Usernames are counted by their first bytes only, to bound memory per entry.
const MAX_USERNAME_KEY: usize = 128;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Source {
    Address(IpAddr),
    Username(String),
}

/// Recent authentication failures per source address and per username.
pub struct FailureThrottle {
    before_delay: u32,
    max_delay: Duration,
    entries: Mutex<HashMap<Source, (u32, Instant)>>,
}

impl FailureThrottle {
    pub fn new(before_delay: u32, max_delay: Duration) -> FailureThrottle {
        FailureThrottle {
            before_delay,
            max_delay,
            entries: Mutex::default(),
        }
    }

    fn sources(address: IpAddr, username: Option<&str>) -> impl Iterator<Item = Source> {
        let username = username.map(|u| {
            let mut end = u.len().min(MAX_USERNAME_KEY);
            while !u.is_char_boundary(end) {
                end -= 1;
            }
            Source::Username(u[..end].to_owned())
        });
        std::iter::once(Source::Address(address)).chain(username)
    }

    /// How long a CONNECT from `address` for `username` waits before it is checked.
    #[cfg(test)]
    pub fn delay(&self, address: IpAddr, username: Option<&str>) -> Duration {
        self.delay_by(address, username).0
    }

    /// How long a CONNECT from `address` for `username` waits, and whether the address's
    /// failures or the username's decided it (`"address"` or `"username"`, the label of
    /// `iotcore_mqtt_auth_throttled_total`).
    pub fn delay_by(&self, address: IpAddr, username: Option<&str>) -> (Duration, &'static str) {
        if self.max_delay.is_zero() {
            return (Duration::ZERO, "address");
        }
        let entries = lock(&self.entries);
        let (failures, by) = Self::sources(address, username)
            .filter_map(|source| entries.get(&source).map(|entry| (source, entry)))
            .filter(|(_, (_, at))| at.elapsed() < FAILURE_WINDOW)
            .map(|(source, (count, _))| match source {
                Source::Address(_) => (*count, "address"),
                Source::Username(_) => (*count, "username"),
            })
            // The address wins a tie: it is what a single guesser controls.
            .fold(
                (0, "address"),
                |best, next| if next.0 > best.0 { next } else { best },
            );
        (self.delay_after(failures), by)
    }

    fn delay_after(&self, failures: u32) -> Duration {
        if failures < self.before_delay.max(1) {
            return Duration::ZERO;
        }
        let doublings = (failures - self.before_delay.max(1)).min(20);
        (FIRST_DELAY * 2u32.pow(doublings)).min(self.max_delay)
    }

    /// Counts a failed authentication.
    pub fn failed(&self, address: IpAddr, username: Option<&str>) {
        let mut entries = lock(&self.entries);
        if entries.len() >= MAX_FAILURE_ENTRIES {
            entries.retain(|_, (_, at)| at.elapsed() < FAILURE_WINDOW);
            if entries.len() >= MAX_FAILURE_ENTRIES {
                // A flood of distinct sources: start over rather than grow.
                entries.clear();
            }
        }
        let now = Instant::now();
        for source in Self::sources(address, username) {
            let entry = entries.entry(source).or_insert((0, now));
            if entry.1.elapsed() >= FAILURE_WINDOW {
                entry.0 = 0;
            }
            entry.0 = entry.0.saturating_add(1);
            entry.1 = now;
        }
    }

    /// A successful authentication clears the username's failures (not the address's,
    /// so that one valid credential does not unlock guessing the others).
    pub fn succeeded(&self, username: Option<&str>) {
        if let Some(username) = username {
            let mut entries = lock(&self.entries);
            for source in Self::sources(IpAddr::from([0, 0, 0, 0]), Some(username)).skip(1) {
                entries.remove(&source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iotcore_store::auth::PrincipalKind;
    use iotcore_store::BrokerId;

    fn principal(tenant: &TenantId) -> PasswordPrincipal {
        PasswordPrincipal {
            tenant_id: tenant.clone(),
            tenant_active: true,
            default_policy: true,
            rules_version: 0,
            kind: PrincipalKind::Broker {
                broker_id: BrokerId::generate(),
            },
            hashes: vec![],
            expires_at: None,
        }
    }

    #[test]
    fn cache_remembers_exact_credentials_within_bounds() {
        let cache = AuthCache::new(2, Duration::from_secs(60));
        let a = TenantId::generate();
        let b = TenantId::generate();
        cache.insert("u1", b"secret", principal(&a), 0);
        assert!(cache.get("u1", b"secret").is_some());
        assert!(cache.get("u1", b"secret2").is_none());
        assert!(cache.get("u2", b"secret").is_none());
        // The length prefix keeps ("u1", "xs") apart from ("u1x", "s").
        cache.insert("u1x", b"s", principal(&b), 0);
        assert!(cache.get("u1", b"xs").is_none());
        cache.insert("u3", b"p", principal(&b), 0);
        assert!(lock(&cache.entries).len() <= 2);
        cache.forget_tenant(&b);
        assert!(cache.get("u3", b"p").is_none());
        assert!(cache.get("u1x", b"s").is_none());
        let off = AuthCache::new(0, Duration::from_secs(60));
        off.insert("u1", b"secret", principal(&a), 0);
        assert!(off.get("u1", b"secret").is_none());
    }

    #[test]
    fn expired_entries_are_not_used() {
        let cache = AuthCache::new(10, Duration::ZERO);
        let a = TenantId::generate();
        cache.insert("u1", b"secret", principal(&a), 0);
        assert!(cache.get("u1", b"secret").is_none());
        // A password that has expired is not remembered; one that will is, until then.
        let cache = AuthCache::new(10, Duration::from_secs(60));
        let expired = PasswordPrincipal {
            expires_at: Some(chrono::Utc::now() - chrono::Duration::seconds(1)),
            ..principal(&a)
        };
        cache.insert("u1", b"secret", expired, 0);
        assert!(cache.get("u1", b"secret").is_none());
        let later = PasswordPrincipal {
            expires_at: Some(chrono::Utc::now() + chrono::Duration::seconds(30)),
            ..principal(&a)
        };
        cache.insert("u2", b"secret", later, 0);
        assert!(cache.get("u2", b"secret").is_some());
    }

    #[test]
    fn failures_slow_down_by_address_and_by_username() {
        let throttle = FailureThrottle::new(3, Duration::from_millis(1000));
        let ip: IpAddr = [10, 0, 0, 1].into();
        let other: IpAddr = [10, 0, 0, 2].into();
        for _ in 0..2 {
            throttle.failed(ip, Some("dev_x"));
        }
        assert_eq!(throttle.delay(ip, Some("dev_x")), Duration::ZERO);
        throttle.failed(ip, Some("dev_x"));
        assert_eq!(throttle.delay(ip, None), FIRST_DELAY);
        // The same username from another address, and another username from the address.
        assert_eq!(throttle.delay(other, Some("dev_x")), FIRST_DELAY);
        assert_eq!(throttle.delay(ip, Some("dev_y")), FIRST_DELAY);
        assert_eq!(throttle.delay(other, Some("dev_y")), Duration::ZERO);
        assert_eq!(throttle.delay_by(ip, Some("dev_y")).1, "address");
        assert_eq!(throttle.delay_by(other, Some("dev_x")).1, "username");
        throttle.failed(ip, Some("dev_x"));
        assert_eq!(throttle.delay(ip, None), FIRST_DELAY * 2);
        for _ in 0..30 {
            throttle.failed(ip, Some("dev_x"));
        }
        assert_eq!(throttle.delay(ip, None), Duration::from_millis(1000));
        throttle.succeeded(Some("dev_x"));
        assert_eq!(throttle.delay(other, Some("dev_x")), Duration::ZERO);
        assert_eq!(throttle.delay(ip, None), Duration::from_millis(1000));
        // Long usernames are counted by a bounded prefix, on a char boundary.
        let long = "é".repeat(200);
        throttle.failed(other, Some(&long));
    }

    fn certified(tenant: &TenantId, not_after: DateTime<Utc>) -> CertifiedPrincipal {
        CertifiedPrincipal {
            principal: principal(tenant),
            credential: CertificateCredential {
                fingerprint: "ab12".into(),
                ca_id: None,
                not_after,
            },
            common_name: Some("board".into()),
        }
    }

    #[test]
    fn certificates_are_remembered_until_their_not_after_and_forgotten_by_tenant() {
        let cache = CertificateCache::new(2, Duration::from_secs(60));
        let (a, b) = (TenantId::generate(), TenantId::generate());
        let now = Utc::now();
        let until = now + chrono::Duration::seconds(30);
        cache.insert("fa", certified(&a, until), cache.generation());
        let hit = cache.get("fa", now).expect("remembered");
        assert_eq!(hit.common_name.as_deref(), Some("board"));
        assert!(cache.get("fb", now).is_none());
        // Never used at or after the certificate's end, whatever the TTL says.
        assert!(cache.get("fa", until).is_none());
        assert!(cache.get("fa", now).is_none(), "and dropped then");

        cache.insert("fa", certified(&a, until), cache.generation());
        cache.insert("fb", certified(&b, until), cache.generation());
        cache.insert("fc", certified(&b, until), cache.generation());
        assert!(lock(&cache.entries).len() <= 2, "bounded");
        cache.forget_tenant(&b);
        assert!(cache.get("fb", now).is_none() && cache.get("fc", now).is_none());

        let off = CertificateCache::new(0, Duration::from_secs(60));
        off.insert("fa", certified(&a, until), off.generation());
        assert!(off.get("fa", now).is_none());
        let short = CertificateCache::new(10, Duration::ZERO);
        short.insert("fa", certified(&a, until), short.generation());
        assert!(short.get("fa", now).is_none(), "past the TTL");
    }

    #[test]
    fn an_answer_read_before_a_change_is_not_remembered() {
        let until = Utc::now() + chrono::Duration::seconds(30);
        let a = TenantId::generate();
        let certificates = CertificateCache::new(10, Duration::from_secs(60));
        let before = certificates.generation();
        // The control plane changes the tenant while the store is being asked.
        certificates.forget_tenant(&a);
        certificates.insert("fa", certified(&a, until), before);
        assert!(certificates.get("fa", Utc::now()).is_none());
        certificates.insert("fa", certified(&a, until), certificates.generation());
        assert!(certificates.get("fa", Utc::now()).is_some());

        let passwords = AuthCache::new(10, Duration::from_secs(60));
        let before = passwords.generation();
        passwords.clear();
        passwords.insert("u1", b"secret", principal(&a), before);
        assert!(passwords.get("u1", b"secret").is_none());
    }
}
