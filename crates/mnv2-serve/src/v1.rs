//! The project's own API: `POST /v1/classify`, `/v1/detect` and `/v1/segment` answer with
//! the JSON `mnv2 classify --json`, `mnv2 detect --json` and `mnv2 segment --json` print
//! (detection and segmentation when the server has their model, [`crate::Heads`]).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, RawQuery, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use mobilenetv2::classify::{predictions, Classification};
use mobilenetv2::detect::{Detector, PixelDetection};
use mobilenetv2::preprocess::RgbImage;
use serde_json::{json, Value};

use crate::{ApiError, App};

/// The `image` field of a raw-body request's result.
pub const BODY_NAME: &str = "body";

/// `POST /v1/classify?top=K`: one result per image, in order.
pub async fn classify(
    State(app): State<Arc<App>>,
    RawQuery(query): RawQuery,
    req: Request,
) -> Result<Response, ApiError> {
    let top = parse_top(query.as_deref(), app.model.spec().classes)?;
    let admitted = app.admit()?;
    let (parts, body) = req.into_parts();
    let reading = app.reading(admitted.deadline).await?;
    let bytes = app.read_body(body, admitted.deadline).await?;
    let images = images_of(&parts, bytes, app.config.max_images).await?;
    let names: Vec<String> = images.iter().map(|(n, _)| n.clone()).collect();
    let logits = app.logits_of_images(images, reading, admitted.deadline).await?;
    let out: Vec<Classification> = names
        .into_iter()
        .zip(logits)
        .map(|(image, l)| Classification { image, top: predictions(&app.model, &l, top) })
        .collect();
    Ok(Json(out).into_response())
}

/// `top` from the query string: 1 to the number of classes; 5 when absent.
fn parse_top(query: Option<&str>, classes: usize) -> Result<usize, ApiError> {
    let mut top = 5.min(classes);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == "top" {
            top = match v.parse::<usize>() {
                Ok(t) if (1..=classes).contains(&t) => t,
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "query parameter top=`{v}` must be a whole number from 1 to {classes}"
                    )))
                }
            };
        }
    }
    Ok(top)
}

/// The encoded images of a request: the body itself (`image/jpeg`, `image/png`,
/// `application/octet-stream` or no content type), or the `image` parts of a
/// `multipart/form-data` body, named by their file names.
pub(crate) async fn images_of(parts: &Parts, body: Bytes, max_images: usize) -> Result<Vec<(String, Bytes)>, ApiError> {
    let headers = &parts.headers;
    let ctype = headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("(not text)").to_owned());
    let essence = ctype.as_deref().map(|c| c.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    match essence.as_deref() {
        None | Some("image/jpeg" | "image/png" | "application/octet-stream") => {
            if body.is_empty() {
                return Err(ApiError::bad_request("the request body is empty: send a JPEG or PNG image"));
            }
            Ok(vec![(BODY_NAME.to_owned(), body)])
        }
        Some("multipart/form-data") => multipart_images(parts, body, max_images).await,
        Some(other) => Err(ApiError::unsupported_media(format!(
            "content type `{other}` is not accepted: send image/jpeg, image/png, application/octet-stream, \
             or multipart/form-data with `image` parts"
        ))),
    }
}

async fn multipart_images(parts: &Parts, body: Bytes, max_images: usize) -> Result<Vec<(String, Bytes)>, ApiError> {
    let mut req = Request::new(axum::body::Body::from(body));
    *req.headers_mut() = parts.headers.clone();
    // The router's `DefaultBodyLimit::disable()` travels in the extensions: without it the
    // multipart parser would apply axum's default 2 MB limit to a body already read under
    // `--max-body` (and call a 3 MB upload of several photos malformed).
    *req.extensions_mut() = parts.extensions.clone();
    let mut mp = Multipart::from_request(req, &())
        .await
        .map_err(|e| ApiError::bad_request(format!("malformed multipart request: {}", e.body_text())))?;
    let mut out = Vec::new();
    loop {
        let field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(ApiError::bad_request(format!("malformed multipart body: {}", e.body_text()))),
        };
        if field.name() != Some("image") {
            continue;
        }
        if out.len() == max_images {
            return Err(ApiError::too_large(format!("more than {max_images} images in one request (--max-images)")));
        }
        let name = field.file_name().map_or_else(|| format!("image[{}]", out.len()), str::to_owned);
        let bytes = field.bytes().await.map_err(|e| {
            ApiError::bad_request(format!("malformed multipart body: part `{name}`: {}", e.body_text()))
        })?;
        if bytes.is_empty() {
            return Err(ApiError::bad_request(format!("multipart part `{name}` is empty")));
        }
        out.push((name, bytes));
    }
    if out.is_empty() {
        return Err(ApiError::bad_request("the multipart body has no `image` part"));
    }
    Ok(out)
}

