//! The admin plane's settings: the `[admin]` section of the gateway's config file.
//!
//! ```toml
//! [admin]
//! address = "127.0.0.1:9090"         # default
//! certificate = "admin-cert.pem"     # with private_key: HTTPS; without both: plain HTTP
//! private_key = "admin-key.pem"
//! client_ca = "ops-ca.pem"           # optional: require client certificates from this CA
//! redact_numbers = true              # mask caller / callee numbers in API answers
//!
//! [[admin.tokens]]
//! id = "ops-alice"                   # names the token in the audit log
//! sha256 = "<64 hex digits>"         # SHA-256 of the token; the token itself is never stored
//! role = "operator"                  # operator | recorder | viewer
//!
//! [[admin.tokens]]
//! id = "acme-dashboard"
//! sha256 = "<64 hex digits>"
//! role = "viewer"
//! tenant = "acme"                    # required for recorder and viewer, refused for operator
//! ```
//!
//! Unknown keys are errors; every error names its key (`admin.tokens[1].tenant`). Relative
//! paths are resolved from the config file's directory. Certificates and keys are read and
//! parsed here, so a config that validates can be served.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sbc_core::tenant::TenantId;
use serde::Deserialize;
use zeroize::Zeroizing;

/// Where the admin plane listens when `admin.address` is not given: loopback only.
pub const DEFAULT_ADDRESS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9090);

/// Most tokens one config may hold: each request compares against all of them in constant
/// time, so the list stays short (operators, dashboards, recorders: tens, not thousands).
pub const MAX_TOKENS: usize = 256;

/// An admin configuration error, naming the key it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminConfigError {
    /// The text is not valid TOML or does not fit the schema (unknown key, wrong type).
    #[error("admin: {0}")]
    Syntax(String),
    /// A value is out of range, inconsistent, or names a file that cannot be used; `key` is
    /// its path, e.g. `admin.tokens[1].sha256`.
    #[error("`{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> AdminConfigError {
    AdminConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// What a token may do.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything: every tenant's calls and usage, drain.
    Operator,
    /// One tenant's calls and usage, and its calls' recording taps.
    Recorder(TenantId),
    /// One tenant's calls and usage, read only.
    Viewer(TenantId),
}

impl Role {
    /// The role's name as written in config and the audit log.
    pub fn name(&self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Recorder(_) => "recorder",
            Role::Viewer(_) => "viewer",
        }
    }

    /// The one tenant this role is limited to; `None` for an operator (all tenants).
    pub fn tenant(&self) -> Option<&TenantId> {
        match self {
            Role::Operator => None,
            Role::Recorder(t) | Role::Viewer(t) => Some(t),
        }
    }

    /// Whether this role may see `tenant`'s data.
    pub fn may_see(&self, tenant: &TenantId) -> bool {
        self.tenant().is_none_or(|t| t == tenant)
    }
}

impl fmt::Debug for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.tenant() {
            None => f.write_str(self.name()),
            Some(t) => write!(f, "{}({})", self.name(), t),
        }
    }
}

/// One accepted bearer token: its id (for the audit log), the SHA-256 of its text, its role.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenEntry {
    pub id: String,
    pub sha256: [u8; 32],
    pub role: Role,
}

impl fmt::Debug for TokenEntry {
    /// The hash is left out: it is not the token, but it need not be in logs either.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEntry")
            .field("id", &self.id)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// HTTPS material, read and checked at config time.
#[derive(Clone)]
pub struct AdminTls {
    /// Certificate chain, PEM, leaf first.
    pub cert_pem: Vec<u8>,
    /// Private key, PEM; zeroized on drop.
    pub key_pem: Zeroizing<Vec<u8>>,
    /// With it, clients must present a certificate issued by this CA (PEM), in addition to
    /// a bearer token.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for AdminTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminTls")
            .field("cert_pem_bytes", &self.cert_pem.len())
            .field("key_pem", &"<redacted>")
            .field("client_ca", &self.client_ca_pem.is_some())
            .finish()
    }
}

/// The admin plane's validated settings.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub address: SocketAddr,
    /// `None`: plain HTTP (keep the address on loopback then).
    pub tls: Option<AdminTls>,
    pub tokens: Vec<TokenEntry>,
    /// Mask caller and callee numbers in API answers (`+1555****34`).
    pub redact_numbers: bool,
    /// The audit log file (JSON lines, hash-chained); `None`: the caller picks a default.
    pub audit_log: Option<PathBuf>,
}

