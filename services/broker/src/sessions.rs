//! Which connection holds which client id, so that a second connection with the same
//! client id takes the session over and closes the first (SPEC §3.1, MQTT-3.1.4-3).

use crate::router::{ConnectionId, Namespace};
use std::collections::HashMap;
use std::sync::Mutex;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<(Namespace, String), (ConnectionId, CancellationToken)>>,
}

impl Sessions {
    /// Registers `connection` as the holder of `client_id` and returns the token that is
    /// cancelled when a later connection takes the session over.
    pub fn claim(
        &self,
        namespace: &Namespace,
        client_id: &str,
        connection: ConnectionId,
    ) -> CancellationToken {
        let token = CancellationToken::new();
        let previous = self.live.lock().unwrap_or_else(|e| e.into_inner()).insert(
            (namespace.clone(), client_id.to_owned()),
            (connection, token.clone()),
        );
        if let Some((_, previous)) = previous {
            previous.cancel();
        }
        token
    }

    /// Forgets `connection`'s claim, unless another connection has taken it over since.
    pub fn release(&self, namespace: &Namespace, client_id: &str, connection: ConnectionId) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let key = (namespace.clone(), client_id.to_owned());
        if live
            .get(&key)
            .is_some_and(|(holder, _)| *holder == connection)
        {
            live.remove(&key);
        }
    }
}
