//! `/v1/rules`: which messages of a tenant are forwarded to which webhook (SPEC §5).

use super::{created, list_type, PageParams};
use crate::error::{Error, FieldError, Problem};
use crate::extract::{ApiJson, ApiQuery, PathId, TenantScope, TenantWriter};
use crate::input::{Fields, ResourceName};
use crate::versioning::{tagged, with_etag, IfMatch};
use crate::ApiState;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use chrono::{DateTime, Utc};
use iotcore_condition::Condition;
use iotcore_rules::destination::{self, DestinationError};
use iotcore_store::dead_letters::{DeadLetter, RuleStats};
use iotcore_store::rules::{Batch, NewRule, NewWebhook, Rule, RuleChanges};
use iotcore_store::{MessageId, RegistryId, RuleId};
use iotcore_topic::{TopicFilter, TopicLimits};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

const MAX_URL_LEN: usize = 2048;
const MAX_HEADERS: usize = 32;
const MAX_HEADER_VALUE_LEN: usize = 4096;
const MAX_SECRET_CHARS: usize = 1024;
const DEFAULT_TIMEOUT_MS: i64 = 5000;
const MAX_TIMEOUT_MS: i64 = 60_000;
const DEFAULT_MAX_IN_FLIGHT: i64 = 64;
const MAX_MAX_IN_FLIGHT: i64 = 1024;
/// Envelopes per request; the database holds the same bound (migration 0012).
const MAX_BATCH_MESSAGES: i64 = 100;
/// Longest wait for a batch to fill; its messages are leased meanwhile.
const MAX_BATCH_WAIT_MS: i64 = 10_000;
/// Most ids one replay request may name.
const MAX_REPLAY_IDS: usize = 1000;

/// Headers the rules service sets itself, which a rule must not override.
fn is_reserved_header(name: &HeaderName) -> bool {
    let name = name.as_str();
    matches!(
        name,
        "content-type"
            | "content-length"
            | "host"
            | "transfer-encoding"
            | "connection"
            | "idempotency-key"
    ) || name.starts_with("x-iotcore-")
}

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/v1/rules", get(list_rules).post(create_rule))
        .route(
            "/v1/rules/{id}",
            get(get_rule).patch(update_rule).delete(delete_rule),
        )
        .route("/v1/rules/{id}/stats", get(get_rule_stats))
        .route("/v1/rules/{id}/dead-letters", get(list_dead_letters))
        .route(
            "/v1/rules/{id}/dead-letters/replay",
            post(replay_dead_letters),
        )
}

/// A new rule.
#[derive(Clone, Deserialize, ToSchema)]
#[schema(example = json!({
    "name": "temperature-to-backend", "topic_filter": "$devices/+/events/temperature",
    "webhook": {"url": "https://backend.example.com/iot", "headers": {"Authorization": "Bearer abc"},
                "secret": "signing-secret", "timeout_ms": 5000, "max_in_flight": 64,
                "batch": {"max_messages": 50, "max_wait_ms": 200}},
    "enabled": true
}))]
pub struct CreateRule {
    /// 1 to 128 characters, unique in the tenant.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\s\x00-\x1f\x7f-\x9f]([^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f])?$"
    )]
    pub name: String,
    /// An MQTT topic filter; `+` and `#` wildcards allowed.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^(#|(\+|[^+#\x00/]*)(/(\+|[^+#\x00/]*)){0,15}|(\+|[^+#\x00/]*)(/(\+|[^+#\x00/]*)){0,14}/#)$",
        example = "$devices/+/events/#"
    )]
    pub topic_filter: String,
    /// Only messages of devices of this registry match.
    #[schema(pattern = r"^reg_[0-9a-z]{20}$", example = "reg_0123456789abcdefghij")]
    pub registry_id: Option<String>,
    /// Only messages for which this expression is true match (see the README's rules
    /// section): e.g. `payload.celsius > 30 and startswith(topic, "$devices/")`. An
    /// invalid expression is a 422 whose message gives the position of the error.
    #[schema(example = "payload.celsius > 30")]
    pub condition: Option<String>,
    /// Where matching messages are delivered.
    pub webhook: CreateWebhook,
    /// True when absent.
    pub enabled: Option<bool>,
}

