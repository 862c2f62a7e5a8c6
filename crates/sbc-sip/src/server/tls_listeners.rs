//! Certificates while running ("hot certificates"): each listener's TLS acceptor, swapped
//! whole for new handshakes when its certificate, key or client CA changes (on SIGHUP /
//! `POST /v1/reload`, or when polling every `sip.cert_poll_secs` sees a file change), its
//! session resumption state, route targets' CA bundles picked up by the same poll, and the
//! certificate-expiry gauge, which follows the certificate in use.
//!
//! A swap is prepared first (files read and parsed, the key checked against the
//! certificate, the client CA loaded); anything wrong refuses it: the old material stays
//! in use, one log line says which file and why (once per distinct problem, not at every
//! poll), and `sbc_tls_reload_total{result="refused"}` counts it. A connection keeps the
//! acceptor it was accepted with: established connections and their calls never see a
//! swap. Session tickets survive a certificate swap (clients resume across it); a changed
//! client CA gets fresh ticket keys, so a session authenticated under the old CA cannot
//! resume.
//!
//! Also the binding of each listener's socket ([`bind_tcp`], [`bind_udp`]): with
//! `freebind = true`, `IP_FREEBIND`, so a hot standby listens on its peer's virtual IP
//! before keepalived moves the address to it (issue #16).
//!
//! Owns: the acceptors, the material they were built from, the poll, and the listener
//! binds. Must not: touch an established connection, or log or count anything from a key
//! but its file's name.

use std::time::SystemTime;

use sbc_core::config::certs::TlsFileError;
use sbc_core::config::Listener;

use super::*;

/// A listener's TLS acceptor, replaced whole on a swap; read when a connection is
/// accepted, so handshakes under way finish with the settings they started with.
pub(super) type SharedAcceptor = Arc<RwLock<TlsAcceptor>>;

/// How often the poll looks again at `sip.cert_poll_secs` while polling is off (0), so
/// turning it on by a reload takes effect without a restart.
const POLL_OFF_RECHECK: Duration = Duration::from_secs(5);

/// Longest one poll pass (a few small file reads and key parses, normally well under a
/// millisecond) may hold the reload lock: a read that hangs (a dead network mount) is
/// abandoned after this, so SIGHUP and later polls are never blocked by it.
const POLL_PASS_WITHIN: Duration = Duration::from_secs(10);

/// Pending connections a TCP/TLS listener queues: tokio's own `TcpListener::bind` value,
/// so a freebind listener behaves like a plain one.
const LISTEN_BACKLOG: i32 = 1024;

/// A TCP/TLS listener's socket, bound as `l` says (see [`freebind_socket`]).
pub(super) async fn bind_tcp(l: &Listener) -> std::io::Result<TcpListener> {
    if !l.freebind {
        return TcpListener::bind(l.address).await;
    }
    let s = freebind_socket(l.address, socket2::Type::STREAM)?;
    s.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(s.into())
}

/// A UDP listener's socket, bound as `l` says (see [`freebind_socket`]).
pub(super) async fn bind_udp(l: &Listener) -> std::io::Result<tokio::net::UdpSocket> {
    if !l.freebind {
        return tokio::net::UdpSocket::bind(l.address).await;
    }
    let s = freebind_socket(l.address, socket2::Type::DGRAM)?;
    tokio::net::UdpSocket::from_std(s.into())
}

/// A non-blocking socket bound on `addr` with `IP_FREEBIND` / `IPV6_FREEBIND` (Linux;
/// config validation refuses `freebind` elsewhere) and `SO_REUSEADDR` as tokio sets it.
fn freebind_socket(addr: SocketAddr, ty: socket2::Type) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Socket};
    let s = Socket::new(Domain::for_address(addr), ty, None)?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    match addr {
        SocketAddr::V4(_) => s.set_freebind_v4(true)?,
        SocketAddr::V6(_) => s.set_freebind_v6(true)?,
    }
    if ty == socket2::Type::STREAM {
        s.set_reuse_address(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s)
}

/// One listener's TLS.
pub(super) struct ListenerTls {
    pub(super) name: String,
    /// `None`: a plain (TCP or UDP) listener, nothing to swap.
    pub(super) acceptor: Option<SharedAcceptor>,
    /// Held while a swap of this listener is prepared and installed.
    in_use: Mutex<InUse>,
}

