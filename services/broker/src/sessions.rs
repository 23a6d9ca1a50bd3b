//! Who holds which client id, and the sessions of clients that are away.
//!
//! - A second connection with the same client id takes the session over and closes the
//!   first (SPEC §3.1, MQTT-3.1.4-3); it waits for the first to finish so that it can
//!   resume what the first leaves behind.
//! - A persistent session (MQTT 5 Session Expiry Interval > 0, or 3.1.1 Clean Session 0) is
//!   parked when its connection ends: its subscriptions stay in the router and its bounded
//!   mailbox keeps filling, until the client comes back or the session expires
//!   (MQTT-3.1.2-23, MQTT-4.1.0-1).
//! - The connection taken over parks its session only while the new one still waits for
//!   it. Once the new connection has settled its session (resumed a parked one or, having
//!   waited long enough, started afresh), a late park from the old one is abandoned, even
//!   after the new connection has itself ended: it would otherwise replace the newer
//!   session and, stored, overwrite its rows.
//! - Delayed wills wait here to learn whether their client comes back (MQTT-3.1.3-9).
//! - Parked sessions are bounded per namespace (`mqtt.max_parked_sessions_per_namespace`):
//!   clients choosing random client ids (virtual brokers allow any) could otherwise grow
//!   memory and the session store without limit. Beyond the bound the session that would
//!   expire first is ended early — it is the one its client cared least to keep, and the
//!   newest sessions, whose clients are likely to come back, stay.
//! - Every change of a persistent session is recorded in its journal
//!   ([`crate::session_store`]), so the session survives a restart.

use crate::mailbox::Queue;
use crate::outbound::Outbound;
use crate::router::{ConnectionId, Mailbox, Namespace, NamespaceRoutes};
use iotcore_topic::Subscription;
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

type Key = (Namespace, String);

/// The part of a session that outlives its connection.
pub struct SessionState {
    /// The session's key in the router (its subscriptions are registered under it).
    pub id: ConnectionId,
    pub routes: Arc<NamespaceRoutes>,
    pub mailbox: Mailbox,
    pub queue: Queue,
    /// Filters as the client wrote them → parsed.
    pub subscriptions: HashMap<String, Subscription>,
    pub outbound: Outbound,
    pub incoming_qos2: HashSet<u16>,
}

impl SessionState {
    /// Removes the session's subscriptions from the router and from the store; what was
    /// queued is dropped with the state.
    pub fn discard(self) {
        if let Some(journal) = self.mailbox.journal() {
            journal.ended();
        }
        self.abandon();
    }

    /// Removes the session from the router and memory only: the key's stored rows belong
    /// to a newer session.
    fn abandon(self) {
        // Closed first, so that no message is queued for a session that is gone.
        self.queue.close();
        for subscription in self.subscriptions.values() {
            self.routes.unsubscribe(subscription, self.id);
        }
        iotcore_telemetry::metrics::mqtt::SUBSCRIPTIONS
            .with(&[self.routes.namespace().tenant_id().as_str()])
            .add(-(self.subscriptions.len() as i64));
    }
}

/// A session whose client is away.
struct Parked {
    generation: u64,
    expires: Instant,
    state: SessionState,
}

/// Parked sessions, and per namespace the order in which they expire.
#[derive(Default)]
struct ParkedSessions {
    sessions: HashMap<Key, Parked>,
    by_namespace: HashMap<Namespace, BTreeSet<(Instant, u64, String)>>,
}

impl ParkedSessions {
    fn remove(&mut self, key: &Key) -> Option<Parked> {
        let parked = self.sessions.remove(key)?;
        if let Some(order) = self.by_namespace.get_mut(&key.0) {
            order.remove(&(parked.expires, parked.generation, key.1.clone()));
            if order.is_empty() {
                self.by_namespace.remove(&key.0);
            }
        }
        Some(parked)
    }
}

struct Live {
    connection: ConnectionId,
    /// The username the connection authenticated with (a device, registry or virtual
    /// broker id), to re-check when the control plane changes.
    principal: Option<String>,
    signal: Signal,
}

/// Events of one claim of a client id ([`Signal::raise`]).
const TAKEN_OVER: u8 = 1;
const REVOKED: u8 = 2;
const ENDED: u8 = 4;
/// Set with [`TAKEN_OVER`] when the connection that took over resumes the session.
const RESUMED: u8 = 8;
/// The connection may no longer park its session.
const NOT_PARKABLE: u8 = 16;

