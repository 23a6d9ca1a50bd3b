//! `/v1/registries/{id}/devices` and `/v1/devices/{id}`: a tenant's devices.

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
use iotcore_store::devices::{Device, DeviceConnection, DeviceStatus, DeviceUpdate, NewDevice};
use iotcore_store::{DeviceId, RegistryId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

pub fn router() -> Router<ApiState> {
    Router::new()
        .route(
            "/v1/registries/{id}/devices",
            get(list_devices).post(create_device),
        )
        .route(
            "/v1/devices/{id}",
            get(get_device).patch(update_device).delete(delete_device),
        )
}

/// A new device.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[schema(example = json!({"name": "thermometer-1", "labels": {"floor": "2"}}))]
pub struct CreateDevice {
    /// 1 to 128 characters, unique in the registry.
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

/// Whether a device may connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = DeviceStatus, example = "enabled")]
pub enum DeviceStatusView {
    Enabled,
    Disabled,
}

impl DeviceStatusView {
    fn into_store(self) -> DeviceStatus {
        match self {
            DeviceStatusView::Enabled => DeviceStatus::Enabled,
            DeviceStatusView::Disabled => DeviceStatus::Disabled,
        }
    }
}

/// A change to a device; absent fields stay as they are. `labels` replaces the whole map.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[schema(example = json!({"labels": {"floor": "3"}, "status": "disabled"}))]
pub struct UpdateDevice {
    /// 1 to 128 characters, unique in the registry.
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
    /// A disabled device cannot connect, and is disconnected if it is connected.
    pub status: Option<DeviceStatusView>,
}

/// Filter of the device list by status.
#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeviceStatusParam {
    /// Keep devices in this status.
    pub status: Option<DeviceStatusView>,
}

/// The connection status of a device (SPEC §6.3), as the brokers last recorded it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "online": true, "connected_at": "2026-01-01T12:00:00Z", "disconnected_at": null,
    "last_activity_at": "2026-01-01T12:05:00Z", "protocol_version": "5",
    "client_address": "203.0.113.7:51234", "disconnect_reason": null
}))]
pub struct ConnectionView {
    /// Whether the device holds a live connection.
    pub online: bool,
    /// When the last connection was established.
    pub connected_at: Option<DateTime<Utc>>,
    /// When the last connection ended; `null` while it lasts.
    pub disconnected_at: Option<DateTime<Utc>>,
    /// When the device last sent a packet, to within the brokers' batching interval.
    pub last_activity_at: Option<DateTime<Utc>>,
    /// The MQTT protocol version of the last connection (`3.1.1` or `5`).
    pub protocol_version: Option<String>,
    /// The remote address of the last connection.
    pub client_address: Option<String>,
    /// Why the last connection ended.
    pub disconnect_reason: Option<String>,
}

impl From<DeviceConnection> for ConnectionView {
    fn from(c: DeviceConnection) -> ConnectionView {
        ConnectionView {
            online: c.online,
            connected_at: c.connected_at,
            disconnected_at: c.disconnected_at,
            last_activity_at: c.last_activity_at,
            protocol_version: c.protocol_version,
            client_address: c.client_address,
            disconnect_reason: c.disconnect_reason,
        }
    }
}

/// A device. Its id is also its MQTT client id and username.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "id": "dev_0123456789abcdefghij", "registry_id": "reg_0123456789abcdefghij", "name": "thermometer-1",
    "description": "", "labels": {"floor": "2"}, "status": "enabled", "created_at": "2026-01-01T12:00:00Z",
    "connection": {"online": false, "connected_at": null, "disconnected_at": null, "last_activity_at": null,
                   "protocol_version": null, "client_address": null, "disconnect_reason": null}
}))]
pub struct DeviceView {
    /// The device's id: its MQTT client id and username.
    pub id: String,
    /// The registry the device belongs to.
    pub registry_id: String,
    /// Unique in the registry.
    pub name: String,
    /// Free text; empty when not set.
    pub description: String,
    /// Labels: key-value pairs to filter lists with (`label=key:value`).
    pub labels: BTreeMap<String, String>,
    /// Whether the device may connect.
    pub status: DeviceStatusView,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// The connection status; only in the answer of `GET /v1/devices/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<ConnectionView>,
}

