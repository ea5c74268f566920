//! The virtual clock: `std::time::Instant::now()` and `SystemTime::now()` on the
//! simulation thread read simulated time, not the machine's.
//!
//! Why: the membership code measures time with `std::time::Instant` (and writes
//! `SystemTime` into the Lease), while its timers are tokio's. A paused tokio runtime only
//! virtualises the timers, so without this the failure detector and the readiness deadline
//! would see almost no time pass while the timers jump through a minute. The binary (and
//! each test binary) installs [`install_virtual_clock!`], which defines the C symbol
//! `clock_gettime` so that the Rust standard library's calls land here (the technique
//! madsim uses). [`installed`] checks that it took: in a test harness built with
//! optimisations rustc drops the symbol, so tests run the `troupe-sim` binary instead. On a
//! thread that runs no simulation, and for every other clock id, the
//! real clock answers (a raw system call).
//!
//! The clean replacement is a seam in `troupe-node` (use `tokio::time::Instant` and an
//! injected wall clock): then this module can go.

use std::cell::Cell;
use std::time::Duration;

thread_local! {
    /// Simulated nanoseconds since the simulation started, while one runs on this thread.
    static VIRTUAL_NS: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Where the virtual monotonic clock starts (seconds), an arbitrary fixed origin.
const MONOTONIC_ORIGIN_S: u64 = 1_000_000;
/// Where the virtual wall clock starts: 2026-01-01T00:00:00Z.
const REALTIME_ORIGIN_S: u64 = 1_767_225_600;

/// Turns the virtual clock on for this thread at simulated time zero.
pub fn start() {
    VIRTUAL_NS.with(|c| c.set(Some(0)));
}

/// Turns the virtual clock off for this thread.
pub fn stop() {
    VIRTUAL_NS.with(|c| c.set(None));
}

/// Moves simulated time forward by `d`.
pub fn advance(d: Duration) {
    VIRTUAL_NS.with(|c| {
        if let Some(ns) = c.get() {
            let step = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
            c.set(Some(ns.saturating_add(step)));
        }
    });
}

/// Simulated time since the start, if a simulation runs on this thread.
pub fn elapsed() -> Option<Duration> {
    VIRTUAL_NS
        .try_with(|c| c.get())
        .ok()
        .flatten()
        .map(Duration::from_nanos)
}

/// The virtual wall clock in milliseconds since the Unix epoch (the real one when no
/// simulation runs on this thread).
pub fn wall_ms() -> i64 {
    let ms = match elapsed() {
        Some(d) => REALTIME_ORIGIN_S * 1_000 + u64::try_from(d.as_millis()).unwrap_or(0),
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(0))
            .unwrap_or(0),
    };
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// Whether `std::time::Instant` really reads the virtual clock in this binary (the macro
/// was installed). Call with the clock started.
pub fn installed() -> bool {
    let a = std::time::Instant::now();
    advance(Duration::from_millis(1));
    let b = std::time::Instant::now();
    b.duration_since(a) == Duration::from_millis(1)
}

/// The simulated reading of clock `clk`, if it is virtual on this thread.
fn virtual_reading(clk: libc::clockid_t) -> Option<(u64, u64)> {
    let ns = VIRTUAL_NS.try_with(|c| c.get()).ok().flatten()?;
    let origin = match clk {
        libc::CLOCK_MONOTONIC
        | libc::CLOCK_MONOTONIC_RAW
        | libc::CLOCK_MONOTONIC_COARSE
        | libc::CLOCK_BOOTTIME => MONOTONIC_ORIGIN_S,
        libc::CLOCK_REALTIME | libc::CLOCK_REALTIME_COARSE => REALTIME_ORIGIN_S,
        _ => return None,
    };
    Some((origin + ns / 1_000_000_000, ns % 1_000_000_000))
}

/// The body of the `clock_gettime` override.
///
/// # Safety
/// `tp` must be valid for writing one `timespec`, as for the C function.
#[allow(unsafe_code)]
pub unsafe fn clock_gettime(clk: libc::clockid_t, tp: *mut libc::timespec) -> libc::c_int {
    match virtual_reading(clk) {
        Some((s, ns)) if !tp.is_null() => {
            // SAFETY: the caller passes a valid timespec pointer (checked non-null).
            unsafe {
                (*tp).tv_sec = s as libc::time_t;
                (*tp).tv_nsec = ns as libc::c_long;
            }
            0
        }
        // SAFETY: the same arguments, handed to the kernel.
        _ => unsafe { libc::syscall(libc::SYS_clock_gettime, clk, tp) as libc::c_int },
    }
}

/// Defines `clock_gettime` in the binary that invokes it, so that the standard library's
/// clocks read [`crate::clock`] on a simulation thread. Invoke it once, at the top level of
/// a binary or integration test that runs simulations.
#[macro_export]
macro_rules! install_virtual_clock {
    () => {
        /// The virtual clock's override of the C library's `clock_gettime`.
        ///
        /// # Safety
        /// As for the C function.
        #[allow(unsafe_code)]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn clock_gettime(
            clk: $crate::clock::ClockId,
            tp: *mut $crate::clock::Timespec,
        ) -> ::std::os::raw::c_int {
            // SAFETY: forwarded as received.
            unsafe { $crate::clock::clock_gettime(clk, tp) }
        }
    };
}

/// The C `clockid_t`, for [`install_virtual_clock!`].
pub type ClockId = libc::clockid_t;
/// The C `struct timespec`, for [`install_virtual_clock!`].
pub type Timespec = libc::timespec;
