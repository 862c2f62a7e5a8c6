//! The catalog of every metric sbc-edge records: name, type, HELP text, label names and,
//! where they are a closed set, the label values.
//!
//! Owns: that list, [`describe_all`] (HELP text for the exporter), [`register_known`]
//! (every counter and gauge of the known label sets present at 0 from the first scrape, so
//! `increase()` of a first event is not lost to a series that did not exist yet) and the
//! histogram buckets the exporter is configured with ([`MetricDef::buckets`]).
//!
//! Must not: record values for another part (each part records its own, at its own call
//! sites, with the names listed here), or depend on another sbc crate. The closed label
//! sets of other crates' enums (sbc-sip's `Refusal`, `BodyRefusal`, sbc-media's
//! `DropReason`, ...) are copied here as strings; a test in each of those crates checks
//! that the copy equals the enum. `tests/metrics_catalog.rs` checks that the code emits
//! exactly these names with these types, and that the README's table, the Grafana
//! dashboard and the alert rules agree with it.

use crate::tenant::TenantId;

/// Why a setup try failed over (sbc-sip's `TryFailure`).
pub const FAILOVER_REASONS: &[&str] = &["response", "timeout", "transport"];

/// A metric's Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// The Prometheus `# TYPE` word.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// The values a label takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Values {
    /// A configured tenant id.
    Tenant,
    /// A closed set (a reason, cause or side enum's names).
    Closed(&'static [&'static str]),
    /// Bounded, but only known at run time (listener names, admin endpoints and statuses,
    /// version strings): not pre-registered.
    Open,
}

/// One label of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label {
    pub name: &'static str,
    pub values: Values,
}

/// One metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: Kind,
    /// The `# HELP` text.
    pub help: &'static str,
    pub labels: &'static [Label],
    /// Histogram bucket upper bounds, in seconds; empty for counters and gauges.
    pub buckets: &'static [f64],
    /// Recorded by the metrics-process collector (process_*), not by sbc-edge's code:
    /// neither described nor registered here (the collector does both).
    pub external: bool,
}

const fn tenant() -> Label {
    Label {
        name: "tenant",
        values: Values::Tenant,
    }
}

