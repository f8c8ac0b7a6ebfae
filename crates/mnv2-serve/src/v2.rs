//! The Open Inference Protocol (KServe v2, Triton's HTTP/REST API): health, metadata and
//! inference, with Triton's binary tensor data extension, so that `tritonclient[http]` and
//! KServe clients work unchanged.
//!
//! The model has two inputs, of which a request gives exactly one:
//! - `input`, FP32 `[N, 3, H, W]` (NCHW, already normalised, as PyTorch's model takes it);
//! - `image`, BYTES `[N]` (or `[N, 1]`): encoded JPEG/PNG files, preprocessed by the server.
//!   In JSON each element is a base64 string; in binary data each is a 4-byte little-endian
//!   length then the bytes (Triton's layout).
//!
//! and one output, `logits`, FP32 `[N, classes]`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use mobilenetv2::plan::{Plan, Shape};
use mobilenetv2::Spec;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::{ApiError, App};

/// Triton's header giving the JSON part's length when binary tensor data follows it.
pub const HEADER_LENGTH: &str = "inference-header-content-length";
/// The model version the server reports.
pub const VERSION: &str = "1";

pub async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "mnv2",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
}

pub async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

pub async fn ready() -> Json<Value> {
    Json(json!({ "ready": true }))
}

fn check_model(app: &App, name: &str, version: Option<&str>) -> Result<(), ApiError> {
    if name != app.config.model_name {
        return Err(ApiError::not_found(format!(
            "unknown model `{name}` (this server has `{}`)",
            app.config.model_name
        )));
    }
    if let Some(v) = version.filter(|v| *v != VERSION) {
        return Err(ApiError::not_found(format!("model `{name}` has no version `{v}` (it has `{VERSION}`)")));
    }
    Ok(())
}

fn metadata(app: &App) -> Value {
    let s = app.model.spec();
    json!({
        "name": app.config.model_name,
        "versions": [VERSION],
        "platform": "mnv2",
        "inputs": [
            { "name": "input", "datatype": "FP32", "shape": [-1, 3, s.height, s.width_px] },
            { "name": "image", "datatype": "BYTES", "shape": [-1] },
        ],
        "outputs": [
            { "name": "logits", "datatype": "FP32", "shape": [-1, s.classes] },
        ],
    })
}

pub async fn model_metadata(State(app): State<Arc<App>>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    check_model(&app, &name, None)?;
    Ok(Json(metadata(&app)))
}

pub async fn model_metadata_version(
    State(app): State<Arc<App>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    check_model(&app, &name, Some(&version))?;
    Ok(Json(metadata(&app)))
}

pub async fn model_ready(State(app): State<Arc<App>>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    check_model(&app, &name, None)?;
    Ok(Json(json!({ "name": name, "ready": true })))
}

pub async fn model_ready_version(
    State(app): State<Arc<App>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    check_model(&app, &name, Some(&version))?;
    Ok(Json(json!({ "name": name, "ready": true })))
}

#[derive(Deserialize)]
struct InferRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    inputs: Vec<InferInput>,
    #[serde(default)]
    outputs: Option<Vec<RequestedOutput>>,
}

#[derive(Deserialize)]
struct InferInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Deserialize)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

#[derive(Serialize)]
struct InferResponse {
    model_name: String,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    outputs: Vec<Value>,
}

pub async fn infer(State(app): State<Arc<App>>, Path(name): Path<String>, req: Request) -> Result<Response, ApiError> {
    check_model(&app, &name, None)?;
    run_infer(app, req).await
}

