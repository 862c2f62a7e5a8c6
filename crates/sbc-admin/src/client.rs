//! The client side of the admin API: what `sbc-edge ctl` (and any Rust tool) uses to talk
//! to a running gateway's admin plane.
//!
//! Owns: the admin address ([`Endpoint`]: `http://` or `https://` host and port), one
//! HTTP/1.1 request per connection (`Connection: close`, the answer read to the end,
//! sized or chunked body), HTTPS with a private CA and an optional client certificate
//! (the admin plane's `admin.client_ca`), the bearer token, and turning an answer into
//! JSON or a [`ClientError`] that says what went wrong in words an operator can act on.
//! Must not: format for humans (the command line does), log the token, or follow
//! redirects. Bounds: [`REQUEST_TIMEOUT`] for a whole exchange, [`MAX_RESPONSE_BYTES`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use zeroize::Zeroizing;

/// A whole exchange (connect, TLS, request, answer) longer than this fails: the admin
/// plane answers in milliseconds, a reload in well under a second.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest answer read: a call list of 100,000 calls (the registry's bound) is ~20 MB.
pub const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// Why a request did not give a usable answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The admin address is not `http://HOST:PORT` or `https://HOST:PORT`.
    #[error("admin address {0:?}: expected http://HOST:PORT or https://HOST:PORT")]
    Address(String),
    /// The CA, certificate or key files are unusable.
    #[error("TLS settings: {0}")]
    Tls(String),
    /// No token was given for a `/v1` request.
    #[error("no admin token: pass --token-file FILE or set SBC_EDGE_TOKEN")]
    NoToken,
    /// The gateway could not be reached or the exchange broke off.
    #[error("cannot reach the admin plane at {address}: {reason}")]
    Unreachable { address: String, reason: String },
    /// The answer is not HTTP, too large, or not the JSON expected.
    #[error("unexpected answer from the admin plane: {0}")]
    BadAnswer(String),
    /// 401: the token is missing, malformed or unknown.
    #[error("the admin plane refused the token (401): {0}")]
    Unauthorized(String),
    /// Any other non-2xx status, with the API's `error` text.
    #[error("{status}: {message}")]
    Status { status: u16, message: String },
}

/// Where the admin plane listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// HTTPS when true.
    pub https: bool,
    /// Host name or address (IPv6 without brackets), for TLS server name and `Host`.
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// `http://HOST:PORT`, `https://HOST:PORT`, or `HOST:PORT` (HTTP). A trailing `/` is
    /// allowed; a path is not.
    pub fn parse(text: &str) -> Result<Endpoint, ClientError> {
        let bad = || ClientError::Address(text.to_string());
        let (https, rest) = if let Some(r) = text.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = text.strip_prefix("http://") {
            (false, r)
        } else {
            (false, text)
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') {
            return Err(bad());
        }
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        Ok(Endpoint {
            https,
            host: host.to_string(),
            port,
        })
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.authority())
    }
}

/// PEM contents for HTTPS: the CA that signed the admin certificate (else the system's
/// roots are not consulted: an admin plane has a private CA), and a client certificate
/// and key when the admin plane asks for one.
#[derive(Default)]
pub struct TlsFiles {
    pub ca_pem: Option<Vec<u8>>,
    pub client_cert_pem: Option<Vec<u8>>,
    pub client_key_pem: Option<Zeroizing<Vec<u8>>>,
}

impl fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFiles")
            .field("ca", &self.ca_pem.is_some())
            .field("client_cert", &self.client_cert_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// One request, as it goes on the wire (kept apart from the I/O so it can be checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: &'static str,
    pub path: String,
    /// JSON body, if any.
    pub body: Option<Vec<u8>>,
}

impl Request {
    pub fn get(path: impl Into<String>) -> Request {
        Request {
            method: "GET",
            path: path.into(),
            body: None,
        }
    }

    pub fn post(path: impl Into<String>) -> Request {
        Request {
            method: "POST",
            path: path.into(),
            body: None,
        }
    }

    pub fn put_json(path: impl Into<String>, body: &serde_json::Value) -> Request {
        Request {
            method: "PUT",
            path: path.into(),
            body: Some(body.to_string().into_bytes()),
        }
    }