/// `GET /v1/models`: which routes have a model, with the detector's and segmenter's labels
/// (the page asks, to offer boxes and masks only when the server has them).
pub async fn models(State(app): State<Arc<App>>) -> Response {
    let det = app.detector.as_ref().map(|d| {
        let n = d.options().config.classes;
        json!({"classes": n, "labels": (0..n).map(|k| d.label(k)).collect::<Vec<_>>()})
    });
    let seg = app.segmenter.as_ref().map(|s| {
        let m = s.model();
        let n = m.spec().classes;
        json!({"classes": n, "labels": (0..n).map(|k| m.label(k).map(str::to_owned)).collect::<Vec<_>>()})
    });
    Json(json!({
        "classify": {"name": app.config.model_name, "classes": app.model.spec().classes},
        "detect": det,
        "segment": seg,
    }))
    .into_response()
}

/// A library error on a request's image: the image's fault (400) or the server's (500).
fn head_error(what: &str, e: mobilenetv2::Error) -> ApiError {
    match e {
        mobilenetv2::Error::Input(d) | mobilenetv2::Error::Image { detail: d, .. } => {
            ApiError::bad_request(format!("{what}: {d}"))
        }
        other => ApiError::internal(format!("{what}: {other}")),
    }
}

/// `threshold` from the query string: a number in [0, 1]; 0.5 when absent (as `mnv2 detect`).
fn parse_threshold(query: Option<&str>) -> Result<f32, ApiError> {
    let mut threshold = 0.5;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == "threshold" {
            threshold = match v.parse::<f32>() {
                Ok(t) if (0.0..=1.0).contains(&t) => t,
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "query parameter threshold=`{v}` must be a number from 0 to 1"
                    )))
                }
            };
        }
    }
    Ok(threshold)
}

/// Whether the client asked for the class-index PNG (`Accept: image/png`).
fn wants_png(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|r| r.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("image/png")))
}

/// `POST /v1/detect?threshold=T`: the JSON `mnv2 detect --json --threshold T` prints (one
/// entry per image, in order: `image`, `size` `[W, H]`, `detections` sorted by score with
/// `box` `[x0, y0, x1, y1]` in pixels, `score`, `class`, `label`). 501 without `--detector`.
pub async fn detect(
    State(app): State<Arc<App>>,
    RawQuery(query): RawQuery,
    req: Request,
) -> Result<Response, ApiError> {
    let Some(det) = app.detector.clone() else {
        return Err(ApiError::new(StatusCode::NOT_IMPLEMENTED, "no detector loaded (start with --detector)"));
    };
    let threshold = parse_threshold(query.as_deref())?;
    let admitted = app.admit()?;
    let (parts, body) = req.into_parts();
    let reading = app.reading(admitted.deadline).await?;
    let bytes = app.read_body(body, admitted.deadline).await?;
    let images = images_of(&parts, bytes, app.config.max_images).await?;
    let max_pixels = app.config.max_pixels;
    let out = app
        .on_head(admitted.deadline, move || {
            let _reading = reading;
            let mut out = Vec::with_capacity(images.len());
            for (name, bytes) in images {
                let image = crate::images::decode(&bytes, &name, max_pixels)?;
                drop(bytes);
                let found = det.detect(&image).map_err(|e| head_error(&name, e))?;
                out.push(detection_json(&det, name, &image, &found, threshold));
            }
            Ok(out)
        })
        .await?;
    Ok(Json(out).into_response())
}

/// One image's entry, built as `mnv2 detect --json` builds it (crates/mnv2/src/cmd/detect.rs),
/// keeping the detections scoring at least `threshold` (the library's own filter, applied
/// here per request; `found` is sorted by score, so the order is the library's).
pub fn detection_json(
    det: &Detector,
    image: String,
    photo: &RgbImage,
    found: &[PixelDetection],
    threshold: f32,
) -> Value {
    let row =
        |d: &PixelDetection| json!({"box": d.bbox, "score": d.score, "class": d.class, "label": det.label(d.class)});
    json!({
        "image": image,
        "size": [photo.width, photo.height],
        "detections": found.iter().filter(|d| d.score >= threshold).map(row).collect::<Vec<_>>(),
    })
}