/// What happens to one connection's claim, in one allocation and one wait list for all of
/// it: taken over (and whether the new connection resumed the session), its credential
/// revoked, the connection ended, and whether it may still park its session. An idle
/// connection waits on it once for both takeover and revocation.
#[derive(Clone)]
pub struct Signal(Arc<SignalInner>);

struct SignalInner {
    events: AtomicU8,
    changed: Notify,
}

/// Why [`Signal::stopped`] resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    TakenOver,
    Revoked,
}

impl Signal {
    fn new() -> Signal {
        Signal(Arc::new(SignalInner {
            events: AtomicU8::new(0),
            changed: Notify::new(),
        }))
    }

    fn events(&self) -> u8 {
        self.0.events.load(Ordering::Acquire)
    }

    fn raise(&self, events: u8) {
        self.0.events.fetch_or(events, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }

    /// Resolves once any of `events` has been raised; returns those raised.
    async fn any(&self, events: u8) -> u8 {
        loop {
            let changed = self.0.changed.notified();
            tokio::pin!(changed);
            // Registered before the events are read, so that none raised in between is
            // missed.
            changed.as_mut().enable();
            let raised = self.events() & events;
            if raised != 0 {
                return raised;
            }
            changed.await;
        }
    }

    /// Resolves when a later connection takes the session over or the connection's
    /// principal is disabled, deleted or suspended.
    pub async fn stopped(&self) -> Stopped {
        if self.any(TAKEN_OVER | REVOKED).await & REVOKED != 0 {
            Stopped::Revoked
        } else {
            Stopped::TakenOver
        }
    }

    /// The connection has finished (and parked its session, if any).
    pub fn end(&self) {
        self.raise(ENDED);
    }

    /// Resolves once the connection has finished.
    pub async fn ended(&self) {
        self.any(ENDED).await;
    }

    /// `None` while no connection has taken over; `Some(true)` when one did with Clean
    /// Start 0 and carries the session on, `Some(false)` when it started a clean one.
    pub fn successor_resumed(&self) -> Option<bool> {
        let events = self.events();
        (events & TAKEN_OVER != 0).then_some(events & RESUMED != 0)
    }

    fn parkable(&self) -> bool {
        self.events() & NOT_PARKABLE == 0
    }
}

/// What [`Sessions::claim`] hands a new connection.
pub struct Claim {
    /// Takeover, revocation and the end of this connection.
    pub signal: Signal,
    /// The connection this one takes over, to wait for.
    pub previous: Option<Signal>,
}

#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<Key, Live>>,
    parked: Mutex<ParkedSessions>,
    max_parked_per_namespace: usize,
    expiries: Mutex<BinaryHeap<Reverse<(Instant, u64, Key)>>>,
    expiry_changed: Notify,
    generation: AtomicU64,
    /// A delayed will learns through its channel that a new connection claimed its client
    /// id: `true` when that connection resumes the session (the will is dropped), `false`
    /// when it starts a clean one (the will is published at once).
    delayed_wills: Mutex<HashMap<Key, (ConnectionId, oneshot::Sender<bool>)>>,
}

impl Sessions {
    pub fn new(max_parked_per_namespace: usize) -> Sessions {
        Sessions {
            max_parked_per_namespace: max_parked_per_namespace.max(1),
            ..Sessions::default()
        }
    }

    /// Registers `connection` as the holder of `client_id`, taking it over from a
    /// connection that holds it now.
    pub fn claim(
        &self,
        namespace: &Namespace,
        client_id: &str,
        connection: ConnectionId,
        principal: Option<&str>,
        clean_start: bool,
    ) -> Claim {
        let key = (namespace.clone(), client_id.to_owned());
        let signal = Signal::new();
        let live = Live {
            connection,
            principal: principal.map(str::to_owned),
            signal: signal.clone(),
        };
        let previous = lock(&self.live).insert(key.clone(), live).map(|previous| {
            // How the new connection starts is known to the old one as it is taken over.
            let resumed = if clean_start { 0 } else { RESUMED };
            previous.signal.raise(TAKEN_OVER | resumed);
            previous.signal
        });
        if let Some((_, will)) = lock(&self.delayed_wills).remove(&key) {
            let _ = will.send(!clean_start);
        }
        Claim { signal, previous }
    }

