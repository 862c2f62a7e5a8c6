//! What the admin plane logs holds no token and no number: every log line at every level,
//! captured while requests with good, bad and foreign tokens go through.

use std::io;
use std::sync::{Arc, Mutex};

use sbc_testkit::admin::*;
use sbc_testkit::http::*;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl io::Write for Capture {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logs_hold_no_token_and_no_number() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("only subscriber in this binary");

    let f = start("logs", config(false)).await;
    for (method, path, auth) in [
        ("GET", "/v1/calls".to_string(), bearer(OPS)),
        ("GET", format!("/v1/calls/{}", f.call_a), bearer(VIEW_A)),
        ("GET", format!("/v1/calls/{}", f.call_a), bearer(VIEW_B)),
        ("GET", "/v1/calls".to_string(), bearer("guessed-token-123")),
        ("POST", "/v1/drain".to_string(), bearer(REC_A)),
        ("POST", "/v1/drain".to_string(), bearer(OPS)),
    ] {
        request(f.addr, method, &path, auth).await;
    }
    f.handle.shutdown().await;

    let logs = String::from_utf8(capture.0.lock().expect("lock").clone()).expect("utf-8");
    // The capture works: the listener and the drain were logged.
    assert!(logs.contains("admin plane listening"), "{logs}");
    assert!(
        logs.contains("drain started through the admin API"),
        "{logs}"
    );
    assert!(
        logs.contains("token=ops"),
        "the token's id is logged: {logs}"
    );
    for secret in [
        OPS,
        VIEW_A,
        VIEW_B,
        REC_A,
        "guessed-token-123",
        CALLER_A,
        CALLEE_A,
    ] {
        assert!(!logs.contains(secret), "logs hold {secret}:\n{logs}");
    }
}
