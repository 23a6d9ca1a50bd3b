//! `/v1/tenants`: operators create and inspect tenants.

use super::{created, list_type, next_page_token, PageParams};
use crate::error::{Error, Problem};
use crate::extract::{ApiJson, ApiQuery, Operator, PathId};
use crate::input::ResourceName;
use crate::ApiState;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use iotcore_store::tenants::{Tenant, TenantStatus};
use iotcore_store::TenantId;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/v1/tenants", get(list_tenants).post(create_tenant))
        .route("/v1/tenants/{id}", get(get_tenant))
}

/// A new tenant.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[schema(example = json!({"name": "acme"}))]
pub struct CreateTenant {
    /// 1 to 128 characters; need not be unique.
    pub name: String,
}

/// Whether a tenant may use the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = TenantStatus)]
pub enum TenantStatusView {
    Active,
    Suspended,
}

/// A tenant.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "id": "tnt_4f8k2m9q1z7x3c5v6b0n", "name": "acme", "status": "active",
    "created_at": "2026-01-01T12:00:00Z"
}))]
pub struct TenantView {
    pub id: String,
    pub name: String,
    pub status: TenantStatusView,
    pub created_at: DateTime<Utc>,
}

impl From<Tenant> for TenantView {
    fn from(t: Tenant) -> TenantView {
        TenantView {
            id: t.id.to_string(),
            name: t.name,
            status: match t.status {
                TenantStatus::Active => TenantStatusView::Active,
                TenantStatus::Suspended => TenantStatusView::Suspended,
            },
            created_at: t.created_at,
        }
    }
}

list_type!(
    /// A page of tenants.
    TenantList,
    TenantView
);

/// Create a tenant.
///
/// Operators only. The tenant starts active, with no registries.
#[utoipa::path(
    post, path = "/v1/tenants", tag = "tenants",
    request_body = CreateTenant,
    responses(
        (status = 201, description = "The new tenant", body = TenantView),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_tenant(
    _operator: Operator,
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<CreateTenant>,
) -> Result<Response, Error> {
    let name = ResourceName::parse("name", body.name).map_err(|e| Error::invalid([e]))?;
    let tenant = state
        .store
        .create_tenant(&name.into_inner())
        .await
        .map_err(Error::store("tenant"))?;
    Ok(created(
        format!("/v1/tenants/{}", tenant.id),
        TenantView::from(tenant),
    ))
}

/// List tenants.
///
/// Operators only; ordered by id.
#[utoipa::path(
    get, path = "/v1/tenants", tag = "tenants",
    params(PageParams),
    responses(
        (status = 200, description = "A page of tenants", body = TenantList),
        (status = 400, description = "Invalid page parameters", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_tenants(
    _operator: Operator,
    State(state): State<ApiState>,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<TenantList>, Error> {
    let page = state
        .store
        .list_tenants(&params.request()?)
        .await
        .map_err(Error::store("tenant"))?;
    Ok(Json(TenantList {
        items: page.items.into_iter().map(TenantView::from).collect(),
        next_page_token: next_page_token(page.next_after),
    }))
}

/// Get a tenant.
#[utoipa::path(
    get, path = "/v1/tenants/{id}", tag = "tenants",
    params(("id" = String, Path, description = "Tenant id", example = "tnt_4f8k2m9q1z7x3c5v6b0n")),
    responses(
        (status = 200, description = "The tenant", body = TenantView),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_tenant(
    _operator: Operator,
    State(state): State<ApiState>,
    PathId(id): PathId<TenantId>,
) -> Result<Json<TenantView>, Error> {
    let tenant = state
        .store
        .get_tenant(&id)
        .await
        .map_err(Error::store("tenant"))?;
    Ok(Json(tenant.into()))
}
