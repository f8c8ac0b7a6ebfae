//! Every route of `mnv2 serve`, in process, with the real ImageNet weights and photos: the
//! answers must equal the library's (`Classifier`) bit for bit, and bad requests get a 4xx
//! JSON error naming the problem while the server keeps serving.
//!
//! Bit-exactness and batching: with several threads the engine splits a lone image across
//! them (partial sums added in another order, so logits differ in the last bits), while in a
//! batch of two or more each image runs whole on one thread, exactly as with one thread. So
//! most tests run one engine thread (every batch composition then gives the library's
//! one-thread answer), and one test checks the two-thread lone-image path against the
//! library with two threads.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use mnv2_serve::{App, Config, Heads};
use mobilenetv2::classify::Classifier;
use mobilenetv2::detect::{Detector, DetectorOptions, PixelDetection};
use mobilenetv2::engine::{Options, Precision};
use mobilenetv2::segment::Segmenter;
use mobilenetv2::{preprocess, Model};
use serde_json::{json, Value};
use tower::ServiceExt;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn weights() -> PathBuf {
    root().join("weights/mobilenet_v2-b0353104.pth")
}

fn photo(name: &str) -> PathBuf {
    root().join("tests/data/images").join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(photo(name)).unwrap()
}

fn config() -> Config {
    Config { threads: 1, ..Config::default() }
}

fn app(config: Config) -> Arc<App> {
    App::new(Model::load(&weights()).unwrap(), config).unwrap()
}

fn classifier(threads: usize) -> Classifier {
    Classifier::new(Model::load(&weights()).unwrap(), Options { threads, ..Options::default() }).unwrap()
}

/// The library's answer for files (one engine thread), as `mnv2 classify --json` prints it,
/// with `image` renamed.
fn library_json(files: &[&str], names: &[&str], top: usize) -> Value {
    library_json_threads(files, names, top, 1)
}

fn library_json_threads(files: &[&str], names: &[&str], top: usize, threads: usize) -> Value {
    let paths: Vec<PathBuf> = files.iter().map(|f| photo(f)).collect();
    // Through text, as a client sees it (f32 probabilities printed shortest, parsed back).
    let text = serde_json::to_string(&classifier(threads).classify_files(&paths, top).unwrap()).unwrap();
    let mut v: Value = serde_json::from_str(&text).unwrap();
    for (entry, name) in v.as_array_mut().unwrap().iter_mut().zip(names) {
        entry["image"] = json!(name);
    }
    v
}

async fn call(router: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
    let r = router.clone().oneshot(req).await.unwrap();
    let (parts, body) = r.into_parts();
    (parts.status, parts.headers, body.collect().await.unwrap().to_bytes())
}

fn post(uri: &str, ctype: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut b = Request::post(uri);
    if let Some(c) = ctype {
        b = b.header(header::CONTENT_TYPE, c);
    }
    b.body(body.into()).unwrap()
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn json_of(b: &Bytes) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(b)))
}

/// A 4xx/5xx JSON error whose message contains `needle`.
fn assert_error(got: (StatusCode, HeaderMap, Bytes), status: StatusCode, needle: &str) {
    let (s, h, b) = got;
    assert_eq!(s, status, "{}", String::from_utf8_lossy(&b));
    assert_eq!(h[header::CONTENT_TYPE], "application/json");
    let v = json_of(&b);
    let msg = v["error"].as_str().unwrap_or_else(|| panic!("no error message: {v}"));
    assert!(msg.contains(needle), "`{msg}` does not mention `{needle}`");
}

const BOUNDARY: &str = "mnv2-test-boundary";

/// A multipart/form-data body from (field name, file name, bytes).
fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut b = Vec::new();
    for (name, file, data) in parts {
        b.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match file {
            Some(f) => b.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
            ),
            None => b.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes()),
        }
        b.extend_from_slice(data);
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    b
}

fn multipart_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

#[tokio::test]
async fn classify_raw_png_equals_the_library() {
    // Two engine threads: a lone image is split across them, as in the library.
    let router = app(Config { threads: 2, ..config() }).router();
    let (s, h, b) = call(&router, post("/v1/classify?top=5", Some("image/png"), read("chelsea.png"))).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(h[header::CONTENT_TYPE], "application/json");
    let got = json_of(&b);
    assert_eq!(got, library_json_threads(&["chelsea.png"], &["body"], 5, 2));
    assert_eq!(got[0]["top"][0]["label"], "Egyptian cat");
    assert_eq!(got[0]["top"].as_array().unwrap().len(), 5);
}

