//! Log lines a guest can trigger, rate limited per call site.
//!
//! A hostile guest kernel can hit any diagnostic path in a loop (an unknown boot stage, a
//! register written out of order, a descriptor that cannot be returned) and so make the VMM
//! write without end into a log that usually lives on tmpfs: host RAM, charged to no one.
//! Every such line goes through [`guest_warn!`](crate::guest_warn), which gives each call
//! site its own token bucket: a burst of [`BURST`] lines, then one line per [`REFILL`].
//! Lines beyond that are counted, and the next line that passes says how many were
//! suppressed. A guest can therefore add at most one line per call site per `REFILL`, about
//! 40 sites in all, whatever it does.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines a call site may log back to back.
pub const BURST: u32 = 10;
/// After a burst, one more line per this long.
pub const REFILL: Duration = Duration::from_secs(10);

/// One call site's token bucket. `const`-constructible, so each site has a `static` one.
#[derive(Debug)]
pub struct LogLimit(Mutex<Bucket>);

#[derive(Debug)]
struct Bucket {
    tokens: u32,
    last: Option<Instant>,
    suppressed: u64,
}

/// What a call site may do now.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Log the line; `suppressed` lines were dropped since the last one that passed.
    Log { suppressed: u64 },
    /// Drop it (it is counted).
    Drop,
}

impl LogLimit {
    pub const fn new() -> Self {
        LogLimit(Mutex::new(Bucket {
            tokens: BURST,
            last: None,
            suppressed: 0,
        }))
    }

    /// Takes a token if there is one; `now` is passed in so tests need not sleep.
    pub fn admit_at(&self, now: Instant) -> Admit {
        let mut b = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let last = *b.last.get_or_insert(now);
        let refills = now.saturating_duration_since(last).as_nanos() / REFILL.as_nanos();
        if refills > 0 {
            let add = u32::try_from(refills).unwrap_or(u32::MAX);
            b.tokens = b.tokens.saturating_add(add).min(BURST);
            b.last = Some(now);
        }
        if b.tokens == 0 {
            b.suppressed = b.suppressed.saturating_add(1);
            return Admit::Drop;
        }
        b.tokens -= 1;
        let suppressed = std::mem::take(&mut b.suppressed);
        Admit::Log { suppressed }
    }

    pub fn admit(&self) -> Admit {
        self.admit_at(Instant::now())
    }
}

impl Default for LogLimit {
    fn default() -> Self {
        Self::new()
    }
}

/// `log::warn!` for a line the guest can cause, rate limited per call site (see the module).
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::guest_log::LogLimit = $crate::guest_log::LogLimit::new();
        if let $crate::guest_log::Admit::Log { suppressed } = LIMIT.admit() {
            if suppressed > 0 {
                log::warn!("({suppressed} similar lines suppressed)");
            }
            log::warn!($($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_passes_a_burst_then_one_line_per_refill_with_a_count() {
        let l = LogLimit::new();
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert_eq!(l.admit_at(t0), Admit::Log { suppressed: 0 });
        }
        for _ in 0..1000 {
            assert_eq!(l.admit_at(t0), Admit::Drop);
        }
        assert_eq!(l.admit_at(t0 + REFILL / 2), Admit::Drop);
        assert_eq!(l.admit_at(t0 + REFILL), Admit::Log { suppressed: 1001 });
        assert_eq!(l.admit_at(t0 + REFILL), Admit::Drop);
        // A long quiet spell refills the burst, no more.
        let later = t0 + REFILL * 1000;
        for _ in 0..BURST {
            assert!(matches!(l.admit_at(later), Admit::Log { .. }));
        }
        assert_eq!(l.admit_at(later), Admit::Drop);
    }
}
