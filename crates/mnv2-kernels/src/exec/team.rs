//! The turns in which the threads of one pool job share two activation buffers.
//!
//! A split forward pass runs layer after layer on every thread: in each phase, every thread
//! writes its own share of the rows of one buffer while reading anything of the other, and a
//! barrier ends the phase; then the buffers swap roles. A [`Team`] holds the two buffers (and
//! per-thread slots for reductions) for the length of the job, and hands each thread a
//! [`Turns`] whose methods are the phases. Which rows a thread writes, and which buffer, come
//! from the team's phase table and the phase count, never from the caller, so the writes of
//! a phase are disjoint by construction and every read of a phase sees only data that the
//! barrier ordered before it.
//!
//! A third buffer, the side buffer (of its own element type), holds a tensor that the threads
//! write in shares in one [`Phase::Side`] and all read whole in the next phase
//! ([`Turns::rows_with_side`]): a layer whose threads need each other's values (a depthwise
//! conv reading its neighbours' expanded rows) without disturbing the ping-pong pair.

use std::cell::UnsafeCell;
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::pool::{Pool, SpinBarrier};
use super::rows::RowsMut;

/// Thread `tid`'s share of `n` items split as evenly as possible among `threads`.
pub fn share(tid: usize, threads: usize, n: usize) -> Range<usize> {
    let per = n / threads;
    let extra = n % threads;
    let start = tid * per + tid.min(extra);
    start..start + per + usize::from(tid < extra)
}

/// Calls `f(rows, dst)` over `rows` rows of `row_len` values of `out`: at once, or split
/// across `pool`'s threads (each its [`share`] of the rows) when there are at least `min_rows`
/// rows and more than one thread.
pub fn split_rows<T: Send>(
    pool: Option<&Pool>,
    rows: usize,
    row_len: usize,
    out: &mut [T],
    min_rows: usize,
    f: &(dyn Fn(Range<usize>, &mut [T]) + Sync),
) {
    assert_eq!(out.len(), rows * row_len, "output size");
    let Some(pool) = pool.filter(|p| p.threads() > 1 && rows >= min_rows.max(p.threads())) else {
        return f(0..rows, out);
    };
    let threads = pool.threads();
    let mut parts = Vec::with_capacity(threads);
    let mut rest = out;
    for t in 0..threads {
        let r = share(t, threads, rows);
        let (mine, tail) = rest.split_at_mut(r.len() * row_len);
        parts.push(Mutex::new((r, mine)));
        rest = tail;
    }
    pool.run(&|tid| {
        let mut part = parts[tid].lock().unwrap_or_else(|e| e.into_inner());
        let (r, dst) = &mut *part;
        f(r.clone(), dst);
    });
}

/// What the threads do in one phase of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Each thread writes its share of `rows` rows of `row_len` values of the output buffer.
    Rows {
        /// Rows of the tensor written.
        rows: usize,
        /// Values per row.
        row_len: usize,
    },
    /// Each thread writes its slot of `len` values; after the barrier every thread reads all
    /// the slots.
    Gather {
        /// Values per thread.
        len: usize,
    },
    /// Each thread writes its share of `rows` rows of `row_len` values of the side buffer;
    /// the next phase (a `Rows` phase) reads it whole. The ping-pong buffers keep their roles:
    /// the next phase reads the same buffer as this one.
    Side {
        /// Rows of the tensor written.
        rows: usize,
        /// Values per row.
        row_len: usize,
    },
}

/// A raw slice the team shares among its threads.
struct Raw<T> {
    ptr: *mut T,
    len: usize,
}

/// The mutable borrows a [`Team`] holds: its ping-pong buffers, side buffer and slots.
type Borrows<'a, T, S> = (&'a mut [T], &'a mut [S], &'a mut [f32]);

/// Two ping-pong buffers, a side buffer and the reduction slots of one job, borrowed for its
/// length.
pub struct Team<'a, T, S = T> {
    bufs: [Raw<T>; 2],
    side: Raw<S>,
    slots: Raw<f32>,
    threads: usize,
    phases: &'a [Phase],
    barrier: SpinBarrier,
    claimed: Vec<AtomicBool>,
    _borrow: PhantomData<(Borrows<'a, T, S>, UnsafeCell<()>)>,
}

// SAFETY: the team hands its buffers out only through `Turns`, whose phases give each thread
// disjoint writes and order every read after the writes it sees (see the module doc); `T:
// Send` and `S: Send` because another thread writes the values.
unsafe impl<T: Send, S: Send> Sync for Team<'_, T, S> {}
// SAFETY: as above; the team owns mutable borrows of its buffers.
unsafe impl<T: Send, S: Send> Send for Team<'_, T, S> {}

