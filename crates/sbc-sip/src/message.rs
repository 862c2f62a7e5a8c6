//! SIP messages (RFC 3261 §7): parse, inspect, edit, serialize.
//!
//! Our own parser, chosen by measurement against `rsip` (see `benches/sip_parse.rs` and
//! the issue note): a message is a start line, an ordered list of header lines kept as
//! written (names case-insensitive, compact forms understood), and an opaque body.
//! Content-Length is not stored: the body is the truth and serialization writes it.
//!
//! Never panics on input (proptests in this module; fuzz target `fuzz/fuzz_targets/sip_parse.rs`,
//! run as fuzz/README.md says).

use std::fmt;

/// Most header lines a message may carry unless the caller says otherwise.
pub const DEFAULT_MAX_HEADERS: usize = 100;

/// A SIP method.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Update,
    Info,
    Notify,
    Prack,
    Subscribe,
    Refer,
    Message,
    Publish,
    /// Any other token (extension methods).
    Other(Box<str>),
}

impl Method {
    /// The method as written on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::Update => "UPDATE",
            Method::Info => "INFO",
            Method::Notify => "NOTIFY",
            Method::Prack => "PRACK",
            Method::Subscribe => "SUBSCRIBE",
            Method::Refer => "REFER",
            Method::Message => "MESSAGE",
            Method::Publish => "PUBLISH",
            Method::Other(s) => s,
        }
    }

    /// A method token (case-sensitive, RFC 3261 §7.1); `None` if it is not a token.
    pub fn parse(s: &str) -> Option<Method> {
        Some(match s {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "OPTIONS" => Method::Options,
            "REGISTER" => Method::Register,
            "UPDATE" => Method::Update,
            "INFO" => Method::Info,
            "NOTIFY" => Method::Notify,
            "PRACK" => Method::Prack,
            "SUBSCRIBE" => Method::Subscribe,
            "REFER" => Method::Refer,
            "MESSAGE" => Method::Message,
            "PUBLISH" => Method::Publish,
            other if is_token(other) => Method::Other(other.into()),
            _ => return None,
        })
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// RFC 3261 §25.1 token characters.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
}

/// Why a message did not parse. Each maps to the status and reason phrase we answer a
/// request with ([`ParseError::status`], [`ParseError::reason_phrase`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    #[error("empty message")]
    Empty,
    #[error("malformed start line")]
    BadStartLine,
    /// A request line that is not exactly `Method SP Request-URI SP SIP-Version`
    /// (RFC 3261 §7.1); the fault, as written in the reason phrase.
    #[error("malformed request line: {0}")]
    BadRequestLine(&'static str),
    /// A well-formed `SIP/x.y` other than 2.0: answered 505 (RFC 3261 §21.5.7).
    #[error("unsupported SIP version")]
    BadVersion,
    #[error("malformed header line {0}")]
    BadHeader(usize),
    #[error("more than {0} headers")]
    TooManyHeaders(usize),
    #[error("headers are not UTF-8")]
    NotUtf8,
    #[error("no end of headers")]
    Unterminated,
    #[error("missing {0} header")]
    Missing(&'static str),
    #[error("malformed {0} header")]
    Malformed(&'static str),
    /// A header that may appear once (RFC 3261 §20: Call-ID, From, To, CSeq,
    /// Max-Forwards, Content-Type) appears twice, in any mix of long and compact forms.
    #[error("duplicated {0} header")]
    Duplicate(&'static str),
    #[error("CSeq method does not match the request method")]
    CSeqMismatch,
    #[error("Content-Length does not match the body")]
    BadContentLength,
}

impl ParseError {
    /// The status code answering a request that failed with this error: 505 for another
    /// SIP version (RFC 3261 §8.2.2 is silent, §21.5.7 names it), 400 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            ParseError::BadVersion => 505,
            _ => 400,
        }
    }

    /// The reason phrase answering this error, e.g. `Bad Request (Missing Call-ID)`, or
    /// `Version Not Supported` for the 505.
    pub fn reason_phrase(&self) -> String {
        let why = match self {
            ParseError::BadVersion => return "Version Not Supported".to_string(),
            ParseError::Empty => "Empty Message".to_string(),
            ParseError::BadStartLine => "Malformed Request Line".to_string(),
            ParseError::BadRequestLine(what) => (*what).to_string(),
            ParseError::BadHeader(n) => format!("Malformed Header Line {n}"),
            ParseError::TooManyHeaders(n) => format!("More Than {n} Headers"),
            ParseError::NotUtf8 => "Headers Not UTF-8".to_string(),
            ParseError::Unterminated => "Unterminated Headers".to_string(),
            ParseError::Missing(h) => format!("Missing {h}"),
            ParseError::Malformed(h) => format!("Malformed {h}"),
            ParseError::Duplicate(h) => format!("Duplicate {h}"),
            ParseError::CSeqMismatch => "CSeq Method Mismatch".to_string(),
            ParseError::BadContentLength => "Bad Content-Length".to_string(),
        };
        format!("Bad Request ({why})")
    }
}

/// Parser bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most header lines (after unfolding).
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_headers: DEFAULT_MAX_HEADERS,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum StartLine {
    Request { method: Method, uri: String },
    Response { code: u16, reason: String },
}

/// A SIP request or response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipMessage {
    start: StartLine,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// RFC 3261 §7.3.3 compact forms (and common extension ones), lower case.
fn expand_compact(name: &str) -> Option<&'static str> {
    if name.len() != 1 {
        return None;
    }
    Some(match name.as_bytes()[0].to_ascii_lowercase() {
        b'v' => "via",
        b'f' => "from",
        b't' => "to",
        b'i' => "call-id",
        b'm' => "contact",
        b'l' => "content-length",
        b'c' => "content-type",
        b'e' => "content-encoding",
        b'k' => "supported",
        b's' => "subject",
        b'o' => "event",
        b'r' => "refer-to",
        b'u' => "allow-events",
        b'x' => "session-expires",
        b'b' => "referred-by",
        _ => return None,
    })
}

/// The long form of a header name as written: a compact form (RFC 3261 §7.3.3) expanded
/// to its lower-case long form, any other name returned as given. No allocation.
pub fn long_header_name(name: &str) -> &str {
    want_name(name)
}

/// True if header name `have` (as written) is the header `want` (long form, any case).
fn name_is(have: &str, want: &str) -> bool {
    have.eq_ignore_ascii_case(want)
        || expand_compact(have).is_some_and(|e| e.eq_ignore_ascii_case(want))
}

/// The long form of a header name as asked for (compact forms expanded); no allocation.
fn want_name(name: &str) -> &str {
    expand_compact(name).unwrap_or(name)
}

/// Headers a message carries at most once (RFC 3261 §20: not lists, and a second copy
/// makes the dialog or transaction ambiguous): (long form in lower case, name in the
/// reason phrase). Content-Length is checked apart (equal copies tolerated). At most 8
/// (a `u8` bit set in the parser).
const SINGLE_INSTANCE: [(&str, &str); 6] = [
    ("call-id", "Call-ID"),
    ("from", "From"),
    ("to", "To"),
    ("cseq", "CSeq"),
    ("max-forwards", "Max-Forwards"),
    ("content-type", "Content-Type"),
];

/// The index in [`SINGLE_INSTANCE`] of header `name` as written (compact forms expanded).
fn single_instance(name: &str) -> Option<usize> {
    let want = want_name(name);
    SINGLE_INSTANCE
        .iter()
        .position(|(h, _)| h.eq_ignore_ascii_case(want))
}

