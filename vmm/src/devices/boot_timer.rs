//! The boot-timer port (see `hull_protocol::boot`): PID 1 reports its stages, the VMM logs
//! how long after its own start each arrived and remembers them for the caller.
//!
//! The guest may write this port as often as it likes; each stage is recorded and logged
//! the first time only, so the record holds at most one entry per stage (three) and a
//! guest looping on the port costs the host nothing but the exits.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hull_protocol::boot::Stage;

use super::bus::BusDevice;
use crate::exit::ExitEvent;

/// Stages seen so far, with their time since VMM start.
pub type StageLog = Arc<Mutex<Vec<(Stage, Duration)>>>;

pub struct BootTimer {
    start: Instant,
    stages: StageLog,
    exit: ExitEvent,
}

impl BootTimer {
    pub fn new(start: Instant, exit: ExitEvent) -> Self {
        BootTimer {
            start,
            stages: Arc::default(),
            exit,
        }
    }

    pub fn stages(&self) -> StageLog {
        self.stages.clone()
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data.len() != 1 {
            return;
        }
        let elapsed = self.start.elapsed();
        let Some(stage) = Stage::from_code(data[0]) else {
            crate::guest_warn!(
                "boot timer: unknown stage code {:#04x} from the guest",
                data[0]
            );
            return;
        };
        let mut stages = crate::devices::bus::lock(&self.stages);
        if stages.iter().any(|(seen, _)| *seen == stage) {
            return;
        }
        log::info!(
            "boot timer: guest stage {} at {:.1} ms since VMM start",
            stage.name(),
            elapsed.as_secs_f64() * 1e3
        );
        if stage == Stage::PoweroffRequested {
            self.exit.request_poweroff();
        }
        stages.push((stage, elapsed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_looping_on_the_port_records_each_stage_once() {
        let exit = ExitEvent::new().unwrap();
        let mut t = BootTimer::new(Instant::now(), exit);
        for i in 0..10_000u32 {
            t.write(0, &[Stage::AgentReady as u8]);
            t.write(0, &[(i % 256) as u8]);
        }
        let stages = t.stages();
        let stages = stages.lock().unwrap();
        assert!(stages.len() <= 3, "{} stages kept", stages.len());
        assert_eq!(stages[0].0, Stage::AgentReady);
    }

    #[test]
    fn records_known_stages_and_arms_poweroff() {
        let exit = ExitEvent::new().unwrap();
        let mut t = BootTimer::new(Instant::now(), exit.clone());
        t.write(0, &[Stage::Pid1Started as u8]);
        t.write(0, &[0x77]);
        t.write(0, &[Stage::AgentReady as u8, 0]);
        assert!(!exit.poweroff_requested());
        t.write(0, &[Stage::PoweroffRequested as u8]);
        let stages: Vec<_> = t.stages().lock().unwrap().iter().map(|s| s.0).collect();
        assert_eq!(stages, vec![Stage::Pid1Started, Stage::PoweroffRequested]);
        assert!(exit.poweroff_requested());
    }
}
