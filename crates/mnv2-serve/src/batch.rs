//! Dynamic batching: one worker thread owns the engine; images from concurrent requests are
//! gathered into one engine batch.
//!
//! The worker takes the first waiting image, then keeps taking images until it has
//! `max_batch` of them or `batch_wait` has passed since the first, and runs them as one
//! batch (images of different sizes, possible through the v2 FP32 input, run as one batch per
//! size). While a batch runs, new images queue up, so under load batches fill without waiting.
//! Images whose request has gone (timed out, client disconnected) are skipped. The engine
//! runs on its own thread pool; the async runtime never blocks on it.
//!
//! The queue itself is unbounded: admission (a fixed number of requests in flight, each with
//! a bounded number of images) bounds it, and answers 503 when full.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mobilenetv2::plan::Shape;
use mobilenetv2::{Batch, Engine};
use tokio::sync::{oneshot, OwnedSemaphorePermit};

use crate::metrics::Metrics;

/// The logits of one image, or the engine's error message.
pub type Reply = Result<Vec<f32>, String>;

/// One preprocessed image (NHWC values of `shape`) waiting for the engine.
pub struct Job {
    pub shape: Shape,
    pub data: Vec<f32>,
    pub reply: oneshot::Sender<Reply>,
    /// Released once the image is copied into its batch (bounds the images held).
    pub slot: Option<OwnedSemaphorePermit>,
}

/// The handle requests submit through; closing it lets the worker drain and stop.
pub struct Batcher {
    tx: Mutex<Option<Sender<Job>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
    metrics: Arc<Metrics>,
}

impl Batcher {
    /// Starts the worker thread, which owns `engine`.
    pub fn start(engine: Engine, max_batch: usize, batch_wait: Duration, metrics: Arc<Metrics>) -> Batcher {
        let (tx, rx) = std::sync::mpsc::channel();
        let m = metrics.clone();
        let worker = std::thread::Builder::new()
            .name("mnv2-batcher".into())
            .spawn(move || work(rx, engine, max_batch.max(1), batch_wait, &m))
            .expect("spawning the batching thread");
        Batcher { tx: Mutex::new(Some(tx)), worker: Mutex::new(Some(worker)), metrics }
    }

    /// Queues one image; `None` once the server is shutting down. `slot` is released when
    /// the worker has taken the image.
    pub fn submit(
        &self,
        shape: Shape,
        data: Vec<f32>,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Option<oneshot::Receiver<Reply>> {
        let (reply, rx) = oneshot::channel();
        let guard = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let tx = guard.as_ref()?;
        self.metrics.queue_add(1);
        if tx.send(Job { shape, data, reply, slot }).is_err() {
            self.metrics.queue_add(-1);
            return None;
        }
        Some(rx)
    }

    /// Stops taking work, lets the worker finish what is queued, and waits for it.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = w.join();
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.close();
    }
}

fn work(rx: Receiver<Job>, engine: Engine, max_batch: usize, wait: Duration, metrics: &Metrics) {
    // Ends when every sender is gone and the queue is empty: a graceful drain.
    while let Ok(first) = rx.recv() {
        let deadline = Instant::now() + wait;
        let mut jobs = vec![first];
        while jobs.len() < max_batch {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(j) => jobs.push(j),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        metrics.queue_add(-(jobs.len() as i64));
        jobs.retain(|j| !j.reply.is_closed());
        while !jobs.is_empty() {
            // One engine batch per input size, in arrival order of the sizes.
            let shape = jobs[0].shape;
            let (same, rest): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| j.shape == shape);
            jobs = rest;
            run(&engine, same, metrics);
        }
    }
}

/// Runs jobs of one shape as one batch and replies to each. Each image is moved into the
/// batch and freed (its slot released) at once. If the batch fails, each image runs alone,
/// so that every request gets its own error.
fn run(engine: &Engine, jobs: Vec<Job>, metrics: &Metrics) {
    let n = jobs.len();
    let shape = jobs[0].shape;
    let mut data = Vec::with_capacity(n * shape.len());
    let mut replies = Vec::with_capacity(n);
    for j in jobs {
        data.extend_from_slice(&j.data);
        replies.push(j.reply);
    }
    run_batch(engine, replies, shape, data, metrics);
}

fn run_batch(engine: &Engine, replies: Vec<oneshot::Sender<Reply>>, shape: Shape, data: Vec<f32>, metrics: &Metrics) {
    let n = replies.len();
    let batch = match Batch::new(n, shape, data) {
        Ok(b) => b,
        Err(e) => {
            for r in replies {
                let _ = r.send(Err(e.to_string()));
            }
            return;
        }
    };
    let t = Instant::now();
    // A panic in the engine fails this batch, not the server.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.run(&batch)))
        .map_err(|_| "the engine panicked on this batch".to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    match result {
        Ok(logits) => {
            metrics.batch(n, t.elapsed().as_secs_f64());
            for (i, r) in replies.into_iter().enumerate() {
                let _ = r.send(Ok(logits.image(i).to_vec()));
            }
        }
        Err(e) if n == 1 => {
            let _ = replies.into_iter().next().map(|r| r.send(Err(e)));
        }
        Err(_) => {
            for (i, r) in replies.into_iter().enumerate() {
                run_batch(engine, vec![r], shape, batch.image(i).to_vec(), metrics);
            }
        }
    }
}
