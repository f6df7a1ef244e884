//! An experiment beside `bare_proxy.rs`: the same proxy on the gateway's own upstream connections
//! (`gateway::connections`: hyper's connection-level HTTP/1 client and a list of idle connections
//! per instance) instead of hyper_util's legacy pooled client — the floor under the gateway as it
//! now forwards (docs/BENCHMARKS.md, "Instructions per request").
//!
//! ```text
//! cargo run --release -p gateway --example bare_conn_proxy -- <listen addr> <upstream ip:port>
//! ```
//! prints the address it listens on, then serves until killed.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use gateway::connections::{Connections, Settings};
use http::{StatusCode, header};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone)]
struct Upstream {
    authority: Arc<str>,
    connections: Arc<Connections>,
}

async fn forward(State(upstream): State<Upstream>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let Ok(body) = body.collect().await.map(|collected| collected.to_bytes()) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    parts.headers.remove(header::CONNECTION);
    let request = http::Request::from_parts(parts, Full::new(body));
    let sent = upstream
        .connections
        .send(&upstream.authority, request, Instant::now())
        .await;
    match sent {
        // The lease moves into the body, so the connection goes back once the answer is sent.
        Ok((response, lease)) => response
            .map(|incoming| {
                Body::new(incoming.map_frame(move |frame| {
                    let _held = &lease;
                    frame
                }))
            })
            .into_response(),
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: bare_conn_proxy <listen addr> <upstream host:port>");
    };
    let listen: SocketAddr = listen.parse()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // Lives as long as the proxy: its connections are never closed for being orphaned.
        let owner = Arc::new(());
        let settings = Settings {
            connect_timeout: Duration::from_secs(1),
            max_idle_per_instance: 64,
            idle_timeout: Duration::from_secs(90),
        };
        let app = axum::Router::new().fallback(forward).with_state(Upstream {
            authority: upstream.into(),
            connections: Connections::new(settings, Arc::downgrade(&owner)),
        });
        let listener = tokio::net::TcpListener::bind(listen).await?;
        println!("{}", listener.local_addr()?);
        axum::serve(platform::server::no_delay(listener), app).await?;
        Ok(())
    })
}
