//! `/v1/devices/{id}/passwords` and `/v1/registries/{id}/passwords`: the passwords a
//! device, or a registry client acting for its devices, authenticates with (SPEC §4.1).

use super::owner::CredentialOwner;
use super::{created, list_type, PageParams};
use crate::error::{Error, FieldError, Problem};
use crate::extract::{ApiJson, ApiQuery, PathId, PathIds, TenantScope, TenantWriter};
use crate::ApiState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use iotcore_store::passwords::PasswordMeta;
use iotcore_store::{BrokerId, DeviceId, PasswordId, RegistryId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Shortest password a caller may choose (SPEC §6.2).
pub const MIN_PASSWORD_CHARS: usize = 14;
/// Longest password a caller may choose; bounds the cost of hashing it.
pub const MAX_PASSWORD_CHARS: usize = 256;

pub fn router() -> Router<ApiState> {
    Router::new()
        .route(
            "/v1/devices/{id}/passwords",
            get(list_passwords).post(create_password),
        )
        .route(
            "/v1/devices/{id}/passwords/{password_id}",
            delete(delete_password),
        )
        .route(
            "/v1/registries/{id}/passwords",
            get(list_registry_passwords).post(create_registry_password),
        )
        .route(
            "/v1/registries/{id}/passwords/{password_id}",
            delete(delete_registry_password),
        )
        .route(
            "/v1/brokers/{id}/passwords",
            get(list_broker_passwords).post(create_broker_password),
        )
        .route(
            "/v1/brokers/{id}/passwords/{password_id}",
            delete(delete_broker_password),
        )
}

/// A new password of a device. Without `password`, the service generates one and
/// returns it once.
#[derive(Clone, Deserialize, ToSchema)]
#[schema(example = json!({"expires_at": "2027-01-01T00:00:00Z"}))]
pub struct CreatePassword {
    /// At least 14 and at most 256 characters. Stored only as an argon2id hash.
    #[schema(min_length = 14, max_length = 256)]
    pub password: Option<String>,
    /// When the password stops working; must be in the future.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A stored password: its metadata only, except right after the service generated it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "id": "pwd_0123456789abcdefghij", "created_at": "2026-01-01T12:00:00Z", "expires_at": null,
    "password": "q3Zr8v-N0aLk2xW7_pYtE5mH1cJ9bUoD"
}))]
pub struct PasswordView {
    /// The password's id, to delete it with.
    pub id: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When the password stops being accepted; `null` for never.
    pub expires_at: Option<DateTime<Utc>>,
    /// The generated secret: present only in the response that created it, never again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

impl From<PasswordMeta> for PasswordView {
    fn from(p: PasswordMeta) -> PasswordView {
        PasswordView {
            id: p.id.to_string(),
            created_at: p.created_at,
            expires_at: p.expires_at,
            password: None,
        }
    }
}

list_type!(
    /// A page of a device's passwords (metadata only).
    #[schema(example = json!({"items": [{"id": "pwd_0123456789abcdefghij", "created_at": "2026-01-01T12:00:00Z", "expires_at": null}], "next_page_token": null}))]
    PasswordList,
    PasswordView
);

/// Add a password to a device.
///
/// Give `password` to choose it, or leave it out to have the service generate a strong
/// one, returned in this response only. A device holds at most 10 passwords.
#[utoipa::path(
    post, path = "/v1/devices/{id}/passwords", tag = "passwords",
    params(
        ("id" = String, Path, description = "Device id", pattern = r"^dev_[0-9a-z]{20}$", example = "dev_0123456789abcdefghij"),
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
    ),
    request_body = CreatePassword,
    responses(
        (status = 201, description = "The new password; `password` only when generated", body = PasswordView),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device in this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The device holds the maximum number of passwords", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_password(
    scope: TenantWriter,
    State(state): State<ApiState>,
    PathId(device): PathId<DeviceId>,
    ApiJson(body): ApiJson<CreatePassword>,
) -> Result<Response, Error> {
    create(&state, &scope, device.into(), body).await
}

/// Checks `body` and adds the password to `owner`.
async fn create(
    state: &ApiState,
    scope: &TenantWriter,
    owner: CredentialOwner,
    body: CreatePassword,
) -> Result<Response, Error> {
    let mut errors = Vec::new();
    if let Some(password) = &body.password {
        let chars = password.chars().count();
        if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&chars) {
            errors.push(FieldError::new(
                "password",
                "must be between 14 and 256 characters long",
            ));
        }
    }
    if let Some(expires_at) = body.expires_at {
        if expires_at <= Utc::now() {
            errors.push(FieldError::new("expires_at", "must be in the future"));
        }
    }
    if !errors.is_empty() {
        return Err(Error::invalid(errors));
    }
    let created_password = state
        .store
        .create_password(
            scope.tenant_id(),
            owner.credentials(),
            body.password,
            body.expires_at,
        )
        .await
        .map_err(Error::store(owner.what()))?;
    let location = format!("{}/passwords/{}", owner.path(), created_password.meta.id);
    let mut view = PasswordView::from(created_password.meta);
    view.password = created_password.generated;
    Ok(created(location, view))
}

