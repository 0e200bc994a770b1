//! HTTPS for the API server: TLS (rustls, certificate from [`certs::Reloading`]) ->
//! HTTP/1.1 (hyper) -> routes. `POST /mutate` runs [`inject::review`] on a blocking-free
//! path; `GET /healthz`, `/readyz`, `/metrics`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::inject::{self, Context, MAX_BODY};
use super::WebhookMetrics;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longer than the API server's webhook timeout (at most 30 s): past it, nobody waits.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of an oversized body is read (and dropped) so the client gets the 400 instead of
/// a connection reset.
const DRAIN_LIMIT: usize = 4 * MAX_BODY;

pub struct Shared {
    pub ctx: Arc<Context>,
    pub metrics: Arc<WebhookMetrics>,
    /// Names what is not ready yet (empty: ready).
    pub ready: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
}

fn text(status: u16, body: impl Into<String>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.into())))
        .unwrap_or_default()
}

fn json(status: u16, body: Vec<u8>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

/// Reads the body up to [`MAX_BODY`]; past it, drains a bounded amount so the 400 reaches the
/// client, and says how much was sent.
async fn read_body(body: Incoming, declared: Option<u64>) -> Result<Bytes, String> {
    if let Some(n) = declared.filter(|&n| n > MAX_BODY as u64) {
        let _ = Limited::new(body, DRAIN_LIMIT).collect().await;
        return Err(format!(
            "request body of {n} bytes is larger than the limit of {MAX_BODY} bytes"
        ));
    }
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(format!(
            "request body is larger than the limit of {MAX_BODY} bytes"
        )),
        Err(e) => Err(format!("cannot read the request body: {e}")),
    }
}

async fn mutate(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let start = Instant::now();
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let reviewed = match read_body(req.into_body(), declared).await {
        Ok(body) => inject::review(&body, &shared.ctx),
        Err(message) => {
            let body = serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure",
                "code": 400, "reason": "BadRequest", "message": message,
            });
            inject::Reviewed {
                status: 400,
                body: serde_json::to_vec(&body).unwrap_or_default(),
                outcome: inject::Outcome::BadRequest(message),
            }
        }
    };
    shared.metrics.record(&reviewed.outcome, start.elapsed());
    match &reviewed.outcome {
        inject::Outcome::BadRequest(m) => tracing::warn!("webhook: bad request: {m}"),
        inject::Outcome::Error(m) => tracing::warn!("webhook: {m}"),
        o => tracing::debug!(outcome = ?o, "webhook: admission"),
    }
    json(reviewed.status, reviewed.body)
}

async fn route(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::POST, "/mutate") => mutate(&shared, req).await,
        (_, "/mutate") => text(405, "POST an AdmissionReview (admission.k8s.io/v1)\n"),
        (&Method::GET | &Method::HEAD, "/healthz") => text(200, "ok\n"),
        (&Method::GET | &Method::HEAD, "/readyz") => {
            let waiting = (shared.ready)();
            if waiting.is_empty() {
                text(200, "ok\n")
            } else {
                text(503, format!("{}\n", waiting.join("\n")))
            }
        }
        (&Method::GET, "/metrics") => Response::builder()
            .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
            .body(Full::new(Bytes::from(shared.metrics.render())))
            .unwrap_or_default(),
        _ => text(404, "404 page not found\n"),
    }
}

/// Serves HTTPS on `listener` until `cancel`, then lets requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook: accept");
                    // Out of file descriptors: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "webhook: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move {
                    let resp = tokio::time::timeout(REQUEST_TIMEOUT, route(shared, req))
                        .await
                        .unwrap_or_else(|_| text(408, "request timed out\n"));
                    Ok::<_, Infallible>(resp)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service);
            let _ = watcher.watch(conn).await;
        });
    }
    drop(listener);
    // Draining: requests in flight finish (the API server retries nothing on a reset).
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
}
