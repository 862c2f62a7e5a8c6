//! SIP in a test: the gateway started in-process on loopback ([`World`],
//! [`start_gateway`]), peers on either side over TLS ([`Peer`], [`Callee`]), plain TCP
//! ([`Peer::plain`], [`Callee::plain`]) or UDP ([`UdpPeer`]), the requests and
//! answers a platform and a callee send ([`invite`], [`in_dialog`], [`answer`],
//! [`options_text`]), leak checks ([`all_text`], [`assert_no_leak`]) and the start banner
//! of a spawned `sbc-edge` ([`printed_addresses`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use sbc_core::config::Config;
use sbc_sip::framing::{Frame, Framer};
use sbc_sip::message::SipMessage;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::files::{temp_dir, write};
use crate::pki::{client_config, server_config, Ca, Leaf};

/// How long a test waits for a message it expects.
pub const WAIT: Duration = Duration::from_secs(5);

/// Everything a test needs: PKI, files, and a config text to tweak.
pub struct World {
    pub dir: PathBuf,
    pub gw_ca: Ca,
    pub callee_ca: Ca,
    pub client_ca: Ca,
    pub gw_cert: String,
    pub gw_key: String,
    pub callee_leaf: Leaf,
    pub callee_ca_file: String,
    pub client_ca_file: String,
}

impl World {
    pub fn new(tag: &str) -> World {
        let dir = temp_dir(tag);
        let gw_ca = Ca::new("gateway test CA");
        let gw_leaf = gw_ca.issue(&["localhost", "127.0.0.1"]);
        let callee_ca = Ca::new("callee test CA");
        let callee_leaf = callee_ca.issue(&["localhost", "127.0.0.1"]);
        let client_ca = Ca::new("client test CA");
        let gw_cert = write(&dir, "gw.pem", &gw_leaf.cert_pem);
        let gw_key = write(&dir, "gw.key", &gw_leaf.key_pem);
        let callee_ca_file = write(&dir, "callee-ca.pem", &callee_ca.pem);
        let client_ca_file = write(&dir, "client-ca.pem", &client_ca.pem);
        World {
            dir,
            gw_ca,
            callee_ca,
            client_ca,
            gw_cert,
            gw_key,
            callee_leaf,
            callee_ca_file,
            client_ca_file,
        }
    }

    /// A listener section on an ephemeral loopback port.
    pub fn listener(&self, extra: &str) -> String {
        format!(
            "[[listeners]]\nname = \"test\"\naddress = \"127.0.0.1:0\"\ncertificate = {:?}\nprivate_key = {:?}\n{extra}\n",
            self.gw_cert, self.gw_key
        )
    }

    /// A tenant section routed to `callee` with `recognition` lines.
    pub fn tenant(&self, id: &str, recognition: &str, prefix: &str, callee: SocketAddr) -> String {
        format!(
            "[[tenants]]\nid = \"{id}\"\n[tenants.recognition]\n{recognition}\n[[tenants.routes]]\nprefix = \"{prefix}\"\ntarget = \"sips:{callee}\"\nca_file = {:?}\n",
            self.callee_ca_file
        )
    }

    /// A tenant section whose one route lists `targets` as (address, priority, weight),
    /// then `route_extra` lines of that route (`failover_on`, `try_timeout_ms`, and a
    /// `[tenants.routes.health]` table last, if any).
    pub fn tenant_targets(
        &self,
        id: &str,
        recognition: &str,
        targets: &[(SocketAddr, u16, u16)],
        route_extra: &str,
    ) -> String {
        let list: Vec<String> = targets
            .iter()
            .map(|(a, p, w)| format!("{{ uri = \"sips:{a}\", priority = {p}, weight = {w} }}"))
            .collect();
        format!(
            "[[tenants]]\nid = \"{id}\"\n[tenants.recognition]\n{recognition}\n[[tenants.routes]]\nprefix = \"\"\ntargets = [{}]\nca_file = {:?}\n{route_extra}\n",
            list.join(", "),
            self.callee_ca_file
        )
    }

