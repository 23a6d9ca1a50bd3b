//! Persistent sessions in PostgreSQL, so that a client resumes its session after a broker
//! restart (SPEC §3.1).
//!
//! Sessions live in memory ([`crate::sessions`]); each persistent one has a [`Journal`]
//! that records its changes (subscriptions, expiry, QoS 1/2 messages queued, sent,
//! acknowledged or dropped, incoming QoS 2 packet ids) on a bounded channel. One task
//! reduces what it finds there to the final state of each row and writes it in one
//! transaction (group commit, at most `MAX_WAIT` after the first change), so a message
//! acknowledged within the same batch never reaches the database at all. At start, stored
//! sessions are loaded and parked with their remaining expiry before any client connects.
//!
//! A crash (kill -9) loses the changes not yet written: at most `MAX_WAIT` of them. A
//! graceful shutdown parks every session and writes everything.
//!
//! Each journal has a generation, and the writer writes a key's changes only from the
//! journal that owns it now: the last one to start a fresh session under the key (or the
//! one restored from the store). A connection taken over that ends late, after its
//! successor gave up waiting and started afresh, can then never overwrite the successor's
//! rows, whatever it still records on its way out.
//!
//! One broker process per database is assumed: every process loads every stored session at
//! start, and nothing yet tells a process that another one took a session over (SPEC §8).

use crate::broker::Shared;
use crate::mailbox;
use crate::outbound::Outbound;
use crate::retained_store::{message_properties, stored_properties, wall_clock};
use crate::router::{Message, Namespace, Outgoing, Subscriber};
use crate::sessions::SessionState;
use chrono::{DateTime, Utc};
use iotcore_codec::QoS;
use iotcore_store::retained::Json;
use iotcore_store::sessions::{
    SessionBatch, SessionKey, SessionMessage, StoredSession, StoredSubscription,
};
use iotcore_store::{BrokerId, RegistryId, Store};
use iotcore_topic::TopicFilter;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const QUEUE: usize = 64 * 1024;
const MAX_BATCH: usize = 4096;
const MAX_WAIT: Duration = Duration::from_millis(50);

/// One change to a stored session, with the generation of the journal that recorded it.
type Stamped = (u64, Change);

/// One change to a stored session.
/// Keys are shared, so that recording a message costs no allocation.
enum Change {
    /// A fresh session under the key: what was stored is deleted, and the recording
    /// journal owns the key from now on.
    Start(Arc<SessionKey>),
    /// A session restored from the store: its journal owns the key, the rows stay.
    Own(Arc<SessionKey>),
    Save(Box<StoredSession>),
    IncomingQos2(Arc<SessionKey>, Vec<i32>),
    Delete(Arc<SessionKey>),
    Queued(Arc<SessionKey>, Outgoing),
    Sent(Arc<SessionKey>, u64, u16, Awaiting),
    Done(Arc<SessionKey>, u64),
}

/// What an in-flight outgoing message waits for; stored as 0, 1, 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
// The variants are named for the MQTT packets they wait for.
#[allow(clippy::enum_variant_names)]
pub enum Awaiting {
    /// QoS 1, PUBLISH sent.
    PubAck = 0,
    /// QoS 2, PUBLISH sent.
    PubRec = 1,
    /// QoS 2, PUBREL sent.
    PubComp = 2,
}

impl Awaiting {
    fn from_stored(code: i16) -> Option<Awaiting> {
        match code {
            0 => Some(Awaiting::PubAck),
            1 => Some(Awaiting::PubRec),
            2 => Some(Awaiting::PubComp),
            _ => None,
        }
    }
}

/// The channel to the writer task.
#[derive(Clone)]
pub struct SessionWriter {
    changes: mpsc::Sender<Stamped>,
    generations: Arc<AtomicU64>,
}

