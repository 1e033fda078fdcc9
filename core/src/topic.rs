//! Topic and pattern validation and matching.
//!
//! A **topic** is a dot-separated list of tokens, `orders.created`. Every token is non-empty and
//! made of ASCII letters, digits, `_` and `-`, so the same topic is legal on every backend
//! (NATS subjects, Redis keys, Kafka topic names). A topic is at most [`MAX_TOPIC_LEN`] bytes.
//!
//! A **pattern** is a topic whose tokens may also be `*` (exactly one token) or, as the last
//! token only, `>` (one or more tokens), as in NATS.

use crate::error::{Error, ErrorKind, Result};

/// The longest topic accepted, in bytes (Kafka's limit on topic names).
pub const MAX_TOPIC_LEN: usize = 249;

fn check_token(kind: ErrorKind, what: &str, full: &str, tok: &str, pos: usize) -> Result<()> {
    if tok.is_empty() {
        return Err(Error::new(
            kind,
            format!("{what} {full:?}: empty token at position {pos} (tokens are separated by single dots)"),
        ));
    }
    if let Some(c) = tok
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(Error::new(
            kind,
            format!(
                "{what} {full:?}: character {c:?} in token {pos} is not allowed \
                 (use ASCII letters, digits, '_' and '-')"
            ),
        ));
    }
    Ok(())
}

fn check_len(kind: ErrorKind, what: &str, s: &str) -> Result<()> {
    if s.is_empty() {
        return Err(Error::new(kind, format!("{what} is empty")));
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(Error::new(
            kind,
            format!(
                "{what} is {} bytes long; the limit is {MAX_TOPIC_LEN}",
                s.len()
            ),
        ));
    }
    Ok(())
}

/// Checks that `topic` is a valid topic.
///
/// # Errors
/// [`ErrorKind::InvalidTopic`] naming the offending part.
///
/// # Examples
/// ```
/// assert!(polybus::validate_topic("orders.created").is_ok());
/// assert!(polybus::validate_topic("orders.*").is_err());
/// ```
pub fn validate_topic(topic: &str) -> Result<()> {
    if is_valid_topic(topic.as_bytes()) {
        return Ok(());
    }
    // Slow path: find what is wrong and say so.
    let kind = ErrorKind::InvalidTopic;
    check_len(kind, "topic", topic)?;
    for (i, tok) in topic.split('.').enumerate() {
        if tok == "*" || tok == ">" {
            return Err(Error::new(
                kind,
                format!(
                    "topic {topic:?}: wildcard {tok:?} is only allowed in subscription patterns"
                ),
            ));
        }
        check_token(kind, "topic", topic, tok, i + 1)?;
    }
    Ok(())
}

/// One pass over the bytes: tokens of `[A-Za-z0-9_-]` separated by single dots.
fn is_valid_topic(b: &[u8]) -> bool {
    if b.is_empty() || b.len() > MAX_TOPIC_LEN {
        return false;
    }
    let mut token_len = 0usize;
    for &c in b {
        if c == b'.' {
            if token_len == 0 {
                return false;
            }
            token_len = 0;
        } else if c.is_ascii_alphanumeric() || c == b'_' || c == b'-' {
            token_len += 1;
        } else {
            return false;
        }
    }
    token_len > 0
}

/// A parsed subscription pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    text: String,
    tokens: Vec<PatternToken>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PatternToken {
    Literal(String),
    One,
    Rest,
}

impl Pattern {
    /// Parses and validates `pattern`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidPattern`] naming the offending part.
    ///
    /// # Examples
    /// ```
    /// let p = polybus::Pattern::parse("orders.*.eu").unwrap();
    /// assert!(p.matches("orders.created.eu"));
    /// assert!(!p.matches("orders.created.us"));
    /// let all = polybus::Pattern::parse("orders.>").unwrap();
    /// assert!(all.matches("orders.created.eu") && !all.matches("orders"));
    /// ```
    pub fn parse(pattern: &str) -> Result<Pattern> {
        let kind = ErrorKind::InvalidPattern;
        check_len(kind, "pattern", pattern)?;
        let parts: Vec<&str> = pattern.split('.').collect();
        let mut tokens = Vec::with_capacity(parts.len());
        for (i, tok) in parts.iter().enumerate() {
            match *tok {
                "*" => tokens.push(PatternToken::One),
                ">" if i + 1 == parts.len() => tokens.push(PatternToken::Rest),
                ">" => {
                    return Err(Error::new(
                        kind,
                        format!("pattern {pattern:?}: '>' is only allowed as the last token"),
                    ))
                }
                _ => {
                    check_token(kind, "pattern", pattern, tok, i + 1)?;
                    tokens.push(PatternToken::Literal((*tok).to_owned()));
                }
            }
        }
        Ok(Pattern {
            text: pattern.to_owned(),
            tokens,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pattern has `*` or `>` tokens.
    pub fn is_wildcard(&self) -> bool {
        self.tokens
            .iter()
            .any(|t| !matches!(t, PatternToken::Literal(_)))
    }

    /// Whether `topic` (assumed valid) matches this pattern.
    pub fn matches(&self, topic: &str) -> bool {
        let mut parts = topic.split('.');
        for tok in &self.tokens {
            match tok {
                PatternToken::Rest => return parts.next().is_some(),
                PatternToken::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                PatternToken::Literal(l) => {
                    if parts.next() != Some(l.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        for ok in [
            "a",
            "orders.created",
            "a-b_c.D9",
            &"x".repeat(MAX_TOPIC_LEN),
        ] {
            validate_topic(ok).unwrap();
        }
        for bad in [
            "",
            ".",
            "a.",
            ".a",
            "a..b",
            "a b",
            "a.*",
            "a.>",
            "ü",
            &"x".repeat(250),
        ] {
            let e = validate_topic(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidTopic, "{bad}");
        }
        let e = validate_topic("a..b").unwrap_err();
        assert!(e.to_string().contains("empty token at position 2"), "{e}");
    }

    #[test]
    fn patterns() {
        let m = |p: &str, t: &str| Pattern::parse(p).unwrap().matches(t);
        assert!(m("a.b", "a.b"));
        assert!(!m("a.b", "a.b.c"));
        assert!(!m("a.b.c", "a.b"));
        assert!(m("a.*", "a.b"));
        assert!(!m("a.*", "a.b.c"));
        assert!(!m("a.*", "a"));
        assert!(m("*.b", "x.b"));
        assert!(m("a.>", "a.b"));
        assert!(m("a.>", "a.b.c.d"));
        assert!(!m("a.>", "a"));
        assert!(m(">", "a"));
        assert!(m("*.*.>", "a.b.c"));
        assert!(!m("*.*.>", "a.b"));
        for bad in ["", "a.>.b", "a..b", "a.b*", "a b", ">.a"] {
            assert_eq!(
                Pattern::parse(bad).unwrap_err().kind(),
                ErrorKind::InvalidPattern,
                "{bad}"
            );
        }
        assert!(Pattern::parse("a.*").unwrap().is_wildcard());
        assert!(!Pattern::parse("a.b").unwrap().is_wildcard());
    }
}
