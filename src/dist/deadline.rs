//! A deadline for NCCL collectives, so that a rank that fails (or never arrives) cannot
//! leave its peers blocked forever.
//!
//! NCCL enqueues a collective and returns; if a peer never joins it, the collective's
//! kernel spins on the GPU and the stream never drains, so the first host call that waits
//! on the stream blocks for good. [`Deadline`] owns the communicators: after every
//! collective it records an event on each rank's stream, and a watchdog thread checks
//! that each event completes within the timeout. When one does not, the watchdog aborts
//! the communicators (`ncclCommAbort`, NCCL's recovery path, which makes the spinning
//! kernels return so the streams drain) and every later call fails with an error saying
//! why. The communicators cannot be used after that: the collective must be rebuilt on
//! every rank.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaContext, CudaEvent};
use cudarc::nccl::Comm;

use crate::cuda::nccl::SendComm;
use crate::{Error, Result};

/// How long a collective may take before its communicators are aborted, unless
/// [`crate::dist::NcclCollective::set_timeout`] says otherwise: generous, since a
/// collective legitimately waits for the slowest rank's preceding work (PyTorch's NCCL
/// watchdog uses the same default).
pub const DEFAULT_COLLECTIVE_TIMEOUT: Duration = Duration::from_secs(600);

/// How often the watchdog looks at the oldest unfinished collective.
const POLL: Duration = Duration::from_millis(20);

/// Communicators guarded by a watchdog thread. See the module docs.
pub(crate) struct Deadline {
    shared: Arc<Shared>,
    watchdog: Option<JoinHandle<()>>,
}

struct Shared {
    /// The communicators, or why they were aborted.
    comms: Mutex<std::result::Result<Vec<SendComm>, String>>,
    /// Collectives enqueued and not yet seen complete, oldest first.
    pending: Mutex<VecDeque<Pending>>,
    /// Wakes the watchdog for new work or to stop.
    wake: Condvar,
    stop: AtomicBool,
    timeout_ms: AtomicU64,
}

/// One collective call: an event after it on every rank's stream.
struct Pending {
    what: &'static str,
    since: Instant,
    events: Vec<(Arc<CudaContext>, CudaEvent)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Deadline {
    pub(crate) fn new(comms: Vec<Comm>) -> Result<Deadline> {
        let shared = Arc::new(Shared {
            comms: Mutex::new(Ok(comms.into_iter().map(SendComm).collect())),
            pending: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            timeout_ms: AtomicU64::new(DEFAULT_COLLECTIVE_TIMEOUT.as_millis() as u64),
        });
        let watched = shared.clone();
        let watchdog = std::thread::Builder::new()
            .name("warpnorm-nccl-watchdog".into())
            .spawn(move || watched.watch())?;
        Ok(Deadline {
            shared,
            watchdog: Some(watchdog),
        })
    }

    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_millis(self.shared.timeout_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn set_timeout(&self, timeout: Duration) {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.shared.timeout_ms.store(ms.max(1), Ordering::Relaxed);
    }

    /// Runs `f` on the communicators (one call at a time), or fails if they were aborted.
    pub(crate) fn inspect<R>(&self, f: impl FnOnce(&[&Comm]) -> Result<R>) -> Result<R> {
        let guard = lock(&self.shared.comms);
        let comms = guard.as_ref().map_err(|why| Error::Nccl(why.clone()))?;
        let comms: Vec<&Comm> = comms.iter().map(|c| &c.0).collect();
        f(&comms)
    }

    /// Runs collective `what` (`f` enqueues it on the communicators), then starts its
    /// deadline.
    pub(crate) fn collective(
        &self,
        what: &'static str,
        f: impl FnOnce(&[&Comm]) -> Result<()>,
    ) -> Result<()> {
        self.inspect(|comms| {
            f(comms)?;
            let events = comms
                .iter()
                .map(|c| {
                    let stream = c.stream();
                    let flags = Some(CUevent_flags::CU_EVENT_DISABLE_TIMING);
                    Ok((stream.context().clone(), stream.record_event(flags)?))
                })
                .collect::<Result<Vec<_>>>()?;
            lock(&self.shared.pending).push_back(Pending {
                what,
                since: Instant::now(),
                events,
            });
            self.shared.wake.notify_one();
            Ok(())
        })
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        // Under the lock the watchdog checks `stop` with, so the wake-up cannot be missed.
        {
            let _pending = lock(&self.shared.pending);
            self.shared.stop.store(true, Ordering::Relaxed);
        }
        self.shared.wake.notify_one();
        if let Some(watchdog) = self.watchdog.take() {
            let _ = watchdog.join();
        }
    }
}

impl Shared {
    fn watch(&self) {
        let mut pending = lock(&self.pending);
        while !self.stop.load(Ordering::Relaxed) {
            while pending.front().is_some_and(Pending::finished) {
                pending.pop_front();
            }
            let timeout = Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed));
            let overdue = pending.front().filter(|p| p.since.elapsed() >= timeout);
            if let Some(p) = overdue {
                let why = format!(
                    "the communicators were aborted: {} did not finish within {:.1} s (a peer rank \
                     failed, stopped or never joined); rebuild the collective on every rank",
                    p.what,
                    timeout.as_secs_f64()
                );
                pending.clear();
                drop(pending);
                self.abort(why);
                pending = lock(&self.pending);
                continue;
            }
            let wait = if pending.is_empty() { timeout } else { POLL };
            pending = self
                .wake
                .wait_timeout(pending, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn abort(&self, why: String) {
        let comms = std::mem::replace(&mut *lock(&self.comms), Err(why));
        // Dropping a cudarc `Comm` calls ncclCommAbort (and panics if that fails, which
        // must not take the watchdog down with it).
        let _ = catch_unwind(AssertUnwindSafe(move || drop(comms)));
    }
}

impl Pending {
    fn finished(&self) -> bool {
        self.events.iter().all(|(ctx, event)| {
            // An error (a dead context) counts as finished: nothing more will run.
            ctx.bind_to_thread().is_err() || event.try_is_complete().unwrap_or(true)
        })
    }
}
