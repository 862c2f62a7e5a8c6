//! A recording tap end to end: an SRTP call through the real gateway (SIP over TLS, the
//! media relay), found through the admin API by its registry id, tapped over HTTP; a
//! recorder socket decrypts both legs with the key the POST returned. Another tenant's
//! recorder cannot tap it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use common::*;
use sbc_admin::{AdminConfig, AdminState, AuditLog};
use sbc_core::registry::{CallRegistry, DrainState};
use sbc_media::engine::{MediaEngine, MediaSettings};
use sbc_media::srtp::{MasterKey, SrtpConfig, SrtpContext, SrtpProfile};
use sbc_sip::message::{Method, SipMessage};
use sbc_sip::server::Hooks;

const SUITE: &str = "AES_CM_128_HMAC_SHA1_80";
const CALLER_SSRC: u32 = 0x0a0a_0a0a;
const CALLEE_SSRC: u32 = 0x0b0b_0b0b;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn sdp(port: u16, tag: u32, key: &[u8]) -> String {
    format!(
        "v=0\r\no=peer 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio {port} RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\na=crypto:{tag} {SUITE} inline:{}\r\n",
        b64(key)
    )
}

/// (m=audio port, first crypto line's tag and key).
fn parse_sdp(body: &[u8]) -> (u16, u32, Vec<u8>) {
    let text = std::str::from_utf8(body).unwrap();
    let port = text
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|m| m.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    let crypto = text
        .lines()
        .filter_map(|l| l.strip_prefix("a=crypto:"))
        .find(|c| c.contains(SUITE))
        .expect("our suite offered");
    let mut parts = crypto.split_whitespace();
    let tag = parts.next().unwrap().parse().unwrap();
    let inline = parts.nth(1).unwrap().strip_prefix("inline:").unwrap();
    let key = b64_decode(inline.split('|').next().unwrap());
    (port, tag, key)
}

