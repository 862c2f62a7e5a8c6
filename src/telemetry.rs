//! Metrics wiring: the exporter with every metric described and the known series present
//! from the first scrape, the build info, and the media usage gauges refreshed every
//! second. What each metric means lives in `sbc_core::metrics_catalog`.

use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use sbc_core::config::Config;
use sbc_core::metrics_catalog;
use sbc_core::tenant::TenantId;
use sbc_media::engine::MediaEngine;

/// The git commit this binary was built from ("unknown" from a tarball without git).
pub const COMMIT: &str = env!("SBC_EDGE_COMMIT");

/// How often the media usage gauges (ports, streams per tenant) are refreshed: they are
/// at most this stale against a 15 s scrape interval.
const GAUGE_FEED: Duration = Duration::from_secs(1);

/// Installs the Prometheus recorder (before anything records a metric), sets the build
/// info and registers the known series of `cfg`'s tenants.
pub fn install(cfg: &Config) -> anyhow::Result<PrometheusHandle> {
    let handle = sbc_admin::install_prometheus().context("metrics exporter")?;
    metrics_catalog::set_build_info(env!("CARGO_PKG_VERSION"), COMMIT);
    tenants_changed(cfg);
    Ok(handle)
}

/// Registers the known series of `cfg`'s tenants (at start and after a reload; series of
/// tenants already known keep their values).
pub fn tenants_changed(cfg: &Config) {
    let tenants: Vec<TenantId> = cfg.tenants.iter().map(|t| t.id.clone()).collect();
    metrics_catalog::register_known(&tenants);
}

/// Refreshes the media usage gauges every [`GAUGE_FEED`] (needs a tokio runtime).
pub fn spawn_media_gauges(media: Option<MediaEngine>) {
    let Some(media) = media else { return };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(GAUGE_FEED);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            media.publish_gauges();
        }
    });
}
