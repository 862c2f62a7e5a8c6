//! Tenants: their identifier, and recognition of a TLS peer as one of them.
//!
//! Recognition order (most to least specific): the client certificate (a SAN of type DNS
//! or URI, or the SHA-256 fingerprint of the whole certificate), then the TLS server name
//! the peer asked for (SNI), then the source address (longest matching CIDR). A peer that
//! matches nothing, or matches two tenants at the same level, is not recognised.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::config::Config;

/// A tenant's identifier: `[a-z0-9_-]{1,64}`, validated by config. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);

impl TenantId {
    /// The identifier as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for TenantId {
    fn from(s: &str) -> Self {
        TenantId(Arc::from(s))
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantId({})", &self.0)
    }
}

/// What the transport knows about a peer once its TLS handshake is done.
#[derive(Debug, Clone, Copy)]
pub struct PeerIdentity<'a> {
    /// The peer's leaf certificate (DER), verified against the listener's client CA.
    pub client_cert_der: Option<&'a [u8]>,
    /// The server name the peer asked for.
    pub sni: Option<&'a str>,
    /// The peer's source address.
    pub source: IpAddr,
}

/// Why a peer was not recognised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecognitionError {
    /// No tenant claims the certificate, the server name or the source address.
    #[error("no tenant claims this peer (certificate, SNI {sni:?}, source {addr})")]
    Unknown { sni: Option<String>, addr: IpAddr },
    /// The client certificate carries identities of two different tenants.
    #[error("client certificate names two tenants ({0} and {1})")]
    Ambiguous(TenantId, TenantId),
}

/// How a peer was recognised (for logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecognisedBy {
    ClientCertSan,
    ClientCertFingerprint,
    Sni,
    SourceCidr,
}

impl RecognisedBy {
    /// A stable name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RecognisedBy::ClientCertSan => "client_cert_san",
            RecognisedBy::ClientCertFingerprint => "client_cert_sha256",
            RecognisedBy::Sni => "sni",
            RecognisedBy::SourceCidr => "source_cidr",
        }
    }
}

/// Maps a peer to its tenant. Built once per config; lookups take no lock.
#[derive(Debug, Default)]
pub struct Recognizer {
    sans: HashMap<String, TenantId>,
    fingerprints: HashMap<[u8; 32], TenantId>,
    snis: HashMap<String, TenantId>,
    /// Sorted longest prefix first, so the first match is the most specific.
    cidrs: Vec<(IpNet, TenantId)>,
}

impl Recognizer {
    /// The recognition tables of every tenant in `config`. Config validation has already
    /// refused two tenants claiming the same identity.
    pub fn new(config: &Config) -> Recognizer {
        let mut r = Recognizer::default();
        for t in &config.tenants {
            for san in &t.recognition.client_cert_san {
                r.sans.insert(san.to_ascii_lowercase(), t.id.clone());
            }
            for fp in &t.recognition.client_cert_sha256 {
                r.fingerprints.insert(*fp, t.id.clone());
            }
            for sni in &t.recognition.sni {
                r.snis.insert(sni.to_ascii_lowercase(), t.id.clone());
            }
            for net in &t.recognition.source_cidrs {
                r.cidrs.push((*net, t.id.clone()));
            }
        }
        r.cidrs
            .sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        r
    }

    /// The tenant `peer` belongs to.
    pub fn recognize(&self, peer: &PeerIdentity<'_>) -> Result<TenantId, RecognitionError> {
        self.recognize_with(peer).map(|(t, _)| t)
    }

    /// The tenant `peer` belongs to and which identity matched.
    pub fn recognize_with(
        &self,
        peer: &PeerIdentity<'_>,
    ) -> Result<(TenantId, RecognisedBy), RecognitionError> {
        if let Some(der) = peer.client_cert_der {
            let fp: [u8; 32] = Sha256::digest(der).into();
            if let Some(t) = self.fingerprints.get(&fp) {
                return Ok((t.clone(), RecognisedBy::ClientCertFingerprint));
            }
            let mut found: Option<TenantId> = None;
            for san in cert_sans(der) {
                if let Some(t) = self.sans.get(&san.to_ascii_lowercase()) {
                    match &found {
                        Some(f) if f != t => {
                            return Err(RecognitionError::Ambiguous(f.clone(), t.clone()))
                        }
                        _ => found = Some(t.clone()),
                    }
                }
            }
            if let Some(t) = found {
                return Ok((t, RecognisedBy::ClientCertSan));
            }
        }
        if let Some(sni) = peer.sni {
            if let Some(t) = self.snis.get(&sni.to_ascii_lowercase()) {
                return Ok((t.clone(), RecognisedBy::Sni));
            }
        }
        let source = canonical(peer.source);
        if let Some((_, t)) = self.cidrs.iter().find(|(net, _)| net.contains(&source)) {
            return Ok((t.clone(), RecognisedBy::SourceCidr));
        }
        Err(RecognitionError::Unknown {
            sni: peer.sni.map(str::to_string),
            addr: peer.source,
        })
    }
}

