//! Change notifications from the control plane to every broker and rules process, over
//! PostgreSQL LISTEN/NOTIFY. A notification is sent inside the transaction that makes the
//! change, so it is delivered exactly when the change becomes visible.

use crate::{Result, TenantId};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;
use sqlx::PgExecutor;

/// The channel every change is published on.
pub const CHANNEL: &str = "iotcore_changes";

/// What changed. Small on purpose: receivers reload what they cache from the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// A rule of the tenant was created, changed or deleted.
    Rules { tenant_id: TenantId },
    /// A credential, device, registry or the tenant itself changed in a way that can
    /// invalidate cached authentication results or live sessions.
    Principals { tenant_id: TenantId },
    /// A policy of the tenant changed, or one was attached or detached.
    Policies { tenant_id: TenantId },
}

/// Sends `change` on [`CHANNEL`]; call it with the transaction that makes the change.
pub async fn publish<'e>(executor: impl PgExecutor<'e>, change: &Change) -> Result<()> {
    let payload = serde_json::to_string(change).unwrap_or_default();
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(payload)
        .execute(executor)
        .await?;
    Ok(())
}

/// Commits `tx` with a [`Change::Principals`] of `tenant` in it, for the changes that can
/// invalidate what brokers cached about the tenant's clients.
pub(crate) async fn commit_principals(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    tenant: &TenantId,
) -> Result<()> {
    publish(
        &mut *tx,
        &Change::Principals {
            tenant_id: tenant.clone(),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Listens on [`CHANNEL`].
pub struct ChangeListener {
    listener: PgListener,
}

impl ChangeListener {
    pub async fn connect(store: &crate::Store) -> Result<ChangeListener> {
        let mut listener = PgListener::connect_with(store.pool()).await?;
        listener.listen(CHANNEL).await?;
        Ok(ChangeListener { listener })
    }

    /// The next change. `None` means the connection was lost and re-established, so
    /// notifications may have been missed: receivers should reload everything.
    pub async fn recv(&mut self) -> Result<Option<Change>> {
        match self.listener.try_recv().await? {
            Some(notification) => {
                // A payload that does not parse is a sign of a newer writer; treat it like
                // a lost connection and reload everything.
                Ok(serde_json::from_str(notification.payload()).ok())
            }
            None => Ok(None),
        }
    }
}

/// Wake-ups on a channel whose payload does not matter (new work to claim, for example).
pub struct Wakeups {
    listener: PgListener,
}

impl Wakeups {
    pub async fn connect(store: &crate::Store, channel: &str) -> Result<Wakeups> {
        let mut listener = PgListener::connect_with(store.pool()).await?;
        listener.listen(channel).await?;
        Ok(Wakeups { listener })
    }

    /// Waits for the next notification. After a lost connection it returns at once (work
    /// may have been notified meanwhile), so callers simply look for work again.
    pub async fn wait(&mut self) -> Result<()> {
        self.listener.try_recv().await?;
        Ok(())
    }
}
