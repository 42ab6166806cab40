//! The signals `hull run` passes on to its container (and SIGWINCH, a terminal's new size).
//! They are blocked in every thread (before any is spawned, so all inherit the mask) and
//! taken synchronously by one.

pub const FORWARDED: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGWINCH];

/// Blocks the forwarded signals in the calling thread; call it first in `main`.
pub fn block() {
    let set = forwarded();
    // SAFETY: `set` is a valid, initialized signal set; the old mask is not wanted.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

pub fn forwarded() -> libc::sigset_t {
    // SAFETY: an all-zero sigset_t is a valid value; sigemptyset initializes it below.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t to initialize.
    unsafe { libc::sigemptyset(&mut set) };
    for s in FORWARDED {
        // SAFETY: `set` is initialized and `s` a valid signal number.
        unsafe { libc::sigaddset(&mut set, s) };
    }
    set
}

/// The next of `set`'s signals; None if waiting fails.
pub fn wait(set: &libc::sigset_t) -> Option<libc::c_int> {
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is initialized and `sig` is a valid place for the result.
    let rc = unsafe { libc::sigwait(set, &mut sig) };
    (rc == 0).then_some(sig)
}
