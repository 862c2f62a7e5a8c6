//! Parse + rewrite + serialize of a typical INVITE with SDP: our parser against `rsip`,
//! in one run. The rewrite is what the B2BUA does to every INVITE: read the top Via's
//! branch, the From tag and the CSeq; replace the Vias with ours; new Call-ID; drop
//! Record-Route; our Contact; decrement Max-Forwards; serialize.
//!
//! Run: `cargo bench --bench sip_parse`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use sbc_sip::message::{parse_via, tag, SipMessage};

const INVITE: &str = "INVITE sips:+15551234@sbc.example.net SIP/2.0\r
Via: SIP/2.0/TLS 10.88.0.5:5061;branch=z9hG4bK776asdhds\r
Via: SIP/2.0/TLS 10.88.0.1:5061;branch=z9hG4bKinsideproxy\r
Record-Route: <sips:10.88.0.1:5061;lr>\r
Max-Forwards: 69\r
From: \"Alice\" <sips:alice@platform.example>;tag=1928301774\r
To: <sips:+15551234@sbc.example.net>\r
Call-ID: a84b4c76e66710@pc33.platform.example\r
CSeq: 314159 INVITE\r
Contact: <sips:alice@10.88.0.5:5061>\r
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, NOTIFY\r
Supported: timer, replaces\r
User-Agent: PlatformUA/1.0\r
Content-Type: application/sdp\r
Content-Length: 292\r
\r
v=0\r
o=alice 2890844526 2890844526 IN IP4 10.88.0.5\r
s=-\r
c=IN IP4 10.88.0.5\r
t=0 0\r
m=audio 49170 RTP/SAVP 0 8 101\r
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r
a=rtpmap:0 PCMU/8000\r
a=rtpmap:8 PCMA/8000\r
a=rtpmap:101 telephone-event/8000\r
a=ptime:20\r
";

fn ours(bytes: &[u8]) -> Vec<u8> {
    let mut m = SipMessage::parse(bytes).expect("parses");
    let branch = m
        .header("via")
        .and_then(parse_via)
        .and_then(|v| v.branch)
        .map(str::len);
    let from_tag = m.header("from").and_then(tag).map(str::len);
    let cseq = m.cseq().map(|c| c.0);
    black_box((branch, from_tag, cseq));
    let mf = m.max_forwards().unwrap_or(70).saturating_sub(1);
    m.remove_header("via");
    m.insert_header_first("Via", "SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bKsbc0001");
    m.set_header("Call-ID", "b2b-0001@sbc.example.net");
    m.remove_header("record-route");
    m.set_header("Contact", "<sips:sbc@192.0.2.10:5061>");
    m.set_header("Max-Forwards", mf.to_string());
    m.to_bytes()
}

fn theirs(bytes: &[u8]) -> Vec<u8> {
    use rsip::headers::{ToTypedHeader, UntypedHeader};
    use rsip::Header;
    let mut r = rsip::Request::try_from(bytes).expect("rsip parses");
    let mut branch = None;
    let mut from_tag = None;
    let mut cseq = None;
    let mut mf = 70u32;
    for h in r.headers.iter() {
        match h {
            Header::Via(v) if branch.is_none() => {
                branch = v
                    .typed()
                    .ok()
                    .and_then(|t| t.branch().map(|b| b.to_string().len()))
            }
            Header::From(f) => {
                from_tag = f
                    .typed()
                    .ok()
                    .and_then(|t| t.tag().map(|t| t.to_string().len()))
            }
            Header::CSeq(c) => cseq = c.typed().ok().map(|c| c.seq),
            Header::MaxForwards(m) => mf = m.num().unwrap_or(70),
            _ => {}
        }
    }
    black_box((branch, from_tag, cseq));
    r.headers.retain(|h| {
        !matches!(
            h,
            Header::Via(_)
                | Header::CallId(_)
                | Header::RecordRoute(_)
                | Header::Contact(_)
                | Header::MaxForwards(_)
        )
    });
    let mut headers = rsip::Headers::default();
    headers.push(Header::Via(rsip::headers::Via::new(
        "SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bKsbc0001",
    )));
    headers.extend(r.headers.iter().cloned().collect());
    headers.push(Header::CallId(rsip::headers::CallId::new(
        "b2b-0001@sbc.example.net",
    )));
    headers.push(Header::Contact(rsip::headers::Contact::new(
        "<sips:sbc@192.0.2.10:5061>",
    )));
    headers.push(Header::MaxForwards(rsip::headers::MaxForwards::new(
        mf.saturating_sub(1).to_string(),
    )));
    r.headers = headers;
    r.into()
}

fn sip_parse(c: &mut Criterion) {
    let bytes = INVITE.as_bytes();
    // Both produce a message the other parser reads back with the rewritten headers.
    for out in [ours(bytes), theirs(bytes)] {
        let m = SipMessage::parse(&out).expect("rewritten INVITE parses");
        assert_eq!(m.call_id(), Some("b2b-0001@sbc.example.net"));
        assert_eq!(m.max_forwards(), Some(68));
        assert_eq!(m.header_values("via").count(), 1);
        assert_eq!(m.body().len(), 292);
    }
    let mut g = c.benchmark_group("invite_parse_rewrite_serialize");
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("sbc_sip", |b| b.iter(|| ours(black_box(bytes))));
    g.bench_function("rsip", |b| b.iter(|| theirs(black_box(bytes))));
    g.finish();
    let mut g = c.benchmark_group("invite_parse_only");
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("sbc_sip", |b| {
        b.iter(|| SipMessage::parse(black_box(bytes)).is_ok())
    });
    g.bench_function("rsip", |b| {
        b.iter(|| rsip::Request::try_from(black_box(bytes)).is_ok())
    });
    g.finish();
}

criterion_group!(benches, sip_parse);
criterion_main!(benches);