pub async fn infer_version(
    State(app): State<Arc<App>>,
    Path((name, version)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    check_model(&app, &name, Some(&version))?;
    run_infer(app, req).await
}

async fn run_infer(app: Arc<App>, req: Request) -> Result<Response, ApiError> {
    let admitted = app.admit()?;
    let (parts, body) = req.into_parts();
    let reading = app.reading(admitted.deadline).await?;
    let body = app.read_body(body, admitted.deadline).await?;
    let call = decode_infer(&parts.headers, &body, app.model.spec(), &app.config)?;
    drop(body);
    let logits = match call.input {
        InferData::Tensor(inputs) => {
            drop(reading);
            app.logits(inputs, admitted.deadline).await?
        }
        InferData::Images(images) => app.logits_of_images(images, reading, admitted.deadline).await?,
    };
    respond(&app, call.id, logits, call.binary_output)
}

/// An inference request, checked and decoded, ready for the engine.
pub struct InferCall {
    /// The request's `id`, echoed in the response.
    pub id: Option<String>,
    /// Whether `logits` goes back as Triton binary data.
    pub binary_output: bool,
    /// What to run.
    pub input: InferData,
}

/// The one input of an inference request.
pub enum InferData {
    /// `input` (FP32 NCHW), one NHWC image per element.
    Tensor(Vec<(Shape, Vec<f32>)>),
    /// `image` (BYTES), the encoded images with their names for error messages.
    Images(Vec<(String, Bytes)>),
}

/// Parses and checks a v2 inference request (headers and whole body) against the network
/// and the limits, without running anything: every malformed request ends here as a 4xx.
/// The server calls it for `POST /v2/models/{name}/infer`; the fuzz target `serve_v2` calls it
/// with arbitrary bytes.
pub fn decode_infer(
    headers: &HeaderMap,
    body: &Bytes,
    spec: &Spec,
    config: &crate::Config,
) -> Result<InferCall, ApiError> {
    let (request, mut binary) = parse(headers, body)?;
    let [input] = request.inputs.as_slice() else {
        return Err(ApiError::bad_request(format!(
            "the request has {} inputs; give exactly one, `input` (FP32) or `image` (BYTES)",
            request.inputs.len()
        )));
    };
    let binary_output = output_binary(&request)?;
    let raw = take_binary(input, &mut binary)?;
    if !binary.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{} bytes of binary data follow the inputs' binary_data_size",
            binary.len()
        )));
    }
    let input = match (input.name.as_str(), input.datatype.as_str()) {
        ("input", "FP32") => {
            let (dims, values) = fp32_input(input, raw, spec, config)?;
            let [n, c, h, w] = dims;
            let nhwc = mobilenetv2::Batch::from_nchw(&[n, c, h, w], &values)
                .map_err(|e| ApiError::bad_request(format!("input `input`: {e}")))?;
            let shape = Shape::new(h, w, 3);
            InferData::Tensor((0..n).map(|i| (shape, nhwc.image(i).to_vec())).collect())
        }
        ("image", "BYTES") => InferData::Images(bytes_input(input, raw, config.max_images)?),
        ("input" | "image", dt) => {
            return Err(ApiError::bad_request(format!(
                "input `{}` has datatype {dt}; `input` is FP32 and `image` is BYTES",
                input.name
            )))
        }
        (other, _) => {
            return Err(ApiError::bad_request(format!(
                "unknown input `{other}` (the model's inputs are `input`, FP32 [N,3,H,W], and `image`, BYTES [N])"
            )))
        }
    };
    Ok(InferCall { id: request.id, binary_output, input })
}

/// [`decode_infer`] on one byte string, for the fuzz target `serve_v2` and the replay of its
/// committed corpus (tests/fuzz_corpus.rs): the first byte picks the content type (bits 0-1)
/// and whether an Inference-Header-Content-Length header is sent (bit 2), taken then from the
/// next two bytes (little-endian); the rest is the body. The limits are small (4 images of
/// 65,536 pixels) so that inputs reach them. `None` for an empty input.
pub fn decode_harness(data: &[u8]) -> Option<Result<InferCall, ApiError>> {
    let (&mode, rest) = data.split_first()?;
    let mut headers = HeaderMap::new();
    let types = ["application/json", "application/octet-stream", "text/plain", "application/json; charset=utf-8"];
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(types[(mode & 3) as usize]));
    let body = match rest {
        [a, b, body @ ..] if mode & 4 != 0 => {
            headers.insert(HEADER_LENGTH, HeaderValue::from(u16::from_le_bytes([*a, *b])));
            body
        }
        _ => rest,
    };
    let config = crate::Config { max_images: 4, max_pixels: 1 << 16, ..crate::Config::default() };
    Some(decode_infer(&headers, &Bytes::copy_from_slice(body), &Spec::new(1.0, 224), &config))
}