const fn closed(name: &'static str, values: &'static [&'static str]) -> Label {
    Label {
        name,
        values: Values::Closed(values),
    }
}

const fn open(name: &'static str) -> Label {
    Label {
        name,
        values: Values::Open,
    }
}

const fn counter(name: &'static str, help: &'static str, labels: &'static [Label]) -> MetricDef {
    MetricDef {
        name,
        kind: Kind::Counter,
        help,
        labels,
        buckets: &[],
        external: false,
    }
}

const fn gauge(name: &'static str, help: &'static str, labels: &'static [Label]) -> MetricDef {
    MetricDef {
        name,
        kind: Kind::Gauge,
        help,
        labels,
        buckets: &[],
        external: false,
    }
}

const fn histogram(
    name: &'static str,
    help: &'static str,
    labels: &'static [Label],
    buckets: &'static [f64],
) -> MetricDef {
    MetricDef {
        name,
        kind: Kind::Histogram,
        help,
        labels,
        buckets,
        external: false,
    }
}

const fn process(name: &'static str, kind: Kind, help: &'static str) -> MetricDef {
    MetricDef {
        name,
        kind,
        help,
        labels: &[],
        buckets: &[],
        external: true,
    }
}

/// `sbc_admission_refused_total{cause}`: sbc-core's `RefusalCause` names, plus `draining`
/// (the B2BUA's refusal while the gateway drains).
pub const ADMISSION_CAUSES: &[&str] = &[
    "unknown_tenant",
    "call_rate",
    "concurrent_calls",
    "pending_invites",
    "overload",
    "media_streams",
    "draining",
];

/// Status classes a call can fail with (a final non-2xx).
pub const FAILURE_CLASSES: &[&str] = &["3xx", "4xx", "5xx", "6xx"];

/// sbc-sip's `method_label` values.
pub const METHODS: &[&str] = &[
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
    "other",
];

/// sbc-sip's `Refusal::as_str` values (requests the gateway answers itself).
pub const SIP_REFUSALS: &[&str] = &[
    "not_implemented",
    "method_not_allowed",
    "unsupported_uri_scheme",
    "malformed_request_uri",
    "too_many_hops",
    "bad_extension",
    "unsupported_media_type",
    "media",
    "not_a_trunk_peer",
    "unrecognised_peer",
    "no_transaction",
    "no_route",
    "unavailable",
    "missing_dialog_headers",
    "bad_rack",
    "prack_unknown_rseq",
    "prack_outside_early_dialog",
    "recording_unavailable",
];

/// Why a SIPREC recording session failed (sbc-sip's `RecordingFailure`).
pub const RECORDING_FAILURES: &[&str] = &["refused", "timeout", "transport", "media", "bad_answer"];

/// How a SIPREC recording session ended (sbc-sip's `recording::OUTCOMES`).
pub const RECORDING_OUTCOMES: &[&str] = &["accepted", "failed", "stopped"];

/// What sbc-sip's `reliable.rs` does with a reliable provisional: relayed reliably with
/// the caller leg's RSeq, PRACKed by the gateway and relayed unreliably, relayed
/// unreliably for want of an RSeq, absorbed as a retransmission.
pub const RELIABLE_OUTCOMES: &[&str] = &["relayed", "acked_by_gateway", "no_rseq", "duplicate"];

/// sbc-sip's `BodyRefusal::ALL` names.
pub const BODY_REFUSALS: &[&str] = &[
    "no_content_type",
    "bad_content_type",
    "encoded",
    "unsupported_type",
    "disallowed_part",
    "malformed_multipart",
    "too_many_parts",
    "two_sdp_parts",
];

/// sbc-sip's `BodyError::as_str` values: sbc-core's `MediaError` names, `unexpected_sdp`,
/// `glare`, and every [`BODY_REFUSALS`] name.
pub const MEDIA_REFUSALS: &[&str] = &[
    "not_acceptable",
    "malformed_sdp",
    "no_ports",
    "unknown_call",
    "media_streams",
    "unexpected_sdp",
    "glare",
    "no_content_type",
    "bad_content_type",
    "encoded",
    "unsupported_type",
    "disallowed_part",
    "malformed_multipart",
    "too_many_parts",
    "two_sdp_parts",
];

/// sbc-sip's transport `CloseReason` names.
pub const CLOSE_REASONS: &[&str] = &[
    "peer",
    "idle",
    "message_timeout",
    "slow_source",
    "too_large",
    "framing",
    "malformed_flood",
    "core",
    "shutdown",
];

/// sbc-core's flood guard `ConnectionRefusal` names.
pub const FLOOD_REFUSALS: &[&str] = &[
    "connections_per_source",
    "handshakes_per_source",
    "source_blocked",
];

/// sbc-media's `DropReason::ALL` names.
pub const MEDIA_DROPS: &[&str] = &[
    "auth_failed",
    "replayed",
    "invalid_packet",
    "no_crypto",
    "unexpected_source",
    "no_peer",
    "truncated",
    "send_failed",
    "srtp_other",
    "tenant_bandwidth",
];

/// sbc-media's tap drop reasons.
pub const TAP_DROPS: &[&str] = &["queue_full", "send_failed", "srtp"];

/// sbc-admin's WebSocket tap frame drop reasons.
pub const WS_TAP_DROPS: &[&str] = &["queue_full", "malformed", "unexpected_source"];

/// sbc-admin's `AuthFailure` names.
pub const ADMIN_AUTH_FAILURES: &[&str] =
    &["missing_token", "malformed_authorization", "unknown_token"];

/// The tenant limits published as `sbc_tenant_limit{limit}`.
pub const TENANT_LIMITS: &[&str] = &[
    "calls_per_second",
    "call_burst",
    "max_concurrent_calls",
    "max_pending_invites",
    "requests_per_second_per_connection",
];

const SIDES: &[&str] = &["inbound", "outbound"];
/// `kind` of `sbc_tls_handshakes_total` (sbc-sip's `tls::handshake_kind`).
const HANDSHAKE_KINDS: &[&str] = &["full", "resumed"];
/// `result` of `sbc_tls_reload_total`.
const TLS_RELOAD_RESULTS: &[&str] = &["swapped", "refused"];

/// `sbc_dns_lookups_total{result}`: sbc-dns's `LOOKUP_RESULTS` (its tests check the copy).
pub const DNS_RESULTS: &[&str] = &[
    "ok",
    "not_found",
    "timeout",
    "cname_chain",
    "server_failure",
    "bad_name",
    "bad_transport",
    "no_server",
];

/// `sbc_dns_answers_capped_total{what}`: which bound of sbc-dns's `order` cut an answer.
pub const DNS_CAPS: &[&str] = &["records", "srv_targets", "candidates"];

/// One target's resolution: a cache hit takes µs, a LAN resolver ms, a cold recursive
/// lookup hundreds of ms; the deadline (`sip.dns_timeout_ms`, default 2 s, at most 30 s)
/// ends it.
pub const DNS_BUCKETS: &[f64] = &[
    0.000_1, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 30.0,
];

/// sbc-sip's `transport::UdpDrop` names (checked there against the enum).
pub const UDP_DROPS: &[&str] = &[
    "not_sip",
    "answer_too_large",
    "oversized",
    "queue_full",
    "source_table_full",
    "flood",
];

/// Call setup (INVITE to final response): from a LAN answer (~10 ms) to a long ring (the
/// default maximum ringing time is 180 s).
pub const SETUP_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 180.0,
];