impl SessionWriter {
    /// Starts the writer; it writes until `stop` is cancelled and everything queued before
    /// has been written. `stop` must come after the last connection has ended, so that the
    /// sessions they park are written.
    pub fn start(store: Store, stop: CancellationToken) -> (SessionWriter, JoinHandle<()>) {
        let (changes, rx) = mpsc::channel(QUEUE);
        let handle = tokio::spawn(write_batches(store, rx, stop));
        let writer = SessionWriter {
            changes,
            generations: Arc::new(AtomicU64::new(1)),
        };
        (writer, handle)
    }

    fn next_generation(&self) -> u64 {
        self.generations.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes a new journal generation the owner of a stored session's rows, waiting for
    /// room in the channel (only at start, before clients connect).
    async fn own(&self, key: &SessionKey) -> u64 {
        let generation = self.next_generation();
        let change = Change::Own(Arc::new(key.clone()));
        if self.changes.send((generation, change)).await.is_err() {
            tracing::warn!("session writer gone; restored session not persisted");
        }
        generation
    }

    fn send(&self, generation: u64, change: Change) {
        if self.changes.try_send((generation, change)).is_err() {
            // Memory stays right; only a restart before the session changes again could
            // bring back an older picture of it.
            tracing::warn!("session writer saturated; change not persisted");
        }
    }
}

/// The persistent picture of one session, and the handle that records its changes.
pub struct Journal {
    key: Arc<SessionKey>,
    /// Which journal of the key this is; only the owner's changes are written.
    generation: u64,
    writer: SessionWriter,
    state: Mutex<JournalState>,
}

struct JournalState {
    expiry_secs: u32,
    expires_at: Option<DateTime<Utc>>,
    registry_scope: Option<String>,
    subscriptions: BTreeMap<String, StoredSubscription>,
    incoming_qos2: Vec<i32>,
}

/// The store's key of a session.
pub fn session_key(namespace: &Namespace, client_id: &str) -> SessionKey {
    let (tenant_id, broker_id) = match namespace {
        Namespace::Tenant(tenant) => (tenant.clone(), String::new()),
        Namespace::Broker(tenant, broker) => (tenant.clone(), broker.to_string()),
    };
    SessionKey {
        tenant_id,
        broker_id,
        client_id: client_id.to_owned(),
    }
}

impl Journal {
    /// The journal of a new session, which replaces whatever was stored under its key.
    pub fn start(
        writer: &SessionWriter,
        namespace: &Namespace,
        client_id: &str,
        registry_scope: Option<&RegistryId>,
    ) -> Arc<Journal> {
        let journal = Journal {
            key: Arc::new(session_key(namespace, client_id)),
            generation: writer.next_generation(),
            writer: writer.clone(),
            state: Mutex::new(JournalState {
                expiry_secs: 0,
                expires_at: None,
                registry_scope: registry_scope.map(|r| r.to_string()),
                subscriptions: BTreeMap::new(),
                incoming_qos2: Vec::new(),
            }),
        };
        journal.send(Change::Start(journal.key.clone()));
        Arc::new(journal)
    }

    fn send(&self, change: Change) {
        self.writer.send(self.generation, change);
    }

    fn save(&self, state: &JournalState) {
        let session = StoredSession {
            key: (*self.key).clone(),
            expiry_secs: i64::from(state.expiry_secs),
            expires_at: state.expires_at,
            registry_scope: state.registry_scope.clone(),
            subscriptions: Json(state.subscriptions.values().cloned().collect()),
            incoming_qos2: state.incoming_qos2.clone(),
        };
        self.send(Change::Save(Box::new(session)));
    }

    /// A client connected to the session, which now ends `expiry_secs` after it leaves.
    pub fn connected(&self, expiry_secs: u32) {
        let mut state = lock(&self.state);
        state.expiry_secs = expiry_secs;
        state.expires_at = None;
        self.save(&state);
    }

    /// The client left; the session ends after `expiry` unless it comes back.
    pub fn parked(&self, expiry: Duration) {
        let mut state = lock(&self.state);
        state.expiry_secs = u32::try_from(expiry.as_secs()).unwrap_or(u32::MAX);
        state.expires_at = Some(wall_clock(Instant::now() + expiry));
        self.save(&state);
    }

