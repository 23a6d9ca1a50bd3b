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

use crate::router::Outgoing;
use crate::session_store::Journal;
use iotcore_codec::QoS;
use std::collections::VecDeque;
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
    pub fn push_full(&self, outgoing: Outgoing) -> (Pushed, bool) {
        match self.offer(outgoing, true) {
            Ok(pushed) => pushed,
            Err(_) => (Pushed::Dropped, false),
        }
    }

    /// Queues `outgoing` only if there is room; gives it back otherwise.
    pub fn try_push(&self, outgoing: Outgoing) -> Result<(), Outgoing> {
        self.offer(outgoing, false).map(|_| ())
    }

    /// Gives `outgoing` back when it is not queued.
    fn offer(&self, mut outgoing: Outgoing, evict: bool) -> Result<(Pushed, bool), Outgoing> {
        let inner = &self.inner;
        let mut state = lock(&inner.state);
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
            if !lock(&self.inner.state).messages.is_empty() {
                return;
            }
            // A notification sent since the check above is kept as a permit.
            self.inner.ready.notified().await;
        }
    }

    /// Moves up to `max` waiting messages, oldest first, to the end of `batch`, under one
    /// lock instead of one per message; returns how many are left waiting.
    pub fn take(&mut self, batch: &mut Vec<Outgoing>, max: usize) -> usize {
        let mut state = lock(&self.inner.state);
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

    /// Refuses further messages; what is queued stays for [`Queue::take`].
    pub fn close(&self) {
        lock(&self.inner.state).closed = true;
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

impl Drop for Queue {
    fn drop(&mut self) {
        self.close();
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
mod tests {
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
            mailbox.push_full(outgoing(QoS::AtMostOnce, "x")),
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
                mailbox.push_full(outgoing(QoS::AtMostOnce, "q")),
                (Pushed::Queued, false),
                "{i}"
            );
        }
        assert_eq!(
            mailbox.push_full(outgoing(QoS::AtMostOnce, "x")),
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
            mailbox.push_full(outgoing(QoS::AtLeastOnce, "3")),
            (Pushed::QueuedDroppingOldest, false),
            "stalled: nobody waits"
        );
        assert_eq!(
            mailbox.push_full(outgoing(QoS::AtMostOnce, "4")),
            (Pushed::Dropped, false)
        );
        assert!(queue.try_recv().is_ok());
        assert_eq!(
            mailbox.push_full(outgoing(QoS::AtMostOnce, "5")),
            (Pushed::Queued, false)
        );
        assert_eq!(
            mailbox.push_full(outgoing(QoS::AtMostOnce, "6")),
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