/// Admission decisions: a hash lookup and an uncontended mutex take ~100 ns (the
/// admission bench); the upper buckets show lock contention.
pub const ADMISSION_BUCKETS: &[f64] = &[
    0.000_000_5,
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_1,
    0.001,
    0.01,
];

/// Redis round trips: ~100 µs on loopback (tests/cluster_redis.rs measures it), a
/// millisecond or two across a zone; the 50 ms default deadline is the top of interest.
pub const CLUSTER_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
];

/// `sbc_cluster_redis_errors_total{kind}`: sbc-cluster's `ClusterError::KINDS`, plus
/// `queue_full` (the worker is behind; the request was decided from the local share).
pub const CLUSTER_ERRORS: &[&str] = &[
    "connect",
    "io",
    "protocol",
    "timeout",
    "readonly",
    "server",
    "queue_full",
];

/// `sbc_cluster_decisions_total{mode}`: sbc-core's `DecisionMode` names.
pub const CLUSTER_MODES: &[&str] = &["exact", "local_share"];

/// `sbc_cluster_replica_writes_total{part}`: sbc-core's `ReplicaPart::field` names.
pub const STANDBY_PARTS: &[&str] = &["dialog", "media", "idx"];

/// `sbc_cluster_calls_fenced_total{reason}`: sbc-cluster's `FenceReason` names.
pub const STANDBY_FENCE_REASONS: &[&str] = &["write_refused", "ownership_lost"];

/// `sbc_cluster_standby_reloads_total{reason}`: sbc-cluster's `ReloadReason` names.
pub const STANDBY_RELOAD_REASONS: &[&str] = &["reconnect", "trimmed"];

/// Takeover duration (claim script, opening the secrets, installing every call): 2 000
/// calls took 160-420 ms in a debug build on a shared 2-core machine, 11-20 µs a call of
/// it in Redis (sbc-cluster's tests/standby_store.rs `takeover_of_many_calls`); the
/// issue's media-gap target is 500 ms, so the top buckets show a takeover that eats
/// that budget.
pub const TAKEOVER_BUCKETS: &[f64] = &[
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// `sbc_sip_takeover_calls_total{result}`: `installed` and sbc-core's
/// `standby::InstallRefusal` labels.
pub const TAKEOVER_RESULTS: &[&str] = &[
    "installed",
    "bad_record",
    "no_listener",
    "media_ports",
    "media",
    "unknown_tenant",
];

/// `sbc_sip_restored_caller_total{event}`: what became of a restored call's caller leg
/// (sbc-sip's `takeover_flow.rs`).
pub const RESTORED_CALLER_EVENTS: &[&str] = &["adopted", "timed_out", "dropped"];

/// Relay latency (receive to send of one packet): tens of µs on an idle worker; the
/// batch interval (default 0) and a busy worker add to it; past 20 ms (one audio frame)
/// the relay adds jitter a receiver notices.
pub const RELAY_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.02,
    0.05,
];

