//! A session's bounded queue of messages on their way to its client.
//!
//! SPEC §3.1 (slow consumers, absent clients): at most `capacity` messages wait; beyond it
//! a QoS 0 message is dropped, while a QoS 1/2 message takes the place of the oldest one
//! waiting, which is dropped. Both are counted by the caller ([`Pushed`]). A push never
//! waits.
//!
//! Back-pressure: a publisher whose message found a full queue may wait, before it reads
//! more from its socket, until the queue's consumer has made room ([`Mailbox::room`]),
//! for a short time at most. A queue whose consumer made no room in that time is
//! *stalled* (a client that does not read, or one that is away) and is not waited for
//! again until its consumer has worked through half of it, so a stuck subscriber costs a
//! publisher one short wait, while a subscriber that keeps up slows its publishers to its
//! own pace instead of making the broker read messages only to drop them.
//!
//! The queue of a persistent session carries its [`Journal`], and every QoS 1/2 message
//! queued or dropped is recorded there under the queue's lock, so the journal sees queue
//! changes in the order they happened and none after the queue is closed.
//!
//! Direct writes: a QoS 0 message routed to a plain TCP client whose queue is empty and
//! whose connection is writing nothing is written to the client's socket by the
//! publisher's task, with one non-blocking `send` under the queue's lock, instead of
//! waking the client's task to write it ([`Direct`]). The client's task holds the socket
//! for itself ([`Gate::claim`], [`Queue::take`]) before it writes anything, and gives it
//! back ([`Gate::release`]) only when it has written everything and nothing is queued,
//! so the bytes of two packets never interleave and a message never overtakes one queued
//! before it. What a full socket did not take is handed to the client's task, which
//! writes it before anything else.

use crate::router::Outgoing;
use crate::session_store::Journal;
use bytes::{Bytes, BytesMut};
use iotcore_codec::{Properties, ProtocolVersion, PublishRef, QoS};
use iotcore_telemetry::Counter;
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// The longest a publisher waits for a full queue's consumer to make room
/// ([`Mailbox::room`]) before it reads on and the queue counts as stalled.
pub const ROOM_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

/// What became of a message handed to a [`Mailbox`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Queued, and the oldest waiting message was dropped to make room.
    QueuedDroppingOldest,
    /// Not queued: a QoS 0 message to a full queue, or the session is gone.
    Dropped,
}

struct State {
    messages: VecDeque<Outgoing>,
    next_seq: u64,
    closed: bool,
    /// A publisher waits in [`Mailbox::room`].
    wanted: bool,
    /// Its consumer made no room in time; nobody waits for it until it has.
    stalled: bool,
    /// The client's socket, for direct writes; attached by the client's task once it has
    /// had something to write, so that a connection that never receives holds none.
    direct: Option<Box<Direct>>,
}

/// What a publisher needs to write a QoS 0 message to a plain TCP client itself.
pub struct Direct {
    /// The connection's socket. Valid while attached: the connection's task detaches it
    /// ([`Queue::detach`], or dropping the [`Queue`]) before the socket is closed.
    fd: RawFd,
    version: ProtocolVersion,
    /// The client's Maximum Packet Size.
    max_packet: Option<u32>,
    /// The client's task writes nothing and holds nothing to write: a publisher may.
    idle: bool,
    /// The rest of a message the socket took only part of; the client's task writes it
    /// before anything else.
    pending: Option<Bytes>,
    /// The connection's `messages_out` (QoS 0) and the tenant's bytes out.
    messages_out: Counter,
    bytes_out: Option<Counter>,
}

impl Direct {
    /// `fd` must stay open until the [`Queue`] this is attached to is detached or
    /// dropped.
    pub fn new(
        fd: RawFd,
        version: ProtocolVersion,
        max_packet: Option<u32>,
        messages_out: Counter,
        bytes_out: Option<Counter>,
    ) -> Direct {
        Direct {
            fd,
            version,
            max_packet,
            idle: false,
            pending: None,
            messages_out,
            bytes_out,
        }
    }

