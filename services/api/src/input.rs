//! Typed request fields ("parse, don't validate"): each `parse` checks untrusted input
//! once, at the edge, and returns either a value the rest of the code can trust or a
//! field error naming what is wrong.

use crate::error::FieldError;
use std::collections::BTreeMap;

/// Longest resource name, in characters.
pub const MAX_NAME_CHARS: usize = 128;
/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 1024;
/// Most labels on one resource.
pub const MAX_LABELS: usize = 64;
const MAX_LABEL_KEY_CHARS: usize = 63;
const MAX_LABEL_VALUE_CHARS: usize = 255;

/// The name of a registry, device, rule or tenant: 1 to 128 characters, no control
/// characters, no surrounding whitespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceName(String);

impl ResourceName {
    pub fn parse(field: &str, s: String) -> Result<ResourceName, FieldError> {
        let message = if s.is_empty() {
            "must not be empty"
        } else if s.chars().count() > MAX_NAME_CHARS {
            "must be at most 128 characters long"
        } else if s.chars().any(char::is_control) {
            "must not contain control characters"
        } else if s.trim() != s {
            "must not start or end with whitespace"
        } else {
            return Ok(ResourceName(s));
        };
        Err(FieldError::new(field, message))
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// A free-text description of at most 1024 characters.
pub fn description(field: &str, s: Option<String>) -> Result<String, FieldError> {
    let s = s.unwrap_or_default();
    if s.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(FieldError::new(
            field,
            "must be at most 1024 characters long",
        ));
    }
    Ok(s)
}

/// Labels: at most 64, keys of 1 to 63 ASCII letters, digits, `-`, `_` or `.`, values of
/// at most 255 characters without control characters.
pub fn labels(
    field: &str,
    labels: Option<BTreeMap<String, String>>,
) -> Result<BTreeMap<String, String>, FieldError> {
    let labels = labels.unwrap_or_default();
    if labels.len() > MAX_LABELS {
        return Err(FieldError::new(field, "at most 64 labels are allowed"));
    }
    for (key, value) in &labels {
        let key_ok = !key.is_empty()
            && key.len() <= MAX_LABEL_KEY_CHARS
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !key_ok {
            return Err(FieldError::new(
                format!("{field}.{key}"),
                "label keys are 1 to 63 ASCII letters, digits, '-', '_' or '.'",
            ));
        }
        if value.chars().count() > MAX_LABEL_VALUE_CHARS || value.chars().any(char::is_control) {
            return Err(FieldError::new(
                format!("{field}.{key}"),
                "label values are at most 255 characters without control characters",
            ));
        }
    }
    Ok(labels)
}

/// Collects the outcome of several field parsers, so that one response names every
/// invalid field rather than only the first.
#[derive(Debug, Default)]
pub struct Fields {
    errors: Vec<FieldError>,
}

impl Fields {
    /// The parsed value, or `None` after recording its error.
    pub fn take<T>(&mut self, result: Result<T, FieldError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.errors.push(error);
                None
            }
        }
    }

    pub fn push(&mut self, error: FieldError) {
        self.errors.push(error);
    }

    /// The 422 naming every invalid field seen so far.
    pub fn into_error(self) -> crate::Error {
        crate::Error::Unprocessable(self.errors)
    }

    /// `Ok` when no field was invalid.
    pub fn finish(self) -> Result<(), crate::Error> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(crate::Error::Unprocessable(self.errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_bounded_and_printable() {
        assert!(ResourceName::parse("name", "sensors-1".into()).is_ok());
        assert!(ResourceName::parse("name", "Датчики 1".into()).is_ok());
        for bad in ["", " padded", "tab\there", &"x".repeat(129)] {
            assert!(
                ResourceName::parse("name", bad.to_owned()).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn labels_are_bounded() {
        let ok = BTreeMap::from([("site".to_owned(), "north".to_owned())]);
        assert_eq!(labels("labels", Some(ok.clone())).unwrap(), ok);
        let bad_key = BTreeMap::from([("has space".to_owned(), "v".to_owned())]);
        assert_eq!(
            labels("labels", Some(bad_key)).unwrap_err().field,
            "labels.has space"
        );
        let many: BTreeMap<_, _> = (0..65).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(labels("labels", Some(many)).is_err());
    }

    #[test]
    fn fields_report_every_error() {
        let mut fields = Fields::default();
        assert_eq!(
            fields.take(ResourceName::parse("name", String::new())),
            None
        );
        assert_eq!(
            fields.take(description("description", Some("x".repeat(2000)))),
            None
        );
        match fields.finish() {
            Err(crate::Error::Unprocessable(errors)) => assert_eq!(errors.len(), 2),
            other => panic!("{other:?}"),
        }
    }
}