    /// A plain (`tcp` or `udp`) listener section named `name` on an ephemeral loopback port.
    pub fn plain_listener(&self, name: &str, transport: &str) -> String {
        format!(
            "[[listeners]]\nname = \"{name}\"\ntransport = \"{transport}\"\naddress = \"127.0.0.1:0\"\n"
        )
    }

    pub fn config(&self, text: &str) -> Config {
        Config::from_toml_str(text, &self.dir)
            .unwrap_or_else(|e| panic!("test config: {e}\n{text}"))
    }
}

/// Config sections lifting the per-source flood guard: every test client shares the source
/// 127.0.0.1 (tests/tenant_isolation.rs covers the guard itself).
pub const LOOPBACK_FLOOD_GUARD: &str =
    "[flood_guard]\nmax_handshakes_per_second = 1000\nmax_connections_per_source = 1000\n";

/// A gateway on an ephemeral loopback port with one tenant `tenant`, recognised by source
/// 127.0.0.0/8 and routed (`prefix`) to a fresh callee. `before` holds gateway-wide
/// sections (`[sip]`, `[flood_guard]`, ...); `after` holds sections of the tenant
/// (`[tenants.limits]`, `[tenants.headers]`, ...).
pub async fn loopback_gateway(
    tag: &str,
    tenant: &str,
    prefix: &str,
    before: &str,
    after: &str,
) -> (World, sbc_sip::server::ServerHandle, Callee) {
    let world = World::new(tag);
    let callee = Callee::new(&world.callee_leaf).await;
    let text = format!(
        "{before}\n{}\n{}\n{after}\n",
        world.listener(""),
        world.tenant(
            tenant,
            "source_cidrs = [\"127.0.0.0/8\"]",
            prefix,
            callee.addr
        )
    );
    let gw = start_gateway(world.config(&text)).await;
    (world, gw, callee)
}

/// A gateway like [`loopback_gateway`] whose tenant's one route lists `n` fresh callees
/// as targets, priorities 0, 1, 2, ... in order (weight 1), with `route_extra` lines of the
/// route (see [`World::tenant_targets`]).
pub async fn loopback_gateway_targets(
    tag: &str,
    tenant: &str,
    n: usize,
    before: &str,
    route_extra: &str,
) -> (World, sbc_sip::server::ServerHandle, Vec<Callee>) {
    let world = World::new(tag);
    let mut callees = Vec::new();
    for _ in 0..n {
        callees.push(Callee::new(&world.callee_leaf).await);
    }
    let targets: Vec<(SocketAddr, u16, u16)> = callees
        .iter()
        .enumerate()
        .map(|(i, c)| (c.addr, i as u16, 1))
        .collect();
    let text = format!(
        "{before}\n{}\n{}\n",
        world.listener(""),
        world.tenant_targets(
            tenant,
            "source_cidrs = [\"127.0.0.0/8\"]",
            &targets,
            route_extra
        )
    );
    let gw = start_gateway(world.config(&text)).await;
    (world, gw, callees)
}

pub async fn start_gateway(cfg: Config) -> sbc_sip::server::ServerHandle {
    sbc_sip::server::start(Arc::new(cfg))
        .await
        .expect("gateway starts")
}

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One end of a SIP-over-TLS connection, in a test.
pub struct Peer {
    io: Box<dyn Io>,
    framer: Framer,
    pending: std::collections::VecDeque<SipMessage>,
    pub pongs: usize,
}

impl Peer {
    fn new(io: Box<dyn Io>) -> Peer {
        Peer {
            io,
            framer: Framer::new(1 << 20),
            pending: Default::default(),
            pongs: 0,
        }
    }

    /// Connect to a plain TCP listener of the gateway.
    pub async fn plain(addr: SocketAddr) -> Peer {
        let tcp = TcpStream::connect(addr)
            .await
            .expect("TCP connect to gateway");
        tcp.set_nodelay(true).expect("nodelay");
        Peer::new(Box::new(tcp))
    }

    /// Connect to the gateway as a client trusting `ca_pem`, with an optional client cert.
    pub async fn connect(addr: SocketAddr, ca_pem: &str, client: Option<&Leaf>) -> Peer {
        Self::try_connect(addr, ca_pem, client, "localhost")
            .await
            .expect("TLS connect to gateway")
    }