/// Headers whose values may contain commas and are never lists.
fn is_single_valued(want: &str) -> bool {
    const SINGLE: [&str; 14] = [
        "call-id",
        "cseq",
        "from",
        "to",
        "date",
        "subject",
        "user-agent",
        "server",
        "www-authenticate",
        "authorization",
        "proxy-authenticate",
        "proxy-authorization",
        "retry-after",
        "content-type",
    ];
    SINGLE.iter().any(|h| h.eq_ignore_ascii_case(want))
}

/// Where the first list-separating comma of a header value is: commas inside quoted
/// strings and `<...>` do not separate.
fn list_comma(value: &str) -> Option<usize> {
    let mut angle = false;
    let stop = |c| match c {
        '<' => {
            angle = true;
            false
        }
        '>' => {
            angle = false;
            false
        }
        ',' => !angle,
        _ => false,
    };
    match scan_unquoted(value, stop) {
        Unquoted::At(i) => Some(i),
        Unquoted::End | Unquoted::Unbalanced => None,
    }
}

/// How [`scan_unquoted`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unquoted {
    /// At this byte index, outside any quoted string.
    At(usize),
    /// The end of the text, every quoted string closed.
    End,
    /// The end of the text inside an unclosed quoted string.
    Unbalanced,
}

/// Scan `s` for the first character outside quoted strings (RFC 3261 §25.1
/// quoted-string, `\` escapes inside) for which `stop` says true. The one scanner behind
/// list commas, parameter separators and the `<` of a name-addr.
fn scan_unquoted(s: &str, mut stop: impl FnMut(char) -> bool) -> Unquoted {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if !quoted && stop(c) => return Unquoted::At(i),
            _ => {}
        }
    }
    if quoted {
        Unquoted::Unbalanced
    } else {
        Unquoted::End
    }
}

/// The elements of a comma-separated header value, trimmed; no allocation.
#[derive(Debug, Clone)]
struct ListElements<'a> {
    rest: Option<&'a str>,
}

impl<'a> Iterator for ListElements<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let v = self.rest?;
        match list_comma(v) {
            Some(i) => {
                self.rest = Some(&v[i + 1..]);
                Some(v[..i].trim())
            }
            None => {
                self.rest = None;
                Some(v.trim())
            }
        }
    }
}

/// One header line's values: split at list commas (empty elements skipped), or the whole
/// value for headers that are never lists. No allocation.
#[derive(Debug, Clone)]
enum LineValues<'a> {
    Split(ListElements<'a>),
    Whole(Option<&'a str>),
}

impl<'a> Iterator for LineValues<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        match self {
            LineValues::Split(elements) => elements.find(|e| !e.is_empty()),
            LineValues::Whole(v) => v.take(),
        }
    }
}

/// The first element of a comma-separated list value (commas in quotes and <> kept).
fn first_value(value: &str) -> &str {
    match list_comma(value) {
        Some(i) => value[..i].trim(),
        None => value.trim(),
    }
}

/// Split a header value at commas that are outside quotes and angle brackets.
pub fn split_values(value: &str) -> impl Iterator<Item = &str> {
    ListElements { rest: Some(value) }.filter(|p| !p.is_empty())
}

impl SipMessage {
    /// Parse one message with default limits.
    pub fn parse(buf: &[u8]) -> Result<SipMessage, ParseError> {
        SipMessage::parse_with_limits(buf, &Limits::default())
    }

    /// Parse one message (head and complete body). Lines may end in CRLF or LF; folded
    /// header lines are unfolded. The mandatory headers of RFC 3261 §8.1.1 must be there.
    pub fn parse_with_limits(buf: &[u8], limits: &Limits) -> Result<SipMessage, ParseError> {
        // Leading CRLFs before a message are allowed (RFC 3261 §7.5).
        let start = buf
            .iter()
            .position(|b| *b != b'\r' && *b != b'\n')
            .ok_or(ParseError::Empty)?;
        let buf = &buf[start..];
        let (head_len, body_start) = find_head_end(buf).ok_or(ParseError::Unterminated)?;
        let head = std::str::from_utf8(&buf[..head_len]).map_err(|_| ParseError::NotUtf8)?;
        let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
        let first = lines.next().ok_or(ParseError::Empty)?;
        let start = parse_start_line(first)?;

        let mut headers: Vec<(String, String)> = Vec::with_capacity(16);
        let mut content_length: Option<usize> = None;
        // Bit i set once SINGLE_INSTANCE[i] was seen.
        let mut seen_single: u8 = 0;
        for (n, line) in lines.enumerate() {
            if line.starts_with([' ', '\t']) {
                // Folded continuation of the previous header (RFC 3261 §7.3.1).
                match headers.last_mut() {
                    Some((_, v)) => {
                        // Folding is LWS (one SP); none before the first word of an
                        // empty value or after a blank continuation, so that the value
                        // serializes and re-parses unchanged.
                        let more = line.trim();
                        if !more.is_empty() {
                            if !v.is_empty() {
                                v.push(' ');
                            }
                            v.push_str(more);
                        }
                        continue;
                    }
                    None => return Err(ParseError::BadHeader(n + 2)),
                }
            }
            let (name, value) = line.split_once(':').ok_or(ParseError::BadHeader(n + 2))?;
            let name = name.trim_end();
            if !is_token(name) {
                return Err(ParseError::BadHeader(n + 2));
            }
            let value = value.trim();
            if let Some(i) = single_instance(name) {
                if seen_single & (1 << i) != 0 {
                    return Err(ParseError::Duplicate(SINGLE_INSTANCE[i].1));
                }
                seen_single |= 1 << i;
            }
            if name_is(name, "content-length") {
                let len = value
                    .parse::<usize>()
                    .map_err(|_| ParseError::BadContentLength)?;
                if content_length.is_some_and(|l| l != len) {
                    return Err(ParseError::BadContentLength);
                }
                content_length = Some(len);
                continue;
            }
            if headers.len() >= limits.max_headers {
                return Err(ParseError::TooManyHeaders(limits.max_headers));
            }
            headers.push((name.to_string(), value.to_string()));
        }
        let rest = &buf[body_start..];
        let body = match content_length {
            Some(len) if len > rest.len() => return Err(ParseError::BadContentLength),
            // Extra bytes after the body on a datagram are ignored (RFC 3261 §18.3).
            Some(len) => rest[..len].to_vec(),
            None => rest.to_vec(),
        };
        let msg = SipMessage {
            start,
            headers,
            body,
        };
        msg.validate()?;
        Ok(msg)
    }

    fn validate(&self) -> Result<(), ParseError> {
        let top_via = self.header("via").ok_or(ParseError::Missing("Via"))?;
        parse_via(top_via).ok_or(ParseError::Malformed("Via"))?;
        let from = self.header("from").ok_or(ParseError::Missing("From"))?;
        parse_name_addr(from).ok_or(ParseError::Malformed("From"))?;
        let to = self.header("to").ok_or(ParseError::Missing("To"))?;
        parse_name_addr(to).ok_or(ParseError::Malformed("To"))?;
        match self.call_id() {
            None => return Err(ParseError::Missing("Call-ID")),
            Some(c) if c.contains(char::is_whitespace) => {
                return Err(ParseError::Malformed("Call-ID"))
            }
            Some(_) => {}
        }
        if self.header("cseq").is_none() {
            return Err(ParseError::Missing("CSeq"));
        }
        let (_, cseq_method) = self.cseq().ok_or(ParseError::Malformed("CSeq"))?;
        if let StartLine::Request { method, .. } = &self.start {
            if *method != cseq_method {
                return Err(ParseError::CSeqMismatch);
            }
        }
        if self.header("max-forwards").is_some() && self.max_forwards().is_none() {
            return Err(ParseError::Malformed("Max-Forwards"));
        }
        Ok(())
    }

