//! Phone-number redaction for logs (config `logging.redact_numbers`).
//!
//! `mask` keeps a leading `+`, the first three digits and the last two
//! (`+1555****34`); `hash` replaces the number by the first 12 hex digits of its
//! SHA-256 (`#3f2a...`), so one number can be followed across log lines without being
//! shown. `off` logs numbers as they are.
//!
//! SIP Call-IDs follow the same switch ([`Redaction::call_id`]): with `mask` or `hash` a
//! Call-ID is logged as its `#`-prefixed hash (a Call-ID often holds a host name or
//! address, and masking part of it would not hide that), so one leg can still be found in
//! the logs from a packet capture by hashing its Call-ID the same way
//! (`printf %s CALL-ID | sha256sum | cut -c1-12`).

use std::fmt;

use sha2::{Digest, Sha256};

/// How numbers appear in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Redaction {
    #[default]
    Off,
    Mask,
    Hash,
}

impl Redaction {
    /// Parse the config value.
    pub fn parse(s: &str) -> Option<Redaction> {
        match s {
            "off" => Some(Redaction::Off),
            "mask" => Some(Redaction::Mask),
            "hash" => Some(Redaction::Hash),
            _ => None,
        }
    }

    /// A value that displays `number` redacted as configured.
    pub fn number<'a>(self, number: &'a str) -> Redacted<'a> {
        Redacted { mode: self, number }
    }

    /// A value that displays a SIP Call-ID as configured: as it is with `off`, hashed
    /// (`#` and 12 hex digits of its SHA-256) with `mask` or `hash`.
    pub fn call_id(self, call_id: &str) -> Redacted<'_> {
        let mode = match self {
            Redaction::Off => Redaction::Off,
            Redaction::Mask | Redaction::Hash => Redaction::Hash,
        };
        Redacted {
            mode,
            number: call_id,
        }
    }
}

/// A number as logs show it.
#[derive(Debug, Clone, Copy)]
pub struct Redacted<'a> {
    mode: Redaction,
    number: &'a str,
}

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.mode {
            Redaction::Off => f.write_str(self.number),
            Redaction::Hash => {
                let digest = Sha256::digest(self.number.as_bytes());
                write!(f, "#{}", &hex::encode(digest)[..12])
            }
            Redaction::Mask => {
                let (plus, digits) = match self.number.strip_prefix('+') {
                    Some(rest) => ("+", rest),
                    None => ("", self.number),
                };
                let chars: Vec<char> = digits.chars().collect();
                if chars.len() <= 5 {
                    return write!(f, "{plus}{}", "*".repeat(chars.len()));
                }
                let head: String = chars[..3].iter().collect();
                let tail: String = chars[chars.len() - 2..].iter().collect();
                write!(f, "{plus}{head}{}{tail}", "*".repeat(chars.len() - 5))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(
            Redaction::Mask.number("+15551234534").to_string(),
            "+155******34"
        );
        assert_eq!(Redaction::Mask.number("1234").to_string(), "****");
        assert_eq!(
            Redaction::Off.number("+15551234534").to_string(),
            "+15551234534"
        );
        let h = Redaction::Hash.number("+15551234534").to_string();
        assert_eq!(h.len(), 13);
        assert!(!h.contains("5551234"));
        assert_eq!(
            h,
            Redaction::Hash.number("+15551234534").to_string(),
            "stable"
        );
        assert_eq!(Redaction::parse("mask"), Some(Redaction::Mask));
        let cid = "a84b4c76e66710@pbx.acme.example";
        assert_eq!(Redaction::Off.call_id(cid).to_string(), cid);
        let hashed = Redaction::Mask.call_id(cid).to_string();
        assert_eq!(hashed, Redaction::Hash.call_id(cid).to_string());
        assert_eq!(hashed, Redaction::Hash.number(cid).to_string());
        assert!(hashed.starts_with('#') && hashed.len() == 13 && !hashed.contains("pbx"));
        assert_eq!(Redaction::parse("bogus"), None);
    }
}
