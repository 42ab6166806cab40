//! A container's cgroup, seen from the agent: freeze, resources, stats, processes and OOM
//! kills. The guest kernel is cgroup v2 only; an agent served on a host with cgroup v1
//! controllers (hybrid or legacy) goes through libcgroups' v1 manager instead, so both are
//! handled, with v2's semantics (usage in µs, OOM kills counted) as the reference.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hull_protocol::rpc::agent::{
    CpuStats, IoStats, MemoryStats, PidsStats, StatsContainerResponse,
};
use libcgroups::common::{
    create_cgroup_manager, get_cgroup_setup, AnyCgroupManager, CgroupConfig, CgroupManager,
    CgroupSetup, ControllerOpt, FreezerState,
};
use libcgroups::stats::Stats;
use oci_spec::runtime::LinuxResources;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// How long killed processes get to leave their cgroup before a delete gives up (exits
/// are guest kernel work, emulated and slow on some test hosts).
const KILL_WAIT: Duration = Duration::from_secs(30);

/// One container's cgroup, by its path below the cgroup root (`/hull/c1`).
#[derive(Debug, Clone)]
pub struct Cgroup {
    path: PathBuf,
    unified: bool,
}

impl Cgroup {
    pub fn new(path: &Path) -> Self {
        let unified = matches!(get_cgroup_setup(), Ok(CgroupSetup::Unified));
        Cgroup {
            path: path.to_owned(),
            unified,
        }
    }

    fn manager(&self) -> Result<AnyCgroupManager, String> {
        create_cgroup_manager(CgroupConfig {
            cgroup_path: self.path.clone(),
            systemd_cgroup: false,
            container_name: String::new(),
        })
        .map_err(|e| format!("cgroup {}: {e}", self.path.display()))
    }

    pub fn freeze(&self, frozen: bool) -> Result<(), String> {
        let state = if frozen {
            FreezerState::Frozen
        } else {
            FreezerState::Thawed
        };
        self.manager()?.freeze(state).map_err(|e| {
            format!(
                "{} cgroup {}: {e}",
                if frozen { "freezing" } else { "thawing" },
                self.path.display()
            )
        })
    }

    pub fn update(&self, resources: &LinuxResources) -> Result<(), String> {
        let opt = ControllerOpt {
            resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        };
        self.manager()?
            .apply(&opt)
            .map_err(|e| format!("applying resources to cgroup {}: {e}", self.path.display()))
    }

    /// The cgroup's directory on a unified (v2) hierarchy.
    fn v2_dir(&self) -> PathBuf {
        let rel = self.path.strip_prefix("/").unwrap_or(&self.path);
        Path::new(CGROUP_ROOT).join(rel)
    }

    /// Kills every process in the cgroup, waits until they have left it (at most
    /// [`KILL_WAIT`]) and removes it; a cgroup that is gone already is fine.
    pub fn destroy(&self) -> Result<(), String> {
        if self.unified {
            return destroy_v2(&self.v2_dir());
        }
        let manager = self.manager()?;
        kill_all(
            &self.path.display().to_string(),
            // A missing cgroup lists nothing.
            || Ok(manager.get_all_pids().unwrap_or_default().len()),
            || {
                for pid in manager.get_all_pids().unwrap_or_default() {
                    // SAFETY: kill(2) has no memory effects; the PIDs are this cgroup's.
                    unsafe { libc::kill(pid.as_raw(), libc::SIGKILL) };
                }
                // A frozen task dies only once thawed under the v1 freezer (v2 lets
                // SIGKILL through); a paused container is removable all the same.
                let _ = manager.freeze(FreezerState::Thawed);
                Ok(())
            },
        )?;
        manager
            .remove()
            .map_err(|e| format!("removing cgroup {}: {e}", self.path.display()))
    }

