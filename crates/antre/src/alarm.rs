//! The memory and free-disk alarms, measured: resident memory against the
//! high watermark, free space on the data directory against its limit.
//!
//! The thresholds and the blocking live in the core
//! ([`antre_broker::alarm`]), which also counts the bytes clients send and
//! queues write so that an alarm is raised between two readings when
//! traffic is fast. Here are the gauges (`/proc/self/statm`, `statvfs`),
//! the periodic readings, and a watch channel that wakes the connections a
//! change concerns.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use antre_broker::alarm::{self, AlarmState, Gauge, Resource};
use antre_broker::Broker;
use tokio::sync::watch;

/// The memory high watermark: a fraction of the memory available to the
/// process, or an absolute size (RabbitMQ's `vm_memory_high_watermark`
/// relative and absolute forms).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MemoryWatermark {
    /// This fraction of the machine's (or the cgroup's) memory.
    Relative(f64),
    /// This many bytes.
    Absolute(u64),
}

impl Default for MemoryWatermark {
    /// RabbitMQ's default: 40% of the memory.
    fn default() -> Self {
        MemoryWatermark::Relative(0.4)
    }
}

impl MemoryWatermark {
    /// The watermark in bytes, given the memory available.
    pub fn bytes(self, total: u64) -> u64 {
        match self {
            MemoryWatermark::Relative(f) => (total as f64 * f) as u64,
            MemoryWatermark::Absolute(b) => b,
        }
    }
}

impl std::str::FromStr for MemoryWatermark {
    type Err = String;

    /// `0.4` (a fraction: a plain number up to 1), `536870912` (bytes: a
    /// plain number above 1) or a size with a unit, as RabbitMQ writes
    /// them: `512MiB`, `2GB`, `1G` (see [`parse_size`]).
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if let Ok(f) = t.parse::<f64>() {
            if !f.is_finite() || f <= 0.0 {
                return Err(format!("memory high watermark must be positive, not {s}"));
            }
            return Ok(if f <= 1.0 {
                MemoryWatermark::Relative(f)
            } else {
                MemoryWatermark::Absolute(f as u64)
            });
        }
        parse_size(t).map(MemoryWatermark::Absolute)
    }
}

/// Parses a size in bytes: a plain integer, or a number with a unit.
/// Units as RabbitMQ reads them: `kB`, `MB`, `GB`, `TB` are powers of
/// 1000; `k`/`KiB`, `M`/`MiB`, `G`/`GiB`, `T`/`TiB` powers of 1024 (case
/// of the first letter aside); `B` is bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 512MiB, 2GB, 1073741824)"))?;
    let unit = unit.trim();
    let multiplier: u64 = match unit {
        "" | "B" | "b" => 1,
        "kB" | "KB" => 1000,
        "MB" => 1000u64.pow(2),
        "GB" => 1000u64.pow(3),
        "TB" => 1000u64.pow(4),
        "k" | "K" | "KiB" | "kiB" => 1 << 10,
        "M" | "m" | "MiB" => 1 << 20,
        "G" | "g" | "GiB" => 1 << 30,
        "T" | "t" | "TiB" => 1 << 40,
        _ => return Err(format!("unknown unit '{unit}' in '{s}'")),
    };
    if !number.is_finite() || number < 0.0 {
        return Err(format!("'{s}' is not a size"));
    }
    Ok((number * multiplier as f64) as u64)
}

/// Resident memory of this process, in bytes, from `/proc/self/statm`
/// (one small read: cheap enough to call on every few MiB of traffic).
pub fn resident_memory() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * page_size()
}

#[cfg(target_os = "linux")]
fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

#[cfg(not(target_os = "linux"))]
fn page_size() -> u64 {
    4096
}

/// The memory this process may use: the machine's, or its cgroup's limit
/// when lower (containers), as RabbitMQ does since 3.x.
pub fn memory_total() -> u64 {
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024);
    // cgroup v2, then v1; "max" or an absurdly large v1 number means none.
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok());
    match cgroup {
        Some(limit) if machine == 0 || limit < machine => limit,
        _ => machine,
    }
}

/// Resident memory against the watermark.
#[derive(Debug)]
struct MemoryGauge {
    limit: AtomicU64,
}

impl Gauge for MemoryGauge {
    fn headroom(&self) -> Option<i64> {
        let used = resident_memory();
        let limit = self.limit.load(Ordering::Relaxed);
        Some(limit as i64 - used as i64)
    }
}

/// Free space on the data directory's file system against the limit.
#[derive(Debug)]
struct DiskGauge {
    dir: PathBuf,
    limit: AtomicU64,
}

