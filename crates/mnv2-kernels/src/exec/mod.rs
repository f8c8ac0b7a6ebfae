//! Execution primitives of the engine: the spin pool, views of rows of activation buffers,
//! and the turns in which the threads of one job share two ping-pong buffers (and a side
//! buffer).
//!
//! These hold the project's unsafe code outside the kernels (lifetime erasure in the pool,
//! aliasing views in [`Team`]), each behind a safe API whose invariants are checked at run time
//! where the type system cannot carry them.

mod pool;
mod rows;
mod team;

pub use pool::{PoisonGuard, Pool, SpinBarrier};
pub use rows::{Rows, RowsMut};
pub use team::{share, split_rows, Phase, Team, Turns};
