//! A throwaway PKI: CAs and leaves made fresh for each test, and the rustls client and
//! server configurations built from them.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A self-signed CA; `pem` is its certificate.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    pub pem: String,
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem = cert.pem();
        Ca { cert, key, pem }
    }

    /// A leaf for `sans` with no extended key usage.
    pub fn issue(&self, sans: &[&str]) -> Leaf {
        self.issue_leaf(sans, None)
    }

    /// A leaf for `sans` restricted to one extended key usage (server or client auth).
    pub fn issue_with_usage(&self, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        self.issue_leaf(sans, Some(usage))
    }

    /// A leaf for `sans` that expires on 1 January of `year` (to tell two certificates
    /// apart by their expiry).
    pub fn issue_until(&self, sans: &[&str], year: i32) -> Leaf {
        self.issue_leaf_with(sans, None, Some(year))
    }

    /// A leaf for `sans` with an RSA 2048 key (signed PKCS#1 SHA-256 by this CA's key):
    /// what many deployments still use, and far costlier to sign with than ECDSA P-256
    /// (the load benches compare the two).
    pub fn issue_rsa(&self, sans: &[&str]) -> Leaf {
        use aws_lc_rs::encoding::AsDer;
        let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let der = rsa.as_der().unwrap();
        let key = KeyPair::from_pkcs8_der_and_sign_algo(
            &rustls::pki_types::PrivatePkcs8KeyDer::from(der.as_ref().to_vec()),
            &rcgen::PKCS_RSA_SHA256,
        )
        .unwrap();
        let params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn issue_leaf(&self, sans: &[&str], usage: Option<ExtendedKeyUsagePurpose>) -> Leaf {
        self.issue_leaf_with(sans, usage, None)
    }

    fn issue_leaf_with(
        &self,
        sans: &[&str],
        usage: Option<ExtendedKeyUsagePurpose>,
        until: Option<i32>,
    ) -> Leaf {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        if let Some(u) = usage {
            params.extended_key_usages = vec![u];
        }
        if let Some(year) = until {
            params.not_after = rcgen::date_time_ymd(year, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

impl Leaf {
    /// The certificate chain, DER.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .map(|c| c.unwrap())
            .collect()
    }

    /// The leaf certificate, DER (what a TLS peer presents first).
    pub fn leaf_der(&self) -> Vec<u8> {
        self.chain()[0].as_ref().to_vec()
    }

    /// The private key, DER.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap()
    }
}

/// A TLS client trusting the CAs in `ca_pem`, presenting `client` when given.
pub fn client_config(ca_pem: &str, client: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let cfg = match client {
        Some(leaf) => builder
            .with_client_auth_cert(leaf.chain(), leaf.key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    Arc::new(cfg)
}

/// A TLS server presenting `leaf`, asking no client certificate.
pub fn server_config(leaf: &Leaf) -> Arc<rustls::ServerConfig> {
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(leaf.chain(), leaf.key())
        .unwrap();
    Arc::new(cfg)
}