/// The JSON part of the body and the binary data after it (Triton's extension).
fn parse(headers: &HeaderMap, body: &Bytes) -> Result<(InferRequest, Bytes), ApiError> {
    let json_len = match headers.get(HEADER_LENGTH) {
        None => body.len(),
        Some(v) => match v.to_str().ok().and_then(|s| s.trim().parse::<usize>().ok()) {
            Some(n) if n <= body.len() => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "header Inference-Header-Content-Length = {v:?} is not a length within the {}-byte body",
                    body.len()
                )))
            }
        },
    };
    if let Some(ct) = headers.get(header::CONTENT_TYPE).and_then(|c| c.to_str().ok()) {
        let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if !matches!(essence.as_str(), "application/json" | "application/octet-stream" | "") {
            return Err(ApiError::unsupported_media(format!(
                "content type `{essence}` is not accepted: an inference request is application/json \
                 (application/octet-stream with binary tensor data)"
            )));
        }
    }
    let request: InferRequest = serde_json::from_slice(&body[..json_len])
        .map_err(|e| ApiError::bad_request(format!("malformed inference request JSON: {e}")))?;
    Ok((request, body.slice(json_len..)))
}

/// Whether `logits` goes back as binary data: the output's `binary_data` parameter, else the
/// request's `binary_data_output`.
fn output_binary(r: &InferRequest) -> Result<bool, ApiError> {
    let flag = |p: &Option<Map<String, Value>>, key: &str| -> Result<Option<bool>, ApiError> {
        match p.as_ref().and_then(|p| p.get(key)) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(ApiError::bad_request(format!("parameter `{key}` must be true or false, got {v}"))),
        }
    };
    let default = flag(&r.parameters, "binary_data_output")?.unwrap_or(false);
    let mut binary = default;
    for o in r.outputs.iter().flatten() {
        if o.name != "logits" {
            return Err(ApiError::bad_request(format!("unknown output `{}` (the model's output is `logits`)", o.name)));
        }
        binary = flag(&o.parameters, "binary_data")?.unwrap_or(default);
    }
    Ok(binary)
}

/// The input's binary data, when its `binary_data_size` parameter says it has some.
fn take_binary(input: &InferInput, binary: &mut Bytes) -> Result<Option<Bytes>, ApiError> {
    let Some(size) = input.parameters.as_ref().and_then(|p| p.get("binary_data_size")) else {
        return Ok(None);
    };
    let size = size.as_u64().ok_or_else(|| {
        ApiError::bad_request(format!("input `{}`: binary_data_size must be a byte count, got {size}", input.name))
    })? as usize;
    if size > binary.len() {
        return Err(ApiError::bad_request(format!(
            "input `{}`: binary_data_size is {size} but only {} bytes of binary data follow the JSON",
            input.name,
            binary.len()
        )));
    }
    if input.data.is_some() {
        return Err(ApiError::bad_request(format!("input `{}` has both `data` and binary_data_size", input.name)));
    }
    Ok(Some(binary.split_to(size)))
}