/// Every metric, in the README's order.
pub const CATALOG: &[MetricDef] = &[
    gauge(
        "sbc_build_info",
        "Always 1; the labels name the running build (version, git commit or \"unknown\").",
        &[open("version"), open("commit")],
    ),
    // Calls.
    counter(
        "sbc_sip_calls_attempted_total",
        "Initial INVITEs from a recognised tenant.",
        &[tenant()],
    ),
    counter(
        "sbc_sip_calls_answered_total",
        "Calls answered 2xx.",
        &[tenant()],
    ),
    counter(
        "sbc_sip_calls_failed_total",
        "Calls that ended in a final non-2xx (ours or relayed), by status class.",
        &[tenant(), closed("class", FAILURE_CLASSES)],
    ),
    histogram(
        "sbc_sip_call_setup_seconds",
        "Time from a relayed initial INVITE to the final response sent upstream.",
        &[tenant()],
        SETUP_BUCKETS,
    ),
    gauge(
        "sbc_sip_active_dialogs",
        "Calls held (setup or established).",
        &[],
    ),
    // Admission and tenants.
    counter(
        "sbc_admission_admitted_total",
        "Calls admitted.",
        &[tenant()],
    ),
    counter(
        "sbc_admission_refused_total",
        "Calls refused 503 by admission, by cause.",
        &[tenant(), closed("cause", ADMISSION_CAUSES)],
    ),
    histogram(
        "sbc_admission_decision_seconds",
        "Time spent deciding whether to admit a call (bucket, quotas, locks).",
        &[],
        ADMISSION_BUCKETS,
    ),
    gauge(
        "sbc_tenant_active_calls",
        "Calls the tenant holds now.",
        &[tenant()],
    ),
    gauge(
        "sbc_tenant_pending_invites",
        "The tenant's calls in setup now.",
        &[tenant()],
    ),
    gauge(
        "sbc_tenant_media_streams",
        "Media streams (port pairs) the tenant's calls hold now.",
        &[tenant()],
    ),
    gauge(
        "sbc_tenant_limit",
        "Each configured tenant limit, to plot usage against.",
        &[tenant(), closed("limit", TENANT_LIMITS)],
    ),
    // Cluster admission (`[cluster]`, sbc-cluster).
    histogram(
        "sbc_cluster_redis_seconds",
        "Round trip of one pipelined batch of Redis commands (admission, renewal, heartbeat).",
        &[],
        CLUSTER_BUCKETS,
    ),
    counter(
        "sbc_cluster_redis_errors_total",
        "Failed Redis round trips, by kind.",
        &[closed("kind", CLUSTER_ERRORS)],
    ),
    gauge(
        "sbc_cluster_fallback",
        "1 while Redis does not answer and admission uses this node's local share, else 0.",
        &[],
    ),
    counter(
        "sbc_cluster_fallbacks_total",
        "Fallback episodes entered (Redis stopped answering).",
        &[],
    ),
    counter(
        "sbc_cluster_decisions_total",
        "Cluster admission decisions, exact (by Redis) or from the local share.",
        &[closed("mode", CLUSTER_MODES)],
    ),
    gauge(
        "sbc_cluster_live_nodes",
        "Gateway nodes with a live heartbeat in Redis, this one included.",
        &[],
    ),
    // Hot standby store (`[cluster.standby]`, sbc-cluster's standby module; issue #16).
    gauge(
        "sbc_cluster_calls_replicated",
        "Calls of this node (its own and those it took over) written to the standby store.",
        &[],
    ),
    counter(
        "sbc_cluster_replica_writes_total",
        "Call parts written to the standby store, by part.",
        &[closed("part", STANDBY_PARTS)],
    ),
    counter(
        "sbc_cluster_replica_dropped_total",
        "Call updates not replicated because the replica book was full.",
        &[],
    ),
    counter(
        "sbc_cluster_republish_total",
        "Times Redis came back without this node's calls and every live call was written again.",
        &[],
    ),
    gauge(
        "sbc_cluster_warm_calls",
        "Calls of the peer held in this standby's warm copy.",
        &[],
    ),
    counter(
        "sbc_cluster_standby_reloads_total",
        "Whole reloads of the peer's calls into the warm copy, by why.",
        &[closed("reason", STANDBY_RELOAD_REASONS)],
    ),
    gauge(
        "sbc_cluster_replication_lag_seconds",
        "Age of the newest change read from the peer's stream when it was read.",
        &[],
    ),
    histogram(
        "sbc_cluster_takeover_seconds",
        "Duration of a takeover, from the command to the last claimed call installed.",
        &[],
        TAKEOVER_BUCKETS,
    ),
    counter(
        "sbc_cluster_calls_taken_over_total",
        "Calls claimed from the dead peer and installed on this node.",
        &[],
    ),
    counter(
        "sbc_cluster_calls_fenced_total",
        "Calls dropped here because another node owns them now, by how it was found.",
        &[closed("reason", STANDBY_FENCE_REASONS)],
    ),
    counter(
        "sbc_cluster_secret_open_failures_total",
        "Claimed calls whose sealed SRTP keys did not open with this node's cluster key.",
        &[],
    ),
    // Hot standby, SIP side (sbc-sip's b2bua/replica.rs and takeover_flow.rs).
    counter(
        "sbc_sip_replica_updates_total",
        "Dialog parts handed to the replica sink: put (a call's dialog changed) or remove (it ended).",
        &[closed("kind", &["put", "remove"])],
    ),
    counter(
        "sbc_sip_takeover_calls_total",
        "Calls claimed from a dead peer: installed here, or refused by reason.",
        &[closed("result", TAKEOVER_RESULTS)],
    ),
    counter(
        "sbc_sip_fenced_calls_total",
        "Calls dropped without any SIP message because another node owns them now.",
        &[],
    ),
    counter(
        "sbc_sip_restored_caller_total",
        "Caller legs of restored calls: adopted by a connection, timed out waiting (call ended), or a held message dropped (queue full).",
        &[closed("event", RESTORED_CALLER_EVENTS)],
    ),
    // Flood guard and TLS.
    counter(
        "sbc_flood_refused_total",
        "Connections refused by the per-source flood guard.",
        &[closed("reason", FLOOD_REFUSALS)],
    ),
    counter(
        "sbc_flood_blocked_requests_total",
        "Requests from blocked sources.",
        &[tenant()],
    ),
    counter(
        "sbc_flood_sources_blocked_total",
        "Sources blocked for exceeding their request rate.",
        &[],
    ),
    counter(
        "sbc_tls_handshakes_total",
        "TLS handshakes completed, inbound (peers) and outbound (route targets), full or resumed (session ticket or id).",
        &[closed("side", SIDES), closed("kind", HANDSHAKE_KINDS)],
    ),
    counter(
        "sbc_tls_handshakes_failed_total",
        "TLS handshakes (or, outbound, connections) that failed.",
        &[closed("side", SIDES)],
    ),
    gauge(
        "sbc_tls_certificate_expiry_seconds",
        "Time until the listener certificate in use expires.",
        &[open("listener")],
    ),
    counter(
        "sbc_tls_reload_total",
        "Certificate, key or CA bundle swaps (SIGHUP or a file change seen by the poll): swapped, or refused (the material in use kept).",
        &[closed("result", TLS_RELOAD_RESULTS)],
    ),
    counter(
        "sbc_tenant_recognition_failed_total",
        "Connections from peers that map to no tenant.",
        &[],
    ),
    // DNS (route targets given by name, RFC 3263).
    counter(
        "sbc_dns_lookups_total",
        "Resolutions of route targets given by name, by result.",
        &[closed("result", DNS_RESULTS)],
    ),
    histogram(
        "sbc_dns_lookup_duration_seconds",
        "Time to resolve one route target (NAPTR, SRV and A/AAAA queries, cache included).",
        &[],
        DNS_BUCKETS,
    ),
    counter(
        "sbc_dns_cache_hits_total",
        "DNS queries answered from the resolver's cache.",
        &[],
    ),
    counter(
        "sbc_dns_answers_capped_total",
        "DNS answers cut at a bound (records per answer, SRV targets or candidates per target).",
        &[closed("what", DNS_CAPS)],
    ),
    // SIP messages.
    counter(
        "sbc_sip_messages_received_total",
        "SIP messages framed off connections.",
        &[],
    ),
    counter(
        "sbc_sip_requests_received_total",
        "SIP requests the core received, by method.",
        &[closed("method", METHODS)],
    ),
    counter(
        "sbc_sip_connections_closed_total",
        "SIP connections ended, by reason.",
        &[closed("reason", CLOSE_REASONS)],
    ),
    counter(
        "sbc_sip_messages_rejected_total",
        "SIP messages rejected before the core.",
        &[closed(
            "reason",
            &["malformed", "too_large", "framing", "stray_response"],
        )],
    ),
    counter(
        "sbc_sip_messages_dropped_total",
        "SIP messages not sent because the connection's write queue was full or closed.",
        &[closed("reason", &["write_queue_full"])],
    ),
    counter(
        "sbc_sip_requests_refused_total",
        "Requests the gateway answered itself, by reason (connection_rate also carries tenant).",
        &[closed("reason", SIP_REFUSALS)],
    ),
    counter(
        "sbc_sip_reliable_provisionals_total",
        "Reliable provisionals (RFC 3262) from the callee, by what the gateway did with them.",
        &[closed("outcome", RELIABLE_OUTCOMES)],
    ),
    counter(
        "sbc_sip_bodies_refused_total",
        "Bodies the tenant's body policy refused (415).",
        &[tenant(), closed("reason", BODY_REFUSALS)],
    ),
    counter(
        "sbc_sip_transaction_timeouts_total",
        "SIP transaction timers that fired (ack: a 2xx never acknowledged, the call is ended; prack: a reliable provisional never PRACKed, the INVITE gets 504).",
        &[closed("timer", &["B", "F", "H", "ringing", "ack", "prack"])],
    ),
    counter(
        "sbc_sip_target_unreachable_total",
        "Requests answered 503 because their route target could not be reached.",
        &[],
    ),
    counter(
        "sbc_sip_failovers_total",
        "Calls moved to their route's next target during setup, by why the try failed.",
        &[tenant(), closed("reason", FAILOVER_REASONS)],
    ),
    counter(
        "sbc_sip_no_target_available_total",
        "Calls refused 503 because every target of their route was down or quarantined.",
        &[tenant()],
    ),
    // SIPREC recording (sbc-sip's recording client).
    counter(
        "sbc_recording_sessions_total",
        "SIPREC recording sessions, by how they went: accepted by an SRS, failed on every target, stopped.",
        &[tenant(), closed("outcome", RECORDING_OUTCOMES)],
    ),
    counter(
        "sbc_recording_failures_total",
        "SIPREC recording sessions failed on one SRS target, by why (failover or give-up follows).",
        &[tenant(), closed("reason", RECORDING_FAILURES)],
    ),
    gauge(
        "sbc_recording_active",
        "SIPREC recording sessions accepted by an SRS and not ended (recording or paused).",
        &[],
    ),
    // Trunks (route targets).
    gauge(
        "sbc_trunk_up",
        "1 while a route target is up (health checks pass or are off), 0 while down.",
        &[tenant(), open("target")],
    ),
    counter(
        "sbc_trunk_state_changes_total",
        "Route targets going up or down by OPTIONS health checks.",
        &[tenant(), open("target"), closed("state", &["up", "down"])],
    ),
    counter(
        "sbc_trunk_quarantines_total",
        "503s with Retry-After that took a route target out of new calls' candidates.",
        &[tenant(), open("target")],
    ),
    counter(
        "sbc_sip_udp_dropped_total",
        "SIP datagrams dropped on a UDP listener, by reason (never answered larger than they came).",
        &[closed("reason", UDP_DROPS)],
    ),
    gauge(
        "sbc_sip_udp_sources",
        "UDP sources (pseudo-connections) the UDP listeners hold.",
        &[],
    ),
    counter(
        "sbc_sip_retransmissions_total",
        "SIP messages sent again over UDP (kind: request for timers A/E, own PRACKs and OPTIONS pings included; response for timer G and reliable provisionals).",
        &[closed("kind", &["request", "response"])],
    ),
    counter(
        "sbc_sip_retransmissions_absorbed_total",
        "Retransmitted requests matched to a transaction and answered with its last response.",
        &[],
    ),
    // Media.
    counter(
        "sbc_media_packets_relayed_total",
        "Media packets relayed.",
        &[],
    ),
    counter(
        "sbc_media_worker_wakeups_total",
        "Relay worker wake-ups that found packets.",
        &[],
    ),
    counter(
        "sbc_media_packets_dropped_total",
        "Media packets dropped, by reason.",
        &[closed("reason", MEDIA_DROPS)],
    ),
    histogram(
        "sbc_media_relay_latency_seconds",
        "Receive-to-send time of sampled relayed packets (one in 64 per worker).",
        &[],
        RELAY_BUCKETS,
    ),
    gauge(
        "sbc_media_ports_in_use",
        "UDP ports of the media port pool held by calls.",
        &[],
    ),
    gauge(
        "sbc_media_ports_capacity",
        "UDP ports in the media port pool.",
        &[],
    ),
    counter(
        "sbc_media_refused_total",
        "SDP bodies media control refused, by reason (tenant \"\" for an answer in an ACK).",
        &[tenant(), closed("reason", MEDIA_REFUSALS)],
    ),
    // Hot standby, media part (issue #16).
    counter(
        "sbc_media_index_reports_dropped_total",
        "SRTP index reports a relay worker dropped because the channel to replication was full (the next report supersedes).",
        &[],
    ),
    // Recording taps.
    counter(
        "sbc_tap_packets_sent_total",
        "Recording tap copies sent.",
        &[],
    ),
    counter(
        "sbc_tap_packets_dropped_total",
        "Recording tap copies lost, by reason.",
        &[closed("reason", TAP_DROPS)],
    ),
    counter(
        "sbc_tap_ws_frames_sent_total",
        "WebSocket tap frames sent.",
        &[],
    ),
    counter(
        "sbc_tap_ws_frames_dropped_total",
        "WebSocket tap frames dropped, by reason.",
        &[closed("reason", WS_TAP_DROPS)],
    ),
    counter(
        "sbc_tap_ws_resumed_total",
        "WebSocket tap sessions resumed with resume_after_ms (after a takeover or a break).",
        &[],
    ),
    // Admin plane.
    counter(
        "sbc_admin_requests_total",
        "Admin API requests, by route template and HTTP status.",
        &[open("endpoint"), open("status")],
    ),
    counter(
        "sbc_admin_auth_failures_total",
        "Admin API requests without a valid token.",
        &[closed("reason", ADMIN_AUTH_FAILURES)],
    ),
    counter(
        "sbc_admin_connections_refused_total",
        "Admin connections refused (too many open).",
        &[closed("reason", &["too_many"])],
    ),
    counter(
        "sbc_admin_tls_handshake_failures_total",
        "Admin TLS handshakes that failed or timed out.",
        &[closed("reason", &["error", "timeout"])],
    ),
    counter(
        "sbc_admin_audit_failures_total",
        "Audit lines that could not be written.",
        &[],
    ),
    counter(
        "sbc_audit_events_dropped_total",
        "Audit events dropped because the audit writer's queue was full or gone.",
        &[closed("kind", &crate::audit::AUDIT_DROP_KINDS)],
    ),
    // Process (metrics-process, refreshed on each scrape of /metrics).
    process(
        "process_cpu_seconds_total",
        Kind::Counter,
        "User and system CPU time spent.",
    ),
    process("process_open_fds", Kind::Gauge, "Open file descriptors."),
    process(
        "process_max_fds",
        Kind::Gauge,
        "Limit on open file descriptors.",
    ),
    process(
        "process_virtual_memory_bytes",
        Kind::Gauge,
        "Virtual memory size.",
    ),
    process(
        "process_virtual_memory_max_bytes",
        Kind::Gauge,
        "Limit on virtual memory size (0 when unlimited).",
    ),
    process(
        "process_resident_memory_bytes",
        Kind::Gauge,
        "Resident memory size.",
    ),
    process(
        "process_start_time_seconds",
        Kind::Gauge,
        "Start time of the process since the Unix epoch.",
    ),
    process("process_threads", Kind::Gauge, "OS threads in the process."),
];

