//! Ctrl-C and SIGTERM for lab programs: instead of dying with namespaces
//! and daemons left behind, the program notices, stops at the next step,
//! and its labs clean up as they are dropped.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn note_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Catch SIGINT and SIGTERM from now on.
pub fn catch_interrupts() -> Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(note_interrupt),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe { sigaction(signal, &action) }.context("installing a signal handler")?;
    }
    Ok(())
}

/// Fail if an interrupt arrived: call between steps.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; cleaning up");
    }
    Ok(())
}