    /// The principals (usernames) of `tenant`'s live connections.
    pub fn live_principals(&self, tenant: &iotcore_store::TenantId) -> Vec<String> {
        let mut principals: Vec<String> = lock(&self.live)
            .iter()
            .filter(|((namespace, _), _)| namespace.tenant_id() == tenant)
            .filter_map(|(_, live)| live.principal.clone())
            .collect();
        principals.sort();
        principals.dedup();
        principals
    }

    /// Disconnects every live connection of `tenant` that authenticated as `principal`.
    pub fn revoke(&self, tenant: &iotcore_store::TenantId, principal: &str) {
        for ((namespace, _), live) in lock(&self.live).iter() {
            if namespace.tenant_id() == tenant && live.principal.as_deref() == Some(principal) {
                live.signal.raise(REVOKED);
            }
        }
    }

    /// Forgets `connection`'s claim, unless another connection has taken it over since.
    pub fn release(&self, namespace: &Namespace, client_id: &str, connection: ConnectionId) {
        let mut live = lock(&self.live);
        let key = (namespace.clone(), client_id.to_owned());
        if live
            .get(&key)
            .is_some_and(|entry| entry.connection == connection)
        {
            live.remove(&key);
        }
    }

    /// The parked session of `client_id`, if any (it is no longer parked afterwards).
    /// The connection taken over (`previous`), if it has not parked yet, never will.
    pub fn take_parked(
        &self,
        namespace: &Namespace,
        client_id: &str,
        previous: Option<&Signal>,
    ) -> Option<SessionState> {
        let key = (namespace.clone(), client_id.to_owned());
        let mut parked = lock(&self.parked);
        if let Some(previous) = previous {
            previous.raise(NOT_PARKABLE);
        }
        parked.remove(&key).map(|parked| parked.state)
    }

    /// Keeps `state` until `client_id` comes back or `expiry` passes; abandons it when a
    /// later connection has settled its own session already (its `signal` says so).
    pub fn park(
        &self,
        namespace: &Namespace,
        client_id: &str,
        signal: &Signal,
        state: SessionState,
        expiry: Duration,
    ) {
        let mut parked = lock(&self.parked);
        if !signal.parkable() {
            drop(parked);
            tracing::info!(
                client_id,
                "session taken over after the new connection stopped waiting for it; not kept"
            );
            state.abandon();
            return;
        }
        if let Some(journal) = state.mailbox.journal() {
            journal.parked(expiry);
        }
        let ended = self.keep(&mut parked, namespace, client_id, state, expiry);
        drop(parked);
        for state in ended {
            state.discard();
        }
    }

    /// Parks a session read back from the store (which has it as it is).
    pub fn restore(
        &self,
        namespace: &Namespace,
        client_id: &str,
        state: SessionState,
        expiry: Duration,
    ) {
        let ended = self.keep(&mut lock(&self.parked), namespace, client_id, state, expiry);
        for state in ended {
            state.discard();
        }
    }

    /// Parks `state`; returns the sessions it ends (one it replaces, those evicted), for
    /// the caller to discard once it holds no lock.
    #[must_use]
    fn keep(
        &self,
        parked: &mut ParkedSessions,
        namespace: &Namespace,
        client_id: &str,
        state: SessionState,
        expiry: Duration,
    ) -> Vec<SessionState> {
        let key = (namespace.clone(), client_id.to_owned());
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let at = Instant::now() + expiry;
        let mut ended = Vec::new();
        {
            if let Some(replaced) = parked.remove(&key) {
                ended.push(replaced.state);
            }
            let order = parked.by_namespace.entry(namespace.clone()).or_default();
            order.insert((at, generation, client_id.to_owned()));
            let mut evicted = Vec::new();
            while order.len() > self.max_parked_per_namespace {
                match order.pop_first() {
                    Some((_, _, client)) => evicted.push(client),
                    None => break,
                }
            }
            parked.sessions.insert(
                key.clone(),
                Parked {
                    generation,
                    expires: at,
                    state,
                },
            );
            for client in evicted {
                tracing::warn!(
                    client_id = client,
                    "too many parked sessions in the namespace (mqtt.max_parked_sessions_per_namespace); the one expiring first ended"
                );
                if let Some(gone) = parked.sessions.remove(&(namespace.clone(), client)) {
                    ended.push(gone.state);
                }
            }
        }
        lock(&self.expiries).push(Reverse((at, generation, key)));
        self.expiry_changed.notify_one();
        ended
    }

