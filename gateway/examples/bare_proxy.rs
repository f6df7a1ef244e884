//! The floor under the gateway's numbers in `bench/gateway-vs-nginx.sh` (`BARE_PROXY=1`): the
//! HTTP stack the gateway is built on — axum's server, hyper_util's pooled HTTP/1 client with
//! `TCP_NODELAY`, one current-thread tokio runtime, mimalloc as in the `bookstore` binary — passing
//! every request to one upstream and doing nothing else: no routes, auth, limits, breakers,
//! retries, deadlines, metrics or logs. What it spends per request, the gateway cannot go below
//! with this stack; the difference is the gateway's own work.
//!
//! ```text
//! cargo run --release -p gateway --example bare_proxy -- <listen addr> <upstream host:port>
//! ```
//! prints the address it listens on, then serves until killed.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

#[derive(Clone)]
struct Upstream {
    client: HttpClient,
    authority: Authority,
}

/// Buffers the body (as the gateway does, so a reroute could resend it), points the request at the
/// upstream and streams the answer back.
async fn forward(State(upstream): State<Upstream>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let Ok(body) = body.collect().await.map(|collected| collected.to_bytes()) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(upstream.authority.clone());
    uri.path_and_query = parts.uri.path_and_query().cloned();
    let Ok(uri) = Uri::from_parts(uri) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    parts.uri = uri;
    parts.headers.remove(header::CONNECTION);
    let request = http::Request::from_parts(parts, Full::new(body));
    match upstream.client.request(request).await {
        Ok(response) => response.map(Body::new).into_response(),
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: bare_proxy <listen addr> <upstream host:port>");
    };
    let listen: SocketAddr = listen.parse()?;
    let authority: Authority = upstream.parse()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(Upstream { client, authority });
        let listener = tokio::net::TcpListener::bind(listen).await?;
        println!("{}", listener.local_addr()?);
        axum::serve(platform::server::no_delay(listener), app).await?;
        Ok(())
    })
}