/// The webhook of a new rule.
#[derive(Clone, Deserialize, ToSchema)]
#[schema(example = json!({
    "url": "https://backend.example.com/iot", "headers": {"Authorization": "Bearer backend-token"},
    "secret": "a-long-random-signing-secret", "timeout_ms": 5000, "max_in_flight": 64
}))]
pub struct CreateWebhook {
    /// An absolute http or https URL.
    #[schema(
        max_length = 2048,
        pattern = r"^https?://[A-Za-z][A-Za-z0-9.-]*(:[0-9]{1,4})?(/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*)?$",
        example = "https://backend.example.com/iot"
    )]
    pub url: String,
    /// Extra request headers (at most 32); `Content-Type`, `Host`, `Idempotency-Key` and
    /// `X-Iotcore-*` are set by the service.
    pub headers: Option<BTreeMap<String, String>>,
    /// Signs each request (`X-Iotcore-Signature`). Write-only: never returned.
    #[schema(min_length = 1, max_length = 1024)]
    pub secret: Option<String>,
    /// 1 to 60000; 5000 when absent.
    #[schema(minimum = 1, maximum = 60000)]
    pub timeout_ms: Option<i64>,
    /// Concurrent requests to this webhook, 1 to 1024; 64 when absent.
    #[schema(minimum = 1, maximum = 1024)]
    pub max_in_flight: Option<i64>,
    /// Several messages per request; one envelope per request when absent.
    pub batch: Option<BatchSettings>,
}

/// Batching of a rule's messages (SPEC §5). With `max_messages` above 1 each request
/// carries a JSON array of up to that many envelopes (at most 1 MiB of payloads), sent when
/// full or `max_wait_ms` after its first message; the batch is delivered, retried or
/// dead-lettered as a whole, and its `Idempotency-Key` is `bat_` followed by the hex
/// SHA-256 of its envelope ids. Absent fields keep their current value (1 and 0 for a new
/// rule).
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"max_messages": 50, "max_wait_ms": 200}))]
pub struct BatchSettings {
    /// Envelopes per request, 1 to 100; 1 sends each message alone (a single envelope,
    /// not an array).
    #[schema(minimum = 1, maximum = 100, example = 50)]
    pub max_messages: Option<i64>,
    /// How long a partial batch waits for more messages, 0 to 10000 ms; 0 sends at once
    /// whatever one claim of the queue found.
    #[schema(minimum = 0, maximum = 10000, example = 200)]
    pub max_wait_ms: Option<i64>,
}

/// Changes to a rule's webhook; only its batching can be changed.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"batch": {"max_messages": 20, "max_wait_ms": 100}}))]
pub struct UpdateWebhook {
    /// New batching settings; absent fields are kept.
    pub batch: Option<BatchSettings>,
}

/// A change to a rule; absent fields are left as they are.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[schema(example = json!({"enabled": false, "condition": "payload.celsius > 35",
                          "webhook": {"batch": {"max_messages": 20, "max_wait_ms": 100}}}))]
pub struct UpdateRule {
    /// Enables or disables the rule.
    pub enabled: Option<bool>,
    /// A new condition, or `null` to remove it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub condition: Option<Option<String>>,
    /// New batching settings for the webhook.
    pub webhook: Option<UpdateWebhook>,
}

/// Tells an explicit `null` (`Some(None)`) from an absent field (`None`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// A rule's webhook; its secret is never shown, only whether there is one.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "url": "https://backend.example.com/iot", "headers": {}, "has_secret": true,
    "timeout_ms": 5000, "max_in_flight": 64, "batch": {"max_messages": 1, "max_wait_ms": 0}
}))]
pub struct WebhookView {
    /// The URL messages are POSTed to.
    pub url: String,
    /// Extra request headers sent with every delivery.
    pub headers: BTreeMap<String, String>,
    /// Whether requests are signed (`X-Iotcore-Signature`); the secret itself is never shown.
    pub has_secret: bool,
    /// How long one request may take, in milliseconds.
    pub timeout_ms: i32,
    /// Most concurrent requests to this webhook.
    pub max_in_flight: i32,
    /// How messages are grouped into requests.
    pub batch: BatchView,
}

/// A rule's batching: `max_messages` 1 sends one envelope per request.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"max_messages": 1, "max_wait_ms": 0}))]
pub struct BatchView {
    /// Envelopes per request.
    pub max_messages: i32,
    /// How long a partial batch waits for more messages, in milliseconds.
    pub max_wait_ms: i32,
}

