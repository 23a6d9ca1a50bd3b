//! The OpenAPI 3.1 document of the control plane, generated from the handlers and types.

use crate::error::{FieldError, Problem};
use crate::routes::{
    brokers, certificates, devices, health, passwords, policies, publish, quotas, registries,
    rules, tenants,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "iotcore control plane",
        description = "Manage tenants, registries, devices, credentials and rules of iotcore.\n\n\
Every `/v1` request carries `Authorization: Bearer <JWT>`. Tenant roles (`admin`, `editor`, \
`viewer`) act in the tenant of their token; an `operator` manages tenants and acts in a tenant \
by naming it in the `X-Iotcore-Tenant` header. Errors are RFC 9457 problem details \
(`application/problem+json`). Lists are paginated with `page_size` and `page_token`."
    ),
    paths(
        tenants::create_tenant, tenants::list_tenants, tenants::get_tenant,
        tenants::update_tenant, tenants::delete_tenant,
        quotas::get_quotas, quotas::update_quotas,
        registries::create_registry, registries::list_registries, registries::get_registry,
        registries::update_registry, registries::delete_registry,
        devices::create_device, devices::list_devices, devices::get_device,
        devices::update_device, devices::delete_device,
        brokers::create_broker, brokers::list_brokers, brokers::get_broker,
        brokers::update_broker, brokers::delete_broker,
        passwords::create_password, passwords::list_passwords, passwords::delete_password,
        passwords::create_registry_password, passwords::list_registry_passwords,
        passwords::delete_registry_password,
        passwords::create_broker_password, passwords::list_broker_passwords,
        passwords::delete_broker_password,
        policies::create_policy, policies::list_policies, policies::get_policy,
        policies::replace_policy, policies::delete_policy,
        policies::list_tenant_policies, policies::attach_tenant_policy, policies::detach_tenant_policy,
        policies::list_registry_policies, policies::attach_registry_policy, policies::detach_registry_policy,
        policies::list_device_policies, policies::attach_device_policy, policies::detach_device_policy,
        policies::list_broker_policies, policies::attach_broker_policy, policies::detach_broker_policy,
        certificates::create_device_certificate, certificates::list_device_certificates,
        certificates::revoke_device_certificate,
        certificates::create_registry_certificate, certificates::list_registry_certificates,
        certificates::revoke_registry_certificate,
        certificates::create_broker_certificate, certificates::list_broker_certificates,
        certificates::revoke_broker_certificate,
        certificates::create_ca_certificate, certificates::list_ca_certificates,
        certificates::delete_ca_certificate,
        publish::command_device, publish::command_registry, publish::publish,
        rules::create_rule, rules::list_rules, rules::get_rule, rules::update_rule, rules::delete_rule,
        rules::get_rule_stats, rules::list_dead_letters, rules::replay_dead_letters,
        health::healthz, health::readyz, health::metrics, health::openapi_json,
    ),
    components(schemas(Problem, FieldError)),
    modifiers(&BearerAuth, &IdempotencyKey, &NoNullParameters),
    security(("bearer" = [])),
    tags(
        (name = "tenants", description = "Tenants (operators only)"),
        (name = "registries", description = "Registries: groups of devices"),
        (name = "devices", description = "Devices, with their connection status"),
        (name = "brokers", description = "Virtual brokers: isolated namespaces of free-form topics"),
        (name = "passwords", description = "Passwords of devices, registry clients and virtual brokers"),
        (name = "policies", description = "ACL policies and their attachment to the tenant, registries, devices and virtual brokers"),
        (name = "certificates", description = "X.509 client certificates of devices, registry clients and virtual brokers, and the CA certificates of registries"),
        (name = "publish", description = "Commands and messages published from the API"),
        (name = "rules", description = "Rules forwarding device messages to webhooks"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
    )
)]
struct ApiDoc;

/// Declares the bearer JWT scheme every `/v1` operation requires.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// Documents the `Idempotency-Key` header on every POST, where the idempotency layer
/// honours it.
struct IdempotencyKey;

impl Modify for IdempotencyKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::{ObjectBuilder, Required, Type};
        for item in openapi.paths.paths.values_mut() {
            let Some(operation) = item.post.as_mut() else {
                continue;
            };
            let header = ParameterBuilder::new()
                .name("Idempotency-Key")
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(
                    "Makes the request idempotent for 24 hours: a retry with the same key and \
                     body gets the first response again (with `Idempotency-Replayed: true`); the \
                     same key with another body is refused with 422. Use a fresh random value \
                     (a UUID) for each new request.",
                ))
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .min_length(Some(1))
                        .max_length(Some(crate::idempotency::MAX_KEY_LEN))
                        .pattern(Some("^[!-~]+$")),
                ))
                .build();
            operation
                .parameters
                .get_or_insert_with(Vec::new)
                .push(header);
        }
    }
}

/// Headers and query parameters cannot be `null`: absent is how they say "none". utoipa
/// documents an optional one as nullable, which invites clients (and fuzzers) to send the
/// text `null`; this takes `null` out of their types.
struct NoNullParameters;

impl Modify for NoNullParameters {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::{Schema, SchemaType, Type};
        use utoipa::openapi::RefOr;
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                for parameter in operation.parameters.iter_mut().flatten() {
                    let Some(RefOr::T(Schema::Object(schema))) = parameter.schema.as_mut() else {
                        continue;
                    };
                    if let SchemaType::Array(types) = &schema.schema_type {
                        let types: Vec<Type> = types
                            .iter()
                            .filter(|t| **t != Type::Null)
                            .cloned()
                            .collect();
                        schema.schema_type = match types.as_slice() {
                            [one] => SchemaType::Type(one.clone()),
                            _ => SchemaType::Array(types),
                        };
                    }
                }
            }
        }
    }
}

/// The OpenAPI document served at `/openapi.json` and committed as `openapi/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
