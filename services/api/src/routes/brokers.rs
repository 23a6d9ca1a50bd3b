//! `/v1/brokers`: a tenant's virtual brokers (SPEC §3.6), isolated namespaces of free-form
//! topics whose clients authenticate with the broker's own credentials.

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
use iotcore_store::brokers::{Broker, BrokerUpdate, NewBroker};
use iotcore_store::BrokerId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/v1/brokers", get(list_brokers).post(create_broker))
        .route(
            "/v1/brokers/{id}",
            get(get_broker).patch(update_broker).delete(delete_broker),
        )
}

/// A new virtual broker.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[schema(example = json!({"name": "lab", "description": "Bench devices", "labels": {"env": "dev"}}))]
pub struct CreateBroker {
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
}

/// A change to a virtual broker; absent fields stay as they are. `labels` replaces the
/// whole map.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[schema(example = json!({"description": "Bench devices of the lab"}))]
pub struct UpdateBroker {
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
}

/// A virtual broker.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "id": "brk_0123456789abcdefghij", "name": "lab", "description": "Bench devices",
    "labels": {"env": "dev"}, "created_at": "2026-01-01T12:00:00Z"
}))]
pub struct BrokerView {
    /// The virtual broker's id; its clients name it in their MQTT username.
    pub id: String,
    /// Unique in the tenant.
    pub name: String,
    /// Free text; empty when not set.
    pub description: String,
    /// Labels: key-value pairs to filter lists with (`label=key:value`).
    pub labels: BTreeMap<String, String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

impl From<Broker> for BrokerView {
    fn from(b: Broker) -> BrokerView {
        BrokerView {
            id: b.id.to_string(),
            name: b.name,
            description: b.description,
            labels: b.labels,
            created_at: b.created_at,
        }
    }
}

list_type!(
    /// A page of virtual brokers.
    #[schema(example = json!({"items": [{"id": "brk_0123456789abcdefghij", "name": "lobby", "description": "", "labels": {}, "created_at": "2026-01-01T12:00:00Z"}], "next_page_token": null}))]
    BrokerList,
    BrokerView
);

/// Create a virtual broker.
#[utoipa::path(
    post, path = "/v1/brokers", tag = "brokers",
    params(("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$")),
    request_body = CreateBroker,
    responses(
        (status = 201, description = "The new virtual broker", body = BrokerView, headers(("ETag" = String, description = "The entity tag of this version, for If-Match"))),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only role", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A virtual broker with this name exists", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_broker(
    scope: TenantWriter,
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<CreateBroker>,
) -> Result<Response, Error> {
    let mut fields = Fields::default();
    let name = fields.take(ResourceName::parse("name", body.name));
    let description = fields.take(input::description("description", body.description));
    let labels = fields.take(input::labels("labels", body.labels));
    let (Some(name), Some(description), Some(labels)) = (name, description, labels) else {
        return Err(fields.into_error());
    };
    let new = NewBroker {
        name: name.into_inner(),
        description,
        labels,
    };
    let broker = state
        .store
        .create_broker(scope.tenant_id(), &new)
        .await
        .map_err(Error::store("virtual broker"))?;
    let version = broker.updated_at;
    let response = created(
        format!("/v1/brokers/{}", broker.id),
        BrokerView::from(broker),
    );
    Ok(with_etag(response, version))
}

/// List virtual brokers.
#[utoipa::path(
    get, path = "/v1/brokers", tag = "brokers",
    params(PageParams, FilterParams, ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$")),
    responses(
        (status = 200, description = "A page of virtual brokers, ordered by id", body = BrokerList),
        (status = 400, description = "Invalid page parameters", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid filter", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_brokers(
    scope: TenantScope,
    State(state): State<ApiState>,
    ApiQuery(params): ApiQuery<PageParams>,
    ApiQuery(filter): ApiQuery<FilterParams>,
) -> Result<Json<BrokerList>, Error> {
    let filter = filter.filter(None)?;
    let page = state
        .store
        .list_brokers(&scope.tenant_id, &filter, &params.request()?)
        .await
        .map_err(Error::store("virtual broker"))?;
    Ok(Json(page.into()))
}

/// Get a virtual broker.
#[utoipa::path(
    get, path = "/v1/brokers/{id}", tag = "brokers",
    params(
        ("id" = String, Path, description = "Virtual broker id", pattern = r"^brk_[0-9a-z]{20}$", example = "brk_0123456789abcdefghij"),
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
    ),
    responses(
        (status = 200, description = "The virtual broker", body = BrokerView, headers(("ETag" = String, description = "The entity tag of this version, for If-Match"))),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such virtual broker in this tenant", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_broker(
    scope: TenantScope,
    State(state): State<ApiState>,
    PathId(id): PathId<BrokerId>,
) -> Result<Response, Error> {
    let broker = state
        .store
        .get_broker(&scope.tenant_id, &id)
        .await
        .map_err(Error::store("virtual broker"))?;
    Ok(tagged(broker.updated_at, BrokerView::from(broker)))
}

/// Change a virtual broker.
#[utoipa::path(
    patch, path = "/v1/brokers/{id}", tag = "brokers",
    params(
        ("id" = String, Path, description = "Virtual broker id", pattern = r"^brk_[0-9a-z]{20}$", example = "brk_0123456789abcdefghij"),
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
        ("If-Match" = Option<String>, Header, description = "Change only if the resource still has this entity tag (its `ETag`); 412 otherwise", pattern = r#"^(\*|(W/)?"[!#-+--~]*"([ 	]*,[ 	]*(W/)?"[!#-+--~]*"){0,15})$"#),
    ),
    request_body = UpdateBroker,
    responses(
        (status = 200, description = "The changed virtual broker", body = BrokerView, headers(("ETag" = String, description = "The entity tag of this version, for If-Match"))),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such virtual broker in this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A virtual broker with this name exists", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The resource changed since the entity tag in If-Match", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update_broker(
    scope: TenantWriter,
    State(state): State<ApiState>,
    PathId(id): PathId<BrokerId>,
    if_match: IfMatch,
    ApiJson(body): ApiJson<UpdateBroker>,
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
    let update = BrokerUpdate {
        name,
        description,
        labels,
    };
    let broker = state
        .store
        .update_broker(scope.tenant_id(), &id, &update, if_match.versions())
        .await
        .map_err(Error::store("virtual broker"))?;
    Ok(tagged(broker.updated_at, BrokerView::from(broker)))
}

/// Delete a virtual broker with its credentials; its clients are disconnected.
#[utoipa::path(
    delete, path = "/v1/brokers/{id}", tag = "brokers",
    params(
        ("id" = String, Path, description = "Virtual broker id", pattern = r"^brk_[0-9a-z]{20}$", example = "brk_0123456789abcdefghij"),
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
        ("If-Match" = Option<String>, Header, description = "Delete only if the resource still has this entity tag (its `ETag`); 412 otherwise", pattern = r#"^(\*|(W/)?"[!#-+--~]*"([ 	]*,[ 	]*(W/)?"[!#-+--~]*"){0,15})$"#),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such virtual broker in this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The resource changed since the entity tag in If-Match", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_broker(
    scope: TenantWriter,
    State(state): State<ApiState>,
    PathId(id): PathId<BrokerId>,
    if_match: IfMatch,
) -> Result<StatusCode, Error> {
    state
        .store
        .delete_broker(scope.tenant_id(), &id, if_match.versions())
        .await
        .map_err(Error::store("virtual broker"))?;
    Ok(StatusCode::NO_CONTENT)
}
