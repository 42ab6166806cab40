//! The agent served on this host over unix sockets, creating real containers from a busybox
//! rootfs. Needs root; skips with a message otherwise.

mod support;

use support::*;

#[test]
fn echo_returns_exit_codes_and_separates_stdout_from_stderr() {
    if !can_run("echo_returns_exit_codes") {
        return;
    }
    let agent = Agent::start();
    let (status, out, err) = agent.run("echo0", &["echo", "hello"], |_| {});
    assert_eq!((status, out.as_str(), err.as_str()), (0, "hello\n", ""));
    let (status, out, err) = agent.run("echo3", &["sh", "-c", "echo out; echo err >&2; exit 3"], |_| {});
    assert_eq!((status, out.as_str(), err.as_str()), (3, "out\n", "err\n"));
    agent.stop();
}
