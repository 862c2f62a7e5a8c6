//! What the gateway logs: captured through a tracing subscriber writing to memory.
//! Phone numbers are redacted when configured, no key material appears, and a listener
//! certificate close to expiry is warned about with a stable `event` field.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sbc_sip::message::Method;
use sbc_testkit::logs::Capture;
use sbc_testkit::*;

/// (year, month, day) of a day count since 1970-01-01 (proleptic Gregorian).
fn civil(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as i32, m as u8, d as u8)
}

#[tokio::test]
async fn numbers_redacted_no_keys_and_certificate_expiry_warned() {
    let capture = Capture::default();
    tracing_subscriber::fmt()
        .with_writer(capture.clone())
        .with_ansi(false)
        .with_env_filter("info")
        .init();

    let world = World::new("logging");
    // A gateway certificate that expires in ten days.
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400
        + 10;
    let (y, m, d) = civil(days as i64);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_after = rcgen::date_time_ymd(y, m, d);
    let cert = params.self_signed(&key).unwrap();
    let cert_file = write(&world.dir, "soon.pem", &cert.pem());
    let key_pem = key.serialize_pem();
    let key_file = write(&world.dir, "soon.key", &key_pem);

    let callee = Callee::new(&world.callee_leaf).await;
    let text = format!(
        "[logging]\nredact_numbers = \"mask\"\n[[listeners]]\nname = \"expiring\"\naddress = \"127.0.0.1:0\"\ncertificate = {cert_file:?}\nprivate_key = {key_file:?}\n{}",
        world.tenant("demo", "source_cidrs = [\"127.0.0.0/8\"]", "", callee.addr)
    );
    let gw = start_gateway(world.config(&text)).await;
    let mut caller = Peer::connect(gw.sip_addrs[0], &cert.pem(), None).await;
    caller
        .send(&invite(
            "+15551234567",
            "log-1@platform",
            "z9hG4bKlog1",
            "atag",
        ))
        .await;
    let mut c = callee.accept().await;
    let inv = c.recv_where(|m| m.method() == Some(&Method::Invite)).await;
    c.send(&answer(&inv, 486, "btag")).await;
    caller.recv_where(|m| m.status() == Some(486)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    gw.shutdown().await;

    let logs = capture.text();
    assert!(
        logs.contains("event=\"certificate_expiring\"")
            || logs.contains("event=certificate_expiring"),
        "{logs}"
    );
    assert!(
        logs.contains("days_left=9") || logs.contains("days_left=10"),
        "{logs}"
    );
    assert!(
        logs.contains("+155******67"),
        "the called number appears masked: {logs}"
    );
    assert!(
        !logs.contains("15551234567"),
        "no unredacted number: {logs}"
    );
    let key_body: String = key_pem.lines().nth(1).unwrap().to_string();
    assert!(
        !logs.contains(&key_body) && !logs.contains("PRIVATE KEY"),
        "no key material"
    );
}
