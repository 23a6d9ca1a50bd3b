//! Typed access to iotcore's PostgreSQL database, shared by the api, broker and rules
//! services.
//!
//! Every function that reads or changes a tenant's data takes that tenant's [`TenantId`]
//! and filters on it, so a caller cannot reach another tenant's rows by passing an id it
//! learned elsewhere: such a row is simply [`StoreError::NotFound`].

pub mod auth;
pub mod brokers;
pub mod certificates;
pub mod connections;
pub mod dead_letters;
pub mod deliveries;
pub mod devices;
pub mod error;
pub mod filters;
pub mod idempotency;
pub mod ids;
pub mod notify;
pub mod passwords;
pub mod policies;
pub mod publishes;
pub mod quotas;
pub mod registries;
pub mod retained;
pub mod rules;
pub mod sessions;
pub mod tenants;
mod versions;

pub use error::{Result, StoreError};
pub use ids::*;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::str::FromStr;
use std::time::Duration;

/// The migrations of `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// A cheap, cloneable handle on the database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Connects a pool of at most `max_connections` to `url`.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store> {
        let options = PgConnectOptions::from_str(url)?.application_name("iotcore");
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Ok(Store { pool })
    }

    pub fn from_pool(pool: PgPool) -> Store {
        Store { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies every pending migration.
    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
