//! TLS configurations for the probes, from PEM text.
//!
//! Owns: a client configuration trusting given CAs (with an optional client certificate)
//! and a server configuration presenting one certificate. Must not: trust anything not
//! given (no public roots: a probe talks to a gateway or a trunk whose CA it was handed).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::ProbeError;

fn certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, ProbeError> {
    let v: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| ProbeError::Tls(format!("{what}: {e}")))?;
    if v.is_empty() {
        return Err(ProbeError::Tls(format!(
            "{what}: no certificate in the PEM"
        )));
    }
    Ok(v)
}

fn key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, ProbeError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| ProbeError::Tls(format!("{what}: {e}")))
}

/// A client trusting the CAs in `ca_pem`, presenting `client` (certificate, key PEM) when
/// given.
pub fn client_config(
    ca_pem: &[u8],
    client: Option<(&[u8], &[u8])>,
) -> Result<Arc<rustls::ClientConfig>, ProbeError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca_pem, "CA")? {
        roots
            .add(c)
            .map_err(|e| ProbeError::Tls(format!("CA: {e}")))?;
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let cfg = match client {
        Some((cert, k)) => builder
            .with_client_auth_cert(certs(cert, "client certificate")?, key(k, "client key")?)
            .map_err(|e| ProbeError::Tls(format!("client certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

/// A server presenting `cert_pem` (chain, leaf first) with `key_pem`, asking no client
/// certificate.
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>, ProbeError> {
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            certs(cert_pem, "certificate")?,
            key(key_pem, "private key")?,
        )
        .map_err(|e| ProbeError::Tls(format!("certificate: {e}")))?;
    Ok(Arc::new(cfg))
}