    /// Connect to the gateway over TLS from the local address `source` (a loopback
    /// address other than 127.0.0.1 stands for another host: a trunk opening its own
    /// connection to the gateway).
    pub async fn connect_from(addr: SocketAddr, ca_pem: &str, source: std::net::IpAddr) -> Peer {
        let socket = match source {
            std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .expect("socket");
        socket
            .bind(SocketAddr::new(source, 0))
            .expect("bind source");
        let tcp = socket.connect(addr).await.expect("TCP connect to gateway");
        tcp.set_nodelay(true).expect("nodelay");
        let name = ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(client_config(ca_pem, None))
            .connect(name, tcp)
            .await
            .expect("TLS connect to gateway");
        Peer::new(Box::new(tls))
    }

    pub async fn try_connect(
        addr: SocketAddr,
        ca_pem: &str,
        client: Option<&Leaf>,
        sni: &str,
    ) -> std::io::Result<Peer> {
        let cfg = client_config(ca_pem, client);
        let tcp = TcpStream::connect(addr).await?;
        // A test peer writes several messages back to back (ACK then INVITE): no Nagle.
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(sni.to_string()).unwrap();
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await?;
        Ok(Peer::new(Box::new(tls)))
    }

    /// Connect to the gateway with the client config `cfg` (its session store decides
    /// whether the handshake can resume) and say what the handshake was: the leaf
    /// certificate the gateway presented (on a resumed handshake, the one of the session
    /// resumed) and whether it was resumed.
    pub async fn handshake(
        addr: SocketAddr,
        cfg: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<(Peer, Handshake)> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from("localhost").unwrap();
        let tls = tokio::time::timeout(
            WAIT,
            tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
        )
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))??;
        let session = tls.get_ref().1;
        let hs = Handshake {
            leaf: session
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.as_ref().to_vec())
                .unwrap_or_default(),
            resumed: session.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
        };
        Ok((Peer::new(Box::new(tls)), hs))
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("write");
        self.io.flush().await.expect("flush");
    }

    /// Send SIP text written with `\n` line ends (converted to CRLF, Content-Length fixed).
    pub async fn send_text(&mut self, text: &str) {
        let msg = sip(text);
        self.send(&msg).await;
    }

    pub async fn send(&mut self, msg: &SipMessage) {
        let bytes = msg.to_bytes();
        self.send_raw(&bytes).await;
    }

    /// The next framed message as raw bytes, or None after `wait`. Panics if the
    /// connection closes.
    pub async fn recv_raw_within(&mut self, wait: Duration) -> Option<bytes::Bytes> {
        match self.read_frame_within(wait).await {
            Ok(b) => b,
            Err(e) => panic!("{e}"),
        }
    }

    /// The next message, or `None` after `wait` or once the connection closed: for a
    /// long-lived server loop whose peer may go away (a gateway killed by the test).
    pub async fn recv_or_closed_within(&mut self, wait: Duration) -> Option<SipMessage> {
        if let Some(m) = self.pending.pop_front() {
            return Some(m);
        }
        let b = self.read_frame_within(wait).await.ok()??;
        SipMessage::parse(&b).ok()
    }

    /// The next framed message: `Ok(None)` after `wait`, `Err` if the connection closed
    /// or failed.
    async fn read_frame_within(&mut self, wait: Duration) -> Result<Option<bytes::Bytes>, String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.framer.next_frame().expect("framing") {
                Some(Frame::Message(b)) => return Ok(Some(b)),
                Some(Frame::KeepAlivePing) => continue,
                None => {}
            }
            let mut buf = [0u8; 8192];
            let n = match tokio::time::timeout_at(deadline, self.io.read(&mut buf)).await {
                Err(_) => return Ok(None),
                Ok(Ok(0)) => return Err("connection closed while waiting for a message".into()),
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(format!("read error: {e}")),
            };
            // A lone CRLF is a keep-alive pong (RFC 5626).
            if &buf[..n] == b"\r\n" {
                self.pongs += 1;
                continue;
            }
            self.framer.push(&buf[..n]);
        }
    }

    /// The next message as text, unparsed (for answers to malformed requests, which
    /// echo the malformed headers).
    pub async fn recv_raw(&mut self) -> String {
        let b = self
            .recv_raw_within(WAIT)
            .await
            .expect("expected a SIP message");
        String::from_utf8_lossy(&b).into_owned()
    }

    /// The next message, or None after `wait`. Panics if the connection closes.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<SipMessage> {
        if let Some(m) = self.pending.pop_front() {
            return Some(m);
        }
        let b = self.recv_raw_within(wait).await?;
        let m = SipMessage::parse(&b).unwrap_or_else(|e| {
            panic!(
                "gateway sent unparseable message ({e:?}):\n{}",
                String::from_utf8_lossy(&b)
            )
        });
        Some(m)
    }

    pub async fn recv(&mut self) -> SipMessage {
        self.recv_within(WAIT)
            .await
            .expect("expected a SIP message")
    }

    /// Wait for a message matching `pred`, skipping others (e.g. 100 Trying).
    pub async fn recv_where(&mut self, pred: impl Fn(&SipMessage) -> bool) -> SipMessage {
        loop {
            let m = self.recv().await;
            if pred(&m) {
                return m;
            }
        }
    }

    /// True if the gateway closed the connection within `wait` (any data received before
    /// the close is discarded).
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        let mut buf = [0u8; 8192];
        loop {
            match tokio::time::timeout_at(deadline, self.io.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// What a client saw of a TLS handshake with the gateway ([`Peer::handshake`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// The leaf certificate presented, DER.
    pub leaf: Vec<u8>,
    /// A session ticket or id was accepted.
    pub resumed: bool,
}

/// The value of the sample `name{labels...}` in a Prometheus text (a `/metrics` body),
/// where `labels` are `key="value"` pairs in any order; `None` if there is no such series.
pub fn metric_sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let (series, _) = l.rsplit_once(' ').unwrap_or((l, ""));
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name && labels.iter().all(|kv| rest.contains(kv))
        })
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
}

