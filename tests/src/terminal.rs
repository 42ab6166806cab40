//! Driving an interactive terminal session through tmux: what the terminal tests of both
//! front doors (`ctr run -t`, `hull run -it`) type, and the screen they read back.

use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `tmux ARGS`; returns its standard output.
pub fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux").args(args).output().expect("run tmux");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether tmux is installed (the terminal tests skip without it).
pub fn available() -> bool {
    Command::new("tmux").arg("-V").output().is_ok()
}

/// Waits until tmux session `session`'s screen shows `want`; returns the screen.
pub fn wait_screen(session: &str, want: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let screen = tmux(&["capture-pane", "-p", "-t", session]);
        if screen.contains(want) {
            return screen;
        }
        assert!(
            Instant::now() < deadline,
            "{want:?} did not appear within {within:?}; screen:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
