//! Resource alarms: memory and free disk space, as RabbitMQ's
//! `vm_memory_high_watermark` and `disk_free_limit`.
//!
//! While an alarm is raised, connections that publish are blocked
//! (connection.blocked, and the server stops reading them) and consumers
//! keep draining. The core does not read the operating system itself: the
//! server installs a [`Gauge`] per resource (resident memory against the
//! watermark, free space against the limit) and measures periodically.
//!
//! A periodic measurement alone lets a fast publisher overshoot: at
//! 500 MB/s, a second between two `statvfs` calls is 500 MB past the limit.
//! So the paths that spend a resource count what they spend: the session
//! counts the bytes it reads from clients ([`Resource::Memory`]), queues
//! count the bytes they append to stores ([`Resource::Disk`]). Once the
//! bytes spent since the last reading pass a step (a quarter of the headroom
//! that reading found, between 256 KiB and 16 MiB), the caller that crossed
//! it measures again at once. So between two readings at most one step is
//! spent: the alarm is raised at most a step, plus what is already read
//! into buffers, past its threshold. Counting is one relaxed atomic add;
//! readings happen every few MiB of traffic, and cost microseconds.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

/// A resource an alarm guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// Resident memory of the broker against the high watermark.
    Memory,
    /// Free space on the data directory's file system against its limit.
    Disk,
}

/// A fresh measurement of one resource.
pub trait Gauge: Send + Sync + fmt::Debug {
    /// Bytes left before the alarm is raised (negative: past it), or None
    /// when the resource cannot be measured now (the alarm keeps its state).
    fn headroom(&self) -> Option<i64>;
}

/// Which alarms are raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AlarmState {
    /// Memory is above the high watermark.
    pub memory: bool,
    /// Free disk space is below the limit.
    pub disk: bool,
}

impl AlarmState {
    /// Whether any alarm is raised.
    pub fn any(self) -> bool {
        self.memory || self.disk
    }

    /// The reason connection.blocked gives, RabbitMQ's words: "low on
    /// memory", "low on disk", or both joined with "&" (in RabbitMQ's
    /// order: disk first).
    pub fn reason(self) -> Option<&'static str> {
        match (self.disk, self.memory) {
            (false, false) => None,
            (true, false) => Some("low on disk"),
            (false, true) => Some("low on memory"),
            (true, true) => Some("low on disk & memory"),
        }
    }
}

/// Smallest and largest amount spent between two readings.
const MIN_STEP: u64 = 256 * 1024;
const MAX_STEP: u64 = 16 * 1024 * 1024;

/// One resource's threshold and what was spent since its last reading.
#[derive(Debug)]
struct Watermark {
    resource: Resource,
    gauge: RwLock<Option<Arc<dyn Gauge>>>,
    /// Headroom at the last reading.
    headroom: AtomicI64,
    /// Bytes spent since the last reading.
    spent: AtomicU64,
    /// Spending this much since the last reading triggers the next one.
    step: AtomicU64,
    raised: AtomicBool,
    /// A reading is under way (so a crowd of publishers crossing the step
    /// together measures once).
    measuring: AtomicBool,
}

impl Watermark {
    fn new(resource: Resource) -> Watermark {
        Watermark {
            resource,
            gauge: RwLock::new(None),
            headroom: AtomicI64::new(i64::MAX),
            spent: AtomicU64::new(0),
            step: AtomicU64::new(MAX_STEP),
            raised: AtomicBool::new(false),
            measuring: AtomicBool::new(false),
        }
    }

    /// Reads the gauge; returns whether the alarm changed.
    fn measure(&self) -> bool {
        let Some(gauge) = self.gauge.read().clone() else {
            return false;
        };
        if self.measuring.swap(true, Ordering::Acquire) {
            return false;
        }
        // What was spent before the reading is in it; what is spent while
        // it runs counts towards the next.
        let spent = self.spent.load(Ordering::Relaxed);
        let reading = gauge.headroom();
        let changed = match reading {
            None => false,
            Some(headroom) => {
                self.spent.fetch_sub(spent, Ordering::Relaxed);
                self.headroom.store(headroom, Ordering::Relaxed);
                let step = u64::try_from(headroom / 4)
                    .unwrap_or(0)
                    .clamp(MIN_STEP, MAX_STEP);
                self.step.store(step, Ordering::Relaxed);
                let raise = headroom < 0;
                self.raised.swap(raise, Ordering::Relaxed) != raise
            }
        };
        self.measuring.store(false, Ordering::Release);
        if changed {
            let raised = self.raised.load(Ordering::Relaxed);
            let headroom = self.headroom.load(Ordering::Relaxed);
            match (self.resource, raised) {
                (Resource::Memory, true) => tracing::warn!(
                    over_by = -headroom,
                    "memory alarm raised: resident memory above the high watermark, blocking publishers"
                ),
                (Resource::Memory, false) => tracing::info!(
                    headroom,
                    "memory alarm cleared: unblocking publishers"
                ),
                (Resource::Disk, true) => tracing::warn!(
                    short_by = -headroom,
                    "disk alarm raised: free space below the limit, blocking publishers"
                ),
                (Resource::Disk, false) => {
                    tracing::info!(headroom, "disk alarm cleared: unblocking publishers")
                }
            }
        }
        changed
    }

