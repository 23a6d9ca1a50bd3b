//! What a run prints: latency percentiles, and the CPU and memory used by the generator and,
//! when its process id is given, by the broker under test.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::time::Duration;

/// Percentiles of a latency histogram, in microseconds.
#[derive(Debug, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(histogram: &Histogram<u64>) -> Percentiles {
        if histogram.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: histogram.len(),
            p50: histogram.value_at_quantile(0.50),
            p90: histogram.value_at_quantile(0.90),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
        }
    }

    pub fn line(&self) -> String {
        format!(
            "p50 {} µs, p90 {} µs, p99 {} µs, p99.9 {} µs, max {} µs ({} samples)",
            self.p50, self.p90, self.p99, self.p999, self.max, self.count
        )
    }
}

/// CPU time of this process (and of its waited-for children), from getrusage.
pub fn own_cpu() -> Duration {
    rusage(libc::RUSAGE_SELF) + rusage(libc::RUSAGE_CHILDREN)
}

fn rusage(who: libc::c_int) -> Duration {
    // SAFETY: getrusage only writes into the zeroed struct we pass; an error leaves it zero.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU time used so far by process `pid` (user + system), from `/proc/{pid}/stat`.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; the fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the system and has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = u64::try_from(ticks).ok().filter(|&t| t > 0)?;
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / ticks as f64,
    ))
}

/// CPU time used so far by process `pid` and every live descendant of it (a PostgreSQL
/// server and its backends), from `/proc`.
pub fn tree_cpu(pid: u32) -> Option<Duration> {
    let root = process_cpu(pid)?;
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // Field 4, after the parenthesised command name, is the parent's id.
        let ppid = stat
            .rfind(')')
            .and_then(|end| stat.get(end + 2..))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|field| field.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parents.push((child, ppid));
        }
    }
    let mut tree = vec![pid];
    let mut total = root;
    let mut i = 0;
    while let Some(&parent) = tree.get(i) {
        for &(child, ppid) in &parents {
            if ppid == parent && !tree.contains(&child) {
                tree.push(child);
                total += process_cpu(child).unwrap_or_default();
            }
        }
        i += 1;
    }
    Some(total)
}

/// Resident memory of process `pid` in KiB, from `/proc/{pid}/status`.
pub fn process_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU used over a measured window, as seconds and as cores busy on average.
#[derive(Debug, Default, Serialize)]
pub struct CpuUse {
    pub seconds: f64,
    pub cores: f64,
}

impl CpuUse {
    pub fn over(before: Duration, after: Duration, wall: Duration) -> CpuUse {
        let seconds = after.saturating_sub(before).as_secs_f64();
        CpuUse {
            seconds,
            cores: if wall.is_zero() {
                0.0
            } else {
                seconds / wall.as_secs_f64()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_and_memory_of_this_process() {
        let pid = std::process::id();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(process_cpu(pid).is_some());
        assert!(process_rss_kib(pid).unwrap_or(0) > 0);
        assert!(own_cpu() > Duration::ZERO);
        assert!(tree_cpu(pid).is_some());
        assert_eq!(tree_cpu(u32::MAX), None);
    }

    #[test]
    fn percentiles_of_an_empty_histogram_are_zero() {
        let h = crate::client::histogram();
        assert_eq!(Percentiles::of(&h).count, 0);
    }
}
