//! The syntax tree of a condition and its canonical, fully parenthesised printing.

use std::fmt;

/// A message attribute a condition can read.
#[derive(Clone, Debug, PartialEq)]
pub enum Field {
    Topic,
    Qos,
    DeviceId,
    RegistryId,
    /// `payload` followed by object keys and array indexes.
    Payload(Vec<PathStep>),
}

/// One step into a JSON payload.
#[derive(Clone, Debug, PartialEq)]
pub enum PathStep {
    Key(String),
    Index(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

/// The string functions; each takes two strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Function {
    StartsWith,
    EndsWith,
    Contains,
}

impl Function {
    pub(crate) fn named(name: &str) -> Option<Function> {
        match name {
            "startswith" => Some(Function::StartsWith),
            "endswith" => Some(Function::EndsWith),
            "contains" => Some(Function::Contains),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Function::StartsWith => "startswith",
            Function::EndsWith => "endswith",
            Function::Contains => "contains",
        }
    }
}

/// An expression. Evaluation visits each node at most once: there are no loops.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Null,
    Bool(bool),
    Number(f64),
    Str(String),
    Field(Field),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Compare(CompareOp, Box<Expr>, Box<Expr>),
    In(Box<Expr>, Vec<Expr>),
    Neg(Box<Expr>),
    Arith(ArithOp, Box<Expr>, Box<Expr>),
    Call(Function, Box<Expr>, Box<Expr>),
}

/// Whether `name` can be printed as a bare `payload.name` key.
pub(crate) fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn write_string(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\t' => f.write_str("\\t")?,
            '\r' => f.write_str("\\r")?,
            c => write!(f, "{c}")?,
        }
    }
    f.write_str("\"")
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Topic => f.write_str("topic"),
            Field::Qos => f.write_str("qos"),
            Field::DeviceId => f.write_str("device_id"),
            Field::RegistryId => f.write_str("registry_id"),
            Field::Payload(path) => {
                f.write_str("payload")?;
                for step in path {
                    match step {
                        PathStep::Key(key) if is_identifier(key) => write!(f, ".{key}")?,
                        PathStep::Key(key) => {
                            f.write_str("[")?;
                            write_string(f, key)?;
                            f.write_str("]")?;
                        }
                        PathStep::Index(i) => write!(f, "[{i}]")?,
                    }
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Null => f.write_str("null"),
            Expr::Bool(b) => write!(f, "{b}"),
            Expr::Number(n) => write!(f, "{n}"),
            Expr::Str(s) => write_string(f, s),
            Expr::Field(field) => write!(f, "{field}"),
            Expr::Not(e) => write!(f, "(not {e})"),
            Expr::And(a, b) => write!(f, "({a} and {b})"),
            Expr::Or(a, b) => write!(f, "({a} or {b})"),
            Expr::Compare(op, a, b) => {
                let op = match op {
                    CompareOp::Eq => "==",
                    CompareOp::Ne => "!=",
                    CompareOp::Lt => "<",
                    CompareOp::Le => "<=",
                    CompareOp::Gt => ">",
                    CompareOp::Ge => ">=",
                };
                write!(f, "({a} {op} {b})")
            }
            Expr::In(e, items) => {
                write!(f, "({e} in [")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("])")
            }
            Expr::Neg(e) => write!(f, "(-{e})"),
            Expr::Arith(op, a, b) => {
                let op = match op {
                    ArithOp::Add => "+",
                    ArithOp::Sub => "-",
                    ArithOp::Mul => "*",
                    ArithOp::Div => "/",
                    ArithOp::Rem => "%",
                };
                write!(f, "({a} {op} {b})")
            }
            Expr::Call(function, a, b) => write!(f, "{}({a}, {b})", function.name()),
        }
    }
}
