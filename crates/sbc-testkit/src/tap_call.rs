//! An SRTP call through the real gateway, its media relay and its admin plane, for the
//! recording tap tests (`tests/tap_e2e.rs`, `tests/tap_ws.rs`, `tests/auto_tap.rs`): the
//! caller and callee each hold an SRTP context per direction and check that what one sends
//! the other gets.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sbc_admin::{AdminConfig, AdminHandle, AdminState, AuditLog};
use sbc_core::registry::{CallRegistry, DrainState};
use sbc_media::engine::{MediaEngine, MediaSettings};
use sbc_media::srtp::SrtpContext;
use sbc_sip::message::{Method, SipMessage};
use sbc_sip::server::{Hooks, ServerHandle};

use crate::admin::prometheus;
use crate::http::http;
use crate::media::{self, ctx, parse_sdp, recv_srtp, rtp, send_srtp, with_sdp, Sdp};
use crate::sip::{answer, in_dialog, invite, Callee, Peer, World};

pub const SUITE: &str = "AES_CM_128_HMAC_SHA1_80";
pub const CALLER_SSRC: u32 = 0x0a0a_0a0a;
pub const CALLEE_SSRC: u32 = 0x0b0b_0b0b;

/// An SDP offer or answer: one PCMU audio stream, SRTP with one key of [`SUITE`].
fn sdp(port: u16, tag: u32, key: &[u8]) -> String {
    Sdp::audio(port).crypto(tag, SUITE, key).build()
}

/// What the caller (0) or the callee (1) sends as packet `seq`.
pub fn payload(leg: u8, seq: u16) -> Vec<u8> {
    let fill = if leg == 0 {
        seq as u8
    } else {
        0xa0 ^ seq as u8
    };
    vec![fill; 160]
}

/// A string field of a flat JSON object (enough for these answers).
pub fn field(json: &str, name: &str) -> String {
    let start = json.find(&format!("\"{name}\":\"")).expect(name) + name.len() + 4;
    json[start..].split('"').next().unwrap().to_string()
}