impl Gauge for DiskGauge {
    fn headroom(&self) -> Option<i64> {
        let free = match fs4::available_space(&self.dir) {
            Ok(free) => free,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), "cannot read free disk space: {e}");
                return None;
            }
        };
        let limit = self.limit.load(Ordering::Relaxed);
        Some(i64::try_from(free).unwrap_or(i64::MAX) - i64::try_from(limit).unwrap_or(i64::MAX))
    }
}

/// How often each resource is read, besides the readings traffic triggers.
#[derive(Debug, Clone, Copy)]
pub struct CheckIntervals {
    /// Resident memory.
    pub memory: Duration,
    /// Free disk space.
    pub disk: Duration,
}

/// The broker's alarms, with their gauges installed and read periodically.
#[derive(Debug, Clone)]
pub struct Alarms {
    core: Arc<alarm::Alarms>,
    memory: Arc<MemoryGauge>,
    disk: Arc<DiskGauge>,
    state: watch::Receiver<AlarmState>,
}

impl Alarms {
    /// Installs the gauges on `broker`'s alarms: memory against
    /// `memory_limit` bytes, free space on `dir` against `disk_free_limit`
    /// bytes, each read every interval until `shutdown` fires.
    pub fn start(
        broker: &Broker,
        memory_limit: u64,
        dir: PathBuf,
        disk_free_limit: u64,
        every: CheckIntervals,
        mut shutdown: watch::Receiver<bool>,
    ) -> Alarms {
        let core = Arc::clone(&broker.alarms);
        let (tx, state) = watch::channel(core.state());
        core.on_change(move |s| {
            tx.send_replace(s);
        });
        let memory = Arc::new(MemoryGauge {
            limit: AtomicU64::new(memory_limit),
        });
        let disk = Arc::new(DiskGauge {
            dir,
            limit: AtomicU64::new(disk_free_limit),
        });
        core.set_gauge(Resource::Memory, Arc::clone(&memory) as Arc<dyn Gauge>);
        core.set_gauge(Resource::Disk, Arc::clone(&disk) as Arc<dyn Gauge>);
        let task_core = Arc::clone(&core);
        tokio::spawn(async move {
            let mut memory_tick = tokio::time::interval(every.memory);
            let mut disk_tick = tokio::time::interval(every.disk);
            // statvfs can block on a slow file system: keep it off the
            // async workers' hot loop.
            loop {
                tokio::select! {
                    _ = memory_tick.tick() => task_core.check(Resource::Memory),
                    _ = disk_tick.tick() => {
                        let c = Arc::clone(&task_core);
                        let _ = tokio::task::spawn_blocking(move || c.check(Resource::Disk)).await;
                    }
                    _ = shutdown.changed() => return,
                }
            }
        });
        Alarms {
            core,
            memory,
            disk,
            state,
        }
    }

    /// The alarms raised now, and a way to wait for changes.
    pub fn subscribe(&self) -> watch::Receiver<AlarmState> {
        self.state.clone()
    }

    /// The alarms raised now.
    pub fn state(&self) -> AlarmState {
        self.core.state()
    }

    /// Changes the free-disk limit, and checks it at once.
    pub fn set_disk_free_limit(&self, bytes: u64) {
        self.disk.limit.store(bytes, Ordering::Relaxed);
        self.core.check(Resource::Disk);
    }

    /// Changes the memory high watermark (bytes), and checks it at once.
    pub fn set_memory_limit(&self, bytes: u64) {
        self.memory.limit.store(bytes, Ordering::Relaxed);
        self.core.check(Resource::Memory);
    }

    /// The memory high watermark, in bytes.
    pub fn memory_limit(&self) -> u64 {
        self.memory.limit.load(Ordering::Relaxed)
    }

    /// The free-disk limit, in bytes.
    pub fn disk_free_limit(&self) -> u64 {
        self.disk.limit.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermarks_are_fractions_or_sizes() {
        let w = |s: &str| s.parse::<MemoryWatermark>();
        assert_eq!(w("0.4"), Ok(MemoryWatermark::Relative(0.4)));
        assert_eq!(w("1"), Ok(MemoryWatermark::Relative(1.0)));
        assert_eq!(w("512MiB"), Ok(MemoryWatermark::Absolute(512 << 20)));
        assert_eq!(w("2GB"), Ok(MemoryWatermark::Absolute(2_000_000_000)));
        assert_eq!(w("1G"), Ok(MemoryWatermark::Absolute(1 << 30)));
        assert_eq!(w("1073741824"), Ok(MemoryWatermark::Absolute(1 << 30)));
        assert!(w("0").is_err());
        assert!(w("-1").is_err());
        assert!(w("lots").is_err());
        assert!(w("3 parsecs").is_err());
        assert_eq!(MemoryWatermark::Relative(0.5).bytes(1000), 500);
    }

    #[test]
    fn process_memory_comes_from_proc() {
        assert!(resident_memory() > 0);
        let total = memory_total();
        assert!(total > resident_memory(), "{total}");
    }
}
