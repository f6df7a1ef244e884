//! An experiment beside `bare_proxy.rs`: the same proxy with hyper's connection-level HTTP/1
//! client and a plain list of idle connections instead of hyper_util's legacy pooled client — what
//! the gateway could save by pooling its upstream connections itself (docs/BENCHMARKS.md,
//! "Instructions per request"). Simplified where the gateway could not be: the answer is read
//! whole before its connection goes back to the list, and a connection is not retried.
//!
//! ```text
//! cargo run --release -p gateway --example bare_conn_proxy -- <listen addr> <upstream ip:port>
//! ```
//! prints the address it listens on, then serves until killed.
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone)]
struct Upstream {
    addr: SocketAddr,
    idle: Arc<Mutex<Vec<SendRequest<Full<Bytes>>>>>,
}

async fn connect(addr: SocketAddr) -> Option<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(connection);
    Some(sender)
}

async fn forward(State(upstream): State<Upstream>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let Ok(body) = body.collect().await.map(|collected| collected.to_bytes()) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    parts.headers.remove(header::CONNECTION);
    let request = http::Request::from_parts(parts, Full::new(body));
    let idle = loop {
        let popped = upstream.idle.lock().ok().and_then(|mut idle| idle.pop());
        match popped {
            Some(sender) if sender.is_ready() => break Some(sender),
            Some(_) => continue,
            None => break None,
        }
    };
    let mut sender = match idle {
        Some(sender) => sender,
        None => match connect(upstream.addr).await {
            Some(sender) => sender,
            None => return StatusCode::BAD_GATEWAY.into_response(),
        },
    };
    let Ok(response) = sender.send_request(request).await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let (parts, body) = response.into_parts();
    let Ok(bytes) = body.collect().await.map(|c| c.to_bytes()) else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    if let Ok(mut idle) = upstream.idle.lock() {
        idle.push(sender);
    }
    Response::from_parts(parts, Body::from(bytes))
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: bare_conn_proxy <listen addr> <upstream host:port>");
    };
    let listen: SocketAddr = listen.parse()?;
    let addr: SocketAddr = upstream.parse()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let app = axum::Router::new().fallback(forward).with_state(Upstream {
            addr,
            idle: Arc::default(),
        });
        let listener = tokio::net::TcpListener::bind(listen).await?;
        println!("{}", listener.local_addr()?);
        axum::serve(platform::server::no_delay(listener), app).await?;
        Ok(())
    })
}