/// A rule.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "id": "rul_0123456789abcdefghij", "name": "temperature-to-backend",
    "topic_filter": "$devices/+/events/temperature", "registry_id": null, "condition": null, "enabled": true,
    "webhook": {"url": "https://backend.example.com/iot", "headers": {}, "has_secret": true,
                "timeout_ms": 5000, "max_in_flight": 64,
                "batch": {"max_messages": 1, "max_wait_ms": 0}},
    "created_at": "2026-01-01T12:00:00Z"
}))]
pub struct RuleView {
    /// The rule's id.
    pub id: String,
    /// Unique in the tenant.
    pub name: String,
    /// The MQTT topic filter messages must match.
    pub topic_filter: String,
    /// When set, only messages of devices of this registry match.
    pub registry_id: Option<String>,
    /// When set, only messages for which this expression is true match.
    pub condition: Option<String>,
    /// A disabled rule matches nothing.
    pub enabled: bool,
    /// Where matching messages are delivered.
    pub webhook: WebhookView,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

impl From<Rule> for RuleView {
    fn from(r: Rule) -> RuleView {
        RuleView {
            id: r.id.to_string(),
            name: r.name,
            topic_filter: r.topic_filter,
            registry_id: r.registry_id.map(|id| id.to_string()),
            condition: r.condition,
            enabled: r.enabled,
            webhook: WebhookView {
                url: r.webhook.url,
                headers: r.webhook.headers,
                has_secret: r.webhook.has_secret,
                timeout_ms: r.webhook.timeout_ms,
                max_in_flight: r.webhook.max_in_flight,
                batch: BatchView {
                    max_messages: r.webhook.batch.max_messages,
                    max_wait_ms: r.webhook.batch.max_wait_ms,
                },
            },
            created_at: r.created_at,
        }
    }
}

list_type!(
    /// A page of rules.
    #[schema(example = json!({"items": [{"id": "rul_0123456789abcdefghij", "name": "hot", "topic_filter": "$devices/+/events/temperature", "registry_id": null, "condition": "payload.celsius > 30", "enabled": true, "webhook": {"url": "https://backend.example.com/iot", "headers": {}, "has_secret": false, "timeout_ms": 5000, "max_in_flight": 64, "batch": {"max_messages": 1, "max_wait_ms": 0}}, "created_at": "2026-01-01T12:00:00Z"}], "next_page_token": null}))]
    RuleList,
    RuleView
);

fn parse_topic_filter(s: String) -> Result<String, FieldError> {
    TopicFilter::parse(&s, TopicLimits::default())
        .map_err(|e| FieldError::new("topic_filter", e.to_string()))?;
    Ok(s)
}

/// Checks a condition; the text is kept as written.
fn parse_condition(s: Option<String>) -> Result<Option<String>, FieldError> {
    match s {
        None => Ok(None),
        Some(text) => match Condition::parse(&text) {
            Ok(_) => Ok(Some(text)),
            Err(e) => Err(FieldError::new(
                "condition",
                format!("invalid at position {}: {}", e.position, e.message),
            )),
        },
    }
}

/// The SSRF guard at creation (SPEC §5): a webhook whose host is, or resolves to, a
/// non-public address is refused unless private destinations are allowed. A name that does
/// not resolve now is accepted: the rules service checks every address again at delivery.
async fn check_destination(state: &ApiState, url: &str) -> Result<(), Error> {
    if state.allow_private_destinations {
        return Ok(());
    }
    let Ok(uri) = url.parse::<Uri>() else {
        return Ok(());
    };
    let host = uri.host().unwrap_or_default();
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    match destination::resolve_checked(host, port).await {
        Err(DestinationError::Forbidden(_)) => Err(Error::invalid([FieldError::new(
            "webhook.url",
            "resolves to a loopback, private, link-local or otherwise non-public address, \
             which this service does not deliver to",
        )])),
        Ok(_) | Err(DestinationError::Unresolved) => Ok(()),
    }
}

fn parse_registry_id(s: Option<String>) -> Result<Option<RegistryId>, FieldError> {
    match s {
        None => Ok(None),
        Some(s) => RegistryId::parse(&s).map(Some).ok_or_else(|| {
            FieldError::new(
                "registry_id",
                "does not refer to an existing resource of this tenant",
            )
        }),
    }
}

fn parse_url(s: String) -> Result<String, FieldError> {
    let invalid = |message: &str| FieldError::new("webhook.url", message);
    if s.len() > MAX_URL_LEN {
        return Err(invalid("must be at most 2048 bytes long"));
    }
    let uri: Uri = s.parse().map_err(|_| invalid("is not a valid URL"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(invalid("must be an http or https URL")),
    }
    match uri.host() {
        Some(host) if !host.is_empty() => {}
        _ => return Err(invalid("must name a host")),
    }
    Ok(s)
}

fn parse_headers(
    headers: Option<BTreeMap<String, String>>,
) -> Result<BTreeMap<String, String>, FieldError> {
    let headers = headers.unwrap_or_default();
    if headers.len() > MAX_HEADERS {
        return Err(FieldError::new(
            "webhook.headers",
            "at most 32 headers are allowed",
        ));
    }
    for (name, value) in &headers {
        let field = || format!("webhook.headers.{name}");
        let parsed = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| FieldError::new(field(), "is not a valid header name"))?;
        if is_reserved_header(&parsed) {
            return Err(FieldError::new(
                field(),
                "is set by the service and cannot be overridden",
            ));
        }
        if value.len() > MAX_HEADER_VALUE_LEN || HeaderValue::from_str(value).is_err() {
            return Err(FieldError::new(field(), "is not a valid header value"));
        }
    }
    Ok(headers)
}

fn parse_secret(secret: Option<String>) -> Result<Option<String>, FieldError> {
    match secret {
        Some(s) if s.is_empty() || s.chars().count() > MAX_SECRET_CHARS => Err(FieldError::new(
            "webhook.secret",
            "must be between 1 and 1024 characters long",
        )),
        other => Ok(other),
    }
}

fn in_range(field: &str, value: Option<i64>, default: i64, max: i64) -> Result<i32, FieldError> {
    bounded(field, value.unwrap_or(default), 1, max)
}

fn bounded(field: &str, value: i64, min: i64, max: i64) -> Result<i32, FieldError> {
    let error = || FieldError::new(field, format!("must be between {min} and {max}"));
    if !(min..=max).contains(&value) {
        return Err(error());
    }
    i32::try_from(value).map_err(|_| error())
}

/// The batch settings of a request, checked; an absent field is `None`.
#[derive(Debug, Default, PartialEq, Eq)]
struct BatchChanges {
    max_messages: Option<i32>,
    max_wait_ms: Option<i32>,
}

/// Checks `batch`, recording invalid fields in `fields` (and returning `None`) .
fn parse_batch(fields: &mut Fields, batch: Option<BatchSettings>) -> Option<BatchChanges> {
    let batch = batch.unwrap_or_default();
    let max_messages = batch
        .max_messages
        .map(|v| bounded("webhook.batch.max_messages", v, 1, MAX_BATCH_MESSAGES))
        .transpose();
    let max_wait_ms = batch
        .max_wait_ms
        .map(|v| bounded("webhook.batch.max_wait_ms", v, 0, MAX_BATCH_WAIT_MS))
        .transpose();
    let (max_messages, max_wait_ms) = (fields.take(max_messages), fields.take(max_wait_ms));
    Some(BatchChanges {
        max_messages: max_messages?,
        max_wait_ms: max_wait_ms?,
    })
}

/// Checks every field of `body`, naming each invalid one.
fn parse_rule(body: CreateRule) -> Result<NewRule, Error> {
    let mut fields = Fields::default();
    let name = fields.take(ResourceName::parse("name", body.name));
    let topic_filter = fields.take(parse_topic_filter(body.topic_filter));
    let registry_id = fields.take(parse_registry_id(body.registry_id));
    let condition = fields.take(parse_condition(body.condition));
    let url = fields.take(parse_url(body.webhook.url));
    let headers = fields.take(parse_headers(body.webhook.headers));
    let secret = fields.take(parse_secret(body.webhook.secret));
    let timeout_ms = fields.take(in_range(
        "webhook.timeout_ms",
        body.webhook.timeout_ms,
        DEFAULT_TIMEOUT_MS,
        MAX_TIMEOUT_MS,
    ));
    let max_in_flight = fields.take(in_range(
        "webhook.max_in_flight",
        body.webhook.max_in_flight,
        DEFAULT_MAX_IN_FLIGHT,
        MAX_MAX_IN_FLIGHT,
    ));
    let batch = parse_batch(&mut fields, body.webhook.batch);
    let (
        Some(name),
        Some(topic_filter),
        Some(registry_id),
        Some(condition),
        Some(url),
        Some(headers),
        Some(secret),
        Some(timeout_ms),
        Some(max_in_flight),
        Some(batch),
    ) = (
        name,
        topic_filter,
        registry_id,
        condition,
        url,
        headers,
        secret,
        timeout_ms,
        max_in_flight,
        batch,
    )
    else {
        return Err(fields.into_error());
    };
    fields.finish()?;
    Ok(NewRule {
        name: name.into_inner(),
        topic_filter,
        registry_id,
        condition,
        webhook: NewWebhook {
            url,
            headers,
            secret,
            timeout_ms,
            max_in_flight,
            batch: Batch {
                max_messages: batch.max_messages.unwrap_or(1),
                max_wait_ms: batch.max_wait_ms.unwrap_or(0),
            },
        },
        enabled: body.enabled.unwrap_or(true),
    })
}

/// Create a rule.
///
/// Matching messages of the tenant are delivered to the webhook at least once.
#[utoipa::path(
    post, path = "/v1/rules", tag = "rules",
    params(("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$")),
    request_body = CreateRule,
    responses(
        (status = 201, description = "The new rule", body = RuleView, headers(("ETag" = String, description = "The entity tag of this version, for If-Match"))),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only role", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A rule with this name exists, or the tenant is at its rules quota", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_rule(
    scope: TenantWriter,
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<CreateRule>,
) -> Result<Response, Error> {
    let new = parse_rule(body)?;
    check_destination(&state, &new.webhook.url).await?;
    state.check_rule_quota(scope.tenant_id()).await?;
    let rule = state
        .store
        .create_rule(scope.tenant_id(), &new)
        .await
        .map_err(Error::store("rule"))?;
    let version = rule.updated_at;
    let response = created(format!("/v1/rules/{}", rule.id), RuleView::from(rule));
    Ok(with_etag(response, version))
}

/// List rules.
#[utoipa::path(
    get, path = "/v1/rules", tag = "rules",
    params(PageParams, ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$")),
    responses(
        (status = 200, description = "A page of rules, ordered by id", body = RuleList),
        (status = 400, description = "Invalid page parameters", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_rules(
    scope: TenantScope,
    State(state): State<ApiState>,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<RuleList>, Error> {
    let page = state
        .store
        .list_rules(&scope.tenant_id, &params.request()?)
        .await
        .map_err(Error::store("rule"))?;
    Ok(Json(page.into()))
}

/// Get a rule.
#[utoipa::path(
    get, path = "/v1/rules/{id}", tag = "rules",
    params(
        ("id" = String, Path, description = "Rule id", pattern = r"^rul_[0-9a-z]{20}$", example = "rul_0123456789abcdefghij"),
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
    ),
    responses(
        (status = 200, description = "The rule", body = RuleView, headers(("ETag" = String, description = "The entity tag of this version, for If-Match"))),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such rule in this tenant", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_rule(
    scope: TenantScope,
    State(state): State<ApiState>,
    PathId(id): PathId<RuleId>,
) -> Result<Response, Error> {
    let rule = state
        .store
        .get_rule(&scope.tenant_id, &id)
        .await
        .map_err(Error::store("rule"))?;
    Ok(tagged(rule.updated_at, RuleView::from(rule)))
}

/// Change a rule: enable or disable it, set or remove its condition, change its batching.
#[utoipa::path(
    patch, path = "/v1/rules/{id}", tag = "rules",
    params(
        ("id" = String, Path, description = "Rule id", pattern = r"^rul_[0-9a-z]{20}$", example = "rul_0123456789abcdefghij"),
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
        ("If-Match" = Option<String>, Header, description = "Change only if the resource still has this entity tag (its `ETag`); 412 otherwise", pattern = r#"^(\*|(W/)?"[!#-+--~]*"([ 	]*,[ 	]*(W/)?"[!#-+--~]*"){0,15})$"#),
    ),
    request_body = UpdateRule,
    responses(
        (status = 200, description = "The changed rule", body = RuleView, headers(("ETag" = String, description = "The entity tag of this version, for If-Match"))),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such rule in this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The resource changed since the entity tag in If-Match", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update_rule(
    scope: TenantWriter,
    State(state): State<ApiState>,
    PathId(id): PathId<RuleId>,
    if_match: IfMatch,
    ApiJson(body): ApiJson<UpdateRule>,
) -> Result<Response, Error> {
    let mut fields = Fields::default();
    let condition = match body.condition {
        None => Some(None),
        Some(text) => fields.take(parse_condition(text)).map(Some),
    };
    let batch = parse_batch(&mut fields, body.webhook.and_then(|w| w.batch));
    let (Some(condition), Some(batch)) = (condition, batch) else {
        return Err(fields.into_error());
    };
    fields.finish()?;
    let changes = RuleChanges {
        enabled: body.enabled,
        condition,
        batch_max_messages: batch.max_messages,
        batch_max_wait_ms: batch.max_wait_ms,
    };
    let rule = state
        .store
        .update_rule(scope.tenant_id(), &id, &changes, if_match.versions())
        .await
        .map_err(Error::store("rule"))?;
    Ok(tagged(rule.updated_at, RuleView::from(rule)))
}

/// Delete a rule with its pending deliveries and dead letters.
#[utoipa::path(
    delete, path = "/v1/rules/{id}", tag = "rules",
    params(
        ("id" = String, Path, description = "Rule id", pattern = r"^rul_[0-9a-z]{20}$", example = "rul_0123456789abcdefghij"),
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
        ("If-Match" = Option<String>, Header, description = "Delete only if the resource still has this entity tag (its `ETag`); 412 otherwise", pattern = r#"^(\*|(W/)?"[!#-+--~]*"([ 	]*,[ 	]*(W/)?"[!#-+--~]*"){0,15})$"#),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such rule in this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The resource changed since the entity tag in If-Match", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_rule(
    scope: TenantWriter,
    State(state): State<ApiState>,
    PathId(id): PathId<RuleId>,
    if_match: IfMatch,
) -> Result<StatusCode, Error> {
    state
        .store
        .delete_rule(scope.tenant_id(), &id, if_match.versions())
        .await
        .map_err(Error::store("rule"))?;
    Ok(StatusCode::NO_CONTENT)
}

/// What became of a rule's matches so far, and what is still waiting.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "delivered": 1200, "retried": 4, "dead_lettered": 1, "last_error": "HTTP 404 Not Found",
    "last_error_at": "2026-01-01T12:00:00Z", "last_success_at": "2026-01-01T12:05:00Z",
    "queue_depth": 3, "dead_letters": 1
}))]
pub struct RuleStatsView {
    /// Messages the webhook accepted (2xx).
    pub delivered: i64,
    /// Failed attempts that were scheduled to be tried again.
    pub retried: i64,
    /// Messages given up on (a 4xx, or too old).
    pub dead_lettered: i64,
    /// The error of the last failed delivery attempt, if any.
    pub last_error: Option<String>,
    /// When a delivery attempt last failed.
    pub last_error_at: Option<DateTime<Utc>>,
    /// When a delivery last succeeded.
    pub last_success_at: Option<DateTime<Utc>>,
    /// Messages waiting in the delivery queue.
    pub queue_depth: i64,
    /// Dead letters kept now (replayed ones are no longer among them).
    pub dead_letters: i64,
}

impl From<RuleStats> for RuleStatsView {
    fn from(s: RuleStats) -> RuleStatsView {
        RuleStatsView {
            delivered: s.delivered,
            retried: s.retried,
            dead_lettered: s.dead_lettered,
            last_error: s.last_error,
            last_error_at: s.last_error_at,
            last_success_at: s.last_success_at,
            queue_depth: s.queue_depth,
            dead_letters: s.dead_letters,
        }
    }
}

/// A message that was not delivered, with why.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "id": "msg_0123456789abcdefghij", "rule_id": "rul_0123456789abcdefghij",
    "registry_id": "reg_0123456789abcdefghij", "device_id": "dev_0123456789abcdefghij",
    "topic": "$devices/dev_0123456789abcdefghij/events/temperature", "qos": 1, "retain": false,
    "payload_base64": "eyJjZWxzaXVzIjozMn0=", "content_type": null,
    "received_at": "2026-01-01T12:00:00Z", "attempts": 3, "last_error": "HTTP 400",
    "dead_at": "2026-01-01T12:00:05Z"
}))]
pub struct DeadLetterView {
    /// The envelope id; a replay delivers the message again under this id.
    pub id: String,
    /// The rule that matched the message.
    pub rule_id: String,
    /// The registry of the device that sent it, if a device did.
    pub registry_id: Option<String>,
    /// The device that sent it, if a device did.
    pub device_id: Option<String>,
    /// The topic it was published to.
    pub topic: String,
    /// The QoS it was published with (0, 1 or 2).
    pub qos: i16,
    /// Whether it was published retained.
    pub retain: bool,
    /// The payload, base64-encoded.
    pub payload_base64: String,
    /// The MQTT 5 content type, if the publisher set one.
    pub content_type: Option<String>,
    /// When the broker received it.
    pub received_at: DateTime<Utc>,
    /// Delivery attempts made.
    pub attempts: i32,
    /// Why the last attempt failed.
    pub last_error: String,
    /// When it was given up on.
    pub dead_at: DateTime<Utc>,
}

