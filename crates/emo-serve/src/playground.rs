//! The web playground at `/` (one HTML file compiled into the binary: the machines it runs on may be
//! offline) and the two views it draws besides chat: a direction set's cosine map across emotions and a
//! circuit set's layers x units membership, both computed once at start-up.
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use emo_data::Emotion;
use emo_modulate::CircuitSet;
use emo_steer::EmotionDirections;

use crate::api::ApiError;
use crate::controls::{Catalog, Controls};
use crate::state::Shared;

/// The page.
const PAGE: &str = include_str!("../assets/playground.html");

/// `GET /`: the page itself carries no data, so it is served without the key; everything it shows comes from
/// `/v1/*` with the key the user enters.
pub(crate) async fn page() -> Response {
    let mut r = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response();
    // Its own inline script and style only, and requests to this server only.
    let csp = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
    r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(csp));
    r.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}

/// `GET /v1/directions/{name}`.
pub(crate) async fn directions(State(shared): State<Arc<Shared>>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    view(&shared, &headers, &name, &shared.catalog.directions, &shared.views.0, "direction set", "--directions")
}

/// `GET /v1/circuits/{name}`.
pub(crate) async fn circuits(State(shared): State<Arc<Shared>>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    let names: Vec<String> = shared.catalog.circuits.iter().map(|(n, _)| n.clone()).collect();
    view(&shared, &headers, &name, &names, &shared.views.1, "circuit set", "--circuits")
}

fn view(shared: &Shared, headers: &HeaderMap, name: &str, names: &[String], views: &[serde_json::Value], what: &str, flag: &str) -> Response {
    if let Err(e) = shared.authorize(headers) {
        return e.into_response();
    }
    match names.iter().position(|n| n == name) {
        Some(i) => Json(views[i].clone()).into_response(),
        None => {
            let loaded = if names.is_empty() { format!("none; start the server with {flag} NAME=PATH") } else { names.join(", ") };
            ApiError::status(StatusCode::NOT_FOUND, "not_found", format!("no {what} named `{name}` is loaded (loaded: {loaded})")).into_response()
        }
    }
}

/// The views of every loaded direction set and circuit set, in the catalog's order (for [`Shared::views`]).
pub fn views(catalog: &Catalog, controls: &Controls, n_layers: usize, d_mlp: usize) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let directions = catalog.directions.iter().zip(&controls.directions).map(|(n, s)| direction_view(n, s.directions(), catalog.trace_layers));
    let circuits = catalog.circuits.iter().zip(&controls.circuits).map(|((n, _), s)| circuit_view(n, s, n_layers, d_mlp));
    (directions.collect(), circuits.collect())
}

/// A direction set's view: the cosine of every pair of emotions' `resid_post` directions, averaged over the
/// inclusive layer range `layers` (the readout's default).
pub fn direction_view(name: &str, dirs: &EmotionDirections, layers: (usize, usize)) -> serde_json::Value {
    let post = dirs.resid_post.narrow(1, layers.0 as i64, (layers.1 - layers.0 + 1) as i64).to_kind(tch::Kind::Float);
    let unit = &post / post.norm_scalaropt_dim(2, [-1].as_slice(), true).clamp_min(1e-12);
    // [L, 6, d] x [L, d, 6] -> [L, 6, 6], averaged over L.
    let per_layer = unit.transpose(0, 1).matmul(&unit.transpose(0, 1).transpose(1, 2));
    let mean = per_layer.mean_dim([0].as_slice(), false, None);
    let cosine: Vec<Vec<f32>> = (0..6).map(|i| Vec::<f32>::try_from(mean.get(i)).unwrap_or_default()).collect();
    serde_json::json!({
        "name": name,
        "emotions": Emotion::ALL.iter().map(|e| e.name()).collect::<Vec<_>>(),
        "layers": [layers.0, layers.1],
        "cosine": cosine,
    })
}

/// A circuit set's view: per emotion, its heads as `[layer, head]` pairs and its neuron count per layer.
pub fn circuit_view(name: &str, set: &CircuitSet, n_layers: usize, d_mlp: usize) -> serde_json::Value {
    let emotions: Vec<serde_json::Value> = set
        .circuits
        .iter()
        .map(|c| {
            let mut per_layer = vec![0usize; n_layers];
            for (l, _) in c.neuron_set() {
                per_layer[l] += 1;
            }
            serde_json::json!({"emotion": c.emotion.name(), "heads": c.head_set(), "neurons_per_layer": per_layer})
        })
        .collect();
    serde_json::json!({"name": name, "n_layers": n_layers, "n_heads": set.n_heads, "d_mlp": d_mlp, "emotions": emotions})
}
