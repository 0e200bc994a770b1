//! The kube client's HTTP stack, built here instead of by `kube::Client::try_from` for one
//! setting kube does not expose: the cap on hyper's per-connection read buffer.
//!
//! hyper grows a connection's read buffer while a response streams through it, up to 400 KB by
//! default, and keeps it for the life of the connection. A list page of a few hundred objects
//! grows it to the cap, and the watch that follows goes on using the same connection for hours,
//! so each watched kind kept about 400 KB it never needs again (1.7 MB of the API source's
//! 5 000-service heap, measured with heaptrack; bench/RESULTS.md). Reading in at most 64 KiB
//! costs a list page a few more read calls and nothing else: hyper streams a body through the
//! buffer, it never needs a whole page (or a whole watch event) to fit.
//!
//! Everything else is what kube's own builder sets up (kube-client 5, `make_generic_builder`):
//! the TLS connector and its server-name override from the kubeconfig, connect/read/write
//! timeouts, the base URI, authentication (tokens, exec plugins, refresh) and extra headers.
//! Left out: kube's request tracing layer (its spans are debug level, and the source logs
//! its own) and the client's `valid_until` (kube sets it from an exec plugin's client
//! certificate expiry, which only callers that rebuild clients read; none here does).
//! A configuration with a proxy goes through kube's builder unchanged, which says what it
//! does not support in its error.

use hyper_timeout::TimeoutConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::{Body, ConfigExt};
use kube::Client;
use tower::{BoxError, ServiceBuilder};

/// The largest read buffer a connection to the API server may grow (hyper's minimum is 8 KiB).
pub const MAX_READ_BUFFER: usize = 64 * 1024;

/// A client for `config` whose connections read through at most [`MAX_READ_BUFFER`] bytes.
pub fn build(config: kube::Config) -> Result<Client, kube::Error> {
    if config.proxy_url.is_some() {
        return Client::try_from(config);
    }
    let mut http = HttpConnector::new();
    // The TLS connector on top decides http or https from the URL.
    http.enforce_http(false);
    let https = config.rustls_https_connector_with_connector(http)?;
    let mut connector = TimeoutConnector::new(https);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let hyper = hyper_util::client::legacy::Builder::new(TokioExecutor::new())
        .http1_max_buf_size(MAX_READ_BUFFER)
        .build::<_, Body>(connector);

    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        // The token-refreshing auth layer fails with BoxError; both arms must agree.
        .map_err(BoxError::from)
        .service(hyper);
    Ok(Client::new(service, config.default_namespace))
}
