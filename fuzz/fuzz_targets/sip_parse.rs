//! SIP message parser (crates/sbc-sip/src/message.rs): never panics on any bytes, and a
//! message that parses re-parses to the same message after `to_bytes()`. The URI, Via and
//! name-addr helpers and the salvage path get the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sbc_sip::message::{
    check_request_uri, params, parse_name_addr, parse_uri, parse_via, salvage_request, tag,
    SipMessage,
};

fuzz_target!(|data: &[u8]| {
    let _ = salvage_request(data);
    if let Ok(m) = SipMessage::parse(data) {
        let bytes = m.to_bytes();
        let again = SipMessage::parse(&bytes).expect("a parsed message re-parses");
        assert_eq!(again, m, "parse -> to_bytes -> parse is stable");
        assert_eq!(again.to_bytes(), bytes, "serialization is a fixed point");
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = parse_via(s);
        let _ = tag(s);
        let _ = parse_name_addr(s);
        let _ = params(s).count();
        // What the strict Request-URI check accepts, the lenient parser reads the same.
        if let Ok(u) = check_request_uri(s) {
            assert_eq!(parse_uri(s), Some(u), "check_request_uri implies parse_uri");
        }
    }
});
