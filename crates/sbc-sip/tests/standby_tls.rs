//! Hot standby (issue #16) at the server level, over real TLS on loopback: gateway A
//! replicates a call's dialog through its `Hooks::replica`, dies (shut down, its
//! connections dropped), gateway B binds the same address and installs the call through
//! `ServerHandle::installer`; the caller's platform reconnects to B and hangs up, and the
//! BYE reaches the callee over B's re-dialled trunk connection with a CSeq above A's.
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

#[tokio::test]
async fn a_call_taken_over_by_another_gateway_on_the_same_address_is_hung_up_through_it() {
    let world = World::new("standby-tls");
    let callee = Callee::new(&world.callee_leaf).await;
    let text = |addr: &str| {
        format!(
            "{LOOPBACK_FLOOD_GUARD}\n{}\n{}",
            world.listener("").replace("127.0.0.1:0", addr),
            world.tenant("demo", "source_cidrs = [\"127.0.0.0/8\"]", "", callee.addr)
        )
    };
    let store = Arc::new(Store::default());
    let a = start_with(
        Arc::new(world.config(&text("127.0.0.1:0"))),
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
    caller
        .send(&in_dialog(
            "ACK",
            "sips:sbc@127.0.0.1",
            "z9hG4bKsb2",
            FROM,
            &to,
            "sb-1@platform",
            1,
        ))
        .await;
    trunk.recv_where(is_method(Method::Ack)).await;
    // A re-INVITE from the caller moves the trunk leg's CSeq on A.
    caller
        .send(&in_dialog(
            "INVITE",
            "sips:sbc@127.0.0.1",
            "z9hG4bKsb3",
            FROM,
            &to,
            "sb-1@platform",
            2,
        ))
        .await;
    let re = trunk.recv_where(is_method(Method::Invite)).await;
    let a_last = re.cseq().unwrap().0;
    trunk.send(&answer(&re, 200, "btag")).await;
    caller.recv_where(is_status(200)).await;
    caller
        .send(&in_dialog(
            "ACK",
            "sips:sbc@127.0.0.1",
            "z9hG4bKsb4",
            FROM,
            &to,
            "sb-1@platform",
            2,
        ))
        .await;
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
        Arc::new(world.config(&text(&addr.to_string()))),
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

    // The platform reconnects and hangs up.
    let mut caller = Peer::connect(addr, &world.gw_ca.pem, None).await;
    caller
        .send(&in_dialog(
            "BYE",
            "sips:sbc@127.0.0.1",
            "z9hG4bKsb5",
            FROM,
            &to,
            "sb-1@platform",
            3,
        ))
        .await;
    let bye = trunk.recv_where(is_method(Method::Bye)).await;
    assert!(bye.cseq().unwrap().0 > a_last, "CSeq continues above A's");
    assert_eq!(bye.call_id(), out_inv.call_id());
    assert_eq!(tag(bye.header("to").unwrap()), Some("btag"));
    trunk.send(&answer(&bye, 200, "btag")).await;
    let done = caller.recv_where(is_status(200)).await;
    assert_eq!(done.cseq().unwrap(), (3, Method::Bye));
    b.shutdown().await;
}
