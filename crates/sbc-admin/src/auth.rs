//! Bearer-token authentication.
//!
//! Owns: turning an `Authorization: Bearer <token>` header into the [`TokenEntry`] it
//! belongs to. Tokens are kept only as SHA-256 hashes; the hash of the presented token is
//! compared with every configured hash in constant time (no early exit), so timing tells
//! neither which token nor how much of one matched.
//!
//! Must not: log, store or echo the presented token.

use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::config::TokenEntry;

/// Longest `Authorization` header value looked at; longer ones are refused unhashed.
/// Generated tokens are 32 to 64 characters; 1 KiB leaves room for any sane scheme.
pub const MAX_AUTHORIZATION_LEN: usize = 1024;

/// Why a request carries no valid token (each is a 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization` header.
    Missing,
    /// Not `Bearer <token>`, or too long.
    Malformed,
    /// A bearer token that matches no configured token.
    Unknown,
}

impl AuthFailure {
    /// A stable name for metrics and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing_token",
            AuthFailure::Malformed => "malformed_authorization",
            AuthFailure::Unknown => "unknown_token",
        }
    }
}

/// The token in an `Authorization` header value (`Bearer` is case-insensitive).
fn bearer(value: &[u8]) -> Result<&[u8], AuthFailure> {
    if value.len() > MAX_AUTHORIZATION_LEN {
        return Err(AuthFailure::Malformed);
    }
    let scheme = b"bearer ";
    if value.len() <= scheme.len() || !value[..scheme.len()].eq_ignore_ascii_case(scheme) {
        return Err(AuthFailure::Malformed);
    }
    let token = value[scheme.len()..].trim_ascii();
    if token.is_empty() || token.iter().any(|b| !b.is_ascii_graphic()) {
        return Err(AuthFailure::Malformed);
    }
    Ok(token)
}

/// The configured token an `Authorization` header value (`None`: no header) stands for.
pub fn authenticate<'a>(
    tokens: &'a [TokenEntry],
    authorization: Option<&[u8]>,
) -> Result<&'a TokenEntry, AuthFailure> {
    let value = authorization.ok_or(AuthFailure::Missing)?;
    let token = bearer(value)?;
    let presented: [u8; 32] = Sha256::digest(token).into();
    // Visit every entry; remember the matching index without branching on the comparison.
    let mut found = subtle::Choice::from(0u8);
    let mut index = 0u64;
    for (i, entry) in tokens.iter().enumerate() {
        let hit = entry.sha256.ct_eq(&presented);
        index = u64::conditional_select(&index, &(i as u64), hit);
        found |= hit;
    }
    if bool::from(found) {
        // `index` came from `enumerate`, so it is in range.
        usize::try_from(index)
            .ok()
            .and_then(|i| tokens.get(i))
            .ok_or(AuthFailure::Unknown)
    } else {
        Err(AuthFailure::Unknown)
    }
}

/// The hex SHA-256 of a token: what goes into `admin.tokens[].sha256`.
pub fn token_sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;
    use sbc_core::tenant::TenantId;

    fn entry(id: &str, token: &str, role: Role) -> TokenEntry {
        TokenEntry {
            id: id.to_string(),
            sha256: Sha256::digest(token.as_bytes()).into(),
            role,
        }
    }

    #[test]
    fn finds_the_right_token() {
        let tokens = vec![
            entry("ops", "op-secret", Role::Operator),
            entry("v", "view-secret", Role::Viewer(TenantId::from("a"))),
        ];
        let id = |h: Option<&[u8]>| authenticate(&tokens, h).map(|t| t.id.as_str());
        assert_eq!(id(Some(b"Bearer op-secret")), Ok("ops"));
        assert_eq!(id(Some(b"bearer  view-secret ")), Ok("v"));
        assert_eq!(id(Some(b"BEARER view-secret")), Ok("v"));
        assert_eq!(id(None), Err(AuthFailure::Missing));
        assert_eq!(id(Some(b"Bearer nope")), Err(AuthFailure::Unknown));
        assert_eq!(id(Some(b"Bearer op-secre")), Err(AuthFailure::Unknown));
        assert_eq!(id(Some(b"Basic b3A6c2VjcmV0")), Err(AuthFailure::Malformed));
        assert_eq!(id(Some(b"Bearer ")), Err(AuthFailure::Malformed));
        assert_eq!(id(Some(b"Bearer a b")), Err(AuthFailure::Malformed));
        assert_eq!(id(Some(b"op-secret")), Err(AuthFailure::Malformed));
        let long = format!("Bearer {}", "x".repeat(MAX_AUTHORIZATION_LEN));
        assert_eq!(id(Some(long.as_bytes())), Err(AuthFailure::Malformed));
        assert_eq!(
            authenticate(&[], Some(b"Bearer x")).map(|t| t.id.clone()),
            Err(AuthFailure::Unknown)
        );
    }

    #[test]
    fn hash_helper() {
        assert_eq!(
            token_sha256_hex("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }
}