impl<'a, T, S> Team<'a, T, S> {
    /// A team of `threads` threads over the buffers `x` (read in the first phase) and `y`
    /// (written in the first phase), whose phases are `phases` in order. `side` holds the
    /// largest `Side` phase (empty if there is none); `slots` holds the reductions: two halves
    /// of `threads` slots of the largest `Gather` phase (unused with one thread).
    pub fn new(
        x: &'a mut [T],
        y: &'a mut [T],
        side: &'a mut [S],
        slots: &'a mut [f32],
        threads: usize,
        phases: &'a [Phase],
    ) -> Team<'a, T, S> {
        assert!(threads >= 1);
        for (i, p) in phases.iter().enumerate() {
            match *p {
                Phase::Rows { rows, row_len } => {
                    assert!(rows * row_len <= x.len().min(y.len()), "phase {p:?} needs more than the buffers hold")
                }
                Phase::Gather { len } => {
                    assert!(threads == 1 || 2 * threads * len <= slots.len(), "phase {p:?} needs more slots")
                }
                Phase::Side { rows, row_len } => {
                    assert!(rows * row_len <= side.len(), "phase {p:?} needs more than the side buffer holds");
                    assert!(
                        matches!(phases.get(i + 1), Some(Phase::Rows { .. })),
                        "a side phase is read by a rows phase"
                    );
                }
            }
        }
        let raw = |v: &mut [T]| Raw { ptr: v.as_mut_ptr(), len: v.len() };
        Team {
            bufs: [raw(x), raw(y)],
            side: Raw { ptr: side.as_mut_ptr(), len: side.len() },
            slots: Raw { ptr: slots.as_mut_ptr(), len: slots.len() },
            threads,
            phases,
            barrier: SpinBarrier::new(threads),
            claimed: (0..threads).map(|_| AtomicBool::new(false)).collect(),
            _borrow: PhantomData,
        }
    }

    /// The turns of thread `tid` (each `tid < threads` once; panics otherwise).
    pub fn member(&self, tid: usize) -> Turns<'_, 'a, T, S> {
        assert!(tid < self.threads, "thread {tid} of a team of {}", self.threads);
        assert!(!self.claimed[tid].swap(true, Ordering::SeqCst), "thread {tid} joined the team twice");
        Turns { team: self, tid, phase: 0, flips: 0, _guard: self.barrier.guard() }
    }
}

/// One thread's side of a [`Team`]: its phases, in the order of the team's table.
pub struct Turns<'t, 'a, T, S = T> {
    team: &'t Team<'a, T, S>,
    tid: usize,
    phase: usize,
    /// `Rows` phases done: the ping-pong buffers swap roles after each.
    flips: usize,
    /// Poisons the barrier if this thread panics, so the others stop waiting.
    _guard: super::pool::PoisonGuard<'t>,
}

impl<T, S> Turns<'_, '_, T, S> {
    /// This thread's index in the team.
    pub fn tid(&self) -> usize {
        self.tid
    }

    /// Threads in the team.
    pub fn threads(&self) -> usize {
        self.team.threads
    }

    /// The current phase, checked against the kind the caller runs.
    fn next(&self, what: &str) -> Phase {
        let p = *self.team.phases.get(self.phase).unwrap_or_else(|| panic!("{what} past the last phase"));
        p
    }

    /// The buffer this phase reads, whole.
    fn input(&self) -> &[T] {
        let b = &self.team.bufs[self.flips % 2];
        // SAFETY: in this phase no thread writes this buffer (writes go to the other one, and
        // gather phases write only slots); the barrier that ended the previous phase ordered
        // its writes before this read; the slice does not outlive the phase (the callers'
        // closures borrow it only for their call).
        unsafe { std::slice::from_raw_parts(b.ptr, b.len) }
    }

    /// Reads the buffer written in the previous phase, without ending this phase (nobody
    /// writes it in this phase).
    pub fn read<R>(&self, f: impl FnOnce(&[T]) -> R) -> R {
        f(self.input())
    }