    /// The bytes sent for this request to `host` with `token`.
    pub fn to_bytes(&self, host: &str, token: Option<&str>) -> Zeroizing<Vec<u8>> {
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAccept: application/json\r\nUser-Agent: sbc-edge-ctl\r\n",
            self.method, self.path
        );
        if let Some(t) = token {
            head.push_str("Authorization: Bearer ");
            head.push_str(t);
            head.push_str("\r\n");
        }
        let body = self.body.as_deref().unwrap_or(b"");
        if self.body.is_some() {
            head.push_str("Content-Type: application/json\r\n");
        }
        if self.body.is_some() || self.method != "GET" {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut out = Zeroizing::new(head.into_bytes());
        out.extend_from_slice(body);
        out
    }
}

/// A status and a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// A client of one gateway's admin plane.
pub struct AdminClient {
    endpoint: Endpoint,
    tls: Option<TlsConnector>,
    token: Option<Zeroizing<String>>,
}

impl fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminClient")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

impl AdminClient {
    /// A client for `endpoint`; `tls` is used (and needed) for `https://`.
    pub fn new(
        endpoint: Endpoint,
        tls: &TlsFiles,
        token: Option<Zeroizing<String>>,
    ) -> Result<AdminClient, ClientError> {
        let tls = if endpoint.https {
            Some(connector(tls)?)
        } else {
            None
        };
        Ok(AdminClient {
            endpoint,
            tls,
            token,
        })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Sends `req` and returns the answer whatever its status.
    pub async fn send(&self, req: &Request) -> Result<Answer, ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable {
            address: self.endpoint.to_string(),
            reason,
        };
        let bytes = req.to_bytes(
            &self.endpoint.authority(),
            self.token.as_ref().map(|t| t.as_str()),
        );
        let exchange = async {
            let tcp = TcpStream::connect((self.endpoint.host.as_str(), self.endpoint.port))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let raw = match &self.tls {
                None => exchange(tcp, &bytes).await,
                Some(connector) => {
                    let name = ServerName::try_from(self.endpoint.host.clone())
                        .map_err(|e| ClientError::Tls(format!("server name: {e}")))?;
                    let tls = connector
                        .connect(name, tcp)
                        .await
                        .map_err(|e| unreachable(format!("TLS: {e}")))?;
                    exchange(tls, &bytes).await
                }
            };
            raw.map_err(|e| unreachable(e.to_string()))
        };
        let raw = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {REQUEST_TIMEOUT:?}")))??;
        parse_answer(&raw)
    }

    /// Sends a `/v1` request and returns its JSON answer; a non-2xx answer is an error
    /// carrying the API's `error` text.
    pub async fn json(&self, req: &Request) -> Result<serde_json::Value, ClientError> {
        if self.token.is_none() {
            return Err(ClientError::NoToken);
        }
        let answer = self.send(req).await?;
        let value: Option<serde_json::Value> = serde_json::from_slice(&answer.body).ok();
        if (200..300).contains(&answer.status) {
            return match value {
                Some(v) => Ok(v),
                None if answer.body.is_empty() => Ok(serde_json::Value::Null),
                None => Err(ClientError::BadAnswer("the body is not JSON".to_string())),
            };
        }
        let message = value
            .as_ref()
            .and_then(|v| v.get("error"))
            .and_then(|e| e.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&answer.body).trim().to_string());
        Err(match answer.status {
            401 => ClientError::Unauthorized(message),
            status => ClientError::Status { status, message },
        })
    }
}

