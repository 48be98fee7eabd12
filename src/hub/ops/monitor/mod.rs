//! The monitoring listener (`--http ADDR`): actix-web on the hub's own actix `System`, off the
//! data path. Every endpoint reads the hub's counters (atomics, `ops/counters.rs`) and the live settings;
//! none sends a message to a session or takes a lock a publisher takes per frame (the
//! subscription table's per-code read lock is taken once per code per `/subsz`). With a store,
//! `/varz`, `/subsz` and `/metrics` also take, once per request, each durable code's view lock
//! (the store's I/O thread takes it once per batch) and the cursor table's and `Durables`' leaf
//! locks (taken per `ACK`, not per frame); the attached windows are read from the atomics they
//! publish to, never from the subscribers' threads.
//!
//! - `GET /healthz`, `/varz`, `/connz`, `/subsz`: JSON, one serde type per body ([`views`]).
//! - `GET /metrics`: OpenMetrics text ([`metrics`]).
//! - `GET /`: the live dashboard, a self-contained page (`dashboard.html`, `dashboard.js`) served
//!   from the binary.
//!
//! Every error is JSON (`{"error": ...}`): 404 for an unknown path, 405 (with `Allow: GET`) for a
//! known path asked with another method, 400 for a bad query. Values from the request are echoed
//! clipped, as the control channel clips them.
//!
//! docs/operations.md documents every endpoint with examples.

mod metrics;
mod views;

use std::io;
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use actix_web::error::QueryPayloadError;
use actix_web::http::header::{self, ContentType};
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer, Resource, ResponseError, Route};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::hub::control::clip;
use crate::hub::ops::HubState;
use views::{Connz, Health, SORT_FIELDS};

/// `/connz`'s default page size.
const CONNZ_LIMIT: usize = 1024;
/// How long the HTTP server waits for requests in flight when the hub stops.
const HTTP_SHUTDOWN_SECS: u64 = 1;

const DASHBOARD_HTML: &str = include_str!("dashboard.html");
const DASHBOARD_JS: &str = include_str!("dashboard.js");

/// A request the monitoring endpoints refuse.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MonitorError {
    /// A query parameter that must be a non-negative integer is not.
    #[error("{param} must be a non-negative integer, got {value:?}")]
    NotANumber {
        /// `offset` or `limit`.
        param: &'static str,
        /// What was given.
        value: String,
    },
    /// `sort` names no numeric field.
    #[error("sort must be one of {fields}, got {value:?}", fields = SORT_FIELDS.join(", "))]
    UnknownSortField {
        /// What was given.
        value: String,
    },
    /// The query string cannot be read as the endpoint's parameters (a parameter given twice).
    #[error("bad query: {reason}")]
    BadQuery {
        /// What is wrong with it.
        reason: String,
    },
    /// No endpoint at this path.
    #[error("no such endpoint: {path}")]
    NotFound {
        /// The path asked for.
        path: String,
    },
    /// The endpoint exists, and answers `GET` only.
    #[error("{path} answers GET only, not {method}")]
    MethodNotAllowed {
        /// The method asked with.
        method: String,
        /// The endpoint's path.
        path: String,
    },
}

impl MonitorError {
    /// `MethodNotAllowed` for `request`, its method and path clipped.
    fn method_not_allowed(request: &HttpRequest) -> MonitorError {
        MonitorError::MethodNotAllowed {
            method: clip(request.method().as_str()),
            path: clip(request.path()),
        }
    }
}

/// The body of every error answer.
#[derive(Debug, Serialize)]
struct ErrorBody {
    error: String,
}

