//! A minimal RESP2 client: one TCP connection, commands written as arrays of bulk
//! strings, replies parsed with bounds. Pipelining is writing several commands before
//! reading their replies.
//!
//! Why our own and not the `redis` crate: the gateway needs three things the crate makes
//! hard: a hard deadline on every round trip with the connection dropped after a missed
//! one (a late reply must never be read as the answer to the next command), following a
//! Sentinel failover on a live connection (redis-rs #1438: it does not), and a small
//! build (the crate and its dependency tree would double the build of this workspace on
//! CI's two cores). What is used is ~10 commands; RESP2 is a page of spec.
//!
//! Owns: the socket and reply parsing. Must not: decide anything (the worker does).

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::error::ClusterError;

/// Largest bulk string accepted in a reply: replies are numbers and short names.
const MAX_BULK: usize = 1 << 20;
/// Most elements of one reply array (a usage listing returns at most a tenant's leases).
const MAX_ARRAY: usize = 1 << 20;
/// Deepest nesting of reply arrays: XREAD's reply nests four deep (streams, entries,
/// one entry, its fields); admission replies twice.
const MAX_DEPTH: usize = 6;

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Value>>),
}

impl Value {
    /// The integer of an integer reply.
    pub fn int(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            Value::Bulk(Some(b)) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }

    /// The text of a bulk or simple string reply.
    pub fn text(&self) -> Option<String> {
        match self {
            Value::Simple(s) => Some(s.clone()),
            Value::Bulk(Some(b)) => String::from_utf8(b.clone()).ok(),
            _ => None,
        }
    }

    /// The elements of an array reply.
    pub fn array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(Some(v)) => Some(v),
            _ => None,
        }
    }
}

/// One connection to a Redis server (or Sentinel).
#[derive(Debug)]
pub struct Connection {
    stream: BufReader<TcpStream>,
    out: Vec<u8>,
}

impl Connection {
    /// Connect to `addr` (`host:port`). The caller bounds the time.
    pub async fn connect(addr: &str) -> Result<Connection, ClusterError> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| ClusterError::Connect(format!("{addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        Ok(Connection {
            stream: BufReader::new(tcp),
            out: Vec::with_capacity(512),
        })
    }

    /// Queue one command (sent by [`Connection::flush`]).
    pub fn push(&mut self, args: &[&[u8]]) {
        self.out
            .extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            self.out
                .extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            self.out.extend_from_slice(a);
            self.out.extend_from_slice(b"\r\n");
        }
    }

    /// Send everything queued.
    pub async fn flush(&mut self) -> Result<(), ClusterError> {
        let out = std::mem::take(&mut self.out);
        let r = self.stream.get_mut().write_all(&out).await;
        self.out = out;
        self.out.clear();
        r.map_err(ClusterError::Io)
    }

    /// Send one command and read its reply. An error reply is `Ok(Value::Error)`.
    pub async fn call(&mut self, args: &[&[u8]]) -> Result<Value, ClusterError> {
        self.push(args);
        self.flush().await?;
        self.read().await
    }

    /// Read one reply.
    pub async fn read(&mut self) -> Result<Value, ClusterError> {
        self.read_depth(0).await
    }

    fn read_depth<'a>(
        &'a mut self,
        depth: usize,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, ClusterError>> + Send + 'a>>
    {
        Box::pin(async move {
            let mut line = Vec::new();
            let n = (&mut self.stream)
                .take(MAX_BULK as u64)
                .read_until(b'\n', &mut line)
                .await
                .map_err(ClusterError::Io)?;
            if n == 0 {
                return Err(ClusterError::Protocol("connection closed".into()));
            }
            if line.len() < 3 || !line.ends_with(b"\r\n") {
                return Err(ClusterError::Protocol("bad reply line".into()));
            }
            let body = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
            let number = || -> Result<i64, ClusterError> {
                body.parse::<i64>()
                    .map_err(|_| ClusterError::Protocol("bad number".into()))
            };
            match line[0] {
                b'+' => Ok(Value::Simple(body)),
                b'-' => Ok(Value::Error(body)),
                b':' => Ok(Value::Int(number()?)),
                b'$' => {
                    let len = number()?;
                    if len < 0 {
                        return Ok(Value::Bulk(None));
                    }
                    let len = usize::try_from(len)
                        .ok()
                        .filter(|l| *l <= MAX_BULK)
                        .ok_or_else(|| ClusterError::Protocol("bulk too large".into()))?;
                    let mut buf = vec![0u8; len + 2];
                    self.stream
                        .read_exact(&mut buf)
                        .await
                        .map_err(ClusterError::Io)?;
                    buf.truncate(len);
                    Ok(Value::Bulk(Some(buf)))
                }
                b'*' => {
                    let len = number()?;
                    if len < 0 {
                        return Ok(Value::Array(None));
                    }
                    if depth >= MAX_DEPTH {
                        return Err(ClusterError::Protocol("reply nested too deep".into()));
                    }
                    let len = usize::try_from(len)
                        .ok()
                        .filter(|l| *l <= MAX_ARRAY)
                        .ok_or_else(|| ClusterError::Protocol("array too large".into()))?;
                    let mut items = Vec::with_capacity(len.min(64));
                    for _ in 0..len {
                        items.push(self.read_depth(depth + 1).await?);
                    }
                    Ok(Value::Array(Some(items)))
                }
                _ => Err(ClusterError::Protocol("unknown reply type".into())),
            }
        })
    }
}
