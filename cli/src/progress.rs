//! What a long step is doing, as a spinner with the elapsed time on stderr (indicatif, which
//! draws nothing when stderr is not a terminal: logs, pipes, a detached supervisor).

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A step in progress; dropping it clears the line.
pub struct Step(ProgressBar);

pub fn step(message: impl Into<String>) -> Step {
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        bar.set_style(style);
    }
    bar.set_message(message.into());
    bar.enable_steady_tick(Duration::from_millis(120));
    Step(bar)
}

impl Step {
    pub fn set(&self, message: impl Into<String>) {
        self.0.set_message(message.into());
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
