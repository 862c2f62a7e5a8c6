//! The one HTTP/1.1 client of the tests: a request on a fresh connection (plain TCP or any
//! stream, e.g. TLS), `Connection: close`, the answer read to the end and parsed (sized or
//! chunked body).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a client waits for a whole answer (the admin plane answers in milliseconds;
/// a slow CI machine gets ample room).
pub const HTTP_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("utf-8 body")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// An `Authorization` value for a bearer token.
pub fn bearer(token: &str) -> Option<String> {
    Some(format!("Bearer {token}"))
}

/// One request on `stream` with extra `headers` and an optional body; a POST without a
/// body carries `Content-Length: 0`.
pub async fn send_with<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> io::Result<Resp> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: admin.test\r\nConnection: close\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    match body {
        Some(b) => req.push_str(&format!("Content-Length: {}\r\n", b.len())),
        None if method == "POST" => req.push_str("Content-Length: 0\r\n"),
        None => {}
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    stream.write_all(req.as_bytes()).await?;
    stream.flush().await?;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(HTTP_WAIT, stream.read_to_end(&mut buf))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "response timed out"))?;
    match read {
        Ok(_) => {}
        // A peer that closes without TLS close_notify: keep what arrived.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !buf.is_empty() => {}
        Err(e) => return Err(e),
    }
    parse(&buf)
}

/// One request on `stream` with an optional `Authorization` value and no body.
pub async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    method: &str,
    path: &str,
    authorization: Option<String>,
) -> io::Result<Resp> {
    let auth = authorization.map(|a| [("Authorization", a)]);
    let headers: Vec<(&str, &str)> = auth
        .iter()
        .flatten()
        .map(|(n, v)| (*n, v.as_str()))
        .collect();
    send_with(stream, method, path, &headers, None).await
}

/// [`send_with`] on a fresh TCP connection to `addr`; panics when the exchange fails.
pub async fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Resp {
    let stream = TcpStream::connect(addr).await.expect("connect");
    send_with(stream, method, path, headers, body)
        .await
        .expect("HTTP exchange")
}

/// [`send`] on a fresh TCP connection to `addr`; panics when the exchange fails.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    authorization: Option<String>,
) -> Resp {
    let stream = TcpStream::connect(addr).await.expect("connect");
    send(stream, method, path, authorization)
        .await
        .expect("HTTP exchange")
}

/// One request to the admin plane with an optional bearer token and a body (sized even
/// when empty); (status, body as text).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let r = request_with(addr, method, path, &headers, Some(body)).await;
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

fn parse(buf: &[u8]) -> io::Result<Resp> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| bad("head not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let mut headers = HashMap::new();
    for l in lines {
        let (k, v) = l.split_once(':').ok_or_else(|| bad("bad header"))?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let mut body = buf[end + 4..].to_vec();
    if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    } else if let Some(len) = headers.get("content-length") {
        let len: usize = len.parse().map_err(|_| bad("bad content-length"))?;
        if body.len() < len {
            return Err(bad("short body"));
        }
        body.truncate(len);
    }
    Ok(Resp {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&b[..nl]).ok()?.trim(), 16).ok()?;
        b = &b[nl + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}
