//! Optimistic concurrency of the control plane: a resource's version is the time it was
//! last changed (`updated_at`), and a change or deletion may be made conditional on it.
//!
//! The check locks the row (`FOR UPDATE`) in the transaction that then changes it, so two
//! writers holding the same version cannot both succeed. Every change of a versioned row moves
//! `updated_at` forward by at least a microsecond ([`BUMP`]), so the version changes even
//! when two changes fall in the same microsecond or the clock steps back.

use crate::{Result, StoreError, TenantId};
use chrono::{DateTime, Utc};
use sqlx::PgConnection;

/// The SQL expression a change sets `updated_at` to: never equal to the previous value.
pub(crate) const BUMP: &str = "GREATEST(now(), updated_at + interval '1 microsecond')";

/// A table whose rows carry a version.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Versioned {
    Tenants,
    Registries,
    Devices,
    Brokers,
    Rules,
    Policies,
}

impl Versioned {
    fn lock_query(self) -> &'static str {
        match self {
            // A tenant is its own scope: both parameters are its id.
            Versioned::Tenants => {
                "SELECT updated_at FROM tenants WHERE id = $1 AND id = $2 FOR UPDATE"
            }
            Versioned::Registries => {
                "SELECT updated_at FROM registries WHERE tenant_id = $1 AND id = $2 FOR UPDATE"
            }
            Versioned::Devices => {
                "SELECT updated_at FROM devices WHERE tenant_id = $1 AND id = $2 FOR UPDATE"
            }
            Versioned::Brokers => {
                "SELECT updated_at FROM brokers WHERE tenant_id = $1 AND id = $2 FOR UPDATE"
            }
            Versioned::Rules => {
                "SELECT updated_at FROM rules WHERE tenant_id = $1 AND id = $2 FOR UPDATE"
            }
            Versioned::Policies => {
                "SELECT updated_at FROM policies WHERE tenant_id = $1 AND id = $2 FOR UPDATE"
            }
        }
    }
}

/// When `expected` is given, locks the row `id` of `tenant` in `table` until the end of the
/// transaction and checks that its version is one of `expected`: `NotFound` when there is
/// no such row, `PreconditionFailed` when it has another version (an empty `expected`
/// matches none). Without `expected`, does nothing.
pub(crate) async fn check(
    conn: &mut PgConnection,
    table: Versioned,
    tenant: &TenantId,
    id: &str,
    expected: Option<&[DateTime<Utc>]>,
) -> Result<()> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let current: Option<DateTime<Utc>> = sqlx::query_scalar(table.lock_query())
        .bind(tenant)
        .bind(id)
        .fetch_optional(conn)
        .await?;
    match current {
        None => Err(StoreError::NotFound),
        Some(current) if !expected.contains(&current) => Err(StoreError::PreconditionFailed),
        Some(_) => Ok(()),
    }
}
