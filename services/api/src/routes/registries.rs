//! `/v1/registries`: a tenant's groups of devices.

use super::{created, list_type, FilterParams, PageParams};
use crate::error::{Error, Problem};
use crate::extract::{ApiJson, ApiQuery, PathId, TenantScope, TenantWriter};
use crate::input::{self, Fields, ResourceName};
use crate::versioning::{tagged, with_etag, IfMatch};
use crate::ApiState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use iotcore_store::registries::{NewRegistry, Registry, RegistryDeletion, RegistryUpdate};
use iotcore_store::RegistryId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/v1/registries", get(list_registries).post(create_registry))
        .route(
            "/v1/registries/{id}",
            get(get_registry)
                .patch(update_registry)
                .delete(delete_registry),
        )
}

/// A new registry.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[schema(example = json!({"name": "greenhouse-sensors", "description": "Sensors of greenhouse 1", "labels": {"site": "north"}}))]
pub struct CreateRegistry {
    /// 1 to 128 characters, unique in the tenant.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\s\x00-\x1f\x7f-\x9f]([^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f])?$"
    )]
    pub name: String,
    /// At most 1024 characters.
    #[schema(max_length = 1024)]
    pub description: Option<String>,
    /// At most 64; keys of 1 to 63 ASCII letters, digits, `-`, `_` or `.`.
    pub labels: Option<BTreeMap<String, String>>,
    /// Whether the built-in device rights apply (SPEC §4.2); true when absent.
    pub default_policy: Option<bool>,
}

/// A change to a registry; absent fields stay as they are. `labels` replaces the whole
/// map.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[schema(example = json!({"description": "Sensors of greenhouses 1 and 2", "labels": {"site": "north", "tier": "2"}}))]
pub struct UpdateRegistry {
    /// 1 to 128 characters, unique in the tenant.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\s\x00-\x1f\x7f-\x9f]([^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f])?$"
    )]
    pub name: Option<String>,
    /// At most 1024 characters.
    #[schema(max_length = 1024)]
    pub description: Option<String>,
    /// At most 64; keys of 1 to 63 ASCII letters, digits, `-`, `_` or `.`.
    pub labels: Option<BTreeMap<String, String>>,
    /// Whether the built-in device rights apply (SPEC §4.2).
    pub default_policy: Option<bool>,
}

/// A registry.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "id": "reg_0123456789abcdefghij", "name": "greenhouse-sensors", "description": "Sensors of greenhouse 1",
    "labels": {"site": "north"}, "default_policy": true, "created_at": "2026-01-01T12:00:00Z"
}))]
pub struct RegistryView {
    /// The registry's id.
    pub id: String,
    /// Unique in the tenant.
    pub name: String,
    /// Free text; empty when not set.
    pub description: String,
    /// Labels: key-value pairs to filter lists with (`label=key:value`).
    pub labels: BTreeMap<String, String>,
    /// Whether the built-in device rights apply (SPEC §4.2).
    pub default_policy: bool,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

impl From<Registry> for RegistryView {
    fn from(r: Registry) -> RegistryView {
        RegistryView {
            id: r.id.to_string(),
            name: r.name,
            description: r.description,
            labels: r.labels,
            default_policy: r.default_policy,
            created_at: r.created_at,
        }
    }
}

list_type!(
    /// A page of registries.
    #[schema(example = json!({"items": [{"id": "reg_0123456789abcdefghij", "name": "greenhouse-sensors", "description": "", "labels": {"site": "north"}, "default_policy": true, "created_at": "2026-01-01T12:00:00Z"}], "next_page_token": null}))]
    RegistryList,
    RegistryView
);

/// Options of a registry deletion.
#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteRegistryParams {
    /// Delete the registry even if it still has devices, and them with it.
    pub force: Option<bool>,
}

