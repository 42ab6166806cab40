//! Pausing the vCPUs: a gate every vCPU thread passes between two `KVM_RUN`s.
//!
//! [`PauseGate::pause`] raises the gate and kicks the vCPUs out of `KVM_RUN` until every one
//! of them is parked at it; [`PauseGate::resume`] lowers it. A parked vCPU holds no lock and
//! is not inside KVM, so its registers, the irqchip and guest memory are stable for whoever
//! paused (a snapshot). Stopping the VM lowers the gate, so a paused VM can always be ended.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How often a pause re-kicks vCPUs that have not parked yet (a kick that lands while a
/// vCPU is between two `KVM_RUN`s is lost; the next one is not).
const KICK_INTERVAL: Duration = Duration::from_millis(2);

#[derive(Debug)]
struct State {
    raised: bool,
    /// vCPUs parked at the gate now.
    parked: usize,
    /// Which vCPUs have ended: they count as parked and are never kicked again.
    ended: Vec<bool>,
}

#[derive(Debug)]
pub struct PauseGate {
    /// `state.raised`, readable without the lock: the check every vCPU makes before each
    /// `KVM_RUN` (a hot path: every port and MMIO exit) is one atomic load while the VM runs.
    raised: AtomicBool,
    state: Mutex<State>,
    changed: Condvar,
}

impl PauseGate {
    pub fn new(vcpus: usize) -> Self {
        PauseGate {
            raised: AtomicBool::new(false),
            state: Mutex::new(State {
                raised: false,
                parked: 0,
                ended: vec![false; vcpus],
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called by a vCPU thread before each `KVM_RUN`: waits while the gate is raised.
    pub fn pass(&self) {
        // A vCPU that misses a pause raised just after this load enters KVM_RUN and is
        // kicked out again by `pause`, which keeps kicking until it parks.
        if !self.raised.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.lock();
        if !state.raised {
            return;
        }
        state.parked += 1;
        self.changed.notify_all();
        while state.raised {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.parked -= 1;
    }

    /// Called by vCPU `index`'s thread when it leaves its run loop for good.
    pub fn ended(&self, index: usize) {
        if let Some(e) = self.lock().ended.get_mut(index) {
            *e = true;
        }
        self.changed.notify_all();
    }

    fn settled(state: &State) -> bool {
        state.parked + state.ended.iter().filter(|e| **e).count() >= state.ended.len()
    }

    /// Raises the gate and returns once every vCPU is parked (or has ended), calling
    /// `kick(index)` to take each vCPU that has not ended out of `KVM_RUN` until they are.
    /// `kick` runs with the gate's lock held, and a vCPU thread takes that lock to report its
    /// end before its thread returns: so a kick never reaches a thread that is gone.
    pub fn pause(&self, kick: impl Fn(usize)) {
        let mut state = self.lock();
        state.raised = true;
        self.raised.store(true, Ordering::Release);
        while !Self::settled(&state) {
            for (index, _) in state.ended.iter().enumerate().filter(|(_, e)| !**e) {
                kick(index);
            }
            state = self
                .changed
                .wait_timeout(state, KICK_INTERVAL)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Lowers the gate: parked vCPUs go back into the guest.
    pub fn resume(&self) {
        let mut state = self.lock();
        state.raised = false;
        self.raised.store(false, Ordering::Release);
        drop(state);
        self.changed.notify_all();
    }

    pub fn is_paused(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    /// Two "vCPUs" that count while passing the gate; a kick is a no-op (they never block
    /// outside the gate).
    #[test]
    fn pause_parks_every_vcpu_and_resume_releases_them() {
        let gate = Arc::new(PauseGate::new(2));
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..2)
            .map(|index| {
                let (gate, stop, count) = (gate.clone(), stop.clone(), count.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        gate.pass();
                        count.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_micros(100));
                    }
                    gate.ended(index);
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(10));
        gate.pause(|_| {});
        assert!(gate.is_paused());
        let at = count.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(count.load(Ordering::SeqCst), at, "a vCPU ran while paused");
        gate.resume();
        std::thread::sleep(Duration::from_millis(20));
        assert!(count.load(Ordering::SeqCst) > at);
        stop.store(true, Ordering::SeqCst);
        for t in threads {
            t.join().unwrap();
        }
        // Ended vCPUs count as parked and are not kicked: pausing a stopped VM returns at
        // once.
        gate.pause(|i| panic!("kicked ended vCPU {i}"));
    }
}
