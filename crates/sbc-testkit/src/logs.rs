//! Log capture: a tracing writer into memory, so a test can read what the gateway logged.

use std::io::Write;
use std::sync::{Arc, Mutex};

/// A `tracing_subscriber` writer that keeps every byte written, shared by its clones.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    /// Everything written so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// A subscriber writing to this capture (no colours) up to `level`; install it with
    /// `tracing::subscriber::set_default` for the current thread.
    pub fn subscriber(&self, level: tracing::Level) -> impl tracing::Subscriber + Send + Sync {
        tracing_subscriber::fmt()
            .with_writer(self.clone())
            .with_ansi(false)
            .with_max_level(level)
            .finish()
    }

    /// Install [`Capture::subscriber`] for the current thread, safely beside tests on other
    /// threads. With a single scoped subscriber, tracing-core computes a newly hit
    /// callsite's cached interest from the *hitting thread's* default only: another test's
    /// thread (no subscriber) hitting a `warn!` first caches it as "never" for every
    /// thread, and this capture loses that line (a flaky one-line-short capture). A second
    /// registered dispatcher (a no-op one, kept for the process) makes tracing-core ask
    /// every dispatcher, and the interest cache is rebuilt for callsites hit before.
    pub fn install(&self, level: tracing::Level) -> tracing::subscriber::DefaultGuard {
        static SECOND: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
        SECOND.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
        let guard = tracing::subscriber::set_default(self.subscriber(level));
        tracing::callsite::rebuild_interest_cache();
        guard
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