    /// Counts bytes spent; returns whether it is time for a reading.
    fn spend(&self, bytes: u64) -> bool {
        let spent = self.spent.fetch_add(bytes, Ordering::Relaxed) + bytes;
        spent >= self.step.load(Ordering::Relaxed)
    }
}

type Listener = Box<dyn Fn(AlarmState) + Send + Sync>;

/// The broker's resource alarms. Without gauges (an in-memory broker, the
/// core's tests) nothing is ever raised.
pub struct Alarms {
    memory: Watermark,
    disk: Watermark,
    listener: RwLock<Option<Listener>>,
}

impl fmt::Debug for Alarms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Alarms")
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Default for Alarms {
    fn default() -> Self {
        Alarms {
            memory: Watermark::new(Resource::Memory),
            disk: Watermark::new(Resource::Disk),
            listener: RwLock::new(None),
        }
    }
}

impl Alarms {
    fn watermark(&self, resource: Resource) -> &Watermark {
        match resource {
            Resource::Memory => &self.memory,
            Resource::Disk => &self.disk,
        }
    }

    /// Installs the gauge that measures `resource`, and measures it.
    pub fn set_gauge(&self, resource: Resource, gauge: Arc<dyn Gauge>) {
        *self.watermark(resource).gauge.write() = Some(gauge);
        self.check(resource);
    }

    /// Calls `listener` with the new state whenever an alarm is raised or
    /// cleared (from whichever thread noticed).
    pub fn on_change(&self, listener: impl Fn(AlarmState) + Send + Sync + 'static) {
        *self.listener.write() = Some(Box::new(listener));
    }

    /// Which alarms are raised now.
    pub fn state(&self) -> AlarmState {
        AlarmState {
            memory: self.memory.raised.load(Ordering::Relaxed),
            disk: self.disk.raised.load(Ordering::Relaxed),
        }
    }

    /// Measures `resource` now (the server's periodic check).
    pub fn check(&self, resource: Resource) {
        if self.watermark(resource).measure() {
            self.notify();
        }
    }

    /// Counts `bytes` of `resource` spent (read from clients, appended to
    /// a store), measuring again once enough was spent since the last
    /// reading. One relaxed atomic add on the hot path.
    pub fn spend(&self, resource: Resource, bytes: u64) {
        let w = self.watermark(resource);
        if w.spend(bytes) && w.measure() {
            self.notify();
        }
    }

    fn notify(&self) {
        let state = self.state();
        if let Some(listener) = &*self.listener.read() {
            listener(state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    /// A resource with a fixed amount left, used up by what is spent.
    #[derive(Debug)]
    struct Fake {
        left: Mutex<i64>,
        readings: AtomicUsize,
    }

    impl Gauge for Fake {
        fn headroom(&self) -> Option<i64> {
            self.readings.fetch_add(1, Ordering::Relaxed);
            Some(*self.left.lock().unwrap())
        }
    }

    #[test]
    fn spending_past_the_headroom_raises_the_alarm_within_one_step() {
        let alarms = Alarms::default();
        let fake = Arc::new(Fake {
            left: Mutex::new(64 * 1024 * 1024),
            readings: AtomicUsize::new(0),
        });
        alarms.set_gauge(Resource::Disk, Arc::clone(&fake) as Arc<dyn Gauge>);
        let changes = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&changes);
        alarms.on_change(move |s| seen.lock().unwrap().push(s));
        assert!(!alarms.state().disk);
        // Spend in 64 KiB writes; the fake's headroom shrinks as the disk
        // fills. The alarm must be raised before 64 MiB + one step is spent.
        let mut spent = 0i64;
        while !alarms.state().disk {
            *fake.left.lock().unwrap() -= 65536;
            spent += 65536;
            alarms.spend(Resource::Disk, 65536);
            assert!(spent <= 64 * 1024 * 1024 + MIN_STEP as i64, "overshot");
        }
        assert!(spent > 64 * 1024 * 1024, "raised only once past the limit");
        assert!(
            fake.readings.load(Ordering::Relaxed) < 64,
            "readings stay rare: {}",
            fake.readings.load(Ordering::Relaxed)
        );
        assert_eq!(
            *changes.lock().unwrap(),
            [AlarmState {
                memory: false,
                disk: true
            }]
        );
        *fake.left.lock().unwrap() = 1 << 30;
        alarms.check(Resource::Disk);
        assert!(!alarms.state().any());
        assert_eq!(changes.lock().unwrap().len(), 2);
    }

    #[test]
    fn without_a_gauge_nothing_is_raised() {
        let alarms = Alarms::default();
        alarms.spend(Resource::Memory, u64::MAX / 2);
        alarms.check(Resource::Memory);
        assert_eq!(alarms.state(), AlarmState::default());
    }

    #[test]
    fn reasons_are_rabbitmqs() {
        let s = |memory, disk| AlarmState { memory, disk }.reason();
        assert_eq!(s(false, false), None);
        assert_eq!(s(true, false), Some("low on memory"));
        assert_eq!(s(false, true), Some("low on disk"));
        assert_eq!(s(true, true), Some("low on disk & memory"));
    }
}