/// The material the acceptor was built from.
struct InUse {
    listener: Listener,
    resumption: tls::Resumption,
}

/// A listener's new acceptor, built and checked, not yet in use; or (`swap: None`) only
/// new file paths for the same material (a reload that renamed the files).
pub(super) struct Prepared {
    index: usize,
    listener: Listener,
    swap: Option<Swap>,
}

struct Swap {
    acceptor: TlsAcceptor,
    resumption: tls::Resumption,
    what: String,
}

/// Every listener's TLS, in config order.
pub(super) struct TlsListeners(pub(super) Vec<ListenerTls>);

impl std::fmt::Debug for TlsListeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|l| &l.name))
            .finish()
    }
}

fn acceptor(l: &Listener, resumption: &tls::Resumption) -> Result<TlsAcceptor, SipError> {
    tls::server_config_with(
        &l.certificate_pem,
        l.private_key.pem(),
        l.client_ca_pem.as_deref(),
        l.require_client_cert,
        resumption,
    )
    .map(TlsAcceptor::from)
}

/// What differs between the material in use and `new`, in words ("certificate and key
/// swapped"); empty if nothing does.
fn what_changed(old: &Listener, new: &Listener) -> String {
    let mut parts = Vec::new();
    if old.certificate_pem != new.certificate_pem {
        parts.push("certificate");
    }
    if old.private_key.pem() != new.private_key.pem() {
        parts.push("key");
    }
    if old.client_ca_pem != new.client_ca_pem {
        parts.push("client CA");
    }
    let mut out = match parts.as_slice() {
        [] => String::new(),
        [one] => format!("{one} swapped"),
        [init @ .., last] => format!("{} and {last} swapped", init.join(", ")),
    };
    if old.require_client_cert != new.require_client_cert {
        if !out.is_empty() {
            out.push_str("; ");
        }
        out.push_str(if new.require_client_cert {
            "client certificates now required"
        } else {
            "client certificates now optional"
        });
    }
    out
}

/// The leaf's expiry as UTC text (`2027-03-01 12:00:00 UTC`).
fn not_after_text(l: &Listener) -> String {
    l.certificate_not_after()
        .map(sbc_core::config::certs::utc_text)
        .unwrap_or_else(|| "unknown".to_string())
}

/// Seconds until `l`'s certificate expires (negative once expired).
fn seconds_left(l: &Listener, now: SystemTime) -> Option<f64> {
    let not_after = l.certificate_not_after()?;
    Some(match not_after.duration_since(now) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    })
}

fn count(result: &'static str) {
    metrics::counter!("sbc_tls_reload_total", "result" => result).increment(1);
}

impl ListenerTls {
    fn lock(&self) -> std::sync::MutexGuard<'_, InUse> {
        // Replaced whole under the lock: a poisoned lock still holds a consistent value.
        self.in_use.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new acceptor for `new` if its material differs from what is in use, new paths
    /// to poll if only those differ, `None` if nothing does. A changed client CA gets
    /// fresh resumption state.
    fn prepare(&self, index: usize, new: &Listener) -> Result<Option<Prepared>, SipError> {
        if self.acceptor.is_none() {
            return Ok(None);
        }
        let in_use = self.lock();
        let what = what_changed(&in_use.listener, new);
        if what.is_empty() {
            let old = &in_use.listener;
            let moved = old.certificate_path != new.certificate_path
                || old.private_key_path != new.private_key_path
                || old.client_ca_path != new.client_ca_path;
            return Ok(moved.then(|| Prepared {
                index,
                listener: new.clone(),
                swap: None,
            }));
        }
        let resumption = if in_use.listener.client_ca_pem != new.client_ca_pem {
            tls::Resumption::new()?
        } else {
            in_use.resumption.clone()
        };
        let acceptor = acceptor(new, &resumption)
            .map_err(|e| SipError::Tls(format!("listener {:?}: {e}", new.name)))?;
        Ok(Some(Prepared {
            index,
            listener: new.clone(),
            swap: Some(Swap {
                acceptor,
                resumption,
                what,
            }),
        }))
    }

