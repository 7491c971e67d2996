//! Delivery coalescing: deliveries to a busy connection are held for a few
//! hundred microseconds so that they reach the client in one write.
//!
//! antre hands a message to a waiting consumer the moment it is published.
//! At low rates that is what users want (scenario 5 of BENCHMARKS.md: p99
//! well under a millisecond). At high rates it makes every delivery its own
//! write, and on the client every delivery its own socket read and thread
//! wake-up: a client library such as lapin then spends most of its CPU
//! being woken rather than handling messages, and goes slower against antre
//! than against a broker that lets a backlog build. This is the broker side
//! of what NICs call interrupt moderation: below a rate nothing is held;
//! above it, the first delivery after a write starts a short window and
//! everything queued for the connection within it goes out together.
//!
//! Only deliveries wait. Anything the client asked for (method replies,
//! confirms, cancels) flushes the buffer at once, held deliveries with it.
//!
//! The window is shorter than tokio's timer resolution (1 ms), so on Linux
//! it is a timerfd registered with tokio's reactor: one `timerfd_settime`
//! per batch, with microsecond precision. Elsewhere it falls back to a tokio
//! sleep, which rounds the window up to the next millisecond.

use std::time::Duration;

use tokio::time::Instant;

/// Bytes of held deliveries past which they are written without waiting
/// for the window to close: a larger write saves the client nothing more.
const HOLD_MAX_BYTES: usize = 128 * 1024;

/// Deliveries past which they are written without waiting for the window
/// to close: by then the client's per-read cost is spread thin, and a fast
/// consumer should not wait for the clock.
const HOLD_MAX_DELIVERIES: u32 = 128;

/// Rates are measured over periods at least this long, so that a burst
/// from a fixed-rate publisher does not count as a high rate.
const RATE_PERIOD: Duration = Duration::from_millis(10);

/// Where a connection is in its hold cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing held: the next flush decision measures the rate.
    Idle,
    /// Deliveries are held until the timer fires.
    Holding,
    /// The timer fired: write what is held.
    Due,
}

/// One connection's coalescing state: its delivery rate and its hold timer.
#[derive(Debug)]
pub(super) struct Coalescer {
    window: Duration,
    /// Deliveries per second above which deliveries are held.
    rate: u32,
    period_start: Instant,
    period_count: u32,
    /// Deliveries in the buffer since the last write.
    held: u32,
    busy: bool,
    state: State,
    /// Created on first use: connections that never get busy never hold one.
    timer: Option<timer::HoldTimer>,
}

impl Coalescer {
    /// Coalesces for up to `window` once deliveries exceed `rate` per
    /// second; a zero window disables it, a zero rate holds at any rate.
    pub(super) fn new(window: Duration, rate: u32) -> Coalescer {
        Coalescer {
            window,
            rate,
            period_start: Instant::now(),
            period_count: 0,
            held: 0,
            busy: false,
            state: State::Idle,
            timer: None,
        }
    }

    fn enabled(&self) -> bool {
        !self.window.is_zero()
    }

    /// Counts `n` deliveries encoded for the client.
    pub(super) fn delivered(&mut self, n: u32) {
        self.period_count = self.period_count.saturating_add(n);
        self.held = self.held.saturating_add(n);
    }

    /// Whether the buffered output (`buffered` bytes; `urgent` if it must
    /// go now) should wait rather than be written. Arms the timer when a
    /// hold begins; when this answers false, the caller writes.
    pub(super) fn hold(&mut self, buffered: usize, urgent: bool) -> bool {
        let hold = self.should_hold(buffered, urgent);
        if !hold {
            self.held = 0;
        }
        hold
    }

    fn should_hold(&mut self, buffered: usize, urgent: bool) -> bool {
        if !self.enabled() || buffered == 0 {
            return false;
        }
        if urgent
            || buffered >= HOLD_MAX_BYTES
            || self.held >= HOLD_MAX_DELIVERIES
            || self.state == State::Due
        {
            self.state = State::Idle;
            return false;
        }
        if self.state == State::Holding {
            return true;
        }
        if self.rate > 0 {
            self.measure();
            if !self.busy {
                return false;
            }
        }
        if self.timer.is_none() {
            match timer::HoldTimer::new() {
                Ok(t) => self.timer = Some(t),
                Err(e) => {
                    // Without a timer there is no hold; deliveries still flow.
                    tracing::warn!("cannot create a delivery coalescing timer: {e}");
                    self.window = Duration::ZERO;
                    return false;
                }
            }
        }
        let armed = self.timer.as_mut().map(|t| t.arm(self.window));
        if !matches!(armed, Some(Ok(()))) {
            return false;
        }
        self.state = State::Holding;
        true
    }

    /// Updates `busy` once a rate period has passed.
    fn measure(&mut self) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.period_start);
        if elapsed < RATE_PERIOD {
            return;
        }
        let per_second = f64::from(self.period_count) / elapsed.as_secs_f64();
        self.busy = per_second >= f64::from(self.rate);
        self.period_start = now;
        self.period_count = 0;
    }

    /// Whether a hold is running (the select loop waits on [`Self::expired`]
    /// only then).
    pub(super) fn holding(&self) -> bool {
        self.state == State::Holding
    }

    /// Resolves when the hold's window has closed.
    pub(super) async fn expired(&mut self) {
        match self.timer.as_mut() {
            Some(t) if self.state == State::Holding => {
                t.wait().await;
                self.state = State::Due;
            }
            _ => std::future::pending().await,
        }
    }
}

