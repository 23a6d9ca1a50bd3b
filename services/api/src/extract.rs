//! Request extractors. Handlers take typed, checked input only: the caller's identity
//! (`Principal`), the tenant it acts in (`TenantScope`), ids parsed from the path, and
//! JSON bodies and queries whose rejections are problem+json like every other error.

use crate::auth::{Principal, Role};
use crate::error::{Error, FieldError};
use crate::ApiState;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use iotcore_store::{
    BrokerId, CaCertificateId, DeviceId, PasswordId, PolicyId, RegistryId, RuleId, TenantId,
};
use serde::de::DeserializeOwned;

/// The header an operator names the tenant it acts in with.
pub const TENANT_HEADER: &str = "x-iotcore-tenant";

impl FromRequestParts<ApiState> for Principal {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Principal, Error> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(Error::Unauthorized("missing bearer token"))?
            .to_str()
            .map_err(|_| Error::Unauthorized("invalid bearer token"))?;
        let token = match header.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err(Error::Unauthorized("missing bearer token")),
        };
        state
            .verifier
            .verify(token)
            .ok_or(Error::Unauthorized("invalid bearer token"))
    }
}

/// A principal with the operator role: the only one that manages tenants.
#[derive(Clone, Debug)]
pub struct Operator(pub Principal);

impl FromRequestParts<ApiState> for Operator {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Operator, Error> {
        let principal = Principal::from_request_parts(parts, state).await?;
        if principal.role != Role::Operator {
            return Err(Error::Forbidden("only operators manage tenants"));
        }
        Ok(Operator(principal))
    }
}

/// The tenant a request acts in, proven to exist: a tenant role's own tenant, or for an
/// operator the tenant named by the `X-Iotcore-Tenant` header. Every tenant route takes
/// one (or a [`TenantWriter`]) and hands its id to the store, so no handler can forget
/// the tenant filter.
#[derive(Clone, Debug)]
pub struct TenantScope {
    pub tenant_id: TenantId,
    pub principal: Principal,
}

impl TenantScope {
    async fn resolve(
        parts: &Parts,
        state: &ApiState,
        principal: Principal,
    ) -> Result<TenantScope, Error> {
        let named =
            match parts.headers.get(TENANT_HEADER) {
                Some(value) => Some(value.to_str().ok().and_then(TenantId::parse).ok_or_else(
                    || Error::BadRequest("X-Iotcore-Tenant is not a tenant id".into()),
                )?),
                None => None,
            };
        let tenant_id = match (&principal.tenant_id, named) {
            (Some(own), Some(named)) if *own != named => {
                return Err(Error::BadRequest(
                    "X-Iotcore-Tenant does not match the token's tenant".into(),
                ))
            }
            (Some(own), _) => own.clone(),
            (None, Some(named)) => named,
            (None, None) => {
                return Err(Error::BadRequest(
                    "operators act in a tenant by naming it in the X-Iotcore-Tenant header".into(),
                ))
            }
        };
        // A token can outlive its tenant, and an operator can name any id.
        state
            .store
            .get_tenant(&tenant_id)
            .await
            .map_err(Error::store("tenant"))?;
        tracing::Span::current().record("tenant_id", tracing::field::display(&tenant_id));
        Ok(TenantScope {
            tenant_id,
            principal,
        })
    }
}

impl FromRequestParts<ApiState> for TenantScope {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<TenantScope, Error> {
        let principal = Principal::from_request_parts(parts, state).await?;
        TenantScope::resolve(parts, state, principal).await
    }
}

/// A [`TenantScope`] whose principal may change the tenant's resources (not a viewer).
#[derive(Clone, Debug)]
pub struct TenantWriter(pub TenantScope);

impl TenantWriter {
    pub fn tenant_id(&self) -> &TenantId {
        &self.0.tenant_id
    }
}

impl FromRequestParts<ApiState> for TenantWriter {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<TenantWriter, Error> {
        let principal = Principal::from_request_parts(parts, state).await?;
        if !principal.role.can_write() {
            return Err(Error::Forbidden("the viewer role is read-only"));
        }
        TenantScope::resolve(parts, state, principal)
            .await
            .map(TenantWriter)
    }
}

/// An id type that can appear in a path.
pub trait PathIdentifier: Sized + Send {
    /// How the path parameter is called in messages.
    const NAME: &'static str;
    fn parse_id(s: &str) -> Option<Self>;
}