impl ResponseError for MonitorError {
    fn status_code(&self) -> StatusCode {
        match self {
            MonitorError::NotFound { .. } => StatusCode::NOT_FOUND,
            MonitorError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            MonitorError::NotANumber { .. }
            | MonitorError::UnknownSortField { .. }
            | MonitorError::BadQuery { .. } => StatusCode::BAD_REQUEST,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let MonitorError::MethodNotAllowed { .. } = self {
            response.insert_header((header::ALLOW, "GET"));
        }
        response.json(ErrorBody {
            error: self.to_string(),
        })
    }
}

/// Starts the monitoring server on `listener` (one worker thread of the current actix `System`).
pub(crate) fn start(
    listener: std::net::TcpListener,
    state: Arc<HubState>,
) -> io::Result<ServerHandle> {
    let addr = listener.local_addr()?;
    let registry = Arc::new(metrics::registry(state.clone()));
    let state = web::Data::from(state);
    let registry = web::Data::from(registry);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(registry.clone())
            .app_data(web::QueryConfig::default().error_handler(bad_query))
            .service(get_only("/", web::get().to(dashboard)))
            .service(get_only("/dashboard.js", web::get().to(dashboard_js)))
            .service(get_only("/healthz", web::get().to(healthz)))
            .service(get_only("/varz", web::get().to(varz)))
            .service(get_only("/connz", web::get().to(connz)))
            .service(get_only("/subsz", web::get().to(subsz)))
            .service(get_only("/metrics", web::get().to(metrics::scrape)))
            .default_service(web::to(not_found))
    })
    .workers(1)
    // The hub handles its signals itself (drain, reload, shutdown).
    .disable_signals()
    .shutdown_timeout(HTTP_SHUTDOWN_SECS)
    .listen(listener)?
    .run();
    let handle = server.handle();
    actix_rt::spawn(server);
    info!(http = %addr, "monitoring listener started");
    Ok(handle)
}

/// Endpoint `path`, served by `get`; any other method is answered 405.
fn get_only(path: &str, get: Route) -> Resource {
    web::resource(path)
        .route(get)
        .default_service(web::to(|request: HttpRequest| async move {
            Err::<HttpResponse, _>(MonitorError::method_not_allowed(&request))
        }))
}

/// A query actix cannot read into the endpoint's parameters: 400 with the JSON body, serde's
/// reason clipped.
fn bad_query(error: QueryPayloadError, _: &HttpRequest) -> actix_web::Error {
    let reason = match &error {
        QueryPayloadError::Deserialize(error) => error.to_string(),
        _ => error.to_string(),
    };
    MonitorError::BadQuery {
        reason: clip(&reason),
    }
    .into()
}

async fn dashboard() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::html())
        .body(DASHBOARD_HTML)
}

async fn dashboard_js() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .body(DASHBOARD_JS)
}

async fn healthz(state: web::Data<HubState>) -> HttpResponse {
    if state.is_draining() {
        HttpResponse::ServiceUnavailable().json(Health { status: "draining" })
    } else {
        HttpResponse::Ok().json(Health { status: "ok" })
    }
}

async fn varz(state: web::Data<HubState>) -> HttpResponse {
    HttpResponse::Ok().json(state.varz())
}

/// `/connz`'s query, as given: numbers are checked by hand so that a bad one gets a clear
/// message.
#[derive(Debug, Deserialize)]
struct ConnzQuery {
    offset: Option<String>,
    limit: Option<String>,
    sort: Option<String>,
}

fn number(
    param: &'static str,
    value: Option<&String>,
    default: usize,
) -> Result<usize, MonitorError> {
    match value {
        None => Ok(default),
        Some(value) => value.parse().map_err(|_| MonitorError::NotANumber {
            param,
            value: clip(value),
        }),
    }
}

async fn connz(
    state: web::Data<HubState>,
    query: web::Query<ConnzQuery>,
) -> Result<HttpResponse, MonitorError> {
    let offset = number("offset", query.offset.as_ref(), 0)?;
    let limit = number("limit", query.limit.as_ref(), CONNZ_LIMIT)?;
    let sort = match &query.sort {
        Some(field) if !SORT_FIELDS.contains(&field.as_str()) => {
            return Err(MonitorError::UnknownSortField { value: clip(field) })
        }
        sort => sort.clone(),
    };
    let mut connections = state.connections();
    if let Some(field) = sort {
        // Descending; ties keep session order.
        connections.sort_by_key(|c| std::cmp::Reverse(c.numeric(&field).unwrap_or(0)));
    }
    let total = connections.len();
    let page = connections.into_iter().skip(offset).take(limit).collect();
    Ok(HttpResponse::Ok().json(Connz {
        total,
        offset,
        limit,
        connections: page,
    }))
}

async fn subsz(state: web::Data<HubState>) -> HttpResponse {
    HttpResponse::Ok().json(state.subsz())
}

async fn not_found(request: HttpRequest) -> Result<HttpResponse, MonitorError> {
    Err(MonitorError::NotFound {
        path: clip(request.path()),
    })
}
