//! The worker's own CPU threads for its kernels (matmuls, attention).
//!
//! candle's barrier pool splits a job evenly between its threads, and the caller waits for the
//! last of them with a pure spin: when other processes want the same cores, a descheduled pool
//! thread keeps the caller spinning through whole time slices (the candle worker decoded at 17%
//! of its quiet speed beside two busy processes). Here a job's items are claimed a chunk at a
//! time by whichever threads are running, so the caller takes over what a descheduled thread
//! never started; waiting threads spin briefly, then yield their core (the caller, for the
//! last chunks) or sleep until the next job (the pool's threads).
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

/// Spins (`spin_loop` hints, tens of microseconds in all) before a waiting thread yields or
/// sleeps: long enough to catch the next matmul of a forward pass without a wake-up.
const SPINS: u32 = 20_000;

/// One job: `run` over items `0..items`, claimed `chunk` at a time.
struct Job<'a> {
    run: &'a (dyn Fn(Range<usize>) + Sync),
    items: usize,
    chunk: usize,
    /// The next item nobody has claimed.
    next: AtomicUsize,
    /// Items finished.
    done: AtomicUsize,
    panicked: AtomicBool,
    /// Pool threads that may take part, and how many have come.
    helpers: usize,
    joined: AtomicUsize,
}

impl Job<'_> {
    /// Claims and runs chunks until none is left.
    fn work(&self) {
        loop {
            let start = self.next.fetch_add(self.chunk, Ordering::Relaxed);
            if start >= self.items {
                return;
            }
            let end = (start + self.chunk).min(self.items);
            if catch_unwind(AssertUnwindSafe(|| (self.run)(start..end))).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
            // Release: what the chunk wrote is visible to whoever sees it done.
            self.done.fetch_add(end - start, Ordering::Release);
        }
    }
}