    pub fn subscribed(&self, subscription: StoredSubscription) {
        let mut state = lock(&self.state);
        state
            .subscriptions
            .insert(subscription.filter.clone(), subscription);
        self.save(&state);
    }

    pub fn unsubscribed(&self, filter: &str) {
        let mut state = lock(&self.state);
        if state.subscriptions.remove(filter).is_some() {
            self.save(&state);
        }
    }

    /// The incoming QoS 2 packet ids between PUBREC and PUBREL changed.
    pub fn incoming_qos2(&self, ids: &HashSet<u16>) {
        let mut ids: Vec<i32> = ids.iter().map(|&id| i32::from(id)).collect();
        ids.sort_unstable();
        lock(&self.state).incoming_qos2 = ids.clone();
        self.send(Change::IncomingQos2(self.key.clone(), ids));
    }

    /// The session ended (Clean Start, expiry, DISCONNECT with expiry 0, a limit).
    pub fn ended(&self) {
        self.send(Change::Delete(self.key.clone()));
    }

    /// A message was queued (called under the mailbox's lock, so in queue order).
    pub fn queued(&self, outgoing: &Outgoing) {
        if outgoing.qos != QoS::AtMostOnce {
            self.send(Change::Queued(self.key.clone(), outgoing.clone()));
        }
    }

    /// A message was sent with `packet_id`, or moved on to the PUBREL stage.
    pub fn sent(&self, outgoing: &Outgoing, packet_id: u16, awaiting: Awaiting) {
        if outgoing.qos != QoS::AtMostOnce {
            self.send(Change::Sent(
                self.key.clone(),
                outgoing.seq,
                packet_id,
                awaiting,
            ));
        }
    }