/// Shape `[N, 3, H, W]` checked against the limits and the network, and its values.
fn fp32_input(
    input: &InferInput,
    raw: Option<Bytes>,
    spec: &Spec,
    config: &crate::Config,
) -> Result<([usize; 4], Vec<f32>), ApiError> {
    let bad = |m: String| ApiError::bad_request(format!("input `input`: {m}"));
    let dims = match input.shape.as_slice() {
        &[n, 3, h, w] if n >= 1 && h >= 1 && w >= 1 => [n as usize, 3, h as usize, w as usize],
        s => return Err(bad(format!("shape {s:?} is not [N, 3, H, W] with N, H, W >= 1"))),
    };
    let [n, _, h, w] = dims;
    if n > config.max_images {
        return Err(ApiError::too_large(format!(
            "input `input`: {n} images, more than {} (--max-images)",
            config.max_images
        )));
    }
    if (h as u64).checked_mul(w as u64).is_none_or(|p| p > config.max_pixels) {
        return Err(ApiError::too_large(format!(
            "input `input`: {h}x{w} images, more than the limit of {} pixels (--max-pixels)",
            config.max_pixels
        )));
    }
    let count = n * 3 * h * w;
    let values = match (raw, &input.data) {
        (Some(b), _) => {
            if b.len() != count * 4 {
                return Err(bad(format!(
                    "shape {:?} needs {} bytes of FP32 data, got {}",
                    input.shape,
                    count * 4,
                    b.len()
                )));
            }
            b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<f32>>()
        }
        (None, Some(data)) => {
            let mut v = Vec::with_capacity(count);
            flatten_numbers(data, &mut v, count).map_err(bad)?;
            if v.len() != count {
                return Err(bad(format!("shape {:?} needs {count} values, got {}", input.shape, v.len())));
            }
            v
        }
        (None, None) => return Err(bad("no `data` and no binary data".into())),
    };
    if let Some(i) = mobilenetv2::tensor::first_non_finite(&values) {
        return Err(bad(format!("value {} at flat index {i} is not finite", values[i])));
    }
    Plan::new(&Spec { height: h, width_px: w, ..spec.clone() }).map_err(|e| bad(format!("{h}x{w} images: {e}")))?;
    Ok((dims, values))
}

/// Row-major numbers from a flat or nested JSON array (at most `limit` of them).
fn flatten_numbers(v: &Value, out: &mut Vec<f32>, limit: usize) -> Result<(), String> {
    match v {
        Value::Number(x) => {
            if out.len() == limit {
                return Err(format!("more than the {limit} values the shape holds"));
            }
            out.push(x.as_f64().ok_or_else(|| format!("{x} is not a number"))? as f32);
            Ok(())
        }
        Value::Array(a) => a.iter().try_for_each(|x| flatten_numbers(x, out, limit)),
        other => Err(format!("data holds {other}, not a number")),
    }
}

/// The encoded images of a BYTES input.
fn bytes_input(input: &InferInput, raw: Option<Bytes>, max_images: usize) -> Result<Vec<(String, Bytes)>, ApiError> {
    let bad = |m: String| ApiError::bad_request(format!("input `image`: {m}"));
    let n = match input.shape.as_slice() {
        &[n] | &[n, 1] if n >= 1 => n as usize,
        s => return Err(bad(format!("shape {s:?} is not [N] or [N, 1] with N >= 1"))),
    };
    if n > max_images {
        return Err(ApiError::too_large(format!("input `image`: {n} images, more than {max_images} (--max-images)")));
    }
    let mut out = Vec::with_capacity(n);
    match (raw, &input.data) {
        (Some(mut b), _) => {
            while !b.is_empty() {
                if b.len() < 4 {
                    return Err(bad(format!("{} stray bytes after the last element", b.len())));
                }
                let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
                let _ = b.split_to(4);
                if len > b.len() {
                    return Err(bad(format!("element {} says {len} bytes but {} remain", out.len(), b.len())));
                }
                out.push(b.split_to(len));
            }
        }
        (None, Some(data)) => {
            let mut strings = Vec::new();
            flatten_strings(data, &mut strings).map_err(bad)?;
            for (i, s) in strings.into_iter().enumerate() {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(|e| bad(format!("element {i} is not base64: {e}")))?;
                out.push(Bytes::from(bytes));
            }
        }
        (None, None) => return Err(bad("no `data` and no binary data".into())),
    }
    if out.len() != n {
        return Err(bad(format!("shape {:?} says {n} elements, the data holds {}", input.shape, out.len())));
    }
    Ok(out.into_iter().enumerate().map(|(i, b)| (format!("image[{i}]"), b)).collect())
}

