//! `/v1/tenants/{id}/quotas`: a tenant's limits (SPEC §7.3), the configured defaults with
//! the tenant's own overrides applied. Operators change them; members read their own.

use crate::auth::Principal;
use crate::config::QuotaConfig;
use crate::error::{Error, Problem};
use crate::extract::{ApiJson, Operator, PathId};
use crate::versioning::{tagged, IfMatch};
use crate::ApiState;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use iotcore_store::quotas::QuotaOverrides;
use iotcore_store::TenantId;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

pub fn router() -> Router<ApiState> {
    Router::new().route(
        "/v1/tenants/{id}/quotas",
        get(get_quotas).patch(update_quotas),
    )
}

/// The limits of a tenant in force now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "max_devices": 1000, "max_connections": 1000, "max_messages_per_second": 500,
    "max_bytes_per_second": 1048576, "max_retained_messages": 10000, "max_rules": 20,
    "overridden": ["max_devices"]
}))]
pub struct QuotasView {
    /// Devices the tenant may have.
    pub max_devices: u64,
    /// Simultaneous MQTT connections.
    pub max_connections: u64,
    /// Messages per second published by the tenant's clients.
    pub max_messages_per_second: u64,
    /// Bytes per second published by the tenant's clients.
    pub max_bytes_per_second: u64,
    /// Retained messages the tenant may keep.
    pub max_retained_messages: u64,
    /// Rules the tenant may have.
    pub max_rules: u64,
    /// Which limits are the tenant's own rather than the service's defaults.
    pub overridden: Vec<String>,
}

/// Changes to a tenant's limits: a number sets the tenant's own limit, `null` returns to
/// the service default, an absent field stays as it is.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[schema(example = json!({"max_devices": 5000, "max_rules": null}))]
pub struct UpdateQuotas {
    /// Devices the tenant may have; `null` for the default.
    #[serde(default, deserialize_with = "some")]
    #[schema(value_type = Option<u64>)]
    pub max_devices: Option<Option<u64>>,
    /// Simultaneous MQTT connections; `null` for the default.
    #[serde(default, deserialize_with = "some")]
    #[schema(value_type = Option<u64>)]
    pub max_connections: Option<Option<u64>>,
    /// Messages per second published by the tenant's clients; `null` for the default.
    #[serde(default, deserialize_with = "some")]
    #[schema(value_type = Option<u64>)]
    pub max_messages_per_second: Option<Option<u64>>,
    /// Bytes per second published by the tenant's clients; `null` for the default.
    #[serde(default, deserialize_with = "some")]
    #[schema(value_type = Option<u64>)]
    pub max_bytes_per_second: Option<Option<u64>>,
    /// Retained messages the tenant may keep; `null` for the default.
    #[serde(default, deserialize_with = "some")]
    #[schema(value_type = Option<u64>)]
    pub max_retained_messages: Option<Option<u64>>,
    /// Rules the tenant may have; `null` for the default.
    #[serde(default, deserialize_with = "some")]
    #[schema(value_type = Option<u64>)]
    pub max_rules: Option<Option<u64>>,
}

/// Tells a present `null` (`Some(None)`) from an absent field (`None`).
fn some<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    Option::<u64>::deserialize(d).map(Some)
}

/// The limits in force for a tenant with `overrides`.
pub fn effective(defaults: &QuotaConfig, overrides: &QuotaOverrides) -> QuotasView {
    let mut overridden = Vec::new();
    let mut pick = |name: &str, own: Option<u64>, default: u64| {
        if own.is_some() {
            overridden.push(name.to_owned());
        }
        own.unwrap_or(default)
    };
    QuotasView {
        max_devices: pick("max_devices", overrides.max_devices, defaults.max_devices),
        max_connections: pick(
            "max_connections",
            overrides.max_connections,
            defaults.max_connections,
        ),
        max_messages_per_second: pick(
            "max_messages_per_second",
            overrides.max_messages_per_second,
            defaults.max_messages_per_second,
        ),
        max_bytes_per_second: pick(
            "max_bytes_per_second",
            overrides.max_bytes_per_second,
            defaults.max_bytes_per_second,
        ),
        max_retained_messages: pick(
            "max_retained_messages",
            overrides.max_retained_messages,
            defaults.max_retained_messages,
        ),
        max_rules: pick("max_rules", overrides.max_rules, defaults.max_rules),
        overridden,
    }
}