    /// Writes `outgoing` with one non-blocking `send`. `false` when nothing was written
    /// (the socket is full or failed, or the message needs the client's task: MQTT 5
    /// properties, an expiry, a size beyond the client's maximum): it is queued instead.
    /// When the socket took part of it, the rest is kept in `pending` and the client's
    /// task is to be woken.
    fn write(&mut self, outgoing: &Outgoing) -> bool {
        let message = &outgoing.message;
        if message.properties.expires_at.is_some()
            || (self.version == ProtocolVersion::V5
                && (!outgoing.subscription_ids.is_empty() || !message.properties.is_empty()))
        {
            return false;
        }
        DIRECT_BUFFER.with(|buffer| {
            let mut buffer = buffer.borrow_mut();
            if buffer.capacity() > DIRECT_BUFFER_KEPT {
                // A large message's room is not kept by every thread for good.
                *buffer = BytesMut::new();
            }
            buffer.clear();
            let properties = Properties::default();
            let publish = PublishRef {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: outgoing.retain,
                topic: &message.topic,
                packet_id: None,
                payload: &message.payload,
                properties: &properties,
            };
            if publish.encode(self.version, &mut buffer).is_err()
                || self
                    .max_packet
                    .is_some_and(|max| buffer.len() > max as usize)
            {
                return false;
            }
            let written = send(self.fd, &buffer);
            if written == 0 {
                return false;
            }
            if written < buffer.len() {
                self.pending = Some(Bytes::copy_from_slice(&buffer[written..]));
                self.idle = false;
            }
            self.messages_out.inc();
            if let Some(bytes_out) = &self.bytes_out {
                bytes_out.add(buffer.len() as u64);
            }
            true
        })
    }
}

/// The most room a thread keeps for encoding direct writes between two of them.
const DIRECT_BUFFER_KEPT: usize = 64 * 1024;

thread_local! {
    /// Where a publisher encodes a direct write; reused, so that a direct write allocates
    /// nothing.
    static DIRECT_BUFFER: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// One non-blocking `send` on `fd`; how many bytes the socket took (0 when it took none or
/// failed: the client's task finds out about a failed socket itself).
fn send(fd: RawFd, bytes: &[u8]) -> usize {
    // SAFETY: `bytes` is a valid slice for the whole call and `send` keeps no pointer to
    // it. `fd` is the connection's socket, open while it is attached (see `Direct::fd`);
    // MSG_DONTWAIT makes the call return at once whatever the socket's mode, and
    // MSG_NOSIGNAL turns a closed peer into an error instead of SIGPIPE.
    let sent = unsafe {
        libc::send(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    usize::try_from(sent).unwrap_or(0)
}

struct Inner {
    state: Mutex<State>,
    ready: Notify,
    /// Wakes publishers waiting for room.
    room: Notify,
    capacity: usize,
    journal: Option<Arc<Journal>>,
}

/// The sending side, cloned into every subscription of the session.
#[derive(Clone)]
pub struct Mailbox {
    inner: Arc<Inner>,
}

/// The receiving side, owned by the session; dropping it closes the mailbox.
pub struct Queue {
    inner: Arc<Inner>,
}

/// A mailbox of at most `capacity` messages, journaled when the session is persistent.
pub fn channel(capacity: usize, journal: Option<Arc<Journal>>) -> (Mailbox, Queue) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State {
            messages: VecDeque::new(),
            next_seq: 1,
            closed: false,
            wanted: false,
            stalled: false,
            direct: None,
        }),
        ready: Notify::new(),
        room: Notify::new(),
        capacity: capacity.max(1),
        journal,
    });
    (
        Mailbox {
            inner: inner.clone(),
        },
        Queue { inner },
    )
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox")
            .field("capacity", &self.inner.capacity)
            .field("persistent", &self.inner.journal.is_some())
            .finish()
    }
}