impl Default for AdminConfig {
    /// Loopback HTTP on [`DEFAULT_ADDRESS`], no tokens (only the unauthenticated probes and
    /// metrics answer), numbers not redacted.
    fn default() -> Self {
        AdminConfig {
            address: DEFAULT_ADDRESS,
            tls: None,
            tokens: Vec::new(),
            redact_numbers: false,
            audit_log: None,
        }
    }
}

/// The `[admin]` section as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdminConfig {
    pub address: Option<String>,
    pub certificate: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    #[serde(default)]
    pub redact_numbers: bool,
    pub audit_log: Option<PathBuf>,
    #[serde(default)]
    pub tokens: Vec<RawToken>,
}

/// One `[[admin.tokens]]` entry as written.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    pub id: String,
    pub sha256: String,
    pub role: String,
    pub tenant: Option<String>,
}

impl fmt::Debug for RawToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawToken")
            .field("id", &self.id)
            .field("role", &self.role)
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

/// A whole config file, of which only `[admin]` is read here (the rest is sbc-core's).
#[derive(Deserialize)]
struct FileWithAdmin {
    admin: Option<RawAdminConfig>,
}

impl AdminConfig {
    /// The `[admin]` section of a whole config file's text, if it has one; other sections
    /// are ignored here (sbc-core validates them). Relative paths resolve from `base`.
    pub fn from_config_file_str(
        text: &str,
        base: &Path,
    ) -> Result<Option<AdminConfig>, AdminConfigError> {
        let file: FileWithAdmin = toml::from_str(text)
            .map_err(|e| AdminConfigError::Syntax(e.to_string().trim().to_string()))?;
        file.admin
            .map(|raw| AdminConfig::from_raw(&raw, base))
            .transpose()
    }

    /// An `[admin]` table already parsed as a TOML value (e.g. kept aside by sbc-core's
    /// config as `admin: Option<toml::Value>`).
    pub fn from_toml_value(
        value: toml::Value,
        base: &Path,
    ) -> Result<AdminConfig, AdminConfigError> {
        let raw = RawAdminConfig::deserialize(value)
            .map_err(|e| AdminConfigError::Syntax(e.to_string().trim().to_string()))?;
        AdminConfig::from_raw(&raw, base)
    }