impl From<DeadLetter> for DeadLetterView {
    fn from(d: DeadLetter) -> DeadLetterView {
        DeadLetterView {
            id: d.id.to_string(),
            rule_id: d.rule_id.to_string(),
            registry_id: d.registry_id.map(|r| r.to_string()),
            device_id: d.device_id.map(|r| r.to_string()),
            topic: d.topic,
            qos: d.qos,
            retain: d.retain,
            payload_base64: BASE64.encode(&d.payload),
            content_type: d.content_type,
            received_at: d.received_at,
            attempts: d.attempts,
            last_error: d.last_error,
            dead_at: d.dead_at,
        }
    }
}

list_type!(
    /// A page of dead letters.
    #[schema(example = json!({"items": [{"id": "msg_0123456789abcdefghij", "rule_id": "rul_0123456789abcdefghij", "registry_id": "reg_0123456789abcdefghij", "device_id": "dev_0123456789abcdefghij", "topic": "$devices/dev_0123456789abcdefghij/events/temperature", "qos": 1, "retain": false, "payload_base64": "eyJjZWxzaXVzIjozMn0=", "content_type": null, "received_at": "2026-01-01T12:00:00Z", "attempts": 3, "last_error": "HTTP 400", "dead_at": "2026-01-01T12:00:05Z"}], "next_page_token": null}))]
    DeadLetterList,
    DeadLetterView
);