/// A page of `owner`'s passwords.
async fn list(
    state: &ApiState,
    scope: &TenantScope,
    owner: CredentialOwner,
    params: &PageParams,
) -> Result<Json<PasswordList>, Error> {
    let page = state
        .store
        .list_passwords(&scope.tenant_id, owner.credentials(), &params.request()?)
        .await
        .map_err(Error::store(owner.what()))?;
    Ok(Json(page.into()))
}

/// Deletes `owner`'s password `id`.
async fn remove(
    state: &ApiState,
    scope: &TenantWriter,
    owner: CredentialOwner,
    id: &PasswordId,
) -> Result<StatusCode, Error> {
    state
        .store
        .delete_password(scope.tenant_id(), owner.credentials(), id)
        .await
        .map_err(Error::store("password"))?;
    Ok(StatusCode::NO_CONTENT)
}

/// List a device's passwords (metadata only; secrets are never returned).
#[utoipa::path(
    get, path = "/v1/devices/{id}/passwords", tag = "passwords",
    params(
        ("id" = String, Path, description = "Device id", pattern = r"^dev_[0-9a-z]{20}$", example = "dev_0123456789abcdefghij"),
        PageParams,
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
    ),
    responses(
        (status = 200, description = "A page of passwords, ordered by id", body = PasswordList),
        (status = 400, description = "Malformed id or page parameters", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device in this tenant", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_passwords(
    scope: TenantScope,
    State(state): State<ApiState>,
    PathId(device): PathId<DeviceId>,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<PasswordList>, Error> {
    list(&state, &scope, device.into(), &params).await
}

/// Delete a password of a device.
#[utoipa::path(
    delete, path = "/v1/devices/{id}/passwords/{password_id}", tag = "passwords",
    params(
        ("id" = String, Path, description = "Device id", pattern = r"^dev_[0-9a-z]{20}$", example = "dev_0123456789abcdefghij"),
        ("password_id" = String, Path, description = "Password id", pattern = r"^pwd_[0-9a-z]{20}$", example = "pwd_0123456789abcdefghij"),
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such password of this device", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_password(
    scope: TenantWriter,
    State(state): State<ApiState>,
    PathIds(device, id): PathIds<DeviceId, PasswordId>,
) -> Result<StatusCode, Error> {
    remove(&state, &scope, device.into(), &id).await
}

/// Add a password to a registry.
///
/// A registry client connects with the registry id as username and acts for the devices
/// of its registry. Give `password` to choose it, or leave it out to have the service
/// generate one, returned in this response only. A registry holds at most 10 passwords.
#[utoipa::path(
    post, path = "/v1/registries/{id}/passwords", tag = "passwords",
    params(
        ("id" = String, Path, description = "Registry id", pattern = r"^reg_[0-9a-z]{20}$", example = "reg_0123456789abcdefghij"),
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
    ),
    request_body = CreatePassword,
    responses(
        (status = 201, description = "The new password; `password` only when generated", body = PasswordView),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such registry in this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The registry holds the maximum number of passwords", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_registry_password(
    scope: TenantWriter,
    State(state): State<ApiState>,
    PathId(registry): PathId<RegistryId>,
    ApiJson(body): ApiJson<CreatePassword>,
) -> Result<Response, Error> {
    create(&state, &scope, registry.into(), body).await
}

/// List a registry's passwords (metadata only; secrets are never returned).
#[utoipa::path(
    get, path = "/v1/registries/{id}/passwords", tag = "passwords",
    params(
        ("id" = String, Path, description = "Registry id", pattern = r"^reg_[0-9a-z]{20}$", example = "reg_0123456789abcdefghij"),
        PageParams,
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
    ),
    responses(
        (status = 200, description = "A page of passwords, ordered by id", body = PasswordList),
        (status = 400, description = "Malformed id or page parameters", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such registry in this tenant", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_registry_passwords(
    scope: TenantScope,
    State(state): State<ApiState>,
    PathId(registry): PathId<RegistryId>,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<PasswordList>, Error> {
    list(&state, &scope, registry.into(), &params).await
}

/// Delete a password of a registry.
#[utoipa::path(
    delete, path = "/v1/registries/{id}/passwords/{password_id}", tag = "passwords",
    params(
        ("id" = String, Path, description = "Registry id", pattern = r"^reg_[0-9a-z]{20}$", example = "reg_0123456789abcdefghij"),
        ("password_id" = String, Path, description = "Password id", pattern = r"^pwd_[0-9a-z]{20}$", example = "pwd_0123456789abcdefghij"),
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such password of this registry", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_registry_password(
    scope: TenantWriter,
    State(state): State<ApiState>,
    PathIds(registry, id): PathIds<RegistryId, PasswordId>,
) -> Result<StatusCode, Error> {
    remove(&state, &scope, registry.into(), &id).await
}

/// Add a password to a virtual broker.
///
/// A client of the virtual broker connects with the broker id as username and any client
/// id. Give `password` to choose it, or leave it out to have the service generate one,
/// returned in this response only. A virtual broker holds at most 10 passwords.
#[utoipa::path(
    post, path = "/v1/brokers/{id}/passwords", tag = "passwords",
    params(
        ("id" = String, Path, description = "Virtual broker id", pattern = r"^brk_[0-9a-z]{20}$", example = "brk_0123456789abcdefghij"),
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
    ),
    request_body = CreatePassword,
    responses(
        (status = 201, description = "The new password; `password` only when generated", body = PasswordView),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such virtual broker in this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The virtual broker holds the maximum number of passwords", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_broker_password(
    scope: TenantWriter,
    State(state): State<ApiState>,
    PathId(broker): PathId<BrokerId>,
    ApiJson(body): ApiJson<CreatePassword>,
) -> Result<Response, Error> {
    create(&state, &scope, broker.into(), body).await
}

/// List a virtual broker's passwords (metadata only; secrets are never returned).
#[utoipa::path(
    get, path = "/v1/brokers/{id}/passwords", tag = "passwords",
    params(
        ("id" = String, Path, description = "Virtual broker id", pattern = r"^brk_[0-9a-z]{20}$", example = "brk_0123456789abcdefghij"),
        PageParams,
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
    ),
    responses(
        (status = 200, description = "A page of passwords, ordered by id", body = PasswordList),
        (status = 400, description = "Malformed id or page parameters", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such virtual broker in this tenant", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_broker_passwords(
    scope: TenantScope,
    State(state): State<ApiState>,
    PathId(broker): PathId<BrokerId>,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<PasswordList>, Error> {
    list(&state, &scope, broker.into(), &params).await
}

/// Delete a password of a virtual broker.
#[utoipa::path(
    delete, path = "/v1/brokers/{id}/passwords/{password_id}", tag = "passwords",
    params(
        ("id" = String, Path, description = "Virtual broker id", pattern = r"^brk_[0-9a-z]{20}$", example = "brk_0123456789abcdefghij"),
        ("password_id" = String, Path, description = "Password id", pattern = r"^pwd_[0-9a-z]{20}$", example = "pwd_0123456789abcdefghij"),
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such password of this virtual broker", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_broker_password(
    scope: TenantWriter,
    State(state): State<ApiState>,
    PathIds(broker, id): PathIds<BrokerId, PasswordId>,
) -> Result<StatusCode, Error> {
    remove(&state, &scope, broker.into(), &id).await
}
