//! Per-client strings (client ids, usernames, passwords, topics, certificate files) from
//! templates: `{i}` is the client's index, `{id}` and `{secret}` the first and second field
//! of line `i` of an ids file (one `id secret` pair a line, as a benchmark script writes
//! them after creating devices through an API).

use anyhow::{bail, Context, Result};
use std::path::Path;

/// Credentials read from an ids file.
#[derive(Default)]
pub struct Ids {
    lines: Vec<(String, String)>,
}

impl Ids {
    /// At most this many lines are read: more clients than that is no benchmark of ours.
    const MAX_LINES: usize = 1_000_000;

    pub fn load(path: &Path) -> Result<Ids> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut lines = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if lines.len() == Self::MAX_LINES {
                bail!("{}: more than {} ids", path.display(), Self::MAX_LINES);
            }
            let mut fields = line.split_whitespace();
            let id = fields.next().unwrap_or_default().to_owned();
            let secret = fields.next().unwrap_or_default().to_owned();
            if fields.next().is_some() {
                bail!("{} line {}: expected `id secret`", path.display(), n + 1);
            }
            lines.push((id, secret));
        }
        Ok(Ids { lines })
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }
}

/// Expands `template` for client `i`. `{id}`/`{secret}` need an ids file with a line `i`.
pub fn expand(template: &str, i: usize, ids: &Ids) -> Result<String> {
    let mut out = template.replace("{i}", &i.to_string());
    if out.contains("{id}") || out.contains("{secret}") {
        let Some((id, secret)) = ids.lines.get(i) else {
            bail!(
                "`{template}` needs line {} of the ids file, which has {}",
                i + 1,
                ids.len()
            );
        };
        out = out.replace("{id}", id).replace("{secret}", secret);
    }
    Ok(out)
}

/// Expands an optional template; an empty one means "not set".
pub fn expand_opt(template: &Option<String>, i: usize, ids: &Ids) -> Result<Option<String>> {
    match template {
        Some(t) if !t.is_empty() => Ok(Some(expand(t, i, ids)?)),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_index_and_ids_file_fields() {
        let ids = Ids {
            lines: vec![
                ("dev_a".into(), "pw-a".into()),
                ("dev_b".into(), "pw-b".into()),
            ],
        };
        assert_eq!(expand("sub-{i}", 7, &ids).unwrap(), "sub-7");
        assert_eq!(
            expand("$devices/{id}/events/{i}", 1, &ids).unwrap(),
            "$devices/dev_b/events/1"
        );
        assert_eq!(expand("{secret}", 0, &ids).unwrap(), "pw-a");
        assert!(expand("{id}", 2, &ids).is_err());
        assert_eq!(expand_opt(&Some(String::new()), 0, &ids).unwrap(), None);
    }
}
