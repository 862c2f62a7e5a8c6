//! The metrics catalog's closed label sets (sbc-core `metrics_catalog`, a plain copy since
//! sbc-core depends on no other sbc crate) equal sbc-sip's own enums' names.
#![allow(clippy::unwrap_used)]

use sbc_core::metrics_catalog as catalog;
use sbc_sip::b2bua::responses::{method_label, status_class, Refusal};
use sbc_sip::b2bua::topology::BodyRefusal;
use sbc_sip::message::Method;

#[test]
fn refusal_reasons_are_the_catalogs() {
    let all = [
        Refusal::NotImplemented,
        Refusal::MethodNotAllowed,
        Refusal::UnsupportedScheme,
        Refusal::MalformedUri("x"),
        Refusal::TooManyHops,
        Refusal::BadExtension(String::new()),
        Refusal::UnsupportedMediaType(BodyRefusal::Encoded, String::new()),
        Refusal::Media(488, String::new()),
        Refusal::NotATrunkPeer,
        Refusal::UnrecognisedPeer,
        Refusal::NoTransaction,
        Refusal::NoRoute,
        Refusal::Unavailable(std::time::Duration::from_secs(1), "x"),
        Refusal::MissingDialogHeaders,
        Refusal::BadRAck,
        Refusal::PrackUnknownRSeq,
        Refusal::PrackOutsideEarlyDialog,
        Refusal::RecordingUnavailable,
    ];
    let names: Vec<&str> = all.iter().map(Refusal::as_str).collect();
    assert_eq!(names, catalog::SIP_REFUSALS);
}

#[test]
fn body_refusals_and_methods_are_the_catalogs() {
    let body: Vec<&str> = BodyRefusal::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(body, catalog::BODY_REFUSALS);
    let methods = [
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "OPTIONS",
        "UPDATE",
        "INFO",
        "NOTIFY",
        "PRACK",
        "REGISTER",
        "SUBSCRIBE",
        "REFER",
        "MESSAGE",
        "PUBLISH",
        "FROB",
    ]
    .map(|m| method_label(&Method::parse(m).unwrap()));
    assert_eq!(methods, catalog::METHODS);
    for code in 300..700 {
        assert!(
            catalog::FAILURE_CLASSES.contains(&status_class(code)),
            "{code}"
        );
    }
}
