//! The one error type of the API and its RFC 9457 problem+json rendering.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use iotcore_store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem details object: the body of every error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
#[schema(example = json!({
    "type": "urn:iotcore:problem:validation",
    "title": "Unprocessable Content",
    "status": 422,
    "detail": "the request has invalid fields",
    "errors": [{"field": "name", "message": "must not be empty"}]
}))]
pub struct Problem {
    /// A URI naming the kind of problem; stable, so clients can branch on it.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// The HTTP reason phrase of `status`.
    pub title: String,
    /// The HTTP status code of the response.
    pub status: u16,
    /// What went wrong with this request, for humans.
    pub detail: String,
    /// The invalid fields of the request, for validation problems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// One invalid field of a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
#[schema(example = json!({"field": "webhook.url", "message": "must be an absolute http or https URL"}))]
pub struct FieldError {
    /// The field, as a path into the request body (`webhook.url`).
    pub field: String,
    /// What is wrong with the field, for humans.
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Everything a request can fail with. Client errors carry a message that is safe to
/// show; `Internal` is logged in full and answered with a generic 500.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    /// A resource that does not exist or belongs to another tenant; names its kind.
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("no route matches this path")]
    NoRoute,
    #[error("this method is not allowed on this path")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    /// A tenant quota (SPEC §7.3) forbids the request.
    #[error("{0}")]
    QuotaExceeded(String),
    /// The resource changed since the version named in `If-Match`.
    #[error("the resource has changed since the version named in If-Match")]
    PreconditionFailed,
    #[error("the request body is larger than allowed")]
    PayloadTooLarge,
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("the request has invalid fields")]
    Unprocessable(Vec<FieldError>),
    #[error("{0}")]
    Unavailable(&'static str),
    #[error("internal error: {0}")]
    Internal(Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// A validation failure of the given fields.
    pub fn invalid(errors: impl IntoIterator<Item = FieldError>) -> Error {
        Error::Unprocessable(errors.into_iter().collect())
    }

    /// Maps a store error about a resource of kind `what` (`"registry"`).
    pub fn store(what: &'static str) -> impl Fn(StoreError) -> Error {
        move |err| match err {
            StoreError::NotFound => Error::NotFound(what),
            StoreError::Conflict { field: "name" } => {
                Error::Conflict(format!("a {what} with this name already exists"))
            }
            StoreError::Conflict {
                field: field @ ("max_devices" | "max_rules"),
            } => Error::QuotaExceeded(format!("the tenant has reached its {field} quota")),
            StoreError::Conflict { field: "policies" } => Error::Conflict(
                "the target holds the maximum number of attached policies (10); detach one first"
                    .into(),
            ),
            StoreError::Conflict { field: "passwords" } => Error::Conflict(format!(
                "the {what} holds the maximum number of passwords; delete one first"
            )),
            StoreError::Conflict { field } => {
                Error::Conflict(format!("{field} conflicts with an existing {what}"))
            }
            StoreError::PreconditionFailed => Error::PreconditionFailed,
            StoreError::Reference { field } => Error::invalid([FieldError::new(
                field,
                "does not refer to an existing resource of this tenant",
            )]),
            other => Error::Internal(Box::new(other)),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotFound(_) | Error::NoRoute => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Error::Conflict(_) | Error::QuotaExceeded(_) => StatusCode::CONFLICT,
            Error::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            Error::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            Error::BadRequest(_) => "bad-request",
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::NotFound(_) | Error::NoRoute => "not-found",
            Error::MethodNotAllowed => "method-not-allowed",
            Error::Conflict(_) => "conflict",
            Error::QuotaExceeded(_) => "quota-exceeded",
            Error::PreconditionFailed => "precondition-failed",
            Error::PayloadTooLarge => "payload-too-large",
            Error::UnsupportedMediaType(_) => "unsupported-media-type",
            Error::Unprocessable(_) => "validation",
            Error::Unavailable(_) => "unavailable",
            Error::Internal(_) => "internal",
        }
    }

    /// The problem body; never contains the text of an internal error.
    pub fn problem(&self) -> Problem {
        let status = self.status();
        let detail = match self {
            Error::Internal(_) => "an internal error occurred; it has been logged".to_owned(),
            other => other.to_string(),
        };
        let errors = match self {
            Error::Unprocessable(errors) => errors.clone(),
            _ => Vec::new(),
        };
        Problem {
            problem_type: format!("urn:iotcore:problem:{}", self.slug()),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail,
            errors,
        }
    }
}

impl From<StoreError> for Error {
    fn from(err: StoreError) -> Error {
        Error::store("resource")(err)
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if let Error::Internal(err) = &self {
            tracing::error!(error = %err, "request failed");
        }
        let problem = self.problem();
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (self.status(), body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if matches!(self, Error::Unauthorized(_)) {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_do_not_leak_their_text() {
        let err = Error::Internal("relation \"secret_table\" does not exist".into());
        let problem = err.problem();
        assert_eq!(problem.status, 500);
        assert!(!problem.detail.contains("secret_table"));
    }

    #[test]
    fn store_errors_map_to_client_problems() {
        assert_eq!(
            Error::store("rule")(StoreError::NotFound).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            Error::store("rule")(StoreError::Conflict { field: "name" }).status(),
            StatusCode::CONFLICT
        );
        let problem = Error::store("rule")(StoreError::Reference {
            field: "registry_id",
        })
        .problem();
        assert_eq!(problem.status, 422);
        assert_eq!(problem.errors[0].field, "registry_id");
    }
}
