//! Publishing from the control plane (SPEC §6.2): commands to a device or to a registry,
//! and messages to free-form topics of the tenant. Messages go through PostgreSQL (see
//! `iotcore_store::publishes`), so this works whether the brokers run in this process or
//! not; 202 means queued for the brokers, not delivered.

use crate::error::{Error, FieldError, Problem};
use crate::extract::{ApiJson, PathId, TenantWriter};
use crate::ApiState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use iotcore_store::publishes::NewApiPublish;
use iotcore_store::{DeviceId, RegistryId, StoreError, TenantId};
use iotcore_topic::{TopicLimits, TopicName};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Longest content type accepted.
const MAX_CONTENT_TYPE_LEN: usize = 256;

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/v1/devices/{id}/commands", post(command_device))
        .route("/v1/registries/{id}/commands", post(command_registry))
        .route("/v1/publish", post(publish))
}

/// A command to a device or to every device of a registry.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[schema(example = json!({"subtopic": "reboot", "payload": "{\"delay_s\": 5}", "qos": 1}))]
pub struct CommandRequest {
    /// Levels appended to the commands topic: `$devices/{id}/commands/{subtopic}`.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^+#\x00/]*(/[^+#\x00/]*){0,12}$",
        example = "reboot"
    )]
    pub subtopic: Option<String>,
    /// The payload as UTF-8 text; give this or `payload_base64`, not both (empty when
    /// neither is given).
    pub payload: Option<String>,
    /// The payload as standard base64, for binary payloads.
    #[schema(
        pattern = r"^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
        example = "AAEC"
    )]
    pub payload_base64: Option<String>,
    /// The MQTT QoS to publish with: 0, 1 or 2.
    #[schema(minimum = 0, maximum = 2)]
    pub qos: u8,
    /// Whether the broker retains the message; false when absent.
    pub retain: Option<bool>,
    /// The MQTT 5 content type of the message.
    #[schema(
        max_length = 256,
        pattern = r"^[\x20-\x7e]*$",
        example = "application/json"
    )]
    pub content_type: Option<String>,
}

/// A message to a topic of the tenant.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[schema(example = json!({"topic": "plant/line-1/announcements", "payload": "shift change", "qos": 0, "retain": true}))]
pub struct PublishRequest {
    /// A topic name (no wildcards): a free-form topic, or the commands topic of a device
    /// or registry of the tenant (`$devices/{id}/commands/…`, `$registries/{id}/commands/…`).
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^(([^$+#\x00/][^+#\x00/]*)?(/[^+#\x00/]*){0,15}|\$(devices/dev|registries/reg)_[0-9a-z]{20}/commands(/[^+#\x00/]*){0,13})$",
        example = "plant/line-1/announcements"
    )]
    pub topic: String,
    /// The payload as UTF-8 text; give this or `payload_base64`, not both.
    pub payload: Option<String>,
    /// The payload as standard base64, for binary payloads.
    #[schema(
        pattern = r"^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
        example = "AAEC"
    )]
    pub payload_base64: Option<String>,
    /// The MQTT QoS to publish with: 0, 1 or 2.
    #[schema(minimum = 0, maximum = 2)]
    pub qos: u8,
    /// Whether the broker retains the message; false when absent.
    pub retain: Option<bool>,
    /// The MQTT 5 content type of the message.
    #[schema(
        max_length = 256,
        pattern = r"^[\x20-\x7e]*$",
        example = "application/json"
    )]
    pub content_type: Option<String>,
}

/// A message accepted for publishing.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"id": "1042", "topic": "$devices/dev_0123456789abcdefghij/commands/reboot"}))]
pub struct PublishAccepted {
    /// The message id, increasing in the order messages were accepted.
    pub id: String,
    /// The topic the message is published to.
    pub topic: String,
}

/// The checked fields shared by every kind of publish.
struct Message {
    payload: Vec<u8>,
    qos: u8,
    retain: bool,
    content_type: Option<String>,
}

