//! Bytes → tokens, each with the byte offset where it starts.

use crate::ConditionError;

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Token {
    Ident(String),
    Number(f64),
    Str(String),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Dot,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    End,
}

/// A token and the byte offset of its first character.
pub(crate) type Spanned = (Token, usize);

pub(crate) fn tokenize(source: &str) -> Result<Vec<Spanned>, ConditionError> {
    let bytes = source.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        let c = bytes[i];
        let single = match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'(' => Some(Token::LParen),
            b')' => Some(Token::RParen),
            b'[' => Some(Token::LBracket),
            b']' => Some(Token::RBracket),
            b',' => Some(Token::Comma),
            b'.' if !bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => Some(Token::Dot),
            b'+' => Some(Token::Plus),
            b'-' => Some(Token::Minus),
            b'*' => Some(Token::Star),
            b'/' => Some(Token::Slash),
            b'%' => Some(Token::Percent),
            _ => None,
        };
        if let Some(token) = single {
            tokens.push((token, start));
            i += 1;
            continue;
        }
        let next = bytes.get(i + 1).copied();
        let token = match (c, next) {
            (b'=', Some(b'=')) => {
                i += 2;
                Token::Eq
            }
            (b'!', Some(b'=')) => {
                i += 2;
                Token::Ne
            }
            (b'<', Some(b'=')) => {
                i += 2;
                Token::Le
            }
            (b'>', Some(b'=')) => {
                i += 2;
                Token::Ge
            }
            (b'<', _) => {
                i += 1;
                Token::Lt
            }
            (b'>', _) => {
                i += 1;
                Token::Gt
            }
            (b'"', _) => {
                let (text, end) = string(source, i)?;
                i = end;
                Token::Str(text)
            }
            (b'0'..=b'9' | b'.', _) => {
                while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
                    i += 1;
                }
                let text = &source[start..i];
                // Literals that overflow to infinity could not be printed back.
                match text.parse::<f64>() {
                    Ok(n) if n.is_finite() => Token::Number(n),
                    _ => return Err(ConditionError::at(source, start, "invalid number")),
                }
            }
            (b'a'..=b'z' | b'A'..=b'Z' | b'_', _) => {
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                Token::Ident(source[start..i].to_owned())
            }
            (b'=', _) => return Err(ConditionError::at(source, start, "use `==` to compare")),
            _ => return Err(ConditionError::at(source, start, "unexpected character")),
        };
        tokens.push((token, start));
    }
    tokens.push((Token::End, source.len()));
    Ok(tokens)
}

/// A double-quoted string starting at `start`; returns its text and the offset after it.
fn string(source: &str, start: usize) -> Result<(String, usize), ConditionError> {
    let mut text = String::new();
    let mut chars = source[start + 1..].char_indices();
    while let Some((offset, c)) = chars.next() {
        let at = start + 1 + offset;
        match c {
            '"' => return Ok((text, at + 1)),
            '\\' => match chars.next() {
                Some((_, '"')) => text.push('"'),
                Some((_, '\\')) => text.push('\\'),
                Some((_, 'n')) => text.push('\n'),
                Some((_, 't')) => text.push('\t'),
                Some((_, 'r')) => text.push('\r'),
                _ => return Err(ConditionError::at(source, at, "invalid escape in string")),
            },
            c if c.is_control() => {
                return Err(ConditionError::at(
                    source,
                    at,
                    "control character in string (use an escape)",
                ))
            }
            c => text.push(c),
        }
    }
    Err(ConditionError::at(source, start, "unterminated string"))
}
