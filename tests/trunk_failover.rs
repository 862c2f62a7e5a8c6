//! Routes with several targets over real TLS on loopback: a call fails over when the
//! first target refuses (503), when it never answers (within the try timeout), and when
//! nothing listens there; a target whose OPTIONS pings go unanswered is marked down
//! (`GET /v1/trunks`, `sbc_trunk_up`) and skipped, and comes back up when it answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sbc_admin::{AdminConfig, AdminState, AuditLog};
use sbc_core::registry::{CallRegistry, DrainState};
use sbc_sip::message::{Method, SipMessage};
use sbc_testkit::*;

fn is_invite(m: &SipMessage) -> bool {
    m.method() == Some(&Method::Invite)
}

/// Send an INVITE as the platform; returns the caller's connection.
async fn call(gw: &sbc_sip::server::ServerHandle, world: &World, id: &str) -> Peer {
    let mut caller = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, None).await;
    caller
        .send(&invite(
            "+15551230000",
            &format!("{id}@platform"),
            &format!("z9hG4bK{id}"),
            "ftag",
        ))
        .await;
    caller
}

#[tokio::test]
async fn first_target_refuses_and_the_call_lands_on_the_second() {
    let (world, gw, callees) =
        loopback_gateway_targets("fo-503", "acme", 2, LOOPBACK_FLOOD_GUARD, "").await;
    let mut caller = call(&gw, &world, "fo503").await;
    let mut first = callees[0].accept().await;
    let inv1 = first.recv_where(is_invite).await;
    first.send(&answer(&inv1, 100, "x")).await;
    first.send(&answer(&inv1, 503, "first")).await;
    let ack = first.recv().await;
    assert_eq!(ack.method(), Some(&Method::Ack), "the 503 is ACKed");
    let mut second = callees[1].accept().await;
    let inv2 = second.recv_where(is_invite).await;
    assert_ne!(inv2.call_id(), inv1.call_id(), "a fresh callee dialog");
    let mut ok = answer(&inv2, 200, "second");
    ok.push_header("Content-Type", "application/sdp");
    ok.set_body(SDP.as_bytes().to_vec());
    second.send(&ok).await;
    let mut statuses = Vec::new();
    loop {
        let m = caller.recv().await;
        let code = m.status().unwrap_or(0);
        statuses.push(code);
        if code >= 200 {
            break;
        }
    }
    assert_eq!(statuses.last(), Some(&200), "{statuses:?}");
    assert!(
        !statuses.contains(&503),
        "the first target's 503 stays inside: {statuses:?}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn first_target_never_answers_and_the_call_lands_on_the_second_within_the_try_timeout() {
    let (world, gw, callees) = loopback_gateway_targets(
        "fo-silent",
        "acme",
        2,
        LOOPBACK_FLOOD_GUARD,
        "try_timeout_ms = 500",
    )
    .await;
    let mut caller = call(&gw, &world, "fosilent").await;
    let mut first = callees[0].accept().await;
    let _ignored = first.recv_where(is_invite).await;
    let got_first = Instant::now();
    let mut second = callees[1].accept().await;
    let inv2 = second.recv_where(is_invite).await;
    let waited = got_first.elapsed();
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_millis(2000),
        "second target tried after {waited:?} (try timeout 500 ms)"
    );
    second.send(&answer(&inv2, 486, "busy")).await;
    let fin = caller.recv_where(|m| m.status().unwrap_or(0) >= 200).await;
    assert_eq!(fin.status(), Some(486));
    gw.shutdown().await;
}

#[tokio::test]
async fn nothing_listening_at_the_first_target_moves_the_call_on_at_once() {
    let world = World::new("fo-refused");
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let live = Callee::new(&world.callee_leaf).await;
    let text = format!(
        "{LOOPBACK_FLOOD_GUARD}\n{}\n{}",
        world.listener(""),
        world.tenant_targets(
            "acme",
            "source_cidrs = [\"127.0.0.0/8\"]",
            &[(dead, 0, 1), (live.addr, 1, 1)],
            ""
        )
    );
    let gw = start_gateway(world.config(&text)).await;
    let started = Instant::now();
    let mut caller = call(&gw, &world, "forefused").await;
    let mut second = live.accept().await;
    let inv = second.recv_where(is_invite).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no try timeout wait on a refused connect"
    );
    second.send(&answer(&inv, 486, "busy")).await;
    let fin = caller.recv_where(|m| m.status().unwrap_or(0) >= 200).await;
    assert_eq!(fin.status(), Some(486));
    gw.shutdown().await;
}

/// Answer the gateway's OPTIONS pings on `peer` while `answering` is set; INVITEs are
/// answered 486. Runs until the connection closes.
fn serve_pings(
    mut peer: Peer,
    answering: Arc<AtomicBool>,
    invites: Arc<std::sync::atomic::AtomicUsize>,
) {
    tokio::spawn(async move {
        loop {
            let Some(m) = peer.recv_within(Duration::from_secs(30)).await else {
                return;
            };
            match m.method() {
                Some(Method::Options) if answering.load(Ordering::SeqCst) => {
                    peer.send(&answer(&m, 200, "ping")).await;
                }
                Some(Method::Invite) => {
                    invites.fetch_add(1, Ordering::SeqCst);
                    peer.send(&answer(&m, 486, "busy")).await;
                }
                _ => {}
            }
        }
    });
}

/// The state of `target` in `GET /v1/trunks` as the operator sees it.
async fn trunk_state(admin: std::net::SocketAddr, token: &str, target: &str) -> Option<String> {
    let (status, body) = http(admin, "GET", "/v1/trunks", Some(token), "").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["trunks"]
        .as_array()?
        .iter()
        .find(|t| t["target"] == target)
        .map(|t| t["state"].as_str().unwrap_or("").to_string())
}

