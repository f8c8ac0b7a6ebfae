//! The engine's one thread pool: persistent workers that spin while work is coming.
//!
//! A batch-1 forward pass is ~20 parallel regions of 10-200 us each. Measured on the 2-core
//! target VM (the project's dependency notes), rayon regions entered from outside
//! the pool were barely faster than sequential, and slower once its workers had parked,
//! while a spinning helper stayed within 1.5-8% of ideal. So [`Pool::run`] hands one closure
//! to every worker for a whole forward pass; inside it, threads meet at a [`SpinBarrier`]
//! between layers. Idle workers spin briefly, then yield, then park on a condvar, so an idle
//! engine costs no CPU.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a waiting thread spins before it yields and finally sleeps.
const SPIN: Duration = Duration::from_micros(200);
const YIELD: Duration = Duration::from_millis(2);

type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// Bumped once per job; workers run the job when they see a new value.
    generation: AtomicUsize,
    /// The current job, valid while `pending > 0`.
    job: Mutex<Option<SendJob>>,
    /// Workers still running the current job.
    pending: AtomicUsize,
    panicked: AtomicBool,
    stop: AtomicBool,
    sleep: Mutex<()>,
    wake: Condvar,
}

#[derive(Clone, Copy)]
struct SendJob(Job);
// SAFETY: the job is a `&(dyn Fn + Sync)` that `Pool::run` keeps alive until every worker
// has finished with it.
unsafe impl Send for SendJob {}

/// A fixed set of threads that run one job at a time (see the module doc).
pub struct Pool {
    threads: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// One job at a time.
    running: Mutex<()>,
}

/// Waits until `done()` holds: spin, then yield, then sleep in short naps.
fn wait_until(done: impl Fn() -> bool) {
    let start = Instant::now();
    let mut spins = 0u32;
    while !done() {
        spins += 1;
        if spins < 64 {
            std::hint::spin_loop();
            continue;
        }
        spins = 0;
        let waited = start.elapsed();
        if waited < SPIN {
            std::hint::spin_loop();
        } else if waited < YIELD {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

impl Pool {
    /// A pool of `threads` threads in all: the caller plus `threads - 1` workers.
    pub fn new(threads: usize) -> Pool {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            job: Mutex::new(None),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = (1..threads)
            .map(|tid| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("mnv2-worker-{tid}"))
                    .spawn(move || worker(s, tid))
                    .expect("spawning a worker thread")
            })
            .collect();
        Pool { threads, shared, workers, running: Mutex::new(()) }
    }

    /// Threads in all, the caller's included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(tid)` for every `tid < threads` (0 on the calling thread) and returns when all
    /// have finished. Panics if any of them panicked.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.threads == 1 {
            f(0);
            return;
        }
        let _one = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let s = &self.shared;
        // SAFETY (lifetime erasure): workers only call the job between the generation bump
        // below and their decrement of `pending`; this function does not return (or unwind
        // past the wait) before `pending` is 0, so `f` outlives every use.
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f) };
        *s.job.lock().unwrap() = Some(SendJob(job));
        s.pending.store(self.threads - 1, Ordering::SeqCst);
        s.generation.fetch_add(1, Ordering::SeqCst);
        {
            let _g = s.sleep.lock().unwrap();
            s.wake.notify_all();
        }
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(0)));
        wait_until(|| s.pending.load(Ordering::Acquire) == 0);
        *s.job.lock().unwrap() = None;
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if s.panicked.swap(false, Ordering::SeqCst) {
            panic!("an engine worker thread panicked");
        }
    }
}

fn worker(s: Arc<Shared>, tid: usize) {
    let mut seen = 0;
    loop {
        // Spin, then yield, then sleep until the generation changes.
        let start = Instant::now();
        loop {
            if s.stop.load(Ordering::Acquire) {
                return;
            }
            if s.generation.load(Ordering::Acquire) != seen {
                break;
            }
            let waited = start.elapsed();
            if waited < SPIN {
                for _ in 0..64 {
                    std::hint::spin_loop();
                }
            } else if waited < YIELD {
                std::thread::yield_now();
            } else {
                let g = s.sleep.lock().unwrap();
                if s.generation.load(Ordering::Acquire) == seen && !s.stop.load(Ordering::Acquire) {
                    let _ = s.wake.wait_timeout(g, Duration::from_millis(100)).unwrap();
                }
            }
        }
        seen = s.generation.load(Ordering::Acquire);
        let job = s.job.lock().unwrap().expect("a job is set while pending > 0");
        // SAFETY: see Pool::run; the job stays valid until we decrement `pending`.
        let f: &(dyn Fn(usize) + Sync) = unsafe { &*job.0 };
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(tid))).is_err() {
            s.panicked.store(true, Ordering::SeqCst);
        }
        s.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let _g = self.shared.sleep.lock().unwrap();
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A reusable barrier for the threads of one [`Pool::run`] job.
///
/// If a thread panics while holding a [`SpinBarrier::guard`], the barrier is poisoned and the
/// other threads panic out of `wait` instead of waiting forever.
pub struct SpinBarrier {
    threads: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
    poisoned: AtomicBool,
}

/// Poisons its barrier if dropped during a panic.
pub struct PoisonGuard<'a>(&'a SpinBarrier);

impl Drop for PoisonGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.poisoned.store(true, Ordering::SeqCst);
        }
    }
}

impl SpinBarrier {
    /// A barrier for `threads` threads.
    pub fn new(threads: usize) -> SpinBarrier {
        SpinBarrier {
            threads,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            poisoned: AtomicBool::new(false),
        }
    }

    /// Hold this for the duration of a thread's share of a job.
    pub fn guard(&self) -> PoisonGuard<'_> {
        PoisonGuard(self)
    }

    /// Returns once all `threads` threads have called `wait` (panics if the barrier is
    /// poisoned).
    pub fn wait(&self) {
        if self.threads <= 1 {
            return;
        }
        let gen = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.threads {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::AcqRel);
        } else {
            wait_until(|| self.generation.load(Ordering::Acquire) != gen || self.poisoned.load(Ordering::Relaxed));
            assert!(!self.poisoned.load(Ordering::SeqCst), "another engine thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_runs_and_barriers_order_phases() {
        for threads in [1, 2, 3] {
            let pool = Pool::new(threads);
            let barrier = SpinBarrier::new(threads);
            let counter = AtomicUsize::new(0);
            for _ in 0..50 {
                counter.store(0, Ordering::SeqCst);
                pool.run(&|_tid| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    barrier.wait();
                    assert_eq!(counter.load(Ordering::SeqCst), threads);
                    barrier.wait();
                });
            }
        }
    }

    #[test]
    fn a_panicking_worker_is_reported() {
        let pool = Pool::new(2);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(&|tid| {
                if tid == 1 {
                    panic!("boom");
                }
            })
        }));
        assert!(r.is_err());
        // The pool still works afterwards.
        let n = AtomicUsize::new(0);
        pool.run(&|_| {
            n.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }
}
