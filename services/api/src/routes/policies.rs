//! `/v1/policies`: a tenant's ACL policies (SPEC §4.2), and their attachment to the tenant,
//! registries, devices and virtual brokers. Brokers apply every change to live sessions.

use super::owner::CredentialOwner;
use super::{created, list_type, FilterParams, PageParams};
use crate::error::{Error, FieldError, Problem};
use crate::extract::{ApiJson, ApiQuery, PathId, PathIds, TenantScope, TenantWriter};
use crate::input::{Fields, ResourceName};
use crate::versioning::{tagged, with_etag, IfMatch};
use crate::ApiState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use iotcore_store::policies::{
    Action, Effect, NewPolicy, Policy, PolicyTarget, Statement, TopicTemplate,
};
use iotcore_store::{BrokerId, DeviceId, PolicyId, RegistryId};
use iotcore_topic::{TopicFilter, TopicLimits};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Most statements in one policy.
pub const MAX_STATEMENTS: usize = 100;
/// Most topic filters in one statement.
pub const MAX_TOPICS: usize = 64;
/// Longest topic filter of a statement, in bytes (variables included as written).
pub const MAX_TOPIC_BYTES: usize = 1024;
/// Most topic filters in one policy, all statements together: each is matched on every
/// PUBLISH or SUBSCRIBE of the clients it applies to.
pub const MAX_POLICY_TOPICS: usize = 256;

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/v1/policies", get(list_policies).post(create_policy))
        .route(
            "/v1/policies/{id}",
            get(get_policy).put(replace_policy).delete(delete_policy),
        )
        .route("/v1/tenant/policies", get(list_tenant_policies))
        .route(
            "/v1/tenant/policies/{policy_id}",
            put(attach_tenant_policy).delete(detach_tenant_policy),
        )
        .route("/v1/registries/{id}/policies", get(list_registry_policies))
        .route(
            "/v1/registries/{id}/policies/{policy_id}",
            put(attach_registry_policy).delete(detach_registry_policy),
        )
        .route("/v1/devices/{id}/policies", get(list_device_policies))
        .route(
            "/v1/devices/{id}/policies/{policy_id}",
            put(attach_device_policy).delete(detach_device_policy),
        )
        .route("/v1/brokers/{id}/policies", get(list_broker_policies))
        .route(
            "/v1/brokers/{id}/policies/{policy_id}",
            put(attach_broker_policy).delete(detach_broker_policy),
        )
}

/// Whether a statement grants or takes away rights; deny wins over allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(example = "allow")]
pub enum PolicyEffect {
    Allow,
    Deny,
}

/// An MQTT action a statement is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(example = "publish")]
pub enum PolicyAction {
    Publish,
    Subscribe,
}

/// One statement of a policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"effect": "allow", "actions": ["publish"], "topics": ["fleet/${registry.id}/${device.id}/#"]}))]
pub struct PolicyStatement {
    /// `allow` or `deny`.
    pub effect: PolicyEffect,
    /// `publish` and/or `subscribe` (1 or 2 of them).
    #[schema(min_items = 1, max_items = 2)]
    pub actions: Vec<PolicyAction>,
    /// 1 to 64 MQTT topic filters (at most 1024 bytes each, `$share/…` not allowed) that
    /// may use the variables `${tenant.id}`, `${registry.id}`, `${device.id}`,
    /// `${client.id}`, `${cert.subject.cn}` and `${device.labels.KEY}`. A variable that is
    /// empty for a client or contains `/`, `+` or `#` makes the statement not match.
    #[schema(min_items = 1, max_items = 64)]
    pub topics: Vec<String>,
}