fn connector(files: &TlsFiles) -> Result<TlsConnector, ClientError> {
    let err = |what: &str, e: &dyn fmt::Display| ClientError::Tls(format!("{what}: {e}"));
    let Some(ca) = &files.ca_pem else {
        return Err(ClientError::Tls(
            "an https:// admin address needs --ca FILE (the CA of the admin certificate)"
                .to_string(),
        ));
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca) {
        let cert = cert.map_err(|e| err("CA file", &e))?;
        roots.add(cert).map_err(|e| err("CA file", &e))?;
    }
    if roots.is_empty() {
        return Err(ClientError::Tls(
            "CA file: no certificate in it".to_string(),
        ));
    }
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let mut cfg = match (&files.client_cert_pem, &files.client_key_pem) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<_, _>>()
                .map_err(|e| err("client certificate", &e))?;
            // Only the parser's error kind is reported, never the key's bytes.
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| err("client key", &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| err("client certificate and key", &e))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(ClientError::Tls(
                "a client certificate needs both --cert and --key".to_string(),
            ))
        }
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(cfg)))
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &[u8],
) -> std::io::Result<Vec<u8>> {
    stream.write_all(request).await?;
    stream.flush().await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(n) => n,
            // A peer that closes without TLS close_notify: keep what arrived.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => 0,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(buf);
        }
        if buf.len() + n > MAX_RESPONSE_BYTES {
            return Err(std::io::Error::other(format!(
                "answer larger than {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Status and body of a whole HTTP/1.1 answer (sized, chunked, or to the end).
pub fn parse_answer(raw: &[u8]) -> Result<Answer, ClientError> {
    let bad = |m: &str| ClientError::BadAnswer(m.to_string());
    let split = memchr_find(raw, b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad("headers are not text"))?;
    let rest = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(bad("no status line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(bad("not HTTP/1.x"));
    }
    let status: u16 = code.parse().map_err(|_| bad("bad status code"))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| bad("bad Content-Length"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let body = if chunked {
        dechunk(rest).ok_or_else(|| bad("broken chunked body"))?
    } else if let Some(n) = length {
        rest.get(..n)
            .ok_or_else(|| bad("body shorter than its Content-Length"))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Answer { status, body })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let end = memchr_find(data, b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..end]).ok()?;
        let size_text = size_text.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        data = &data[end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

fn memchr_find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("http://127.0.0.1:9090").expect("ok");
        assert_eq!(
            (e.https, e.host.as_str(), e.port),
            (false, "127.0.0.1", 9090)
        );
        let e = Endpoint::parse("https://admin.example:9443/").expect("ok");
        assert_eq!(
            (e.https, e.host.as_str(), e.port),
            (true, "admin.example", 9443)
        );
        assert_eq!(e.to_string(), "https://admin.example:9443");
        let e = Endpoint::parse("[::1]:9090").expect("ok");
        assert_eq!(
            (e.host.as_str(), e.authority()),
            ("::1", "[::1]:9090".to_string())
        );
        for bad in [
            "http://x",
            "http://x:0",
            "http://x:9090/v1",
            "ftp://x:1:2",
            ":9090",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn request_bytes() {
        let get = Request::get("/v1/calls").to_bytes("127.0.0.1:9090", Some("s3cret"));
        let get = String::from_utf8(get.to_vec()).expect("text");
        assert!(get.starts_with("GET /v1/calls HTTP/1.1\r\nHost: 127.0.0.1:9090\r\n"));
        assert!(get.contains("\r\nAuthorization: Bearer s3cret\r\n"));
        assert!(!get.contains("Content-Length"));
        assert!(get.ends_with("\r\n\r\n"));
        let post = Request::post("/v1/drain").to_bytes("h:1", None);
        let post = String::from_utf8(post.to_vec()).expect("text");
        assert!(post.contains("Content-Length: 0\r\n") && !post.contains("Authorization"));
        let put = Request::put_json("/v1/log-level", &serde_json::json!({ "level": "debug" }));
        let put = String::from_utf8(put.to_bytes("h:1", Some("t")).to_vec()).expect("text");
        assert!(put.starts_with("PUT /v1/log-level HTTP/1.1\r\n"), "{put}");
        assert!(put.contains("Content-Type: application/json\r\n"));
        assert!(put.contains("Content-Length: 17\r\n"), "{put}");
        assert!(put.ends_with("\r\n\r\n{\"level\":\"debug\"}"), "{put}");
    }

    #[test]
    fn answers() {
        let a = parse_answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").expect("ok");
        assert_eq!((a.status, a.body.as_slice()), (200, b"{}".as_slice()));
        let a = parse_answer(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .expect("ok");
        assert_eq!((a.status, a.body.as_slice()), (404, b"abcde".as_slice()));
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n{}").is_err());
        assert!(parse_answer(b"garbage").is_err());
    }
}