    /// A request with no headers yet.
    pub fn new_request(method: Method, uri: impl Into<String>) -> SipMessage {
        SipMessage {
            start: StartLine::Request {
                method,
                uri: uri.into(),
            },
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A response with no headers yet.
    pub fn new_response(code: u16, reason: impl Into<String>) -> SipMessage {
        SipMessage {
            start: StartLine::Response {
                code,
                reason: reason.into(),
            },
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The method of a request.
    pub fn method(&self) -> Option<&Method> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The Request-URI of a request.
    pub fn request_uri(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    /// Replace the Request-URI (no effect on a response).
    pub fn set_request_uri(&mut self, new: impl Into<String>) {
        if let StartLine::Request { uri, .. } = &mut self.start {
            *uri = new.into();
        }
    }

    /// The status code of a response.
    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => Some(*code),
            StartLine::Request { .. } => None,
        }
    }

    /// The reason phrase of a response.
    pub fn reason(&self) -> Option<&str> {
        match &self.start {
            StartLine::Response { reason, .. } => Some(reason),
            StartLine::Request { .. } => None,
        }
    }

    /// The first value of header `name` (case-insensitive; compact forms match). For
    /// list headers written as one comma-separated line, the first element.
    pub fn header(&self, name: &str) -> Option<&str> {
        let want = want_name(name);
        let single = is_single_valued(want);
        self.headers
            .iter()
            .filter(|(n, _)| name_is(n, want))
            .map(|(_, v)| if single { v.as_str() } else { first_value(v) })
            .find(|v| !v.is_empty())
    }

    /// Every value of header `name`, in order, comma-separated lines split.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let want = want_name(name);
        let split = !is_single_valued(want);
        self.headers
            .iter()
            .filter(move |(n, _)| name_is(n, want))
            .flat_map(move |(_, v)| {
                if split {
                    LineValues::Split(ListElements { rest: Some(v) })
                } else {
                    LineValues::Whole(Some(v.as_str()))
                }
            })
    }

    /// Every header line as (name as written, value), in order. Content-Length is not
    /// among them (serialization writes it from the body).
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Append a header line. A Content-Length given here is ignored (it is computed).
    pub fn push_header(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        if name_is(&name, "content-length") {
            return;
        }
        self.headers.push((name, value.into()));
    }

    /// Insert a header line before all others (a new top Via).
    pub fn insert_header_first(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.headers.insert(0, (name.into(), value.into()));
    }

    /// Replace every line of header `name` with one line (appended if absent).
    pub fn set_header(&mut self, name: &str, value: impl Into<String>) {
        let want = want_name(name);
        let value = value.into();
        match self.headers.iter().position(|(n, _)| name_is(n, want)) {
            Some(i) => {
                self.headers[i].1 = value;
                let mut j = 0;
                self.headers.retain(|(n, _)| {
                    j += 1;
                    j - 1 == i || !name_is(n, want)
                });
            }
            None => self.push_header(name.to_string(), value),
        }
    }

    /// Remove every line of header `name`.
    pub fn remove_header(&mut self, name: &str) {
        let want = want_name(name);
        self.headers.retain(|(n, _)| !name_is(n, want));
    }

    /// Remove the first value of a list header (the top Via of a response we forward).
    pub fn remove_first_value(&mut self, name: &str) {
        let want = want_name(name);
        let Some(i) = self.headers.iter().position(|(n, _)| name_is(n, want)) else {
            return;
        };
        let rest: Vec<String> = split_values(&self.headers[i].1)
            .skip(1)
            .map(str::to_string)
            .collect();
        if rest.is_empty() {
            self.headers.remove(i);
        } else {
            self.headers[i].1 = rest.join(", ");
        }
    }

    pub fn body(&self) -> &[u8] {
        &self.body
    }

    pub fn set_body(&mut self, body: Vec<u8>) {
        self.body = body;
    }

    pub fn call_id(&self) -> Option<&str> {
        self.header("call-id")
    }

    /// CSeq number and method.
    pub fn cseq(&self) -> Option<(u32, Method)> {
        let v = self.header("cseq")?;
        let mut parts = v.split_whitespace();
        let n = parts.next()?.parse::<u32>().ok()?;
        let m = Method::parse(parts.next()?)?;
        if parts.next().is_some() {
            return None;
        }
        Some((n, m))
    }

    /// Max-Forwards, if present and a number.
    pub fn max_forwards(&self) -> Option<u32> {
        self.header("max-forwards")?.parse::<u32>().ok()
    }

    /// Serialize, appending to `out`. Content-Length is written last from the body.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.reserve(self.wire_size_hint());
        match &self.start {
            StartLine::Request { method, uri } => {
                out.extend_from_slice(method.as_str().as_bytes());
                out.push(b' ');
                out.extend_from_slice(uri.as_bytes());
                out.extend_from_slice(b" SIP/2.0\r\n");
            }
            StartLine::Response { code, reason } => {
                out.extend_from_slice(b"SIP/2.0 ");
                push_u64(out, u64::from(*code));
                out.push(b' ');
                out.extend_from_slice(reason.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        for (n, v) in &self.headers {
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"Content-Length: ");
        push_u64(out, self.body.len() as u64);
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(&self.body);
    }

    fn wire_size_hint(&self) -> usize {
        64 + self
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + 4)
            .sum::<usize>()
            + self.body.len()
    }

    /// The message as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// (length of the head without the blank line, offset of the body).
fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while let Some(p) = memchr::memchr(b'\n', &buf[i..]) {
        let nl = i + p;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some((nl, nl + 2)),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => {
                let head = if nl > 0 && buf[nl - 1] == b'\r' {
                    nl - 1
                } else {
                    nl
                };
                return Some((head, nl + 3));
            }
            _ => {}
        }
        i = nl + 1;
    }
    None
}

/// True for `SIP/<digits>.<digits>` (the name case-insensitive, RFC 3261 §7.1).
fn is_sip_version(v: &str) -> bool {
    let Some(num) = v
        .get(..4)
        .filter(|p| p.eq_ignore_ascii_case("SIP/"))
        .and(v.get(4..))
    else {
        return false;
    };
    num.split_once('.').is_some_and(|(major, minor)| {
        [major, minor]
            .iter()
            .all(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// The version we speak, case-insensitively as RFC 3261 §7.1 allows on input.
fn is_sip_2_0(v: &str) -> bool {
    v.eq_ignore_ascii_case("SIP/2.0")
}

fn parse_start_line(line: &str) -> Result<StartLine, ParseError> {
    if line
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("SIP/"))
    {
        let (version, rest) = line.split_once(' ').ok_or(ParseError::BadStartLine)?;
        if !is_sip_2_0(version) {
            return Err(if is_sip_version(version) {
                ParseError::BadVersion
            } else {
                ParseError::BadStartLine
            });
        }
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        let code: u16 = code.parse().map_err(|_| ParseError::BadStartLine)?;
        if !(100..=699).contains(&code) || code_len_bad(rest) {
            return Err(ParseError::BadStartLine);
        }
        return Ok(StartLine::Response {
            code,
            reason: reason.to_string(),
        });
    }
    // Request-Line = Method SP Request-URI SP SIP-Version CRLF (RFC 3261 §7.1): single
    // spaces, no LWS, nothing after the version.
    let (m, rest) = line.split_once(' ').ok_or(ParseError::BadStartLine)?;
    let method = Method::parse(m).ok_or(ParseError::BadStartLine)?;
    if rest.ends_with(|c: char| c.is_ascii_whitespace()) {
        return Err(ParseError::BadRequestLine(
            "Trailing Whitespace In Request Line",
        ));
    }
    let mut parts = rest.split(' ');
    let (uri, version, extra) = (parts.next(), parts.next(), parts.next());
    let (Some(uri), Some(version)) = (uri, version) else {
        return Err(ParseError::BadRequestLine("Missing SIP Version"));
    };
    if uri.is_empty() || version.is_empty() || extra.is_some() {
        return Err(ParseError::BadRequestLine(
            "Extra Whitespace In Request Line",
        ));
    }
    if !is_sip_2_0(version) {
        return Err(if is_sip_version(version) {
            ParseError::BadVersion
        } else {
            ParseError::BadRequestLine("Malformed SIP Version")
        });
    }
    if !uri.contains(':') {
        return Err(ParseError::BadRequestLine("Malformed Request-URI"));
    }
    Ok(StartLine::Request {
        method,
        uri: uri.to_string(),
    })
}

fn code_len_bad(rest: &str) -> bool {
    rest.split(' ').next().map(str::len) != Some(3)
}

/// What could be read from a request that did not parse, to address a 400 to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Salvaged {
    pub method: Method,
    pub vias: Vec<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub call_id: Option<String>,
    pub cseq: Option<String>,
}

/// Best-effort reading of a request that failed to parse: its method and the headers a
/// response needs. `None` unless the first line looks like a request line.
pub fn salvage_request(buf: &[u8]) -> Option<Salvaged> {
    let start = buf.iter().position(|b| *b != b'\r' && *b != b'\n')?;
    let buf = &buf[start..];
    let head_len = find_head_end(buf).map(|(h, _)| h).unwrap_or(buf.len());
    let head = String::from_utf8_lossy(&buf[..head_len]);
    let mut lines = head.split('\n').map(|l| l.trim_end_matches('\r'));
    let first = lines.next()?;
    // A method, a space and something URI-like: enough to answer (400 or 505) even when
    // the version is missing, another one, or followed by junk. HTTP (`GET / HTTP/1.1`)
    // and binary garbage (a TLS ClientHello on the wrong port) are not salvaged.
    let (m, rest) = first.split_once(' ')?;
    let method = Method::parse(m)?;
    if !rest
        .split_whitespace()
        .next()
        .is_some_and(|uri| uri.contains(':'))
    {
        return None;
    }
    let mut s = Salvaged {
        method,
        vias: Vec::new(),
        from: None,
        to: None,
        call_id: None,
        cseq: None,
    };
    for line in lines.take(DEFAULT_MAX_HEADERS * 2) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if value.is_empty() || value.len() > 1024 {
            continue;
        }
        if name_is(name, "via") {
            s.vias.extend(split_values(value).map(str::to_string));
        } else if name_is(name, "from") && s.from.is_none() {
            s.from = Some(value.to_string());
        } else if name_is(name, "to") && s.to.is_none() {
            s.to = Some(value.to_string());
        } else if name_is(name, "call-id") && s.call_id.is_none() {
            s.call_id = Some(value.to_string());
        } else if name_is(name, "cseq") && s.cseq.is_none() {
            s.cseq = Some(value.to_string());
        }
    }
    Some(s)
}

/// The standard reason phrase of a status code.
pub fn default_reason(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        413 => "Request Entity Too Large",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        101..=199 => "Session Progress",
        201..=299 => "OK",
        303..=399 => "Redirection",
        409..=499 => "Client Error",
        506..=599 => "Server Error",
        _ => "Global Failure",
    }
}

/// A response to `req` (RFC 3261 §8.2.6): its Vias, From, To (with `to_tag` added when
/// the To has none), Call-ID and CSeq.
pub fn response_to(req: &SipMessage, code: u16, reason: &str, to_tag: Option<&str>) -> SipMessage {
    let mut resp = SipMessage::new_response(code, reason);
    for v in req.header_values("via") {
        resp.push_header("Via", v);
    }
    if let Some(f) = req.header("from") {
        resp.push_header("From", f);
    }
    if let Some(t) = req.header("to") {
        match to_tag {
            Some(tg) if tag(t).is_none() && code != 100 => resp.push_header("To", with_tag(t, tg)),
            _ => resp.push_header("To", t),
        }
    }
    if let Some(c) = req.call_id() {
        resp.push_header("Call-ID", c);
    }
    if let Some(c) = req.header("cseq") {
        resp.push_header("CSeq", c);
    }
    resp
}

/// A parsed Via value (RFC 3261 §20.42).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via<'a> {
    /// `TLS`, `TCP`, `UDP`, ...
    pub transport: &'a str,
    /// host[:port] as written (SWS around the colon kept, RFC 3261 §25.1 COLON).
    pub sent_by: &'a str,
    /// The sent-by host (an IPv6 reference keeps its brackets).
    pub host: &'a str,
    /// The sent-by port, if written.
    pub port: Option<u16>,
    pub branch: Option<&'a str>,
    /// Everything after the sent-by, starting with `;` (or empty).
    pub params: &'a str,
}

/// Parse one Via value: `SIP/2.0/TLS host:port;branch=...`. SWS is allowed around `/`,
/// `:`, `;` and `=` (RFC 3261 §25.1 SLASH, COLON, SEMI, EQUAL).
pub fn parse_via(value: &str) -> Option<Via<'_>> {
    let value = split_values(value).next()?;
    let rest = value.get(..3)?;
    if !rest.eq_ignore_ascii_case("SIP") {
        return None;
    }
    let rest = value[3..].trim_start();
    let rest = rest.strip_prefix('/')?.trim_start();
    let rest = rest.strip_prefix("2.0")?.trim_start();
    let rest = rest.strip_prefix('/')?.trim_start();
    let end = rest.find(|c: char| c.is_whitespace())?;
    let transport = &rest[..end];
    if !is_token(transport) {
        return None;
    }
    let rest = rest[end..].trim_start();
    let (sent_by, params) = match rest.find(';') {
        Some(i) => (rest[..i].trim(), &rest[i..]),
        None => (rest.trim(), ""),
    };
    let (host, port) = host_port(sent_by, true).ok()?;
    Some(Via {
        transport,
        sent_by,
        host,
        port,
        branch: param(params, "branch"),
        params,
    })
}