    /// Runs a `Rows` phase: `f(input, mine)` with the whole buffer written in the previous
    /// phase and this thread's share of the rows of the other buffer, then waits for every
    /// thread. Panics if the phase table says otherwise.
    pub fn rows<R>(&mut self, f: impl FnOnce(&[T], RowsMut<'_, T>) -> R) -> R {
        let (input, mine) = self.rows_phase();
        let r = f(input, mine);
        self.wait();
        self.flips += 1;
        r
    }

    /// Runs the `Rows` phase after a `Side` phase: as [`Turns::rows`], with the side buffer
    /// the `Side` phase wrote (every thread's share) readable whole. Panics if the phase table
    /// says otherwise.
    pub fn rows_with_side<R>(&mut self, f: impl FnOnce(&[T], &[S], RowsMut<'_, T>) -> R) -> R {
        let Some(&Phase::Side { rows, row_len }) = self.phase.checked_sub(1).and_then(|p| self.team.phases.get(p))
        else {
            panic!("phase {} does not follow a side phase", self.phase)
        };
        // SAFETY: the barrier that ended the side phase ordered every thread's share before
        // this read; nobody writes the side buffer in this phase (the next side phase begins
        // only after this phase's barrier), and the slice does not outlive the closure call.
        let side = unsafe { std::slice::from_raw_parts(self.team.side.ptr, rows * row_len) };
        let (input, mine) = self.rows_phase();
        let r = f(input, side, mine);
        self.wait();
        self.flips += 1;
        r
    }

    /// The input and this thread's share of the output of the current `Rows` phase.
    fn rows_phase(&self) -> (&[T], RowsMut<'_, T>) {
        let Phase::Rows { rows, row_len } = self.next("a rows phase") else {
            panic!("phase {} is not a rows phase", self.phase)
        };
        let mine = share(self.tid, self.team.threads, rows);
        let out = &self.team.bufs[(self.flips + 1) % 2];
        assert!(mine.end * row_len <= out.len);
        // SAFETY: the shares of one phase are disjoint (`share` over the same table entry for
        // every thread, whose tids are distinct), nobody reads this buffer in this phase, and
        // the slice is borrowed from `self`, which the caller holds until the phase's barrier.
        let data = unsafe { std::slice::from_raw_parts_mut(out.ptr.add(mine.start * row_len), mine.len() * row_len) };
        (self.input(), RowsMut::window(data, row_len, rows, mine))
    }

    /// Runs a `Side` phase: `f(input, mine)` with the buffer written in the last `Rows` phase
    /// and this thread's share of the rows of the side buffer, then waits for every thread.
    /// Panics if the phase table says otherwise.
    pub fn side<R>(&mut self, f: impl FnOnce(&[T], RowsMut<'_, S>) -> R) -> R {
        let Phase::Side { rows, row_len } = self.next("a side phase") else {
            panic!("phase {} is not a side phase", self.phase)
        };
        let mine = share(self.tid, self.team.threads, rows);
        let side = &self.team.side;
        assert!(mine.end * row_len <= side.len);
        // SAFETY: the shares are disjoint (as in `rows_phase`); nobody reads the side buffer in
        // this phase (the previous reader, a `rows_with_side` phase, ended with a barrier);
        // the slice does not outlive the closure call, which returns before the barrier.
        let data = unsafe { std::slice::from_raw_parts_mut(side.ptr.add(mine.start * row_len), mine.len() * row_len) };
        let r = f(self.input(), RowsMut::window(data, row_len, rows, mine));
        self.wait();
        r
    }

    /// Runs a `Gather` phase: `mine(input, slot)` fills this thread's slot (the buffer written
    /// last is readable), the threads meet, and `all(slots)` reads every thread's slot in
    /// order (`threads * len` values).
    pub fn gather<R>(&mut self, mine: impl FnOnce(&[T], &mut [f32]), all: impl FnOnce(&[f32]) -> R) -> R {
        let Phase::Gather { len } = self.next("a gather phase") else {
            panic!("phase {} is not a gather phase", self.phase)
        };
        let threads = self.team.threads;
        let slots = &self.team.slots;
        // Two fixed halves, whatever the lengths of the phases that use them.
        let half = (self.phase % 2) * (slots.len / 2);
        assert!(threads * len <= slots.len / 2, "slots too short");
        {
            // SAFETY: each thread writes its own slot of this phase's half; the half of a phase
            // is read only in the next phase, and written again two phases later, after every
            // thread has passed the barrier that ends those reads.
            let slot = unsafe { std::slice::from_raw_parts_mut(slots.ptr.add(half + self.tid * len), len) };
            mine(self.input(), slot);
        }
        self.wait();
        // SAFETY: the barrier ordered every slot's write before this read; in this phase the
        // threads write only the other half.
        let all_slots = unsafe { std::slice::from_raw_parts(slots.ptr.add(half), threads * len) };
        all(all_slots)
    }

    fn wait(&mut self) {
        self.team.barrier.wait();
        self.phase += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::Pool;

    #[test]
    fn phases_write_disjoint_shares_and_read_after_the_barrier() {
        for threads in [1, 2, 3] {
            let pool = Pool::new(threads);
            let (mut x, mut y) = (vec![0u32; 40], vec![0u32; 40]);
            let mut slots = vec![0f32; 2 * threads * 4];
            let phases = [
                Phase::Rows { rows: 10, row_len: 4 },
                Phase::Rows { rows: 7, row_len: 5 },
                Phase::Gather { len: 4 },
                Phase::Gather { len: 2 },
            ];
            let team = Team::new(&mut x, &mut y, &mut [0u8; 0], &mut slots, threads, &phases);
            let sums = std::sync::Mutex::new(Vec::new());
            pool.run(&|tid| {
                let mut t = team.member(tid);
                t.rows(|_, mut out| {
                    for r in share(tid, threads, 10) {
                        out.rows_mut(r, r + 1).fill(r as u32 + 1);
                    }
                });
                t.rows(|input, mut out| {
                    // Every row of the previous phase is visible, whoever wrote it.
                    assert!((0..10).all(|r| input[r * 4..r * 4 + 4].iter().all(|&v| v == r as u32 + 1)));
                    for r in share(tid, threads, 7) {
                        out.rows_mut(r, r + 1).fill(100 + r as u32);
                    }
                });
                let total = t.gather(
                    |input, slot| slot.fill(input[..35].iter().sum::<u32>() as f32 + tid as f32),
                    |all| all.iter().sum::<f32>(),
                );
                t.gather(|_, slot| slot.fill(tid as f32), |all| assert_eq!(all.len(), 2 * threads));
                sums.lock().unwrap().push(total);
            });
            let want: u32 = (0..7).map(|r| 5 * (100 + r)).sum();
            let tids: u32 = (0..threads as u32).sum();
            for s in sums.into_inner().unwrap() {
                assert_eq!(s, 4.0 * (threads as u32 * want + tids) as f32);
            }
        }
    }

    #[test]
    fn a_side_phase_is_read_whole_and_keeps_the_ping_pong_roles() {
        for threads in [1, 2, 3] {
            let pool = Pool::new(threads);
            let (mut x, mut y) = (vec![0u32; 12], vec![0u32; 12]);
            let mut side = vec![0u64; 14];
            let phases = [
                Phase::Rows { rows: 6, row_len: 2 },
                Phase::Side { rows: 7, row_len: 2 },
                Phase::Rows { rows: 5, row_len: 2 },
                Phase::Rows { rows: 3, row_len: 4 },
            ];
            let team = Team::new(&mut x, &mut y, &mut side, &mut [], threads, &phases);
            pool.run(&|tid| {
                let mut t = team.member(tid);
                t.rows(|_, mut out| {
                    for r in share(tid, threads, 6) {
                        out.rows_mut(r, r + 1).fill(r as u32 + 1);
                    }
                });
                t.side(|input, mut mine| {
                    // The side phase reads what the last rows phase wrote.
                    assert!((0..6).all(|r| input[2 * r] == r as u32 + 1));
                    for r in share(tid, threads, 7) {
                        mine.rows_mut(r, r + 1).fill(10 * r as u64);
                    }
                });
                t.rows_with_side(|input, side, mut out| {
                    // Still the first phase's output, and every thread's share of the side.
                    assert!((0..6).all(|r| input[2 * r + 1] == r as u32 + 1));
                    assert_eq!(side.len(), 14);
                    assert!((0..7).all(|r| side[2 * r] == 10 * r as u64));
                    for r in share(tid, threads, 5) {
                        out.rows_mut(r, r + 1).fill(side[2 * r + 1] as u32 + input[2 * r]);
                    }
                });
                t.rows(|input, _| {
                    assert!((0..5).all(|r| input[2 * r] == 10 * r as u32 + r as u32 + 1));
                });
            });
        }
        // A side phase must be followed by the rows phase that reads it.
        let (mut x, mut y, mut side) = (vec![0u8; 4], vec![0u8; 4], vec![0u8; 4]);
        let bad = [Phase::Side { rows: 2, row_len: 2 }, Phase::Gather { len: 1 }];
        assert!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Team::new(&mut x, &mut y, &mut side, &mut [], 1, &bad);
        }))
        .is_err());
    }

    #[test]
    fn a_thread_joins_once() {
        let (mut x, mut y) = (vec![0f32; 4], vec![0f32; 4]);
        let team = Team::new(&mut x, &mut y, &mut [0f32; 0], &mut [], 1, &[]);
        let _a = team.member(0);
        assert!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            team.member(0);
        }))
        .is_err());
    }
}