/// Create a registry.
#[utoipa::path(
    post, path = "/v1/registries", tag = "registries",
    params(("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$")),
    request_body = CreateRegistry,
    responses(
        (status = 201, description = "The new registry", body = RegistryView, headers(("ETag" = String, description = "The entity tag of this version, for If-Match"))),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only role", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A registry with this name exists", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_registry(
    scope: TenantWriter,
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<CreateRegistry>,
) -> Result<Response, Error> {
    let mut fields = Fields::default();
    let name = fields.take(ResourceName::parse("name", body.name));
    let description = fields.take(input::description("description", body.description));
    let labels = fields.take(input::labels("labels", body.labels));
    let (Some(name), Some(description), Some(labels)) = (name, description, labels) else {
        return Err(fields.into_error());
    };
    let new = NewRegistry {
        name: name.into_inner(),
        description,
        labels,
        default_policy: body.default_policy.unwrap_or(true),
    };
    let registry = state
        .store
        .create_registry(scope.tenant_id(), &new)
        .await
        .map_err(Error::store("registry"))?;
    let version = registry.updated_at;
    let response = created(
        format!("/v1/registries/{}", registry.id),
        RegistryView::from(registry),
    );
    Ok(with_etag(response, version))
}

/// List registries.
#[utoipa::path(
    get, path = "/v1/registries", tag = "registries",
    params(PageParams, FilterParams, ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$")),
    responses(
        (status = 200, description = "A page of registries, ordered by id", body = RegistryList),
        (status = 400, description = "Invalid page parameters", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid filter", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_registries(
    scope: TenantScope,
    State(state): State<ApiState>,
    ApiQuery(params): ApiQuery<PageParams>,
    ApiQuery(filter): ApiQuery<FilterParams>,
) -> Result<Json<RegistryList>, Error> {
    let filter = filter.filter(None)?;
    let page = state
        .store
        .list_registries(&scope.tenant_id, &filter, &params.request()?)
        .await
        .map_err(Error::store("registry"))?;
    Ok(Json(page.into()))
}

/// Get a registry.
#[utoipa::path(
    get, path = "/v1/registries/{id}", tag = "registries",
    params(
        ("id" = String, Path, description = "Registry id", pattern = r"^reg_[0-9a-z]{20}$", example = "reg_0123456789abcdefghij"),
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
    ),
    responses(
        (status = 200, description = "The registry", body = RegistryView, headers(("ETag" = String, description = "The entity tag of this version, for If-Match"))),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such registry in this tenant", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_registry(
    scope: TenantScope,
    State(state): State<ApiState>,
    PathId(id): PathId<RegistryId>,
) -> Result<Response, Error> {
    let registry = state
        .store
        .get_registry(&scope.tenant_id, &id)
        .await
        .map_err(Error::store("registry"))?;
    Ok(tagged(registry.updated_at, RegistryView::from(registry)))
}

/// Change a registry.
#[utoipa::path(
    patch, path = "/v1/registries/{id}", tag = "registries",
    params(
        ("id" = String, Path, description = "Registry id", pattern = r"^reg_[0-9a-z]{20}$", example = "reg_0123456789abcdefghij"),
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
        ("If-Match" = Option<String>, Header, description = "Change only if the resource still has this entity tag (its `ETag`); 412 otherwise", pattern = r#"^(\*|(W/)?"[!#-+--~]*"([ 	]*,[ 	]*(W/)?"[!#-+--~]*"){0,15})$"#),
    ),
    request_body = UpdateRegistry,
    responses(
        (status = 200, description = "The changed registry", body = RegistryView, headers(("ETag" = String, description = "The entity tag of this version, for If-Match"))),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such registry in this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A registry with this name exists", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The resource changed since the entity tag in If-Match", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update_registry(
    scope: TenantWriter,
    State(state): State<ApiState>,
    PathId(id): PathId<RegistryId>,
    if_match: IfMatch,
    ApiJson(body): ApiJson<UpdateRegistry>,
) -> Result<Response, Error> {
    let mut fields = Fields::default();
    let name = body
        .name
        .and_then(|n| fields.take(ResourceName::parse("name", n).map(ResourceName::into_inner)));
    let description = body
        .description
        .and_then(|d| fields.take(input::description("description", Some(d))));
    let labels = body
        .labels
        .and_then(|l| fields.take(input::labels("labels", Some(l))));
    fields.finish()?;
    let update = RegistryUpdate {
        name,
        description,
        labels,
        default_policy: body.default_policy,
    };
    let registry = state
        .store
        .update_registry(scope.tenant_id(), &id, &update, if_match.versions())
        .await
        .map_err(Error::store("registry"))?;
    Ok(tagged(registry.updated_at, RegistryView::from(registry)))
}

/// Delete a registry.
///
/// A registry that still has devices is kept (409) unless `force=true`, which deletes its
/// devices and their credentials too.
#[utoipa::path(
    delete, path = "/v1/registries/{id}", tag = "registries",
    params(
        ("id" = String, Path, description = "Registry id", pattern = r"^reg_[0-9a-z]{20}$", example = "reg_0123456789abcdefghij"),
        DeleteRegistryParams,
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
        ("If-Match" = Option<String>, Header, description = "Delete only if the resource still has this entity tag (its `ETag`); 412 otherwise", pattern = r#"^(\*|(W/)?"[!#-+--~]*"([ 	]*,[ 	]*(W/)?"[!#-+--~]*"){0,15})$"#),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such registry in this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The registry still has devices", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The resource changed since the entity tag in If-Match", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_registry(
    scope: TenantWriter,
    State(state): State<ApiState>,
    PathId(id): PathId<RegistryId>,
    if_match: IfMatch,
    ApiQuery(params): ApiQuery<DeleteRegistryParams>,
) -> Result<StatusCode, Error> {
    let force = params.force.unwrap_or(false);
    match state
        .store
        .delete_registry(scope.tenant_id(), &id, force, if_match.versions())
        .await
        .map_err(Error::store("registry"))?
    {
        RegistryDeletion::Deleted => Ok(StatusCode::NO_CONTENT),
        RegistryDeletion::HasDevices => Err(Error::Conflict(
            "the registry still has devices; delete them first or pass force=true".into(),
        )),
    }
}