/// A TLS (or, made with [`Callee::plain`], plain TCP) server standing in for a tenant's
/// route target.
pub struct Callee {
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    pub addr: SocketAddr,
}

impl Callee {
    pub async fn new(leaf: &Leaf) -> Callee {
        let cfg = server_config(leaf);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        Callee {
            listener,
            acceptor: Some(tokio_rustls::TlsAcceptor::from(cfg)),
            addr,
        }
    }

    /// A TLS route target on `addr` (port 0: an ephemeral one) presenting `leaf`.
    pub async fn tls_at(leaf: &Leaf, addr: SocketAddr) -> Callee {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        Callee {
            listener,
            acceptor: Some(tokio_rustls::TlsAcceptor::from(server_config(leaf))),
            addr,
        }
    }

    /// A plain TCP route target, on `addr` (port 0: an ephemeral one).
    pub async fn plain(addr: SocketAddr) -> Callee {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        Callee {
            listener,
            acceptor: None,
            addr,
        }
    }

    /// Accept the gateway's (pooled) connection.
    pub async fn accept(&self) -> Peer {
        let (tcp, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .expect("gateway connects to callee")
            .unwrap();
        let _ = tcp.set_nodelay(true);
        let Some(acceptor) = &self.acceptor else {
            return Peer::new(Box::new(tcp));
        };
        let tls = acceptor.accept(tcp).await.expect("callee TLS accept");
        Peer::new(Box::new(tls))
    }

    /// Accept the gateway's next connection within `wait`: `None` if none came,
    /// `Some(Err)` if its TLS handshake failed (say the gateway does not trust us).
    pub async fn try_accept(&self, wait: Duration) -> Option<std::io::Result<Peer>> {
        let (tcp, _) = tokio::time::timeout(wait, self.listener.accept())
            .await
            .ok()?
            .ok()?;
        let _ = tcp.set_nodelay(true);
        let Some(acceptor) = &self.acceptor else {
            return Some(Ok(Peer::new(Box::new(tcp))));
        };
        Some(
            tokio::time::timeout(WAIT, acceptor.accept(tcp))
                .await
                .unwrap_or_else(|_| Err(std::io::Error::other("TLS accept timed out")))
                .map(|tls| Peer::new(Box::new(tls))),
        )
    }

    /// Accept the next connection if one comes within `wait` and its handshake succeeds
    /// (a long-lived callee loops on this).
    pub async fn accept_within(&self, wait: Duration) -> Option<Peer> {
        self.try_accept(wait).await?.ok()
    }

    /// True if nobody connected within `wait`.
    pub async fn no_connection_within(&self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.listener.accept())
            .await
            .is_err()
    }
}

