//! `/v1/tenants`: operators create, change and delete tenants; members of a tenant read
//! their own and its admins rename it.

use super::{created, list_type, FilterParams, NamePrefixParam, PageParams};
use crate::auth::{Principal, Role};
use crate::error::{Error, FieldError, Problem};
use crate::extract::{ApiJson, ApiQuery, Operator, PathId};
use crate::input::ResourceName;
use crate::versioning::{tagged, with_etag, IfMatch};
use crate::ApiState;
use axum::extract::State;
use axum::http::StatusCode;
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
        .route(
            "/v1/tenants/{id}",
            get(get_tenant).patch(update_tenant).delete(delete_tenant),
        )
}

/// A new tenant.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[schema(example = json!({"name": "acme"}))]
pub struct CreateTenant {
    /// 1 to 128 characters; need not be unique.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\s\x00-\x1f\x7f-\x9f]([^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f])?$"
    )]
    pub name: String,
}

/// Whether a tenant may use the service. A suspended tenant's clients are disconnected
/// and cannot connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = TenantStatus, example = "active")]
pub enum TenantStatusView {
    Active,
    Suspended,
}

impl TenantStatusView {
    fn into_store(self) -> TenantStatus {
        match self {
            TenantStatusView::Active => TenantStatus::Active,
            TenantStatusView::Suspended => TenantStatus::Suspended,
        }
    }
}

/// A change to a tenant; absent fields stay as they are.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[schema(example = json!({"status": "suspended"}))]
pub struct UpdateTenant {
    /// 1 to 128 characters.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\s\x00-\x1f\x7f-\x9f]([^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f])?$"
    )]
    pub name: Option<String>,
    /// Operators only: suspend or reactivate the tenant.
    pub status: Option<TenantStatusView>,
}

/// Filter of the tenant list.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TenantStatusParam {
    /// Keep tenants in this status.
    pub status: Option<TenantStatusView>,
}

/// Operators reach every tenant; a member reaches only its own, and any other answers 404
/// exactly like a missing one.
fn check_reach(principal: &Principal, id: &TenantId) -> Result<(), Error> {
    match &principal.tenant_id {
        Some(own) if own != id => Err(Error::NotFound("tenant")),
        _ => Ok(()),
    }
}

/// A tenant.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "id": "tnt_4f8k2m9q1z7x3c5v6b0n", "name": "acme", "status": "active",
    "created_at": "2026-01-01T12:00:00Z"
}))]
pub struct TenantView {
    /// The tenant's id.
    pub id: String,
    /// The tenant's name (not necessarily unique).
    pub name: String,
    /// Whether the tenant may use the service.
    pub status: TenantStatusView,
    /// When it was created.
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
    #[schema(example = json!({"items": [{"id": "tnt_4f8k2m9q1z7x3c5v6b0n", "name": "acme", "status": "active", "created_at": "2026-01-01T12:00:00Z"}], "next_page_token": null}))]
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
        (status = 201, description = "The new tenant", body = TenantView, headers(("ETag" = String, description = "The entity tag of this version, for If-Match"))),
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
    let version = tenant.updated_at;
    let response = created(
        format!("/v1/tenants/{}", tenant.id),
        TenantView::from(tenant),
    );
    Ok(with_etag(response, version))
}

