//! How long a queue was *held back*: it had ready messages and consumers,
//! but none of them had room (prefetch windows full, channel flow off, a
//! fenced replica). RabbitMQ's `consumer_utilisation` is the share of
//! recent time a queue was not; the management API's sampler takes it from
//! two readings of this clock (see `http/rates.rs` in the server).
//!
//! The queue notes only the changes between held back and free, after each
//! dispatch, with the time it already read: its hot path pays a comparison
//! and, on a change, an addition.

/// A stopwatch of the time held back.
#[derive(Debug, Clone)]
pub(crate) struct HeldTime {
    /// When the watch started (the queue was created), in ms.
    start: u64,
    /// Held back since then, in ms, up to `since` if it still is.
    total: u64,
    /// Held back since this time, if it is now.
    since: Option<u64>,
}

impl HeldTime {
    /// Starts watching at `now`, free.
    pub(crate) fn new(now: u64) -> HeldTime {
        HeldTime {
            start: now,
            total: 0,
            since: None,
        }
    }

    /// Notes whether the queue is held back at `now`.
    pub(crate) fn note(&mut self, held: bool, now: u64) {
        match (self.since, held) {
            (None, true) => self.since = Some(now),
            (Some(since), false) => {
                self.total += now.saturating_sub(since);
                self.since = None;
            }
            _ => {}
        }
    }

    /// (ms held back, ms watched) at `now`.
    pub(crate) fn reading(&self, now: u64) -> (u64, u64) {
        let running = self.since.map_or(0, |since| now.saturating_sub(since));
        (self.total + running, now.saturating_sub(self.start))
    }
}

/// The share of the time between two readings `(held, watched)` that the
/// queue was not held back (1 when no time passed).
pub fn share_free(before: (u64, u64), now: (u64, u64)) -> f64 {
    let watched = now.1.saturating_sub(before.1);
    if watched == 0 {
        return 1.0;
    }
    let held = now.0.saturating_sub(before.0).min(watched);
    1.0 - held as f64 / watched as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_held_back_add_up_and_the_running_one_counts() {
        let mut w = HeldTime::new(1_000);
        w.note(false, 1_500);
        w.note(true, 2_000);
        w.note(true, 2_500);
        w.note(false, 3_000);
        assert_eq!(w.reading(3_000), (1_000, 2_000));
        w.note(true, 4_000);
        assert_eq!(w.reading(4_500), (1_500, 3_500));
    }

    #[test]
    fn the_share_free_is_of_the_time_between_readings() {
        assert_eq!(share_free((0, 0), (0, 1_000)), 1.0);
        assert_eq!(share_free((100, 1_000), (600, 2_000)), 0.5);
        assert_eq!(share_free((100, 1_000), (1_100, 2_000)), 0.0);
        assert_eq!(share_free((100, 1_000), (100, 1_000)), 1.0);
    }
}
