//! Which connection holds which client id, so that a second connection with the same
//! client id takes the session over and closes the first (SPEC §3.1, MQTT-3.1.4-3), and
//! the delayed wills waiting to see whether their client comes back (MQTT-3.1.3-9).

use crate::router::{ConnectionId, Namespace};
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

type Key = (Namespace, String);

#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<Key, (ConnectionId, CancellationToken)>>,
    /// A delayed will learns through its channel that a new connection claimed its client
    /// id: `true` when that connection resumes the session (the will is dropped), `false`
    /// when it starts a clean one (the will is published at once).
    delayed_wills: Mutex<HashMap<Key, (ConnectionId, oneshot::Sender<bool>)>>,
}

impl Sessions {
    /// Registers `connection` as the holder of `client_id` and returns the token that is
    /// cancelled when a later connection takes the session over.
    pub fn claim(
        &self,
        namespace: &Namespace,
        client_id: &str,
        connection: ConnectionId,
        clean_start: bool,
    ) -> CancellationToken {
        let key = (namespace.clone(), client_id.to_owned());
        let token = CancellationToken::new();
        let previous = lock(&self.live).insert(key.clone(), (connection, token.clone()));
        if let Some((_, previous)) = previous {
            previous.cancel();
        }
        if let Some((_, will)) = lock(&self.delayed_wills).remove(&key) {
            let _ = will.send(!clean_start);
        }
        token
    }

    /// Forgets `connection`'s claim, unless another connection has taken it over since.
    pub fn release(&self, namespace: &Namespace, client_id: &str, connection: ConnectionId) {
        let mut live = lock(&self.live);
        let key = (namespace.clone(), client_id.to_owned());
        if live
            .get(&key)
            .is_some_and(|(holder, _)| *holder == connection)
        {
            live.remove(&key);
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
