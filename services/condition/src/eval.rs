//! Evaluation of a syntax tree over one message.

use crate::ast::{ArithOp, CompareOp, Expr, Field, Function, PathStep};
use serde_json::Value as Json;
use std::borrow::Cow;
use std::cell::OnceCell;

/// One message as conditions see it. Build one per message and evaluate every rule's
/// condition against it: the payload is parsed as JSON on first use only, and then shared.
pub struct MessageContext<'a> {
    topic: &'a str,
    qos: u8,
    device_id: Option<&'a str>,
    registry_id: Option<&'a str>,
    payload: &'a [u8],
    json: OnceCell<Option<Json>>,
}

impl<'a> MessageContext<'a> {
    pub fn new(
        topic: &'a str,
        qos: u8,
        device_id: Option<&'a str>,
        registry_id: Option<&'a str>,
        payload: &'a [u8],
    ) -> MessageContext<'a> {
        MessageContext {
            topic,
            qos,
            device_id,
            registry_id,
            payload,
            json: OnceCell::new(),
        }
    }

    /// Whether the payload has been parsed (tests check that it is parsed lazily).
    #[cfg(test)]
    pub(crate) fn payload_parsed(&self) -> bool {
        self.json.get().is_some()
    }

    /// The payload as JSON, or `None` when it is not JSON. serde_json bounds its own
    /// recursion, so a hostile payload cannot exhaust the stack.
    fn json(&self) -> Option<&Json> {
        self.json
            .get_or_init(|| serde_json::from_slice(self.payload).ok())
            .as_ref()
    }
}

/// A value during evaluation; JSON arrays and objects stay borrowed from the payload.
#[derive(Debug)]
enum Value<'a> {
    Null,
    Bool(bool),
    Number(f64),
    Str(Cow<'a, str>),
    Composite(&'a Json),
}

impl<'a> Value<'a> {
    fn from_json(json: &'a Json) -> Value<'a> {
        match json {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => n.as_f64().map(Value::Number).unwrap_or(Value::Null),
            Json::String(s) => Value::Str(Cow::Borrowed(s)),
            Json::Array(_) | Json::Object(_) => Value::Composite(json),
        }
    }

    fn number(n: f64) -> Value<'a> {
        if n.is_finite() {
            Value::Number(n)
        } else {
            Value::Null
        }
    }
}

pub(crate) fn is_true(expr: &Expr, message: &MessageContext<'_>) -> bool {
    matches!(eval(expr, message), Value::Bool(true))
}

fn eval<'a>(expr: &'a Expr, message: &'a MessageContext<'a>) -> Value<'a> {
    match expr {
        Expr::Null => Value::Null,
        Expr::Bool(b) => Value::Bool(*b),
        Expr::Number(n) => Value::Number(*n),
        Expr::Str(s) => Value::Str(Cow::Borrowed(s)),
        Expr::Field(field) => read(field, message),
        Expr::Not(e) => Value::Bool(!is_true(e, message)),
        Expr::And(a, b) => Value::Bool(is_true(a, message) && is_true(b, message)),
        Expr::Or(a, b) => Value::Bool(is_true(a, message) || is_true(b, message)),
        Expr::Compare(op, a, b) => {
            let (a, b) = (eval(a, message), eval(b, message));
            Value::Bool(compare(*op, &a, &b))
        }
        Expr::In(e, items) => {
            let value = eval(e, message);
            Value::Bool(items.iter().any(|item| equal(&value, &eval(item, message))))
        }
        Expr::Neg(e) => match eval(e, message) {
            Value::Number(n) => Value::number(-n),
            _ => Value::Null,
        },
        Expr::Arith(op, a, b) => match (eval(a, message), eval(b, message)) {
            (Value::Number(a), Value::Number(b)) => match op {
                ArithOp::Add => Value::number(a + b),
                ArithOp::Sub => Value::number(a - b),
                ArithOp::Mul => Value::number(a * b),
                ArithOp::Div if b != 0.0 => Value::number(a / b),
                ArithOp::Rem if b != 0.0 => Value::number(a % b),
                ArithOp::Div | ArithOp::Rem => Value::Null,
            },
            _ => Value::Null,
        },
        Expr::Call(function, a, b) => match (eval(a, message), eval(b, message)) {
            (Value::Str(a), Value::Str(b)) => Value::Bool(match function {
                Function::StartsWith => a.starts_with(b.as_ref()),
                Function::EndsWith => a.ends_with(b.as_ref()),
                Function::Contains => a.contains(b.as_ref()),
            }),
            _ => Value::Null,
        },
    }
}

fn read<'a>(field: &'a Field, message: &'a MessageContext<'a>) -> Value<'a> {
    let optional = |s: Option<&'a str>| s.map_or(Value::Null, |s| Value::Str(Cow::Borrowed(s)));
    match field {
        Field::Topic => Value::Str(Cow::Borrowed(message.topic)),
        Field::Qos => Value::Number(f64::from(message.qos)),
        Field::DeviceId => optional(message.device_id),
        Field::RegistryId => optional(message.registry_id),
        Field::Payload(path) => {
            let Some(mut json) = message.json() else {
                return Value::Null;
            };
            for step in path {
                let next = match step {
                    PathStep::Key(key) => json.get(key.as_str()),
                    PathStep::Index(i) => json.get(*i),
                };
                match next {
                    Some(next) => json = next,
                    None => return Value::Null,
                }
            }
            Value::from_json(json)
        }
    }
}

fn equal(a: &Value<'_>, b: &Value<'_>) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(a), Value::Bool(b)) => a == b,
        (Value::Number(a), Value::Number(b)) => a == b,
        (Value::Str(a), Value::Str(b)) => a == b,
        (Value::Composite(a), Value::Composite(b)) => a == b,
        _ => false,
    }
}

fn compare(op: CompareOp, a: &Value<'_>, b: &Value<'_>) -> bool {
    let ordering = match (a, b) {
        (Value::Number(a), Value::Number(b)) => a.partial_cmp(b),
        (Value::Str(a), Value::Str(b)) => Some(a.cmp(b)),
        _ => None,
    };
    match op {
        CompareOp::Eq => equal(a, b),
        CompareOp::Ne => !equal(a, b),
        CompareOp::Lt => ordering.is_some_and(|o| o.is_lt()),
        CompareOp::Le => ordering.is_some_and(|o| o.is_le()),
        CompareOp::Gt => ordering.is_some_and(|o| o.is_gt()),
        CompareOp::Ge => ordering.is_some_and(|o| o.is_ge()),
    }
}
