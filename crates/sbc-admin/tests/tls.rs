//! The admin plane over HTTPS with client certificates, configured from TOML like the
//! gateway will do it.

use rcgen::ExtendedKeyUsagePurpose;
use rustls::pki_types::ServerName;
use sbc_admin::AdminConfig;
use sbc_testkit::admin::*;
use sbc_testkit::files::{temp_dir, write};
use sbc_testkit::http::*;
use sbc_testkit::pki::{client_config, Ca, Leaf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

fn client(server_ca: &Ca, client_cert: Option<&Leaf>) -> TlsConnector {
    TlsConnector::from(client_config(&server_ca.pem, client_cert))
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

#[tokio::test]
async fn https_with_client_certificates() {
    let dir = temp_dir("tls-config");
    let server_ca = Ca::new("admin server ca");
    let ops_ca = Ca::new("ops client ca");
    let server = server_ca.issue_with_usage(
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let ops_client = ops_ca.issue_with_usage(&["ops.example"], ExtendedKeyUsagePurpose::ClientAuth);
    let rogue_ca = Ca::new("rogue ca");
    let rogue_client =
        rogue_ca.issue_with_usage(&["rogue.example"], ExtendedKeyUsagePurpose::ClientAuth);
    write(&dir, "admin.pem", &server.cert_pem);
    write(&dir, "admin-key.pem", &server.key_pem);
    write(&dir, "ops-ca.pem", &ops_ca.pem);

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
    let server_ca = Ca::new("admin server ca");
    let server = server_ca.issue_with_usage(&["localhost"], ExtendedKeyUsagePurpose::ServerAuth);
    write(&dir, "c.pem", &server.cert_pem);
    write(&dir, "k.pem", &server.key_pem);
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

#[tokio::test]
async fn a_reload_swaps_the_https_certificate_for_new_connections_and_refuses_a_mismatched_key() {
    let dir = temp_dir("tls-hot");
    let old_ca = Ca::new("admin server ca, old");
    let new_ca = Ca::new("admin server ca, new");
    let old = old_ca.issue_with_usage(&["localhost"], ExtendedKeyUsagePurpose::ServerAuth);
    let new = new_ca.issue_with_usage(&["localhost"], ExtendedKeyUsagePurpose::ServerAuth);
    let text = "[admin]\ncertificate = \"c.pem\"\nprivate_key = \"k.pem\"\n";
    let load = |cert: &Leaf, key: &Leaf| {
        write(&dir, "c.pem", &cert.cert_pem);
        write(&dir, "k.pem", &key.key_pem);
        let mut cfg = AdminConfig::from_config_file_str(text, &dir)
            .expect("valid")
            .expect("section");
        cfg.tokens = tokens();
        cfg
    };
    let f = start("tls-hot", load(&old, &old)).await;
    let healthz = |ca: &Ca| {
        let connector = client(ca, None);
        let addr = f.addr;
        async move { https(&connector, addr, "GET", "/healthz", None).await }
    };
    assert_eq!(healthz(&old_ca).await.expect("old cert").status, 200);

    // New certificate and key: new connections get them.
    f.handle.reload(&load(&new, &new)).expect("reload");
    assert_eq!(healthz(&new_ca).await.expect("new cert").status, 200);
    assert!(
        healthz(&old_ca).await.is_err(),
        "the old certificate is gone"
    );

    // The old certificate with the new key: refused, the new one stays in use.
    f.handle
        .reload(&load(&old, &new))
        .expect("tokens still reload");
    assert_eq!(healthz(&new_ca).await.expect("kept").status, 200);
    f.handle.shutdown().await;
}
