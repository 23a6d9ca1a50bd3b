//! Narrowing of lists (SPEC §6.1): `name_prefix`, one `label=key:value` and `status`,
//! combined with AND. Every list stays ordered by id, so a filter never breaks the cursor
//! of [`crate::tenants::PageRequest`].

use sqlx::types::Json;
use std::collections::BTreeMap;

/// What a list keeps; `None` fields keep everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Keep names that start with this string (compared as is, no wildcards).
    pub name_prefix: Option<String>,
    /// Keep resources carrying this label key with this value.
    pub label: Option<(String, String)>,
    /// Keep resources in this status; the caller has checked it names a status of the
    /// listed kind, so it is a static string.
    pub status: Option<&'static str>,
}

impl ListFilter {
    /// The label as a JSON object, for `labels @> $n`.
    pub(crate) fn label_json(&self) -> Option<Json<BTreeMap<String, String>>> {
        self.label
            .as_ref()
            .map(|(k, v)| Json(BTreeMap::from([(k.clone(), v.clone())])))
    }
}

/// The SQL condition of a filter whose name prefix, label and status are bound as the
/// parameters numbered `name`, `label` and `status` (the latter two only for kinds that
/// have labels or a status). `starts_with` rather than `LIKE` so that `%` and `_` in a
/// prefix mean themselves.
pub(crate) fn condition(name: usize, label: Option<usize>, status: Option<usize>) -> String {
    let mut sql = format!(" AND (${name}::text IS NULL OR starts_with(name, ${name}))");
    if let Some(n) = label {
        sql.push_str(&format!(" AND (${n}::jsonb IS NULL OR labels @> ${n})"));
    }
    if let Some(n) = status {
        sql.push_str(&format!(" AND (${n}::text IS NULL OR status = ${n})"));
    }
    sql
}