    /// Puts `p` in use for new handshakes; returns what the reload result says (`None`
    /// if only the paths changed).
    fn install(&self, p: Prepared) -> Option<String> {
        let mut in_use = self.lock();
        in_use.listener = p.listener;
        let swap = p.swap?;
        let shared = self.acceptor.as_ref()?;
        *shared.write().unwrap_or_else(|e| e.into_inner()) = swap.acceptor;
        in_use.resumption = swap.resumption;
        let l = &in_use.listener;
        if let Some(left) = seconds_left(l, SystemTime::now()) {
            metrics::gauge!("sbc_tls_certificate_expiry_seconds", "listener" => l.name.clone())
                .set(left);
        }
        count("swapped");
        let line = format!(
            "listener {}: {}, not after {}",
            l.name,
            swap.what,
            not_after_text(l)
        );
        info!(event = "certificate_swapped", listener = %l.name, change = %swap.what, not_after = %not_after_text(l), "new TLS handshakes use the new material; established connections keep theirs");
        Some(line)
    }
}

impl TlsListeners {
    /// Acceptors for `config`'s listeners, in order; fails naming the listener whose
    /// material is unusable.
    pub(super) fn new(config: &Config) -> Result<TlsListeners, SipError> {
        let mut out = Vec::new();
        for l in &config.listeners {
            let resumption = tls::Resumption::new()?;
            let acceptor = if l.transport == Transport::Tls {
                let a = acceptor(l, &resumption)
                    .map_err(|e| SipError::Tls(format!("listener {:?}: {e}", l.name)))?;
                Some(Arc::new(RwLock::new(a)))
            } else {
                None
            };
            out.push(ListenerTls {
                name: l.name.clone(),
                acceptor,
                in_use: Mutex::new(InUse {
                    listener: l.clone(),
                    resumption,
                }),
            });
        }
        Ok(TlsListeners(out))
    }

    /// Whether `listeners` are the running ones (same names in the same order): only
    /// then can their material be swapped (the set needs a restart).
    pub(super) fn same_set(&self, listeners: &[Listener]) -> bool {
        listeners.len() == self.0.len()
            && listeners.iter().zip(&self.0).all(|(l, t)| t.name == l.name)
    }