impl Mailbox {
    /// Queues `outgoing`; when the queue is full, a QoS 0 message is dropped and a QoS 1/2
    /// one replaces the oldest waiting message.
    pub fn push(&self, outgoing: Outgoing) -> Pushed {
        self.offer(outgoing, true)
            .map_or(Pushed::Dropped, |(pushed, _)| pushed)
    }

    /// As [`Mailbox::push`], and whether the publisher should wait for [`Mailbox::room`]
    /// before reading more: the queue was full and its consumer is not stalled.
    /// With `direct`, a QoS 0 message may be written to the client's socket directly (see
    /// the module's documentation).
    pub fn push_full(&self, outgoing: Outgoing, direct: bool) -> (Pushed, bool) {
        if !direct {
            return self
                .offer(outgoing, true)
                .unwrap_or((Pushed::Dropped, false));
        }
        match self.offer_or_write(outgoing) {
            Ok(pushed) => pushed,
            Err(_) => (Pushed::Dropped, false),
        }
    }

    /// Queues `outgoing` only if there is room; gives it back otherwise.
    pub fn try_push(&self, outgoing: Outgoing) -> Result<(), Outgoing> {
        self.offer(outgoing, false).map(|_| ())
    }

    /// [`Mailbox::offer`], or a direct write where the client's task writes nothing.
    fn offer_or_write(&self, outgoing: Outgoing) -> Result<(Pushed, bool), Outgoing> {
        if outgoing.qos == QoS::AtMostOnce {
            let inner = &self.inner;
            let mut state = lock(&inner.state);
            let idle = !state.closed && state.messages.is_empty();
            if let Some(direct) = state.direct.as_mut().filter(|direct| idle && direct.idle) {
                if direct.write(&outgoing) {
                    let woken = direct.pending.is_some();
                    drop(state);
                    if woken {
                        inner.ready.notify_one();
                    }
                    return Ok((Pushed::Queued, false));
                }
            }
            return Self::queue(inner, state, outgoing, true);
        }
        self.offer(outgoing, true)
    }

    /// Gives `outgoing` back when it is not queued.
    fn offer(&self, outgoing: Outgoing, evict: bool) -> Result<(Pushed, bool), Outgoing> {
        let inner = &self.inner;
        let state = lock(&inner.state);
        Self::queue(inner, state, outgoing, evict)
    }

    fn queue(
        inner: &Inner,
        mut state: std::sync::MutexGuard<'_, State>,
        mut outgoing: Outgoing,
        evict: bool,
    ) -> Result<(Pushed, bool), Outgoing> {
        if state.closed {
            return Err(outgoing);
        }
        let mut pushed = Pushed::Queued;
        if state.messages.len() >= inner.capacity {
            if !evict {
                return Err(outgoing);
            }
            let wait = !state.stalled;
            if outgoing.qos == QoS::AtMostOnce {
                return Ok((Pushed::Dropped, wait));
            }
            if let Some(oldest) = state.messages.pop_front() {
                if let Some(journal) = &inner.journal {
                    journal.done(&oldest);
                }
            }
            pushed = Pushed::QueuedDroppingOldest;
        }
        let was_empty = state.messages.is_empty();
        outgoing.seq = state.next_seq;
        state.next_seq += 1;
        if let Some(journal) = &inner.journal {
            journal.queued(&outgoing);
        }
        state.messages.push_back(outgoing);
        if let Some(direct) = &mut state.direct {
            // Later messages queue behind this one.
            direct.idle = false;
        }
        let wait = pushed == Pushed::QueuedDroppingOldest && !state.stalled;
        drop(state);
        // The consumer drains the whole queue once woken: only the first message of a
        // batch wakes it.
        if was_empty {
            inner.ready.notify_one();
        }
        Ok((pushed, wait))
    }

