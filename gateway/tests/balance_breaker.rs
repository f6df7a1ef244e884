//! The balancer and breakers over real sockets: a dead instance (connection refused), one answering
//! 500s and one that accepts connections but never answers are all taken out of rotation.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;
use axum::routing::any;
use bytes::Bytes;
use discovery::client::Instance;
use gateway::balance::{Balance, BalanceConfig, ForwardEndpoint, ServedBy};
use gateway::breaker::{BreakerConfig, BreakerState};
use gateway::config::UpstreamConfig;
use gateway::exchange::{Exchange, UpstreamError};
use gateway::forward::Forward;
use http::{HeaderMap, Method, Response};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::{Service, ServiceExt};

async fn upstream(status: StatusCode) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = Router::new().fallback(any(move || async move { status }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// A port nothing listens on: connections are refused.
async fn dead() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    listener.local_addr().map_err(Into::into)
}

/// Accepts connections and never answers (like a SIGSTOPped process whose backlog still accepts).
async fn hung() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    Ok(addr)
}

fn instance(id: &str, addr: SocketAddr) -> Instance {
    Instance {
        id: id.into(),
        address: addr.ip().to_string(),
        port: addr.port(),
        ..Instance::default()
    }
}

fn exchange() -> Exchange {
    Exchange {
        service: "books".into(),
        method: Method::GET,
        uri: "/api/books".parse().expect("uri"),
        headers: HeaderMap::new(),
        body: Bytes::new(),
        peer: None,
        deadline: tokio::time::Instant::now() + Duration::from_secs(5),
        attempt_timeout: None,
        tried: Vec::new(),
    }
}

fn balancer(
    instances: Vec<Instance>,
    attempt_timeout_ms: u64,
) -> anyhow::Result<(Balance<ForwardEndpoint>, watch::Sender<Vec<Instance>>)> {
    let forward = Forward::new(&UpstreamConfig::default())?;
    let endpoint = ForwardEndpoint::new(forward, &BalanceConfig { attempt_timeout_ms });
    let (tx, rx) = watch::channel(instances);
    // Long open times: nothing comes back half-open while the test runs.
    let breaker = BreakerConfig {
        base_ejection_ms: 60_000,
        max_ejection_ms: 60_000,
        ..BreakerConfig::default()
    };
    Ok((
        Balance::new(endpoint, vec![("books".into(), rx)], breaker),
        tx,
    ))
}

async fn send(balance: &mut Balance<ForwardEndpoint>) -> Result<Response<Body>, UpstreamError> {
    balance.ready().await?.call(exchange()).await
}

fn state(balance: &Balance<ForwardEndpoint>, id: &str) -> Option<BreakerState> {
    balance.snapshot()[0]
        .instances
        .iter()
        .find(|i| i.id == id)
        .map(|i| i.state)
}

#[tokio::test]
async fn dead_and_failing_instances_are_ejected_and_the_healthy_ones_serve() -> anyhow::Result<()> {
    let instances = vec![
        instance("good-1", upstream(StatusCode::OK).await?),
        instance("good-2", upstream(StatusCode::OK).await?),
        instance("dead", dead().await?),
        instance(
            "failing",
            upstream(StatusCode::INTERNAL_SERVER_ERROR).await?,
        ),
    ];
    let (mut balance, _tx) = balancer(instances, 1_000)?;
    let mut errors = Vec::new();
    for _ in 0..100 {
        match send(&mut balance).await {
            Ok(response) if response.status().is_success() => {}
            Ok(response) => errors.push(format!("{}", response.status())),
            Err(e) => errors.push(e.to_string()),
        }
    }
    assert_eq!(state(&balance, "dead"), Some(BreakerState::Open));
    assert_eq!(state(&balance, "failing"), Some(BreakerState::Open));
    // Each bad instance failed exactly the five times in a row it took to eject it.
    assert_eq!(errors.len(), 10, "{errors:?}");
    for _ in 0..30 {
        let response = send(&mut balance).await?;
        assert_eq!(response.status(), StatusCode::OK);
        let by = response.extensions().get::<ServedBy>().map(|s| s.0.clone());
        assert!(matches!(by.as_deref(), Some("good-1" | "good-2")), "{by:?}");
    }
    Ok(())
}

#[tokio::test]
async fn an_instance_that_never_answers_times_out_and_is_ejected() -> anyhow::Result<()> {
    let instances = vec![
        instance("good", upstream(StatusCode::OK).await?),
        instance("hung", hung().await?),
    ];
    let (mut balance, _tx) = balancer(instances, 100)?;
    let mut timeouts = 0;
    for _ in 0..60 {
        match send(&mut balance).await {
            Ok(response) => assert_eq!(response.status(), StatusCode::OK),
            Err(UpstreamError::Timeout { instance }) => {
                assert_eq!(instance, "hung");
                timeouts += 1;
            }
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(timeouts, 5);
    assert_eq!(state(&balance, "hung"), Some(BreakerState::Open));
    Ok(())
}