    /// Validate the section as written; reads the certificate, key and CA files.
    pub fn from_raw(raw: &RawAdminConfig, base: &Path) -> Result<AdminConfig, AdminConfigError> {
        let address = match &raw.address {
            None => DEFAULT_ADDRESS,
            Some(a) => a.parse().map_err(|_| {
                invalid(
                    "admin.address",
                    format!("{a:?} is not an address with a port, e.g. \"127.0.0.1:9090\""),
                )
            })?,
        };
        let tls = match (&raw.certificate, &raw.private_key) {
            (None, None) => {
                if raw.client_ca.is_some() {
                    return Err(invalid(
                        "admin.client_ca",
                        "client certificates need HTTPS: set admin.certificate and admin.private_key",
                    ));
                }
                None
            }
            (Some(_), None) => {
                return Err(invalid(
                    "admin.private_key",
                    "required when admin.certificate is set",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "admin.certificate",
                    "required when admin.private_key is set",
                ))
            }
            (Some(cert), Some(key)) => {
                let cert_pem = read(base, cert, "admin.certificate")?;
                check_certs(&cert_pem, "admin.certificate")?;
                let key_pem = Zeroizing::new(read(base, key, "admin.private_key")?);
                // Only the parser's error kind is reported, never the key's bytes.
                PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                    invalid(
                        "admin.private_key",
                        format!("no usable PEM private key: {e}"),
                    )
                })?;
                let client_ca_pem = match &raw.client_ca {
                    None => None,
                    Some(ca) => {
                        let pem = read(base, ca, "admin.client_ca")?;
                        check_certs(&pem, "admin.client_ca")?;
                        Some(pem)
                    }
                };
                Some(AdminTls {
                    cert_pem,
                    key_pem,
                    client_ca_pem,
                })
            }
        };
        if raw.tokens.len() > MAX_TOKENS {
            return Err(invalid(
                "admin.tokens",
                format!("{} tokens; at most {MAX_TOKENS}", raw.tokens.len()),
            ));
        }
        let mut tokens = Vec::with_capacity(raw.tokens.len());
        let mut ids: HashMap<&str, usize> = HashMap::new();
        let mut hashes: HashMap<[u8; 32], usize> = HashMap::new();
        for (i, t) in raw.tokens.iter().enumerate() {
            let key = format!("admin.tokens[{i}]");
            let entry = validate_token(t, &key)?;
            if let Some(j) = ids.insert(t.id.as_str(), i) {
                return Err(invalid(
                    format!("{key}.id"),
                    format!("{:?} is also the id of admin.tokens[{j}]", t.id),
                ));
            }
            if let Some(j) = hashes.insert(entry.sha256, i) {
                return Err(invalid(
                    format!("{key}.sha256"),
                    format!("the same token as admin.tokens[{j}]"),
                ));
            }
            tokens.push(entry);
        }
        Ok(AdminConfig {
            address,
            tls,
            tokens,
            redact_numbers: raw.redact_numbers,
            audit_log: raw.audit_log.as_ref().map(|p| {
                if p.is_absolute() {
                    p.clone()
                } else {
                    base.join(p)
                }
            }),
        })
    }

    /// Every tenant named by a token is one of `tenants` (the configured tenants). A token
    /// for a tenant that does not exist is a typo that would silently grant nothing.
    pub fn check_tenants(&self, tenants: &[TenantId]) -> Result<(), AdminConfigError> {
        for (i, t) in self.tokens.iter().enumerate() {
            if let Some(tenant) = t.role.tenant() {
                if !tenants.contains(tenant) {
                    return Err(invalid(
                        format!("admin.tokens[{i}].tenant"),
                        format!("tenant {:?} is not configured", tenant.as_str()),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Longest token id: it is written into every audit line.
const MAX_TOKEN_ID_LEN: usize = 64;

fn validate_token(t: &RawToken, key: &str) -> Result<TokenEntry, AdminConfigError> {
    if t.id.is_empty()
        || t.id.len() > MAX_TOKEN_ID_LEN
        || !t
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(invalid(
            format!("{key}.id"),
            format!("must be 1 to {MAX_TOKEN_ID_LEN} of [A-Za-z0-9._-]"),
        ));
    }
    let mut sha256 = [0u8; 32];
    hex::decode_to_slice(t.sha256.trim(), &mut sha256).map_err(|_| {
        invalid(
            format!("{key}.sha256"),
            "must be 64 hex digits: the SHA-256 of the token (e.g. `printf %s TOKEN | sha256sum`)",
        )
    })?;
    let tenant = match &t.tenant {
        None => None,
        Some(s) => {
            if s.is_empty()
                || s.len() > sbc_core::config::MAX_TENANT_ID_LEN
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            {
                return Err(invalid(
                    format!("{key}.tenant"),
                    format!("{s:?} is not a tenant id ([a-z0-9_-]{{1,64}})"),
                ));
            }
            Some(TenantId::from(s.as_str()))
        }
    };
    let role = match (t.role.as_str(), tenant) {
        ("operator", None) => Role::Operator,
        ("operator", Some(_)) => return Err(invalid(
            format!("{key}.tenant"),
            "an operator token covers every tenant; remove `tenant` or use role viewer/recorder",
        )),
        ("recorder", Some(t)) => Role::Recorder(t),
        ("viewer", Some(t)) => Role::Viewer(t),
        ("recorder" | "viewer", None) => {
            return Err(invalid(
                format!("{key}.tenant"),
                format!("required for role {:?}", t.role),
            ))
        }
        (other, _) => {
            return Err(invalid(
                format!("{key}.role"),
                format!("{other:?} is not one of \"operator\", \"recorder\", \"viewer\""),
            ))
        }
    };
    Ok(TokenEntry {
        id: t.id.clone(),
        sha256,
        role,
    })
}

fn read(base: &Path, path: &Path, key: &str) -> Result<Vec<u8>, AdminConfigError> {
    let full = base.join(path);
    std::fs::read(&full).map_err(|e| invalid(key, format!("cannot read {}: {e}", full.display())))
}

fn check_certs(pem: &[u8], key: &str) -> Result<(), AdminConfigError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
    match certs {
        Ok(c) if !c.is_empty() => Ok(()),
        Ok(_) => Err(invalid(key, "no certificate in the PEM file")),
        Err(e) => Err(invalid(key, format!("bad PEM certificate: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn parse(text: &str) -> Result<Option<AdminConfig>, AdminConfigError> {
        AdminConfig::from_config_file_str(text, Path::new("/nonexistent"))
    }

    fn key_of(e: AdminConfigError) -> String {
        match e {
            AdminConfigError::Invalid { key, .. } => key,
            AdminConfigError::Syntax(s) => format!("syntax: {s}"),
        }
    }

    #[test]
    fn defaults_and_tokens() {
        assert!(parse("[sip]\nmax_headers = 10\n").expect("ok").is_none());
        let cfg = parse(&format!(
            "[listeners]\n[admin]\nredact_numbers = true\n\
             [[admin.tokens]]\nid = \"ops\"\nsha256 = \"{HASH}\"\nrole = \"operator\"\n\
             [[admin.tokens]]\nid = \"acme-view\"\nsha256 = \"{}\"\nrole = \"viewer\"\ntenant = \"acme\"\n\
             [[admin.tokens]]\nid = \"acme-rec\"\nsha256 = \"{}\"\nrole = \"recorder\"\ntenant = \"acme\"\n",
            "11".repeat(32),
            "22".repeat(32)
        ))
        .expect("ok")
        .expect("section");
        assert_eq!(cfg.address, DEFAULT_ADDRESS);
        assert!(cfg.tls.is_none());
        assert!(cfg.redact_numbers);
        assert_eq!(cfg.tokens.len(), 3);
        assert_eq!(cfg.tokens[0].role, Role::Operator);
        assert_eq!(cfg.tokens[0].sha256[0], 0x9f);
        assert_eq!(cfg.tokens[1].role, Role::Viewer(TenantId::from("acme")));
        assert_eq!(cfg.tokens[2].role, Role::Recorder(TenantId::from("acme")));
        // The hash is not in Debug output.
        assert!(!format!("{cfg:?}").contains(HASH));
        assert!(cfg.check_tenants(&[TenantId::from("acme")]).is_ok());
        assert_eq!(
            key_of(
                cfg.check_tenants(&[TenantId::from("other")])
                    .expect_err("unknown tenant")
            ),
            "admin.tokens[1].tenant"
        );
    }

    #[test]
    fn errors_name_the_key() {
        let tok = |extra: &str| {
            format!("[admin]\n[[admin.tokens]]\nid = \"a\"\nsha256 = \"{HASH}\"\n{extra}\n")
        };
        let cases = [
            ("[admin]\naddress = \"localhost\"\n".to_string(), "admin.address"),
            (
                "[admin]\ncertificate = \"c.pem\"\n".to_string(),
                "admin.private_key",
            ),
            (
                "[admin]\nprivate_key = \"k.pem\"\n".to_string(),
                "admin.certificate",
            ),
            (
                "[admin]\nclient_ca = \"ca.pem\"\n".to_string(),
                "admin.client_ca",
            ),
            (
                "[admin]\ncertificate = \"c.pem\"\nprivate_key = \"k.pem\"\n".to_string(),
                "admin.certificate",
            ),
            (tok("role = \"viewer\""), "admin.tokens[0].tenant"),
            (tok("role = \"recorder\""), "admin.tokens[0].tenant"),
            (
                tok("role = \"operator\"\ntenant = \"acme\""),
                "admin.tokens[0].tenant",
            ),
            (tok("role = \"admin\""), "admin.tokens[0].role"),
            (
                tok("role = \"viewer\"\ntenant = \"Not Valid\""),
                "admin.tokens[0].tenant",
            ),
            (
                "[admin]\n[[admin.tokens]]\nid = \"a\"\nsha256 = \"abc\"\nrole = \"operator\"\n"
                    .to_string(),
                "admin.tokens[0].sha256",
            ),
            (
                format!("[admin]\n[[admin.tokens]]\nid = \"a b\"\nsha256 = \"{HASH}\"\nrole = \"operator\"\n"),
                "admin.tokens[0].id",
            ),
            (
                format!(
                    "{}[[admin.tokens]]\nid = \"a\"\nsha256 = \"{}\"\nrole = \"operator\"\n",
                    tok("role = \"operator\""),
                    "00".repeat(32)
                ),
                "admin.tokens[1].id",
            ),
            (
                format!(
                    "{}[[admin.tokens]]\nid = \"b\"\nsha256 = \"{HASH}\"\nrole = \"operator\"\n",
                    tok("role = \"operator\"")
                ),
                "admin.tokens[1].sha256",
            ),
        ];
        for (text, want) in cases {
            let got = key_of(parse(&text).expect_err(&text));
            assert_eq!(got, want, "{text}");
        }
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = parse("[admin]\nadress = \"127.0.0.1:1\"\n").expect_err("typo");
        let msg = e.to_string();
        assert!(msg.contains("adress"), "{msg}");
        let e = parse(&format!(
            "[admin]\n[[admin.tokens]]\nid = \"a\"\nsha256 = \"{HASH}\"\nrole = \"operator\"\ntoken = \"secret\"\n"
        ))
        .expect_err("unknown token key");
        assert!(e.to_string().contains("token"), "{e}");
    }

    #[test]
    fn from_value() {
        let v: toml::Value =
            toml::from_str("address = \"0.0.0.0:9443\"\nredact_numbers = true").expect("toml");
        let cfg = AdminConfig::from_toml_value(v, Path::new(".")).expect("valid");
        assert_eq!(cfg.address, "0.0.0.0:9443".parse().expect("addr"));
        assert!(cfg.redact_numbers);
    }
}