    /// New acceptors for each listener of `listeners` whose material changed; all or
    /// nothing (the first unusable one fails it, naming the listener, and is counted).
    pub(super) fn prepare(&self, listeners: &[Listener]) -> Result<Vec<Prepared>, SipError> {
        let mut out = Vec::new();
        for (index, (l, t)) in listeners.iter().zip(&self.0).enumerate() {
            match t.prepare(index, l) {
                Ok(Some(p)) => out.push(p),
                Ok(None) => {}
                Err(e) => {
                    count("refused");
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    /// Puts prepared acceptors in use; returns one line per listener swapped.
    pub(super) fn install(&self, prepared: Vec<Prepared>) -> Vec<String> {
        prepared
            .into_iter()
            .filter_map(|p| self.0.get(p.index).and_then(|t| t.install(p)))
            .collect()
    }

    /// Reads every listener's files again and swaps those that changed, each on its own:
    /// one listener's bad file does not hold back another's good one. Blocking (file
    /// reads): run it off the async workers.
    fn poll(&self, refusals: &mut Refusals) -> Vec<String> {
        let mut out = Vec::new();
        for (index, t) in self.0.iter().enumerate() {
            let current = t.lock().listener.clone();
            let new = match current.reread_files() {
                Ok(Some(new)) => new,
                Ok(None) => {
                    refusals.clear_listener(&t.name);
                    continue;
                }
                Err(e) => {
                    refusals.refuse(e);
                    continue;
                }
            };
            match t.prepare(index, &new) {
                Ok(Some(p)) => {
                    refusals.clear_listener(&t.name);
                    out.extend(t.install(p));
                }
                Ok(None) => {}
                Err(e) => refusals.refuse(TlsFileError {
                    key: format!("listeners.{}.certificate", t.name),
                    path: new.certificate_path.clone().unwrap_or_default(),
                    why: e.to_string(),
                }),
            }
        }
        out
    }

    /// Publishes each listener certificate's time to expiry, and warns from
    /// [`CERTIFICATE_WARNING`] before it.
    pub(super) fn publish_expiry(&self) {
        let now = SystemTime::now();
        for t in &self.0 {
            let Some(left) = seconds_left(&t.lock().listener, now) else {
                continue;
            };
            metrics::gauge!("sbc_tls_certificate_expiry_seconds", "listener" => t.name.clone())
                .set(left);
            if left < CERTIFICATE_WARNING.as_secs_f64() {
                warn!(
                    event = "certificate_expiring",
                    listener = %t.name,
                    days_left = (left / 86_400.0).floor(),
                    "listener certificate expires soon (or has expired): renew it"
                );
            }
        }
    }
}

/// Swaps refused by the poll, by config key, with why: a file that stays bad is logged
/// and counted once, not at every poll. Bounded by the number of configured files.
#[derive(Default)]
pub(super) struct Refusals(HashMap<String, String>);

impl Refusals {
    fn refuse(&mut self, e: TlsFileError) {
        if self.0.get(&e.key) == Some(&e.why) {
            return;
        }
        count("refused");
        warn!(event = "certificate_reload_refused", key = %e.key, file = %e.path.display(), reason = %e.why, "certificate or CA file change refused: the material in use is kept");
        self.0.insert(e.key, e.why);
    }

    fn clear_listener(&mut self, name: &str) {
        let prefix = format!("listeners.{name}.");
        self.0.retain(|k, _| !k.starts_with(&prefix));
    }

    fn clear(&mut self, key: &str) {
        self.0.remove(key);
    }
}

/// Route targets whose CA bundle differs between `old` and `new`, as reload lines
/// ("tenant acme route \"+1\": CA bundle swapped").
pub(super) fn route_ca_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for b in &new.tenants {
        let Some(a) = old.tenants.iter().find(|a| a.id == b.id) else {
            continue;
        };
        for r in &b.routes {
            let was = a.routes.iter().find(|o| o.prefix == r.prefix);
            if was.is_some_and(|o| o.ca_pem != r.ca_pem) {
                out.push(format!(
                    "tenant {} route {:?}: CA bundle swapped",
                    b.id, r.prefix
                ));
            }
        }
    }
    out
}

/// What the poll shares with the server handle.
pub(super) struct PollShared {
    pub(super) tls: Arc<TlsListeners>,
    /// The config in force (start, then each reload), with route CA bundles the poll
    /// swapped.
    pub(super) current: Arc<RwLock<Arc<Config>>>,
    /// Held by a reload and by each poll pass, so neither undoes the other.
    pub(super) reload_lock: Arc<tokio::sync::Mutex<()>>,
    pub(super) events: mpsc::Sender<Event>,
}

/// Every `sip.cert_poll_secs` (read from the config in force, so a reload changes it),
/// reads listener and route CA files again and swaps what changed.
pub(super) async fn poll_certificates(shared: PollShared, mut shutdown: watch::Receiver<bool>) {
    let mut refusals = Refusals::default();
    // A pass whose file reads did not return in time (its thread cannot be cancelled).
    let mut stuck: Option<tokio::task::JoinHandle<_>> = None;
    loop {
        let every = current_config(&shared.current).sip.cert_poll;
        tokio::select! {
            _ = tokio::time::sleep(every.unwrap_or(POLL_OFF_RECHECK)) => {}
            _ = shutdown.changed() => return,
        }
        let _pass = shared.reload_lock.lock().await;
        let config = current_config(&shared.current);
        if config.sip.cert_poll.is_none() {
            continue;
        }
        if stuck.as_ref().is_some_and(|h| !h.is_finished()) {
            // A read of the previous pass still hangs: do not pile up another.
            continue;
        }
        let tls = shared.tls.clone();
        let mut moved = std::mem::take(&mut refusals);
        let mut pass = tokio::task::spawn_blocking(move || {
            let lines = tls.poll(&mut moved);
            let routes = reread_route_cas(&config, &mut moved);
            (lines, routes, moved)
        });
        let polled = match tokio::time::timeout(POLL_PASS_WITHIN, &mut pass).await {
            Ok(r) => r,
            Err(_) => {
                warn!(
                    event = "certificate_poll_stuck",
                    within_secs = POLL_PASS_WITHIN.as_secs(),
                    "reading the certificate files hangs (a stale network mount?): this poll is abandoned, reloads go on"
                );
                stuck = Some(pass);
                continue;
            }
        };
        let Ok((lines, routes, moved)) = polled else {
            continue;
        };
        refusals = moved;
        if let Some(new) = routes {
            apply_route_cas(&shared, new, &mut refusals).await;
        }
        for line in lines {
            debug!(change = %line, "certificate poll");
        }
    }
}

fn current_config(current: &RwLock<Arc<Config>>) -> Arc<Config> {
    current.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// `config` with the route CA bundles that changed on disk, or `None` if none did.
fn reread_route_cas(config: &Config, refusals: &mut Refusals) -> Option<Config> {
    let mut new = config.clone();
    let mut changed = false;
    for t in &mut new.tenants {
        let tenant = t.id.to_string();
        for r in &mut t.routes {
            match r.reread_ca(&tenant) {
                Ok(Some(pem)) => {
                    r.ca_pem = Some(pem);
                    changed = true;
                }
                Ok(None) => {
                    refusals.clear(&format!("tenants.{tenant}.routes[{:?}].ca_file", r.prefix))
                }
                Err(e) => refusals.refuse(e),
            }
        }
    }
    changed.then_some(new)
}

/// Hands routes with new CA bundles to the core (new connections to those targets use
/// them; a running call keeps its target's connection).
async fn apply_route_cas(shared: &PollShared, new: Config, refusals: &mut Refusals) {
    let old = current_config(&shared.current);
    let lines = route_ca_changes(&old, &new);
    let routes = match crate::targets::prepare(&new) {
        Ok(r) => r,
        Err(e) => {
            refusals.refuse(TlsFileError {
                key: "tenants.*.routes.ca_file".to_string(),
                path: PathBuf::new(),
                why: e.to_string(),
            });
            return;
        }
    };
    let new = Arc::new(new);
    if shared
        .events
        .send(Event::Reload {
            config: new.clone(),
            routes,
        })
        .await
        .is_err()
    {
        return;
    }
    *shared.current.write().unwrap_or_else(|p| p.into_inner()) = new;
    for line in lines {
        count("swapped");
        info!(event = "certificate_swapped", change = %line, "new connections to the route target verify it with the new CA bundle");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// The embedded default: a listener with a self-signed certificate made now (a
    /// fresh key pair each call).
    fn config() -> Config {
        Config::embedded_default().expect("default")
    }

    /// `l` with the certificate of `cert` and the key of `key`.
    fn with_pair(l: &Listener, cert: &Listener, key: &Listener) -> Listener {
        let mut l = l.clone();
        l.certificate_pem = cert.certificate_pem.clone();
        l.private_key = key.private_key.clone();
        l
    }

    #[test]
    fn what_changed_names_each_part() {
        let cfg = config();
        let l = &cfg.listeners[0];
        let other = config().listeners[0].clone();
        assert_eq!(what_changed(l, l), "");
        assert_eq!(
            what_changed(l, &with_pair(l, &other, &other)),
            "certificate and key swapped"
        );
        assert_eq!(what_changed(l, &with_pair(l, l, &other)), "key swapped");
        let mut ca = l.clone();
        ca.client_ca_pem = Some(other.certificate_pem.clone());
        ca.require_client_cert = true;
        assert_eq!(
            what_changed(l, &ca),
            "client CA swapped; client certificates now required"
        );
    }

    #[test]
    fn a_mismatched_pair_is_refused_and_a_good_one_swapped() {
        let cfg = config();
        let tls = TlsListeners::new(&cfg).unwrap();
        let l = &cfg.listeners[0];
        assert!(tls.prepare(&cfg.listeners).unwrap().is_empty(), "unchanged");
        let other = config().listeners[0].clone();
        let mismatched = with_pair(l, &other, l);
        let e = tls
            .prepare(std::slice::from_ref(&mismatched))
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("does not match the private key"),
            "{e}"
        );
        // Still the old material in use.
        assert!(tls.prepare(&cfg.listeners).unwrap().is_empty());
        let good = with_pair(l, &other, &other);
        let prepared = tls.prepare(std::slice::from_ref(&good)).unwrap();
        let lines = tls.install(prepared);
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].starts_with("listener default: certificate and key swapped, not after "),
            "{}",
            lines[0]
        );
        assert!(!lines[0].contains("PRIVATE KEY"));
        assert!(tls.prepare(std::slice::from_ref(&good)).unwrap().is_empty());
    }

    #[test]
    fn a_file_that_stays_bad_is_refused_once() {
        let mut r = Refusals::default();
        let e = TlsFileError {
            key: "listeners.l.certificate".into(),
            path: "/x/cert.pem".into(),
            why: "no PEM certificate in the file".into(),
        };
        r.refuse(e.clone());
        r.refuse(e.clone());
        assert_eq!(r.0.len(), 1);
        r.clear_listener("l");
        assert!(r.0.is_empty());
    }
}