    /// A message was acknowledged, expired or dropped.
    pub fn done(&self, outgoing: &Outgoing) {
        if outgoing.qos != QoS::AtMostOnce {
            self.send(Change::Done(self.key.clone(), outgoing.seq));
        }
    }
}

async fn write_batches(store: Store, mut rx: mpsc::Receiver<Stamped>, stop: CancellationToken) {
    // Which journal generation owns each key: one entry per stored session that has not
    // ended, so bounded like the sessions themselves.
    let mut owners: HashMap<SessionKey, u64> = HashMap::new();
    while let Some(changes) = crate::batch::next(&mut rx, &stop, MAX_BATCH, MAX_WAIT).await {
        let batch = reduce(changes, &mut owners);
        if let Err(e) = store.apply_session_batch(&batch).await {
            tracing::warn!(error = %e, "writing sessions failed");
        }
    }
}

/// A message row's final state within a batch.
enum RowOp {
    Insert(Box<SessionMessage>),
    Update(i32, i16),
    Delete,
}

#[derive(Default)]
struct KeyOps {
    save: Option<Box<StoredSession>>,
    incoming_qos2: Option<Vec<i32>>,
    messages: BTreeMap<u64, RowOp>,
}

/// The key a change is about.
fn key_of(change: &Change) -> &SessionKey {
    match change {
        Change::Save(session) => &session.key,
        Change::Start(key)
        | Change::Own(key)
        | Change::IncomingQos2(key, _)
        | Change::Delete(key)
        | Change::Queued(key, _)
        | Change::Sent(key, ..)
        | Change::Done(key, _) => key,
    }
}

/// Reduces changes to the final state of each row, keeping only those of each key's
/// owning journal (`owners`, updated here). The store applies deletes of sessions first,
/// so everything recorded for a session before its delete is forgotten here.
fn reduce(changes: Vec<Stamped>, owners: &mut HashMap<SessionKey, u64>) -> SessionBatch {
    let mut deletes: Vec<SessionKey> = Vec::new();
    let mut keys: HashMap<Arc<SessionKey>, KeyOps> = HashMap::new();
    for (generation, change) in changes {
        match &change {
            Change::Start(key) | Change::Own(key) => {
                owners.insert((**key).clone(), generation);
            }
            other => {
                let key = key_of(other);
                if owners.get(key) != Some(&generation) {
                    // A journal replaced by a newer session under the same key.
                    continue;
                }
            }
        }
        match change {
            Change::Own(_) => {}
            Change::Start(key) => {
                keys.remove(&key);
                deletes.push((*key).clone());
            }
            Change::Delete(key) => {
                owners.remove(&*key);
                keys.remove(&key);
                deletes.push((*key).clone());
            }
            Change::Save(session) => {
                let ops = keys.entry(Arc::new(session.key.clone())).or_default();
                // The save carries the current incoming ids.
                ops.incoming_qos2 = None;
                ops.save = Some(session);
            }
            Change::IncomingQos2(key, ids) => {
                keys.entry(key).or_default().incoming_qos2 = Some(ids);
            }
            Change::Queued(key, outgoing) => {
                let row = message_row(&outgoing);
                keys.entry(key)
                    .or_default()
                    .messages
                    .insert(outgoing.seq, RowOp::Insert(Box::new(row)));
            }
            Change::Sent(key, seq, packet_id, awaiting) => {
                let (packet_id, awaiting) = (i32::from(packet_id), awaiting as i16);
                let messages = &mut keys.entry(key).or_default().messages;
                match messages.get_mut(&seq) {
                    Some(RowOp::Insert(row)) => {
                        row.packet_id = Some(packet_id);
                        row.awaiting = Some(awaiting);
                    }
                    Some(RowOp::Delete) => {}
                    Some(op @ RowOp::Update(..)) => *op = RowOp::Update(packet_id, awaiting),
                    None => {
                        messages.insert(seq, RowOp::Update(packet_id, awaiting));
                    }
                }
            }
            Change::Done(key, seq) => {
                let messages = &mut keys.entry(key).or_default().messages;
                // Inserted and done within the batch: the database never sees it.
                if let Some(RowOp::Insert(_)) = messages.remove(&seq) {
                    continue;
                }
                messages.insert(seq, RowOp::Delete);
            }
        }
    }
    deletes.sort();
    deletes.dedup();
    let mut batch = SessionBatch {
        deletes,
        ..SessionBatch::default()
    };
    for (key, ops) in keys {
        let key = Arc::unwrap_or_clone(key);
        if let Some(save) = ops.save {
            batch.saves.push(*save);
        }
        if let Some(ids) = ops.incoming_qos2 {
            batch.incoming_qos2.push((key.clone(), ids));
        }
        for (seq, op) in ops.messages {
            let seq = i64::try_from(seq).unwrap_or(i64::MAX);
            match op {
                RowOp::Insert(row) => batch.message_inserts.push((key.clone(), *row)),
                RowOp::Update(packet_id, awaiting) => {
                    batch
                        .message_updates
                        .push((key.clone(), seq, packet_id, awaiting))
                }
                RowOp::Delete => batch.message_deletes.push((key.clone(), seq)),
            }
        }
    }
    // A stable order of rows, so concurrent transactions lock them in the same order.
    batch.saves.sort_by(|a, b| a.key.cmp(&b.key));
    batch
}

fn message_row(outgoing: &Outgoing) -> SessionMessage {
    let message = &outgoing.message;
    let properties = &message.properties;
    SessionMessage {
        seq: i64::try_from(outgoing.seq).unwrap_or(i64::MAX),
        packet_id: None,
        awaiting: None,
        topic: message.topic.clone(),
        payload: message.payload.to_vec(),
        qos: i16::from(outgoing.qos as u8),
        retain: outgoing.retain,
        subscription_ids: outgoing
            .subscription_ids
            .iter()
            .map(|&id| i64::from(id))
            .collect(),
        properties: stored_properties(properties),
        expires_at: properties.expires_at.map(wall_clock),
    }
}

fn outgoing_from_row(row: SessionMessage) -> Option<Outgoing> {
    let qos = QoS::from_u8(u8::try_from(row.qos).ok()?)?;
    let message = Message {
        topic: row.topic,
        payload: row.payload.into(),
        qos,
        retain: row.retain,
        properties: message_properties(row.properties.0, row.expires_at),
        origin: None,
        origin_registry: None,
    };
    Some(Outgoing {
        message: Arc::new(message),
        qos,
        retain: row.retain,
        subscription_ids: row
            .subscription_ids
            .iter()
            .filter_map(|&id| u32::try_from(id).ok())
            .collect(),
        seq: u64::try_from(row.seq).ok()?,
    })
}

/// Loads the stored sessions and parks each with its remaining expiry, its subscriptions
/// back in the router. Runs before the listeners open.
pub async fn restore(shared: &Shared) -> Result<(), iotcore_store::StoreError> {
    let config = &shared.config;
    let loaded = shared
        .store
        .load_sessions(
            config.max_parked_sessions_per_namespace,
            config.outbound_queue,
        )
        .await?;
    if loaded.sessions_discarded > 0 || loaded.messages_dropped > 0 {
        tracing::info!(
            sessions = loaded.sessions_discarded,
            messages = loaded.messages_dropped,
            "stored sessions discarded (expired or beyond limits) and queued messages dropped (beyond mqtt.outbound_queue)"
        );
    }
    let mut messages: HashMap<SessionKey, Vec<SessionMessage>> = HashMap::new();
    for row in loaded.messages {
        messages.entry(row.key).or_default().push(row.message);
    }
    let count = loaded.sessions.len();
    for stored in loaded.sessions {
        let rows = messages.remove(&stored.key).unwrap_or_default();
        // Owned before the session is back in the router, where messages may reach it.
        let generation = shared.sessions_writer.own(&stored.key).await;
        restore_one(shared, stored, rows, generation);
    }
    if count > 0 {
        tracing::info!(sessions = count, "persistent sessions restored");
    }
    Ok(())
}

fn restore_one(shared: &Shared, stored: StoredSession, rows: Vec<SessionMessage>, generation: u64) {
    let key = stored.key.clone();
    let namespace = if key.broker_id.is_empty() {
        Namespace::Tenant(key.tenant_id.clone())
    } else {
        match BrokerId::parse(&key.broker_id) {
            Some(broker) => Namespace::Broker(key.tenant_id.clone(), broker),
            None => return,
        }
    };
    let registry_scope = stored.registry_scope.as_deref().and_then(RegistryId::parse);
    let journal = Arc::new(Journal {
        key: Arc::new(key.clone()),
        generation,
        writer: shared.sessions_writer.clone(),
        state: Mutex::new(JournalState {
            expiry_secs: u32::try_from(stored.expiry_secs).unwrap_or(0),
            expires_at: stored.expires_at,
            registry_scope: stored.registry_scope.clone(),
            subscriptions: BTreeMap::new(),
            incoming_qos2: stored.incoming_qos2.clone(),
        }),
    });
    let (mailbox, mut queue) =
        mailbox::channel(shared.config.outbound_queue, Some(journal.clone()));
    let routes = shared.router.namespace(&namespace);
    let id = shared.router.next_connection_id();
    let mut subscriptions = HashMap::new();
    for stored_subscription in stored.subscriptions.0 {
        let Ok(subscription) =
            TopicFilter::parse_subscription(&stored_subscription.filter, shared.limits)
        else {
            continue;
        };
        if subscriptions.len() >= shared.config.max_subscriptions {
            break;
        }
        let Some(qos) = QoS::from_u8(stored_subscription.qos) else {
            continue;
        };
        let subscriber = Subscriber {
            mailbox: mailbox.clone(),
            qos,
            no_local: stored_subscription.no_local,
            retain_as_published: stored_subscription.retain_as_published,
            subscription_id: stored_subscription.subscription_id,
            registry_scope: registry_scope.clone(),
            // The client's rights are known once it is back (see `recheck_subscriptions`).
            acl: None,
            delivers_all: None,
        };
        routes.subscribe(&subscription, id, subscriber);
        subscriptions.insert(stored_subscription.filter.clone(), subscription);
        lock(&journal.state)
            .subscriptions
            .insert(stored_subscription.filter.clone(), stored_subscription);
    }
    iotcore_telemetry::metrics::mqtt::SUBSCRIPTIONS
        .with(&[namespace.tenant_id().as_str()])
        .add(subscriptions.len() as i64);
    let mut outbound = Outbound::new(usize::from(shared.config.inflight_window.max(1)));
    for row in rows {
        let in_flight = row
            .packet_id
            .and_then(|id| u16::try_from(id).ok())
            .filter(|&id| id != 0)
            .zip(row.awaiting.and_then(Awaiting::from_stored));
        let Some(outgoing) = outgoing_from_row(row) else {
            continue;
        };
        match in_flight {
            Some((packet_id, awaiting)) => {
                queue.skip_past(outgoing.seq);
                outbound.restore(packet_id, awaiting, outgoing);
            }
            None => queue.restore(outgoing),
        }
    }
    let incoming_qos2 = stored
        .incoming_qos2
        .iter()
        .filter_map(|&id| u16::try_from(id).ok())
        .collect();
    // A session that was connected when the broker stopped gets its whole expiry from now.
    let expiry = match stored.expires_at {
        Some(at) => (at - Utc::now()).to_std().unwrap_or(Duration::ZERO),
        None => Duration::from_secs(u64::try_from(stored.expiry_secs).unwrap_or(0)),
    };
    let state = SessionState {
        id,
        routes,
        mailbox,
        queue,
        subscriptions,
        outbound,
        incoming_qos2,
    };
    shared
        .sessions
        .restore(&namespace, &key.client_id, state, expiry);
}

// Every update is a single assignment, consistent across a panic.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use iotcore_store::TenantId;

