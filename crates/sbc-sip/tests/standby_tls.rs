//! Hot standby (issue #16) at the server level, over real TLS on loopback: gateway A
//! replicates a call's dialog through its `Hooks::replica`, dies (shut down, its
//! connections dropped), gateway B binds the same address and installs the call through
//! `ServerHandle::installer`; the caller's platform reconnects to B and hangs up, and the
//! BYE reaches the callee over B's re-dialled trunk connection with a CSeq above A's; a
//! trunk that opens its own connection to B (from its own address) is served there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sbc_core::media::CallRef;
use sbc_core::standby::{ReplicaSink, ReplicaUpdate, TakenCall};
use sbc_core::tenant::TenantId;
use sbc_sip::message::{tag, Method, SipMessage};
use sbc_sip::server::{start_with, Hooks};
use sbc_testkit::*;

#[derive(Debug, Default)]
struct Store(Mutex<HashMap<CallRef, (TenantId, Vec<u8>)>>);

impl ReplicaSink for Store {
    fn put(&self, u: ReplicaUpdate) {
        self.0.lock().unwrap().insert(u.call, (u.tenant, u.public));
    }
    fn remove(&self, call: CallRef) {
        self.0.lock().unwrap().remove(&call);
    }
}

fn is_status(code: u16) -> impl Fn(&SipMessage) -> bool {
    move |m| m.status() == Some(code)
}

fn is_method(method: Method) -> impl Fn(&SipMessage) -> bool {
    move |m| m.method() == Some(&method)
}

const FROM: &str = "\"Alice\" <sips:alice@platform.example>;tag=atag";

/// A call placed through gateway A, moved on with a re-INVITE, then taken over by
/// gateway B on A's address after A died: B has re-dialled the trunk (its OPTIONS
/// answered) and nothing else has happened yet.
struct TakenOver {
    b: sbc_sip::server::ServerHandle,
    addr: std::net::SocketAddr,
    /// The callee's side of B's re-dialled connection.
    trunk: Peer,
    /// The caller's To (with the gateway's tag).
    to: String,
    /// The INVITE the callee got from A.
    out_inv: SipMessage,
    /// The callee leg's last CSeq on A.
    a_last: u32,
}

/// Gateway config on `addr` whose tenant "demo" is recognised by `cidr` and routed to
/// `callee`.
fn gateway_text(world: &World, addr: &str, cidr: &str, callee: &Callee) -> String {
    format!(
        "{LOOPBACK_FLOOD_GUARD}\n{}\n{}",
        world.listener("").replace("127.0.0.1:0", addr),
        world.tenant(
            "demo",
            &format!("source_cidrs = [\"{cidr}\"]"),
            "",
            callee.addr
        )
    )
}

fn request(method: &str, branch: &str, to: &str, cseq: u32) -> SipMessage {
    in_dialog(
        method,
        "sips:sbc@127.0.0.1",
        branch,
        FROM,
        to,
        "sb-1@platform",
        cseq,
    )
}

async fn taken_over(world: &World, callee: &Callee, cidr: &str) -> TakenOver {
    let store = Arc::new(Store::default());
    let a = start_with(
        Arc::new(world.config(&gateway_text(world, "127.0.0.1:0", cidr, callee))),
        Hooks {
            replica: Some(store.clone()),
            ..Hooks::default()
        },
    )
    .await
    .unwrap();
    let addr = a.sip_addrs[0];

    // A call through A.
    let mut caller = Peer::connect(addr, &world.gw_ca.pem, None).await;
    caller
        .send(&invite("+15551234", "sb-1@platform", "z9hG4bKsb1", "atag"))
        .await;
    let mut trunk = callee.accept().await;
    let out_inv = trunk.recv_where(is_method(Method::Invite)).await;
    trunk.send(&answer(&out_inv, 200, "btag")).await;
    let ok = caller.recv_where(is_status(200)).await;
    let to = ok.header("to").unwrap().to_string();
    caller.send(&request("ACK", "z9hG4bKsb2", &to, 1)).await;
    trunk.recv_where(is_method(Method::Ack)).await;
    // A re-INVITE from the caller moves the trunk leg's CSeq on A.
    caller.send(&request("INVITE", "z9hG4bKsb3", &to, 2)).await;
    let re = trunk.recv_where(is_method(Method::Invite)).await;
    let a_last = re.cseq().unwrap().0;
    trunk.send(&answer(&re, 200, "btag")).await;
    caller.recv_where(is_status(200)).await;
    caller.send(&request("ACK", "z9hG4bKsb4", &to, 2)).await;
    trunk.recv_where(is_method(Method::Ack)).await;
    // The store saw the part with A's latest CSeq.
    let parts: Vec<TakenCall> = {
        let held = store.0.lock().unwrap();
        assert_eq!(held.len(), 1);
        held.iter()
            .map(|(call, (tenant, dialog))| {
                let v: serde_json::Value = serde_json::from_slice(dialog).unwrap();
                assert_eq!(v["callee"]["next_cseq"], a_last + 1);
                TakenCall {
                    call: *call,
                    tenant: tenant.clone(),
                    epoch: 2,
                    dialog: Some(dialog.clone()),
                    media: None,
                    indexes: None,
                    lease: None,
                }
            })
            .collect()
    };

    // A dies: its listener and connections go.
    a.shutdown().await;
    drop(caller);
    drop(trunk);

    // B on the same address installs the call and re-dials the trunk.
    let b = start_with(
        Arc::new(world.config(&gateway_text(world, &addr.to_string(), cidr, callee))),
        Hooks::default(),
    )
    .await
    .unwrap();
    assert_eq!(b.sip_addrs[0], addr);
    let report = b.installer().install(parts).await;
    assert_eq!(
        (report.installed, report.refused.len()),
        (1, 0),
        "{report:?}"
    );
    let mut trunk = callee.accept().await;
    let ping = trunk.recv_where(is_method(Method::Options)).await;
    trunk.send(&answer(&ping, 200, "ping")).await;
    TakenOver {
        b,
        addr,
        trunk,
        to,
        out_inv,
        a_last,
    }
}

