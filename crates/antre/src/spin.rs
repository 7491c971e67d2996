//! Busy-waiting before a runtime worker parks, while the broker is loaded.
//!
//! A tokio worker with nothing to do parks at once, in `epoll_wait` or on a
//! futex. On a loaded broker that means nearly every arriving frame finds
//! its worker asleep: the client's `sendto` then pays for waking it (the
//! loopback delivery runs in the sender's system call), and the worker pays
//! a context switch to come back. Measured with lapin driving 1→1 transient
//! traffic on two cores, this alone swung antre between 41k and 65k msg/s
//! from run to run. Erlang's schedulers, and so RabbitMQ, avoid it by
//! spinning a little before they sleep; antre does the same, but only while
//! its workers are busy for a good share of the time, so a lightly loaded
//! broker (the 10k msg/s latency scenario, an idle one) never burns CPU on
//! it.

use std::cell::Cell;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// While the workers together were busy at least this share of one core
/// over a period, they spin before parking in the next one. Load is
/// measured across all workers because the one that sleeps in the reactor
/// is the one a new frame wakes, however idle it was itself.
const BUSY_SHARE: f64 = 0.2;

/// How often the load is measured again.
const PERIOD: Duration = Duration::from_millis(10);

/// The workers' load measurement.
#[derive(Debug)]
struct Load {
    period_start: Instant,
    busy: Duration,
    spinning: bool,
}

impl Load {
    fn new(now: Instant) -> Load {
        Load {
            period_start: now,
            busy: Duration::ZERO,
            spinning: false,
        }
    }

    /// Accounts a busy stretch of one worker that ends at `now`; whether
    /// to spin before parking.
    fn parking(&mut self, busy: Duration, now: Instant) -> bool {
        self.busy += busy;
        let elapsed = now.saturating_duration_since(self.period_start);
        if elapsed >= PERIOD {
            self.spinning = self.busy.as_secs_f64() >= BUSY_SHARE * elapsed.as_secs_f64();
            self.period_start = now;
            self.busy = Duration::ZERO;
        }
        self.spinning
    }
}

static LOAD: Mutex<Option<Load>> = Mutex::new(None);

thread_local! {
    /// When this worker last woke up.
    static UNPARKED: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// For `Builder::on_thread_unpark`.
pub fn unparked() {
    UNPARKED.with(|u| u.set(Some(Instant::now())));
}

/// For `Builder::on_thread_park`: spins for `spin` first if the workers
/// have been busy lately.
pub fn parking(spin: Duration) {
    if spin.is_zero() {
        return;
    }
    let now = Instant::now();
    let busy = UNPARKED
        .with(|u| u.get())
        .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
    let spinning = LOAD
        .lock()
        .get_or_insert_with(|| Load::new(now))
        .parking(busy, now);
    if spinning {
        while now.elapsed() < spin {
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Workers that together are busy `busy_us` then idle `idle_us`, over
    /// and over, for 50 ms; which parks would spin.
    fn pattern(busy_us: u64, idle_us: u64) -> Vec<bool> {
        let t0 = Instant::now();
        let mut load = Load::new(t0);
        let mut t = t0;
        let mut spins = Vec::new();
        while t < t0 + Duration::from_millis(50) {
            t += Duration::from_micros(busy_us);
            spins.push(load.parking(Duration::from_micros(busy_us), t));
            t += Duration::from_micros(idle_us);
        }
        spins
    }

    #[test]
    fn a_lightly_loaded_broker_never_spins() {
        // 7 µs of work every 100 µs (7% of a core): the 10k msg/s latency
        // scenario.
        assert!(pattern(7, 93).iter().all(|s| !s));
    }

    #[test]
    fn a_busy_broker_spins_after_one_period() {
        // 10 µs of work every 25 µs: 40% of a core.
        let spins = pattern(10, 15);
        let first_period = (PERIOD.as_micros() / 25) as usize;
        assert!(spins[..first_period - 1].iter().all(|s| !s));
        assert!(spins[first_period + 1..].iter().all(|s| *s));
    }

    #[test]
    fn load_is_measured_again_each_period() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut load = Load::new(t0);
        assert!(!load.parking(ms(1), t0 + ms(1)), "first period still open");
        assert!(load.parking(ms(10), t0 + ms(11)), "busy all period");
        assert!(!load.parking(Duration::ZERO, t0 + ms(30)), "then idle");
    }
}