fn check_message(
    max_payload: usize,
    payload: Option<String>,
    payload_base64: Option<String>,
    qos: u8,
    retain: Option<bool>,
    content_type: Option<String>,
    errors: &mut Vec<FieldError>,
) -> Option<Message> {
    let payload = match (payload, payload_base64) {
        (Some(_), Some(_)) => {
            errors.push(FieldError::new(
                "payload_base64",
                "give either payload or payload_base64, not both",
            ));
            None
        }
        (Some(text), None) => Some(text.into_bytes()),
        (None, Some(encoded)) => match STANDARD.decode(encoded.as_bytes()) {
            Ok(bytes) => Some(bytes),
            Err(_) => {
                errors.push(FieldError::new("payload_base64", "is not valid base64"));
                None
            }
        },
        (None, None) => Some(Vec::new()),
    };
    if let Some(payload) = &payload {
        if payload.len() > max_payload {
            errors.push(FieldError::new(
                "payload",
                format!("the payload must be at most {max_payload} bytes"),
            ));
        }
    }
    if qos > 2 {
        errors.push(FieldError::new("qos", "must be 0, 1 or 2"));
    }
    if let Some(ct) = &content_type {
        if ct.len() > MAX_CONTENT_TYPE_LEN || ct.chars().any(char::is_control) {
            errors.push(FieldError::new(
                "content_type",
                "must be at most 256 bytes without control characters",
            ));
        }
    }
    Some(Message {
        payload: payload?,
        qos,
        retain: retain.unwrap_or(false),
        content_type,
    })
}

/// `base` with `subtopic` appended, checked as an MQTT topic name.
fn command_topic(base: String, subtopic: Option<&str>) -> Result<TopicName, FieldError> {
    let topic = match subtopic {
        None => base,
        Some(sub) => format!("{base}/{sub}"),
    };
    TopicName::parse(&topic, TopicLimits::default())
        .map_err(|e| FieldError::new("subtopic", format!("makes an invalid topic: {e}")))
}

async fn enqueue(
    state: &ApiState,
    tenant: &TenantId,
    topic: TopicName,
    message: Message,
) -> Result<(StatusCode, Json<PublishAccepted>), Error> {
    let new = NewApiPublish {
        topic: topic.as_str().to_owned(),
        payload: message.payload,
        qos: message.qos,
        retain: message.retain,
        content_type: message.content_type,
    };
    let id = state
        .store
        .insert_api_publish(tenant, &new)
        .await
        .map_err(Error::store("message"))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(PublishAccepted {
            id,
            topic: new.topic,
        }),
    ))
}

