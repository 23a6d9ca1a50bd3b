//! One router per resource; each module owns its request and response types.

pub mod brokers;
pub mod certificates;
pub mod devices;
pub mod docs;
pub mod health;
mod owner;
pub mod passwords;
pub mod policies;
pub mod publish;
pub mod quotas;
pub mod registries;
pub mod rules;
pub mod tenants;

use crate::error::Error;
use crate::error::FieldError;
use crate::input::MAX_NAME_CHARS;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use iotcore_store::filters::ListFilter;
use iotcore_store::tenants::{PageRequest, MAX_PAGE_SIZE};
use serde::{Deserialize, Serialize};
use utoipa::IntoParams;

/// Longest page token accepted: tokens are the base64 of an id, far shorter.
const MAX_PAGE_TOKEN_LEN: usize = 128;

/// Cursor pagination of every list.
#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Items per page, from 1 to 1000; 100 when absent.
    #[param(minimum = 1, maximum = 1000, example = 100)]
    pub page_size: Option<u32>,
    /// The `next_page_token` of the previous page; absent for the first page.
    #[param(
        max_length = 128,
        pattern = r"^[A-Za-z0-9_-]+$",
        example = "cmVnXzAxMjM0NTY3ODlhYmNkZWZnaGlq"
    )]
    pub page_token: Option<String>,
}

impl PageParams {
    pub fn request(&self) -> Result<PageRequest, Error> {
        if let Some(size) = self.page_size {
            if size == 0 || size > MAX_PAGE_SIZE {
                return Err(Error::BadRequest(
                    "page_size must be between 1 and 1000".into(),
                ));
            }
        }
        let after = match &self.page_token {
            None => None,
            Some(token) => Some(
                decode_page_token(token)
                    .ok_or_else(|| Error::BadRequest("invalid page_token".into()))?,
            ),
        };
        Ok(PageRequest {
            after,
            size: self.page_size,
        })
    }
}

/// Filters of lists of resources that have names and labels.
#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FilterParams {
    /// Keep resources whose name starts with this string (taken literally).
    #[param(max_length = 128, example = "sensor-")]
    pub name_prefix: Option<String>,
    /// Keep resources carrying this label, written `key:value`.
    #[param(
        pattern = r"^[A-Za-z0-9._-]{1,63}:[^\x00-\x1f\x7f-\x9f]{0,255}$",
        example = "site:north"
    )]
    pub label: Option<String>,
}

/// The filter of lists of resources that have names but no labels.
#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NamePrefixParam {
    /// Keep resources whose name starts with this string (taken literally).
    #[param(max_length = 128, example = "acme")]
    pub name_prefix: Option<String>,
}

impl FilterParams {
    /// The store filter, with `status` already checked by the caller.
    pub fn filter(&self, status: Option<&'static str>) -> Result<ListFilter, Error> {
        let mut errors = Vec::new();
        if let Some(prefix) = &self.name_prefix {
            if prefix.chars().count() > MAX_NAME_CHARS {
                errors.push(FieldError::new(
                    "name_prefix",
                    "must be at most 128 characters long",
                ));
            }
        }
        let label = match self.label.as_deref().map(parse_label) {
            None => None,
            Some(Ok(label)) => Some(label),
            Some(Err(error)) => {
                errors.push(error);
                None
            }
        };
        if !errors.is_empty() {
            return Err(Error::invalid(errors));
        }
        Ok(ListFilter {
            name_prefix: self.name_prefix.clone(),
            label,
            status,
        })
    }
}

/// `key:value`, where key and value obey the rules of labels on resources.
fn parse_label(s: &str) -> Result<(String, String), FieldError> {
    let error = || {
        FieldError::new(
            "label",
            "must be key:value with a valid label key and value",
        )
    };
    let (key, value) = s.split_once(':').ok_or_else(error)?;
    let one = std::collections::BTreeMap::from([(key.to_owned(), value.to_owned())]);
    crate::input::labels("label", Some(one)).map_err(|_| error())?;
    Ok((key.to_owned(), value.to_owned()))
}

fn decode_page_token(token: &str) -> Option<String> {
    if token.len() > MAX_PAGE_TOKEN_LEN {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    String::from_utf8(bytes).ok()
}

/// The opaque token that asks for the page after `next_after`.
pub fn next_page_token(next_after: Option<String>) -> Option<String> {
    next_after.map(|after| URL_SAFE_NO_PAD.encode(after))
}

/// A 201 with the new resource and its `Location`.
pub fn created<T: Serialize>(location: String, body: T) -> Response {
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// Declares a list response type `{"items": [...], "next_page_token": ...}`, made from a
/// page of the store with `into()`.
macro_rules! list_type {
    ($(#[$doc:meta])* $name:ident, $item:ty) => {
        #[derive(Clone, Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
        $(#[$doc])*
        pub struct $name {
            /// The items of this page, in the list's order.
            pub items: Vec<$item>,
            /// Pass as `page_token` to read the next page; `null` on the last page.
            pub next_page_token: Option<String>,
        }

        impl<T> From<iotcore_store::tenants::Page<T>> for $name
        where
            $item: From<T>,
        {
            fn from(page: iotcore_store::tenants::Page<T>) -> $name {
                $name {
                    items: page.items.into_iter().map(<$item>::from).collect(),
                    next_page_token: crate::routes::next_page_token(page.next_after),
                }
            }
        }
    };
}
pub(crate) use list_type;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_filters_are_key_value_pairs() {
        assert_eq!(
            parse_label("site:north:2").unwrap(),
            ("site".to_owned(), "north:2".to_owned())
        );
        assert_eq!(parse_label("site:").unwrap().1, "");
        for bad in ["site", ":north", "bad key:v"] {
            assert!(parse_label(bad).is_err(), "{bad:?}");
        }
        let long = FilterParams {
            name_prefix: Some("x".repeat(129)),
            label: None,
        };
        assert!(long.filter(None).is_err());
    }

    #[test]
    fn page_tokens_round_trip_and_bad_ones_are_refused() {
        let token = next_page_token(Some("reg_0123456789abcdefghij".into())).unwrap();
        let params = PageParams {
            page_size: Some(10),
            page_token: Some(token),
        };
        assert_eq!(
            params.request().unwrap().after.as_deref(),
            Some("reg_0123456789abcdefghij")
        );
        for bad in ["!!!", &"a".repeat(200)] {
            let params = PageParams {
                page_size: None,
                page_token: Some(bad.to_owned()),
            };
            assert!(params.request().is_err());
        }
        assert!(PageParams {
            page_size: Some(1001),
            page_token: None
        }
        .request()
        .is_err());
        assert!(PageParams {
            page_size: Some(0),
            page_token: None
        }
        .request()
        .is_err());
    }
}
