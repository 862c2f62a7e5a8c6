//! The metrics catalog's copies of this crate's label sets equal the originals.

#[test]
fn catalog_copies_match() {
    assert_eq!(
        sbc_dns::LOOKUP_RESULTS,
        sbc_core::metrics_catalog::DNS_RESULTS
    );
    assert_eq!(sbc_dns::CAP_LABELS, sbc_core::metrics_catalog::DNS_CAPS);
    // Every error variant's label is in the set.
    let errors = [
        sbc_dns::DnsError::NotFound(String::new()),
        sbc_dns::DnsError::Timeout(std::time::Duration::ZERO),
        sbc_dns::DnsError::CnameChain(String::new()),
        sbc_dns::DnsError::ServerFailure(String::new()),
        sbc_dns::DnsError::BadName(String::new()),
        sbc_dns::DnsError::BadTransport(String::new()),
        sbc_dns::DnsError::NoServer(String::new()),
    ];
    for e in errors {
        assert!(
            sbc_dns::LOOKUP_RESULTS.contains(&e.label()),
            "{}",
            e.label()
        );
    }
}