/// The catalog entry of `name`.
pub fn find(name: &str) -> Option<&'static MetricDef> {
    CATALOG.iter().find(|m| m.name == name)
}

/// HELP text for every metric sbc-edge records, on the installed recorder. Call once,
/// after the recorder is installed.
pub fn describe_all() {
    for m in CATALOG.iter().filter(|m| !m.external) {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.help),
            Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
            Kind::Histogram => metrics::describe_histogram!(m.name, m.help),
        }
    }
}

/// Every label set of `m` over the known values (tenants and closed sets); none when a
/// label is [`Values::Open`].
pub fn known_label_sets(m: &MetricDef, tenants: &[TenantId]) -> Vec<Vec<metrics::Label>> {
    let mut sets: Vec<Vec<metrics::Label>> = vec![Vec::new()];
    for l in m.labels {
        let values: Vec<String> = match l.values {
            Values::Tenant => tenants.iter().map(ToString::to_string).collect(),
            Values::Closed(v) => v.iter().map(|s| (*s).to_string()).collect(),
            Values::Open => return Vec::new(),
        };
        sets = sets
            .into_iter()
            .flat_map(|set| {
                values.iter().map(move |v| {
                    let mut s = set.clone();
                    s.push(metrics::Label::new(l.name, v.clone()));
                    s
                })
            })
            .collect();
    }
    sets
}