impl ApiState {
    /// The limits in force for `tenant`.
    pub async fn quotas(&self, tenant: &TenantId) -> Result<QuotasView, Error> {
        let overrides = self
            .store
            .get_quota_overrides(tenant)
            .await
            .map_err(Error::store("tenant"))?;
        Ok(effective(&self.quotas, &overrides))
    }

    /// Refuses a new rule of `tenant` when it is at its `max_rules` quota. (Two rules
    /// created at once may both pass: the limit protects capacity, not an invariant.)
    pub async fn check_rule_quota(&self, tenant: &TenantId) -> Result<(), Error> {
        let max = self.quotas(tenant).await?.max_rules;
        let count = self
            .store
            .count_rules(tenant)
            .await
            .map_err(Error::store("rule"))?;
        if u64::try_from(count).unwrap_or(0) >= max {
            return Err(Error::store("rule")(iotcore_store::StoreError::Conflict {
                field: "max_rules",
            }));
        }
        Ok(())
    }
}

/// Get a tenant's quotas.
///
/// Operators read any tenant's; members read their own. The `ETag` is the tenant's version,
/// which moves when the quotas change (and when the tenant itself does).
#[utoipa::path(
    get, path = "/v1/tenants/{id}/quotas", tag = "tenants",
    params(("id" = String, Path, description = "Tenant id", pattern = r"^tnt_[0-9a-z]{20}$", example = "tnt_4f8k2m9q1z7x3c5v6b0n")),
    responses(
        (status = 200, description = "The limits in force", body = QuotasView, headers(("ETag" = String, description = "The entity tag of this version, for If-Match"))),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_quotas(
    principal: Principal,
    State(state): State<ApiState>,
    PathId(id): PathId<TenantId>,
) -> Result<Response, Error> {
    if principal.tenant_id.as_ref().is_some_and(|own| *own != id) {
        return Err(Error::NotFound("tenant"));
    }
    let quotas = state
        .store
        .get_versioned_quota_overrides(&id)
        .await
        .map_err(Error::store("tenant"))?;
    Ok(tagged(
        quotas.version,
        effective(&state.quotas, &quotas.overrides),
    ))
}

/// Change a tenant's quotas.
///
/// Operators only. A number sets the tenant's own limit, `null` returns to the default.
/// A change that changes nothing keeps the `ETag`.
#[utoipa::path(
    patch, path = "/v1/tenants/{id}/quotas", tag = "tenants",
    params(
        ("id" = String, Path, description = "Tenant id", pattern = r"^tnt_[0-9a-z]{20}$", example = "tnt_4f8k2m9q1z7x3c5v6b0n"),
        ("If-Match" = Option<String>, Header, description = "Change only if the quotas still have this entity tag (their `ETag`); 412 otherwise", pattern = r#"^(\*|(W/)?"[!#-+--~]*"([ 	]*,[ 	]*(W/)?"[!#-+--~]*"){0,15})$"#),
    ),
    request_body = UpdateQuotas,
    responses(
        (status = 200, description = "The limits now in force", body = QuotasView, headers(("ETag" = String, description = "The entity tag of this version, for If-Match"))),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The quotas changed since the entity tag in If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update_quotas(
    _operator: Operator,
    State(state): State<ApiState>,
    PathId(id): PathId<TenantId>,
    if_match: IfMatch,
    ApiJson(body): ApiJson<UpdateQuotas>,
) -> Result<Response, Error> {
    let change = |overrides: &mut QuotaOverrides| {
        let apply = |slot: &mut Option<u64>, change: Option<Option<u64>>| {
            if let Some(change) = change {
                *slot = change;
            }
        };
        apply(&mut overrides.max_devices, body.max_devices);
        apply(&mut overrides.max_connections, body.max_connections);
        apply(
            &mut overrides.max_messages_per_second,
            body.max_messages_per_second,
        );
        apply(
            &mut overrides.max_bytes_per_second,
            body.max_bytes_per_second,
        );
        apply(
            &mut overrides.max_retained_messages,
            body.max_retained_messages,
        );
        apply(&mut overrides.max_rules, body.max_rules);
    };
    let quotas = state
        .store
        .update_quota_overrides(&id, change, if_match.versions())
        .await
        .map_err(Error::store("tenant"))?;
    Ok(tagged(
        quotas.version,
        effective(&state.quotas, &quotas.overrides),
    ))
}
