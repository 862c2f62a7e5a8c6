//! SDP parser and writer (crates/sbc-media/src/sdp.rs): never panic on any bytes; what we
//! write for a parsed description parses again with as many m-lines, and writing that
//! again gives the same bytes (parse -> rewrite -> parse -> rewrite is stable).
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use sbc_media::sdp::{parse, CryptoOut, MediaRewrite, Rewrite, SessionDescription};
use sbc_media::srtp::{MasterKey, SrtpProfile};

/// The rewrite the anchor would do: our address, a port per stream, one key when the
/// stream is SRTP. Deterministic, so the second pass must reproduce the first.
fn our_rewrite(sd: &SessionDescription) -> Rewrite {
    let profile = SrtpProfile::AesCm128HmacSha1_80;
    let key = MasterKey::new(&[7u8; 16], &[9u8; 14]);
    Rewrite {
        address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        origin_session_id: 1,
        origin_version: 2,
        media: sd
            .media
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let relay = m.is_relayable();
                let secure = m.proto.is_some_and(|p| p.is_secure());
                MediaRewrite {
                    port: if relay { 40_000 + 2 * i as u16 } else { 0 },
                    proto: None,
                    crypto: if relay && secure {
                        vec![CryptoOut {
                            tag: 1,
                            profile,
                            key: key.clone(),
                        }]
                    } else {
                        Vec::new()
                    },
                    rtcp_mux: m.rtcp_mux,
                }
            })
            .collect(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(sd) = parse(data) else {
        return;
    };
    let rw = our_rewrite(&sd);
    let once = sd.rewrite(&rw);
    let again = parse(&once).expect("our own SDP parses");
    assert_eq!(again.media.len(), sd.media.len(), "m-lines kept");
    assert_eq!(again.rewrite(&rw), once, "rewrite is stable");
});