    pub fn pids(&self) -> Result<Vec<u32>, String> {
        let pids = self
            .manager()?
            .get_all_pids()
            .map_err(|e| format!("listing cgroup {}: {e}", self.path.display()))?;
        Ok(pids.into_iter().map(|p| p.as_raw() as u32).collect())
    }

    pub fn stats(&self) -> Result<StatsContainerResponse, String> {
        if self.unified {
            // libcgroups' v2 stats also read the pressure (PSI) files, which a guest kernel
            // without CONFIG_PSI (hull's: PSI costs every task switch) does not have.
            let dir = self.v2_dir();
            if !dir.is_dir() {
                return Err(format!("cgroup {} does not exist", dir.display()));
            }
            return Ok(read_v2_stats(&dir));
        }
        let stats = self
            .manager()?
            .stats()
            .map_err(|e| format!("reading cgroup {} stats: {e}", self.path.display()))?;
        Ok(self.convert_v1(&stats))
    }

    /// libcgroups' v1 statistics in the protocol's terms (v2 is read by [`read_v2_stats`]).
    fn convert_v1(&self, s: &Stats) -> StatsContainerResponse {
        // v1 reports CPU time in ns; the protocol, like v2, in µs.
        let usec = |v: u64| v / 1000;
        let mut out = StatsContainerResponse::new();
        let mut cpu = CpuStats::new();
        cpu.usage_usec = usec(s.cpu.usage.usage_total);
        cpu.user_usec = usec(s.cpu.usage.usage_user);
        cpu.system_usec = usec(s.cpu.usage.usage_kernel);
        cpu.nr_periods = s.cpu.throttling.periods;
        cpu.nr_throttled = s.cpu.throttling.throttled_periods;
        cpu.throttled_usec = usec(s.cpu.throttling.throttled_time);
        out.cpu = Some(cpu).into();
        let mut mem = MemoryStats::new();
        mem.usage_bytes = s.memory.memory.usage;
        mem.limit_bytes = no_limit_as_zero(s.memory.memory.limit);
        mem.max_usage_bytes = s.memory.memory.max_usage;
        let stat = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| s.memory.stats.get(*k).copied())
                .unwrap_or(0)
        };
        mem.anon_bytes = stat(&["anon", "total_rss", "rss"]);
        mem.file_bytes = stat(&["file", "total_cache", "cache"]);
        mem.oom_kills = self.oom_kills();
        out.memory = Some(mem).into();
        let mut pids = PidsStats::new();
        pids.current = s.pids.current;
        pids.limit = no_limit_as_zero(s.pids.limit);
        out.pids = Some(pids).into();
        let mut io = IoStats::new();
        let sum = |list: &[libcgroups::stats::BlkioDeviceStat], op: &str| {
            list.iter()
                .filter(|d| {
                    d.op_type
                        .as_deref()
                        .is_some_and(|t| t.eq_ignore_ascii_case(op))
                })
                .map(|d| d.value)
                .sum::<u64>()
        };
        io.read_bytes = sum(&s.blkio.service_bytes, "read");
        io.write_bytes = sum(&s.blkio.service_bytes, "write");
        io.read_ios = sum(&s.blkio.serviced, "read");
        io.write_ios = sum(&s.blkio.serviced, "write");
        out.io = Some(io).into();
        out
    }

    /// The memory controller's directory for this cgroup and the file that counts OOM kills.
    fn memory_files(&self) -> (PathBuf, &'static str) {
        let rel = self.path.strip_prefix("/").unwrap_or(&self.path);
        if self.unified {
            (Path::new(CGROUP_ROOT).join(rel), "memory.events")
        } else {
            let mount = libcgroups::v1::util::get_subsystem_mount_point(
                &libcgroups::v1::ControllerType::Memory,
            )
            .unwrap_or_else(|_| Path::new(CGROUP_ROOT).join("memory"));
            (mount.join(rel), "memory.oom_control")
        }
    }

    /// How many processes the kernel's OOM killer has killed in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let (dir, file) = self.memory_files();
        std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|text| parse_oom_kill(&text))
            .unwrap_or(0)
    }

    /// Calls `on_oom` from a thread of its own each time the OOM killer kills in this
    /// cgroup, until the cgroup is removed. Event-driven: inotify on v2's memory.events,
    /// the v1 memory controller's eventfd notification.
    pub fn watch_oom(&self, on_oom: impl Fn() + Send + 'static) -> Result<(), String> {
        let (dir, file) = self.memory_files();
        let waiter = if self.unified {
            OomWaiter::inotify(&dir.join(file))
        } else {
            OomWaiter::eventfd(&dir)
        }
        .map_err(|e| format!("watching {} for OOM kills: {e}", dir.display()))?;
        let cgroup = self.clone();
        let mut seen = self.oom_kills();
        std::thread::Builder::new()
            .name("oom".into())
            .spawn(move || {
                while waiter.wait() && dir.exists() {
                    // v1 notifies when the cgroup hits OOM, possibly before the kill is
                    // counted: every notification is an OOM (containerd's rule too). v2's
                    // memory.events changes for other counters as well: compare oom_kill.
                    let now = cgroup.oom_kills();
                    if !waiter.inotify || now > seen {
                        seen = now;
                        on_oom();
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// Kills a cgroup's processes and waits (at most [`KILL_WAIT`]) until none is left:
/// `count` says how many there are, `kill` sends SIGKILL to them (once more each round, in
/// case one forked meanwhile).
fn kill_all(
    what: &str,
    count: impl Fn() -> Result<usize, String>,
    mut kill: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let deadline = Instant::now() + KILL_WAIT;
    loop {
        let left = count()?;
        if left == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "cgroup {what}: {left} process(es) still there {} s after SIGKILL",
                KILL_WAIT.as_secs()
            ));
        }
        kill()?;
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`Cgroup::destroy`] on cgroup v2, through the interface files alone: `cgroup.kill`
/// (every process, frozen or not, gets SIGKILL), then `rmdir` once `cgroup.procs` is empty.
/// A handful of system calls, where libcgroups' manager would first probe the mounts
/// (the guest kernel's work is what a container's lifecycle waits for).
fn destroy_v2(dir: &Path) -> Result<(), String> {
    let procs = dir.join("cgroup.procs");
    let kill = dir.join("cgroup.kill");
    let deadline = Instant::now() + KILL_WAIT;
    kill_all(
        &dir.display().to_string(),
        || match std::fs::read_to_string(&procs) {
            Ok(text) => Ok(text.lines().count()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(format!("{}: {e}", procs.display())),
        },
        || std::fs::write(&kill, "1").map_err(|e| format!("{}: {e}", kill.display())),
    )?;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            // Busy for a moment after its last process left (the kernel's css release).
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("removing cgroup {}: {e}", dir.display())),
        }
    }
}

/// v1 reports "no limit" as a huge number (the page-rounded i64::MAX); the protocol says 0.
fn no_limit_as_zero(v: u64) -> u64 {
    if v >= 1 << 62 {
        0
    } else {
        v
    }
}

/// A cgroup v2 interface file of one number, or "max" (no limit, 0); missing files (a
/// controller not enabled, a kernel without the file) read as 0.
fn v2_number(dir: &Path, file: &str) -> u64 {
    std::fs::read_to_string(dir.join(file))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// A flat-keyed v2 file (`key value` per line) as a lookup.
fn v2_keyed(dir: &Path, file: &str) -> impl Fn(&str) -> u64 {
    let text = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
    move |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// Reads a v2 cgroup's statistics straight from its interface files.
pub fn read_v2_stats(dir: &Path) -> StatsContainerResponse {
    let mut out = StatsContainerResponse::new();
    let cpu_stat = v2_keyed(dir, "cpu.stat");
    let mut cpu = CpuStats::new();
    cpu.usage_usec = cpu_stat("usage_usec");
    cpu.user_usec = cpu_stat("user_usec");
    cpu.system_usec = cpu_stat("system_usec");
    cpu.nr_periods = cpu_stat("nr_periods");
    cpu.nr_throttled = cpu_stat("nr_throttled");
    cpu.throttled_usec = cpu_stat("throttled_usec");
    out.cpu = Some(cpu).into();
    let mem_stat = v2_keyed(dir, "memory.stat");
    let mut mem = MemoryStats::new();
    mem.usage_bytes = v2_number(dir, "memory.current");
    mem.limit_bytes = v2_number(dir, "memory.max");
    mem.max_usage_bytes = v2_number(dir, "memory.peak");
    mem.anon_bytes = mem_stat("anon");
    mem.file_bytes = mem_stat("file");
    mem.oom_kills = v2_keyed(dir, "memory.events")("oom_kill");
    out.memory = Some(mem).into();
    let mut pids = PidsStats::new();
    pids.current = v2_number(dir, "pids.current");
    pids.limit = v2_number(dir, "pids.max");
    out.pids = Some(pids).into();
    let mut io = IoStats::new();
    for line in std::fs::read_to_string(dir.join("io.stat"))
        .unwrap_or_default()
        .lines()
    {
        for field in line.split_whitespace().skip(1) {
            let Some((k, v)) = field.split_once('=') else {
                continue;
            };
            let v: u64 = v.parse().unwrap_or(0);
            match k {
                "rbytes" => io.read_bytes += v,
                "wbytes" => io.write_bytes += v,
                "rios" => io.read_ios += v,
                "wios" => io.write_ios += v,
                _ => {}
            }
        }
    }
    out.io = Some(io).into();
    out
}

/// The `oom_kill N` line of memory.events (v2) or memory.oom_control (v1).
pub fn parse_oom_kill(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
}

/// A blocking wait for "something happened to the memory cgroup".
struct OomWaiter {
    fd: File,
    inotify: bool,
}

impl OomWaiter {
    fn inotify(events: &Path) -> std::io::Result<Self> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: inotify_init1 returned a fresh fd that only this File owns.
        let file = unsafe { File::from_raw_fd(fd) };
        let path = std::ffi::CString::new(events.as_os_str().as_encoded_bytes())
            .map_err(std::io::Error::other)?;
        // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
        if unsafe { libc::inotify_add_watch(fd, path.as_ptr(), libc::IN_MODIFY) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OomWaiter {
            fd: file,
            inotify: true,
        })
    }

    fn eventfd(memory_dir: &Path) -> std::io::Result<Self> {
        // SAFETY: plain syscall; the result is checked before use.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: eventfd returned a fresh fd that only this File owns.
        let file = unsafe { File::from_raw_fd(efd) };
        let control = File::open(memory_dir.join("memory.oom_control"))?;
        std::fs::write(
            memory_dir.join("cgroup.event_control"),
            format!("{} {}", file.as_raw_fd(), control.as_raw_fd()),
        )?;
        Ok(OomWaiter {
            fd: file,
            inotify: false,
        })
    }

    /// False once the watch is gone (the cgroup was removed) or the fd fails.
    fn wait(&self) -> bool {
        let mut buf = [0u8; 4096];
        match (&self.fd).read(&mut buf) {
            Ok(n) if self.inotify => {
                // struct inotify_event: wd, mask, cookie, len, name.
                let mut at = 0;
                while at + 16 <= n {
                    let mask =
                        u32::from_ne_bytes([buf[at + 4], buf[at + 5], buf[at + 6], buf[at + 7]]);
                    if mask & libc::IN_IGNORED != 0 {
                        return false;
                    }
                    let len = u32::from_ne_bytes([
                        buf[at + 12],
                        buf[at + 13],
                        buf[at + 14],
                        buf[at + 15],
                    ]) as usize;
                    at += 16 + len;
                }
                true
            }
            Ok(n) => n == 8,
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where a cgroup v2 hierarchy is mounted on this host, if one is.
    fn v2_mount() -> Option<PathBuf> {
        let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
        mounts.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
    }

    #[test]
    fn destroying_a_v2_cgroup_kills_its_processes_and_removes_it() {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let Some(mount) = v2_mount().filter(|_| root) else {
            eprintln!("skipped: needs root and a cgroup v2 hierarchy");
            return;
        };
        let dir = mount.join(format!("hull-destroy-test-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let mut children: Vec<_> = (0..2)
            .map(|_| {
                std::process::Command::new("sleep")
                    .arg("1000")
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in &children {
            std::fs::write(dir.join("cgroup.procs"), c.id().to_string()).unwrap();
        }
        destroy_v2(&dir).unwrap();
        assert!(!dir.exists());
        for c in &mut children {
            let status = c.wait().unwrap();
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&status),
                Some(libc::SIGKILL)
            );
        }
        // Gone already is done.
        destroy_v2(&dir).unwrap();
    }

    #[test]
    fn inotify_waiter_wakes_on_writes_and_ends_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("memory.events");
        std::fs::write(&events, "oom_kill 0\n").unwrap();
        let waiter = OomWaiter::inotify(&events).unwrap();
        let path = events.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            std::fs::write(&path, "oom_kill 1\n").unwrap();
        });
        assert!(waiter.wait(), "a write to memory.events wakes the waiter");
        writer.join().unwrap();
        std::fs::remove_file(&events).unwrap();
        // Removal (as when the cgroup goes away) ends the watch; earlier events may come first.
        while waiter.wait() {}
    }

    #[test]
    fn v2_stats_from_interface_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let files = [
            ("cpu.stat", "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 4\nnr_throttled 1\nthrottled_usec 20\n"),
            ("memory.current", "4096\n"),
            ("memory.max", "max\n"),
            ("memory.stat", "anon 1024\nfile 2048\nanon_thp 0\nfile_mapped 7\n"),
            ("memory.events", "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n"),
            ("pids.current", "3\n"),
            ("pids.max", "7\n"),
            ("io.stat", "254:0 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\n254:16 rbytes=1 wbytes=2 rios=3 wios=4\n"),
        ];
        for (name, text) in files {
            std::fs::write(d.join(name), text).unwrap();
        }
        let s = read_v2_stats(d);
        assert_eq!(
            (s.cpu.usage_usec, s.cpu.user_usec, s.cpu.system_usec),
            (1500, 1000, 500)
        );
        assert_eq!(
            (s.cpu.nr_periods, s.cpu.nr_throttled, s.cpu.throttled_usec),
            (4, 1, 20)
        );
        // "max" is no limit: 0. memory.peak is missing (older kernels): 0.
        assert_eq!(
            (
                s.memory.usage_bytes,
                s.memory.limit_bytes,
                s.memory.max_usage_bytes
            ),
            (4096, 0, 0)
        );
        assert_eq!(
            (s.memory.anon_bytes, s.memory.file_bytes, s.memory.oom_kills),
            (1024, 2048, 1)
        );
        assert_eq!((s.pids.current, s.pids.limit), (3, 7));
        assert_eq!(
            (
                s.io.read_bytes,
                s.io.write_bytes,
                s.io.read_ios,
                s.io.write_ios
            ),
            (101, 202, 4, 6)
        );
        assert_eq!(no_limit_as_zero(9223372036854771712), 0);
    }

    #[test]
    fn oom_kill_lines() {
        assert_eq!(
            parse_oom_kill("low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\noom_group_kill 0\n"),
            Some(2)
        );
        assert_eq!(
            parse_oom_kill("oom_kill_disable 0\nunder_oom 0\noom_kill 5\n"),
            Some(5)
        );
        assert_eq!(parse_oom_kill("oom_kill_disable 0\n"), None);
    }
}
