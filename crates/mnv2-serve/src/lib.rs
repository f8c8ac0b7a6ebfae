//! `mnv2 serve`: MobileNetV2 behind HTTP.
//!
//! - `POST /v1/classify?top=5`: a JPEG/PNG body (or `multipart/form-data` with `image` parts)
//!   -> the JSON `mnv2 classify --json` prints; `POST /v1/detect?threshold=0.5` and
//!   `POST /v1/segment` the JSON of `mnv2 detect --json` and `mnv2 segment --json` (or the
//!   class-index PNG), when the server has a detector or a segmenter ([`Heads`]; 501 without);
//!   `GET /v1/models` says which;
//! - the Open Inference Protocol (KServe v2 / Triton) over HTTP under `/v2` ([`v2`]);
//! - `GET /metrics` (Prometheus), `GET /openapi.json`, `GET /` (a web page, assets embedded).
//!
//! Requests are admitted up to [`Config::queue`] at a time (503 with `Retry-After` beyond);
//! their images are decoded on the blocking pool and batched for the engine by one worker
//! thread ([`batch`]). Everything is testable in process through [`App::router`].

#![forbid(unsafe_code)]

pub mod batch;
pub mod error;
pub mod images;
pub mod metrics;
pub mod v1;
pub mod v2;
mod web;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::HttpBody;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use http_body_util::BodyExt;
use mobilenetv2::detect::Detector;
use mobilenetv2::engine::{Options, Precision};
use mobilenetv2::segment::Segmenter;
use mobilenetv2::{Engine, Model};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use error::ApiError;
use metrics::Metrics;

/// The server's knobs (the `mnv2 serve` flags).
#[derive(Clone, Debug)]
pub struct Config {
    /// Engine threads, and images decoded at once.
    pub threads: usize,
    /// Most images per engine batch.
    pub max_batch: usize,
    /// How long the first image of a batch waits for others.
    pub batch_wait: Duration,
    /// Inference requests admitted at once; beyond, 503 with `Retry-After`.
    pub queue: usize,
    /// Per request, from its arrival to its answer (body upload included).
    pub timeout: Duration,
    /// Largest request body, bytes.
    pub max_body: usize,
    /// Largest image, in pixels (width x height, read from the header before decoding).
    pub max_pixels: u64,
    /// Most images in one request.
    pub max_images: usize,
    /// The model's name in the v2 routes.
    pub model_name: String,
    /// The classifier engine's number format (`None`: the weights' own; see
    /// [`Options::precision`]).
    pub precision: Option<Precision>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_batch: 8,
            batch_wait: Duration::from_millis(2),
            queue: 256,
            timeout: Duration::from_secs(30),
            max_body: 20 << 20,
            max_pixels: 24_000_000,
            max_images: 64,
            model_name: "mobilenet_v2".into(),
            precision: None,
        }
    }
}

/// The optional models behind `/v1/detect` and `/v1/segment`.
#[derive(Default)]
pub struct Heads {
    /// The detector; make it with `threshold: 0.0` (each request filters with its own
    /// `?threshold=`, default 0.5, exactly as `mnv2 detect --threshold` does).
    pub detector: Option<Detector>,
    /// The segmenter (single-scale inference, as `mnv2 segment` without `--multi-scale`).
    pub segmenter: Option<Segmenter>,
}

/// The running server's state: the model (labels, preprocessing), the batching worker, the
/// limits and the metrics.
pub struct App {
    pub config: Config,
    /// The model's plan, labels and preprocessing (its weights are in the engine).
    pub model: Arc<Model>,
    pub metrics: Arc<Metrics>,
    batcher: batch::Batcher,
    admission: Arc<Semaphore>,
    decoders: Arc<Semaphore>,
    /// Preprocessed images allowed to wait for the engine.
    slots: Arc<Semaphore>,
    /// Requests reading and decoding their bodies at once ([`App::reading`]).
    readers: Arc<Semaphore>,
    pub(crate) detector: Option<Arc<Detector>>,
    pub(crate) segmenter: Option<Arc<Segmenter>>,
    /// One detection or segmentation runs at a time (each uses all `--threads`), so their
    /// decoded photos and activations are bounded by one request's.
    heads_gate: Arc<Semaphore>,
}