    /// Discards parked sessions as they expire; one task for all of them.
    pub async fn expire(&self, shutdown: CancellationToken) {
        loop {
            let next = lock(&self.expiries).peek().map(|Reverse((at, _, _))| *at);
            let wake = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = self.expiry_changed.notified() => continue,
                _ = shutdown.cancelled() => return,
            }
            let now = Instant::now();
            loop {
                let due = {
                    let mut expiries = lock(&self.expiries);
                    match expiries.peek() {
                        Some(Reverse((at, _, _))) if *at <= now => expiries.pop(),
                        _ => None,
                    }
                };
                let Some(Reverse((_, generation, key))) = due else {
                    break;
                };
                let mut parked = lock(&self.parked);
                // A session resumed and parked again since has a newer generation.
                if parked
                    .sessions
                    .get(&key)
                    .is_some_and(|p| p.generation == generation)
                {
                    if let Some(gone) = parked.remove(&key) {
                        drop(parked);
                        tracing::debug!(client_id = key.1, "session expired");
                        gone.state.discard();
                    }
                }
            }
        }
    }

    /// Registers a delayed will of `connection`; the receiver says whether a new
    /// connection resumed the session (see [`Sessions::claim`]).
    pub fn delay_will(
        &self,
        namespace: &Namespace,
        client_id: &str,
        connection: ConnectionId,
    ) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        let key = (namespace.clone(), client_id.to_owned());
        lock(&self.delayed_wills).insert(key, (connection, tx));
        rx
    }

    /// Forgets a delayed will that has been published or dropped.
    pub fn forget_will(&self, namespace: &Namespace, client_id: &str, connection: ConnectionId) {
        let mut wills = lock(&self.delayed_wills);
        let key = (namespace.clone(), client_id.to_owned());
        if wills
            .get(&key)
            .is_some_and(|(holder, _)| *holder == connection)
        {
            wills.remove(&key);
        }
    }
}

// The maps stay consistent across a panic (single inserts and removes), so a poisoned lock
// is used as it is.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use iotcore_store::TenantId;

    async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(5), future)
            .await
            .unwrap_or_else(|_| panic!("{what} did not happen"))
    }

    #[tokio::test]
    async fn a_claim_learns_of_takeover_and_revocation_and_its_successor_of_its_end() {
        let sessions = Sessions::new(10);
        let namespace = Namespace::Tenant(TenantId::generate());
        let first = sessions.claim(&namespace, "client", 1, Some("principal"), true);
        assert!(first.previous.is_none());
        assert_eq!(first.signal.successor_resumed(), None);
        assert!(first.signal.parkable());

        // Taken over by a connection that resumes the session (Clean Start 0).
        let second = sessions.claim(&namespace, "client", 2, Some("principal"), false);
        assert_eq!(
            within("takeover", first.signal.stopped()).await,
            Stopped::TakenOver
        );
        assert_eq!(first.signal.successor_resumed(), Some(true));
        let previous = second
            .previous
            .clone()
            .expect("the first connection is taken over");
        let ended = tokio::spawn(async move { previous.ended().await });
        first.signal.end();
        within("the end of the first connection", ended)
            .await
            .expect("the waiting task ran");
        // Once the new connection has settled its session, the old one may not park.
        assert!(sessions
            .take_parked(&namespace, "client", second.previous.as_ref())
            .is_none());
        assert!(!first.signal.parkable());
        let third = sessions.claim(&namespace, "client", 3, Some("principal"), true);
        assert_eq!(second.signal.successor_resumed(), Some(false));
        sessions.take_parked(&namespace, "client", third.previous.as_ref());
        assert!(!second.signal.parkable());

        // Revocation reaches the live connection of that principal only.
        let other = sessions.claim(&namespace, "other", 4, Some("someone else"), true);
        sessions.revoke(namespace.tenant_id(), "principal");
        assert_eq!(
            within("revocation", third.signal.stopped()).await,
            Stopped::Revoked
        );
        assert_eq!(third.signal.successor_resumed(), None);
        assert_eq!(
            other.signal.events(),
            0,
            "another principal's connection is not stopped"
        );
    }
}