/// IPv4-mapped IPv6 sources (dual-stack sockets) compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// DNS and URI subject alternative names of a DER certificate; none if it does not parse.
pub fn cert_sans(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    ext.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(s) | GeneralName::URI(s) => Some((*s).to_string()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(tenants: &str) -> Config {
        let (cert, key) = crate::config::self_signed(&["localhost".into()]).expect("cert");
        let dir = std::env::temp_dir().join(format!("sbc-core-tenant-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("c.pem"), cert).expect("write");
        std::fs::write(dir.join("k.pem"), key).expect("write");
        let text = format!(
            "[[listeners]]\nname=\"l\"\naddress=\"127.0.0.1:0\"\ncertificate=\"c.pem\"\nprivate_key=\"k.pem\"\n{tenants}"
        );
        Config::from_toml_str(&text, Path::new(&dir)).expect("config")
    }

    fn tenant(id: &str, rec: &str) -> String {
        format!("[[tenants]]\nid=\"{id}\"\n[tenants.recognition]\n{rec}\n[[tenants.routes]]\nprefix=\"\"\ntarget=\"sips:127.0.0.1:5062\"\n")
    }

    fn peer<'a>(cert: Option<&'a [u8]>, sni: Option<&'a str>, ip: &str) -> PeerIdentity<'a> {
        PeerIdentity {
            client_cert_der: cert,
            sni,
            source: ip.parse().expect("ip"),
        }
    }

    #[test]
    fn order_and_longest_prefix() {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["pbx.acme.example".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let der = cert.der().to_vec();
        let fp = hex::encode(Sha256::digest(&der));
        let cfg = config(&format!(
            "{}{}{}{}",
            tenant("wide", "source_cidrs=[\"10.0.0.0/8\"]"),
            tenant(
                "narrow",
                "source_cidrs=[\"10.1.0.0/16\", \"::ffff:0:0/96\"]"
            ),
            tenant("sni", "sni=[\"Teams.SBC.example\"]"),
            tenant("cert", "client_cert_san=[\"pbx.acme.example\"]"),
        ));
        let r = Recognizer::new(&cfg);
        let id = |p| r.recognize_with(&p).map(|(t, by)| (t.to_string(), by));
        assert_eq!(
            id(peer(None, None, "10.2.3.4")),
            Ok(("wide".into(), RecognisedBy::SourceCidr))
        );
        assert_eq!(
            id(peer(None, None, "10.1.3.4")),
            Ok(("narrow".into(), RecognisedBy::SourceCidr))
        );
        assert_eq!(
            id(peer(None, Some("teams.sbc.example"), "10.1.3.4")),
            Ok(("sni".into(), RecognisedBy::Sni))
        );
        assert_eq!(
            id(peer(Some(&der), Some("teams.sbc.example"), "10.1.3.4")),
            Ok(("cert".into(), RecognisedBy::ClientCertSan))
        );
        assert!(matches!(
            r.recognize(&peer(None, Some("other"), "192.0.2.1")),
            Err(RecognitionError::Unknown { .. })
        ));
        // Mapped IPv4 compares as IPv4.
        assert_eq!(
            id(peer(None, None, "::ffff:10.2.0.1")),
            Ok(("wide".into(), RecognisedBy::SourceCidr))
        );

        let cfg = config(&tenant("pinned", &format!("client_cert_sha256=[\"{fp}\"]")));
        let r = Recognizer::new(&cfg);
        assert_eq!(
            r.recognize_with(&peer(Some(&der), None, "192.0.2.1"))
                .map(|(t, b)| (t.to_string(), b)),
            Ok(("pinned".into(), RecognisedBy::ClientCertFingerprint))
        );
        // Garbage certificate bytes: no SANs, no panic, falls through.
        assert!(r
            .recognize(&peer(Some(b"junk"), None, "192.0.2.1"))
            .is_err());
    }

    #[test]
    fn ambiguous_certificate() {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert =
            rcgen::CertificateParams::new(vec!["a.example".to_string(), "b.example".to_string()])
                .expect("params")
                .self_signed(&key)
                .expect("cert");
        let cfg = config(&format!(
            "{}{}",
            tenant("a", "client_cert_san=[\"a.example\"]"),
            tenant("b", "client_cert_san=[\"b.example\"]"),
        ));
        let r = Recognizer::new(&cfg);
        assert!(matches!(
            r.recognize(&peer(Some(cert.der()), None, "192.0.2.1")),
            Err(RecognitionError::Ambiguous(..))
        ));
    }
}