    /// Resolves once the consumer has worked through half of the queue, or the queue was
    /// closed, or at `deadline`; then the queue is marked stalled (not waited for again
    /// until its consumer makes room).
    pub async fn room(&self, deadline: tokio::time::Instant) {
        let inner = &self.inner;
        let notified = inner.room.notified();
        tokio::pin!(notified);
        // Registered before the check, so that room made in between is not missed.
        notified.as_mut().enable();
        {
            let mut state = lock(&inner.state);
            if state.closed || state.stalled || state.messages.len() <= inner.low_water() {
                return;
            }
            state.wanted = true;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            let mut state = lock(&inner.state);
            if state.messages.len() > inner.low_water() {
                state.stalled = true;
            }
        }
    }

    /// The journal of a persistent session.
    pub fn journal(&self) -> Option<&Arc<Journal>> {
        self.inner.journal.as_ref()
    }
}

impl Queue {
    /// The next message, waiting for one. Only the session's own task receives.
    #[cfg(test)]
    pub async fn recv(&mut self) -> Option<Outgoing> {
        loop {
            if let Ok(outgoing) = self.try_recv() {
                return Some(outgoing);
            }
            // A notification sent since the check above is kept as a permit.
            self.inner.ready.notified().await;
        }
    }

    #[cfg(test)]
    pub fn try_recv(&mut self) -> Result<Outgoing, Empty> {
        let inner = &self.inner;
        let mut state = lock(&inner.state);
        let outgoing = state.messages.pop_front().ok_or(Empty)?;
        self.made_room(state);
        Ok(outgoing)
    }

    /// Resolves once a message is waiting (at once if one is). Only the session's own task
    /// receives.
    pub async fn ready(&mut self) {
        loop {
            if lock(&self.inner.state).has_work() {
                return;
            }
            // A notification sent since the check above is kept as a permit.
            self.inner.ready.notified().await;
        }
    }

    /// Moves up to `max` waiting messages, oldest first, to the end of `batch`, under one
    /// lock instead of one per message; returns how many are left waiting.
    /// Publishers write nothing directly until [`Gate::release`].
    pub fn take(&mut self, batch: &mut Vec<Outgoing>, max: usize) -> usize {
        let mut state = lock(&self.inner.state);
        if let Some(direct) = &mut state.direct {
            direct.idle = false;
        }
        let n = max.min(state.messages.len());
        batch.extend(state.messages.drain(..n));
        let left = state.messages.len();
        self.made_room(state);
        left
    }

    /// Wakes the publishers waiting for room once the queue is down to half.
    fn made_room(&self, mut state: std::sync::MutexGuard<'_, State>) {
        let inner = &self.inner;
        if (state.wanted || state.stalled) && state.messages.len() <= inner.low_water() {
            state.wanted = false;
            state.stalled = false;
            drop(state);
            inner.room.notify_waiters();
        }
    }

    /// The handle the connection's writes take the socket with.
    pub fn gate(&self) -> Gate {
        Gate {
            inner: self.inner.clone(),
        }
    }

    /// Lets publishers write to the client's socket directly while nothing is queued (see
    /// the module's documentation); `make` builds its [`Direct`] the first time. The
    /// caller has written everything it had.
    pub fn attach(&self, make: impl FnOnce() -> Option<Direct>) {
        let mut state = lock(&self.inner.state);
        if state.closed {
            return;
        }
        if state.direct.is_none() {
            state.direct = make().map(Box::new);
        }
        let empty = state.messages.is_empty();
        if let Some(direct) = &mut state.direct {
            direct.idle = empty && direct.pending.is_none();
        }
    }

    /// Forgets the socket before it is closed, with what a direct write left unsent.
    pub fn detach(&self) {
        lock(&self.inner.state).direct = None;
    }

    /// Refuses further messages; what is queued stays for [`Queue::take`].
    pub fn close(&self) {
        let mut state = lock(&self.inner.state);
        state.closed = true;
        state.direct = None;
        drop(state);
        self.inner.room.notify_waiters();
    }