#[cfg(target_os = "linux")]
mod timer {
    use std::io;
    use std::os::fd::OwnedFd;
    use std::time::Duration;

    use rustix::time::{
        timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags,
        TimerfdTimerFlags, Timespec,
    };
    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;

    /// A one-shot timerfd watched by tokio's reactor.
    #[derive(Debug)]
    pub(super) struct HoldTimer {
        fd: AsyncFd<OwnedFd>,
    }

    impl HoldTimer {
        pub(super) fn new() -> io::Result<HoldTimer> {
            let fd = timerfd_create(
                TimerfdClockId::Monotonic,
                TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
            )?;
            // SAFETY: the AsyncFd owns the OwnedFd, which stays open and
            // keeps its descriptor number until the AsyncFd is dropped.
            #[allow(unsafe_code)]
            let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
            Ok(HoldTimer { fd })
        }

        /// Fires once, `after` from now.
        pub(super) fn arm(&mut self, after: Duration) -> io::Result<()> {
            let zero = Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            let value = Timespec {
                tv_sec: after.as_secs() as _,
                // A zero value would disarm the timer instead.
                tv_nsec: after.subsec_nanos().max(1) as _,
            };
            let spec = Itimerspec {
                it_interval: zero,
                it_value: value,
            };
            timerfd_settime(self.fd.get_ref(), TimerfdTimerFlags::empty(), &spec)?;
            Ok(())
        }

        /// Waits for the timer to fire and consumes the expiration.
        pub(super) async fn wait(&mut self) {
            loop {
                let Ok(mut guard) = self.fd.readable().await else {
                    // The reactor is gone (shutdown): there is nothing to wait for.
                    return;
                };
                let mut buf = [0u8; 8];
                match rustix::io::read(guard.get_inner(), &mut buf) {
                    Ok(_) => return,
                    Err(rustix::io::Errno::AGAIN) => guard.clear_ready(),
                    Err(_) => return,
                }
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod timer {
    use std::io;
    use std::time::Duration;

    /// Fallback: a tokio deadline, rounded up to its millisecond resolution.
    #[derive(Debug)]
    pub(super) struct HoldTimer {
        deadline: Option<tokio::time::Instant>,
    }

    impl HoldTimer {
        pub(super) fn new() -> io::Result<HoldTimer> {
            Ok(HoldTimer { deadline: None })
        }

        pub(super) fn arm(&mut self, after: Duration) -> io::Result<()> {
            self.deadline = Some(tokio::time::Instant::now() + after);
            Ok(())
        }

        pub(super) async fn wait(&mut self) {
            if let Some(at) = self.deadline {
                tokio::time::sleep_until(at).await;
            }
            self.deadline = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection fed `per_ms` deliveries every millisecond for `ms`
    /// milliseconds of paused tokio time, answering each hold decision.
    async fn feed(c: &mut Coalescer, per_ms: u32, ms: u32) -> Vec<bool> {
        let mut holds = Vec::new();
        for _ in 0..ms {
            tokio::time::advance(Duration::from_millis(1)).await;
            c.delivered(per_ms);
            holds.push(c.hold(100, false));
            // Whatever was held is written before the next millisecond.
            c.state = State::Idle;
            c.held = 0;
        }
        holds
    }

    #[tokio::test(start_paused = true)]
    async fn below_the_rate_nothing_waits() {
        let mut c = Coalescer::new(Duration::from_millis(2), 20_000);
        // 10 per ms is 10k/s: under the threshold.
        assert!(feed(&mut c, 10, 50).await.iter().all(|h| !h));
    }

    #[tokio::test(start_paused = true)]
    async fn above_the_rate_deliveries_wait_after_one_period() {
        let mut c = Coalescer::new(Duration::from_millis(2), 20_000);
        // 50 per ms is 50k/s: busy once the first 10 ms period is measured.
        let holds = feed(&mut c, 50, 30).await;
        assert!(holds[..9].iter().all(|h| !h), "{holds:?}");
        assert!(holds[10..].iter().all(|h| *h), "{holds:?}");
        // Back to a trickle: the next period clears it.
        let holds = feed(&mut c, 1, 30).await;
        assert!(holds[20..].iter().all(|h| !h), "{holds:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn urgency_and_the_caps_end_a_hold() {
        let mut c = Coalescer::new(Duration::from_millis(2), 0);
        c.delivered(1);
        assert!(c.hold(100, false));
        assert!(c.holding());
        assert!(c.hold(200, false), "still within the window");
        assert!(!c.hold(200, true), "a reply goes out with the deliveries");
        assert!(!c.holding());

        c.delivered(1);
        assert!(c.hold(100, false));
        assert!(!c.hold(HOLD_MAX_BYTES, false), "enough bytes");

        c.delivered(HOLD_MAX_DELIVERIES);
        assert!(!c.hold(100, false), "enough deliveries");
        c.delivered(1);
        assert!(c.hold(100, false), "the count restarts after a write");
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_window_never_holds() {
        let mut c = Coalescer::new(Duration::ZERO, 0);
        c.delivered(1);
        assert!(!c.hold(100, false));
        assert!(!c.hold(0, false));
    }

    #[tokio::test]
    async fn the_timer_ends_the_hold() {
        let mut c = Coalescer::new(Duration::from_micros(300), 0);
        for _ in 0..3 {
            c.delivered(1);
            assert!(c.hold(100, false));
            tokio::time::timeout(Duration::from_secs(10), c.expired())
                .await
                .expect("the window closes");
            assert!(!c.hold(100, false), "due: write now");
        }
    }
}