/// Which dead letters to replay.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[schema(example = json!({"ids": ["msg_0123456789abcdefghij"]}))]
pub struct ReplayRequest {
    /// At most 1000 dead letter ids; absent (`{}`) replays them all. Ids that
    /// are not dead letters of the rule are ignored.
    pub ids: Option<Vec<String>>,
}

/// How many dead letters went back into the delivery queue.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"replayed": 12}))]
pub struct ReplayResult {
    /// Dead letters put back into the delivery queue.
    pub replayed: u64,
}

fn parse_replay_ids(ids: Option<Vec<String>>) -> Result<Option<Vec<MessageId>>, Error> {
    let Some(ids) = ids else { return Ok(None) };
    if ids.len() > MAX_REPLAY_IDS {
        return Err(Error::invalid([FieldError::new(
            "ids",
            "at most 1000 ids are allowed",
        )]));
    }
    let mut parsed = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        match MessageId::parse(id) {
            Some(id) => parsed.push(id),
            None => {
                return Err(Error::invalid([FieldError::new(
                    format!("ids[{i}]"),
                    "is not a message id",
                )]))
            }
        }
    }
    Ok(Some(parsed))
}

/// Get a rule's delivery statistics.
#[utoipa::path(
    get, path = "/v1/rules/{id}/stats", tag = "rules",
    params(
        ("id" = String, Path, description = "Rule id", pattern = r"^rul_[0-9a-z]{20}$", example = "rul_0123456789abcdefghij"),
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
    ),
    responses(
        (status = 200, description = "Counters, the last error and the queue depth", body = RuleStatsView),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such rule in this tenant", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_rule_stats(
    scope: TenantScope,
    State(state): State<ApiState>,
    PathId(id): PathId<RuleId>,
) -> Result<Json<RuleStatsView>, Error> {
    let stats = state
        .store
        .rule_stats(&scope.tenant_id, &id)
        .await
        .map_err(Error::store("rule"))?;
    Ok(Json(stats.into()))
}