/// The `(name, value)` elements of a `;name=value;flag` parameter list, names and
/// values trimmed (SWS around `;` and `=` is allowed, RFC 3261 §25.1 SEMI and EQUAL),
/// `None` as the value of a flag. A `;` inside a quoted value does not separate.
/// Empty elements are skipped. No allocation.
pub fn params(list: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    let mut rest = Some(list);
    std::iter::from_fn(move || {
        let v = rest?;
        let element = match scan_unquoted(v, |c| c == ';') {
            Unquoted::At(i) => {
                rest = Some(&v[i + 1..]);
                &v[..i]
            }
            Unquoted::End | Unquoted::Unbalanced => {
                rest = None;
                v
            }
        };
        Some(element)
    })
    .filter(|e| !e.trim().is_empty())
    .map(|e| match e.split_once('=') {
        Some((n, v)) => (n.trim(), Some(v.trim())),
        None => (e.trim(), None),
    })
}

/// The value of parameter `name` in a `;a=b;c` parameter list (case-insensitive name;
/// `Some("")` for a flag). SWS around `;` and `=` allowed, see [`params`].
pub fn param<'a>(list: &'a str, name: &str) -> Option<&'a str> {
    params(list).find_map(|(n, v)| n.eq_ignore_ascii_case(name).then(|| v.unwrap_or("")))
}