/// List tenants.
///
/// Operators only; ordered by id.
#[utoipa::path(
    get, path = "/v1/tenants", tag = "tenants",
    params(PageParams, NamePrefixParam, TenantStatusParam),
    responses(
        (status = 200, description = "A page of tenants", body = TenantList),
        (status = 400, description = "Invalid page parameters", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid filter", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_tenants(
    _operator: Operator,
    State(state): State<ApiState>,
    ApiQuery(params): ApiQuery<PageParams>,
    ApiQuery(filter): ApiQuery<FilterParams>,
    ApiQuery(status): ApiQuery<TenantStatusParam>,
) -> Result<Json<TenantList>, Error> {
    if filter.label.is_some() {
        return Err(Error::invalid([FieldError::new(
            "label",
            "tenants have no labels",
        )]));
    }
    let filter = filter.filter(status.status.map(|s| s.into_store().as_str()))?;
    let page = state
        .store
        .list_tenants(&filter, &params.request()?)
        .await
        .map_err(Error::store("tenant"))?;
    Ok(Json(page.into()))
}

/// Get a tenant.
///
/// Operators read any tenant; members of a tenant read their own.
#[utoipa::path(
    get, path = "/v1/tenants/{id}", tag = "tenants",
    params(("id" = String, Path, description = "Tenant id", pattern = r"^tnt_[0-9a-z]{20}$", example = "tnt_4f8k2m9q1z7x3c5v6b0n")),
    responses(
        (status = 200, description = "The tenant", body = TenantView, headers(("ETag" = String, description = "The entity tag of this version, for If-Match"))),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_tenant(
    principal: Principal,
    State(state): State<ApiState>,
    PathId(id): PathId<TenantId>,
) -> Result<Response, Error> {
    check_reach(&principal, &id)?;
    let tenant = state
        .store
        .get_tenant(&id)
        .await
        .map_err(Error::store("tenant"))?;
    Ok(tagged(tenant.updated_at, TenantView::from(tenant)))
}

/// Change a tenant.
///
/// Operators rename, suspend and reactivate tenants; a tenant's admins may rename their own.
/// Suspending a tenant disconnects its clients.
#[utoipa::path(
    patch, path = "/v1/tenants/{id}", tag = "tenants",
    params(
        ("id" = String, Path, description = "Tenant id", pattern = r"^tnt_[0-9a-z]{20}$", example = "tnt_4f8k2m9q1z7x3c5v6b0n"),
        ("If-Match" = Option<String>, Header, description = "Change only if the resource still has this entity tag (its `ETag`); 412 otherwise", pattern = r#"^(\*|(W/)?"[!#-+--~]*"([ 	]*,[ 	]*(W/)?"[!#-+--~]*"){0,15})$"#),
    ),
    request_body = UpdateTenant,
    responses(
        (status = 200, description = "The changed tenant", body = TenantView, headers(("ETag" = String, description = "The entity tag of this version, for If-Match"))),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A role that may not make this change", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The resource changed since the entity tag in If-Match", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update_tenant(
    principal: Principal,
    State(state): State<ApiState>,
    PathId(id): PathId<TenantId>,
    if_match: IfMatch,
    ApiJson(body): ApiJson<UpdateTenant>,
) -> Result<Response, Error> {
    check_reach(&principal, &id)?;
    match principal.role {
        Role::Operator => {}
        Role::Admin if body.status.is_none() => {}
        Role::Admin => return Err(Error::Forbidden("only operators suspend tenants")),
        Role::Editor | Role::Viewer => {
            return Err(Error::Forbidden("only admins change tenant settings"))
        }
    }
    let name = body
        .name
        .map(|n| ResourceName::parse("name", n).map(ResourceName::into_inner))
        .transpose()
        .map_err(|e| Error::invalid([e]))?;
    let tenant = state
        .store
        .update_tenant(
            &id,
            name.as_deref(),
            body.status.map(TenantStatusView::into_store),
            if_match.versions(),
        )
        .await
        .map_err(Error::store("tenant"))?;
    Ok(tagged(tenant.updated_at, TenantView::from(tenant)))
}

/// Delete a tenant with everything it owns.
///
/// Operators only. Registries, devices, credentials, rules and queued deliveries of the
/// tenant are deleted with it; its clients are disconnected.
#[utoipa::path(
    delete, path = "/v1/tenants/{id}", tag = "tenants",
    params(
        ("id" = String, Path, description = "Tenant id", pattern = r"^tnt_[0-9a-z]{20}$", example = "tnt_4f8k2m9q1z7x3c5v6b0n"),
        ("If-Match" = Option<String>, Header, description = "Delete only if the resource still has this entity tag (its `ETag`); 412 otherwise", pattern = r#"^(\*|(W/)?"[!#-+--~]*"([ 	]*,[ 	]*(W/)?"[!#-+--~]*"){0,15})$"#),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The resource changed since the entity tag in If-Match", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_tenant(
    _operator: Operator,
    State(state): State<ApiState>,
    PathId(id): PathId<TenantId>,
    if_match: IfMatch,
) -> Result<StatusCode, Error> {
    state
        .store
        .delete_tenant(&id, if_match.versions())
        .await
        .map_err(Error::store("tenant"))?;
    Ok(StatusCode::NO_CONTENT)
}
