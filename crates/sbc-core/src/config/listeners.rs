//! `[[listeners]]`: where SIP is accepted, on which transport, with which certificate,
//! key and client CA.
//!
//! Owns: the raw listener schema, its validation into [`Listener`] (reading and checking
//! its PEM files), the key wrapper [`PrivateKeyPem`], and the checks across listeners
//! (unique names, no two binding the same address). Must not: bind sockets or build TLS
//! configs (sbc-sip does), or put key bytes in an error or a log line.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{certificates, invalid, read_file, transport, ConfigError, Transport};

/// A PEM private key. Zeroized on drop; `Debug` never shows it.
#[derive(Clone)]
pub struct PrivateKeyPem(pub(super) Zeroizing<Vec<u8>>);

impl PrivateKeyPem {
    /// Wraps the PEM text of a key made in code (the embedded default's).
    pub fn new(pem: Zeroizing<Vec<u8>>) -> PrivateKeyPem {
        PrivateKeyPem(pem)
    }

    /// The PEM text.
    pub fn pem(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for PrivateKeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKeyPem(<redacted>)")
    }
}

/// A SIP listener: TLS (the default), or plain TCP or UDP for inside networks.
#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    /// `transport`: TLS, or plain TCP / UDP (whose TLS fields below are empty).
    pub transport: Transport,
    /// Host written into Via, Contact and Record-Route (default: the bound address).
    pub advertised_host: Option<String>,
    /// Where the certificate came from (`None` for the embedded default).
    pub certificate_path: Option<PathBuf>,
    /// PEM chain, leaf first.
    pub certificate_pem: Vec<u8>,
    /// Where the private key came from (`None` for the embedded default).
    pub private_key_path: Option<PathBuf>,
    pub private_key: PrivateKeyPem,
    /// Where the client CA bundle came from.
    pub client_ca_path: Option<PathBuf>,
    /// CA bundle that client certificates are verified against (mutual TLS).
    pub client_ca_pem: Option<Vec<u8>>,
    /// Refuse handshakes without a valid client certificate.
    pub require_client_cert: bool,
    /// Bind with `IP_FREEBIND` (Linux): the address need not be on this host yet. A hot
    /// standby listens on the virtual IP its peer holds, and serves it as soon as
    /// keepalived moves the address here (issue #16).
    pub freebind: bool,
}