    /// Puts back a message read from the store, keeping its sequence number; the journal
    /// already has it.
    pub fn restore(&mut self, outgoing: Outgoing) {
        let mut state = lock(&self.inner.state);
        state.next_seq = state.next_seq.max(outgoing.seq + 1);
        if state.messages.len() < self.inner.capacity {
            state.messages.push_back(outgoing);
        }
    }

    /// Makes later messages number after `seq` (a restored in-flight message's).
    pub fn skip_past(&mut self, seq: u64) {
        let mut state = lock(&self.inner.state);
        state.next_seq = state.next_seq.max(seq + 1);
    }
}

/// Held by the connection's writes: takes the socket back from publishers' direct writes
/// while the connection's own task writes.
pub struct Gate {
    inner: Arc<Inner>,
}

impl Gate {
    /// Takes the socket back from publishers before the client's task writes to it: no
    /// direct write starts until [`Gate::release`]. What a publisher's direct write left
    /// unsent goes to the front of `wbuf`, since its first bytes are on the wire already.
    pub fn claim(&self, wbuf: &mut BytesMut) {
        let mut state = lock(&self.inner.state);
        let Some(direct) = &mut state.direct else {
            return;
        };
        direct.idle = false;
        if let Some(pending) = direct.pending.take() {
            if wbuf.is_empty() {
                wbuf.extend_from_slice(&pending);
            } else {
                let mut joined = BytesMut::with_capacity(pending.len() + wbuf.len());
                joined.extend_from_slice(&pending);
                joined.extend_from_slice(wbuf);
                *wbuf = joined;
            }
        }
    }

    /// The client's task has written everything it had: publishers may write QoS 0
    /// messages directly while nothing is queued.
    pub fn release(&self) {
        let mut state = lock(&self.inner.state);
        let empty = state.messages.is_empty();
        if let Some(direct) = &mut state.direct {
            direct.idle = empty && direct.pending.is_none();
        }
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.close();
    }
}

impl State {
    /// Messages are queued, or a direct write left bytes for the client's task to write.
    fn has_work(&self) -> bool {
        !self.messages.is_empty()
            || self
                .direct
                .as_ref()
                .is_some_and(|direct| direct.pending.is_some())
    }
}

impl Inner {
    /// The length at or below which publishers waiting for room go on.
    fn low_water(&self) -> usize {
        self.capacity / 2
    }
}

/// [`Queue::try_recv`] found nothing.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Empty;

