//! Certificate, key and CA files after start: the poll interval (`sip.cert_poll_secs`)
//! and reading a listener's certificate, key and client CA, or a route's CA bundle, again
//! to see whether they changed on disk.
//!
//! Change detection compares the files' whole content with the material in use, not
//! mtime + size: a renewed certificate from the same issuer usually has the same length,
//! an mtime can be set back (or have a one-second granularity on some file systems), and a
//! certificate, key and CA bundle are a few KiB each, so one read per file per interval
//! costs nothing. A file replaced by rename (the way certbot and cert-manager write) is
//! read under its configured path, so the new one is seen.
//!
//! Owns: the interval's validation, the re-read and PEM checks of each file, and the
//! error saying which file and why. Must not: build TLS configs (sbc-sip does, and checks
//! that the key matches the certificate) or put key bytes in an error or a log line.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

use super::{invalid, ConfigError, Listener, PrivateKeyPem, Route};

/// Default `sip.cert_poll_secs`: a renewed certificate is in use within half a minute,
/// for three small file reads per listener per interval.
pub const DEFAULT_CERT_POLL_SECS: u64 = 30;

/// Longest `sip.cert_poll_secs`: a day (certificates are renewed weeks before expiry; a
/// longer interval is "off", which 0 says plainly).
pub const MAX_CERT_POLL_SECS: u64 = 86_400;

/// `sip.cert_poll_secs` as an interval; 0 turns polling off (SIGHUP still reloads).
pub(super) fn poll_interval(secs: u64) -> Result<Option<Duration>, ConfigError> {
    if secs > MAX_CERT_POLL_SECS {
        return Err(invalid(
            "sip.cert_poll_secs",
            format!("must be between 0 (off) and {MAX_CERT_POLL_SECS}"),
        ));
    }
    Ok((secs > 0).then(|| Duration::from_secs(secs)))
}

/// `t` as UTC text, `2027-03-01 12:00:00 UTC` (for "not after" in reload results).
pub fn utc_text(t: std::time::SystemTime) -> String {
    let u = crate::time::Utc::of(t);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        u.year, u.month, u.day, u.hour, u.minute, u.second
    )
}

/// A certificate, key or CA file that cannot be used: which one (config key and path) and
/// why. Never holds the file's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFileError {
    /// The config key, e.g. `listeners.tls-0.private_key` or
    /// `tenants.acme.routes["+1"].ca_file`.
    pub key: String,
    pub path: PathBuf,
    pub why: String,
}

impl fmt::Display for TlsFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.path.display(), self.key, self.why)
    }
}

impl std::error::Error for TlsFileError {}

/// Whether a config error is about a certificate, key or CA file (so a reload refused for
/// it is counted as a refused certificate reload too).
pub fn is_tls_file_error(e: &ConfigError) -> bool {
    match e {
        ConfigError::Invalid { key, .. } => {
            [".certificate", ".private_key", ".client_ca", ".ca_file"]
                .iter()
                .any(|k| key.ends_with(k))
        }
        _ => false,
    }
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|e| TlsFileError {
        key: key.to_string(),
        path: path.to_path_buf(),
        why: format!("cannot read: {e}"),
    })
}

/// Checks that `pem` holds at least one certificate and nothing unparsable.
fn check_certificates(key: &str, path: &Path, pem: &[u8]) -> Result<(), TlsFileError> {
    let err = |why: String| TlsFileError {
        key: key.to_string(),
        path: path.to_path_buf(),
        why,
    };
    let mut n = 0;
    for c in CertificateDer::pem_slice_iter(pem) {
        c.map_err(|e| err(format!("bad PEM certificate: {e}")))?;
        n += 1;
    }
    if n == 0 {
        return Err(err("no PEM certificate in the file".to_string()));
    }
    Ok(())
}

impl Listener {
    /// Reads the listener's certificate, key and client CA files again. `Ok(None)`: all
    /// as in use (or the listener has no files: the embedded default's certificate is
    /// made in memory). `Ok(Some(listener))`: a copy with the new material, each file
    /// parsed (whether the key matches the certificate is for the TLS layer to check).
    /// `Err`: the first file that cannot be read or parsed.
    pub fn reread_files(&self) -> Result<Option<Listener>, TlsFileError> {
        let (Some(cert_path), Some(key_path)) = (&self.certificate_path, &self.private_key_path)
        else {
            return Ok(None);
        };
        let key_name = |k: &str| format!("listeners.{}.{k}", self.name);
        let cert = read(&key_name("certificate"), cert_path)?;
        let key = Zeroizing::new(read(&key_name("private_key"), key_path)?);
        let ca = match &self.client_ca_path {
            Some(p) => Some(read(&key_name("client_ca"), p)?),
            None => None,
        };
        if cert == self.certificate_pem
            && *key == *self.private_key.pem()
            && ca == self.client_ca_pem
        {
            return Ok(None);
        }
        check_certificates(&key_name("certificate"), cert_path, &cert)?;
        if PrivateKeyDer::from_pem_slice(&key).is_err() {
            // The parser's error could quote the file: say only what is wrong.
            return Err(TlsFileError {
                key: key_name("private_key"),
                path: key_path.clone(),
                why: "no usable PEM private key in the file".to_string(),
            });
        }
        if let (Some(p), Some(pem)) = (&self.client_ca_path, &ca) {
            check_certificates(&key_name("client_ca"), p, pem)?;
        }
        let mut new = self.clone();
        new.certificate_pem = cert;
        new.private_key = PrivateKeyPem(key);
        new.client_ca_pem = ca;
        Ok(Some(new))
    }
}