    fn key(client: &str) -> Arc<SessionKey> {
        Arc::new(SessionKey {
            tenant_id: TenantId::generate(),
            broker_id: String::new(),
            client_id: client.into(),
        })
    }

    /// Reduces `changes` recorded by the journal that owns `key`.
    fn reduce_owned(key: &Arc<SessionKey>, changes: Vec<Change>) -> SessionBatch {
        let mut owners = HashMap::new();
        let own = std::iter::once(Change::Own(key.clone()));
        reduce(own.chain(changes).map(|c| (1, c)).collect(), &mut owners)
    }

    fn outgoing(seq: u64) -> Outgoing {
        Outgoing {
            message: Arc::new(Message {
                topic: "t".into(),
                payload: "p".into(),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: crate::router::MessageProperties::default(),
                origin: None,
                origin_registry: None,
            }),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![7],
            seq,
        }
    }

    #[test]
    fn a_message_acknowledged_within_the_batch_is_never_written() {
        let k = key("c");
        let batch = reduce_owned(
            &k,
            vec![
                Change::Queued(k.clone(), outgoing(1)),
                Change::Sent(k.clone(), 1, 10, Awaiting::PubAck),
                Change::Done(k.clone(), 1),
                Change::Queued(k.clone(), outgoing(2)),
                Change::Sent(k.clone(), 2, 11, Awaiting::PubRec),
                Change::Sent(k.clone(), 3, 12, Awaiting::PubComp),
                Change::Done(k.clone(), 4),
            ],
        );
        assert_eq!(batch.message_inserts.len(), 1);
        let (_, row) = &batch.message_inserts[0];
        assert_eq!(
            (row.seq, row.packet_id, row.awaiting),
            (2, Some(11), Some(1))
        );
        assert_eq!(batch.message_updates, vec![((*k).clone(), 3, 12, 2)]);
        assert_eq!(batch.message_deletes, vec![((*k).clone(), 4)]);
    }

