//! The web page, the OpenAPI document and the metrics, all embedded in the binary.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};

use crate::App;

const INDEX: &str = include_str!("../assets/index.html");
const OPENAPI: &str = include_str!("../assets/openapi.json");

/// `GET /`: a page to classify a photo (no external assets: works offline).
pub async fn index() -> Html<&'static str> {
    Html(INDEX)
}

/// `GET /openapi.json`: the v1 routes.
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], app.metrics.render()).into_response()
}
