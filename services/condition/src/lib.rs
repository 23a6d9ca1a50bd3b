//! Rule conditions (SPEC §5): a small, safe expression language over a message.
//!
//! ```text
//! payload.celsius > 30 and startswith(topic, "$devices/") and qos in [1, 2]
//! ```
//!
//! - Values: `topic`, `qos`, `device_id`, `registry_id` (null for messages without one),
//!   `payload.key`, `payload["any key"]`, `payload.items[0]` (null when the payload is not
//!   JSON or has nothing there); literals `"text"` (escapes `\" \\ \n \t \r`), `12.5`,
//!   `true`, `false`, `null`.
//! - Operators, loosest first: `or`; `and`; `not`; `== != < <= > >=` and `x in [a, b]`
//!   (not chainable); `+ -`; `* / %`; unary `-`. Parentheses group.
//! - String functions: `startswith(s, prefix)`, `endswith(s, suffix)`, `contains(s, part)`.
//!
//! Semantics never fail at run time: a comparison of values of different types is false
//! (`!=` is its negation), arithmetic on anything but numbers (or dividing by zero) gives
//! null, and `and`/`or`/`not` treat everything but `true` as false. A message matches when
//! the whole condition is `true`.
//!
//! Conditions are bounded: at most [`MAX_LENGTH`] bytes and [`MAX_DEPTH`] levels of
//! nesting; there are no loops, so evaluation is linear in the size of the condition. The
//! payload is parsed as JSON at most once per message, and only if a condition reads it.

mod ast;
mod eval;
mod lexer;
mod parser;

pub use ast::{ArithOp, CompareOp, Expr, Field, Function, PathStep};
pub use eval::MessageContext;

use std::fmt;

/// Longest condition accepted, in bytes.
pub const MAX_LENGTH: usize = 4096;
/// Deepest syntax tree accepted.
pub const MAX_DEPTH: usize = 32;
/// Most items in an `in [...]` list.
pub const MAX_LIST_ITEMS: usize = 256;
/// Most steps in a payload path.
pub const MAX_PATH_STEPS: usize = 32;

/// Why a condition does not parse, and where: `position` counts characters (not bytes)
/// from 0 at the start of the condition.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("at position {position}: {message}")]
pub struct ConditionError {
    pub position: usize,
    pub message: String,
}

impl ConditionError {
    pub(crate) fn at(source: &str, byte_offset: usize, message: &str) -> ConditionError {
        let prefix = source.get(..byte_offset).unwrap_or(source);
        ConditionError {
            position: prefix.chars().count(),
            message: message.to_owned(),
        }
    }
}

/// A condition that parsed: valid by construction, cheap to evaluate many times.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    expr: Expr,
}

impl Condition {
    /// Parses and checks `source`; the error names the position of the first problem.
    pub fn parse(source: &str) -> Result<Condition, ConditionError> {
        if source.len() > MAX_LENGTH {
            return Err(ConditionError {
                position: 0,
                message: format!("the condition is longer than {MAX_LENGTH} bytes"),
            });
        }
        if source.trim().is_empty() {
            return Err(ConditionError {
                position: 0,
                message: "the condition is empty".to_owned(),
            });
        }
        let tokens = lexer::tokenize(source)?;
        let expr = parser::Parser::new(source, tokens).parse()?;
        if deeper_than(&expr, MAX_DEPTH) {
            return Err(ConditionError {
                position: 0,
                message: format!("the condition is nested more than {MAX_DEPTH} levels deep"),
            });
        }
        Ok(Condition { expr })
    }

    /// The syntax tree.
    pub fn expr(&self) -> &Expr {
        &self.expr
    }

    /// Whether `message` satisfies the condition.
    pub fn matches(&self, message: &MessageContext<'_>) -> bool {
        eval::is_true(&self.expr, message)
    }
}

/// Prints the condition in a canonical, fully parenthesised form that parses back to the
/// same condition.
impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.expr)
    }
}

/// Whether the tree is more than `limit` nodes deep. Stops descending at the limit, so
/// the check itself never recurses deeper than that (left-nested `a and b and …` chains
/// are built without recursion and can be much deeper).
fn deeper_than(expr: &Expr, limit: usize) -> bool {
    if limit == 0 {
        return true;
    }
    let below = limit - 1;
    match expr {
        Expr::Null | Expr::Bool(_) | Expr::Number(_) | Expr::Str(_) | Expr::Field(_) => false,
        Expr::Not(e) | Expr::Neg(e) => deeper_than(e, below),
        Expr::And(a, b)
        | Expr::Or(a, b)
        | Expr::Compare(_, a, b)
        | Expr::Arith(_, a, b)
        | Expr::Call(_, a, b) => deeper_than(a, below) || deeper_than(b, below),
        Expr::In(e, items) => deeper_than(e, below) || items.iter().any(|i| deeper_than(i, below)),
    }
}

#[cfg(test)]
mod tests;