    #[test]
    fn a_delete_forgets_what_came_before_it_but_not_after() {
        let k = key("c");
        let mut save = StoredSession {
            key: (*k).clone(),
            expiry_secs: 60,
            expires_at: None,
            registry_scope: None,
            subscriptions: Json(Vec::new()),
            incoming_qos2: Vec::new(),
        };
        let batch = reduce_owned(
            &k,
            vec![
                Change::Save(Box::new(save.clone())),
                Change::Queued(k.clone(), outgoing(1)),
                Change::IncomingQos2(k.clone(), vec![5]),
                Change::Delete(k.clone()),
            ],
        );
        assert_eq!(batch.deletes, vec![(*k).clone()]);
        assert!(batch.saves.is_empty() && batch.message_inserts.is_empty());
        assert!(batch.incoming_qos2.is_empty());

        save.expiry_secs = 120;
        let batch = reduce_owned(
            &k,
            vec![
                Change::Start(k.clone()),
                Change::IncomingQos2(k.clone(), vec![5]),
                Change::Save(Box::new(save)),
                Change::Queued(k.clone(), outgoing(1)),
            ],
        );
        assert_eq!(batch.deletes.len(), 1);
        assert_eq!(batch.saves[0].expiry_secs, 120);
        assert!(
            batch.incoming_qos2.is_empty(),
            "the later save carries them"
        );
        assert_eq!(batch.message_inserts.len(), 1);
    }