impl App {
    /// Compiles the engine and starts the batching worker (classification only).
    pub fn new(model: Model, config: Config) -> mobilenetv2::Result<Arc<App>> {
        App::with_heads(model, Heads::default(), config)
    }

    /// [`App::new`] with a detector and/or a segmenter for `/v1/detect` and `/v1/segment`.
    pub fn with_heads(model: Model, heads: Heads, config: Config) -> mobilenetv2::Result<Arc<App>> {
        if config.max_batch == 0 || config.queue == 0 || config.max_images == 0 {
            return Err(mobilenetv2::Error::Input("--max-batch, --queue and --max-images must be at least 1".into()));
        }
        let options = Options { threads: config.threads, precision: config.precision, ..Options::default() };
        let (engine, model) = Engine::new_owned(model, options)?;
        let metrics = Arc::new(Metrics::default());
        let batcher = batch::Batcher::start(engine, config.max_batch, config.batch_wait, metrics.clone());
        Ok(Arc::new(App {
            admission: Arc::new(Semaphore::new(config.queue)),
            decoders: Arc::new(Semaphore::new(config.threads.max(1))),
            slots: Arc::new(Semaphore::new(config.max_batch + config.threads.max(1))),
            readers: Arc::new(Semaphore::new(config.max_batch)),
            config,
            model: Arc::new(model),
            metrics,
            batcher,
            detector: heads.detector.map(Arc::new),
            segmenter: heads.segmenter.map(Arc::new),
            heads_gate: Arc::new(Semaphore::new(1)),
        }))
    }