// Every update is a single push or pop, consistent across a panic.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::router::{Message, MessageProperties};

    fn outgoing(qos: QoS, payload: &'static str) -> Outgoing {
        Outgoing {
            message: Arc::new(Message {
                topic: "t".into(),
                payload: payload.into(),
                qos,
                retain: false,
                properties: MessageProperties::default(),
                origin: None,
                origin_registry: None,
            }),
            qos,
            retain: false,
            subscription_ids: Vec::new(),
            seq: 0,
        }
    }

    fn sized(qos: QoS, payload: Vec<u8>) -> Outgoing {
        let mut outgoing = outgoing(qos, "");
        if let Some(message) = Arc::get_mut(&mut outgoing.message) {
            message.payload = payload.into();
        }
        outgoing
    }

    /// A connected pair of loopback TCP sockets: the broker's end (non-blocking, as the
    /// runtime keeps it) and the client's.
    /// A connected loopback pair: the broker's side (non-blocking) and the client's.
    pub(crate) fn socket_pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        server.set_nonblocking(true).expect("non-blocking");
        (server, client)
    }

    pub(crate) fn direct_to(server: &std::net::TcpStream, version: ProtocolVersion) -> Direct {
        Direct::new(
            std::os::fd::AsRawFd::as_raw_fd(server),
            version,
            None,
            iotcore_telemetry::Counter::default(),
            None,
        )
    }

    /// Reads whole PUBLISH packets from `client` until `count` arrived; their payloads.
    fn read_publishes(
        client: &mut std::net::TcpStream,
        version: ProtocolVersion,
        count: usize,
    ) -> Vec<Vec<u8>> {
        use std::io::Read;
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .expect("timeout");
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        while got.len() < count {
            match iotcore_codec::decode(&mut buf, version, 1 << 20) {
                Ok(Some(iotcore_codec::Packet::Publish(publish))) => {
                    got.push(publish.payload.to_vec());
                    continue;
                }
                Ok(Some(other)) => panic!("expected PUBLISH, got {other:?}"),
                Ok(None) => {}
                Err(e) => panic!("a packet was cut or mixed with another: {e}"),
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = client.read(&mut chunk).expect("read");
            assert!(n > 0, "closed");
            buf.extend_from_slice(&chunk[..n]);
        }
        got
    }

    /// A QoS 0 message to an attached, idle client is written to its socket at once and
    /// not queued; while a QoS 1 message waits in the queue, QoS 0 ones queue behind it;
    /// while the client's task holds the socket nothing is written directly.
    #[test]
    fn direct_writes_only_while_nothing_is_queued_or_being_written() {
        let (server, mut client) = socket_pair();
        let (mailbox, mut queue) = channel(16, None);
        let version = ProtocolVersion::V3_1_1;
        queue.attach(|| Some(direct_to(&server, version)));
        let gate = queue.gate();

        assert_eq!(
            mailbox.push_full(outgoing(QoS::AtMostOnce, "a"), true),
            (Pushed::Queued, false)
        );
        assert!(queue.try_recv().is_err(), "written, not queued");
        assert_eq!(read_publishes(&mut client, version, 1), [b"a".to_vec()]);
        // Part of a burst: queued for the client's task even though the socket is idle.
        mailbox.push_full(outgoing(QoS::AtMostOnce, "burst"), false);
        assert_eq!(payloads(&mut queue), ["burst"]);

        mailbox.push_full(outgoing(QoS::AtLeastOnce, "b"), true);
        mailbox.push_full(outgoing(QoS::AtMostOnce, "c"), true);
        let mut batch = Vec::new();
        assert_eq!(queue.take(&mut batch, 10), 0);
        // Taken but not written yet: the client's task holds the socket.
        mailbox.push_full(outgoing(QoS::AtMostOnce, "d"), true);
        let taken: Vec<_> = batch
            .iter()
            .map(|o| String::from_utf8_lossy(&o.message.payload).into_owned())
            .collect();
        assert_eq!(
            taken,
            ["b", "c"],
            "in order, behind the queued QoS 1 message"
        );
        assert_eq!(
            payloads(&mut queue),
            ["d"],
            "queued behind what is being written"
        );

        let mut wbuf = BytesMut::new();
        gate.claim(&mut wbuf);
        gate.release();
        mailbox.push_full(outgoing(QoS::AtMostOnce, "e"), true);
        assert!(
            queue.try_recv().is_err(),
            "released: written directly again"
        );
        gate.claim(&mut wbuf);
        mailbox.push_full(outgoing(QoS::AtMostOnce, "f"), true);
        assert_eq!(payloads(&mut queue), ["f"], "claimed: queued");
        gate.release();
        assert_eq!(read_publishes(&mut client, version, 1), [b"e".to_vec()]);

        // Detached (the connection ends): queued again.
        queue.detach();
        mailbox.push_full(outgoing(QoS::AtMostOnce, "g"), true);
        assert_eq!(payloads(&mut queue), ["g"]);
    }

    /// A socket that takes only part of a message: the rest goes to the front of the
    /// client's task's next write, later messages queue behind it, and the client reads
    /// every packet whole and in order.
    #[test]
    fn a_partial_direct_write_is_finished_by_the_clients_task_before_anything_else() {
        use std::io::Write;
        let (server, mut client) = socket_pair();
        let (mailbox, mut queue) = channel(10_000, None);
        let version = ProtocolVersion::V5;
        queue.attach(|| Some(direct_to(&server, version)));
        let gate = queue.gate();
        let payload = |i: usize| {
            let mut p = format!("{i:06}").into_bytes();
            p.resize(20_000 + i % 5000, b'a' + (i % 26) as u8);
            p
        };
        // Written directly until the socket is full, then queued.
        let mut sent = 0;
        while queue.try_recv().is_err() && sent < 5000 {
            mailbox.push_full(sized(QoS::AtMostOnce, payload(sent)), true);
            sent += 1;
        }
        assert!(sent < 5000, "the socket never filled up");
        // try_recv took the first queued message: put it back through the task's path.
        // The rest of a message the socket took only part of, if it did, comes first.
        let mut wbuf = BytesMut::new();
        gate.claim(&mut wbuf);
        let mut batch = Vec::new();
        queue.take(&mut batch, usize::MAX);
        assert!(batch.is_empty());
        let mut pending = wbuf.to_vec();
        // The last message pushed was the one queued (taken by try_recv above); encode it
        // as the task would, after the pending bytes.
        let mut last = BytesMut::new();
        let last_payload = payload(sent - 1);
        let properties = Properties::default();
        PublishRef {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "t",
            packet_id: None,
            payload: &last_payload,
            properties: &properties,
        }
        .encode(version, &mut last)
        .expect("encode");
        pending.extend_from_slice(&last);
        let reader = std::thread::spawn(move || read_publishes(&mut client, version, sent));
        let mut server = server;
        server.set_nonblocking(false).expect("blocking");
        server.write_all(&pending).expect("write");
        let got = reader.join().expect("reader");
        assert_eq!(got.len(), sent);
        for (i, p) in got.iter().enumerate() {
            assert_eq!(*p, payload(i), "message {i} whole and in order");
        }
    }

    fn payloads(queue: &mut Queue) -> Vec<String> {
        let mut seen = Vec::new();
        while let Ok(o) = queue.try_recv() {
            seen.push(String::from_utf8_lossy(&o.message.payload).into_owned());
        }
        seen
    }

    /// SPEC §3.1: beyond the limit QoS 0 messages are dropped, QoS 1/2 ones push out the
    /// oldest.
    #[test]
    fn a_full_queue_drops_qos0_and_the_oldest_for_qos1() {
        let (mailbox, mut queue) = channel(2, None);
        assert_eq!(
            mailbox.push(outgoing(QoS::AtLeastOnce, "1")),
            Pushed::Queued
        );
        assert_eq!(mailbox.push(outgoing(QoS::AtMostOnce, "2")), Pushed::Queued);
        assert_eq!(
            mailbox.push(outgoing(QoS::AtMostOnce, "3")),
            Pushed::Dropped
        );
        assert_eq!(
            mailbox.push(outgoing(QoS::ExactlyOnce, "4")),
            Pushed::QueuedDroppingOldest
        );
        assert!(mailbox.try_push(outgoing(QoS::AtLeastOnce, "5")).is_err());
        assert_eq!(payloads(&mut queue), ["2", "4"]);
    }

    /// A batch takes the oldest messages in order, and makes room as single receives do.
    #[tokio::test]
    async fn take_moves_the_oldest_messages_and_makes_room() {
        let (mailbox, mut queue) = channel(4, None);
        for _ in 0..4 {
            mailbox.push(outgoing(QoS::AtLeastOnce, "q"));
        }
        assert_eq!(
            mailbox.push_full(outgoing(QoS::AtMostOnce, "x"), true),
            (Pushed::Dropped, true)
        );
        let waiter = mailbox.clone();
        let far = tokio::time::Instant::now() + std::time::Duration::from_secs(3600);
        let waiting = tokio::spawn(async move { waiter.room(far).await });
        tokio::task::yield_now().await;
        let mut batch = Vec::new();
        assert_eq!(queue.take(&mut batch, 3), 1, "one left");
        assert_eq!(
            batch.iter().map(|o| o.seq).collect::<Vec<_>>(),
            [1, 2, 3],
            "oldest first"
        );
        waiting.await.expect("room at half the queue");
        queue.ready().await;
        assert_eq!(queue.take(&mut batch, 10), 0);
        assert_eq!(batch.len(), 4);
        assert_eq!(queue.take(&mut batch, 10), 0);
        assert_eq!(batch.len(), 4, "nothing more");
    }

    #[test]
    fn a_closed_mailbox_takes_nothing() {
        let (mailbox, queue) = channel(2, None);
        drop(queue);
        assert_eq!(
            mailbox.push(outgoing(QoS::AtLeastOnce, "1")),
            Pushed::Dropped
        );
    }

    #[tokio::test]
    async fn recv_wakes_for_a_message_pushed_later() {
        let (mailbox, mut queue) = channel(2, None);
        let waiter = tokio::spawn(async move { queue.recv().await.map(|o| o.seq) });
        tokio::task::yield_now().await;
        mailbox.push(outgoing(QoS::AtLeastOnce, "1"));
        assert_eq!(waiter.await.expect("join"), Some(1));
    }

    /// Back-pressure: a publisher that found the queue full waits until the consumer has
    /// worked through half of it.
    #[tokio::test]
    async fn room_resolves_once_the_consumer_has_drained_half_the_queue() {
        let (mailbox, mut queue) = channel(4, None);
        for i in 0..4 {
            assert_eq!(
                mailbox.push_full(outgoing(QoS::AtMostOnce, "q"), true),
                (Pushed::Queued, false),
                "{i}"
            );
        }
        assert_eq!(
            mailbox.push_full(outgoing(QoS::AtMostOnce, "x"), true),
            (Pushed::Dropped, true),
            "full: the publisher is asked to wait"
        );
        let waiter = mailbox.clone();
        let far = tokio::time::Instant::now() + std::time::Duration::from_secs(3600);
        let waiting = tokio::spawn(async move { waiter.room(far).await });
        tokio::task::yield_now().await;
        assert!(queue.try_recv().is_ok());
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "three of four left: still waiting");
        assert!(queue.try_recv().is_ok());
        waiting.await.expect("room at half the queue");
    }

    /// A consumer that makes no room in time is stalled: publishers do not wait for it
    /// again until it has drained half of its queue.
    #[tokio::test]
    async fn a_queue_without_room_in_time_is_stalled_until_its_consumer_drains_it() {
        let (mailbox, mut queue) = channel(2, None);
        mailbox.push(outgoing(QoS::AtLeastOnce, "1"));
        mailbox.push(outgoing(QoS::AtLeastOnce, "2"));
        let soon = tokio::time::Instant::now() + std::time::Duration::from_millis(1);
        mailbox.room(soon).await;
        assert_eq!(
            mailbox.push_full(outgoing(QoS::AtLeastOnce, "3"), true),
            (Pushed::QueuedDroppingOldest, false),
            "stalled: nobody waits"
        );
        assert_eq!(
            mailbox.push_full(outgoing(QoS::AtMostOnce, "4"), true),
            (Pushed::Dropped, false)
        );
        assert!(queue.try_recv().is_ok());
        assert_eq!(
            mailbox.push_full(outgoing(QoS::AtMostOnce, "5"), true),
            (Pushed::Queued, false)
        );
        assert_eq!(
            mailbox.push_full(outgoing(QoS::AtMostOnce, "6"), true),
            (Pushed::Dropped, true),
            "drained: waited for again"
        );
        // A closed queue is never waited for.
        drop(queue);
        mailbox
            .room(tokio::time::Instant::now() + std::time::Duration::from_secs(3600))
            .await;
    }
}