/// A SIP peer over UDP: one socket on loopback, sending datagrams and receiving them
/// with the address they came from.
pub struct UdpPeer {
    pub socket: tokio::net::UdpSocket,
    pub addr: SocketAddr,
}

impl UdpPeer {
    /// A socket on an ephemeral loopback port.
    pub async fn new() -> UdpPeer {
        Self::bind("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn bind(addr: SocketAddr) -> UdpPeer {
        let socket = tokio::net::UdpSocket::bind(addr).await.expect("UDP bind");
        let addr = socket.local_addr().unwrap();
        UdpPeer { socket, addr }
    }

    pub async fn send_raw_to(&self, to: SocketAddr, bytes: &[u8]) {
        self.socket.send_to(bytes, to).await.expect("UDP send");
    }

    pub async fn send_to(&self, to: SocketAddr, msg: &SipMessage) {
        self.send_raw_to(to, &msg.to_bytes()).await;
    }

    /// The next datagram and its source, or None after `wait`.
    pub async fn recv_raw_within(&self, wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
        let mut buf = vec![0u8; 65_536];
        let (n, from) = tokio::time::timeout(wait, self.socket.recv_from(&mut buf))
            .await
            .ok()?
            .expect("UDP receive");
        buf.truncate(n);
        Some((buf, from))
    }

    /// The next SIP message and its source, or None after `wait`.
    pub async fn recv_within(&self, wait: Duration) -> Option<(SipMessage, SocketAddr)> {
        let (b, from) = self.recv_raw_within(wait).await?;
        let m = SipMessage::parse(&b).unwrap_or_else(|e| {
            panic!(
                "gateway sent an unparseable datagram ({e:?}):\n{}",
                String::from_utf8_lossy(&b)
            )
        });
        Some((m, from))
    }

    pub async fn recv(&self) -> (SipMessage, SocketAddr) {
        self.recv_within(WAIT)
            .await
            .expect("expected a SIP datagram")
    }

    /// Wait for a message matching `pred`, skipping others (e.g. 100 Trying).
    pub async fn recv_where(&self, pred: impl Fn(&SipMessage) -> bool) -> (SipMessage, SocketAddr) {
        loop {
            let (m, from) = self.recv().await;
            if pred(&m) {
                return (m, from);
            }
        }
    }
}

/// Parse SIP text written with `\n` line ends; Content-Length is computed.
pub fn sip(text: &str) -> SipMessage {
    let (head, body) = match text.split_once("\n\n") {
        Some((h, b)) => (h, b),
        None => (text.trim_end_matches('\n'), ""),
    };
    let body = body.replace('\n', "\r\n");
    let mut raw = head.trim_start().replace('\n', "\r\n");
    raw.push_str(&format!("\r\nContent-Length: {}\r\n\r\n", body.len()));
    raw.push_str(&body);
    SipMessage::parse(raw.as_bytes())
        .unwrap_or_else(|e| panic!("test message does not parse: {e:?}\n{raw}"))
}

pub const SDP: &str = "v=0
o=alice 2890844526 2890844526 IN IP4 10.88.0.5
s=-
c=IN IP4 10.88.0.5
t=0 0
m=audio 49170 RTP/SAVP 0 101
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz
a=rtpmap:101 telephone-event/8000
";

/// An INVITE as a platform would send it, full of inside addresses that must not leak.
pub fn invite(user: &str, call_id: &str, branch: &str, from_tag: &str) -> SipMessage {
    sip(&format!(
        "INVITE sips:{user}@sbc.example.net SIP/2.0
Via: SIP/2.0/TLS 10.88.0.5:5061;branch={branch}
Via: SIP/2.0/TLS 10.88.0.1:5061;branch=z9hG4bKinsideproxy
Record-Route: <sips:10.88.0.1:5061;lr>
Max-Forwards: 69
From: \"Alice\" <sips:alice@platform.example>;tag={from_tag}
To: <sips:{user}@sbc.example.net>
Call-ID: {call_id}
CSeq: 1 INVITE
Contact: <sips:alice@10.88.0.5:5061>
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS
Supported: timer, 100rel
User-Agent: PlatformUA/1.0
Content-Type: application/sdp

{SDP}"
    ))
}

/// A request inside a dialog, caller side.
pub fn in_dialog(
    method: &str,
    ruri: &str,
    branch: &str,
    from: &str,
    to: &str,
    call_id: &str,
    cseq: u32,
) -> SipMessage {
    sip(&format!(
        "{method} {ruri} SIP/2.0
Via: SIP/2.0/TLS 10.88.0.5:5061;branch={branch}
Max-Forwards: 70
From: {from}
To: {to}
Call-ID: {call_id}
CSeq: {cseq} {method}
Contact: <sips:alice@10.88.0.5:5061>
"
    ))
}

/// The response a callee sends, with its own inside Contact.
pub fn answer(req: &SipMessage, code: u16, tag: &str) -> SipMessage {
    let mut r =
        sbc_sip::message::response_to(req, code, sbc_sip::message::default_reason(code), Some(tag));
    if (101..300).contains(&code) {
        r.push_header("Contact", "<sips:bob@10.99.0.7:5062>");
        r.push_header("Record-Route", "<sips:10.99.0.2:5061;lr>");
    }
    r
}

/// Every header value and the start line of `m`, for leak checks.
pub fn all_text(m: &SipMessage) -> String {
    let mut s = String::new();
    if let Some(u) = m.request_uri() {
        s.push_str(u);
        s.push('\n');
    }
    for (n, v) in m.headers() {
        s.push_str(n);
        s.push_str(": ");
        s.push_str(v);
        s.push('\n');
    }
    s
}

pub fn assert_no_leak(m: &SipMessage, forbidden: &[&str]) {
    let text = all_text(m);
    for f in forbidden {
        assert!(!text.contains(f), "leaked {f:?} in:\n{text}");
    }
}

/// An OPTIONS ping from a platform, written with `\n` line ends (see [`sip`]).
pub fn options_text(branch: &str) -> String {
    format!(
        "OPTIONS sips:sbc.example.net SIP/2.0
Via: SIP/2.0/TLS 10.88.0.5:5061;branch={branch}
Max-Forwards: 70
From: <sips:ping@platform.example>;tag=p1
To: <sips:sbc.example.net>
Call-ID: ping-{branch}@platform
CSeq: 1 OPTIONS
"
    )
}

/// Where a started `sbc-edge` process said it listens, read from the banner it prints on
/// stdout: the first SIP listener and the admin plane.
#[derive(Debug, Clone, Copy)]
pub struct Printed {
    pub sip: SocketAddr,
    pub admin: SocketAddr,
}

/// Reads `sbc-edge`'s start banner from its `stdout` until both addresses are printed,
/// at most `within`; `None` if they were not. The rest of stdout is drained on a thread
/// until the process exits, so the pipe never fills.
pub fn printed_addresses(stdout: std::process::ChildStdout, within: Duration) -> Option<Printed> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // Nobody listening any more is fine: keep draining.
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + within;
    let (mut sip, mut admin) = (None, None);
    while sip.is_none() || admin.is_none() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx.recv_timeout(left).ok()?;
        if line.contains("SIP over TLS listener") && sip.is_none() {
            sip = line
                .split("sips:")
                .nth(1)
                .and_then(|a| a.trim().parse().ok());
        }
        if let Some(rest) = line.trim().strip_prefix("admin plane: http://") {
            admin = rest.split_whitespace().next().and_then(|a| a.parse().ok());
        }
    }
    Some(Printed {
        sip: sip?,
        admin: admin?,
    })
}
