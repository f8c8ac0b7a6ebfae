//! The project's own API: `POST /v1/classify` answers with the JSON `mnv2 classify --json`
//! prints; `/v1/detect` and `/v1/segment` are reserved for the detection and segmentation
//! heads.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, RawQuery, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use mobilenetv2::classify::{predictions, Classification};

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
    let bytes = app.read_body(body, admitted.deadline).await?;
    let images = images_of(&parts.headers, bytes, app.config.max_images).await?;
    let names: Vec<String> = images.iter().map(|(n, _)| n.clone()).collect();
    let logits = app.logits_of_images(images, admitted.deadline).await?;
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
pub(crate) async fn images_of(
    headers: &HeaderMap,
    body: Bytes,
    max_images: usize,
) -> Result<Vec<(String, Bytes)>, ApiError> {
    let ctype = headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("(not text)").to_owned());
    let essence = ctype.as_deref().map(|c| c.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    match essence.as_deref() {
        None | Some("image/jpeg" | "image/png" | "application/octet-stream") => {
            if body.is_empty() {
                return Err(ApiError::bad_request("the request body is empty: send a JPEG or PNG image"));
            }
            Ok(vec![(BODY_NAME.to_owned(), body)])
        }
        Some("multipart/form-data") => multipart_images(headers, body, max_images).await,
        Some(other) => Err(ApiError::unsupported_media(format!(
            "content type `{other}` is not accepted: send image/jpeg, image/png, application/octet-stream, \
             or multipart/form-data with `image` parts"
        ))),
    }
}

async fn multipart_images(
    headers: &HeaderMap,
    body: Bytes,
    max_images: usize,
) -> Result<Vec<(String, Bytes)>, ApiError> {
    let mut req = Request::new(axum::body::Body::from(body));
    *req.headers_mut() = headers.clone();
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

/// `POST /v1/detect`: boxes; needs a detection head (`--detector`).
pub async fn detect() -> ApiError {
    ApiError::new(StatusCode::NOT_IMPLEMENTED, "no detector loaded (start with --detector)")
}

/// `POST /v1/segment`: a mask; needs a segmentation head (`--segmenter`).
pub async fn segment() -> ApiError {
    ApiError::new(StatusCode::NOT_IMPLEMENTED, "no segmenter loaded (start with --segmenter)")
}

#[cfg(test)]
mod tests {
    use super::*;

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
