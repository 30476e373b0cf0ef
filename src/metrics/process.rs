//! The standard `process_*` metrics of Prometheus's client libraries, read from `/proc/self` at
//! each scrape (prometheus-client has no process collector), and when this process started:
//! the counters count from there.

use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// The standard `process_*` metrics of Prometheus's client libraries, from `/proc/self`.
#[derive(Debug)]
pub(super) struct Process;

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stat) = ProcStat::read() else {
            return Ok(());
        };
        let gauge = |encoder: &mut DescriptorEncoder, name: &str, help: &str, v: f64| {
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
        };
        let cpu = ConstCounter::new(stat.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        gauge(
            &mut encoder,
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            stat.rss_bytes as f64,
        )?;
        gauge(
            &mut encoder,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            stat.vsize_bytes as f64,
        )?;
        gauge(
            &mut encoder,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            process_start().timestamp_millis() as f64 / 1000.0,
        )?;
        gauge(
            &mut encoder,
            "process_threads",
            "Number of OS threads in the process",
            stat.threads as f64,
        )?;
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            // The listing's own descriptor is one of them.
            let open = fds.count().saturating_sub(1);
            gauge(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors",
                open as f64,
            )?;
        }
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `lim` is a valid rlimit to fill.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
            gauge(
                &mut encoder,
                "process_max_fds",
                "Maximum number of open file descriptors",
                lim.rlim_cur as f64,
            )?;
        }
        Ok(())
    }
}

/// The fields of `/proc/self/stat` the process metrics need.
struct ProcStat {
    cpu_seconds: f64,
    threads: u64,
    /// Clock ticks after boot.
    start_ticks: u64,
    vsize_bytes: u64,
    rss_bytes: u64,
}

impl ProcStat {
    fn read() -> Option<ProcStat> {
        ProcStat::parse(&std::fs::read_to_string("/proc/self/stat").ok()?)
    }

    fn parse(stat: &str) -> Option<ProcStat> {
        // The command name, in parentheses, may hold spaces and parentheses itself.
        let (_, rest) = stat.rsplit_once(')')?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // `f[0]` is field 3 (state) of proc(5).
        let field = |n: usize| -> Option<u64> { f.get(n - 3)?.parse().ok() };
        let ticks = clock_ticks();
        Some(ProcStat {
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
            threads: field(20)?,
            start_ticks: field(22)?,
            vsize_bytes: field(23)?,
            rss_bytes: field(24)? * page_size(),
        })
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// When this process started (boot time + its start in clock ticks), to the 10 ms; now, the
/// first time it is asked, where /proc cannot tell.
pub(super) fn process_start() -> DateTime<Utc> {
    static START: OnceLock<DateTime<Utc>> = OnceLock::new();
    *START.get_or_init(|| {
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<i64>().ok())
        });
        let started = ProcStat::read().map(|s| s.start_ticks);
        match (boot, started) {
            (Some(boot), Some(ticks)) => {
                let ms = boot * 1000 + (ticks as f64 / clock_ticks() * 1000.0) as i64;
                DateTime::from_timestamp_millis(ms).unwrap_or_else(Utc::now)
            }
            _ => Utc::now(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_survives_a_command_name_with_spaces_and_parentheses() {
        let line = "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 \
                    9000 104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        let s = ProcStat::parse(line).expect("parsed");
        assert_eq!(s.threads, 7);
        assert_eq!(s.start_ticks, 9000);
        assert_eq!(s.vsize_bytes, 104_857_600);
        assert_eq!(s.rss_bytes, 2560 * page_size());
        assert!((s.cpu_seconds - 300.0 / clock_ticks()).abs() < 1e-9);
    }

    #[test]
    fn this_process_has_a_start_and_memory() {
        assert!(process_start() <= Utc::now());
        assert!(ProcStat::read().expect("/proc/self/stat").rss_bytes > 0);
    }
}