/// A name-addr or addr-spec (From, To, Contact, Route values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr<'a> {
    /// Display name as written (quotes kept), if any.
    pub display: Option<&'a str>,
    pub uri: &'a str,
    /// Header parameters after the URI, starting with `;` (or empty).
    pub params: &'a str,
}

/// Parse `"Name" <uri>;params`, `<uri>;params` or `uri;params` (SWS before each `;`
/// allowed). Anything but parameters after the `>` (a second value) is refused.
pub fn parse_name_addr(value: &str) -> Option<NameAddr<'_>> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    // Find a '<' outside a quoted display name.
    let lt = match scan_unquoted(value, |c| c == '<') {
        Unquoted::At(i) => Some(i),
        Unquoted::End => None,
        Unquoted::Unbalanced => return None,
    };
    match lt {
        Some(i) => {
            let gt = i + value[i..].find('>')?;
            let uri = value[i + 1..gt].trim();
            if uri.is_empty() || !uri.contains(':') {
                return None;
            }
            let params = value[gt + 1..].trim();
            if !params.is_empty() && !params.starts_with(';') {
                return None;
            }
            let display = value[..i].trim();
            Some(NameAddr {
                display: (!display.is_empty()).then_some(display),
                uri,
                params,
            })
        }
        None => {
            // addr-spec: parameters after the URI belong to the header (RFC 3261 §20.10).
            let (uri, params) = match value.find(';') {
                Some(i) => (value[..i].trim_end(), &value[i..]),
                None => (value, ""),
            };
            if !uri.contains(':') || uri.contains(char::is_whitespace) {
                return None;
            }
            Some(NameAddr {
                display: None,
                uri,
                params,
            })
        }
    }
}

/// The `tag` parameter of a From or To value (trimmed: `;tag = x` gives `x`).
pub fn tag(value: &str) -> Option<&str> {
    let na = parse_name_addr(value)?;
    param(na.params, "tag").filter(|t| !t.is_empty())
}

/// `value` with `;tag=t` appended.
pub fn with_tag(value: &str, t: &str) -> String {
    format!("{value};tag={t}")
}

/// A SIP or SIPS URI (RFC 3261 §19.1), borrowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri<'a> {
    /// `sip` or `sips`, as written (any case)
    pub scheme: &'a str,
    /// The user part without any `:password`.
    pub user: Option<&'a str>,
    pub host: &'a str,
    pub port: Option<u16>,
    /// URI parameters starting with `;` (or empty); headers (`?...`) dropped.
    pub params: &'a str,
}

/// Why a Request-URI is refused before routing (RFC 3261 §8.2.2.1, §19.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestUriFault {
    /// Not `sip:` or `sips:` (`tel:`, `http:`, ...): answered 416.
    #[error("unsupported URI scheme")]
    UnsupportedScheme,
    /// Not a valid SIP URI; the fault as written in the reason phrase. Answered 400.
    #[error("malformed Request-URI: {0}")]
    Malformed(&'static str),
}

impl RequestUriFault {
    /// The status code answering it: 416 for a scheme we do not serve, 400 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            RequestUriFault::UnsupportedScheme => 416,
            RequestUriFault::Malformed(_) => 400,
        }
    }

    /// The reason phrase answering it, e.g. `Bad Request (Malformed Request-URI: Empty
    /// Host)` or `Unsupported URI Scheme`.
    pub fn reason_phrase(&self) -> String {
        match self {
            RequestUriFault::UnsupportedScheme => "Unsupported URI Scheme".to_string(),
            RequestUriFault::Malformed(what) => {
                format!("Bad Request (Malformed Request-URI: {what})")
            }
        }
    }
}

/// Check a Request-URI before routing: a `sip:` or `sips:` URI (scheme case-insensitive)
/// whose user part is only RFC 3261 §25.1 `user` / `password` characters (unreserved,
/// `%HH` escapes, `&=+$,;?/`, so no raw `@`), with a valid host and port, no whitespace,
/// and parameters of `paramchar`s. Stricter than [`parse_uri`], which is also used on
/// header values from sloppy peers: what passes here can be copied into an outbound
/// Request-URI as is.
pub fn check_request_uri(uri: &str) -> Result<SipUri<'_>, RequestUriFault> {
    sip_uri(uri, true)
}

/// Parse `sip:` / `sips:` URIs; `None` for other schemes or malformed ones (more than
/// one `@`, whitespace, an empty user or host, a bad host or port).
pub fn parse_uri(uri: &str) -> Option<SipUri<'_>> {
    sip_uri(uri, false).ok()
}

/// RFC 3261 §25.1 `unreserved`: alphanumeric and `mark`.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b)
}

/// True if every byte of `s` is `is_ok` or part of a `%HH` escape.
fn chars_or_escapes(s: &str, is_ok: impl Fn(u8) -> bool) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
            {
                return false;
            }
            i += 3;
        } else if is_ok(b[i]) {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

/// `host [SWS ":" SWS port]` (SWS only if `sws`): host a hostname, IPv4 address or
/// bracketed IPv6 reference; port 1-65535 in digits.
fn host_port(s: &str, sws: bool) -> Result<(&str, Option<u16>), &'static str> {
    let (host, after) = if s.starts_with('[') {
        let end = s.find(']').ok_or("Bad Host")?;
        (&s[..=end], &s[end + 1..])
    } else {
        match s.find(':') {
            Some(i) => (&s[..i], &s[i..]),
            None => (s, ""),
        }
    };
    let (host, after) = if sws {
        (host.trim_end(), after.trim_start())
    } else {
        (host, after)
    };
    if host.is_empty() {
        return Err("Empty Host");
    }
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => {
            v6.contains(':')
                && v6
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        }
        // Hostnames and IPv4 (RFC 3261 §25.1 hostname; `_` tolerated as many stacks do).
        None => host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'),
    };
    if !host_ok {
        return Err("Bad Host");
    }
    if after.is_empty() {
        return Ok((host, None));
    }
    let digits = after.strip_prefix(':').ok_or("Bad Host")?;
    let digits = if sws { digits.trim_start() } else { digits };
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("Bad Port");
    }
    match digits.parse::<u16>() {
        Ok(p) if p != 0 => Ok((host, Some(p))),
        _ => Err("Bad Port"),
    }
}

