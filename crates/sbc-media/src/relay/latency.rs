//! The relay's latency sampling (moved out of `relay.rs`): one received batch in
//! [`LATENCY_SAMPLE_EVERY`] packets is timed from receipt to its last send, into a fixed
//! buffer on the packet path (no allocation), handed to the histogram at the tick.
//!
//! Owns: the sampler. Must not: allocate or record to the histogram on the packet path.

use std::time::Duration;

/// One received batch in this many packets has its receive-to-send time measured for
/// `sbc_media_relay_latency_seconds`: two clock reads per 64 packets cost nothing
/// measurable, and a few hundred samples a second per worker fill a histogram.
pub const LATENCY_SAMPLE_EVERY: u32 = 64;

/// Latency samples a worker holds between two ticks. They are handed to the `metrics`
/// histogram at the tick, off the packet path (a recorder may allocate when it stores a
/// sample); past this many in one tick the rest are skipped. 64 per [`TICK`] is 640 a
/// second, one in 64 packets of 40,000 packets a second.
const LATENCY_SAMPLES: usize = 64;

/// A worker's sampled relay latencies: a fixed buffer filled on the packet path (no
/// allocation), flushed to the histogram at the tick.
pub(super) struct LatencySampler {
    countdown: u32,
    samples: [f64; LATENCY_SAMPLES],
    len: usize,
    histogram: metrics::Histogram,
}

impl LatencySampler {
    pub(super) fn new(histogram: metrics::Histogram) -> Self {
        LatencySampler {
            countdown: LATENCY_SAMPLE_EVERY,
            samples: [0.0; LATENCY_SAMPLES],
            len: 0,
            histogram,
        }
    }

    /// `n` packets were received in one batch: whether to time this batch.
    pub(super) fn due(&mut self, n: usize) -> bool {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        if n < self.countdown {
            self.countdown -= n;
            return false;
        }
        self.countdown = LATENCY_SAMPLE_EVERY;
        true
    }

    pub(super) fn push(&mut self, latency: Duration) {
        if let Some(slot) = self.samples.get_mut(self.len) {
            *slot = latency.as_secs_f64();
            self.len += 1;
        }
    }

    pub(super) fn flush(&mut self) {
        for s in &self.samples[..self.len] {
            self.histogram.record(*s);
        }
        self.len = 0;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn latency_sampler_times_one_batch_in_64_packets_and_flushes_at_the_tick() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let mut s = LatencySampler::new(metrics::histogram!("sbc_media_relay_latency_seconds"));
            // 32 batches of 8 packets: 256 packets, every 8th batch is timed.
            let due: Vec<bool> = (0..32).map(|_| s.due(8)).collect();
            assert_eq!(due.iter().filter(|d| **d).count(), 4);
            assert!(due[7] && due[15] && !due[0] && !due[8]);
            // A batch larger than the interval is timed at once.
            assert!(s.due(100));
            for i in 0..(LATENCY_SAMPLES + 10) {
                s.push(Duration::from_micros(i as u64));
            }
            assert_eq!(s.len, LATENCY_SAMPLES, "bounded between ticks");
            s.flush();
            assert_eq!(s.len, 0);
        });
        let snap = snapshotter.snapshot().into_vec();
        let (_, _, _, v) = snap
            .iter()
            .find(|(k, _, _, _)| k.key().name() == "sbc_media_relay_latency_seconds")
            .unwrap();
        let DebugValue::Histogram(v) = v else {
            panic!("not a histogram")
        };
        assert_eq!(v.len(), LATENCY_SAMPLES);
        assert_eq!(v[1].into_inner(), 0.000_001);
    }
}