/// Send a command to a device.
///
/// Publishes to `$devices/{id}/commands[/{subtopic}]`, which the device subscribes to.
#[utoipa::path(
    post, path = "/v1/devices/{id}/commands", tag = "publish",
    params(
        ("id" = String, Path, description = "Device id", pattern = r"^dev_[0-9a-z]{20}$", example = "dev_0123456789abcdefghij"),
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
    ),
    request_body = CommandRequest,
    responses(
        (status = 202, description = "Queued for the brokers", body = PublishAccepted),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device in this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn command_device(
    scope: TenantWriter,
    State(state): State<ApiState>,
    PathId(device): PathId<DeviceId>,
    ApiJson(body): ApiJson<CommandRequest>,
) -> Result<(StatusCode, Json<PublishAccepted>), Error> {
    state
        .store
        .get_device(scope.tenant_id(), &device)
        .await
        .map_err(Error::store("device"))?;
    command(&state, &scope, format!("$devices/{device}/commands"), body).await
}

/// Checks `body` and queues it on `commands` (or its `subtopic`) of a device or registry
/// known to exist.
async fn command(
    state: &ApiState,
    scope: &TenantWriter,
    commands: String,
    body: CommandRequest,
) -> Result<(StatusCode, Json<PublishAccepted>), Error> {
    let mut errors = Vec::new();
    let topic = command_topic(commands, body.subtopic.as_deref())
        .map_err(|e| errors.push(e))
        .ok();
    let message = check_message(
        state.max_publish_payload_bytes,
        body.payload,
        body.payload_base64,
        body.qos,
        body.retain,
        body.content_type,
        &mut errors,
    );
    match (topic, message) {
        (Some(topic), Some(message)) if errors.is_empty() => {
            enqueue(state, scope.tenant_id(), topic, message).await
        }
        _ => Err(Error::invalid(errors)),
    }
}

/// Send a command to every device of a registry.
///
/// Publishes to `$registries/{id}/commands[/{subtopic}]`, which the devices of the registry
/// subscribe to.
#[utoipa::path(
    post, path = "/v1/registries/{id}/commands", tag = "publish",
    params(
        ("id" = String, Path, description = "Registry id", pattern = r"^reg_[0-9a-z]{20}$", example = "reg_0123456789abcdefghij"),
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
    ),
    request_body = CommandRequest,
    responses(
        (status = 202, description = "Queued for the brokers", body = PublishAccepted),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such registry in this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn command_registry(
    scope: TenantWriter,
    State(state): State<ApiState>,
    PathId(registry): PathId<RegistryId>,
    ApiJson(body): ApiJson<CommandRequest>,
) -> Result<(StatusCode, Json<PublishAccepted>), Error> {
    state
        .store
        .get_registry(scope.tenant_id(), &registry)
        .await
        .map_err(Error::store("registry"))?;
    command(
        &state,
        &scope,
        format!("$registries/{registry}/commands"),
        body,
    )
    .await
}

/// Where among the `$`-topics the API may publish: the commands topics only.
enum DollarTarget {
    Device(DeviceId),
    Registry(RegistryId),
}

fn dollar_target(topic: &TopicName) -> Option<DollarTarget> {
    let mut levels = topic.levels();
    let (kind, id, action) = (levels.next()?, levels.next()?, levels.next()?);
    if action != "commands" {
        return None;
    }
    match kind {
        "$devices" => DeviceId::parse(id).map(DollarTarget::Device),
        "$registries" => RegistryId::parse(id).map(DollarTarget::Registry),
        _ => None,
    }
}

/// Publish a message to a topic of the tenant.
///
/// Any free-form topic (not starting with `$`), or the commands topic of one of the tenant's
/// devices or registries.
#[utoipa::path(
    post, path = "/v1/publish", tag = "publish",
    params(("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$")),
    request_body = PublishRequest,
    responses(
        (status = 202, description = "Queued for the brokers", body = PublishAccepted),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only role", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, or a topic the API may not publish to", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn publish(
    scope: TenantWriter,
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<PublishRequest>,
) -> Result<(StatusCode, Json<PublishAccepted>), Error> {
    let mut errors = Vec::new();
    let topic = match TopicName::parse(&body.topic, TopicLimits::default()) {
        Ok(topic) => Some(topic),
        Err(e) => {
            errors.push(FieldError::new(
                "topic",
                format!("is not a valid topic: {e}"),
            ));
            None
        }
    };
    let message = check_message(
        state.max_publish_payload_bytes,
        body.payload,
        body.payload_base64,
        body.qos,
        body.retain,
        body.content_type,
        &mut errors,
    );
    let (Some(topic), Some(message)) = (topic, message) else {
        return Err(Error::invalid(errors));
    };
    if !errors.is_empty() {
        return Err(Error::invalid(errors));
    }
    if topic.is_dollar_topic() {
        let tenant = scope.tenant_id();
        // Another tenant's device is exactly like a missing one.
        let found = match dollar_target(&topic) {
            Some(DollarTarget::Device(id)) => state.store.get_device(tenant, &id).await.map(drop),
            Some(DollarTarget::Registry(id)) => {
                state.store.get_registry(tenant, &id).await.map(drop)
            }
            None => {
                return Err(Error::invalid([FieldError::new(
                    "topic",
                    "among $-topics only $devices/{id}/commands and $registries/{id}/commands may be published to",
                )]))
            }
        };
        match found {
            Ok(()) => {}
            Err(StoreError::NotFound) => {
                return Err(Error::invalid([FieldError::new(
                    "topic",
                    "names no device or registry of this tenant",
                )]))
            }
            Err(other) => return Err(Error::store("message")(other)),
        }
    }
    enqueue(&state, scope.tenant_id(), topic, message).await
}