/// A new policy, or the whole new content of one (`PUT`).
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "fleet-telemetry", "statements": [
    {"effect": "allow", "actions": ["publish"], "topics": ["fleet/${registry.id}/${device.id}/#"]},
    {"effect": "allow", "actions": ["subscribe"], "topics": ["fleet/${registry.id}/broadcast/#"]},
    {"effect": "deny", "actions": ["subscribe"], "topics": ["fleet/+/secret/#"]}
]}))]
pub struct PolicyInput {
    /// 1 to 128 characters, unique in the tenant.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\s\x00-\x1f\x7f-\x9f]([^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f])?$"
    )]
    pub name: String,
    /// 1 to 100 statements, with at most 256 topic filters in all.
    #[schema(min_items = 1, max_items = 100)]
    pub statements: Vec<PolicyStatement>,
}

/// A policy.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "id": "pol_0123456789abcdefghij", "name": "fleet-telemetry",
    "statements": [{"effect": "allow", "actions": ["publish"], "topics": ["fleet/${registry.id}/${device.id}/#"]}],
    "created_at": "2026-01-01T12:00:00Z", "updated_at": "2026-01-01T12:00:00Z"
}))]
pub struct PolicyView {
    /// The policy's id.
    pub id: String,
    /// Unique in the tenant.
    pub name: String,
    /// The statements, in the order given.
    pub statements: Vec<PolicyStatement>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl From<Policy> for PolicyView {
    fn from(p: Policy) -> PolicyView {
        PolicyView {
            id: p.id.to_string(),
            name: p.name,
            statements: p
                .statements
                .into_iter()
                .map(|s| PolicyStatement {
                    effect: match s.effect {
                        Effect::Allow => PolicyEffect::Allow,
                        Effect::Deny => PolicyEffect::Deny,
                    },
                    actions: s
                        .actions
                        .into_iter()
                        .map(|a| match a {
                            Action::Publish => PolicyAction::Publish,
                            Action::Subscribe => PolicyAction::Subscribe,
                        })
                        .collect(),
                    topics: s.topics,
                })
                .collect(),
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

list_type!(
    /// A page of policies.
    #[schema(example = json!({"items": [{"id": "pol_0123456789abcdefghij", "name": "fleet-telemetry", "statements": [{"effect": "deny", "actions": ["subscribe"], "topics": ["fleet/+/secret/#"]}], "created_at": "2026-01-01T12:00:00Z", "updated_at": "2026-01-01T12:00:00Z"}], "next_page_token": null}))]
    PolicyList,
    PolicyView
);

/// Checks a policy body, naming every invalid field.
fn parse_policy(body: PolicyInput) -> Result<NewPolicy, Error> {
    let mut fields = Fields::default();
    let name = fields.take(ResourceName::parse("name", body.name));
    if body.statements.is_empty() || body.statements.len() > MAX_STATEMENTS {
        fields.push(FieldError::new(
            "statements",
            "must hold 1 to 100 statements",
        ));
    } else if body
        .statements
        .iter()
        .map(|s| s.topics.len())
        .sum::<usize>()
        > MAX_POLICY_TOPICS
    {
        fields.push(FieldError::new(
            "statements",
            "must name at most 256 topic filters in all",
        ));
    }
    let mut statements = Vec::with_capacity(body.statements.len());
    for (i, s) in body.statements.into_iter().take(MAX_STATEMENTS).enumerate() {
        let mut actions = Vec::new();
        for action in &s.actions {
            let action = match action {
                PolicyAction::Publish => Action::Publish,
                PolicyAction::Subscribe => Action::Subscribe,
            };
            if !actions.contains(&action) {
                actions.push(action);
            }
        }
        if actions.is_empty() || actions.len() != s.actions.len() {
            fields.push(FieldError::new(
                format!("statements[{i}].actions"),
                "must name publish and/or subscribe, each at most once",
            ));
        }
        if s.topics.is_empty() || s.topics.len() > MAX_TOPICS {
            fields.push(FieldError::new(
                format!("statements[{i}].topics"),
                "must hold 1 to 64 topic filters",
            ));
        }
        for (j, topic) in s.topics.iter().enumerate().take(MAX_TOPICS) {
            if let Err(message) = check_topic(topic) {
                fields.push(FieldError::new(
                    format!("statements[{i}].topics[{j}]"),
                    message,
                ));
            }
        }
        statements.push(Statement {
            effect: match s.effect {
                PolicyEffect::Allow => Effect::Allow,
                PolicyEffect::Deny => Effect::Deny,
            },
            actions,
            topics: s.topics,
        });
    }
    let Some(name) = name else {
        return Err(fields.into_error());
    };
    fields.finish()?;
    Ok(NewPolicy {
        name: name.into_inner(),
        statements,
    })
}

/// A statement's topic filter: known variables only, and a valid MQTT filter whatever
/// (safe) values they take.
fn check_topic(topic: &str) -> Result<(), String> {
    if topic.len() > MAX_TOPIC_BYTES {
        return Err("must be at most 1024 bytes long".into());
    }
    if topic.starts_with("$share/") {
        return Err("shared subscriptions ($share/…) are not policy topics".into());
    }
    let template = TopicTemplate::parse(topic)?;
    TopicFilter::parse(&template.with_placeholders(), TopicLimits::default())
        .map(|_| ())
        .map_err(|e| format!("is not a valid MQTT topic filter: {e}"))
}

/// Create a policy.
#[utoipa::path(
    post, path = "/v1/policies", tag = "policies",
    params(("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$")),
    request_body = PolicyInput,
    responses(
        (status = 201, description = "The new policy", body = PolicyView, headers(("ETag" = String, description = "The entity tag of this version, for If-Match"))),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only role", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A policy with this name exists", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_policy(
    scope: TenantWriter,
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<PolicyInput>,
) -> Result<Response, Error> {
    let new = parse_policy(body)?;
    let policy = state
        .store
        .create_policy(scope.tenant_id(), &new)
        .await
        .map_err(Error::store("policy"))?;
    let version = policy.updated_at;
    let response = created(
        format!("/v1/policies/{}", policy.id),
        PolicyView::from(policy),
    );
    Ok(with_etag(response, version))
}

/// List policies.
#[utoipa::path(
    get, path = "/v1/policies", tag = "policies",
    params(PageParams, ("name_prefix" = Option<String>, Query, description = "Keep policies whose name starts with this string (taken literally)", max_length = 128, example = "fleet-"), ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$")),
    responses(
        (status = 200, description = "A page of policies, ordered by id", body = PolicyList),
        (status = 400, description = "Invalid page parameters", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid filter", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_policies(
    scope: TenantScope,
    State(state): State<ApiState>,
    ApiQuery(params): ApiQuery<PageParams>,
    ApiQuery(filter): ApiQuery<FilterParams>,
) -> Result<Json<PolicyList>, Error> {
    if filter.label.is_some() {
        return Err(Error::invalid([FieldError::new(
            "label",
            "policies have no labels",
        )]));
    }
    let filter = filter.filter(None)?;
    let page = state
        .store
        .list_policies(&scope.tenant_id, &filter, &params.request()?)
        .await
        .map_err(Error::store("policy"))?;
    Ok(Json(page.into()))
}

/// Get a policy.
#[utoipa::path(
    get, path = "/v1/policies/{id}", tag = "policies",
    params(
        ("id" = String, Path, description = "Policy id", pattern = r"^pol_[0-9a-z]{20}$", example = "pol_0123456789abcdefghij"),
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
    ),
    responses(
        (status = 200, description = "The policy", body = PolicyView, headers(("ETag" = String, description = "The entity tag of this version, for If-Match"))),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such policy in this tenant", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_policy(
    scope: TenantScope,
    State(state): State<ApiState>,
    PathId(id): PathId<PolicyId>,
) -> Result<Response, Error> {
    let policy = state
        .store
        .get_policy(&scope.tenant_id, &id)
        .await
        .map_err(Error::store("policy"))?;
    Ok(tagged(policy.updated_at, PolicyView::from(policy)))
}

/// Replace a policy's name and statements; live sessions get the new rights within a second.
#[utoipa::path(
    put, path = "/v1/policies/{id}", tag = "policies",
    params(
        ("id" = String, Path, description = "Policy id", pattern = r"^pol_[0-9a-z]{20}$", example = "pol_0123456789abcdefghij"),
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
        ("If-Match" = Option<String>, Header, description = "Change only if the resource still has this entity tag (its `ETag`); 412 otherwise", pattern = r#"^(\*|(W/)?"[!#-+--~]*"([ 	]*,[ 	]*(W/)?"[!#-+--~]*"){0,15})$"#),
    ),
    request_body = PolicyInput,
    responses(
        (status = 200, description = "The changed policy", body = PolicyView, headers(("ETag" = String, description = "The entity tag of this version, for If-Match"))),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such policy in this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A policy with this name exists", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The resource changed since the entity tag in If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn replace_policy(
    scope: TenantWriter,
    State(state): State<ApiState>,
    PathId(id): PathId<PolicyId>,
    if_match: IfMatch,
    ApiJson(body): ApiJson<PolicyInput>,
) -> Result<Response, Error> {
    let new = parse_policy(body)?;
    let policy = state
        .store
        .replace_policy(scope.tenant_id(), &id, &new, if_match.versions())
        .await
        .map_err(Error::store("policy"))?;
    Ok(tagged(policy.updated_at, PolicyView::from(policy)))
}

/// Delete a policy and every attachment of it.
#[utoipa::path(
    delete, path = "/v1/policies/{id}", tag = "policies",
    params(
        ("id" = String, Path, description = "Policy id", pattern = r"^pol_[0-9a-z]{20}$", example = "pol_0123456789abcdefghij"),
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
        ("If-Match" = Option<String>, Header, description = "Delete only if the resource still has this entity tag (its `ETag`); 412 otherwise", pattern = r#"^(\*|(W/)?"[!#-+--~]*"([ 	]*,[ 	]*(W/)?"[!#-+--~]*"){0,15})$"#),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such policy in this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The resource changed since the entity tag in If-Match", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_policy(
    scope: TenantWriter,
    State(state): State<ApiState>,
    PathId(id): PathId<PolicyId>,
    if_match: IfMatch,
) -> Result<StatusCode, Error> {
    state
        .store
        .delete_policy(scope.tenant_id(), &id, if_match.versions())
        .await
        .map_err(Error::store("policy"))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Attaches `policy` to `owner`, or to the tenant itself when `owner` is `None`.
async fn attach(
    state: &ApiState,
    scope: &TenantWriter,
    policy: &PolicyId,
    owner: Option<CredentialOwner>,
) -> Result<StatusCode, Error> {
    state
        .store
        .attach_policy(scope.tenant_id(), policy, target(owner.as_ref()))
        .await
        .map_err(Error::store("policy or target"))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Detaches `policy` from `owner`, or from the tenant itself when `owner` is `None`.
async fn detach(
    state: &ApiState,
    scope: &TenantWriter,
    policy: &PolicyId,
    owner: Option<CredentialOwner>,
) -> Result<StatusCode, Error> {
    state
        .store
        .detach_policy(scope.tenant_id(), policy, target(owner.as_ref()))
        .await
        .map_err(Error::store("policy attachment"))?;
    Ok(StatusCode::NO_CONTENT)
}

/// A page of the policies attached to `owner`, or to the tenant itself when it is `None`.
async fn attached(
    state: &ApiState,
    scope: &TenantScope,
    owner: Option<CredentialOwner>,
    params: &PageParams,
) -> Result<Json<PolicyList>, Error> {
    let what = owner.as_ref().map_or("tenant", CredentialOwner::what);
    let page = state
        .store
        .attached_policies(&scope.tenant_id, target(owner.as_ref()), &params.request()?)
        .await
        .map_err(Error::store(what))?;
    Ok(Json(page.into()))
}

fn target(owner: Option<&CredentialOwner>) -> PolicyTarget<'_> {
    owner.map_or(PolicyTarget::Tenant, CredentialOwner::policy_target)
}

/// List the policies attached to the tenant (they apply to every device and registry client).
#[utoipa::path(
    get, path = "/v1/tenant/policies", tag = "policies",
    params(PageParams, ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$")),
    responses(
        (status = 200, description = "A page of the attached policies, ordered by id", body = PolicyList),
        (status = 400, description = "Invalid page parameters", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_tenant_policies(
    scope: TenantScope,
    State(state): State<ApiState>,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<PolicyList>, Error> {
    attached(&state, &scope, None, &params).await
}

/// Attach a policy to the tenant; attaching twice is the same as once.
#[utoipa::path(
    put, path = "/v1/tenant/policies/{policy_id}", tag = "policies",
    params(
        ("policy_id" = String, Path, description = "Policy id", pattern = r"^pol_[0-9a-z]{20}$", example = "pol_0123456789abcdefghij"),
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
    ),
    responses(
        (status = 204, description = "Attached"),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such policy in this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The tenant holds 10 policies already", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn attach_tenant_policy(
    scope: TenantWriter,
    State(state): State<ApiState>,
    PathId(policy): PathId<PolicyId>,
) -> Result<StatusCode, Error> {
    attach(&state, &scope, &policy, None).await
}

/// Detach a policy from the tenant.
#[utoipa::path(
    delete, path = "/v1/tenant/policies/{policy_id}", tag = "policies",
    params(
        ("policy_id" = String, Path, description = "Policy id", pattern = r"^pol_[0-9a-z]{20}$", example = "pol_0123456789abcdefghij"),
        ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
    ),
    responses(
        (status = 204, description = "Detached"),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The policy is not attached to the tenant", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn detach_tenant_policy(
    scope: TenantWriter,
    State(state): State<ApiState>,
    PathId(policy): PathId<PolicyId>,
) -> Result<StatusCode, Error> {
    detach(&state, &scope, &policy, None).await
}

/// Declares the list, attach and detach handlers of one kind of target.
macro_rules! target_routes {
    ($id:ty, $what:literal, $base:literal, $pattern:literal, $example:literal,
     $list:ident, $attach:ident, $detach:ident) => {
        #[doc = concat!("List the policies attached to a ", $what, ".")]
        #[utoipa::path(
            get, path = concat!("/v1/", $base, "/{id}/policies"), tag = "policies",
            summary = concat!("List the policies attached to a ", $what),
            params(
                ("id" = String, Path, description = concat!("The ", $what, "'s id"), pattern = $pattern, example = $example),
                PageParams,
                ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
            ),
            responses(
                (status = 200, description = "A page of the attached policies, ordered by id", body = PolicyList),
                (status = 400, description = "Malformed id or invalid page parameters", body = Problem, content_type = "application/problem+json"),
                (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
                (status = 404, description = concat!("No such ", $what, " in this tenant"), body = Problem, content_type = "application/problem+json"),
            )
        )]
        pub async fn $list(
            scope: TenantScope,
            State(state): State<ApiState>,
            PathId(id): PathId<$id>,
            ApiQuery(params): ApiQuery<PageParams>,
        ) -> Result<Json<PolicyList>, Error> {
            attached(&state, &scope, Some(id.into()), &params).await
        }

        #[doc = concat!("Attach a policy to a ", $what, "; attaching twice is the same as once.")]
        #[utoipa::path(
            put, path = concat!("/v1/", $base, "/{id}/policies/{policy_id}"), tag = "policies",
            summary = concat!("Attach a policy to a ", $what),
            params(
                ("id" = String, Path, description = concat!("The ", $what, "'s id"), pattern = $pattern, example = $example),
                ("policy_id" = String, Path, description = "Policy id", pattern = r"^pol_[0-9a-z]{20}$", example = "pol_0123456789abcdefghij"),
                ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
            ),
            responses(
                (status = 204, description = "Attached"),
                (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
                (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
                (status = 403, description = "Read-only role", body = Problem, content_type = "application/problem+json"),
                (status = 404, description = concat!("No such policy or ", $what, " in this tenant"), body = Problem, content_type = "application/problem+json"),
                (status = 409, description = concat!("The ", $what, " holds 10 policies already"), body = Problem, content_type = "application/problem+json"),
            )
        )]
        pub async fn $attach(
            scope: TenantWriter,
            State(state): State<ApiState>,
            PathIds(id, policy): PathIds<$id, PolicyId>,
        ) -> Result<StatusCode, Error> {
            attach(&state, &scope, &policy, Some(id.into())).await
        }

        #[doc = concat!("Detach a policy from a ", $what, ".")]
        #[utoipa::path(
            delete, path = concat!("/v1/", $base, "/{id}/policies/{policy_id}"), tag = "policies",
            summary = concat!("Detach a policy from a ", $what),
            params(
                ("id" = String, Path, description = concat!("The ", $what, "'s id"), pattern = $pattern, example = $example),
                ("policy_id" = String, Path, description = "Policy id", pattern = r"^pol_[0-9a-z]{20}$", example = "pol_0123456789abcdefghij"),
                ("X-Iotcore-Tenant" = Option<String>, Header, description = "The tenant an operator acts in", pattern = r"^tnt_[0-9a-z]{20}$"),
            ),
            responses(
                (status = 204, description = "Detached"),
                (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
                (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
                (status = 403, description = "Read-only role", body = Problem, content_type = "application/problem+json"),
                (status = 404, description = concat!("The policy is not attached to this ", $what), body = Problem, content_type = "application/problem+json"),
            )
        )]
        pub async fn $detach(
            scope: TenantWriter,
            State(state): State<ApiState>,
            PathIds(id, policy): PathIds<$id, PolicyId>,
        ) -> Result<StatusCode, Error> {
            detach(&state, &scope, &policy, Some(id.into())).await
        }
    };
}

target_routes!(
    RegistryId,
    "registry",
    "registries",
    r"^reg_[0-9a-z]{20}$",
    "reg_0123456789abcdefghij",
    list_registry_policies,
    attach_registry_policy,
    detach_registry_policy
);
target_routes!(
    DeviceId,
    "device",
    "devices",
    r"^dev_[0-9a-z]{20}$",
    "dev_0123456789abcdefghij",
    list_device_policies,
    attach_device_policy,
    detach_device_policy
);
target_routes!(
    BrokerId,
    "virtual broker",
    "brokers",
    r"^brk_[0-9a-z]{20}$",
    "brk_0123456789abcdefghij",
    list_broker_policies,
    attach_broker_policy,
    detach_broker_policy
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_names_a_bounded_number_of_topics() {
        let statement = |n: usize| PolicyStatement {
            effect: PolicyEffect::Allow,
            actions: vec![PolicyAction::Publish],
            topics: (0..n).map(|i| format!("t/{i}")).collect(),
        };
        let input = |statements| PolicyInput {
            name: "p".into(),
            statements,
        };
        assert!(parse_policy(input(vec![statement(64); 4])).is_ok());
        match parse_policy(input(vec![statement(64); 5])) {
            Err(Error::Unprocessable(errors)) => assert_eq!(errors[0].field, "statements"),
            other => panic!("{other:?}"),
        }
        match parse_policy(input(vec![statement(65)])) {
            Err(Error::Unprocessable(errors)) => {
                assert_eq!(errors[0].field, "statements[0].topics")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn statement_topics_are_filters_with_known_variables() {
        for ok in [
            "fleet/${registry.id}/${device.id}/#",
            "$devices/${device.id}/events/+",
            "a/${device.labels.site}-x/+",
            "${tenant.id}/${client.id}/${cert.subject.cn}",
            "#",
        ] {
            assert_eq!(check_topic(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "a/#/b",
            "a+/b",
            "a/${device.name}",
            "a/${device.id",
            "${device.id}+/x",
            "$share/g/a",
            &"a".repeat(1025),
        ] {
            assert!(check_topic(bad).is_err(), "{bad}");
        }
    }
}