fn flatten_strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) -> Result<(), String> {
    match v {
        Value::String(s) => {
            out.push(s);
            Ok(())
        }
        Value::Array(a) => a.iter().try_for_each(|x| flatten_strings(x, out)),
        other => Err(format!("data holds {other}, not a base64 string")),
    }
}

fn respond(app: &App, id: Option<String>, logits: Vec<Vec<f32>>, binary: bool) -> Result<Response, ApiError> {
    let n = logits.len();
    let classes = app.model.spec().classes;
    let mut output = json!({ "name": "logits", "datatype": "FP32", "shape": [n, classes] });
    let flat: Vec<f32> = logits.into_iter().flatten().collect();
    let response = |outputs| InferResponse {
        model_name: app.config.model_name.clone(),
        model_version: VERSION.into(),
        id,
        outputs,
    };
    if !binary {
        output["data"] = json!(flat);
        return Ok(Json(response(vec![output])).into_response());
    }
    output["parameters"] = json!({ "binary_data_size": flat.len() * 4 });
    let mut body = serde_json::to_vec(&response(vec![output])).map_err(|e| ApiError::internal(e.to_string()))?;
    let json_len = body.len();
    body.reserve(flat.len() * 4);
    for v in flat {
        body.extend_from_slice(&v.to_le_bytes());
    }
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    r.headers_mut().insert(HEADER_LENGTH, HeaderValue::from(json_len));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(body: &str) -> Result<InferCall, ApiError> {
        decode_infer(&HeaderMap::new(), &Bytes::from(body.to_owned()), &Spec::new(1.0, 224), &crate::Config::default())
    }

    #[test]
    fn absurd_shapes_are_refused_before_any_allocation() {
        // H x W overflows 64 bits: refused as too large (this panicked on the overflow before).
        let huge = 1u64 << 32;
        let e = decode(&format!(
            r#"{{"inputs":[{{"name":"input","shape":[1,3,{huge},{huge}],"datatype":"FP32","data":[0]}}]}}"#
        ))
        .err()
        .unwrap();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", e.message);
        assert!(e.message.contains("pixels"), "{}", e.message);
        for shape in ["[0,3,2,2]", "[1,3,-1,2]", "[1,4,2,2]", "[1,3,2]"] {
            let e =
                decode(&format!(r#"{{"inputs":[{{"name":"input","shape":{shape},"datatype":"FP32","data":[0]}}]}}"#))
                    .err()
                    .unwrap();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{shape}: {}", e.message);
        }
    }

    #[test]
    fn a_small_fp32_request_decodes_to_nhwc() {
        let data: Vec<String> = (0..3 * 32 * 32).map(|i| (i % 7).to_string()).collect();
        let call = decode(&format!(
            r#"{{"id":"a","inputs":[{{"name":"input","shape":[1,3,32,32],"datatype":"FP32","data":[{}]}}]}}"#,
            data.join(",")
        ))
        .ok()
        .unwrap();
        assert_eq!(call.id.as_deref(), Some("a"));
        let InferData::Tensor(t) = call.input else { panic!("not a tensor") };
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].0, Shape::new(32, 32, 3));
        // NCHW (c, y, x) -> NHWC: pixel (0, 1) channel 1 is flat NCHW index 1024 + 1.
        assert_eq!(t[0].1[3 + 1], ((1024 + 1) % 7) as f32);
    }
}
