//! Helpers shared by hull's cross-process benchmarks: process memory accounting and
//! order statistics.

pub mod agent_work;
pub mod containerd;
pub mod cri;
pub mod terminal;

use std::collections::HashMap;

/// Memory of a process split into guest RAM (shared memfd pages) and everything else.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessMemory {
    /// RSS without shared-memory pages (the guest RAM memfd), KiB.
    pub rss_excl_guest_kib: u64,
    /// PSS without shared-memory pages, KiB.
    pub pss_excl_guest_kib: u64,
    /// Guest RAM resident in the process, KiB.
    pub guest_kib: u64,
    /// PSS of everything, KiB.
    pub pss_total_kib: u64,
}

/// Memory of the mappings of one file in a process (a restored guest's RAM).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MappingMemory {
    pub pss_kib: u64,
    /// Anonymous pages: for a private file mapping, the copies of the pages it wrote.
    pub anon_kib: u64,
}

/// Sums /proc/PID/smaps over the mappings whose path ends with `suffix`.
pub fn mapping_memory(pid: u32, suffix: &str) -> std::io::Result<MappingMemory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    Ok(sum_mappings(&text, suffix))
}

fn sum_mappings(smaps: &str, suffix: &str) -> MappingMemory {
    let mut out = MappingMemory::default();
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping header: "start-end perms offset dev inode [path]".
            inside = line
                .split_whitespace()
                .nth(5)
                .is_some_and(|p| p.ends_with(suffix));
            continue;
        }
        if !inside {
            continue;
        }
        let value = || {
            line.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match first {
            "Pss:" => out.pss_kib += value(),
            "Anonymous:" => out.anon_kib += value(),
            _ => {}
        }
    }
    out
}

/// Parses `Key:   123 kB` lines into a map of KiB values.
pub fn parse_kib_fields(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let n = v.split_whitespace().next()?.parse().ok()?;
            Some((k.trim().to_string(), n))
        })
        .collect()
}

/// Reads /proc/PID/status and /proc/PID/smaps_rollup.
pub fn process_memory(pid: u32) -> std::io::Result<ProcessMemory> {
    let status = parse_kib_fields(&std::fs::read_to_string(format!("/proc/{pid}/status"))?);
    let rollup = parse_kib_fields(&std::fs::read_to_string(format!(
        "/proc/{pid}/smaps_rollup"
    ))?);
    let get = |m: &HashMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    Ok(ProcessMemory {
        rss_excl_guest_kib: get(&status, "RssAnon") + get(&status, "RssFile"),
        pss_excl_guest_kib: get(&rollup, "Pss_Anon") + get(&rollup, "Pss_File"),
        guest_kib: get(&status, "RssShmem"),
        pss_total_kib: get(&rollup, "Pss"),
    })
}

/// Checks that the built artifacts a benchmark runs exist, naming the fix if not.
pub fn require_artifacts(paths: &[(&str, &std::path::Path)]) -> Result<(), String> {
    for (what, p) in paths {
        if !p.exists() {
            return Err(format!(
                "{what} {} missing: run scripts/build.sh",
                p.display()
            ));
        }
    }
    Ok(())
}

/// Median, minimum and maximum of `v` (None when empty).
pub fn summary(v: &[f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Some((median, s[0], s[n - 1]))
}

/// Whether process `pid` runs (exists and is not a zombie waiting to be reaped).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'))
    })
}

/// Processes whose command line holds both `name` and `mark` (a test's directory).
pub fn pids_of(name: &str, mark: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(name) && cmd.contains(mark) {
            pids.push(pid);
        }
    }
    pids
}

/// Processes whose parent is one of `parents`, recursively (a runc task's processes).
pub fn descendants(parents: &[u32]) -> Vec<u32> {
    let mut out = Vec::new();
    let mut frontier = parents.to_vec();
    while let Some(p) = frontier.pop() {
        let children =
            std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            out.push(c);
            frontier.push(c);
        }
    }
    out
}

/// The summed PSS of `pids`, in KiB.
pub fn pss(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|&p| process_memory(p).ok())
        .map(|m| m.pss_total_kib)
        .sum()
}

/// User plus system CPU ticks of `pids` (all their threads).
pub fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|stat| {
            let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
            // After the command: state is field 3; utime and stime are fields 14 and 15.
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .sum()
}

/// `kib` per one of `n`, in MiB.
pub fn mib(kib: u64, n: usize) -> String {
    format!("{:.1} MiB", kib as f64 / n.max(1) as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_sums_only_the_named_file() {
        let smaps = "\
7f00-7f10 rw-p 00000000 08:01 42 /var/cache/hull/templates/ab/memory
Size:                 64 kB
Pss:                  20 kB
Private_Clean:        12 kB
Private_Dirty:         8 kB
Anonymous:             8 kB
7f10-7f20 r-xp 00000000 08:01 43 /usr/bin/hull-vmm
Pss:                 100 kB
Anonymous:           100 kB
7f20-7f30 rw-p 00000000 08:01 42 /var/cache/hull/templates/ab/memory
Pss:                   6 kB
Anonymous:             4 kB
";
        let m = sum_mappings(smaps, "/memory");
        assert_eq!(
            m,
            MappingMemory {
                pss_kib: 26,
                anon_kib: 12
            }
        );
    }

    #[test]
    fn median_of_odd_and_even_samples() {
        assert_eq!(summary(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(summary(&[4.0, 1.0, 2.0, 3.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(summary(&[]), None);
    }

    #[test]
    fn parses_proc_kib_fields() {
        let m = parse_kib_fields("Name:\thull-vmm\nRssAnon:\t    1234 kB\nRssShmem:\t 5 kB\n");
        assert_eq!(m.get("RssAnon"), Some(&1234));
        assert_eq!(m.get("RssShmem"), Some(&5));
        assert!(!m.contains_key("Name"));
    }

    #[test]
    fn reads_this_process_memory() {
        let m = process_memory(std::process::id()).unwrap();
        assert!(m.rss_excl_guest_kib > 0);
        assert!(m.pss_excl_guest_kib > 0);
    }
}