/// `Config::precision` (`mnv2 serve --precision bf16`): the server answers as the library's
/// bf16 classifier does, bit for bit, which is not the fp32 answer (same top-1).
#[tokio::test]
async fn bf16_server_equals_the_bf16_library() {
    let router = app(Config { precision: Some(Precision::Bf16), ..config() }).router();
    let (s, _, b) = call(&router, post("/v1/classify?top=5", Some("image/png"), read("chelsea.png"))).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let options = Options { threads: 1, precision: Some(Precision::Bf16), ..Options::default() };
    let bf16 = Classifier::new(Model::load(&weights()).unwrap(), options).unwrap();
    let text = serde_json::to_string(&bf16.classify_files(&[photo("chelsea.png")], 5).unwrap()).unwrap();
    let mut want: Value = serde_json::from_str(&text).unwrap();
    want[0]["image"] = json!("body");
    let got = json_of(&b);
    assert_eq!(got, want);
    let fp32 = library_json(&["chelsea.png"], &["body"], 5);
    assert_ne!(got, fp32, "bf16 gave the fp32 answer");
    assert_eq!(got[0]["top"][0]["label"], fp32[0]["top"][0]["label"]);
}

#[tokio::test]
async fn classify_without_content_type_and_top_parameter() {
    let router = app(config()).router();
    let (s, _, b) = call(&router, post("/v1/classify?top=3", None, read("grace_hopper.jpg"))).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(json_of(&b), library_json(&["grace_hopper.jpg"], &["body"], 3));
    let (s, _, b) = call(&router, post("/v1/classify", Some("application/octet-stream"), read("chelsea.png"))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(json_of(&b)[0]["top"].as_array().unwrap().len(), 5, "top defaults to 5");
}

#[tokio::test]
async fn classify_multipart_images_in_order() {
    let router = app(config()).router();
    let (cat, hopper) = (read("chelsea.png"), read("grace_hopper.jpg"));
    let body = multipart(&[
        ("image", Some("hopper.jpg"), &hopper),
        ("comment", None, b"ignored"),
        ("image", Some("cat.png"), &cat),
        ("image", None, &cat),
    ]);
    let (s, _, b) = call(&router, post("/v1/classify?top=2", Some(&multipart_type()), body)).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let expect =
        library_json(&["grace_hopper.jpg", "chelsea.png", "chelsea.png"], &["hopper.jpg", "cat.png", "image[2]"], 2);
    assert_eq!(json_of(&b), expect);
}

/// The start of a PNG claiming `w` x `h` pixels: signature, IHDR and the first bytes of an
/// IDAT chunk (valid CRCs), as a decompression bomb would begin.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }
    fn chunk(png: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        let body = [kind, data].concat();
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        png.extend_from_slice(&body);
        png.extend_from_slice(&crc32(&body).to_be_bytes());
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &[&w.to_be_bytes()[..], &h.to_be_bytes(), &[8, 2, 0, 0, 0]].concat());
    // zlib: header, then a stored-nothing start of deflate data; the rest never comes.
    chunk(&mut png, b"IDAT", &[0x78, 0x9c, 0xec, 0xc1, 0x01, 0x0d, 0x00, 0x00]);
    png
}

