use thiserror::Error;

/// Errors of the store. Callers map them to HTTP problems or MQTT reason codes; the
/// database's own message never leaves the process except in logs.
#[derive(Debug, Error)]
pub enum StoreError {
    /// No such row *within the caller's tenant*: the same answer whether the row does not
    /// exist or belongs to another tenant.
    #[error("not found")]
    NotFound,
    /// A uniqueness constraint was violated; `field` names the input that collided.
    #[error("{field} already exists")]
    Conflict { field: &'static str },
    /// A referenced row is missing (for example a rule scoped to an unknown registry).
    #[error("{field} refers to something that does not exist")]
    Reference { field: &'static str },
    /// The resource changed since the version the caller based its change on.
    #[error("the resource has changed")]
    PreconditionFailed,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("password hashing failed: {0}")]
    Hash(String),
}

impl StoreError {
    /// Maps a unique or foreign-key violation on `constraint` to a field error.
    /// `fields` pairs constraint names with the input field they concern.
    pub fn on_constraint(err: sqlx::Error, fields: &[(&str, &'static str)]) -> StoreError {
        if let sqlx::Error::Database(db) = &err {
            if let Some(constraint) = db.constraint() {
                for (name, field) in fields {
                    if constraint == *name {
                        return if db.is_foreign_key_violation() {
                            StoreError::Reference { field }
                        } else {
                            StoreError::Conflict { field }
                        };
                    }
                }
            }
        }
        StoreError::Database(err)
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
