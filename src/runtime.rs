//! Runtimes of their own for conversations, apart from the main runtime's sockets.
//!
//! tokio schedules tasks cooperatively: a task waits for whatever task holds its worker
//! thread. On one runtime, a voice turn (Final received → agent → play requested: three or
//! four task hops) queued at every hop behind the audio frames of every other call (50 a
//! second per call), and a webhook acknowledgement behind the WhatsApp work that earlier
//! deliveries created. Each kind of conversation work therefore runs on a runtime of its own,
//! whose threads sleep most of the time; the kernel gives a thread that wakes from sleep the
//! CPU ahead of threads that have been busy, which is the priority the work needs.
//! Measured in docs/performance.md (sixth session): at 1,000 calls the engine turn's p50
//! fell from 1.1–2.4 ms to 0.7–1.3 ms and its p99 was lower in five of six alternating pairs
//! (7–30 ms before, 9–17 ms after).
//!
//! Waking first is not enough when both cores are busy: a woken thread still waited for the
//! running thread's time slice to end (the conversation's thread, at 1,000 calls, waited up to
//! 11 ms for a core). The voice runtime's threads therefore ask the kernel for a shorter slice
//! (`VOICE_TURN_SLICE_US`, [`request_slice`]), which lets them preempt on waking: engine p99
//! 4.1–4.8 ms against 4.2–7.1 ms in seven alternating pairs (ninth session).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A multi-threaded tokio runtime owned by the app, one thread per core.
pub struct WorkRuntime(Option<tokio::runtime::Runtime>);

impl WorkRuntime {
    /// `slice`: the CPU time slice each of its threads asks the kernel for (see
    /// [`request_slice`]); `None` leaves the kernel's default.
    pub fn new(name: &'static str, slice: Option<Duration>) -> std::io::Result<Self> {
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder
            .worker_threads(threads)
            .thread_name(name)
            .enable_all();
        if let Some(slice) = slice {
            builder.on_thread_start(move || {
                if let Err(err) = request_slice(slice) {
                    static WARNED: AtomicBool = AtomicBool::new(false);
                    if !WARNED.swap(true, Ordering::Relaxed) {
                        tracing::warn!(runtime = name, error = %err, "the kernel refused a shorter time slice; threads keep the default");
                    }
                }
            });
        }
        builder.build().map(|rt| Self(Some(rt)))
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("set until dropped").handle()
    }
}

impl Drop for WorkRuntime {
    /// The app may be dropped inside the main runtime, where blocking on a shutdown is not
    /// allowed; `App::run` has already given the work its grace period.
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// `sched_setattr(2)` on the calling thread: SCHED_OTHER at its current nice value, asking the
/// fair scheduler for `slice` instead of its base slice (which is 0.75 ms × (1 + log2 cores):
/// 1.4 ms on two). Since Linux 6.12 (EEVDF custom slices) a thread with a shorter slice has an
/// earlier virtual deadline, so when it wakes it preempts a thread that has been running on a
/// longer one instead of waiting for that slice to end. It needs no privilege: the thread's
/// share of the CPU (its nice value) is unchanged. The kernel clamps the slice to 0.1–100 ms;
/// kernels before 6.12 accept the call and ignore the slice.
#[cfg(target_os = "linux")]
fn request_slice(slice: Duration) -> std::io::Result<()> {
    /// `struct sched_attr`, SCHED_ATTR_SIZE_VER0 (48 bytes).
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime: u64,
        deadline: u64,
        period: u64,
    }
    // SAFETY: getpriority has no memory effects; for PRIO_PROCESS with who = 0 it reads the
    // calling thread's nice value. -1 is also a valid nice value, hence errno.
    let nice = unsafe {
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
        if nice == -1 && *libc::__errno_location() != 0 {
            return Err(std::io::Error::last_os_error());
        }
        nice
    };
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: libc::SCHED_OTHER as u32,
        flags: 0,
        nice,
        priority: 0,
        runtime: u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX),
        deadline: 0,
        period: 0,
    };
    // SAFETY: the kernel reads `size` bytes from a pointer to a live, initialised struct of
    // that size; pid 0 is the calling thread.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn request_slice(_slice: Duration) -> std::io::Result<()> {
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The slice a thread runs with, as the kernel reports it (`se.slice` in
    /// /proc/thread-self/sched, in nanoseconds; present on EEVDF kernels).
    fn own_slice() -> Option<u64> {
        let sched = std::fs::read_to_string("/proc/thread-self/sched").ok()?;
        sched
            .lines()
            .find(|line| line.trim_start().starts_with("se.slice"))?
            .split(':')
            .nth(1)?
            .trim()
            .parse()
            .ok()
    }

    /// Custom slices came with Linux 6.12.
    fn kernel_has_custom_slices() -> bool {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut parts = release
            .trim()
            .split(['.', '-'])
            .map(|p| p.parse::<u32>().ok());
        matches!((parts.next(), parts.next()), (Some(Some(major)), Some(Some(minor))) if (major, minor) >= (6, 12))
    }

    fn slice_on(rt: &WorkRuntime) -> Option<u64> {
        rt.handle()
            .block_on(async { tokio::spawn(async { own_slice() }).await.unwrap() })
    }

    #[test]
    fn a_runtime_with_a_slice_runs_its_threads_on_it() {
        let asked = WorkRuntime::new("slice-test", Some(Duration::from_micros(300))).unwrap();
        let plain = WorkRuntime::new("plain-test", None).unwrap();
        match (slice_on(&asked), slice_on(&plain)) {
            (Some(asked), Some(default)) if kernel_has_custom_slices() => {
                assert_eq!(asked, 300_000);
                assert_ne!(default, 300_000);
            }
            // Older kernels accept the request and ignore it.
            _ => request_slice(Duration::from_micros(300)).unwrap(),
        }
    }
}