#[tokio::test]
async fn bad_requests_get_json_errors_and_the_server_keeps_serving() {
    let router = app(Config { max_body: 1 << 20, ..config() }).router();
    let png = read("chelsea.png");
    let jpg = read("grace_hopper.jpg");
    let c = |ct: Option<&str>, body: Vec<u8>| post("/v1/classify", ct, body);

    assert_error(call(&router, c(Some("image/png"), vec![])).await, StatusCode::BAD_REQUEST, "body is empty");
    assert_error(
        call(&router, c(Some("text/plain"), b"hello".to_vec())).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "content type `text/plain`",
    );
    assert_error(
        call(&router, c(Some("image/png"), b"this is not an image at all".to_vec())).await,
        StatusCode::BAD_REQUEST,
        "not a JPEG or PNG",
    );
    assert_error(
        call(&router, c(Some("image/png"), png[..png.len() / 2].to_vec())).await,
        StatusCode::BAD_REQUEST,
        "body: cannot read image",
    );
    assert_error(
        call(&router, c(Some("image/jpeg"), jpg[..jpg.len() / 2].to_vec())).await,
        StatusCode::BAD_REQUEST,
        "truncated",
    );
    assert_error(
        call(&router, c(Some("image/gif"), b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec())).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "image/gif",
    );
    assert_error(
        call(&router, c(None, b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec())).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "Gif images are not supported",
    );
    // 3.6 gigapixels: refused from the header, before any decoding.
    assert_error(
        call(&router, c(Some("image/png"), png_header(60000, 60000))).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "60000x60000 = 3600000000 pixels",
    );
    assert_error(
        call(&router, c(Some("image/png"), vec![0u8; (1 << 20) + 1])).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "--max-body",
    );
    assert_error(
        call(&router, post("/v1/classify?top=0", Some("image/png"), png.clone())).await,
        StatusCode::BAD_REQUEST,
        "top=`0`",
    );
    assert_error(
        call(&router, post("/v1/classify?top=1001", Some("image/png"), png.clone())).await,
        StatusCode::BAD_REQUEST,
        "from 1 to 1000",
    );
    // Multipart: no boundary, garbage, no image part, an empty part, an undecodable part.
    assert_error(
        call(&router, c(Some("multipart/form-data"), png.clone())).await,
        StatusCode::BAD_REQUEST,
        "multipart",
    );
    assert_error(
        call(&router, c(Some(&multipart_type()), b"--nonsense\r\n\r\n".to_vec())).await,
        StatusCode::BAD_REQUEST,
        "multipart",
    );
    let mut cut = multipart(&[("image", Some("a.png"), &png)]);
    cut.truncate(cut.len() - 30);
    assert_error(call(&router, c(Some(&multipart_type()), cut)).await, StatusCode::BAD_REQUEST, "malformed multipart");
    assert_error(
        call(&router, c(Some(&multipart_type()), multipart(&[("photo", Some("a.png"), &png)]))).await,
        StatusCode::BAD_REQUEST,
        "no `image` part",
    );
    assert_error(
        call(&router, c(Some(&multipart_type()), multipart(&[("image", Some("a.png"), b"")]))).await,
        StatusCode::BAD_REQUEST,
        "`a.png` is empty",
    );
    assert_error(
        call(&router, c(Some(&multipart_type()), multipart(&[("image", Some("notes.txt"), b"plain text")]))).await,
        StatusCode::BAD_REQUEST,
        "notes.txt: not a JPEG or PNG",
    );
    // Still serving.
    let (s, _, b) = call(&router, c(Some("image/png"), png)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(json_of(&b)[0]["top"][0]["label"], "Egyptian cat");
}

/// Multipart bodies above axum's default 2 MB limit are read under --max-body only (they
/// were refused as malformed before).
#[tokio::test]
async fn a_large_multipart_body_under_max_body() {
    let router = app(config()).router();
    let png = read("chelsea.png");
    let parts: Vec<(&str, Option<&str>, &[u8])> = (0..12).map(|_| ("image", Some("c.png"), &png[..])).collect();
    let body = multipart(&parts);
    assert!(body.len() > 2 << 20);
    let (s, _, b) = call(&router, post("/v1/classify?top=1", Some(&multipart_type()), body.clone())).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let v = json_of(&b);
    assert_eq!(v.as_array().unwrap().len(), 12);
    assert!(v.as_array().unwrap().iter().all(|e| e["top"][0]["label"] == "Egyptian cat"), "{v}");
    // And --max-body still applies to it.
    let small = app(Config { max_body: 1 << 20, ..config() }).router();
    assert_error(
        call(&small, post("/v1/classify", Some(&multipart_type()), body)).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "--max-body",
    );
}

#[tokio::test]
async fn too_many_images_in_one_request() {
    let router = app(Config { max_images: 2, ..config() }).router();
    let png = read("chelsea.png");
    let body = multipart(&[("image", None, &png), ("image", None, &png), ("image", None, &png)]);
    assert_error(
        call(&router, post("/v1/classify", Some(&multipart_type()), body)).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "more than 2 images",
    );
}

#[tokio::test]
async fn detect_and_segment_without_their_models_answer_501() {
    let router = app(config()).router();
    let png = read("chelsea.png");
    assert_error(
        call(&router, post("/v1/detect", Some("image/png"), png.clone())).await,
        StatusCode::NOT_IMPLEMENTED,
        "no detector loaded (start with --detector)",
    );
    assert_error(
        call(&router, post("/v1/segment", Some("image/png"), png)).await,
        StatusCode::NOT_IMPLEMENTED,
        "no segmenter loaded (start with --segmenter)",
    );
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    let router = app(config()).router();
    assert_error(call(&router, get("/v1/nothing")).await, StatusCode::NOT_FOUND, "no route for GET /v1/nothing");
    assert_error(call(&router, get("/v1/classify")).await, StatusCode::METHOD_NOT_ALLOWED, "GET is not allowed");
}

#[tokio::test]
async fn page_openapi_and_metrics() {
    let router = app(config()).router();
    let (s, h, b) = call(&router, get("/")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(h[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
    let page = String::from_utf8(b.to_vec()).unwrap();
    assert!(page.contains("Choose a photo") && page.contains("/v1/classify"));
    // Offline: nothing is loaded from another host.
    assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("//cdn"));

    let (s, _, b) = call(&router, get("/openapi.json")).await;
    assert_eq!(s, StatusCode::OK);
    let doc = json_of(&b);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for p in ["/v1/classify", "/v1/detect", "/v1/segment"] {
        assert!(doc["paths"][p]["post"]["responses"].is_object(), "{p} missing");
    }

    call(&router, post("/v1/classify", Some("image/png"), read("chelsea.png"))).await;
    call(&router, post("/v1/classify", Some("text/plain"), "x")).await;
    let (s, h, b) = call(&router, get("/metrics")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(h[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(b.to_vec()).unwrap();
    for needle in [
        "mnv2_requests_total{route=\"/v1/classify\",code=\"200\"} 1\n",
        "mnv2_requests_total{route=\"/v1/classify\",code=\"415\"} 1\n",
        "mnv2_request_errors_total{route=\"/v1/classify\",code=\"415\"} 1\n",
        "mnv2_request_duration_seconds_count{route=\"/v1/classify\"} 2\n",
        "mnv2_batch_size_count 1\n",
        "mnv2_batch_size_sum 1\n",
        "mnv2_inference_duration_seconds_count 1\n",
        "mnv2_queue_depth 0\n",
        "mnv2_inflight_requests 0\n",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
}

#[tokio::test]
async fn concurrent_requests_run_as_one_batch() {
    // Up to 4 images per batch; the first waits (long enough on a loaded machine) for the rest.
    let app = app(Config { max_batch: 4, batch_wait: Duration::from_secs(5), ..config() });
    let router = app.router();
    let png = read("chelsea.png");
    let jpg = read("grace_hopper.jpg");
    let req = |b: &Vec<u8>| call(&router, post("/v1/classify", None, b.clone()));
    let (a, b, c, d) = tokio::join!(req(&png), req(&jpg), req(&png), req(&jpg));
    let cat = library_json(&["chelsea.png"], &["body"], 5);
    let hopper = library_json(&["grace_hopper.jpg"], &["body"], 5);
    for (r, expect) in [(a, &cat), (b, &hopper), (c, &cat), (d, &hopper)] {
        assert_eq!(r.0, StatusCode::OK);
        assert_eq!(&json_of(&r.2), expect, "a batched answer differs from the library's");
    }
    let text = app.metrics.render();
    assert!(text.contains("mnv2_batch_size_count 1\n") && text.contains("mnv2_batch_size_sum 4\n"), "{text}");
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after() {
    let router = app(Config { queue: 1, ..config() }).router();
    let png = read("chelsea.png");
    let req = || call(&router, post("/v1/classify", None, png.clone()));
    // Polled together: the first is admitted, the others find the queue full.
    let (a, b, c) = tokio::join!(req(), req(), req());
    assert_eq!(a.0, StatusCode::OK);
    for r in [b, c] {
        assert_eq!(r.1[header::RETRY_AFTER], "1");
        assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "busy");
    }
    assert_eq!(req().await.0, StatusCode::OK, "the queue frees up");
}

#[tokio::test]
async fn a_request_that_waits_too_long_times_out() {
    // The batch waits 1 s for a second image that never comes; the request allows 50 ms.
    let router = app(Config {
        max_batch: 2,
        batch_wait: Duration::from_secs(1),
        timeout: Duration::from_millis(50),
        ..config()
    })
    .router();
    let r = call(&router, post("/v1/classify", None, read("chelsea.png"))).await;
    assert_eq!(r.1[header::RETRY_AFTER], "1");
    assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "timed out after 50 ms");
}

/// The preprocessed photo as NCHW values, and the library's logits for it.
fn chelsea_input() -> (Vec<usize>, Vec<f32>, Vec<f32>) {
    let c = classifier(1);
    let img = preprocess::decode(&photo("chelsea.png")).unwrap();
    let logits = c.logits(std::slice::from_ref(&img)).unwrap().data;
    let (h, w) = c.input_size();
    let pre = &c.model().preprocess;
    let nhwc = preprocess::to_tensor(&preprocess::transform(&img, pre, h, w).unwrap(), pre);
    let (dims, nchw) = mobilenetv2::Batch::new(1, mobilenetv2::plan::Shape::new(h, w, 3), nhwc).unwrap().to_nchw();
    (dims, nchw, logits)
}

fn logits_of(v: &Value) -> Vec<f32> {
    v["outputs"][0]["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

#[tokio::test]
async fn v2_health_and_metadata() {
    let router = app(config()).router();
    for (uri, key) in
        [("/v2/health/live", "live"), ("/v2/health/ready", "ready"), ("/v2/models/mobilenet_v2/ready", "ready")]
    {
        let (s, _, b) = call(&router, get(uri)).await;
        assert_eq!(s, StatusCode::OK, "{uri}");
        assert_eq!(json_of(&b)[key], true, "{uri}");
    }
    let (s, _, b) = call(&router, get("/v2")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(json_of(&b)["extensions"].as_array().unwrap().contains(&json!("binary_tensor_data")));
    for uri in ["/v2/models/mobilenet_v2", "/v2/models/mobilenet_v2/versions/1"] {
        let (s, _, b) = call(&router, get(uri)).await;
        assert_eq!(s, StatusCode::OK);
        let m = json_of(&b);
        assert_eq!(m["name"], "mobilenet_v2");
        assert_eq!(m["inputs"][0], json!({"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]}));
        assert_eq!(m["inputs"][1], json!({"name": "image", "datatype": "BYTES", "shape": [-1]}));
        assert_eq!(m["outputs"][0], json!({"name": "logits", "datatype": "FP32", "shape": [-1, 1000]}));
    }
    assert_error(call(&router, get("/v2/models/resnet50")).await, StatusCode::NOT_FOUND, "unknown model `resnet50`");
    assert_error(
        call(&router, get("/v2/models/mobilenet_v2/versions/7")).await,
        StatusCode::NOT_FOUND,
        "no version `7`",
    );
}

#[tokio::test]
async fn v2_infer_fp32_json_and_binary_equal_the_library() {
    let router = app(config()).router();
    let (dims, nchw, expect) = chelsea_input();
    let uri = "/v2/models/mobilenet_v2/infer";

    // JSON in, JSON out.
    let req = json!({"id": "42", "inputs": [{"name": "input", "shape": dims, "datatype": "FP32", "data": nchw}]});
    let (s, _, b) = call(&router, post(uri, Some("application/json"), req.to_string())).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let v = json_of(&b);
    assert_eq!(v["id"], "42");
    assert_eq!(v["model_name"], "mobilenet_v2");
    assert_eq!(v["outputs"][0]["shape"], json!([1, 1000]));
    assert_eq!(logits_of(&v), expect);

    // Binary in (Triton's extension), binary out.
    let header = json!({
        "inputs": [{"name": "input", "shape": dims, "datatype": "FP32", "parameters": {"binary_data_size": nchw.len() * 4}}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": true}}],
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend(nchw.iter().flat_map(|v| v.to_le_bytes()));
    let req = Request::post(uri)
        .header("Inference-Header-Content-Length", header.len())
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::from(body))
        .unwrap();
    let (s, h, b) = call(&router, req).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let n: usize = h["inference-header-content-length"].to_str().unwrap().parse().unwrap();
    let v = json_of(&b.slice(..n));
    assert_eq!(v["outputs"][0]["parameters"]["binary_data_size"], 4000);
    let got: Vec<f32> = b[n..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(got, expect);

    // Two images in one request, nested JSON data.
    let per = nchw.len();
    let nested: Vec<Vec<f32>> = vec![nchw.clone(), nchw.clone()];
    let req = json!({"inputs": [{"name": "input", "shape": [2, 3, 224, 224], "datatype": "FP32", "data": nested}]});
    let (s, _, b) = call(&router, post(uri, None, req.to_string())).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let got = logits_of(&json_of(&b));
    assert_eq!(got.len(), 2000);
    assert_eq!(&got[..1000], &expect[..]);
    assert_eq!(&got[1000..], &expect[..]);
    assert_eq!(per, 3 * 224 * 224);
}

#[tokio::test]
async fn v2_infer_bytes_images() {
    use base64::Engine as _;
    let router = app(config()).router();
    let (_, _, expect) = chelsea_input();
    let png = read("chelsea.png");
    let uri = "/v2/models/mobilenet_v2/versions/1/infer";
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let req = json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64]}]});
    let (s, _, b) = call(&router, post(uri, Some("application/json"), req.to_string())).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(logits_of(&json_of(&b)), expect);

    // Binary: each element is a 4-byte little-endian length, then the bytes.
    let mut data = Vec::new();
    for _ in 0..2 {
        data.extend_from_slice(&(png.len() as u32).to_le_bytes());
        data.extend_from_slice(&png);
    }
    let header = json!({"inputs": [{"name": "image", "shape": [2, 1], "datatype": "BYTES",
                                    "parameters": {"binary_data_size": data.len()}}]})
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(&data);
    let req =
        Request::post(uri).header("Inference-Header-Content-Length", header.len()).body(Body::from(body)).unwrap();
    let (s, _, b) = call(&router, req).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let got = logits_of(&json_of(&b));
    assert_eq!(&got[..1000], &expect[..]);
    assert_eq!(&got[1000..], &expect[..]);
}

#[tokio::test]
async fn v2_bad_requests() {
    let router = app(config()).router();
    let uri = "/v2/models/mobilenet_v2/infer";
    let j = |v: Value| post(uri, Some("application/json"), v.to_string());
    let small = |shape: Value, data: Value| json!({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": data}]});
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (
            post(uri, Some("application/json"), "{\"inputs\": ["),
            StatusCode::BAD_REQUEST,
            "malformed inference request JSON",
        ),
        (post(uri, Some("application/json"), "[1, 2]"), StatusCode::BAD_REQUEST, "malformed inference request JSON"),
        (j(json!({"inputs": []})), StatusCode::BAD_REQUEST, "has 0 inputs"),
        (j(small(json!([1, 3, 2]), json!(vec![0.0; 6]))), StatusCode::BAD_REQUEST, "is not [N, 3, H, W]"),
        (j(small(json!([1, 3, 2, 2]), json!(vec![0.0; 5]))), StatusCode::BAD_REQUEST, "needs 12 values, got 5"),
        (j(small(json!([1, 3, 2, 2]), json!(vec![0.0; 13]))), StatusCode::BAD_REQUEST, "more than the 12 values"),
        (j(small(json!([1, 3, 2, 2]), json!(vec!["a"; 12]))), StatusCode::BAD_REQUEST, "not a number"),
        (j(small(json!([1, 3, 0, 2]), json!([]))), StatusCode::BAD_REQUEST, "N, H, W >= 1"),
        (j(small(json!([1, 3, 60000, 60000]), json!([]))), StatusCode::PAYLOAD_TOO_LARGE, "--max-pixels"),
        (j(small(json!([1000, 3, 2, 2]), json!([]))), StatusCode::PAYLOAD_TOO_LARGE, "--max-images"),
        (
            j(json!({"inputs": [{"name": "input", "shape": [1, 3, 2, 2], "datatype": "INT8", "data": vec![0; 12]}]})),
            StatusCode::BAD_REQUEST,
            "datatype INT8",
        ),
        (
            j(json!({"inputs": [{"name": "pixels", "shape": [1], "datatype": "FP32", "data": [0]}]})),
            StatusCode::BAD_REQUEST,
            "unknown input `pixels`",
        ),
        (
            j(json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]})),
            StatusCode::BAD_REQUEST,
            "not base64",
        ),
        (
            j(json!({"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": ["aGVsbG8="]}]})),
            StatusCode::BAD_REQUEST,
            "says 2 elements, the data holds 1",
        ),
        (
            j(json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["aGVsbG8="]}]})),
            StatusCode::BAD_REQUEST,
            "image[0]: not a JPEG or PNG",
        ),
        (
            j(json!({"inputs": [{"name": "input", "shape": [1, 3, 2, 2], "datatype": "FP32", "data": vec![0; 12]}],
                     "outputs": [{"name": "probs"}]})),
            StatusCode::BAD_REQUEST,
            "unknown output `probs`",
        ),
        (post(uri, Some("text/csv"), "1,2,3"), StatusCode::UNSUPPORTED_MEDIA_TYPE, "text/csv"),
    ];
    for (req, status, needle) in cases {
        assert_error(call(&router, req).await, status, needle);
    }
    // The binary extension: lengths that do not add up, and a NaN only binary data can carry.
    let bin = |header: Value, len: Option<&str>, data: &[u8]| {
        let h = header.to_string();
        let mut body = h.clone().into_bytes();
        body.extend_from_slice(data);
        Request::post(uri)
            .header("Inference-Header-Content-Length", len.map_or(h.len().to_string(), str::to_owned))
            .body(Body::from(body))
            .unwrap()
    };
    let fp = |size: usize| {
        json!({"inputs": [{"name": "input", "shape": [1, 3, 2, 2], "datatype": "FP32",
                                              "parameters": {"binary_data_size": size}}]})
    };
    assert_error(
        call(&router, bin(fp(48), Some("99999"), &[0; 48])).await,
        StatusCode::BAD_REQUEST,
        "Inference-Header-Content-Length",
    );
    assert_error(call(&router, bin(fp(48), None, &[0; 20])).await, StatusCode::BAD_REQUEST, "only 20 bytes");
    assert_error(call(&router, bin(fp(40), None, &[0; 40])).await, StatusCode::BAD_REQUEST, "needs 48 bytes");
    assert_error(
        call(&router, bin(fp(40), None, &[0; 48])).await,
        StatusCode::BAD_REQUEST,
        "8 bytes of binary data follow",
    );
    let mut nan = vec![0u8; 48];
    nan[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    assert_error(call(&router, bin(fp(48), None, &nan)).await, StatusCode::BAD_REQUEST, "flat index 2 is not finite");
    let bytes = json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}]});
    assert_error(
        call(&router, bin(bytes, None, &[200, 0, 0, 0, 1, 2])).await,
        StatusCode::BAD_REQUEST,
        "says 200 bytes but 2 remain",
    );
    assert_error(
        call(
            &router,
            j(json!({"inputs": [{"name": "input", "shape": [1, 3, 2, 2], "datatype": "FP32", "data": vec![0; 12]}]})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "2x2 images",
    );
    // Still serving.
    let (s, _, _) = call(&router, get("/v2/health/ready")).await;
    assert_eq!(s, StatusCode::OK);
}

/// Over a real socket: a request in flight when shutdown begins is answered, then the server
/// stops (and the batching worker with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_the_request_in_flight() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = app(config());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(mnv2_serve::serve(listener, app.clone(), async {
        let _ = stopped.await;
    }));
    let png = read("chelsea.png");
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/classify HTTP/1.1\r\nHost: {addr}\r\nContent-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        png.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&png).await.unwrap();
    // Shut down once the request is admitted (in flight), not before.
    while app.metrics.inflight() == 0 {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stop.send(()).unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("Egyptian cat"), "{answer}");
    server.await.unwrap().unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "still listening after shutdown");
    assert!(app.metrics.render().contains("mnv2_batch_size_count 1\n"));
}

