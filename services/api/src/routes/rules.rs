//! `/v1/rules`: which messages of a tenant are forwarded to which webhook (SPEC §5).

use super::{created, list_type, next_page_token, PageParams};
use crate::error::{Error, FieldError, Problem};
use crate::extract::{ApiJson, ApiQuery, PathId, TenantScope, TenantWriter};
use crate::input::{Fields, ResourceName};
use crate::ApiState;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use iotcore_store::rules::{NewRule, NewWebhook, Rule};
use iotcore_store::{RegistryId, RuleId};
use iotcore_topic::{TopicFilter, TopicLimits};
use serde::{Deserialize, Serialize};
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
}

/// A new rule.
#[derive(Clone, Deserialize, ToSchema)]
#[schema(example = json!({
    "name": "temperature-to-backend", "topic_filter": "$devices/+/events/temperature",
    "webhook": {"url": "https://backend.example.com/iot", "headers": {"Authorization": "Bearer abc"},
                "secret": "signing-secret", "timeout_ms": 5000, "max_in_flight": 64},
    "enabled": true
}))]
pub struct CreateRule {
    /// 1 to 128 characters, unique in the tenant.
    pub name: String,
    /// An MQTT topic filter; `+` and `#` wildcards allowed.
    pub topic_filter: String,
    /// Only messages of devices of this registry match.
    pub registry_id: Option<String>,
    /// Reserved: conditions are not supported yet, only `null` is accepted.
    #[schema(value_type = Option<String>)]
    pub condition: Option<serde_json::Value>,
    pub webhook: CreateWebhook,
    /// True when absent.
    pub enabled: Option<bool>,
}

/// The webhook of a new rule.
#[derive(Clone, Deserialize, ToSchema)]
pub struct CreateWebhook {
    /// An absolute http or https URL.
    #[schema(example = "https://backend.example.com/iot")]
    pub url: String,
    /// Extra request headers (at most 32); `Content-Type`, `Host`, `Idempotency-Key` and
    /// `X-Iotcore-*` are set by the service.
    pub headers: Option<BTreeMap<String, String>>,
    /// Signs each request (`X-Iotcore-Signature`). Write-only: never returned.
    pub secret: Option<String>,
    /// 1 to 60000; 5000 when absent.
    #[schema(minimum = 1, maximum = 60000)]
    pub timeout_ms: Option<i64>,
    /// Concurrent requests to this webhook, 1 to 1024; 64 when absent.
    #[schema(minimum = 1, maximum = 1024)]
    pub max_in_flight: Option<i64>,
}

/// A change to a rule.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[schema(example = json!({"enabled": false}))]
pub struct UpdateRule {
    /// Enables or disables the rule.
    pub enabled: Option<bool>,
}

/// A rule's webhook; its secret is never shown, only whether there is one.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookView {
    pub url: String,
    pub headers: BTreeMap<String, String>,
    pub has_secret: bool,
    pub timeout_ms: i32,
    pub max_in_flight: i32,
}

/// A rule.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "id": "rul_0123456789abcdefghij", "name": "temperature-to-backend",
    "topic_filter": "$devices/+/events/temperature", "registry_id": null, "condition": null, "enabled": true,
    "webhook": {"url": "https://backend.example.com/iot", "headers": {}, "has_secret": true,
                "timeout_ms": 5000, "max_in_flight": 64},
    "created_at": "2026-01-01T12:00:00Z"
}))]
pub struct RuleView {
    pub id: String,
    pub name: String,
    pub topic_filter: String,
    pub registry_id: Option<String>,
    pub condition: Option<String>,
    pub enabled: bool,
    pub webhook: WebhookView,
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
            },
            created_at: r.created_at,
        }
    }
}

list_type!(
    /// A page of rules.
    RuleList,
    RuleView
);

fn parse_topic_filter(s: String) -> Result<String, FieldError> {
    TopicFilter::parse(&s, TopicLimits::default())
        .map_err(|e| FieldError::new("topic_filter", e.to_string()))?;
    Ok(s)
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
    let value = value.unwrap_or(default);
    if !(1..=max).contains(&value) {
        return Err(FieldError::new(
            field,
            format!("must be between 1 and {max}"),
        ));
    }
    i32::try_from(value).map_err(|_| FieldError::new(field, format!("must be between 1 and {max}")))
}