impl Route {
    /// Reads the route's CA bundle again: `Ok(None)` if it is as in use (or the route
    /// trusts the public roots), `Ok(Some(pem))` if it changed and parses. `tenant` names
    /// the route in the error.
    pub fn reread_ca(&self, tenant: &str) -> Result<Option<Vec<u8>>, TlsFileError> {
        let Some(path) = &self.ca_path else {
            return Ok(None);
        };
        let key = format!("tenants.{tenant}.routes[{:?}].ca_file", self.prefix);
        let pem = read(&key, path)?;
        if self.ca_pem.as_deref() == Some(pem.as_slice()) {
            return Ok(None);
        }
        check_certificates(&key, path, &pem)?;
        Ok(Some(pem))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn pair() -> (String, String) {
        let k = rcgen::KeyPair::generate().expect("key");
        let c = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .self_signed(&k)
            .expect("cert");
        (c.pem(), k.serialize_pem())
    }

    fn setup(tag: &str, poll: &str) -> (PathBuf, Config) {
        let dir = std::env::temp_dir().join(format!("sbc-certs-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (cert, key) = pair();
        std::fs::write(dir.join("cert.pem"), &cert).expect("w");
        std::fs::write(dir.join("key.pem"), key).expect("w");
        std::fs::write(dir.join("ca.pem"), &cert).expect("w");
        let text = format!(
            "[sip]\n{poll}\n[[listeners]]\nname=\"l\"\naddress=\"127.0.0.1:0\"\ncertificate=\"cert.pem\"\nprivate_key=\"key.pem\"\nclient_ca=\"ca.pem\"\n\
[[tenants]]\nid=\"t\"\n[tenants.recognition]\nsource_cidrs=[\"127.0.0.0/8\"]\n[[tenants.routes]]\ntarget=\"sips:127.0.0.1:5062\"\nca_file=\"ca.pem\"\n"
        );
        let cfg = Config::from_toml_str(&text, &dir).expect("config");
        (dir, cfg)
    }

    #[test]
    fn poll_interval_default_off_and_bounds() {
        let (_, cfg) = setup("poll-default", "");
        assert_eq!(cfg.sip.cert_poll, Some(Duration::from_secs(30)));
        let (_, cfg) = setup("poll-off", "cert_poll_secs = 0");
        assert_eq!(cfg.sip.cert_poll, None);
        assert!(poll_interval(MAX_CERT_POLL_SECS + 1).is_err());
        assert_eq!(poll_interval(5).expect("ok"), Some(Duration::from_secs(5)));
    }

    #[test]
    fn unchanged_files_are_not_a_change() {
        let (_, cfg) = setup("same", "");
        assert!(cfg.listeners[0].reread_files().expect("read").is_none());
        assert!(cfg.tenants[0].routes[0]
            .reread_ca("t")
            .expect("read")
            .is_none());
    }

    #[test]
    fn a_new_certificate_and_key_are_read() {
        let (dir, cfg) = setup("new", "");
        let (cert, key) = pair();
        std::fs::write(dir.join("cert.pem"), &cert).expect("w");
        std::fs::write(dir.join("key.pem"), &key).expect("w");
        let new = cfg.listeners[0]
            .reread_files()
            .expect("read")
            .expect("changed");
        assert_eq!(new.certificate_pem, cert.as_bytes());
        assert_eq!(new.private_key.pem(), key.as_bytes());
        assert_eq!(new.name, "l");
        // The CA file also changed for the route.
        std::fs::write(dir.join("ca.pem"), &cert).expect("w");
        let ca = cfg.tenants[0].routes[0].reread_ca("t").expect("read");
        assert_eq!(ca.as_deref(), Some(cert.as_bytes()));
    }

    #[test]
    fn bad_or_missing_files_name_the_file_and_never_the_key() {
        let (dir, cfg) = setup("bad", "");
        // Not base64: the parser fails on it (a key that parses but does not match is the
        // TLS layer's to refuse).
        let secret = "-----BEGIN PRIVATE KEY-----\nU0VDUkVU*SECRET*\n-----END PRIVATE KEY-----\n";
        std::fs::write(dir.join("key.pem"), secret).expect("w");
        let e = cfg.listeners[0].reread_files().expect_err("bad key");
        assert_eq!(e.key, "listeners.l.private_key");
        assert!(e.path.ends_with("key.pem"), "{e}");
        assert!(!e.to_string().contains("SECRET"), "{e}");
        std::fs::write(dir.join("cert.pem"), "junk").expect("w");
        let e = cfg.listeners[0].reread_files().expect_err("bad cert");
        assert_eq!(e.key, "listeners.l.certificate");
        assert!(e.why.contains("no PEM certificate"), "{e}");
        std::fs::remove_file(dir.join("ca.pem")).expect("rm");
        let e = cfg.tenants[0].routes[0].reread_ca("t").expect_err("gone");
        assert_eq!(e.key, "tenants.t.routes[\"\"].ca_file");
        assert!(e.why.starts_with("cannot read"), "{e}");
    }

    #[test]
    fn utc_text_is_a_calendar_date() {
        let at = |s: u64| std::time::UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(utc_text(at(0)), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_text(at(951_827_696)), "2000-02-29 12:34:56 UTC");
        assert_eq!(utc_text(at(1_803_859_200)), "2027-03-01 00:00:00 UTC");
    }

    #[test]
    fn tls_file_errors_are_recognised() {
        assert!(is_tls_file_error(&invalid("listeners[0].certificate", "x")));
        assert!(is_tls_file_error(&invalid(
            "tenants[1].routes[0].ca_file",
            "x"
        )));
        assert!(!is_tls_file_error(&invalid("sip.t1_ms", "x")));
    }
}
