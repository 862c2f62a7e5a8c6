//! Shared by the WebSocket tap tests (`tap_ws.rs`, `tap_ws_resume.rs`): tokens of each
//! role, opening the tap, reading messages, counting a call's taps.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use sbc_testkit::*;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub const OPS: &str = "operator-token-0123456789";
pub const REC: &str = "recorder-demo-0123456789";
pub const REC_OTHER: &str = "recorder-other-0123456789";
pub const VIEW: &str = "viewer-demo-0123456789";

pub fn tokens() -> String {
    [
        ("ops", OPS, "operator", ""),
        ("rec", REC, "recorder", "tenant = \"demo\""),
        ("rec-other", REC_OTHER, "recorder", "tenant = \"other\""),
        ("view", VIEW, "viewer", "tenant = \"demo\""),
    ]
    .iter()
    .map(|(id, token, role, tenant)| {
        format!(
            "[[admin.tokens]]\nid = \"{id}\"\nsha256 = \"{}\"\nrole = \"{role}\"\n{tenant}\n",
            sbc_admin::token_sha256_hex(token)
        )
    })
    .collect()
}

/// Opens the WebSocket tap, or the HTTP status it was refused with.
pub async fn open(admin: SocketAddr, path: &str, token: Option<&str>) -> Result<Ws, u16> {
    let mut req = format!("ws://{admin}{path}").into_client_request().unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("Authorization", format!("Bearer {t}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, resp)) => {
            assert_eq!(resp.status(), 101);
            Ok(ws)
        }
        Err(WsError::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("WebSocket connect: {e}"),
    }
}

pub async fn next(ws: &mut Ws) -> Message {
    tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("a message in time")
        .expect("the socket open")
        .expect("a valid message")
}

pub async fn next_json(ws: &mut Ws) -> serde_json::Value {
    match next(ws).await {
        Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// The ids `GET /v1/calls/{id}/taps` lists, as numbers.
pub async fn listed_tap_ids(admin: SocketAddr, call: &str) -> Vec<u64> {
    let (status, body) = http(
        admin,
        "GET",
        &format!("/v1/calls/{call}/taps"),
        Some(OPS),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut ids: Vec<u64> = v["taps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| u64::from_str_radix(t["tap_id"].as_str().unwrap(), 16).unwrap())
        .collect();
    ids.sort_unstable();
    ids
}

/// The number of taps `GET /v1/calls/{id}/taps` lists.
pub async fn tap_count(admin: SocketAddr, call: &str) -> usize {
    listed_tap_ids(admin, call).await.len()
}

pub async fn until_taps(admin: SocketAddr, call: &str, n: usize) {
    for _ in 0..200 {
        if tap_count(admin, call).await == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the call never had {n} taps");
}