/// `GET {taps}` until the listing contains `until` (counters catch up with the worker
/// within a few ms), at most a second; the last listing either way.
pub async fn tap_listing(admin: SocketAddr, taps: &str, token: &str, until: &str) -> String {
    let mut listed = String::new();
    for _ in 0..100 {
        listed = http(admin, "GET", taps, Some(token), "").await.1;
        if listed.contains(until) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    listed
}

/// The gateway (SIP, media relay with one worker, admin plane) on loopback, with tenants
/// `demo` (source 127.0.0.0/8) and `other` (SNI only).
pub struct Rig {
    pub world: World,
    pub callee: Callee,
    pub gw: ServerHandle,
    pub engine: MediaEngine,
    pub admin: AdminHandle,
    pub audit_path: PathBuf,
}

impl Rig {
    /// `admin_tokens`: `[[admin.tokens]]` sections; `demo_media`: lines of demo's
    /// `[tenants.media]` (none when empty); `ports`: the media port range.
    pub async fn start(tag: &str, ports: (u16, u16), admin_tokens: &str, demo_media: &str) -> Rig {
        Rig::start_with(tag, ports, admin_tokens, demo_media, "").await
    }

    /// As [`Rig::start`], with `top` (whole sections, e.g. `[logging]`) at the head of
    /// the config.
    pub async fn start_with(
        tag: &str,
        ports: (u16, u16),
        admin_tokens: &str,
        demo_media: &str,
        top: &str,
    ) -> Rig {
        let prometheus = prometheus();
        let world = World::new(tag);
        let callee = Callee::new(&world.callee_leaf).await;
        let demo_media = if demo_media.is_empty() {
            String::new()
        } else {
            format!("[tenants.media]\n{demo_media}\n")
        };
        let text = format!(
            "{top}\n[media]\nport_min = {}\nport_max = {}\n\
[admin]\naddress = \"127.0.0.1:0\"\n{admin_tokens}\n{}\n{}{demo_media}\n{}",
            ports.0,
            ports.1,
            world.listener(""),
            world.tenant("demo", "source_cidrs = [\"127.0.0.0/8\"]", "", callee.addr),
            world.tenant("other", "sni = [\"other.example\"]", "", callee.addr),
        );
        let cfg = Arc::new(world.config(&text));
        let admin_cfg =
            AdminConfig::from_toml_value(cfg.admin_section.clone().unwrap(), &cfg.base_dir)
                .unwrap();
        let lo = "127.0.0.1".parse().unwrap();
        let mut settings = MediaSettings::new(lo, lo, cfg.media.port_min, cfg.media.port_max);
        settings.workers = 1;
        let engine = MediaEngine::start(settings).unwrap();
        let registry = Arc::new(CallRegistry::new());
        let drain = Arc::new(DrainState::new());
        let audit_path = world.dir.join("audit.log");
        let audit = Arc::new(AuditLog::open(&audit_path).unwrap());
        let gw = sbc_sip::server::start_with(
            cfg.clone(),
            Hooks {
                registry: Some(registry.clone()),
                drain: Some(drain.clone()),
                media: Some(engine.control()),
                cluster: None,
                recording: Some(Arc::new(engine.clone())),
                audit: Some(audit.clone()),
                replica: None,
                media_takeover: None,
            },
        )
        .await
        .unwrap();
        let admin = sbc_admin::serve(
            admin_cfg,
            AdminState {
                registry,
                usage: gw.usage_source(),
                drain,
                prometheus,
                tenants: cfg.tenants.iter().map(|t| t.id.clone()).collect(),
                audit,
                taps: Some(engine.tap_control()),
                recordings: Some(gw.recording_control()),
            },
        )
        .await
        .unwrap();
        Rig {
            world,
            callee,
            gw,
            engine,
            admin,
            audit_path,
        }
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr()
    }

    pub async fn shutdown(self) {
        self.admin.shutdown().await;
        self.gw.shutdown().await;
        self.engine.shutdown();
    }
}

/// An answered SRTP call of tenant `demo`.
pub struct TapCall {
    caller: Peer,
    callee: Peer,
    ok: SipMessage,
    sip_call_id: String,
    callee_sip_call_id: String,
    caller_rtp: UdpSocket,
    callee_rtp: UdpSocket,
    tx_a: SrtpContext,
    rx_a: SrtpContext,
    tx_b: SrtpContext,
    rx_b: SrtpContext,
    gw_caller_port: u16,
    gw_callee_port: u16,
}

impl TapCall {
    /// INVITE with an SRTP offer, 200 with an SRTP answer.
    pub async fn place(rig: &Rig, sip_call_id: &str) -> TapCall {
        let caller_rtp = media::peer();
        let callee_rtp = media::peer();
        let k1: Vec<u8> = (0..30).collect();
        let k3: Vec<u8> = (100..130).collect();
        let mut caller = Peer::connect(rig.gw.sip_addrs[0], &rig.world.gw_ca.pem, None).await;
        let offer = sdp(caller_rtp.local_addr().unwrap().port(), 1, &k1);
        caller
            .send(&with_sdp(
                invite("+15551234", sip_call_id, "z9hG4bKt1", "atag"),
                &offer,
            ))
            .await;
        let mut callee = rig.callee.accept().await;
        let inv = callee
            .recv_where(|m| m.method() == Some(&Method::Invite))
            .await;
        let callee_sip_call_id = inv.header("call-id").unwrap().to_string();
        let offered = parse_sdp(inv.body());
        let gw_callee_port = offered.port;
        let (tag, k2) = offered.crypto_for(SUITE);
        let answer_sdp = sdp(callee_rtp.local_addr().unwrap().port(), tag, &k3);
        callee
            .send(&with_sdp(answer(&inv, 200, "btag"), &answer_sdp))
            .await;
        let ok = caller.recv_where(|m| m.status() == Some(200)).await;
        let answered = parse_sdp(ok.body());
        let gw_caller_port = answered.port;
        let (_, k4) = answered.crypto_for(SUITE);
        TapCall {
            caller,
            callee,
            ok,
            sip_call_id: sip_call_id.to_string(),
            callee_sip_call_id,
            caller_rtp,
            callee_rtp,
            tx_a: ctx(SUITE, &k1),
            rx_a: ctx(SUITE, &k4),
            tx_b: ctx(SUITE, &k3),
            rx_b: ctx(SUITE, &k2),
            gw_caller_port,
            gw_callee_port,
        }
    }

    /// The Call-ID of the callee's leg (the gateway's own), as the callee got it.
    pub fn callee_sip_call_id(&self) -> &str {
        &self.callee_sip_call_id
    }

    /// The caller sends packet `seq`; the callee gets it. Returns the clear packet.
    pub fn caller_sends(&mut self, seq: u16) -> Vec<u8> {
        let p = rtp(seq, CALLER_SSRC, &payload(0, seq));
        send_srtp(&self.caller_rtp, &mut self.tx_a, &p, self.gw_caller_port);
        assert_eq!(
            recv_srtp(&self.callee_rtp, &mut self.rx_b),
            p,
            "relayed to the callee"
        );
        p
    }

    /// The callee sends packet `seq`; the caller gets it. Returns the clear packet.
    pub fn callee_sends(&mut self, seq: u16) -> Vec<u8> {
        let p = rtp(seq, CALLEE_SSRC, &payload(1, seq));
        send_srtp(&self.callee_rtp, &mut self.tx_b, &p, self.gw_callee_port);
        assert_eq!(
            recv_srtp(&self.caller_rtp, &mut self.rx_a),
            p,
            "relayed to the caller"
        );
        p
    }

    /// BYE from the caller, answered by the callee.
    pub async fn hang_up(&mut self) {
        let to = self.ok.header("to").unwrap().to_string();
        let bye = in_dialog(
            "BYE",
            "sips:sbc@127.0.0.1",
            "z9hG4bKt1bye",
            "<sips:alice@platform.example>;tag=atag",
            &to,
            &self.sip_call_id,
            2,
        );
        self.caller.send(&bye).await;
        let out = self
            .callee
            .recv_where(|m| m.method() == Some(&Method::Bye))
            .await;
        self.callee.send(&answer(&out, 200, "btag")).await;
        self.caller.recv_where(|m| m.status() == Some(200)).await;
    }
}