/// List a rule's dead letters.
#[utoipa::path(
    get, path = "/v1/rules/{id}/dead-letters", tag = "rules",
    params(
        ("id" = String, Path, description = "Rule id", pattern = r"^rul_[0-9a-z]{20}$", example = "rul_0123456789abcdefghij"),
        PageParams,
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
    ),
    responses(
        (status = 200, description = "A page of dead letters, ordered by id", body = DeadLetterList),
        (status = 400, description = "Malformed id or page parameters", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such rule in this tenant", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_dead_letters(
    scope: TenantScope,
    State(state): State<ApiState>,
    PathId(id): PathId<RuleId>,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<DeadLetterList>, Error> {
    let page = state
        .store
        .list_dead_letters(&scope.tenant_id, &id, &params.request()?)
        .await
        .map_err(Error::store("rule"))?;
    Ok(Json(page.into()))
}

/// Replay dead letters.
///
/// The messages go back into the delivery queue, due at once, with their attempts reset
/// and their ids unchanged.
#[utoipa::path(
    post, path = "/v1/rules/{id}/dead-letters/replay", tag = "rules",
    params(
        ("id" = String, Path, description = "Rule id", pattern = r"^rul_[0-9a-z]{20}$", example = "rul_0123456789abcdefghij"),
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
    ),
    request_body = ReplayRequest,
    responses(
        (status = 200, description = "How many were queued again", body = ReplayResult),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such rule in this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid ids", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn replay_dead_letters(
    scope: TenantWriter,
    State(state): State<ApiState>,
    PathId(id): PathId<RuleId>,
    ApiJson(body): ApiJson<ReplayRequest>,
) -> Result<Json<ReplayResult>, Error> {
    let ids = parse_replay_ids(body.ids)?;
    let replayed = state
        .store
        .replay_dead_letters(scope.tenant_id(), &id, ids.as_deref())
        .await
        .map_err(Error::store("rule"))?;
    Ok(Json(ReplayResult { replayed }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_must_be_absolute_http() {
        assert!(parse_url("https://backend.example.com/iot".into()).is_ok());
        assert!(parse_url("http://127.0.0.1:8080/hook".into()).is_ok());
        for bad in [
            "ftp://example.com/",
            "/relative",
            "https://",
            "not a url",
            "file:///etc/passwd",
        ] {
            assert!(parse_url(bad.into()).is_err(), "{bad}");
        }
    }

    #[test]
    fn service_headers_cannot_be_overridden() {
        assert!(parse_headers(Some(BTreeMap::from([(
            "Authorization".into(),
            "Bearer x".into()
        )])))
        .is_ok());
        for name in [
            "Content-Type",
            "X-Iotcore-Signature",
            "Idempotency-Key",
            "bad header",
        ] {
            assert!(
                parse_headers(Some(BTreeMap::from([(name.into(), "v".into())]))).is_err(),
                "{name}"
            );
        }
        assert!(parse_headers(Some(BTreeMap::from([(
            "X-Ok".into(),
            "line\nbreak".into()
        )])))
        .is_err());
    }

    #[test]
    fn batch_settings_are_bounded_and_every_bad_field_is_named() {
        let mut fields = Fields::default();
        let ok = parse_batch(
            &mut fields,
            Some(BatchSettings {
                max_messages: Some(100),
                max_wait_ms: Some(0),
            }),
        );
        assert_eq!(
            ok,
            Some(BatchChanges {
                max_messages: Some(100),
                max_wait_ms: Some(0)
            })
        );
        assert_eq!(
            parse_batch(&mut fields, None),
            Some(BatchChanges::default())
        );
        assert!(fields.finish().is_ok());

        let mut fields = Fields::default();
        let bad = parse_batch(
            &mut fields,
            Some(BatchSettings {
                max_messages: Some(0),
                max_wait_ms: Some(10_001),
            }),
        );
        assert_eq!(bad, None);
        let Err(Error::Unprocessable(errors)) = fields.finish() else {
            panic!("invalid batch settings accepted");
        };
        assert_eq!(
            errors,
            [
                FieldError::new("webhook.batch.max_messages", "must be between 1 and 100"),
                FieldError::new("webhook.batch.max_wait_ms", "must be between 0 and 10000"),
            ]
        );
    }

    #[test]
    fn condition_errors_name_their_position() {
        assert_eq!(
            parse_condition(Some("payload.celsius > 30".into())),
            Ok(Some("payload.celsius > 30".into()))
        );
        assert_eq!(parse_condition(None), Ok(None));
        let err = parse_condition(Some("payload.celsius >".into()));
        assert_eq!(
            err,
            Err(FieldError::new(
                "condition",
                "invalid at position 17: expected a value"
            ))
        );
    }
}
