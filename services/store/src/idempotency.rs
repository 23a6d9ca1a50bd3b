//! Idempotent creation (SPEC §6.1): the first request with an `Idempotency-Key` claims
//! the key in its scope, and its response is kept until the key expires, so that retries
//! get the same answer instead of creating the resource again.

use crate::{Result, Store};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// A response kept for replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub content_type: Option<String>,
    pub location: Option<String>,
    pub body: Vec<u8>,
}

/// What [`Store::claim_idempotency_key`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// The key is new (or had expired): process the request, then
    /// [`Store::complete_idempotency_key`] or [`Store::release_idempotency_key`].
    Claimed,
    /// The same request was answered before: replay this.
    Replay(StoredResponse),
    /// The same request is being processed right now.
    InProgress,
    /// The key was used for a different request.
    Mismatch,
}

/// Rows removed per claim when cleaning expired keys, so that cleaning never makes one
/// request slow.
const CLEANUP_BATCH: i64 = 100;

impl Store {
    /// Claims `key` in `scope` for the request whose path and body are `request`, for
    /// `ttl`.
    pub async fn claim_idempotency_key(
        &self,
        scope: &str,
        key: &str,
        request: &[u8],
        ttl: Duration,
    ) -> Result<IdempotencyClaim> {
        let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM api_idempotency WHERE ctid IN (
                 SELECT ctid FROM api_idempotency WHERE expires_at < now() LIMIT $1)",
        )
        .bind(CLEANUP_BATCH)
        .execute(&mut *tx)
        .await?;
        let inserted = sqlx::query(
            "INSERT INTO api_idempotency (scope, key, request_hash, expires_at)
             VALUES ($1, $2, sha256($3), now() + make_interval(secs => $4))
             ON CONFLICT (scope, key) DO UPDATE
                SET request_hash = EXCLUDED.request_hash, status = NULL, content_type = NULL,
                    location = NULL, body = NULL, created_at = now(),
                    expires_at = EXCLUDED.expires_at
              WHERE api_idempotency.expires_at < now()",
        )
        .bind(scope)
        .bind(key)
        .bind(request)
        .bind(ttl_secs as f64)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 1 {
            tx.commit().await?;
            return Ok(IdempotencyClaim::Claimed);
        }
        #[derive(sqlx::FromRow)]
        struct Row {
            same: bool,
            status: Option<i16>,
            content_type: Option<String>,
            location: Option<String>,
            body: Option<Vec<u8>>,
        }
        let row: Row = sqlx::query_as(
            "SELECT request_hash = sha256($3) AS same, status, content_type, location, body
               FROM api_idempotency WHERE scope = $1 AND key = $2",
        )
        .bind(scope)
        .bind(key)
        .bind(request)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(match row {
            Row { same: false, .. } => IdempotencyClaim::Mismatch,
            Row {
                status: Some(status),
                content_type,
                location,
                body,
                ..
            } => IdempotencyClaim::Replay(StoredResponse {
                status: u16::try_from(status).unwrap_or(500),
                content_type,
                location,
                body: body.unwrap_or_default(),
            }),
            Row { status: None, .. } => IdempotencyClaim::InProgress,
        })
    }

    /// Keeps `response` as the answer to the claimed `key`.
    pub async fn complete_idempotency_key(
        &self,
        scope: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE api_idempotency SET status = $3, content_type = $4, location = $5, body = $6
              WHERE scope = $1 AND key = $2",
        )
        .bind(scope)
        .bind(key)
        .bind(i16::try_from(response.status).unwrap_or(500))
        .bind(response.content_type.as_deref())
        .bind(response.location.as_deref())
        .bind(&response.body)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets a claimed `key` whose request failed in a way a retry may fix.
    pub async fn release_idempotency_key(&self, scope: &str, key: &str) -> Result<()> {
        sqlx::query("DELETE FROM api_idempotency WHERE scope = $1 AND key = $2 AND status IS NULL")
            .bind(scope)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// When `key` of `scope` expires, if it is held.
    pub async fn idempotency_key_expiry(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<Option<DateTime<Utc>>> {
        Ok(sqlx::query_scalar(
            "SELECT expires_at FROM api_idempotency WHERE scope = $1 AND key = $2",
        )
        .bind(scope)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_key_replays_its_response_and_refuses_other_requests(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let request = b"/v1/registries\n{\"name\":\"a\"}";
        assert_eq!(
            store
                .claim_idempotency_key("tnt_a", "k1", request, DAY)
                .await
                .unwrap(),
            IdempotencyClaim::Claimed
        );
        assert_eq!(
            store
                .claim_idempotency_key("tnt_a", "k1", request, DAY)
                .await
                .unwrap(),
            IdempotencyClaim::InProgress
        );
        let response = StoredResponse {
            status: 201,
            content_type: Some("application/json".into()),
            location: Some("/v1/registries/reg_x".into()),
            body: b"{}".to_vec(),
        };
        store
            .complete_idempotency_key("tnt_a", "k1", &response)
            .await
            .unwrap();
        assert_eq!(
            store
                .claim_idempotency_key("tnt_a", "k1", request, DAY)
                .await
                .unwrap(),
            IdempotencyClaim::Replay(response)
        );
        assert_eq!(
            store
                .claim_idempotency_key("tnt_a", "k1", b"/v1/registries\n{}", DAY)
                .await
                .unwrap(),
            IdempotencyClaim::Mismatch
        );
        // Keys are per scope.
        assert_eq!(
            store
                .claim_idempotency_key("tnt_b", "k1", request, DAY)
                .await
                .unwrap(),
            IdempotencyClaim::Claimed
        );
        // A released key can be claimed again.
        store.release_idempotency_key("tnt_b", "k1").await.unwrap();
        assert_eq!(
            store
                .claim_idempotency_key("tnt_b", "k1", b"other", DAY)
                .await
                .unwrap(),
            IdempotencyClaim::Claimed
        );
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn an_expired_key_is_claimed_afresh(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        store
            .claim_idempotency_key("s", "k", b"one", DAY)
            .await
            .unwrap();
        sqlx::query("UPDATE api_idempotency SET expires_at = now() - interval '1 second'")
            .execute(store.pool())
            .await
            .unwrap();
        assert_eq!(
            store
                .claim_idempotency_key("s", "k", b"two", DAY)
                .await
                .unwrap(),
            IdempotencyClaim::Claimed
        );
        assert!(store
            .idempotency_key_expiry("s", "k")
            .await
            .unwrap()
            .is_some_and(|at| at > Utc::now()));
    }
}
