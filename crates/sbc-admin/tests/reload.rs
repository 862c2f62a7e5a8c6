//! Reloading the admin plane's tokens and number masking (what SIGHUP does in the
//! gateway): a removed token is refused from the next request on, a new one works, and a
//! reload naming an unknown tenant changes nothing.

use sbc_admin::Role;
use sbc_core::tenant::TenantId;
use sbc_testkit::admin::*;
use sbc_testkit::http::*;

const NEW_OPS: &str = "ops-new-1c2d3e4f5a6b7c8d";

#[tokio::test]
async fn reload_swaps_tokens_and_masking() {
    let f = start("reload", config(false)).await;
    let calls = |token: &str| request(f.addr, "GET", "/v1/calls", bearer(token));
    assert_eq!(calls(OPS).await.status, 200);
    assert_eq!(calls(NEW_OPS).await.status, 401);
    assert_eq!(calls(OPS).await.json()["calls"][0]["caller"], CALLER_A);

    let mut cfg = config(true);
    cfg.address = "127.0.0.1:0".parse().expect("addr");
    cfg.tokens.retain(|t| t.id != "ops");
    cfg.tokens.push(token("ops-new", NEW_OPS, Role::Operator));
    f.handle.reload(&cfg).expect("reload");
    let r = calls(OPS).await;
    assert_eq!(r.status, 401, "removed token refused");
    assert_eq!(r.json()["error"], "invalid token");
    let r = calls(NEW_OPS).await;
    assert_eq!(r.status, 200, "new token accepted");
    assert_eq!(
        r.json()["calls"][0]["caller"],
        "+1555****34",
        "masking reloaded"
    );
    assert_eq!(calls(VIEW_A).await.status, 200, "kept token still works");

    // A token for a tenant the gateway does not have: refused, nothing changes.
    let mut bad = cfg.clone();
    bad.redact_numbers = false;
    bad.tokens.push(token(
        "rec-z",
        "rec-z-0a1b2c3d4e5f",
        Role::Recorder(TenantId::from("z")),
    ));
    assert!(f.handle.reload(&bad).is_err());
    assert_eq!(calls("rec-z-0a1b2c3d4e5f").await.status, 401);
    let r = calls(NEW_OPS).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["calls"][0]["caller"], "+1555****34");

    // The audit log names the tokens by id, old and new.
    let lines = audit_lines(&f.audit_path);
    assert!(lines.iter().any(|l| l["token"] == "ops-new"));
    assert!(lines
        .iter()
        .any(|l| l["token"].is_null() && l["status"] == 401));
    f.handle.shutdown().await;
}
