//! Sliding replay window over packet indices (RFC 3711 §3.3.2).
//!
//! Owns only the bitmap; no allocation, no clock. The bitmap is a ring of
//! [`MAX_REPLAY_WINDOW`] bits indexed by `index % MAX_REPLAY_WINDOW`; the configured window
//! size (at most that) decides what counts as "too old".

use super::SrtpError;

/// Largest supported replay window, in packets. 1024 packets is 20 s of 50 pps audio or
/// ~1 s of HD video, well beyond any reordering a relay should tolerate, and keeps the
/// bitmap at 128 bytes per stream so it lives inline with no heap allocation.
pub const MAX_REPLAY_WINDOW: usize = 1024;

/// Default replay window, as in libsrtp (`SRTP_DEFAULT_REPLAY_WINDOW_SIZE` = 128).
pub const DEFAULT_REPLAY_WINDOW: usize = 128;

const WORDS: usize = MAX_REPLAY_WINDOW / 64;

#[derive(Clone)]
pub(crate) struct ReplayWindow {
    /// Highest index accepted so far; meaningless until `started`.
    top: u64,
    started: bool,
    bits: [u64; WORDS],
}

impl ReplayWindow {
    pub(crate) fn new() -> Self {
        ReplayWindow {
            top: 0,
            started: false,
            bits: [0; WORDS],
        }
    }

    /// Highest accepted index, if any.
    pub(crate) fn top(&self) -> Option<u64> {
        self.started.then_some(self.top)
    }

    fn bit(index: u64) -> (usize, u64) {
        // MAX_REPLAY_WINDOW is a power of two, so the modulo keeps this in range.
        let pos = (index % MAX_REPLAY_WINDOW as u64) as usize;
        (pos / 64, 1u64 << (pos % 64))
    }

    /// Checks `index` against a window of `size` packets without changing state.
    pub(crate) fn check(&self, index: u64, size: u64) -> Result<(), SrtpError> {
        if !self.started || index > self.top {
            return Ok(());
        }
        if self.top - index >= size {
            return Err(SrtpError::Replayed);
        }
        let (w, m) = Self::bit(index);
        if self.bits[w] & m != 0 {
            return Err(SrtpError::Replayed);
        }
        Ok(())
    }

    /// Records `index` as seen. Call only after the packet authenticated and passed
    /// [`ReplayWindow::check`].
    pub(crate) fn update(&mut self, index: u64) {
        if !self.started {
            self.started = true;
            self.top = index;
            self.bits = [0; WORDS];
        } else if index > self.top {
            let advance = index - self.top;
            if advance >= MAX_REPLAY_WINDOW as u64 {
                self.bits = [0; WORDS];
            } else {
                for i in self.top + 1..index {
                    let (w, m) = Self::bit(i);
                    self.bits[w] &= !m;
                }
            }
            self.top = index;
        }
        let (w, m) = Self::bit(index);
        self.bits[w] |= m;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn accept(w: &mut ReplayWindow, i: u64, size: u64) -> Result<(), SrtpError> {
        w.check(i, size)?;
        w.update(i);
        Ok(())
    }

    #[test]
    fn duplicate_rejected_and_out_of_order_accepted() {
        let mut w = ReplayWindow::new();
        assert_eq!(accept(&mut w, 100, 128), Ok(()));
        assert_eq!(accept(&mut w, 100, 128), Err(SrtpError::Replayed));
        assert_eq!(accept(&mut w, 103, 128), Ok(()));
        assert_eq!(accept(&mut w, 101, 128), Ok(()));
        assert_eq!(accept(&mut w, 102, 128), Ok(()));
        assert_eq!(accept(&mut w, 102, 128), Err(SrtpError::Replayed));
        assert_eq!(w.top(), Some(103));
    }

    #[test]
    fn too_old_rejected_at_window_edge() {
        let mut w = ReplayWindow::new();
        accept(&mut w, 1000, 128).unwrap();
        // 1000 - 872 = 128 >= 128: outside.
        assert_eq!(w.check(872, 128), Err(SrtpError::Replayed));
        assert_eq!(w.check(873, 128), Ok(()));
        assert_eq!(w.check(873, 64), Err(SrtpError::Replayed));
    }

    #[test]
    fn big_jump_clears_stale_bits() {
        let mut w = ReplayWindow::new();
        accept(&mut w, 5, 1024).unwrap();
        accept(&mut w, 5 + 1024, 1024).unwrap();
        // 5 + 1024 shares a bit with 5; 6 + 1023 must not be reported as seen.
        assert_eq!(accept(&mut w, 6 + 1023 - 1, 1024), Ok(()));
        accept(&mut w, 3000, 1024).unwrap();
        assert_eq!(accept(&mut w, 2999, 1024), Ok(()));
        assert_eq!(accept(&mut w, 3000 - 1023, 1024), Ok(()));
        assert_eq!(accept(&mut w, 3000 - 1024, 1024), Err(SrtpError::Replayed));
    }
}
