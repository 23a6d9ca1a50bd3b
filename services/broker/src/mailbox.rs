//! A session's bounded queue of messages on their way to its client.
//!
//! SPEC §3.1 (slow consumers, absent clients): at most `capacity` messages wait; beyond it
//! a QoS 0 message is dropped, while a QoS 1/2 message takes the place of the oldest one
//! waiting, which is dropped. Both are counted by the caller ([`Pushed`]). Nothing here
//! waits: publishers never block on a subscriber.
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
}

struct Inner {
    state: Mutex<State>,
    ready: Notify,
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
        }),
        ready: Notify::new(),
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
        self.offer(outgoing, true).unwrap_or(Pushed::Dropped)
    }

    /// Queues `outgoing` only if there is room; gives it back otherwise.
    pub fn try_push(&self, outgoing: Outgoing) -> Result<(), Outgoing> {
        self.offer(outgoing, false).map(|_| ())
    }

    /// Gives `outgoing` back when it is not queued.
    fn offer(&self, mut outgoing: Outgoing, evict: bool) -> Result<Pushed, Outgoing> {
        let inner = &self.inner;
        let mut state = lock(&inner.state);
        if state.closed {
            return Err(outgoing);
        }
        let mut pushed = Pushed::Queued;
        if state.messages.len() >= inner.capacity {
            if !evict || outgoing.qos == QoS::AtMostOnce {
                return Err(outgoing);
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
        drop(state);
        // The consumer drains the whole queue once woken: only the first message of a
        // batch wakes it.
        if was_empty {
            inner.ready.notify_one();
        }
        Ok(pushed)
    }

    /// The journal of a persistent session.
    pub fn journal(&self) -> Option<&Arc<Journal>> {
        self.inner.journal.as_ref()
    }
}

impl Queue {
    /// The next message, waiting for one. Only the session's own task receives.
    pub async fn recv(&mut self) -> Option<Outgoing> {
        loop {
            if let Ok(outgoing) = self.try_recv() {
                return Some(outgoing);
            }
            // A notification sent since the check above is kept as a permit.
            self.inner.ready.notified().await;
        }
    }

    pub fn try_recv(&mut self) -> Result<Outgoing, Empty> {
        lock(&self.inner.state).messages.pop_front().ok_or(Empty)
    }

    /// Refuses further messages; what is queued stays for [`Queue::try_recv`].
    pub fn close(&self) {
        lock(&self.inner.state).closed = true;
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

/// [`Queue::try_recv`] found nothing.
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
}