/// Checks every field of `body`, naming each invalid one.
fn parse_rule(body: CreateRule) -> Result<NewRule, Error> {
    let mut fields = Fields::default();
    let name = fields.take(ResourceName::parse("name", body.name));
    let topic_filter = fields.take(parse_topic_filter(body.topic_filter));
    let registry_id = fields.take(parse_registry_id(body.registry_id));
    if body.condition.is_some() {
        fields.push(FieldError::new(
            "condition",
            "conditions are not supported yet",
        ));
    }
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
    let (
        Some(name),
        Some(topic_filter),
        Some(registry_id),
        Some(url),
        Some(headers),
        Some(secret),
        Some(timeout_ms),
        Some(max_in_flight),
    ) = (
        name,
        topic_filter,
        registry_id,
        url,
        headers,
        secret,
        timeout_ms,
        max_in_flight,
    )
    else {
        return Err(fields.into_error());
    };
    fields.finish()?;
    Ok(NewRule {
        name: name.into_inner(),
        topic_filter,
        registry_id,
        condition: None,
        webhook: NewWebhook {
            url,
            headers,
            secret,
            timeout_ms,
            max_in_flight,
        },
        enabled: body.enabled.unwrap_or(true),
    })
}

/// Create a rule.
///
/// Matching messages of the tenant are delivered to the webhook at least once.
#[utoipa::path(
    post, path = "/v1/rules", tag = "rules",
    params(("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in")),
    request_body = CreateRule,
    responses(
        (status = 201, description = "The new rule", body = RuleView),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only role", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A rule with this name exists", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_rule(
    scope: TenantWriter,
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<CreateRule>,
) -> Result<Response, Error> {
    let new = parse_rule(body)?;
    let rule = state
        .store
        .create_rule(scope.tenant_id(), &new)
        .await
        .map_err(Error::store("rule"))?;
    Ok(created(
        format!("/v1/rules/{}", rule.id),
        RuleView::from(rule),
    ))
}

/// List rules.
#[utoipa::path(
    get, path = "/v1/rules", tag = "rules",
    params(PageParams, ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in")),
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
    Ok(Json(RuleList {
        items: page.items.into_iter().map(RuleView::from).collect(),
        next_page_token: next_page_token(page.next_after),
    }))
}

/// Get a rule.
#[utoipa::path(
    get, path = "/v1/rules/{id}", tag = "rules",
    params(
        ("id" = String, Path, description = "Rule id", example = "rul_0123456789abcdefghij"),
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in"),
    ),
    responses(
        (status = 200, description = "The rule", body = RuleView),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such rule in this tenant", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_rule(
    scope: TenantScope,
    State(state): State<ApiState>,
    PathId(id): PathId<RuleId>,
) -> Result<Json<RuleView>, Error> {
    let rule = state
        .store
        .get_rule(&scope.tenant_id, &id)
        .await
        .map_err(Error::store("rule"))?;
    Ok(Json(rule.into()))
}

/// Change a rule: enable or disable it.
#[utoipa::path(
    patch, path = "/v1/rules/{id}", tag = "rules",
    params(
        ("id" = String, Path, description = "Rule id", example = "rul_0123456789abcdefghij"),
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in"),
    ),
    request_body = UpdateRule,
    responses(
        (status = 200, description = "The changed rule", body = RuleView),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such rule in this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update_rule(
    scope: TenantWriter,
    State(state): State<ApiState>,
    PathId(id): PathId<RuleId>,
    ApiJson(body): ApiJson<UpdateRule>,
) -> Result<Json<RuleView>, Error> {
    let rule = match body.enabled {
        Some(enabled) => {
            state
                .store
                .set_rule_enabled(scope.tenant_id(), &id, enabled)
                .await
        }
        None => state.store.get_rule(scope.tenant_id(), &id).await,
    }
    .map_err(Error::store("rule"))?;
    Ok(Json(rule.into()))
}

/// Delete a rule with its pending deliveries and dead letters.
#[utoipa::path(
    delete, path = "/v1/rules/{id}", tag = "rules",
    params(
        ("id" = String, Path, description = "Rule id", example = "rul_0123456789abcdefghij"),
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such rule in this tenant", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_rule(
    scope: TenantWriter,
    State(state): State<ApiState>,
    PathId(id): PathId<RuleId>,
) -> Result<StatusCode, Error> {
    state
        .store
        .delete_rule(scope.tenant_id(), &id)
        .await
        .map_err(Error::store("rule"))?;
    Ok(StatusCode::NO_CONTENT)
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
}
