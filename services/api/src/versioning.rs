//! Optimistic concurrency (SPEC §6.1): every single resource that can be changed is served
//! with an `ETag`, and its changes and deletion honour `If-Match`.
//!
//! The entity tag is a *strong* validator of the resource's stored state: it is derived
//! from the time the resource last changed (microseconds, in hex), which the store moves
//! forward on every change. A device's `connection` block is live status, not stored
//! state, so it can change without changing the tag. `If-Match` is optional; when given,
//! the change is made only if the resource still has one of the listed tags (compared
//! strongly, so weak tags never match), otherwise the answer is a 412 problem. `If-Match:
//! *` only asks that the resource exist.

use crate::error::Error;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;

/// Most entity tags read from one `If-Match`: more is not a real client.
const MAX_TAGS: usize = 16;

/// The entity tag of a resource last changed at `updated_at`: `"` hex microseconds `"`.
pub fn etag(updated_at: DateTime<Utc>) -> String {
    format!("\"{:x}\"", updated_at.timestamp_micros())
}

/// The version an entity tag of [`etag`] stands for; `None` for a weak tag or any other
/// text, which therefore matches no version.
fn version_of(tag: &str) -> Option<DateTime<Utc>> {
    let hex = tag.strip_prefix('"')?.strip_suffix('"')?;
    if hex.is_empty() || hex.len() > 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let micros = i64::from_str_radix(hex, 16).ok()?;
    DateTime::from_timestamp_micros(micros)
}

/// A JSON body with its `ETag`.
pub fn tagged<T: Serialize>(updated_at: DateTime<Utc>, body: T) -> Response {
    with_etag(Json(body).into_response(), updated_at)
}

/// `response` with the `ETag` of a resource last changed at `updated_at`.
pub fn with_etag(mut response: Response, updated_at: DateTime<Utc>) -> Response {
    if let Ok(value) = HeaderValue::from_str(&etag(updated_at)) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

/// The `If-Match` precondition of a request: `None` when absent or `*`, otherwise the
/// versions the resource may have for the change to go ahead.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IfMatch(pub Option<Vec<DateTime<Utc>>>);

impl IfMatch {
    /// The form the store takes.
    pub fn versions(&self) -> Option<&[DateTime<Utc>]> {
        self.0.as_deref()
    }

    fn parse<'a>(values: impl Iterator<Item = &'a HeaderValue>) -> Result<IfMatch, Error> {
        let invalid = || Error::BadRequest("If-Match is not a list of entity tags".into());
        let mut tags = Vec::new();
        let mut any = false;
        let mut seen = false;
        for value in values {
            seen = true;
            let text = value.to_str().map_err(|_| invalid())?;
            for tag in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if tag == "*" {
                    any = true;
                    continue;
                }
                let opaque = tag.strip_prefix("W/").unwrap_or(tag);
                if opaque.len() < 2 || !opaque.starts_with('"') || !opaque.ends_with('"') {
                    return Err(invalid());
                }
                if tags.len() == MAX_TAGS {
                    return Err(Error::BadRequest(format!(
                        "If-Match lists more than {MAX_TAGS} entity tags"
                    )));
                }
                // A weak tag stays in the count but can never match (strong comparison).
                tags.push(
                    tag.strip_prefix("W/")
                        .map_or_else(|| version_of(tag), |_| None),
                );
            }
        }
        if !seen || any {
            return Ok(IfMatch(None));
        }
        if tags.is_empty() {
            return Err(invalid());
        }
        Ok(IfMatch(Some(tags.into_iter().flatten().collect())))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<IfMatch, Error> {
        IfMatch::parse(parts.headers.get_all(header::IF_MATCH).iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(values: &[&str]) -> Result<IfMatch, Error> {
        let values: Vec<HeaderValue> = values
            .iter()
            .map(|v| HeaderValue::from_str(v).unwrap())
            .collect();
        IfMatch::parse(values.iter())
    }

    #[test]
    fn tags_round_trip_to_versions() {
        let at = DateTime::from_timestamp_micros(1_767_268_800_123_456).unwrap();
        let tag = etag(at);
        assert_eq!(parse(&[&tag]).unwrap(), IfMatch(Some(vec![at])));
        let other = etag(at + chrono::Duration::microseconds(1));
        assert_eq!(
            parse(&[&format!("{other}, {tag}")]).unwrap(),
            IfMatch(Some(vec![at + chrono::Duration::microseconds(1), at]))
        );
    }

    #[test]
    fn absent_or_star_is_no_condition_and_foreign_tags_match_nothing() {
        assert_eq!(parse(&[]).unwrap(), IfMatch(None));
        assert_eq!(parse(&["*"]).unwrap(), IfMatch(None));
        let at = DateTime::from_timestamp_micros(1_000_000).unwrap();
        // Weak tags never match under If-Match's strong comparison.
        assert_eq!(
            parse(&[&format!("W/{}", etag(at))]).unwrap(),
            IfMatch(Some(vec![]))
        );
        assert_eq!(parse(&["\"not-ours\""]).unwrap(), IfMatch(Some(vec![])));
        for bad in ["unquoted", "\"", ",", "W/"] {
            assert!(parse(&[bad]).is_err(), "{bad:?}");
        }
        let many = vec!["\"1\""; MAX_TAGS + 1].join(",");
        assert!(parse(&[&many]).is_err());
    }
}