    /// All routes.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/", get(web::index))
            .route("/openapi.json", get(web::openapi))
            .route("/metrics", get(web::metrics))
            .route("/v1/classify", post(v1::classify))
            .route("/v1/detect", post(v1::detect))
            .route("/v1/segment", post(v1::segment))
            .route("/v1/models", get(v1::models))
            .route("/v2", get(v2::server_metadata))
            .route("/v2/health/live", get(v2::live))
            .route("/v2/health/ready", get(v2::ready))
            .route("/v2/models/{name}", get(v2::model_metadata))
            .route("/v2/models/{name}/ready", get(v2::model_ready))
            .route("/v2/models/{name}/infer", post(v2::infer))
            .route("/v2/models/{name}/versions/{version}", get(v2::model_metadata_version))
            .route("/v2/models/{name}/versions/{version}/ready", get(v2::model_ready_version))
            .route("/v2/models/{name}/versions/{version}/infer", post(v2::infer_version))
            .route_layer(middleware::from_fn_with_state(self.clone(), track))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            // Bodies are read by `read_body`, under `Config::max_body`.
            .layer(DefaultBodyLimit::disable())
            .with_state(self.clone())
    }

    /// Stops the batching worker after it has answered everything queued.
    pub fn close(&self) {
        self.batcher.close();
    }

    /// One admitted inference request, or 503 when `queue` requests are already in flight.
    pub(crate) fn admit(&self) -> Result<Admitted, ApiError> {
        let permit = self.admission.clone().try_acquire_owned().map_err(|_| {
            ApiError::unavailable(format!(
                "the server is busy: {} requests are in flight (--queue); retry shortly",
                self.config.queue
            ))
        })?;
        self.metrics.inflight_add(1);
        Ok(Admitted { _permit: permit, metrics: self.metrics.clone(), deadline: Instant::now() + self.config.timeout })
    }

    /// Logits of encoded images: each is checked, decoded and preprocessed on the blocking
    /// pool, then queued for the engine at once; all under the request's deadline. At most
    /// `max_batch + threads` preprocessed images wait for the engine (a slot is taken before
    /// decoding and released when the worker takes the image: the next batch fills while one
    /// runs), and at most `max_batch` requests read and decode their bodies at once
    /// ([`App::reading`], released here once every image is queued), so a long queue holds
    /// neither bodies nor 600 KB tensors.
    pub(crate) async fn logits_of_images(
        &self,
        images: Vec<(String, Bytes)>,
        reading: OwnedSemaphorePermit,
        deadline: Instant,
    ) -> Result<Vec<Vec<f32>>, ApiError> {
        let spec = self.model.spec();
        let shape = mobilenetv2::plan::Shape::new(spec.height, spec.width_px, 3);
        let mut pending = Vec::with_capacity(images.len());
        let work = async {
            for (name, bytes) in images {
                let closed = || ApiError::unavailable("the server is shutting down");
                let slot = self.slots.clone().acquire_owned().await.map_err(|_| closed())?;
                let permit = self.decoders.acquire().await.map_err(|_| closed())?;
                let (model, max_pixels) = (self.model.clone(), self.config.max_pixels);
                let data = tokio::task::spawn_blocking(move || images::load(&bytes, &name, &model, max_pixels))
                    .await
                    .map_err(|e| ApiError::internal(format!("decoding failed: {e}")))??;
                drop(permit);
                pending.push(self.batcher.submit(shape, data, Some(slot)).ok_or_else(closed)?);
            }
            Ok::<_, ApiError>(())
        };
        self.within(deadline, work).await?;
        // Every image is decoded and queued: the next request may read its body.
        drop(reading);
        self.wait(pending, deadline).await
    }

    /// Runs `work` (a detection or a segmentation) on the blocking pool, one at a time, all
    /// before `deadline`. The gate's permit moves into the work, so a request that times out
    /// still holds it until its work has finished: never more than one runs.
    pub(crate) async fn on_head<T: Send + 'static>(
        &self,
        deadline: Instant,
        work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let gate = self.heads_gate.clone();
        let run = async move {
            let permit =
                gate.acquire_owned().await.map_err(|_| ApiError::unavailable("the server is shutting down"))?;
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                work()
            })
            .await
            .map_err(|e| ApiError::internal(format!("inference failed: {e}")))?
        };
        self.within(deadline, run).await
    }

    /// Queues preprocessed images (NHWC) and waits for their logits until `deadline`.
    pub(crate) async fn logits(
        &self,
        inputs: Vec<(mobilenetv2::plan::Shape, Vec<f32>)>,
        deadline: Instant,
    ) -> Result<Vec<Vec<f32>>, ApiError> {
        let mut pending = Vec::with_capacity(inputs.len());
        for (shape, data) in inputs {
            pending.push(
                self.batcher
                    .submit(shape, data, None)
                    .ok_or_else(|| ApiError::unavailable("the server is shutting down"))?,
            );
        }
        self.wait(pending, deadline).await
    }

    async fn wait(
        &self,
        pending: Vec<tokio::sync::oneshot::Receiver<batch::Reply>>,
        deadline: Instant,
    ) -> Result<Vec<Vec<f32>>, ApiError> {
        let work = async {
            let mut out = Vec::with_capacity(pending.len());
            for rx in pending {
                match rx.await {
                    Ok(Ok(logits)) => out.push(logits),
                    Ok(Err(e)) => return Err(ApiError::internal(format!("inference failed: {e}"))),
                    Err(_) => return Err(ApiError::internal("the inference worker stopped")),
                }
            }
            Ok(out)
        };
        self.within(deadline, work).await
    }

    async fn within<T>(
        &self,
        deadline: Instant,
        work: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        tokio::time::timeout_at(deadline.into(), work).await.unwrap_or_else(|_| {
            Err(ApiError::unavailable(format!(
                "the request timed out after {} ms waiting for the engine (--timeout-ms)",
                self.config.timeout.as_millis()
            )))
        })
    }

    /// A place among the requests whose bodies are read and decoded now (at most
    /// `max_batch`, enough to keep the engine's batches full), waited for until `deadline`.
    /// The other admitted requests wait before reading their bodies, whose bytes stay in the
    /// kernel's socket buffers, not in the server's memory. Drop it once the images are
    /// decoded.
    pub(crate) async fn reading(&self, deadline: Instant) -> Result<OwnedSemaphorePermit, ApiError> {
        let wait = async {
            self.readers.clone().acquire_owned().await.map_err(|_| ApiError::unavailable("the server is shutting down"))
        };
        self.within(deadline, wait).await
    }

    /// The whole body, at most `max_body` bytes, arriving before `deadline`. A body whose
    /// declared length (Content-Length) is over the limit is refused before any byte is read;
    /// otherwise the bytes are gathered into one buffer of that length as they arrive.
    pub(crate) async fn read_body(&self, body: Body, deadline: Instant) -> Result<Bytes, ApiError> {
        let limit = self.config.max_body;
        let too_large =
            || ApiError::too_large(format!("the request body is larger than the limit of {limit} bytes (--max-body)"));
        let declared = body.size_hint().lower();
        if declared > limit as u64 {
            return Err(too_large());
        }
        let read = async move {
            let mut body = body;
            let mut buf = Vec::with_capacity(declared as usize);
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > limit {
                        return Err(too_large());
                    }
                    buf.extend_from_slice(&data);
                }
            }
            Ok(Bytes::from(buf))
        };
        match tokio::time::timeout_at(deadline.into(), read).await {
            Err(_) => Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within {} ms (--timeout-ms)", self.config.timeout.as_millis()),
            )),
            Ok(r) => r,
        }
    }
}