async fn eventually_state(admin: std::net::SocketAddr, token: &str, target: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if trunk_state(admin, token, target).await.as_deref() == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "{target} never became {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_target_that_stops_answering_options_is_marked_down_skipped_and_comes_back() {
    let prometheus = sbc_admin::install_prometheus().unwrap();
    let world = World::new("fo-health");
    let first = Callee::new(&world.callee_leaf).await;
    let second = Callee::new(&world.callee_leaf).await;
    let op = "operator-token-0123456789";
    let viewer_other = "viewer-other-0123456789";
    let health = "[tenants.routes.health]\noptions_interval_secs = 1\noptions_timeout_ms = 300\ndown_after = 2\nup_after = 1\n";
    let text = format!(
        "{LOOPBACK_FLOOD_GUARD}\n[admin]\naddress = \"127.0.0.1:0\"\n[[admin.tokens]]\nid = \"ops\"\nsha256 = \"{}\"\nrole = \"operator\"\n[[admin.tokens]]\nid = \"other\"\nsha256 = \"{}\"\nrole = \"viewer\"\ntenant = \"other\"\n{}\n{}\n{}",
        sbc_admin::token_sha256_hex(op),
        sbc_admin::token_sha256_hex(viewer_other),
        world.listener(""),
        world.tenant_targets(
            "acme",
            "source_cidrs = [\"127.0.0.0/8\"]",
            &[(first.addr, 0, 1), (second.addr, 1, 1)],
            health
        ),
        world.tenant("other", "sni = [\"other.example\"]", "", second.addr),
    );
    let cfg = Arc::new(world.config(&text));
    let admin_cfg =
        AdminConfig::from_toml_value(cfg.admin_section.clone().unwrap(), &cfg.base_dir).unwrap();
    let gw = sbc_sip::server::start(cfg.clone()).await.unwrap();
    let admin = sbc_admin::serve(
        admin_cfg,
        AdminState {
            registry: Arc::new(CallRegistry::new()),
            usage: gw.usage_source(),
            drain: Arc::new(DrainState::new()),
            prometheus: prometheus.clone(),
            tenants: cfg.tenants.iter().map(|t| t.id.clone()).collect(),
            audit: Arc::new(AuditLog::open(&world.dir.join("audit.log")).unwrap()),
            taps: None,
            recordings: None,
        },
    )
    .await
    .unwrap();
    let a = admin.local_addr();
    let bearer = op;
    // Not wired yet: 501.
    assert_eq!(http(a, "GET", "/v1/trunks", Some(bearer), "").await.0, 501);
    assert!(admin.set_trunk_board(gw.trunks()));

    let first_uri = format!("sips:{}", first.addr);
    let second_uri = format!("sips:{}", second.addr);
    let first_answers = Arc::new(AtomicBool::new(false));
    let (first_invites, second_invites) = (Arc::default(), Arc::default());
    // Pings open the pooled connections; the first target stays silent.
    serve_pings(
        first.accept().await,
        first_answers.clone(),
        Arc::clone(&first_invites),
    );
    serve_pings(
        second.accept().await,
        Arc::new(AtomicBool::new(true)),
        Arc::clone(&second_invites),
    );
    eventually_state(a, bearer, &first_uri, "down").await;
    assert_eq!(
        trunk_state(a, bearer, &second_uri).await.as_deref(),
        Some("up")
    );
    let metrics = prometheus.render();
    let gauge = format!("sbc_trunk_up{{tenant=\"acme\",target=\"{first_uri}\"}} 0");
    assert!(metrics.contains(&gauge), "{gauge} not in:\n{metrics}");

    // A tenant token sees only its own tenant's trunks.
    let (_, body) = http(a, "GET", "/v1/trunks", Some(viewer_other), "").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let seen: Vec<&str> = v["trunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tenant"].as_str().unwrap())
        .collect();
    assert!(
        !seen.is_empty() && seen.iter().all(|t| *t == "other"),
        "{seen:?}"
    );
    let (status, _) = http(a, "GET", "/v1/trunks?tenant=acme", Some(viewer_other), "").await;
    assert_eq!(status, 404, "another tenant's trunks look like none");
    let (_, body) = http(a, "GET", "/v1/trunks?tenant=acme", Some(bearer), "").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let first_row = v["trunks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == first_uri.as_str())
        .cloned()
        .unwrap();
    assert_eq!(first_row["priority"], 0);
    assert_eq!(first_row["health_checks"], true);
    assert!(
        first_row["consecutive_failures"].as_u64().unwrap() >= 2,
        "{first_row}"
    );
    assert!(first_row["last_change"].is_string(), "{first_row}");

    // A call skips the down target.
    let mut caller = call(&gw, &world, "fohealth1").await;
    let fin = caller.recv_where(|m| m.status().unwrap_or(0) >= 200).await;
    assert_eq!(fin.status(), Some(486));
    assert_eq!(first_invites.load(Ordering::SeqCst), 0);
    assert_eq!(second_invites.load(Ordering::SeqCst), 1);

    // It answers again: up, and the next call goes there.
    first_answers.store(true, Ordering::SeqCst);
    eventually_state(a, bearer, &first_uri, "up").await;
    let metrics = prometheus.render();
    let gauge = format!("sbc_trunk_up{{tenant=\"acme\",target=\"{first_uri}\"}} 1");
    assert!(metrics.contains(&gauge), "{gauge} not in:\n{metrics}");
    let mut caller = call(&gw, &world, "fohealth2").await;
    caller.recv_where(|m| m.status().unwrap_or(0) >= 200).await;
    assert_eq!(first_invites.load(Ordering::SeqCst), 1);
    gw.shutdown().await;
}
