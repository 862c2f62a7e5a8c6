//! sbc-core: configuration and its validation, tenants, admission, and the interfaces
//! (`MediaControl`) that the protocol crates meet through. Opens no sockets and depends on
//! no other sbc crate.
#![forbid(unsafe_code)]