impl From<Device> for DeviceView {
    fn from(d: Device) -> DeviceView {
        DeviceView {
            id: d.id.to_string(),
            registry_id: d.registry_id.to_string(),
            name: d.name,
            description: d.description,
            labels: d.labels,
            status: match d.status {
                DeviceStatus::Enabled => DeviceStatusView::Enabled,
                DeviceStatus::Disabled => DeviceStatusView::Disabled,
            },
            created_at: d.created_at,
            connection: None,
        }
    }
}

list_type!(
    /// A page of devices.
    #[schema(example = json!({"items": [{"id": "dev_0123456789abcdefghij", "registry_id": "reg_0123456789abcdefghij", "name": "thermometer-1", "description": "", "labels": {"floor": "2"}, "status": "enabled", "created_at": "2026-01-01T12:00:00Z"}], "next_page_token": "ZGV2XzAxMjM0NTY3ODlhYmNkZWZnaGlq"}))]
    DeviceList,
    DeviceView
);

/// Create a device in a registry.
#[utoipa::path(
    post, path = "/v1/registries/{id}/devices", tag = "devices",
    params(
        ("id" = String, Path, description = "Registry id", pattern = r"^reg_[0-9a-z]{20}$", example = "reg_0123456789abcdefghij"),
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
    ),
    request_body = CreateDevice,
    responses(
        (status = 201, description = "The new device", body = DeviceView, headers(("ETag" = String, description = "The entity tag of this version, for If-Match"))),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such registry in this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A device with this name exists in the registry, or the tenant is at its device quota", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_device(
    scope: TenantWriter,
    State(state): State<ApiState>,
    PathId(registry): PathId<RegistryId>,
    ApiJson(body): ApiJson<CreateDevice>,
) -> Result<Response, Error> {
    let mut fields = Fields::default();
    let name = fields.take(ResourceName::parse("name", body.name));
    let description = fields.take(input::description("description", body.description));
    let labels = fields.take(input::labels("labels", body.labels));
    let (Some(name), Some(description), Some(labels)) = (name, description, labels) else {
        return Err(fields.into_error());
    };
    let new = NewDevice {
        name: name.into_inner(),
        description,
        labels,
    };
    let max_devices = state.quotas(scope.tenant_id()).await?.max_devices;
    let device = state
        .store
        .create_device_within(scope.tenant_id(), &registry, &new, Some(max_devices))
        .await
        .map_err(|e| match e {
            // The device does not exist yet, so what is missing is its registry.
            iotcore_store::StoreError::NotFound => Error::NotFound("registry"),
            other => Error::store("device")(other),
        })?;
    let version = device.updated_at;
    let response = created(
        format!("/v1/devices/{}", device.id),
        DeviceView::from(device),
    );
    Ok(with_etag(response, version))
}