impl Listener {
    /// When the leaf certificate expires (`None` if it cannot be read, which validation
    /// has already ruled out for configured files).
    pub fn certificate_not_after(&self) -> Option<std::time::SystemTime> {
        let der = CertificateDer::pem_slice_iter(&self.certificate_pem)
            .next()?
            .ok()?;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
        let secs = cert.validity().not_after.timestamp();
        let secs = u64::try_from(secs).ok()?;
        Some(std::time::UNIX_EPOCH + Duration::from_secs(secs))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub(super) name: String,
    pub(super) address: String,
    pub(super) advertised_host: Option<String>,
    #[serde(default)]
    pub(super) transport: Transport,
    pub(super) certificate: Option<PathBuf>,
    pub(super) private_key: Option<PathBuf>,
    pub(super) client_ca: Option<PathBuf>,
    #[serde(default)]
    pub(super) require_client_cert: bool,
    #[serde(default)]
    pub(super) freebind: bool,
}

fn validate_listener(l: &RawListener, key: &str, base: &Path) -> Result<Listener, ConfigError> {
    if l.name.is_empty() || l.name.len() > 64 {
        return Err(invalid(format!("{key}.name"), "must be 1 to 64 characters"));
    }
    let address: SocketAddr = l.address.parse().map_err(|_| {
        invalid(
            format!("{key}.address"),
            format!("{:?} is not an IP:port address", l.address),
        )
    })?;
    if let Some(h) = &l.advertised_host {
        if h.is_empty()
            || h.contains(|c: char| c.is_whitespace() || c == ';' || c == ',' || c == '>')
        {
            return Err(invalid(
                format!("{key}.advertised_host"),
                format!("{h:?} is not a host name or address"),
            ));
        }
    }
    if l.freebind {
        freebind_allowed(&format!("{key}.freebind"), address.ip())?;
    }
    let Some((cert_file, key_file)) = transport::listener_tls_paths(l, key)? else {
        return Ok(Listener {
            name: l.name.clone(),
            address,
            transport: l.transport,
            advertised_host: l.advertised_host.clone(),
            certificate_path: None,
            certificate_pem: Vec::new(),
            private_key_path: None,
            private_key: PrivateKeyPem(Zeroizing::new(Vec::new())),
            client_ca_path: None,
            client_ca_pem: None,
            require_client_cert: false,
            freebind: l.freebind,
        });
    };
    let (cert_path, certificate_pem) = read_file(&format!("{key}.certificate"), base, cert_file)?;
    certificates(&format!("{key}.certificate"), &cert_path, &certificate_pem)?;
    let (key_path, key_pem) = read_file(&format!("{key}.private_key"), base, key_file)?;
    let key_pem = Zeroizing::new(key_pem);
    if PrivateKeyDer::from_pem_slice(&key_pem).is_err() {
        return Err(invalid(
            format!("{key}.private_key"),
            format!("{}: no PEM private key in the file", key_path.display()),
        ));
    }
    let (client_ca_path, client_ca_pem) = match &l.client_ca {
        Some(p) => {
            let (path, pem) = read_file(&format!("{key}.client_ca"), base, p)?;
            certificates(&format!("{key}.client_ca"), &path, &pem)?;
            (Some(path), Some(pem))
        }
        None => (None, None),
    };
    if l.require_client_cert && client_ca_pem.is_none() {
        return Err(invalid(
            format!("{key}.require_client_cert"),
            "needs `client_ca` to verify client certificates against",
        ));
    }
    Ok(Listener {
        name: l.name.clone(),
        address,
        transport: Transport::Tls,
        advertised_host: l.advertised_host.clone(),
        certificate_path: Some(cert_path),
        certificate_pem,
        private_key_path: Some(key_path),
        private_key: PrivateKeyPem(key_pem),
        client_ca_path,
        client_ca_pem,
        require_client_cert: l.require_client_cert,
        freebind: l.freebind,
    })
}

/// `freebind = true` (a listener's, or `media.freebind`) is for one specific address that
/// may not be on this host yet, and only Linux has `IP_FREEBIND`.
pub(super) fn freebind_allowed(key: &str, ip: std::net::IpAddr) -> Result<(), ConfigError> {
    if !cfg!(any(target_os = "linux", target_os = "android")) {
        return Err(invalid(key, "IP_FREEBIND exists on Linux only"));
    }
    if ip.is_unspecified() {
        return Err(invalid(
            key,
            "needs a specific address (the virtual IP), not a wildcard (0.0.0.0 or ::)",
        ));
    }
    Ok(())
}

/// Every `[[listeners]]`: each valid, names unique, and no two that cannot both bind.
pub(super) fn validate_listeners(
    raw: &[RawListener],
    base: &Path,
) -> Result<Vec<Listener>, ConfigError> {
    let mut listeners = Vec::new();
    let mut names = HashMap::new();
    for (i, l) in raw.iter().enumerate() {
        let key = format!("listeners[{i}]");
        if let Some(j) = names.insert(l.name.clone(), i) {
            return Err(invalid(
                format!("{key}.name"),
                format!("{:?} is also the name of listeners[{j}]", l.name),
            ));
        }
        let listener = validate_listener(l, &key, base)?;
        if let Some(j) = listeners
            .iter()
            .position(|o: &Listener| transport::listeners_clash(o, &listener))
        {
            return Err(invalid(
                format!("{key}.address"),
                format!(
                    "listener {:?} ({}) and listener {:?} (listeners[{j}], {}) cannot both bind it",
                    listener.name, listener.address, listeners[j].name, listeners[j].address
                ),
            ));
        }
        listeners.push(listener);
    }
    Ok(listeners)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::test_support::{err, files, LISTENER, TENANT};
    use crate::config::Config;

    #[test]
    fn two_listeners_on_one_address_are_refused_by_name() {
        let f = files();
        let second = |addr: &str| {
            format!("{LISTENER}[[listeners]]\nname=\"second\"\naddress=\"{addr}\"\ncertificate=\"cert.pem\"\nprivate_key=\"key.pem\"\n{TENANT}")
        };
        for clash in ["127.0.0.1:5061", "0.0.0.0:5061"] {
            let e = err(&f, &second(clash));
            assert!(
                e.contains("listeners[1].address")
                    && e.contains("\"second\"")
                    && e.contains("\"l\""),
                "{e}"
            );
        }
        for fine in ["127.0.0.1:5062", "127.0.0.2:5061", "[::1]:5061"] {
            Config::from_toml_str(&second(fine), &f.dir).expect(fine);
        }
        // Port 0: each bind gets its own port.
        let zero = LISTENER.replace("5061", "0");
        let text = format!(
            "{zero}{}",
            second("127.0.0.1:0").trim_start_matches(LISTENER)
        );
        Config::from_toml_str(&text, &f.dir).expect("two port-0 listeners");
    }

    #[test]
    fn freebind_is_for_one_address() {
        let f = files();
        let with = |addr: &str| {
            format!(
                "{}freebind = true\n{TENANT}",
                LISTENER.replace("127.0.0.1:5061", addr)
            )
        };
        let cfg = Config::from_toml_str(&with("10.77.0.100:5061"), &f.dir).expect("VIP");
        assert!(cfg.listeners[0].freebind);
        let cfg = Config::from_toml_str(&format!("{LISTENER}{TENANT}"), &f.dir).expect("plain");
        assert!(!cfg.listeners[0].freebind);
        for wildcard in ["0.0.0.0:5061", "[::]:5061"] {
            let e = err(&f, &with(wildcard));
            assert!(
                e.contains("listeners[0].freebind") && e.contains("wildcard"),
                "{e}"
            );
        }
        let e = err(&f, &format!("{LISTENER}freebind = \"yes\"\n{TENANT}"));
        assert!(e.contains("freebind"), "{e}");
    }

    #[test]
    fn certificate_expiry_is_read() {
        let cfg = Config::embedded_default().expect("default");
        let not_after = cfg.listeners[0].certificate_not_after().expect("expiry");
        // rcgen's default validity runs to 4096.
        assert!(not_after > std::time::SystemTime::now() + Duration::from_secs(365 * 86_400));
    }
}