    /// A connection taken over that ends after its successor started a fresh session
    /// records its park, its messages and its end under the same key: none of it may reach
    /// the successor's rows, in the same batch or later ones, nor after the successor ends.
    #[test]
    fn changes_of_a_replaced_journal_are_never_written() {
        let k = key("c");
        let save = |expiry_secs| {
            Box::new(StoredSession {
                key: (*k).clone(),
                expiry_secs,
                expires_at: None,
                registry_scope: None,
                subscriptions: Json(Vec::new()),
                incoming_qos2: Vec::new(),
            })
        };
        let (old, new) = (1, 2);
        let mut owners = HashMap::new();
        let batch = reduce(
            vec![
                (old, Change::Start(k.clone())),
                (old, Change::Save(save(60))),
                (new, Change::Start(k.clone())),
                (new, Change::Save(save(120))),
                (old, Change::Queued(k.clone(), outgoing(1))),
                (old, Change::Save(save(60))),
            ],
            &mut owners,
        );
        assert_eq!(batch.saves.len(), 1);
        assert_eq!(batch.saves[0].expiry_secs, 120);
        assert!(batch.message_inserts.is_empty());

        let batch = reduce(
            vec![
                (old, Change::Delete(k.clone())),
                (old, Change::Sent(k.clone(), 1, 3, Awaiting::PubAck)),
                (new, Change::Queued(k.clone(), outgoing(1))),
            ],
            &mut owners,
        );
        assert!(
            batch.deletes.is_empty(),
            "the old journal's end deletes nothing"
        );
        assert!(batch.message_updates.is_empty());
        assert_eq!(batch.message_inserts.len(), 1);

        let batch = reduce(
            vec![
                (new, Change::Delete(k.clone())),
                (old, Change::Save(save(60))),
            ],
            &mut owners,
        );
        assert_eq!(batch.deletes.len(), 1);
        assert!(
            batch.saves.is_empty(),
            "nobody owns the key after its session ended"
        );
        assert!(owners.is_empty());
    }

    #[test]
    fn a_stored_message_reads_back_as_it_was_queued() {
        let mut queued = outgoing(3);
        let expires_at = Instant::now() + Duration::from_secs(600);
        Arc::make_mut(&mut queued.message).properties = crate::router::MessageProperties {
            content_type: Some("text/plain".into()),
            correlation_data: Some("c".into()),
            user_properties: vec![("k".into(), "v".into())],
            expires_at: Some(expires_at),
            ..Default::default()
        };
        let row = message_row(&queued);
        let back = outgoing_from_row(row).expect("valid row");
        assert_eq!(back.seq, 3);
        assert_eq!(back.qos, QoS::AtLeastOnce);
        assert_eq!(back.subscription_ids, vec![7]);
        assert_eq!(back.message.payload.as_ref(), b"p");
        let properties = &back.message.properties;
        assert_eq!(properties.content_type.as_deref(), Some("text/plain"));
        assert_eq!(properties.correlation_data.as_deref(), Some(&b"c"[..]));
        assert_eq!(properties.user_properties, [("k".into(), "v".into())]);
        let back_at = properties.expires_at.expect("an expiry");
        let drift = back_at.max(expires_at) - back_at.min(expires_at);
        assert!(drift < Duration::from_secs(5), "expiry kept: {drift:?}");
    }
}
