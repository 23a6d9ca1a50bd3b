//! Tokens → syntax tree, by recursive descent with a nesting bound.
//!
//! Precedence, loosest first: `or`, `and`, `not`, comparisons and `in` (not chainable),
//! `+ -`, `* / %`, unary `-`.

use crate::ast::{ArithOp, CompareOp, Expr, Field, Function, PathStep};
use crate::lexer::{Spanned, Token};
use crate::{ConditionError, MAX_DEPTH, MAX_LIST_ITEMS, MAX_PATH_STEPS};

/// How deep the parser may recurse: printing wraps every node in parentheses and `(not e)`
/// costs two levels, so twice the tree depth (plus the outermost call) is always enough
/// for a condition that prints from an accepted tree.
const MAX_NESTING: usize = 2 * MAX_DEPTH + 2;

pub(crate) struct Parser<'s> {
    source: &'s str,
    tokens: Vec<Spanned>,
    next: usize,
    nesting: usize,
}

type Parsed = Result<Expr, ConditionError>;

impl<'s> Parser<'s> {
    pub(crate) fn new(source: &'s str, tokens: Vec<Spanned>) -> Parser<'s> {
        Parser {
            source,
            tokens,
            next: 0,
            nesting: 0,
        }
    }

    pub(crate) fn parse(mut self) -> Parsed {
        let expr = self.expression()?;
        match self.peek() {
            Token::End => Ok(expr),
            _ => Err(self.error("expected an operator or the end of the condition")),
        }
    }

    fn peek(&self) -> &Token {
        self.tokens
            .get(self.next)
            .map(|(t, _)| t)
            .unwrap_or(&Token::End)
    }

    fn offset(&self) -> usize {
        self.tokens
            .get(self.next)
            .map(|(_, at)| *at)
            .unwrap_or(self.source.len())
    }

    fn advance(&mut self) -> Token {
        let token = self.peek().clone();
        if self.next < self.tokens.len() {
            self.next += 1;
        }
        token
    }

    fn error(&self, message: &str) -> ConditionError {
        ConditionError::at(self.source, self.offset(), message)
    }

    fn is_keyword(&self, keyword: &str) -> bool {
        matches!(self.peek(), Token::Ident(name) if name == keyword)
    }

    fn expect(&mut self, token: Token, what: &str) -> Result<(), ConditionError> {
        if *self.peek() == token {
            self.advance();
            Ok(())
        } else {
            Err(self.error(&format!("expected {what}")))
        }
    }

    /// Runs `inner` one nesting level deeper, refusing to go past the bound.
    fn nested(&mut self, inner: impl FnOnce(&mut Self) -> Parsed) -> Parsed {
        if self.nesting >= MAX_NESTING {
            return Err(self.error("the condition is nested too deeply"));
        }
        self.nesting += 1;
        let result = inner(self);
        self.nesting -= 1;
        result
    }

    fn expression(&mut self) -> Parsed {
        self.nested(Self::or)
    }

    fn or(&mut self) -> Parsed {
        let mut left = self.and()?;
        while self.is_keyword("or") {
            self.advance();
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Parsed {
        let mut left = self.not()?;
        while self.is_keyword("and") {
            self.advance();
            let right = self.not()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn not(&mut self) -> Parsed {
        if self.is_keyword("not") {
            self.advance();
            let inner = self.nested(Self::not)?;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Parsed {
        let left = self.sum()?;
        let op = match self.peek() {
            Token::Eq => CompareOp::Eq,
            Token::Ne => CompareOp::Ne,
            Token::Lt => CompareOp::Lt,
            Token::Le => CompareOp::Le,
            Token::Gt => CompareOp::Gt,
            Token::Ge => CompareOp::Ge,
            Token::Ident(name) if name == "in" => {
                self.advance();
                let items = self.list()?;
                return self.unchained(Expr::In(Box::new(left), items));
            }
            _ => return Ok(left),
        };
        self.advance();
        let right = self.sum()?;
        self.unchained(Expr::Compare(op, Box::new(left), Box::new(right)))
    }

    /// `a < b < c` reads as a range but would compare a boolean with `c`: refuse it.
    fn unchained(&self, expr: Expr) -> Parsed {
        match self.peek() {
            Token::Eq | Token::Ne | Token::Lt | Token::Le | Token::Gt | Token::Ge => {
                Err(self.error("comparisons cannot be chained; join them with `and`"))
            }
            Token::Ident(name) if name == "in" => {
                Err(self.error("comparisons cannot be chained; join them with `and`"))
            }
            _ => Ok(expr),
        }
    }

    fn list(&mut self) -> Result<Vec<Expr>, ConditionError> {
        self.expect(Token::LBracket, "`[` to start the list")?;
        let mut items = Vec::new();
        if *self.peek() == Token::RBracket {
            self.advance();
            return Ok(items);
        }
        loop {
            if items.len() >= MAX_LIST_ITEMS {
                return Err(self.error("the list has too many items"));
            }
            items.push(self.expression()?);
            match self.advance() {
                Token::Comma => continue,
                Token::RBracket => return Ok(items),
                _ => {
                    self.next = self.next.saturating_sub(1);
                    return Err(self.error("expected `,` or `]`"));
                }
            }
        }
    }

    fn sum(&mut self) -> Parsed {
        let mut left = self.product()?;
        loop {
            let op = match self.peek() {
                Token::Plus => ArithOp::Add,
                Token::Minus => ArithOp::Sub,
                _ => return Ok(left),
            };
            self.advance();
            let right = self.product()?;
            left = Expr::Arith(op, Box::new(left), Box::new(right));
        }
    }

    fn product(&mut self) -> Parsed {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek() {
                Token::Star => ArithOp::Mul,
                Token::Slash => ArithOp::Div,
                Token::Percent => ArithOp::Rem,
                _ => return Ok(left),
            };
            self.advance();
            let right = self.unary()?;
            left = Expr::Arith(op, Box::new(left), Box::new(right));
        }
    }

    fn unary(&mut self) -> Parsed {
        if *self.peek() == Token::Minus {
            self.advance();
            let inner = self.nested(Self::unary)?;
            return Ok(Expr::Neg(Box::new(inner)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Parsed {
        let at = self.offset();
        match self.advance() {
            Token::Number(n) => Ok(Expr::Number(n)),
            Token::Str(s) => Ok(Expr::Str(s)),
            Token::LParen => {
                let inner = self.expression()?;
                self.expect(Token::RParen, "`)`")?;
                Ok(inner)
            }
            Token::Ident(name) => match name.as_str() {
                "true" => Ok(Expr::Bool(true)),
                "false" => Ok(Expr::Bool(false)),
                "null" => Ok(Expr::Null),
                "topic" => Ok(Expr::Field(Field::Topic)),
                "qos" => Ok(Expr::Field(Field::Qos)),
                "device_id" => Ok(Expr::Field(Field::DeviceId)),
                "registry_id" => Ok(Expr::Field(Field::RegistryId)),
                "payload" => self.payload_path(),
                other => match Function::named(other) {
                    Some(function) => self.call(function),
                    None => Err(ConditionError::at(
                        self.source,
                        at,
                        &format!(
                            "unknown name `{other}` (expected topic, qos, device_id, \
                             registry_id, payload, a literal or a function)"
                        ),
                    )),
                },
            },
            _ => Err(ConditionError::at(self.source, at, "expected a value")),
        }
    }

    fn call(&mut self, function: Function) -> Parsed {
        self.expect(Token::LParen, "`(` after the function name")?;
        let first = self.expression()?;
        self.expect(Token::Comma, "`,` between the two arguments")?;
        let second = self.expression()?;
        self.expect(Token::RParen, "`)` after the two arguments")?;
        Ok(Expr::Call(function, Box::new(first), Box::new(second)))
    }

    fn payload_path(&mut self) -> Parsed {
        let mut path = Vec::new();
        loop {
            let step = match self.peek() {
                Token::Dot => {
                    self.advance();
                    match self.advance() {
                        Token::Ident(key) => PathStep::Key(key),
                        _ => {
                            self.next = self.next.saturating_sub(1);
                            return Err(self.error("expected a key after `.`"));
                        }
                    }
                }
                Token::LBracket => {
                    self.advance();
                    let at = self.offset();
                    let step = match self.advance() {
                        Token::Str(key) => PathStep::Key(key),
                        Token::Number(n) if n.fract() == 0.0 && n < f64::from(u32::MAX) => {
                            // Exact: integral and below 2^32.
                            PathStep::Index(n as usize)
                        }
                        _ => {
                            return Err(ConditionError::at(
                                self.source,
                                at,
                                "expected an array index or a quoted key",
                            ))
                        }
                    };
                    self.expect(Token::RBracket, "`]`")?;
                    step
                }
                _ => return Ok(Expr::Field(Field::Payload(path))),
            };
            if path.len() >= MAX_PATH_STEPS {
                return Err(self.error("the payload path is too long"));
            }
            path.push(step);
        }
    }
}