// ---- /v1/detect and /v1/segment, with their models ----

fn detector(threshold: f32) -> Detector {
    let path = root().join("weights/ssdlite_mobilenet_v2_person.pb");
    Detector::load(&path, DetectorOptions { threshold, threads: 1, ..DetectorOptions::default() }).unwrap()
}

fn segmenter() -> Segmenter {
    let m = Model::load(&root().join("tests/data/deeplab/w035.safetensors")).unwrap();
    Segmenter::new(m, Options { threads: 1, ..Options::default() }).unwrap()
}

fn astronaut() -> PathBuf {
    root().join("weights/calib/astronaut.png")
}

/// What `mnv2 detect --json --threshold T` prints for one photo (its code, with the library's
/// own threshold), `image` renamed, through text as a client reads it.
fn detect_cli_json(path: &std::path::Path, name: &str, threshold: f32) -> Value {
    let det = detector(threshold);
    let image = preprocess::decode(path).unwrap();
    let found = det.detect(&image).unwrap();
    let row =
        |d: &PixelDetection| json!({"box": d.bbox, "score": d.score, "class": d.class, "label": det.label(d.class)});
    let v = json!({"image": name, "size": [image.width, image.height], "detections": found.iter().map(row).collect::<Vec<_>>()});
    serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap()
}

