//! The hot standby endpoints (`POST /v1/cluster/takeover`, `GET /v1/cluster/standby`)
//! over a real admin listener: operators only, 409 on a node without a standby, the
//! takeover's summary and the status as the standby reports them, 503 when the store does
//! not answer, each request audited.
//!
//! The standby here is a stand-in that records its takeovers: the admin crate sees only
//! sbc-core's `StandbyControl`; the real one (sbc-cluster over Redis) is driven through
//! the gateway in the root package's `tests/cluster_standby.rs`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use sbc_core::standby::{
    StandbyControl, StandbyStatus, TakeoverError, TakeoverFuture, TakeoverSummary,
};
use sbc_testkit::admin::*;
use sbc_testkit::http::*;

#[derive(Debug, Default)]
struct FakeStandby {
    takeovers: AtomicU32,
    /// The next takeover fails with this store error.
    fail: Mutex<Option<String>>,
    last: Mutex<Option<TakeoverSummary>>,
}

impl StandbyControl for FakeStandby {
    fn take_over(&self) -> TakeoverFuture<'_> {
        Box::pin(async move {
            if let Some(e) = self.fail.lock().unwrap_or_else(|p| p.into_inner()).take() {
                return Err(TakeoverError::Store(e));
            }
            // The first claims three calls, of which one is refused; later ones nothing.
            let n = self.takeovers.fetch_add(1, Ordering::SeqCst);
            let s = if n == 0 {
                TakeoverSummary {
                    claimed: 3,
                    installed: 2,
                    duration_ms: 41,
                }
            } else {
                TakeoverSummary {
                    claimed: 0,
                    installed: 0,
                    duration_ms: 1,
                }
            };
            *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(s.clone());
            Ok(s)
        })
    }

    fn status(&self) -> StandbyStatus {
        StandbyStatus {
            peer: "gw-a".to_string(),
            warm_calls: 3 - self.takeovers.load(Ordering::SeqCst).min(1) * 3,
            lag_ms: Some(12),
            last_takeover: self.last.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }
}

#[tokio::test]
async fn without_a_standby_both_answer_409_saying_why() {
    let f = start("standby-none", config(false)).await;
    for (method, path) in [
        ("POST", "/v1/cluster/takeover"),
        ("GET", "/v1/cluster/standby"),
    ] {
        let r = request(f.addr, method, path, bearer(OPS)).await;
        assert_eq!(r.status, 409, "{method} {path}: {}", r.text());
        assert!(
            r.json()["error"]
                .as_str()
                .is_some_and(|e| e.contains("not a standby") && e.contains("[cluster.standby]")),
            "{}",
            r.text()
        );
    }
    f.handle.shutdown().await;
}

#[tokio::test]
async fn operators_take_over_and_read_the_status() {
    let f = start("standby-ops", config(false)).await;
    let standby = Arc::new(FakeStandby::default());
    assert!(f.handle.set_standby(standby.clone()));
    assert!(
        !f.handle.set_standby(Arc::new(FakeStandby::default())),
        "set once"
    );

    // Tenant-scoped tokens and no token: refused, and no takeover ran.
    for token in [VIEW_A, REC_A] {
        for (method, path) in [
            ("POST", "/v1/cluster/takeover"),
            ("GET", "/v1/cluster/standby"),
        ] {
            let r = request(f.addr, method, path, bearer(token)).await;
            assert_eq!(r.status, 403, "{method} {path}: {}", r.text());
            assert!(r.json()["error"]
                .as_str()
                .is_some_and(|e| e.contains("operator")));
        }
    }
    let r = request(f.addr, "POST", "/v1/cluster/takeover", None).await;
    assert_eq!(r.status, 401);
    assert_eq!(standby.takeovers.load(Ordering::SeqCst), 0);

    let r = request(f.addr, "GET", "/v1/cluster/standby", bearer(OPS)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["peer"], "gw-a");
    assert_eq!(v["warm_calls"], 3);
    assert_eq!(v["lag_ms"], 12);
    assert!(v["last_takeover"].is_null());

    let r = request(f.addr, "POST", "/v1/cluster/takeover", bearer(OPS)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"claimed": 3, "installed": 2, "refused": 1, "duration_ms": 41})
    );
    // Idempotent as the store makes it: the second claims nothing.
    let r = request(f.addr, "POST", "/v1/cluster/takeover", bearer(OPS)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["claimed"], 0);
    assert_eq!(standby.takeovers.load(Ordering::SeqCst), 2);

    let v = request(f.addr, "GET", "/v1/cluster/standby", bearer(OPS))
        .await
        .json();
    assert_eq!(v["warm_calls"], 0);
    assert_eq!(v["last_takeover"]["claimed"], 0);

    // Redis not answering: 503 with the reason, nothing counted as done.
    *standby.fail.lock().expect("lock") = Some("connection refused".to_string());
    let r = request(f.addr, "POST", "/v1/cluster/takeover", bearer(OPS)).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.json()["error"]
        .as_str()
        .is_some_and(|e| e.contains("cluster store") && e.contains("connection refused")));
    assert_eq!(standby.takeovers.load(Ordering::SeqCst), 2);

    // Every request audited, refused ones included, with the token's id.
    let lines = audit_lines(&f.audit_path);
    let takeovers: Vec<_> = lines
        .iter()
        .filter(|l| l["path"] == "/v1/cluster/takeover")
        .map(|l| {
            (
                l["token"].as_str().unwrap_or("-").to_string(),
                l["status"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        takeovers,
        [
            ("view-a".to_string(), Some(403)),
            ("rec-a".to_string(), Some(403)),
            ("-".to_string(), Some(401)),
            ("ops".to_string(), Some(200)),
            ("ops".to_string(), Some(200)),
            ("ops".to_string(), Some(503)),
        ]
    );
    f.handle.shutdown().await;
}