/// Touches every counter, gauge and histogram of the known label sets (`tenants` and the
/// closed sets) without changing its value, so each is present (at 0) from the first
/// scrape. Call at start and after a reload that adds tenants; calling it again is
/// harmless (a counter gets +0, a gauge +0).
pub fn register_known(tenants: &[TenantId]) {
    for m in CATALOG.iter().filter(|m| !m.external) {
        for labels in known_label_sets(m, tenants) {
            match m.kind {
                Kind::Counter => metrics::counter!(m.name, labels).increment(0),
                Kind::Gauge => metrics::gauge!(m.name, labels).increment(0.0),
                // Registering is enough: the exporter renders an empty histogram.
                Kind::Histogram => drop(metrics::histogram!(m.name, labels)),
            }
        }
    }
}

/// Sets `sbc_build_info{version, commit}` to 1.
pub fn set_build_info(version: &str, commit: &str) {
    metrics::gauge!("sbc_build_info", "version" => version.to_string(), "commit" => commit.to_string())
        .set(1.0);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::admission::RefusalCause;
    use crate::flood::ConnectionRefusal;
    use crate::media::MediaError;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use metrics_util::MetricKind;

    #[test]
    fn names_are_unique_and_follow_the_convention() {
        let mut seen = std::collections::HashSet::new();
        for m in CATALOG {
            assert!(seen.insert(m.name), "{} twice", m.name);
            assert!(!m.help.is_empty(), "{} has no HELP", m.name);
            if m.external {
                assert!(m.name.starts_with("process_"), "{}", m.name);
                continue;
            }
            assert!(m.name.starts_with("sbc_"), "{}", m.name);
            match m.kind {
                Kind::Counter => assert!(m.name.ends_with("_total"), "{}", m.name),
                Kind::Histogram => {
                    assert!(m.name.ends_with("_seconds"), "{}", m.name);
                    assert!(m.buckets.windows(2).all(|w| w[0] < w[1]), "{}", m.name);
                    assert!(m.buckets.len() >= 5, "{}", m.name);
                }
                Kind::Gauge => assert!(!m.name.ends_with("_total"), "{}", m.name),
            }
            assert!(
                m.kind == Kind::Histogram || m.buckets.is_empty(),
                "{}",
                m.name
            );
        }
    }

    #[test]
    fn closed_sets_match_sbc_core_enums() {
        use RefusalCause::*;
        let causes: Vec<&str> = [
            UnknownTenant,
            CallRate,
            ConcurrentCalls,
            PendingInvites,
            Overload,
            MediaStreams,
        ]
        .map(RefusalCause::as_str)
        .to_vec();
        assert_eq!(&ADMISSION_CAUSES[..causes.len()], &causes[..]);
        assert_eq!(ADMISSION_CAUSES[causes.len()..], ["draining"]);
        let flood = [
            ConnectionRefusal::TooManyConnections,
            ConnectionRefusal::TooManyHandshakes,
            ConnectionRefusal::Blocked,
        ]
        .map(ConnectionRefusal::as_str);
        assert_eq!(FLOOD_REFUSALS, flood);
        let media = [
            MediaError::NotAcceptable(String::new()),
            MediaError::Malformed(String::new()),
            MediaError::NoPorts,
            MediaError::UnknownCall(crate::media::CallRef(0)),
            MediaError::TenantStreams,
        ]
        .map(|e| e.as_str());
        assert_eq!(&MEDIA_REFUSALS[..5], media);
        assert_eq!(&MEDIA_REFUSALS[5..7], ["unexpected_sdp", "glare"]);
        assert_eq!(&MEDIA_REFUSALS[7..], BODY_REFUSALS);
    }

    #[test]
    fn describe_and_register_make_every_known_series_at_zero() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let tenants = [TenantId::from("a"), TenantId::from("b")];
        metrics::with_local_recorder(&recorder, || {
            describe_all();
            register_known(&tenants);
            set_build_info("1.2.3", "abc");
        });
        let snap = snapshotter.snapshot().into_vec();
        let find = |name: &str, labels: &[(&str, &str)]| {
            snap.iter().find(|(k, _, _, _)| {
                k.key().name() == name
                    && labels
                        .iter()
                        .all(|(n, v)| k.key().labels().any(|l| l.key() == *n && l.value() == *v))
            })
        };
        // The series an alert needs before the first failure.
        let (k, _, help, v) = find("sbc_sip_target_unreachable_total", &[]).unwrap();
        assert_eq!(k.kind(), MetricKind::Counter);
        assert_eq!(v, &DebugValue::Counter(0));
        assert!(help.as_ref().unwrap().contains("route target"));
        // Per tenant and cause.
        for t in ["a", "b"] {
            for c in ADMISSION_CAUSES {
                let (_, _, _, v) = find(
                    "sbc_admission_refused_total",
                    &[("tenant", t), ("cause", c)],
                )
                .unwrap();
                assert_eq!(v, &DebugValue::Counter(0));
            }
            let (_, _, _, v) = find("sbc_tenant_media_streams", &[("tenant", t)]).unwrap();
            assert_eq!(v, &DebugValue::Gauge(0.0.into()));
            let (k, _, _, _) = find("sbc_sip_call_setup_seconds", &[("tenant", t)]).unwrap();
            assert_eq!(k.kind(), MetricKind::Histogram);
        }
        assert_eq!(
            snap.iter()
                .filter(|(k, _, _, _)| k.key().name() == "sbc_media_packets_dropped_total")
                .count(),
            MEDIA_DROPS.len()
        );
        let (_, _, _, v) =
            find("sbc_build_info", &[("version", "1.2.3"), ("commit", "abc")]).unwrap();
        assert_eq!(v, &DebugValue::Gauge(1.0.into()));
        // Open labels are not invented.
        assert!(find("sbc_admin_requests_total", &[]).is_none());
        assert!(find("sbc_tls_certificate_expiry_seconds", &[]).is_none());
        // Every described metric with only known labels is present.
        for m in CATALOG.iter().filter(|m| !m.external) {
            let open = m.labels.iter().any(|l| l.values == Values::Open);
            assert_eq!(
                find(m.name, &[]).is_some(),
                !open || m.name == "sbc_build_info",
                "{}",
                m.name
            );
        }
    }

    #[test]
    fn registering_twice_keeps_values() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let tenants = [TenantId::from("a")];
        metrics::with_local_recorder(&recorder, || {
            register_known(&tenants);
            metrics::counter!("sbc_sip_calls_attempted_total", "tenant" => "a").increment(3);
            metrics::gauge!("sbc_tenant_active_calls", "tenant" => "a").set(2.0);
            register_known(&tenants);
        });
        let snap = snapshotter.snapshot().into_hashmap();
        let value = |name: &str| {
            snap.iter()
                .find(|(k, _)| k.key().name() == name)
                .map(|(_, (_, _, v))| v)
                .unwrap()
        };
        assert_eq!(
            value("sbc_sip_calls_attempted_total"),
            &DebugValue::Counter(3)
        );
        assert_eq!(
            value("sbc_tenant_active_calls"),
            &DebugValue::Gauge(2.0.into())
        );
    }
}