/// `POST /v1/segment`: the JSON `mnv2 segment --json` prints (`image`, `width`, `height`,
/// `classes` with each present class's pixel fraction), except that `mask` is the class-index
/// PNG itself as a `data:image/png;base64,` URL instead of a file's path, and there is no
/// `overlay` (the page blends the mask over the photo). With `Accept: image/png`, the answer
/// is that PNG (8-bit palette, VOC colours; one image per request). 501 without `--segmenter`.
pub async fn segment(State(app): State<Arc<App>>, req: Request) -> Result<Response, ApiError> {
    let Some(seg) = app.segmenter.clone() else {
        return Err(ApiError::new(StatusCode::NOT_IMPLEMENTED, "no segmenter loaded (start with --segmenter)"));
    };
    let admitted = app.admit()?;
    let (parts, body) = req.into_parts();
    let png = wants_png(&parts.headers);
    let reading = app.reading(admitted.deadline).await?;
    let bytes = app.read_body(body, admitted.deadline).await?;
    let images = images_of(&parts, bytes, app.config.max_images).await?;
    if png && images.len() > 1 {
        return Err(ApiError::bad_request(format!(
            "Accept: image/png answers with one mask, but the request has {} images: send one, or ask for JSON",
            images.len()
        )));
    }
    let max_pixels = app.config.max_pixels;
    let out = app
        .on_head(admitted.deadline, move || {
            let _reading = reading;
            let mut out = Vec::with_capacity(images.len());
            for (name, bytes) in images {
                let photo = crate::images::decode(&bytes, &name, max_pixels)?;
                drop(bytes);
                let s = seg.segment_image(&photo).map_err(|e| head_error(&name, e))?;
                let mask = s.to_png().map_err(|e| head_error(&name, e))?;
                let classes = seg.fractions(&s);
                out.push((name, (s.width, s.height), classes, mask));
            }
            Ok(out)
        })
        .await?;
    if png {
        let (_, _, _, mask) = out.into_iter().next().ok_or_else(|| ApiError::internal("no mask"))?;
        return Ok(([(header::CONTENT_TYPE, "image/png")], mask).into_response());
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let json: Vec<Value> = out
        .into_iter()
        .map(|(name, (width, height), classes, mask)| {
            json!({
                "image": name, "width": width, "height": height,
                "mask": format!("data:image/png;base64,{}", b64.encode(mask)),
                "classes": classes,
            })
        })
        .collect();
    Ok(Json(json).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_defaults_to_half_and_is_bounded() {
        assert_eq!(parse_threshold(None), Ok(0.5));
        assert_eq!(parse_threshold(Some("threshold=0.25")), Ok(0.25));
        assert_eq!(parse_threshold(Some("threshold=0&x=1")), Ok(0.0));
        assert_eq!(parse_threshold(Some("threshold=1")), Ok(1.0));
        for bad in ["threshold=-0.1", "threshold=1.5", "threshold=NaN", "threshold=inf", "threshold=", "threshold=a"] {
            let e = parse_threshold(Some(bad)).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(e.message.contains("threshold="), "{}", e.message);
        }
    }

    #[test]
    fn png_is_asked_for_by_accept() {
        let mut h = HeaderMap::new();
        assert!(!wants_png(&h));
        h.insert(header::ACCEPT, "*/*".parse().unwrap());
        assert!(!wants_png(&h));
        h.insert(header::ACCEPT, "text/html, IMAGE/PNG;q=0.9".parse().unwrap());
        assert!(wants_png(&h));
    }

    #[test]
    fn top_defaults_to_five_and_is_bounded() {
        assert_eq!(parse_top(None, 1000), Ok(5));
        assert_eq!(parse_top(Some("top=1"), 1000), Ok(1));
        assert_eq!(parse_top(Some("x=2&top=1000"), 1000), Ok(1000));
        assert_eq!(parse_top(None, 3), Ok(3));
        for bad in ["top=0", "top=1001", "top=-1", "top=five", "top="] {
            let e = parse_top(Some(bad), 1000).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(e.message.contains("top="), "{}", e.message);
        }
    }
}
