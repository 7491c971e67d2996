//! What /proc says about the broker process: CPU time and resident memory.
//!
//! Dividing the broker's CPU time by the messages it delivered gives a cost
//! per message that does not depend on how many cores the machine has, which
//! is fairer than comparing rates alone on a small machine.

use anyhow::{Context, Result};

/// Clock ticks per second of /proc/PID/stat's utime and stime. It is 100 on
/// every Linux architecture the tool runs on (USER_HZ), and asking libc for
/// it would be the only reason to depend on libc.
const TICKS_PER_SEC: u64 = 100;

/// User plus system CPU time of `pid` (all its threads), in microseconds.
pub fn cpu_time_us(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat: is the broker's pid right?"))?;
    parse_cpu_ticks(&stat)
        .map(|ticks| ticks * (1_000_000 / TICKS_PER_SEC))
        .with_context(|| format!("unexpected /proc/{pid}/stat format"))
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: fields are
    // counted from the last ')'. After it come field 3 (state) onwards, so
    // utime (14) and stime (15) are the 12th and 13th.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size of `pid` in KiB (VmRSS), or `None` if it has exited.
/// CPU time of several processes (a cluster's nodes) together; `None`
/// for none.
pub fn cpu_time_of(pids: &[u32]) -> Result<Option<u64>> {
    if pids.is_empty() {
        return Ok(None);
    }
    pids.iter()
        .map(|&p| cpu_time_us(p))
        .sum::<Result<u64>>()
        .map(Some)
}

/// Resident memory of several processes together, if any can be read.
pub fn rss_kib_of(pids: &[u32]) -> Option<u64> {
    pids.iter().filter_map(|&p| rss_kib(p)).reduce(|a, b| a + b)
}

pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_rss_kib(&status)
}

fn parse_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let stat = "1234 (beam.smp (x) y) S 1 1234 1234 0 -1 4194560 5000 0 0 0 \
                    250 75 0 0 20 0 30 0 100 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
    }

    #[test]
    fn parses_vmrss() {
        let status = "Name:\tantre\nVmPeak:\t  9000 kB\nVmRSS:\t  123456 kB\nThreads: 4\n";
        assert_eq!(parse_rss_kib(status), Some(123_456));
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(cpu_time_us(me).is_ok());
        assert!(rss_kib(me).unwrap() > 0);
    }
}