/// What the caller and the pool's threads share.
struct Shared {
    /// The job in progress (a `Job` on the caller's stack), or null.
    job: AtomicPtr<()>,
    /// Bumped for every job; the pool's threads wait for it to change.
    generation: AtomicU64,
    /// Pool threads between reading `job` and being done with it.
    inside: AtomicUsize,
    /// Pool threads asleep (or about to be) on `wake`.
    sleeping: AtomicUsize,
    /// Set when the pool is dropped: its threads end.
    closed: AtomicBool,
    /// Pool threads a job may use (the model's `Threads` less the caller).
    helpers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

/// A pool of `threads` threads besides the caller.
pub struct CpuPool {
    shared: Arc<Shared>,
    threads: usize,
    /// One job at a time; a caller that finds the pool busy runs its job alone.
    busy: Mutex<()>,
}

impl CpuPool {
    /// A pool with `threads` threads besides the caller.
    pub fn new(threads: usize) -> CpuPool {
        let shared = Arc::new(Shared {
            job: AtomicPtr::new(std::ptr::null_mut()),
            generation: AtomicU64::new(0),
            inside: AtomicUsize::new(0),
            sleeping: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            helpers: AtomicUsize::new(usize::MAX),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut started = 0;
        for i in 0..threads {
            let shared = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("cpu-pool-{i}"))
                .spawn(move || serve(&shared));
            match spawned {
                Ok(_) => started += 1,
                Err(e) => {
                    tracing::warn!("cannot start a CPU pool thread ({e}); kernels use {started}");
                    break;
                }
            }
        }
        CpuPool {
            shared,
            threads: started,
            busy: Mutex::new(()),
        }
    }

    /// Uses at most `threads` threads per job, the caller's included (at least the caller).
    pub fn set_threads(&self, threads: usize) {
        self.shared
            .helpers
            .store(threads.saturating_sub(1), Ordering::Relaxed);
    }

    /// Calls `run` on ranges covering `0..items` exactly once each, on this thread and the
    /// pool's, and returns when all have returned. A panic in `run` panics here.
    pub fn run(&self, items: usize, run: impl Fn(Range<usize>) + Sync) {
        let helpers = self
            .threads
            .min(self.shared.helpers.load(Ordering::Relaxed));
        let guard = match self.busy.try_lock() {
            Ok(guard) if helpers > 0 && items > 1 => guard,
            _ => return run(0..items),
        };
        let job = Job {
            run: &run,
            items,
            // Several chunks a thread, so a thread that runs late takes a smaller share.
            chunk: items.div_ceil(4 * (helpers + 1)).max(1),
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            helpers,
            joined: AtomicUsize::new(0),
        };
        let shared = &*self.shared;
        shared
            .job
            .store(&job as *const Job<'_> as *mut (), Ordering::SeqCst);
        shared.generation.fetch_add(1, Ordering::SeqCst);
        if shared.sleeping.load(Ordering::SeqCst) > 0 {
            let _lock = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            shared.wake.notify_all();
        }
        job.work();
        wait_until(|| job.done.load(Ordering::Acquire) == items);
        // Withdraw the job, then wait for every pool thread that may have seen it: a thread
        // counts itself in before it reads `job`, so (both sequentially consistent) one that
        // is not counted here reads null.
        shared.job.store(std::ptr::null_mut(), Ordering::SeqCst);
        wait_until(|| shared.inside.load(Ordering::SeqCst) == 0);
        drop(guard);
        if job.panicked.load(Ordering::Relaxed) {
            panic!("a CPU kernel panicked on a pool thread");
        }
    }
}

impl Drop for CpuPool {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        let _lock = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.shared.wake.notify_all();
    }
}

/// Spins a while, then yields the core, until `done` holds.
fn wait_until(done: impl Fn() -> bool) {
    for _ in 0..SPINS {
        if done() {
            return;
        }
        std::hint::spin_loop();
    }
    while !done() {
        std::thread::yield_now();
    }
}

/// A pool thread: waits for each new job and helps with it.
fn serve(shared: &Shared) {
    let mut seen = 0;
    loop {
        let mut spins = 0;
        while shared.generation.load(Ordering::SeqCst) == seen {
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            let lock = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            shared.sleeping.fetch_add(1, Ordering::SeqCst);
            // Checked again after counting in: a caller that bumped the generation before
            // seeing this thread asleep is seen here, one after it notifies under the lock.
            let lock = shared
                .wake
                .wait_while(lock, |_| shared.generation.load(Ordering::SeqCst) == seen)
                .unwrap_or_else(|e| e.into_inner());
            shared.sleeping.fetch_sub(1, Ordering::SeqCst);
            drop(lock);
        }
        if shared.closed.load(Ordering::SeqCst) {
            return;
        }
        seen = shared.generation.load(Ordering::SeqCst);
        shared.inside.fetch_add(1, Ordering::SeqCst);
        let job = shared.job.load(Ordering::SeqCst) as *const Job<'static>;
        // SAFETY: the caller keeps the job alive until no thread that may have read this
        // pointer is still counted in `inside` (see `CpuPool::run`).
        if let Some(job) = unsafe { job.as_ref() }
            && job.joined.fetch_add(1, Ordering::Relaxed) < job.helpers
        {
            job.work();
        }
        shared.inside.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The pool the kernels share: one thread per core besides the caller.
pub fn cpu_pool() -> &'static CpuPool {
    static POOL: OnceLock<CpuPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        CpuPool::new(cores.saturating_sub(1))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_once_from_many_callers() {
        let pool = CpuPool::new(3);
        std::thread::scope(|s| {
            for caller in 0..4 {
                let pool = &pool;
                s.spawn(move || {
                    for round in 0..200 {
                        let items = (round * 7 + caller) % 50;
                        let hits: Vec<AtomicUsize> =
                            (0..items).map(|_| AtomicUsize::new(0)).collect();
                        pool.run(items, |range| {
                            for i in range {
                                hits[i].fetch_add(1, Ordering::Relaxed);
                            }
                        });
                        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
                    }
                });
            }
        });
    }

    #[test]
    fn a_panicking_item_panics_the_caller_and_the_pool_goes_on() {
        let pool = CpuPool::new(2);
        let result = catch_unwind(AssertUnwindSafe(|| {
            pool.run(64, |range| assert!(!range.contains(&40), "item 40"));
        }));
        assert!(result.is_err());
        let sum = AtomicUsize::new(0);
        pool.run(100, |range| {
            sum.fetch_add(range.sum::<usize>(), Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 4950);
    }

    #[test]
    fn a_job_uses_no_more_threads_than_set() {
        let pool = CpuPool::new(3);
        // The most threads any one of ten jobs ran on.
        let count = |pool: &CpuPool| {
            (0..10)
                .map(|_| {
                    let seen = Mutex::new(std::collections::HashSet::new());
                    pool.run(64, |_| {
                        seen.lock().unwrap().insert(std::thread::current().id());
                        std::thread::sleep(std::time::Duration::from_micros(200));
                    });
                    seen.into_inner().unwrap().len()
                })
                .max()
                .unwrap_or(0)
        };
        pool.set_threads(1);
        assert_eq!(count(&pool), 1, "the caller alone");
        pool.set_threads(2);
        assert_eq!(count(&pool), 2);
    }

    #[test]
    fn sleeping_threads_wake_for_the_next_job() {
        let pool = CpuPool::new(1);
        pool.run(8, |_| {});
        // Long enough for the pool thread to stop spinning and sleep.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let seen = Mutex::new(std::collections::HashSet::new());
        for _ in 0..20 {
            pool.run(64, |_| {
                seen.lock().unwrap().insert(std::thread::current().id());
                std::thread::sleep(std::time::Duration::from_millis(1));
            });
        }
        assert_eq!(seen.lock().unwrap().len(), 2, "the pool thread took part");
    }
}
