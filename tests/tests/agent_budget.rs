//! The guest work of a container, held to a budget: a create+start+wait+delete of `true`
//! and an exec of `true` in a running container, counted (system calls and processes made,
//! page faults reported beside them) by `hull_e2e::agent_work` on the agent binary the
//! guest image carries, served on this host.
//!
//! On a host whose KVM emulates guest kernel code every one of these calls costs the guest
//! about a millisecond, and on any host they are kernel work each container pays; so a
//! change that makes them grow fails here, by count rather than by time (times depend on
//! the machine's load, counts do not: repeated runs differ by a handful of calls). When a
//! change cuts the work, lower the budget to the new count in the same commit, so the gain
//! cannot erode unnoticed. docs/benchmarks.md (bench-agent) has the history.

use std::path::PathBuf;

use hull_e2e::agent_work::{
    create_and_start, create_start_wait, exec_wait, measure, strace_available, HostAgent, Work,
};

/// System calls of one create+start+wait+delete of `true`.
const LIFECYCLE_SYSCALLS: u64 = 3_320;
/// Processes it makes: the runtime helper, libcontainer's intermediate process, init.
const LIFECYCLE_PROCESSES: u64 = 3;
/// System calls of one exec+wait of `true`.
const EXEC_SYSCALLS: u64 = 1_035;
/// Processes it makes: the runtime helper, libcontainer's intermediate process, the exec.
const EXEC_PROCESSES: u64 = 3;
/// How far over its budget a count may go before this test fails (the counts move by a
/// few calls between runs: thread wake-ups).
const SLACK_PERCENT: u64 = 10;

/// The agent the guest image carries (resources/build-image.sh builds it): the counts are
/// those of the binary that runs in the guest. `$HULL_GUEST_AGENT` names another.
fn guest_agent() -> PathBuf {
    if let Some(p) = std::env::var_os("HULL_GUEST_AGENT") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    let target = exe
        .ancestors()
        .find(|d| d.file_name().is_some_and(|n| n == "target"))
        .expect("the test binary is under a cargo target directory")
        .to_path_buf();
    target.join("x86_64-unknown-linux-gnu/release/hull-agent")
}

fn skip() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (the agent creates containers)");
        return true;
    }
    if !strace_available() {
        eprintln!("skipped: strace is not installed (scripts/deps.sh installs it)");
        return true;
    }
    false
}

fn check(what: &str, work: &Work, syscalls: u64, processes: u64) {
    eprintln!(
        "{what}: {} system calls (budget {syscalls}), {} processes and {} threads made, \
         {} minor and {} major page faults",
        work.syscalls, work.processes, work.threads, work.minor_faults, work.major_faults
    );
    let limit = syscalls * (100 + SLACK_PERCENT) / 100;
    assert!(
        work.syscalls <= limit,
        "{what} made {} system calls, more than {SLACK_PERCENT}% over its budget of \
         {syscalls}: find what added them (bench-agent, strace -f) and take them out, or \
         say in the commit why the guest must pay for them and raise the budget",
        work.syscalls
    );
    assert!(
        work.processes <= processes,
        "{what} made {} processes, over its budget of {processes}",
        work.processes
    );
}

#[test]
fn a_container_lifecycle_and_an_exec_stay_within_their_guest_work_budgets() {
    if skip() {
        return;
    }
    let bin = guest_agent();
    assert!(
        bin.is_file(),
        "the guest's agent {} is missing: run resources/build-image.sh",
        bin.display()
    );
    let agent = HostAgent::start(&bin).unwrap();
    let true_spec = agent.spec(&["true"]);
    // A first container warms what every later one shares (the page cache, the agent's
    // lazily made state), so the counted ones are what a sandbox's later containers cost.
    create_start_wait(agent.client(), "warm", &true_spec).unwrap();
    let lifecycle = measure(agent.pid(), |n| {
        create_start_wait(agent.client(), &format!("counted{n}"), &true_spec).map(drop)
    })
    .unwrap();
    check(
        "create+start+wait+delete",
        &lifecycle,
        LIFECYCLE_SYSCALLS,
        LIFECYCLE_PROCESSES,
    );

    create_and_start(agent.client(), "long", &agent.spec(&["sleep", "100000"])).unwrap();
    exec_wait(agent.client(), "long", "warm").unwrap();
    let exec = measure(agent.pid(), |n| {
        exec_wait(agent.client(), "long", &format!("counted{n}")).map(drop)
    })
    .unwrap();
    check("exec+wait", &exec, EXEC_SYSCALLS, EXEC_PROCESSES);
}