#[tokio::test]
async fn a_call_taken_over_by_another_gateway_on_the_same_address_is_hung_up_through_it() {
    let world = World::new("standby-tls");
    let callee = Callee::new(&world.callee_leaf).await;
    let TakenOver {
        b,
        addr,
        mut trunk,
        to,
        out_inv,
        a_last,
    } = taken_over(&world, &callee, "127.0.0.0/8").await;

    // The platform reconnects and hangs up.
    let mut caller = Peer::connect(addr, &world.gw_ca.pem, None).await;
    caller.send(&request("BYE", "z9hG4bKsb5", &to, 3)).await;
    let bye = trunk.recv_where(is_method(Method::Bye)).await;
    assert!(bye.cseq().unwrap().0 > a_last, "CSeq continues above A's");
    assert_eq!(bye.call_id(), out_inv.call_id());
    assert_eq!(tag(bye.header("to").unwrap()), Some("btag"));
    trunk.send(&answer(&bye, 200, "btag")).await;
    let done = caller.recv_where(is_status(200)).await;
    assert_eq!(done.cseq().unwrap(), (3, Method::Bye));
    b.shutdown().await;
}

/// The trunk does not reuse B's re-dialled connection: it opens its own to the address in
/// our Contact (the same address A had) from its own address (127.0.0.2 here, the
/// tenant's platform being 127.0.0.1) and hangs up there; B serves it as that trunk's
/// connection, and refuses a new call on it.
#[tokio::test]
async fn a_trunk_hanging_up_on_its_own_new_connection_is_served_by_the_new_owner() {
    let world = World::new("standby-trunk-in");
    let trunk_ip: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let leaf = world.callee_ca.issue(&["127.0.0.2"]);
    let callee = Callee::tls_at(&leaf, std::net::SocketAddr::new(trunk_ip, 0)).await;
    let TakenOver {
        b,
        addr,
        trunk: _redialled,
        to: _,
        out_inv,
        a_last: _,
    } = taken_over(&world, &callee, "127.0.0.1/32").await;

    let mut own = Peer::connect_from(addr, &world.gw_ca.pem, trunk_ip).await;
    // The callee's side of the dialog: its To tag in From, the gateway's in To.
    let from = format!("{};tag=btag", out_inv.header("to").unwrap());
    let bye = in_dialog(
        "BYE",
        "sips:sbc@127.0.0.1",
        "z9hG4bKtk1",
        &from,
        out_inv.header("from").unwrap(),
        out_inv.call_id().unwrap(),
        9,
    );
    own.send(&bye).await;
    // The platform reconnects: the BYE held for it goes out there.
    let mut caller = Peer::connect(addr, &world.gw_ca.pem, None).await;
    let up = caller.recv_where(is_method(Method::Bye)).await;
    assert_eq!(up.call_id(), Some("sb-1@platform"));
    caller.send(&answer(&up, 200, "atag")).await;
    let done = own.recv_where(is_status(200)).await;
    assert_eq!(done.cseq().unwrap(), (9, Method::Bye));

    // A new call from the trunk's address: refused as from an unrecognised peer.
    own.send(&invite("+15550000", "tk-2@trunk", "z9hG4bKtk2", "ttag"))
        .await;
    let refused = own.recv_where(|m| m.status().is_some()).await;
    assert_eq!(refused.status(), Some(403));
    b.shutdown().await;
}