fn b64_decode(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn with_sdp(mut m: SipMessage, body: &str) -> SipMessage {
    m.set_header("Content-Type", "application/sdp");
    m.set_body(body.as_bytes().to_vec());
    m
}

fn ctx(key: &[u8]) -> SrtpContext {
    let p: SrtpProfile = SUITE.parse().unwrap();
    SrtpContext::new(
        p,
        &MasterKey::from_concatenated(p, key).unwrap(),
        SrtpConfig::default(),
    )
    .unwrap()
}

fn rtp(seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, 0];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

fn send(sock: &UdpSocket, c: &mut SrtpContext, pkt: &[u8], port: u16) {
    let mut buf = vec![0u8; pkt.len() + 64];
    buf[..pkt.len()].copy_from_slice(pkt);
    let n = c.protect_rtp(&mut buf, pkt.len()).unwrap();
    sock.send_to(&buf[..n], ("127.0.0.1", port)).unwrap();
}

fn recv(sock: &UdpSocket, c: &mut SrtpContext) -> Vec<u8> {
    let mut buf = [0u8; 2048];
    let (n, _) = sock.recv_from(&mut buf).expect("a packet");
    let mut p = buf[..n].to_vec();
    let len = c.unprotect_rtp(&mut p).expect("authenticates");
    p.truncate(len);
    p
}

/// A string field of a flat JSON object (enough for these answers).
fn field(json: &str, name: &str) -> String {
    let start = json.find(&format!("\"{name}\":\"")).expect(name) + name.len() + 4;
    json[start..].split('"').next().unwrap().to_string()
}

#[tokio::test]
async fn a_live_call_is_tapped_through_the_admin_api() {
    let prometheus = sbc_admin::install_prometheus().unwrap();
    let world = World::new("tap-e2e");
    let callee = Callee::new(&world.callee_leaf).await;
    let op = "operator-token-0123456789";
    let rec_other = "recorder-other-0123456789";
    let text = format!(
        "[media]\nport_min = 32400\nport_max = 32499\n\
[admin]\naddress = \"127.0.0.1:0\"\n\
[[admin.tokens]]\nid = \"ops\"\nsha256 = \"{}\"\nrole = \"operator\"\n\
[[admin.tokens]]\nid = \"rec-other\"\nsha256 = \"{}\"\nrole = \"recorder\"\ntenant = \"other\"\n{}\n{}\n{}",
        sbc_admin::token_sha256_hex(op),
        sbc_admin::token_sha256_hex(rec_other),
        world.listener(""),
        world.tenant("demo", "source_cidrs = [\"127.0.0.0/8\"]", "", callee.addr),
        world.tenant("other", "sni = [\"other.example\"]", "", callee.addr),
    );
    let cfg = Arc::new(world.config(&text));
    let admin_cfg =
        AdminConfig::from_toml_value(cfg.admin_section.clone().unwrap(), &cfg.base_dir).unwrap();
    let lo = "127.0.0.1".parse().unwrap();
    let mut settings = MediaSettings::new(lo, lo, cfg.media.port_min, cfg.media.port_max);
    settings.workers = 1;
    let engine = MediaEngine::start(settings).unwrap();
    let registry = Arc::new(CallRegistry::new());
    let drain = Arc::new(DrainState::new());
    let gw = sbc_sip::server::start_with(
        cfg.clone(),
        Hooks {
            registry: Some(registry.clone()),
            drain: Some(drain.clone()),
            media: Some(engine.control()),
        },
    )
    .await
    .unwrap();
    let audit_path = world.dir.join("audit.log");
    let admin = sbc_admin::serve(
        admin_cfg,
        AdminState {
            registry,
            usage: gw.usage_source(),
            drain,
            prometheus,
            tenants: cfg.tenants.iter().map(|t| t.id.clone()).collect(),
            audit: Arc::new(AuditLog::open(&audit_path).unwrap()),
            taps: Some(engine.tap_control()),
        },
    )
    .await
    .unwrap();
    let a = admin.local_addr();

    // An SRTP call, answered.
    let caller_rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let callee_rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let recorder = UdpSocket::bind("127.0.0.1:0").unwrap();
    for s in [&caller_rtp, &callee_rtp, &recorder] {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    }
    let k1: Vec<u8> = (0..30).collect();
    let k3: Vec<u8> = (100..130).collect();
    let mut caller = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, None).await;
    let offer = sdp(caller_rtp.local_addr().unwrap().port(), 1, &k1);
    caller
        .send(&with_sdp(
            invite("+15551234", "tap-1@platform", "z9hG4bKt1", "atag"),
            &offer,
        ))
        .await;
    let mut c = callee.accept().await;
    let inv = c.recv_where(|m| m.method() == Some(&Method::Invite)).await;
    let (gw_callee_port, tag, k2) = parse_sdp(inv.body());
    let answer_sdp = sdp(callee_rtp.local_addr().unwrap().port(), tag, &k3);
    c.send(&with_sdp(answer(&inv, 200, "btag"), &answer_sdp))
        .await;
    let ok = caller.recv_where(|m| m.status() == Some(200)).await;
    let (gw_caller_port, _, k4) = parse_sdp(ok.body());

    // Found by its registry id; another tenant's recorder cannot tap it.
    let (status, calls) = http(a, "GET", "/v1/calls", Some(op), "").await;
    assert_eq!(status, 200, "{calls}");
    let call_id = field(&calls, "id");
    let taps = format!("/v1/calls/{call_id}/taps");
    let body = r#"{"legs":"both","transport":"srtp","destination":"DEST"}"#
        .replace("DEST", &recorder.local_addr().unwrap().to_string());
    let (status, _) = http(a, "POST", &taps, Some(rec_other), &body).await;
    assert_eq!(status, 404);
    let (status, started) = http(a, "POST", &taps, Some(op), &body).await;
    assert_eq!(status, 201, "{started}");
    let tap_id = field(&started, "tap_id");
    let key = b64_decode(field(&started, "key").strip_prefix("inline:").unwrap());
    let mut rec = ctx(&key);

    // Media both ways; the recorder decrypts each copy.
    let mut tx_a = ctx(&k1);
    let mut rx_b = ctx(&k2);
    let mut tx_b = ctx(&k3);
    let mut rx_a = ctx(&k4);
    for seq in 1..=10u16 {
        let p = rtp(seq, CALLER_SSRC, &[seq as u8; 160]);
        send(&caller_rtp, &mut tx_a, &p, gw_caller_port);
        assert_eq!(recv(&callee_rtp, &mut rx_b), p);
        assert_eq!(recv(&recorder, &mut rec), p, "caller copy {seq}");
        let p = rtp(seq, CALLEE_SSRC, &[0xa0 ^ seq as u8; 160]);
        send(&callee_rtp, &mut tx_b, &p, gw_callee_port);
        assert_eq!(recv(&caller_rtp, &mut rx_a), p);
        assert_eq!(recv(&recorder, &mut rec), p, "callee copy {seq}");
    }
    let mut listed = String::new();
    for _ in 0..100 {
        listed = http(a, "GET", &taps, Some(op), "").await.1;
        if listed.contains("\"packets_sent\":20") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(listed.contains("\"packets_sent\":20"), "{listed}");
    assert!(listed.contains("\"packets_dropped\":0"), "{listed}");
    assert!(!listed.contains("inline:"), "{listed}");
    let (_, metrics) = http(a, "GET", "/metrics", Some(op), "").await;
    assert!(
        metrics.contains("sbc_tap_packets_sent_total 20"),
        "{metrics}"
    );
    let (status, _) = http(a, "DELETE", &format!("/v1/taps/{tap_id}"), Some(op), "").await;
    assert_eq!(status, 204);
    let (_, listed) = http(a, "GET", &taps, Some(op), "").await;
    assert_eq!(listed, "{\"taps\":[]}");

    admin.shutdown().await;
    gw.shutdown().await;
    engine.shutdown();
    let audit = std::fs::read_to_string(&audit_path).unwrap();
    assert!(
        !audit.contains(&b64(&key)),
        "the tap key is never in the audit log"
    );
    assert!(sbc_admin::verify_audit(&audit_path).unwrap() >= 6);
}
