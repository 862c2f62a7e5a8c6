//! The admin plane over HTTPS with client certificates, configured from TOML like the
//! gateway will do it.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use sbc_admin::AdminConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    let cert = p.self_signed(&key).expect("ca cert");
    Ca { cert, key }
}

/// A leaf signed by `ca`: (cert PEM, key PEM).
fn leaf(ca: &Ca, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("params");
    p.extended_key_usages = vec![usage];
    let cert = p.signed_by(&key, &ca.cert, &ca.key).expect("leaf");
    (cert.pem(), key.serialize_pem())
}

fn client(server_ca: &Ca, client_cert: Option<&(String, String)>) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(server_ca.cert.der().clone()).expect("root");
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let cfg = match client_cert {
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<_, _>>()
                    .expect("chain");
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    TlsConnector::from(Arc::new(cfg))
}

async fn https(
    connector: &TlsConnector,
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    auth: Option<String>,
) -> std::io::Result<Resp> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("name");
    let tls = connector.connect(name, tcp).await?;
    send(tls, method, path, auth).await
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).expect("write");
}

#[tokio::test]
async fn https_with_client_certificates() {
    let dir = temp_dir("tls-config");
    let server_ca = ca("admin server ca");
    let ops_ca = ca("ops client ca");
    let (cert, key) = leaf(
        &server_ca,
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let ops_client = leaf(
        &ops_ca,
        &["ops.example"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let rogue_ca = ca("rogue ca");
    let rogue_client = leaf(
        &rogue_ca,
        &["rogue.example"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    write(&dir, "admin.pem", &cert);
    write(&dir, "admin-key.pem", &key);
    write(&dir, "ops-ca.pem", &ops_ca.cert.pem());

    // The [admin] section of a whole gateway config file; other sections are not ours.
    let text = format!(
        r#"
[sip]
max_headers = 50

[admin]
address = "127.0.0.1:0"
certificate = "admin.pem"
private_key = "admin-key.pem"
client_ca = "ops-ca.pem"
redact_numbers = true

[[admin.tokens]]
id = "ops"
sha256 = "{}"
role = "operator"

[[admin.tokens]]
id = "view-a"
sha256 = "{}"
role = "viewer"
tenant = "a"
"#,
        sbc_admin::token_sha256_hex(OPS),
        sbc_admin::token_sha256_hex(VIEW_A),
    );
    let cfg = AdminConfig::from_config_file_str(&text, &dir)
        .expect("valid")
        .expect("has [admin]");
    assert!(cfg.tls.as_ref().is_some_and(|t| t.client_ca_pem.is_some()));
    assert!(!format!("{cfg:?}").contains("PRIVATE KEY"), "key in Debug");
    let f = start("tls", cfg).await;

    let good = client(&server_ca, Some(&ops_client));
    let r = https(&good, f.addr, "GET", "/v1/calls", bearer(VIEW_A))
        .await
        .expect("https exchange");
    assert_eq!(r.status, 200);
    let body = r.json();
    assert_eq!(body["calls"].as_array().map(Vec::len), Some(1));
    assert_eq!(body["calls"][0]["caller"], "+1555****34");
    let r = https(&good, f.addr, "GET", "/healthz", None)
        .await
        .expect("https exchange");
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    // The certificate opens the connection; a token is still needed for /v1.
    let r = https(&good, f.addr, "GET", "/v1/calls", None)
        .await
        .expect("https exchange");
    assert_eq!(r.status, 401);
    let r = https(&good, f.addr, "POST", "/v1/drain", bearer(OPS))
        .await
        .expect("https exchange");
    assert_eq!(r.status, 200);
    assert!(f.drain.is_draining());

    // No client certificate, or one from another CA: no HTTP answer at all.
    for (what, connector) in [
        ("no client cert", client(&server_ca, None)),
        ("rogue client cert", client(&server_ca, Some(&rogue_client))),
    ] {
        let r = https(&connector, f.addr, "GET", "/healthz", None).await;
        assert!(r.is_err(), "{what}: {r:?}");
    }
    // A client that does not trust the server's CA refuses it.
    let wrong_trust = client(&ops_ca, Some(&ops_client));
    assert!(https(&wrong_trust, f.addr, "GET", "/healthz", None)
        .await
        .is_err());
    // Plain HTTP to the HTTPS port gets no HTTP answer.
    let plain = send(
        TcpStream::connect(f.addr).await.expect("connect"),
        "GET",
        "/healthz",
        None,
    )
    .await;
    assert!(
        plain.is_err() || plain.as_ref().is_ok_and(|r| r.status != 200),
        "{plain:?}"
    );

    // Audit lines for the /v1 requests over TLS: three, chained.
    assert_eq!(sbc_admin::verify_audit(&f.audit_path), Ok(3));
    f.handle.shutdown().await;
}

#[tokio::test]
async fn https_without_client_certificates() {
    let dir = temp_dir("tls-plain");
    let server_ca = ca("admin server ca");
    let (cert, key) = leaf(
        &server_ca,
        &["localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    write(&dir, "c.pem", &cert);
    write(&dir, "k.pem", &key);
    let text = "[admin]\ncertificate = \"c.pem\"\nprivate_key = \"k.pem\"\n";
    let mut cfg = AdminConfig::from_config_file_str(text, &dir)
        .expect("valid")
        .expect("section");
    cfg.tokens = tokens();
    let f = start("tls-nocc", cfg).await;
    let connector = client(&server_ca, None);
    let r = https(
        &connector,
        f.addr,
        "GET",
        &format!("/v1/calls/{}", f.call_a),
        bearer(OPS),
    )
    .await
    .expect("https exchange");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["caller"], CALLER_A);
    f.handle.shutdown().await;
}
