//! Pausing the vCPUs: a gate every vCPU thread passes between two `KVM_RUN`s.
//!
//! [`PauseGate::pause`] raises the gate and kicks the vCPUs out of `KVM_RUN` until every one
//! of them is parked at it; [`PauseGate::resume`] lowers it. A parked vCPU holds no lock and
//! is not inside KVM, so its registers, the irqchip and guest memory are stable for whoever
//! paused (a snapshot). Stopping the VM lowers the gate, so a paused VM can always be ended.
//!
//! [`PauseGate::run_parked`] hands a parked vCPU a job that it runs on its own thread with
//! its vCPU (a snapshot reads each vCPU's state this way: KVM's vCPU ioctls belong on the
//! vCPU's thread).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How often a pause re-kicks vCPUs that have not parked yet (a kick that lands while a
/// vCPU is between two `KVM_RUN`s is lost; the next one is not).
const KICK_INTERVAL: Duration = Duration::from_millis(2);

/// Work for a parked vCPU thread, given what that thread owns (its `VcpuFd`).
pub type ParkedJob<T> = Box<dyn FnOnce(&T) + Send>;

struct State<T> {
    raised: bool,
    /// vCPUs parked at the gate now.
    parked: usize,
    /// Which vCPUs have ended: they count as parked and are never kicked again.
    ended: Vec<bool>,
    /// A job waiting for each vCPU.
    jobs: Vec<Option<ParkedJob<T>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    #[error("the VM is not paused")]
    NotPaused,
    #[error("vCPU {0} has stopped")]
    Ended(usize),
    #[error("vCPU {0} already has a job waiting")]
    Busy(usize),
}

pub struct PauseGate<T = kvm_ioctls::VcpuFd> {
    /// `state.raised`, readable without the lock: the check every vCPU makes before each
    /// `KVM_RUN` (a hot path: every port and MMIO exit) is one atomic load while the VM runs.
    raised: AtomicBool,
    state: Mutex<State<T>>,
    changed: Condvar,
}

impl<T> std::fmt::Debug for PauseGate<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PauseGate")
            .field("raised", &self.raised)
            .finish_non_exhaustive()
    }
}

impl<T> PauseGate<T> {
    pub fn new(vcpus: usize) -> Self {
        PauseGate {
            raised: AtomicBool::new(false),
            state: Mutex::new(State {
                raised: false,
                parked: 0,
                ended: vec![false; vcpus],
                jobs: (0..vcpus).map(|_| None).collect(),
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        hull_protocol::lock(&self.state)
    }

    /// Called by vCPU `index`'s thread before each `KVM_RUN`: waits while the gate is
    /// raised, running any job posted for it with `own` (what the thread owns).
    pub fn pass(&self, index: usize, own: &T) {
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
            if let Some(job) = state.jobs.get_mut(index).and_then(Option::take) {
                drop(state);
                job(own);
                state = self.lock();
                continue;
            }
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.parked -= 1;
    }

    /// Called by vCPU `index`'s thread when it leaves its run loop for good. A job still
    /// waiting for it is dropped (whoever posted it sees its channel close).
    pub fn ended(&self, index: usize) {
        let mut state = self.lock();
        if let Some(e) = state.ended.get_mut(index) {
            *e = true;
        }
        let job = state.jobs.get_mut(index).and_then(Option::take);
        drop(state);
        drop(job);
        self.changed.notify_all();
    }

    /// Posts `job` for vCPU `index`, which runs it at the gate on its own thread. The VM
    /// must be paused; the job reports back by whatever channel it captured.
    pub fn run_parked(&self, index: usize, job: ParkedJob<T>) -> Result<(), PauseError> {
        let mut state = self.lock();
        if !state.raised {
            return Err(PauseError::NotPaused);
        }
        match (state.ended.get(index), state.jobs.get(index)) {
            (None, _) | (Some(true), _) => return Err(PauseError::Ended(index)),
            (_, Some(Some(_))) => return Err(PauseError::Busy(index)),
            _ => {}
        }
        state.jobs[index] = Some(job);
        drop(state);
        self.changed.notify_all();
        Ok(())
    }

    fn settled(state: &State<T>) -> bool {
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
        let gate = Arc::new(PauseGate::<usize>::new(2));
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..2)
            .map(|index| {
                let (gate, stop, count) = (gate.clone(), stop.clone(), count.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        gate.pass(index, &index);
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
        // A parked vCPU runs a posted job on its own thread, with what it owns.
        for index in 0..2 {
            let (tx, rx) = std::sync::mpsc::channel();
            gate.run_parked(
                index,
                Box::new(move |own: &usize| {
                    let name = std::thread::current().id();
                    tx.send((*own, name)).unwrap();
                }),
            )
            .unwrap();
            let (own, thread) = rx.recv().unwrap();
            assert_eq!(own, index);
            assert_ne!(thread, std::thread::current().id());
        }
        assert_eq!(count.load(Ordering::SeqCst), at, "a job let a vCPU run");
        gate.resume();
        assert!(matches!(
            gate.run_parked(0, Box::new(|_| {})),
            Err(PauseError::NotPaused)
        ));
        std::thread::sleep(Duration::from_millis(20));
        assert!(count.load(Ordering::SeqCst) > at);
        stop.store(true, Ordering::SeqCst);
        for t in threads {
            t.join().unwrap();
        }
        // Ended vCPUs count as parked and are not kicked: pausing a stopped VM returns at
        // once.
        gate.pause(|i| panic!("kicked ended vCPU {i}"));
        assert!(matches!(
            gate.run_parked(1, Box::new(|_| {})),
            Err(PauseError::Ended(1))
        ));
    }
}