fn sip_uri(uri: &str, strict: bool) -> Result<SipUri<'_>, RequestUriFault> {
    use RequestUriFault::{Malformed, UnsupportedScheme};
    let (scheme, rest) = uri.split_once(':').ok_or(Malformed("Missing Scheme"))?;
    // scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) (RFC 3261 §25.1)
    let scheme_ok = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    if !scheme_ok {
        return Err(Malformed("Bad Scheme"));
    }
    if !scheme.eq_ignore_ascii_case("sip") && !scheme.eq_ignore_ascii_case("sips") {
        return Err(UnsupportedScheme);
    }
    if rest
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(Malformed("Whitespace Or Control Character"));
    }
    // userinfo "@" hostport: a raw '@' belongs nowhere else (user, password, params
    // and headers must escape it as %40).
    let (userinfo, hostpart) = match rest.split_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    if hostpart.contains('@') {
        return Err(Malformed("Raw @ In User Part"));
    }
    let user = match userinfo {
        Some("") => return Err(Malformed("Empty User Part")),
        Some(u) => {
            let ok = |b: u8| is_unreserved(b) || b"&=+$,;?/:".contains(&b);
            if strict && !chars_or_escapes(u, ok) {
                return Err(Malformed("Bad Character In User Part"));
            }
            let name = u.split(':').next().unwrap_or(u);
            if name.is_empty() {
                return Err(Malformed("Empty User Part"));
            }
            Some(name)
        }
        None => None,
    };
    let hostpart = hostpart.split('?').next().unwrap_or("");
    let (hostport, params) = match hostpart.find(';') {
        Some(i) => (&hostpart[..i], &hostpart[i..]),
        None => (hostpart, ""),
    };
    let (host, port) = host_port(hostport, false).map_err(Malformed)?;
    if strict {
        // uri-parameter: pname ["=" pvalue], both 1*paramchar (RFC 3261 §25.1).
        let paramchar = |b: u8| is_unreserved(b) || b"[]/:&+$".contains(&b);
        let ok = params[1.min(params.len())..].split(';').all(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, "x"));
            !n.is_empty()
                && !v.is_empty()
                && chars_or_escapes(n, paramchar)
                && chars_or_escapes(v, paramchar)
        });
        if !params.is_empty() && !ok {
            return Err(Malformed("Bad URI Parameter"));
        }
    }
    Ok(SipUri {
        scheme,
        user,
        host,
        port,
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const INVITE: &str = "INVITE sips:+15551234@sbc.example.net SIP/2.0\r\n\
Via: SIP/2.0/TLS 10.88.0.5:5061;branch=z9hG4bKabc, SIP/2.0/TLS 10.88.0.1;branch=z9hG4bKdef\r\n\
v: SIP/2.0/TLS 10.88.0.2;branch=z9hG4bKxyz\r\n\
Max-Forwards: 69\r\n\
f: \"Alice, A.\" <sips:alice@platform.example>;tag=1928\r\n\
To: <sips:+15551234@sbc.example.net>\r\n\
Call-ID: a84b4c76e66710\r\n\
CSeq: 314159 INVITE\r\n\
Subject: folded\r\n  continuation\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\r\nv=0\r";

    #[test]
    fn parse_inspect_serialize() {
        let m = SipMessage::parse(INVITE.as_bytes()).expect("parses");
        assert_eq!(m.method(), Some(&Method::Invite));
        assert_eq!(m.request_uri(), Some("sips:+15551234@sbc.example.net"));
        assert_eq!(m.header_values("via").count(), 3);
        assert_eq!(
            m.header("VIA").and_then(parse_via).and_then(|v| v.branch),
            Some("z9hG4bKabc")
        );
        assert_eq!(m.header("from").and_then(tag), Some("1928"));
        assert_eq!(m.header("subject"), Some("folded continuation"));
        assert_eq!(m.cseq(), Some((314159, Method::Invite)));
        assert_eq!(m.max_forwards(), Some(69));
        assert_eq!(m.body(), b"v=0\r");
        let bytes = m.to_bytes();
        let again = SipMessage::parse(&bytes).expect("reparses");
        assert_eq!(again, m);
        assert!(String::from_utf8_lossy(&bytes).contains("Content-Length: 4\r\n\r\n"));
    }

    #[test]
    fn errors_name_the_fault() {
        let cases: &[(&str, ParseError)] = &[
            ("", ParseError::Empty),
            ("INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/TLS h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@c>\r\nCSeq: 1 INVITE\r\n\r\n", ParseError::Missing("Call-ID")),
            ("INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/TLS h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@c>\r\nCall-ID: x\r\nCSeq: 1 BYE\r\n\r\n", ParseError::CSeqMismatch),
            ("INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/TLS h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@c>\r\nCall-ID: x\r\nCSeq: one INVITE\r\n\r\n", ParseError::Malformed("CSeq")),
            ("INVITE sip:a@b SIP/3.0\r\n\r\n", ParseError::BadVersion),
            ("HELLO\r\n\r\n", ParseError::BadStartLine),
            ("INVITE sip:a@b SIP/2.0\r\nno colon here\r\n\r\n", ParseError::BadHeader(2)),
            ("INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/TLS h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@c>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 10\r\n\r\nshort", ParseError::BadContentLength),
            ("INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/TLS h", ParseError::Unterminated),
        ];
        for (text, want) in cases {
            assert_eq!(
                SipMessage::parse(text.as_bytes()).as_ref().err(),
                Some(want),
                "{text:?}"
            );
        }
        assert_eq!(
            ParseError::Missing("Call-ID").reason_phrase(),
            "Bad Request (Missing Call-ID)"
        );
        let many = format!("OPTIONS sip:a@b SIP/2.0\r\n{}\r\n", "X-H: 1\r\n".repeat(11));
        assert_eq!(
            SipMessage::parse_with_limits(many.as_bytes(), &Limits { max_headers: 10 }).err(),
            Some(ParseError::TooManyHeaders(10))
        );
    }

    /// Found by fuzz/fuzz_targets/sip_parse.rs: a value that starts on a folded line
    /// parsed as " 0" and re-parsed as "0".
    #[test]
    fn folded_values_roundtrip() {
        for fold in ["X-A:\r\n 0\r\n", "X-A: 1\r\n \r\n", "X-A:\r\n\t\r\n  2\r\n"] {
            let text = format!(
                "{}{fold}\r\n",
                INVITE.split("Content-Type").next().unwrap_or("")
            );
            let m = SipMessage::parse(text.as_bytes()).expect(fold);
            let v = m.header("x-a").unwrap_or("");
            assert_eq!(v, v.trim(), "{fold:?}");
            assert_eq!(
                SipMessage::parse(&m.to_bytes()).as_ref(),
                Ok(&m),
                "{fold:?}"
            );
        }
    }

    #[test]
    fn salvage_and_respond() {
        let bad = "INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/TLS h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@c>\r\nCSeq: 1 INVITE\r\n\r\n";
        let s = salvage_request(bad.as_bytes()).expect("salvaged");
        assert_eq!(s.method, Method::Invite);
        assert_eq!(s.vias, vec!["SIP/2.0/TLS h;branch=z9hG4bK1".to_string()]);
        assert_eq!(s.call_id, None);
        assert!(salvage_request(b"\x16\x03\x01garbage").is_none());

        let m = SipMessage::parse(INVITE.as_bytes()).expect("parses");
        let r = response_to(&m, 180, "Ringing", Some("xyz"));
        assert_eq!(r.status(), Some(180));
        assert_eq!(r.header_values("via").count(), 3);
        assert_eq!(r.header("to").and_then(tag), Some("xyz"));
        assert_eq!(r.cseq(), Some((314159, Method::Invite)));
        let r = SipMessage::parse(&r.to_bytes()).expect("response reparses");
        assert_eq!(r.reason(), Some("Ringing"));
    }

    #[test]
    fn uris_and_name_addrs() {
        let u = parse_uri("sips:+1555@[2001:db8::1]:5061;transport=tls?x=y").expect("uri");
        assert_eq!(
            (u.user, u.host, u.port, u.params),
            (Some("+1555"), "[2001:db8::1]", Some(5061), ";transport=tls")
        );
        let u = parse_uri("sip:alice:secret@example.com").expect("uri");
        assert_eq!(
            (u.user, u.host, u.port),
            (Some("alice"), "example.com", None)
        );
        assert!(parse_uri("tel:+1555").is_none());
        let na = parse_name_addr("\"A <b>\" <sip:a@b;lr>;tag=9").expect("na");
        assert_eq!(
            (na.display, na.uri, na.params),
            (Some("\"A <b>\""), "sip:a@b;lr", ";tag=9")
        );
        let na = parse_name_addr("sip:a@b;tag=9").expect("addr-spec");
        assert_eq!((na.uri, tag("sip:a@b;tag=9")), ("sip:a@b", Some("9")));
        assert!(parse_name_addr("\"unclosed <sip:a@b>").is_none());
    }

    #[test]
    fn edit_headers() {
        let mut m = SipMessage::parse(INVITE.as_bytes()).expect("parses");
        m.remove_first_value("via");
        assert_eq!(
            m.header("via").and_then(parse_via).map(|v| v.sent_by),
            Some("10.88.0.1")
        );
        m.remove_first_value("via");
        m.remove_first_value("via");
        assert!(m.header("via").is_none());
        m.insert_header_first("Via", "SIP/2.0/TLS 1.2.3.4;branch=z9hG4bKn");
        m.set_header("Max-Forwards", "5");
        m.push_header("Content-Length", "999");
        assert_eq!(m.max_forwards(), Some(5));
        assert_eq!(
            m.headers().next(),
            Some(("Via", "SIP/2.0/TLS 1.2.3.4;branch=z9hG4bKn"))
        );
        let again = SipMessage::parse(&m.to_bytes()).expect("reparses");
        assert_eq!(again.body(), m.body());
    }

    /// A request with the given Via, From and To values and otherwise minimal headers.
    fn request_with(via: &str, from: &str, to: &str) -> String {
        format!(
            "INVITE sip:a@b SIP/2.0\r\nVia: {via}\r\nFrom: {from}\r\nTo: {to}\r\n\
             Call-ID: x\r\nCSeq: 1 INVITE\r\n\r\n"
        )
    }

    /// Finding 5: SWS around `;`, `=`, `/` and `:` is valid (RFC 3261 §25.1).
    #[test]
    fn lws_around_separators_is_accepted() {
        let cases = [
            ("SIP/2.0/TLS h;branch = z9hG4bK1", "<sip:a@b>;tag = x", None),
            (
                "SIP/2.0/TLS h ; branch = z9hG4bK1",
                "<sip:a@b> ; tag = x",
                Some("y"),
            ),
            (
                "SIP/2.0/TLS h:5061 ; branch= z9hG4bK1 ; rport",
                "sip:a@b ; tag =x",
                None,
            ),
            (
                "SIP / 2.0 / TLS h : 5061 ;branch =z9hG4bK1",
                "\"A; B\" <sip:a@b>\t;\ttag\t=\tx",
                Some("y"),
            ),
        ];
        for (via, from, to_tag) in cases {
            let to = match to_tag {
                Some(t) => format!("sip:b@c ; tag = {t}"),
                None => "sip:b@c".to_string(),
            };
            let text = request_with(via, from, &to);
            let m = SipMessage::parse(text.as_bytes())
                .unwrap_or_else(|e| panic!("{text:?} refused: {e}"));
            assert_eq!(m.header("from").and_then(tag), Some("x"), "{from:?}");
            assert_eq!(m.header("to").and_then(tag), to_tag, "{to:?}");
            let v = m.header("via").and_then(parse_via).expect("via");
            assert_eq!((v.transport, v.host), ("TLS", "h"), "{via:?}");
            assert_eq!(v.branch, Some("z9hG4bK1"), "{via:?}");
            let again = SipMessage::parse(&m.to_bytes()).expect("reparses");
            assert_eq!(again, m);
        }
        let v = parse_via("SIP/2.0/TLS h : 5061;branch=z9hG4bK1").expect("via");
        assert_eq!((v.host, v.port, v.sent_by), ("h", Some(5061), "h : 5061"));
        assert!(parse_via("SIP/2.0/TLS h x;branch=z9hG4bK1").is_none());
        assert!(parse_via("SIP/2.0/TLS h:99999;branch=z9hG4bK1").is_none());
        // Flags, quoted values with `;`, names any case.
        let list = ";lr ; Received = \"a;b\" ;;maddr=1.2.3.4";
        assert_eq!(param(list, "lr"), Some(""));
        assert_eq!(param(list, "received"), Some("\"a;b\""));
        assert_eq!(param(list, "MADDR"), Some("1.2.3.4"));
        assert_eq!(param(list, "b\""), None);
        // A second value after a name-addr is not parameters.
        assert!(parse_name_addr("<sip:a@b>, <sip:c@d>").is_none());
    }

    /// Finding 6: request-line faults are answerable, with the right status and phrase.
    #[test]
    fn request_line_faults_are_answerable() {
        let tail = "\r\nVia: SIP/2.0/TLS h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n\
                    To: <sip:b@c>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n\r\n";
        let cases: &[(&str, ParseError, u16, &str)] = &[
            (
                "INVITE sip:a@b SIP/3.0",
                ParseError::BadVersion,
                505,
                "Version Not Supported",
            ),
            (
                "INVITE sip:a@b SIP/2.0 ",
                ParseError::BadRequestLine("Trailing Whitespace In Request Line"),
                400,
                "Bad Request (Trailing Whitespace In Request Line)",
            ),
            (
                "INVITE sip:a@b",
                ParseError::BadRequestLine("Missing SIP Version"),
                400,
                "Bad Request (Missing SIP Version)",
            ),
            (
                "INVITE  sip:a@b SIP/2.0",
                ParseError::BadRequestLine("Extra Whitespace In Request Line"),
                400,
                "Bad Request (Extra Whitespace In Request Line)",
            ),
            (
                "INVITE sip:a@b HTTP/1.1",
                ParseError::BadRequestLine("Malformed SIP Version"),
                400,
                "Bad Request (Malformed SIP Version)",
            ),
        ];
        for (line, err, status, phrase) in cases {
            let text = format!("{line}{tail}");
            let got = SipMessage::parse(text.as_bytes()).expect_err(line);
            assert_eq!(&got, err, "{line:?}");
            assert_eq!(got.status(), *status, "{line:?}");
            assert_eq!(got.reason_phrase(), *phrase, "{line:?}");
            let s = salvage_request(text.as_bytes()).expect("salvaged");
            assert_eq!(s.method, Method::Invite);
            assert_eq!(s.vias, ["SIP/2.0/TLS h;branch=z9hG4bK1"]);
            assert_eq!(
                (s.from.as_deref(), s.call_id.as_deref(), s.cseq.as_deref()),
                (Some("<sip:a@b>;tag=1"), Some("x"), Some("1 INVITE"))
            );
            assert_eq!(s.to.as_deref(), Some("<sip:b@c>"));
            let resp = crate::b2bua::malformed_response(&got, Some(&s)).expect("answered");
            assert_eq!(resp.status(), Some(*status));
            assert_eq!(resp.reason(), Some(*phrase));
            assert_eq!(resp.call_id(), Some("x"));
        }
        // The version is case-insensitive on input (RFC 3261 §7.1), written upper case.
        let m = SipMessage::parse(format!("INVITE sip:a@b sip/2.0{tail}").as_bytes())
            .expect("lower-case version");
        assert!(String::from_utf8_lossy(&m.to_bytes()).starts_with("INVITE sip:a@b SIP/2.0\r\n"));
        assert_eq!(default_reason(505), "Version Not Supported");
        // Not requests: nothing to salvage.
        assert!(salvage_request(b"GET / HTTP/1.1\r\nVia: x\r\n\r\n").is_none());
        assert!(salvage_request(b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n").is_none());
    }

    /// Finding 7: a single-instance header twice, long or compact form, is a 400.
    #[test]
    fn duplicated_single_instance_headers_are_refused() {
        let base = "Via: SIP/2.0/TLS h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n\
                    To: <sip:b@c>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n\
                    Content-Type: application/sdp\r\n";
        let cases = [
            ("Call-ID: y", "Call-ID"),
            ("i: y", "Call-ID"),
            ("call-id: x", "Call-ID"),
            ("From: <sip:c@d>;tag=2", "From"),
            ("f: <sip:c@d>;tag=2", "From"),
            ("To: <sip:e@f>", "To"),
            ("t: <sip:e@f>", "To"),
            ("CSeq: 2 INVITE", "CSeq"),
            ("Max-Forwards: 10", "Max-Forwards"),
            ("c: text/plain", "Content-Type"),
            ("Content-Type: application/sdp", "Content-Type"),
        ];
        for (extra, name) in cases {
            let text = format!("INVITE sip:a@b SIP/2.0\r\n{base}{extra}\r\n\r\n");
            let err = SipMessage::parse(text.as_bytes()).expect_err(extra);
            assert_eq!(err, ParseError::Duplicate(name), "{extra:?}");
            assert_eq!(err.status(), 400);
            assert_eq!(
                err.reason_phrase(),
                format!("Bad Request (Duplicate {name})")
            );
        }
        // Repeatable headers stay fine, and so does the base message.
        let ok = format!("INVITE sip:a@b SIP/2.0\r\n{base}Via: SIP/2.0/TLS g;branch=z9hG4bK2\r\nRecord-Route: <sip:p>\r\nRecord-Route: <sip:q>\r\n\r\n");
        let m = SipMessage::parse(ok.as_bytes()).expect("repeatable headers");
        assert_eq!(m.header_values("via").count(), 2);
    }

    /// Finding 4: Request-URI checks before routing.
    #[test]
    fn request_uri_checks() {
        let u = check_request_uri(
            "SIPS:+1555;phone-context=x%40y@[2001:db8::1]:5061;transport=tls?h=v",
        )
        .expect("valid");
        assert_eq!(
            (u.scheme, u.user, u.host, u.port, u.params),
            (
                "SIPS",
                Some("+1555;phone-context=x%40y"),
                "[2001:db8::1]",
                Some(5061),
                ";transport=tls"
            )
        );
        let u = check_request_uri("sip:example.com;lr").expect("no user");
        assert_eq!((u.user, u.host, u.port), (None, "example.com", None));
        let u = check_request_uri("sip:alice:pw@10.0.0.1:5060").expect("password");
        assert_eq!(
            (u.user, u.host, u.port),
            (Some("alice"), "10.0.0.1", Some(5060))
        );
        for uri in [
            "tel:+15551234",
            "TEL:+1",
            "http://example.com",
            "urn:service:sos",
            "im:a@b",
        ] {
            assert_eq!(
                check_request_uri(uri).err(),
                Some(RequestUriFault::UnsupportedScheme),
                "{uri}"
            );
        }
        let malformed = [
            ("sip:a@b@host", "Raw @ In User Part"),
            ("sip:a b@host", "Whitespace Or Control Character"),
            ("sip:a@host\t", "Whitespace Or Control Character"),
            ("sip:a@", "Empty Host"),
            ("sip:a@;lr", "Empty Host"),
            ("sip:", "Empty Host"),
            ("sip:@host", "Empty User Part"),
            ("sip:a@host:", "Bad Port"),
            ("sip:a@host:0", "Bad Port"),
            ("sip:a@host:65536", "Bad Port"),
            ("sip:a@host:+50", "Bad Port"),
            ("sip:a@host:50x", "Bad Port"),
            ("sip:a@[::1", "Bad Host"),
            ("sip:a@[::1]x", "Bad Host"),
            ("sip:a@ho/st", "Bad Host"),
            ("sip:a<b>@host", "Bad Character In User Part"),
            ("sip:a%4@host", "Bad Character In User Part"),
            ("sip:a@host;lr;=x", "Bad URI Parameter"),
            ("sip:a@host;x=<y>", "Bad URI Parameter"),
            ("nocolon", "Missing Scheme"),
            ("1sip:a@b", "Bad Scheme"),
        ];
        for (uri, what) in malformed {
            let fault = check_request_uri(uri).expect_err(uri);
            assert_eq!(fault, RequestUriFault::Malformed(what), "{uri}");
            assert_eq!(fault.status(), 400);
            assert_eq!(
                fault.reason_phrase(),
                format!("Bad Request (Malformed Request-URI: {what})")
            );
        }
        assert_eq!(RequestUriFault::UnsupportedScheme.status(), 416);
        assert_eq!(
            RequestUriFault::UnsupportedScheme.reason_phrase(),
            "Unsupported URI Scheme"
        );
        // parse_uri: same structure, lenient on user characters (header values).
        assert_eq!(parse_uri("sip:*72#@pbx").and_then(|u| u.user), Some("*72#"));
        assert!(parse_uri("sip:a@b@host").is_none());
        assert!(parse_uri("sip:a@host:x").is_none());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = SipMessage::parse(&bytes);
            let _ = salvage_request(&bytes);
        }

        /// Messages with SWS variants around `;`, `=`, `/` and `:` parse, keep their
        /// tag and branch, and re-parse to the same message after serialization.
        #[test]
        fn lws_variants_roundtrip(ws in proptest::collection::vec(
            prop_oneof![Just(""), Just(" "), Just("\t"), Just("  ")], 12)) {
            let w = |i: usize| ws[i];
            let via = format!(
                "SIP{}/{}2.0{}/{}TLS h{}:{}5061{};{}branch{}={}z9hG4bK1",
                w(0), w(1), w(2), w(3), w(4), w(5), w(6), w(7), w(8), w(9)
            );
            let from = format!("<sip:a@b>{};{}tag{}={}x", w(10), w(11), w(9), w(8));
            let text = request_with(&via, &from, "sip:b@c");
            let m = SipMessage::parse(text.as_bytes());
            prop_assert!(m.is_ok(), "{:?}: {:?}", text, m);
            let m = m.expect("checked");
            prop_assert_eq!(m.header("from").and_then(tag), Some("x"));
            let v = m.header("via").and_then(parse_via);
            prop_assert_eq!(v.as_ref().and_then(|v| v.branch), Some("z9hG4bK1"));
            prop_assert_eq!(v.as_ref().and_then(|v| v.port), Some(5061));
            let again = SipMessage::parse(&m.to_bytes());
            prop_assert_eq!(again.as_ref(), Ok(&m));
        }

        /// Mutations of a valid message never panic, and whatever parses re-parses to
        /// the same message after serialization.
        #[test]
        fn mutated_messages_roundtrip(
            edits in proptest::collection::vec((0usize..600, any::<u8>()), 0..8),
            cut in 0usize..700,
        ) {
            let mut bytes = INVITE.as_bytes().to_vec();
            for (pos, b) in edits {
                if let Some(x) = bytes.get_mut(pos) {
                    *x = b;
                }
            }
            bytes.truncate(cut.max(1));
            if let Ok(m) = SipMessage::parse(&bytes) {
                let again = SipMessage::parse(&m.to_bytes());
                prop_assert_eq!(again.as_ref(), Ok(&m));
            }
            let _ = salvage_request(&bytes);
        }
    }
}