macro_rules! path_identifier {
    ($ty:ty, $name:literal) => {
        impl PathIdentifier for $ty {
            const NAME: &'static str = $name;
            fn parse_id(s: &str) -> Option<Self> {
                <$ty>::parse(s)
            }
        }
    };
}

path_identifier!(TenantId, "tenant id");
path_identifier!(RegistryId, "registry id");
path_identifier!(DeviceId, "device id");
path_identifier!(PasswordId, "password id");
path_identifier!(RuleId, "rule id");
path_identifier!(BrokerId, "broker id");
path_identifier!(PolicyId, "policy id");
path_identifier!(CaCertificateId, "CA certificate id");

fn parse_path_id<T: PathIdentifier>(s: &str) -> Result<T, Error> {
    T::parse_id(s).ok_or_else(|| Error::BadRequest(format!("{s:?} is not a {}", T::NAME)))
}

/// The one id of a path such as `/v1/devices/{id}`, parsed into its type (400 otherwise).
#[derive(Clone, Debug)]
pub struct PathId<T>(pub T);

impl<S: Send + Sync, T: PathIdentifier> FromRequestParts<S> for PathId<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<PathId<T>, Error> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| Error::BadRequest("invalid path parameter".into()))?;
        parse_path_id(&raw).map(PathId)
    }
}

/// The two ids of a path such as `/v1/devices/{id}/passwords/{password_id}`.
#[derive(Clone, Debug)]
pub struct PathIds<A, B>(pub A, pub B);

impl<S: Send + Sync, A: PathIdentifier, B: PathIdentifier> FromRequestParts<S> for PathIds<A, B> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<PathIds<A, B>, Error> {
        let Path((a, b)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|_| Error::BadRequest("invalid path parameters".into()))?;
        Ok(PathIds(parse_path_id(&a)?, parse_path_id(&b)?))
    }
}

/// A JSON body whose every rejection is a problem: 415 without a JSON content type, 413
/// over the body limit, 400 for malformed JSON, 422 naming the field for a wrong shape.
#[derive(Clone, Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<ApiJson<T>, Error> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> Error {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => Error::UnsupportedMediaType(
            "expected a request with Content-Type: application/json".into(),
        ),
        JsonRejection::JsonSyntaxError(err) => Error::BadRequest(format!(
            "the body is not valid JSON: {}",
            inner_message(&err)
        )),
        JsonRejection::JsonDataError(err) => {
            Error::invalid([data_error_field(&inner_message(&err))])
        }
        other if other.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
            Error::PayloadTooLarge
        }
        _ => Error::BadRequest("cannot read the request body".into()),
    }
}

/// The serde message under axum's generic rejection text.
fn inner_message(err: &dyn std::error::Error) -> String {
    err.source()
        .map(ToString::to_string)
        .unwrap_or_else(|| err.to_string())
}

/// Turns a serde error rendered as `path: message at line L column C` into a field error.
fn data_error_field(message: &str) -> FieldError {
    let message = match message.rfind(" at line ") {
        Some(i) => &message[..i],
        None => message,
    };
    let (path, message) = match message.split_once(": ") {
        Some((path, rest)) if !path.contains(' ') => (path, rest),
        _ => (".", message),
    };
    // A missing field is reported at its parent; its name is in the message.
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|m| m.split('`').next());
    let field = match (path, missing) {
        (".", Some(name)) => name.to_owned(),
        (".", None) => "body".to_owned(),
        (parent, Some(name)) => format!("{parent}.{name}"),
        (path, None) => path.to_owned(),
    };
    FieldError::new(field, message)
}

/// A query string whose rejection is a 400 problem.
#[derive(Clone, Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<ApiQuery<T>, Error> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| ApiQuery(value))
            .map_err(|rejection: QueryRejection| {
                Error::BadRequest(format!(
                    "invalid query string: {}",
                    inner_message(&rejection)
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_name_the_field() {
        assert_eq!(
            data_error_field(
                "webhook.url: invalid type: integer `1`, expected a string at line 1 column 20"
            ),
            FieldError::new(
                "webhook.url",
                "invalid type: integer `1`, expected a string"
            )
        );
        assert_eq!(
            data_error_field("missing field `name` at line 1 column 2"),
            FieldError::new("name", "missing field `name`")
        );
        assert_eq!(
            data_error_field("webhook: missing field `url` at line 1 column 40"),
            FieldError::new("webhook.url", "missing field `url`")
        );
    }
}