#[tokio::test]
async fn detect_equals_the_library_at_each_threshold() {
    let heads = Heads { detector: Some(detector(0.0)), segmenter: None };
    let app = App::with_heads(Model::load(&weights()).unwrap(), heads, config()).unwrap();
    let router = app.router();
    let png = std::fs::read(astronaut()).unwrap();
    let (s, _, b) = call(&router, post("/v1/detect", Some("image/png"), png.clone())).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let got = json_of(&b);
    assert_eq!(got, json!([detect_cli_json(&astronaut(), "body", 0.5)]));
    // The real person detector finds the astronaut.
    let dets = got[0]["detections"].as_array().unwrap();
    assert!(!dets.is_empty() && dets[0]["label"] == "person", "{got}");
    for t in [0.05f32, 0.3, 0.9] {
        let (s, _, b) = call(&router, post(&format!("/v1/detect?threshold={t}"), Some("image/png"), png.clone())).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(json_of(&b), json!([detect_cli_json(&astronaut(), "body", t)]), "threshold {t}");
    }
    // Two photos in one multipart request, in order.
    let body = multipart(&[("image", Some("a.png"), &png), ("image", Some("cat.png"), &read("chelsea.png"))]);
    let (s, _, b) = call(&router, post("/v1/detect?threshold=0.3", Some(&multipart_type()), body)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        json_of(&b),
        json!([detect_cli_json(&astronaut(), "a.png", 0.3), detect_cli_json(&photo("chelsea.png"), "cat.png", 0.3)])
    );
    // Bad requests: JSON errors, and still serving.
    assert_error(
        call(&router, post("/v1/detect?threshold=2", Some("image/png"), png.clone())).await,
        StatusCode::BAD_REQUEST,
        "threshold=`2`",
    );
    assert_error(
        call(&router, post("/v1/detect", Some("image/png"), "not a png")).await,
        StatusCode::BAD_REQUEST,
        "body",
    );
    assert_error(
        call(&router, post("/v1/detect", Some("image/png"), png_header(60000, 60000))).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "60000x60000",
    );
    assert_error(
        call(&router, post("/v1/detect", Some("text/plain"), "x")).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "text/plain",
    );
    let (s, _, _) = call(&router, post("/v1/detect", Some("image/png"), png)).await;
    assert_eq!(s, StatusCode::OK);
    // Segmentation is not loaded on this server.
    assert_error(
        call(&router, post("/v1/segment", Some("image/png"), read("chelsea.png"))).await,
        StatusCode::NOT_IMPLEMENTED,
        "--segmenter",
    );
    let (s, _, b) = call(&router, get("/v1/models")).await;
    assert_eq!(s, StatusCode::OK);
    let m = json_of(&b);
    assert_eq!(m["detect"], json!({"classes": 1, "labels": ["person"]}));
    assert_eq!(m["segment"], Value::Null);
    assert_eq!(m["classify"], json!({"name": "mobilenet_v2", "classes": 1000}));
}

