//! sbc-sip: SIP message parsing and building, TLS transport, transactions, B2BUA dialogs,
//! routing and topology hiding. Never touches UDP media or SRTP.
#![forbid(unsafe_code)]
