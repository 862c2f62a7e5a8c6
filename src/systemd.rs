//! systemd's notification protocol (sd_notify(3)) for `Type=notify-reload` units: READY=1
//! once the listeners are bound and the admin plane serves, RELOADING=1 with
//! MONOTONIC_USEC then READY=1 around a reload, STOPPING=1 when draining starts, and
//! WATCHDOG=1 at half of `WATCHDOG_USEC` when the unit sets `WatchdogSec=`. Each is a
//! no-op when `NOTIFY_SOCKET` is unset (not started by systemd). Wiring only.

use std::time::Duration;

use sd_notify::NotifyState;

fn send(what: &str, states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(event = "sd_notify_failed", state = what, error = %e, "cannot notify systemd");
    }
}

/// Started: listeners bound, admin plane up.
pub fn ready() {
    send("READY", &[NotifyState::Ready]);
}

/// A reload starts (followed by [`ready`] when it is done, applied or refused).
pub fn reloading() {
    // sd_notify(3): RELOADING=1 must carry MONOTONIC_USEC for Type=notify-reload.
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send("RELOADING", &[NotifyState::Reloading, now]),
        Err(_) => send("RELOADING", &[NotifyState::Reloading]),
    }
}

/// Draining has started; the process stops when it ends.
pub fn stopping() {
    send("STOPPING", &[NotifyState::Stopping]);
}

/// If systemd asked for a watchdog, ping it at half its interval from a task of the
/// runtime, so a runtime that stops scheduling tasks gets the service restarted.
pub fn spawn_watchdog() {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (interval / 2).max(Duration::from_millis(1));
    tracing::info!(
        event = "watchdog",
        interval_ms = interval.as_millis() as u64,
        "systemd watchdog on"
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            send("WATCHDOG", &[NotifyState::Watchdog]);
        }
    });
}