/// An admitted request: holds its place in the queue until answered.
pub(crate) struct Admitted {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
    pub deadline: Instant,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.metrics.inflight_add(-1);
    }
}

/// Counts every routed request by its route pattern and status, with its latency.
async fn track(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |m| m.as_str()).to_owned();
    let t = Instant::now();
    let r = next.run(req).await;
    app.metrics.request(&route, r.status().as_u16(), t.elapsed().as_secs_f64());
    r
}

async fn not_found(State(app): State<Arc<App>>, method: Method, uri: Uri) -> ApiError {
    app.metrics.request("unmatched", 404, 0.0);
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on {}", uri.path()))
}

/// Largest read buffer of one connection. hyper's default (about 400 KB) is kept by every
/// keep-alive connection once one upload has filled it: 64 connections then hold 26 MB of
/// buffers. Bodies are gathered by [`App::read_body`] anyway, so 64 KB reads cost nothing.
const CONNECTION_BUFFER: usize = 64 << 10;

/// Serves HTTP/1.1 until `shutdown` resolves, then stops accepting, lets every connection
/// finish the request it is answering (and close), the batching worker answer everything
/// queued, and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = app.router();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.max_buf_size(CONNECTION_BUFFER);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Each connection task holds a sender; `recv` answers None once they have all ended.
    let (open_tx, mut open_rx) = tokio::sync::mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of file descriptors and the like: the listener is fine, try again shortly.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let (mut stop, open) = (stop_rx.clone(), open_tx.clone());
        tokio::spawn(async move {
            let _open = open;
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {
                    // Finish the request in flight, then close.
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(open_tx);
    let _ = open_rx.recv().await;
    let a = app.clone();
    // Joining the worker blocks; not on the runtime's threads.
    let _ = tokio::task::spawn_blocking(move || a.close()).await;
    Ok(())
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Model(#[from] mobilenetv2::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("server error: {0}")]
    Serve(std::io::Error),
}

/// The `mnv2 serve` main loop: listens on `addr`, calls `on_listen` with the bound address,
/// serves until SIGINT or SIGTERM, drains and returns.
pub fn run(
    model: Model,
    heads: Heads,
    config: Config,
    addr: SocketAddr,
    on_listen: impl FnOnce(SocketAddr),
) -> Result<(), StartError> {
    let app = App::with_heads(model, heads, config)?;
    // The runtime's threads only parse HTTP and move bytes (decoding runs on the blocking
    // pool, inference on the engine's threads): two workers keep up with far more requests than
    // the engine can answer, and every extra thread is one more glibc malloc arena holding
    // freed memory. The blocking pool runs at most `threads` decodes, one detection or
    // segmentation and the final drain.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores.min(2))
        .max_blocking_threads(app.config.threads + 2)
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })?;
        on_listen(listener.local_addr().map_err(StartError::Serve)?);
        serve(listener, app, shutdown_signal()).await.map_err(StartError::Serve)
    })
}

/// SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    eprintln!("mnv2 serve: shutting down, finishing the requests in flight");
}