#[tokio::test]
async fn segment_equals_the_library_as_json_and_png() {
    use base64::Engine as _;
    let heads = Heads { detector: None, segmenter: Some(segmenter()) };
    let app = App::with_heads(Model::load(&weights()).unwrap(), heads, config()).unwrap();
    let router = app.router();
    let lib = segmenter();
    let photo_rgb = preprocess::decode(&photo("chelsea.png")).unwrap();
    let want = lib.segment_image(&photo_rgb).unwrap();
    let want_png = want.to_png().unwrap();

    let (s, h, b) = call(&router, post("/v1/segment", Some("image/png"), read("chelsea.png"))).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(h[header::CONTENT_TYPE], "application/json");
    let got = json_of(&b);
    let fractions: Value = serde_json::from_str(&serde_json::to_string(&lib.fractions(&want)).unwrap()).unwrap();
    assert_eq!(got[0]["image"], "body");
    assert_eq!(
        (got[0]["width"].as_u64(), got[0]["height"].as_u64()),
        (Some(want.width as u64), Some(want.height as u64))
    );
    assert_eq!(got[0]["classes"], fractions);
    let mask = got[0]["mask"].as_str().unwrap().strip_prefix("data:image/png;base64,").unwrap();
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(mask).unwrap(), want_png);

    let mut req = post("/v1/segment", Some("image/png"), read("chelsea.png"));
    req.headers_mut().insert(header::ACCEPT, "image/png".parse().unwrap());
    let (s, h, b) = call(&router, req).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h[header::CONTENT_TYPE], "image/png");
    assert_eq!(b.to_vec(), want_png);

    // One mask per PNG answer; images the network cannot take; still serving.
    let two =
        multipart(&[("image", Some("a.png"), &read("chelsea.png")), ("image", Some("b.png"), &read("chelsea.png"))]);
    let mut req = post("/v1/segment", Some(&multipart_type()), two);
    req.headers_mut().insert(header::ACCEPT, "image/png".parse().unwrap());
    assert_error(call(&router, req).await, StatusCode::BAD_REQUEST, "2 images");
    let mut tiny = Vec::new();
    image::RgbImage::new(8, 8).write_to(&mut std::io::Cursor::new(&mut tiny), image::ImageFormat::Png).unwrap();
    assert_error(call(&router, post("/v1/segment", None, tiny)).await, StatusCode::BAD_REQUEST, "8x8");
    assert_error(
        call(&router, post("/v1/detect", Some("image/png"), read("chelsea.png"))).await,
        StatusCode::NOT_IMPLEMENTED,
        "--detector",
    );
    let (s, _, b) = call(&router, get("/v1/models")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(json_of(&b)["segment"]["classes"], 21);
}

/// At most `max_batch` requests read and decode their bodies at once: here one, held by a
/// client that sends its body slowly; another request waits (its body stays in the socket,
/// not in the server), and is answered once the slow one is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_max_batch_wait_to_read_their_bodies() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = app(Config { max_batch: 1, ..config() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(mnv2_serve::serve(listener, app.clone(), std::future::pending()));
    let body = b"not an image, sent slowly".to_vec();
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/classify HTTP/1.1\r\nHost: {addr}\r\nContent-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&body[..5]).await.unwrap();
    while app.metrics.inflight() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let router = app.router();
    let fast = tokio::spawn(async move { call(&router, post("/v1/classify?top=1", None, read("chelsea.png"))).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!fast.is_finished(), "answered while the only reader was taken");
    assert_eq!(app.metrics.inflight(), 2);
    slow.write_all(&body[5..]).await.unwrap();
    let mut answer = Vec::new();
    slow.read_to_end(&mut answer).await.unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 400"), "{}", String::from_utf8_lossy(&answer));
    let (s, _, b) = fast.await.unwrap();
    assert_eq!(s, StatusCode::OK);
    assert_eq!(json_of(&b)[0]["top"][0]["label"], "Egyptian cat");
}