/// List the devices of a registry.
#[utoipa::path(
    get, path = "/v1/registries/{id}/devices", tag = "devices",
    params(
        ("id" = String, Path, description = "Registry id", pattern = r"^reg_[0-9a-z]{20}$", example = "reg_0123456789abcdefghij"),
        PageParams,
        FilterParams,
        DeviceStatusParam,
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
    ),
    responses(
        (status = 200, description = "A page of devices, ordered by id", body = DeviceList),
        (status = 400, description = "Malformed id or page parameters", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such registry in this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid filter", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_devices(
    scope: TenantScope,
    State(state): State<ApiState>,
    PathId(registry): PathId<RegistryId>,
    ApiQuery(params): ApiQuery<PageParams>,
    ApiQuery(filter): ApiQuery<FilterParams>,
    ApiQuery(status): ApiQuery<DeviceStatusParam>,
) -> Result<Json<DeviceList>, Error> {
    let filter = filter.filter(status.status.map(|s| s.into_store().as_str()))?;
    let page = state
        .store
        .list_devices(&scope.tenant_id, &registry, &filter, &params.request()?)
        .await
        .map_err(Error::store("registry"))?;
    Ok(Json(page.into()))
}

/// Get a device with its connection status.
#[utoipa::path(
    get, path = "/v1/devices/{id}", tag = "devices",
    params(
        ("id" = String, Path, description = "Device id", pattern = r"^dev_[0-9a-z]{20}$", example = "dev_0123456789abcdefghij"),
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
    ),
    responses(
        (status = 200, description = "The device", body = DeviceView, headers(("ETag" = String, description = "The entity tag of this version, for If-Match"))),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device in this tenant", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_device(
    scope: TenantScope,
    State(state): State<ApiState>,
    PathId(id): PathId<DeviceId>,
) -> Result<Response, Error> {
    let (device, connection) = state
        .store
        .get_device_with_connection(&scope.tenant_id, &id)
        .await
        .map_err(Error::store("device"))?;
    let version = device.updated_at;
    let mut view = DeviceView::from(device);
    view.connection = Some(connection.into());
    Ok(tagged(version, view))
}

/// Change a device.
///
/// Disabling a device disconnects it and keeps it from connecting until it is enabled.
#[utoipa::path(
    patch, path = "/v1/devices/{id}", tag = "devices",
    params(
        ("id" = String, Path, description = "Device id", pattern = r"^dev_[0-9a-z]{20}$", example = "dev_0123456789abcdefghij"),
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
        ("If-Match" = Option<String>, Header, description = "Change only if the resource still has this entity tag (its `ETag`); 412 otherwise", pattern = r#"^(\*|(W/)?"[!#-+--~]*"([ 	]*,[ 	]*(W/)?"[!#-+--~]*"){0,15})$"#),
    ),
    request_body = UpdateDevice,
    responses(
        (status = 200, description = "The changed device", body = DeviceView, headers(("ETag" = String, description = "The entity tag of this version, for If-Match"))),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device in this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A device with this name exists in the registry", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The resource changed since the entity tag in If-Match", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update_device(
    scope: TenantWriter,
    State(state): State<ApiState>,
    PathId(id): PathId<DeviceId>,
    if_match: IfMatch,
    ApiJson(body): ApiJson<UpdateDevice>,
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
    let update = DeviceUpdate {
        name,
        description,
        labels,
        status: body.status.map(DeviceStatusView::into_store),
    };
    let device = state
        .store
        .update_device(scope.tenant_id(), &id, &update, if_match.versions())
        .await
        .map_err(Error::store("device"))?;
    Ok(tagged(device.updated_at, DeviceView::from(device)))
}

/// Delete a device with its credentials.
#[utoipa::path(
    delete, path = "/v1/devices/{id}", tag = "devices",
    params(
        ("id" = String, Path, description = "Device id", pattern = r"^dev_[0-9a-z]{20}$", example = "dev_0123456789abcdefghij"),
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
        ("If-Match" = Option<String>, Header, description = "Delete only if the resource still has this entity tag (its `ETag`); 412 otherwise", pattern = r#"^(\*|(W/)?"[!#-+--~]*"([ 	]*,[ 	]*(W/)?"[!#-+--~]*"){0,15})$"#),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device in this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The resource changed since the entity tag in If-Match", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_device(
    scope: TenantWriter,
    State(state): State<ApiState>,
    PathId(id): PathId<DeviceId>,
    if_match: IfMatch,
) -> Result<StatusCode, Error> {
    state
        .store
        .delete_device(scope.tenant_id(), &id, if_match.versions())
        .await
        .map_err(Error::store("device"))?;
    Ok(StatusCode::NO_CONTENT)
}
