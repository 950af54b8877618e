//! Ctrl-C, SIGTERM and SIGHUP during a trace: instead of dying with workloads running and image
//! directories left in tmpfs, brume-bench notes the signal and the trace stops at its next
//! check, so every guard (workloads, the work directory) is dropped on the way out.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Catches SIGINT, SIGTERM and SIGHUP from now on.
pub fn install() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// An error once a signal came.
pub fn check() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        anyhow::bail!("interrupted: stopped, workloads killed and images removed");
    }
    Ok(())
}

/// Sleeps `d`, in slices of at most 20 ms, returning early with an error on a signal.
pub fn sleep(d: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + d;
    loop {
        check()?;
        let now = Instant::now();
        if now >= until {
            return Ok(());
        }
        std::thread::sleep((until - now).min(Duration::from_millis(20)));
    }
}
