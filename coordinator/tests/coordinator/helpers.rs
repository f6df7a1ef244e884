//! The world every coordinator test runs in, all real and in this process: one PostgreSQL server
//! (databases `coordinator`, `alpha`, `beta`), the discovery registry, two participant services
//! (`alpha`, `beta`) built from `coordinator::participant::Participant` with a small stock branch,
//! registered through the real agent, and coordinators built with `Application`. Set `TEST_LOG=1`
//! to see the logs.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use coordinator::participant::{Branch, BranchError, Participant, Refusal, parse_payload};
use coordinator::{Application, Config};
use discovery::client::{Registration, RegistryConfig};
use futures::future::BoxFuture;
use platform::auth::{AuthConfig, TokenVerifier};
use platform::server::{HttpConfig, Server, always_ready};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use testkit::TestPostgres;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const JWT_SECRET: &str = "coordinator-tests-jwt-secret-0123456789abcdef";
pub const INTERNAL_TOKEN: &str = "coordinator-tests-internal-token";
pub const PREFIX: &str = "bkc";

pub fn auth_config() -> AuthConfig {
    AuthConfig {
        jwt_secret: JWT_SECRET.into(),
        internal_token: INTERNAL_TOKEN.into(),
        ..AuthConfig::default()
    }
}

fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        platform::telemetry::init();
    }
}

/// Polls `condition` every 25 ms until it holds; fails the test after `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if condition().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn gid(gxid: Uuid, branch: &str) -> String {
    format!("{PREFIX}:{gxid}:{branch}")
}

// ---------------------------------------------------------------------------------------------
// The registry

pub struct TestRegistry {
    pub url: String,
    shutdown: CancellationToken,
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// How a coordinator in another process reaches the registry at `url`.
pub fn registry_config(url: &str) -> RegistryConfig {
    RegistryConfig {
        url: url.to_owned(),
        ttl_seconds: 5,
        heartbeat_ms: 200,
        deregister_critical_after_seconds: 60,
        ..RegistryConfig::default()
    }
}

impl TestRegistry {
    pub async fn start() -> TestRegistry {
        let config = discovery::server::Config {
            http: HttpConfig {
                listen: "127.0.0.1:0".into(),
                shutdown_grace_seconds: 1,
                ..HttpConfig::default()
            },
            check_interval_ms: 100,
            ..discovery::server::Config::default()
        };
        let server = Server::bind(&config.http).await.expect("a free port");
        let url = format!("http://{}", server.local_addr());
        let shutdown = CancellationToken::new();
        tokio::spawn(discovery::server::serve(server, config, shutdown.clone()));
        TestRegistry { url, shutdown }
    }

    pub fn config(&self) -> RegistryConfig {
        registry_config(&self.url)
    }
}

// ---------------------------------------------------------------------------------------------
// The participants' branch: a stock of items

/// `{"item": "...", "quantity": n}`: apply takes `quantity` out of the item's stock and refuses
/// (`insufficient-stock`) when there is not enough; compensate puts it back.
pub struct StockBranch {
    pub name: &'static str,
}

#[derive(Deserialize)]
struct Take {
    item: String,
    quantity: i32,
}

impl Branch for StockBranch {
    fn name(&self) -> &'static str {
        self.name
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        payload: &'a Value,
    ) -> BoxFuture<'a, Result<(), BranchError>> {
        Box::pin(async move {
            let take: Take = parse_payload(payload)?;
            if take.quantity <= 0 {
                return Err(BranchError::Invalid("quantity must be positive".into()));
            }
            let available: Option<i32> =
                sqlx::query_scalar("SELECT quantity FROM stock WHERE item = $1 FOR UPDATE")
                    .bind(&take.item)
                    .fetch_optional(&mut *conn)
                    .await?;
            let Some(available) = available else {
                return Err(Refusal::new("unknown-item", format!("no item {}", take.item)).into());
            };
            if available < take.quantity {
                return Err(Refusal::new(
                    "insufficient-stock",
                    format!("{} of {} left", available, take.item),
                )
                .with("available", available)
                .with("requested", take.quantity)
                .into());
            }
            sqlx::query("UPDATE stock SET quantity = quantity - $2 WHERE item = $1")
                .bind(&take.item)
                .bind(take.quantity)
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
    }

    fn compensate<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        payload: &'a Value,
    ) -> BoxFuture<'a, Result<(), BranchError>> {
        Box::pin(async move {
            let take: Take = parse_payload(payload)?;
            sqlx::query("UPDATE stock SET quantity = quantity + $2 WHERE item = $1")
                .bind(&take.item)
                .bind(take.quantity)
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
    }
}

// ---------------------------------------------------------------------------------------------
// A participant service

/// What a participant saw, recorded by a middleware in front of its routes.
#[derive(Default)]
pub struct Observer {
    /// Requests per (op, gid).
    requests: Mutex<HashMap<(String, String), u32>>,
    /// Requests in flight per gid, and the most seen at once.
    in_flight: Mutex<HashMap<String, u32>>,
    max_in_flight: Mutex<HashMap<String, u32>>,
    /// Held before a commit is handled.
    pub commit_delay_ms: AtomicU64,
    /// Stop serving right after answering the next successful prepare.
    pub stop_after_prepare: AtomicBool,
    /// Set by that stop: the server's graceful shutdown would still serve requests on open
    /// keep-alive connections for its grace period, so nothing is handled any more and every
    /// connection is closed — the next attempt finds the port closed, as after a crash.
    down: AtomicBool,
    server: Mutex<Option<CancellationToken>>,
}

impl Observer {
    pub fn count(&self, op: &str, gid: &str) -> u32 {
        let requests = self.requests.lock().expect("lock");
        requests
            .get(&(op.to_owned(), gid.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    pub fn max_in_flight(&self, gid: &str) -> u32 {
        let max = self.max_in_flight.lock().expect("lock");
        max.get(gid).copied().unwrap_or(0)
    }
}

async fn observe(State(observer): State<Arc<Observer>>, request: Request, next: Next) -> Response {
    let parts: Vec<String> = request.uri().path().split('/').map(str::to_owned).collect();
    // ["", "internal", "2pc"|"saga", gid, op]
    let (gid, op) = match parts.as_slice() {
        [_, _, _, gid, op] => (gid.clone(), op.clone()),
        _ => return next.run(request).await,
    };
    if observer.down.load(Ordering::SeqCst) {
        return closing(StatusCode::SERVICE_UNAVAILABLE.into_response());
    }
    {
        let mut requests = observer.requests.lock().expect("lock");
        *requests.entry((op.clone(), gid.clone())).or_default() += 1;
        let mut in_flight = observer.in_flight.lock().expect("lock");
        let now = in_flight.entry(gid.clone()).or_default();
        *now += 1;
        let mut max = observer.max_in_flight.lock().expect("lock");
        let seen = max.entry(gid.clone()).or_default();
        *seen = (*seen).max(*now);
    }
    if op == "commit" {
        let delay = observer.commit_delay_ms.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let response = next.run(request).await;
    {
        let mut in_flight = observer.in_flight.lock().expect("lock");
        if let Some(now) = in_flight.get_mut(&gid) {
            *now -= 1;
        }
    }
    if op == "prepare"
        && response.status() == StatusCode::OK
        && observer.stop_after_prepare.swap(false, Ordering::SeqCst)
        && let Some(server) = observer.server.lock().expect("lock").as_ref()
    {
        observer.down.store(true, Ordering::SeqCst);
        server.cancel();
        return closing(response);
    }
    response
}

/// The response with `Connection: close`, so the client does not send anything else on it.
fn closing(mut response: Response) -> Response {
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

pub struct TestParticipant {
    pub service: String,
    pub branch: &'static str,
    pub pool: PgPool,
    pub addr: SocketAddr,
    pub observer: Arc<Observer>,
    participant: Participant,
    verifier: Arc<TokenVerifier>,
    serving: Mutex<Option<(CancellationToken, JoinHandle<anyhow::Result<()>>)>>,
    agent: CancellationToken,
    http: reqwest::Client,
}

impl Drop for TestParticipant {
    fn drop(&mut self) {
        self.agent.cancel();
        if let Some((token, _)) = self.serving.lock().expect("lock").as_ref() {
            token.cancel();
        }
    }
}

impl TestParticipant {
    /// A participant service `service` with branch `branch` over its own database, holding
    /// `stock`, registered in `registry`.
    pub async fn start(
        pg: &TestPostgres,
        registry: &TestRegistry,
        service: &str,
        branch: &'static str,
        stock: &[(&str, i32)],
    ) -> TestParticipant {
        let url = pg
            .service_database(service)
            .await
            .expect("participant database");
        let pool = PgPool::connect(&url).await.expect("participant pool");
        sqlx::raw_sql(coordinator::participant::BARRIER_DDL)
            .execute(&pool)
            .await
            .expect("barrier table");
        sqlx::raw_sql(
            "CREATE TABLE stock (item text PRIMARY KEY, quantity integer NOT NULL CHECK (quantity >= 0))",
        )
        .execute(&pool)
        .await
        .expect("stock table");
        for (item, quantity) in stock {
            sqlx::query("INSERT INTO stock VALUES ($1, $2)")
                .bind(item)
                .bind(quantity)
                .execute(&pool)
                .await
                .expect("stock row");
        }
        let verifier = Arc::new(TokenVerifier::new(&auth_config()).expect("auth config"));
        let participant = Participant::new(pool.clone()).with_branch(StockBranch { name: branch });
        let observer = Arc::new(Observer::default());
        let (token, task, addr) = serve(&participant, &verifier, &observer, "127.0.0.1:0").await;
        let agent = CancellationToken::new();
        discovery::client::spawn_agent(
            registry.config(),
            Registration {
                name: service.to_owned(),
                id: format!("{service}-{}", addr.port()),
                address: addr.ip().to_string(),
                port: addr.port(),
                ..Registration::default()
            },
            agent.clone(),
        );
        let config = registry.config();
        eventually(
            &format!("{service} is healthy in the registry"),
            Duration::from_secs(10),
            || async {
                discovery::client::healthy_once(&config, service)
                    .await
                    .is_ok_and(|i| !i.is_empty())
            },
        )
        .await;
        TestParticipant {
            service: service.to_owned(),
            branch,
            pool,
            addr,
            observer,
            participant,
            verifier,
            serving: Mutex::new(Some((token, task))),
            agent,
            http: reqwest::Client::new(),
        }
    }

    /// Stops serving (connections are refused) but stays registered, like a crashed process the
    /// registry has not noticed yet. Returns once the port is closed.
    pub async fn stop_serving(&self) {
        let serving = self.serving.lock().expect("lock").take();
        if let Some((token, task)) = serving {
            token.cancel();
            let _ = task.await;
        }
    }

    /// Waits until the server stopped by `stop_after_prepare` is gone, then serves again on the
    /// same port.
    pub async fn restart(&self) {
        self.stop_serving().await;
        self.observer.down.store(false, Ordering::SeqCst);
        let (token, task, _) = serve(
            &self.participant,
            &self.verifier,
            &self.observer,
            &self.addr.to_string(),
        )
        .await;
        *self.serving.lock().expect("lock") = Some((token, task));
    }

    pub async fn stock(&self, item: &str) -> i32 {
        sqlx::query_scalar("SELECT quantity FROM stock WHERE item = $1")
            .bind(item)
            .fetch_one(&self.pool)
            .await
            .expect("stock row")
    }

    /// Whether the barrier blocks a prepare of `gid` (an abort came first).
    pub async fn blocked(&self, gid: &str) -> bool {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM tx_barrier
                            WHERE gid = $1 AND op = 'prepare' AND kind = 'blocked')",
        )
        .bind(gid)
        .fetch_one(&self.pool)
        .await
        .expect("tx_barrier")
    }

    /// The gids prepared in this participant's database.
    pub async fn prepared(&self) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() ORDER BY gid",
        )
        .fetch_all(&self.pool)
        .await
        .expect("pg_prepared_xacts")
    }

    /// Calls the participant route `/internal/<protocol>/<gid>/<op>` directly, as a coordinator
    /// would.
    pub async fn call(
        &self,
        protocol: &str,
        gid: &str,
        op: &str,
        payload: &Value,
    ) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!(
                "http://{}/internal/{protocol}/{gid}/{op}",
                self.addr
            ))
            .header("x-internal-token", INTERNAL_TOKEN)
            .json(payload)
            .send()
            .await
            .expect("the participant answers");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

async fn serve(
    participant: &Participant,
    verifier: &Arc<TokenVerifier>,
    observer: &Arc<Observer>,
    listen: &str,
) -> (
    CancellationToken,
    JoinHandle<anyhow::Result<()>>,
    SocketAddr,
) {
    let router =
        participant
            .clone()
            .router(verifier.clone())
            .layer(axum::middleware::from_fn_with_state(
                observer.clone(),
                observe,
            ));
    let config = HttpConfig {
        listen: listen.to_owned(),
        shutdown_grace_seconds: 1,
        ..HttpConfig::default()
    };
    let mut bound = None;
    for _ in 0..50 {
        match Server::bind(&config).await {
            Ok(server) => {
                bound = Some(server);
                break;
            }
            // A restart may race the old listener's close.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let server = bound.expect("the participant's port is free");
    let addr = server.local_addr();
    let token = CancellationToken::new();
    *observer.server.lock().expect("lock") = Some(token.clone());
    let task = tokio::spawn(server.serve(router, always_ready(), token.clone()));
    (token, task, addr)
}

// ---------------------------------------------------------------------------------------------
// Coordinators

pub struct TestCoordinator {
    pub address: String,
    pub instance_id: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Drop for TestCoordinator {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Settings for fast tests: short leases, intervals and backoff.
pub fn fast_config(db_url: &str, registry: RegistryConfig) -> Config {
    let mut config = Config::default();
    config.http.listen = "127.0.0.1:0".into();
    config.http.shutdown_grace_seconds = 1;
    config.db.url = db_url.to_owned();
    config.db.acquire_timeout_ms = 2000;
    config.db.startup_timeout_seconds = 10;
    config.auth = auth_config();
    config.registry = registry;
    let c = &mut config.coordinator;
    c.participants = vec!["alpha".into(), "beta".into()];
    c.lease_ms = 1000;
    c.lease_renew_ms = 200;
    c.recovery_interval_ms = 100;
    c.orphan_scan_interval_ms = 0;
    c.orphan_grace_ms = 1000;
    c.participant_timeout_ms = 1000;
    c.retry_backoff_min_ms = 20;
    c.retry_backoff_max_ms = 200;
    c.default_timeout_ms = 3000;
    config
}

impl TestCoordinator {
    pub async fn start(config: Config) -> TestCoordinator {
        init_logs();
        let app = Application::build(config)
            .await
            .expect("the coordinator builds");
        let address = format!("http://{}", app.local_addr());
        let instance_id = app.instance_id().to_owned();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            "x-internal-token",
            INTERNAL_TOKEN.parse().expect("a header value"),
        );
        TestCoordinator {
            address,
            instance_id,
            http: reqwest::Client::builder()
                .default_headers(headers)
                .build()
                .expect("client"),
            shutdown,
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn submit(&self, body: &Value) -> (StatusCode, Value) {
        let response = self
            .http
            .post(self.url("/internal/transactions"))
            .json(body)
            .send()
            .await
            .expect("the coordinator answers");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, gxid: Uuid) -> (StatusCode, Value) {
        let response = self
            .http
            .get(self.url(&format!("/internal/transactions/{gxid}")))
            .send()
            .await
            .expect("the coordinator answers");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The lines of `/metrics` for the series `name` (the test process's one recorder: counts may
    /// include other tests' coordinators when tests share a process).
    pub async fn metric(&self, name: &str) -> Vec<String> {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("the coordinator answers")
            .text()
            .await
            .expect("a text body");
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .map(str::to_owned)
            .collect()
    }

    /// Waits until `GET` shows `state`.
    pub async fn wait_state(&self, gxid: Uuid, state: &str, limit: Duration) -> Value {
        let mut last = Value::Null;
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            let (_, body) = self.get(gxid).await;
            if body["state"] == state {
                return body;
            }
            last = body;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{gxid} did not reach {state} within {limit:?}; last seen: {last}");
    }

    /// Graceful stop: waits for the application to finish.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let stopped = tokio::time::timeout(Duration::from_secs(10), task).await;
            assert!(
                matches!(stopped, Ok(Ok(Ok(())))),
                "the coordinator stops cleanly: {stopped:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The whole world

pub struct World {
    pub alpha: TestParticipant,
    pub beta: TestParticipant,
    pub registry: TestRegistry,
    /// The coordinator role's URL and a pool on it.
    pub db_url: String,
    pub db: PgPool,
    _pg: TestPostgres,
}

/// PostgreSQL, the registry, `alpha` (branch `take_a`, 10 `widget`s) and `beta` (branch `take_b`,
/// 5 `gadget`s), and the coordinator database with its migrations applied.
pub async fn world() -> World {
    init_logs();
    let pg = TestPostgres::start().await.expect("PostgreSQL starts");
    let registry = TestRegistry::start().await;
    let db_url = pg
        .service_database("coordinator")
        .await
        .expect("coordinator database");
    let db = PgPool::connect(&db_url).await.expect("coordinator pool");
    sqlx::migrate!("./migrations")
        .run(&db)
        .await
        .expect("coordinator migrations");
    let alpha = TestParticipant::start(&pg, &registry, "alpha", "take_a", &[("widget", 10)]).await;
    let beta = TestParticipant::start(&pg, &registry, "beta", "take_b", &[("gadget", 5)]).await;
    World {
        alpha,
        beta,
        registry,
        db_url,
        db,
        _pg: pg,
    }
}

impl World {
    pub fn config(&self) -> Config {
        fast_config(&self.db_url, self.registry.config())
    }

    pub async fn coordinator(&self) -> TestCoordinator {
        TestCoordinator::start(self.config()).await
    }

    /// Asserts that neither participant holds a prepared transaction.
    pub async fn assert_nothing_prepared(&self) {
        assert_eq!(self.alpha.prepared().await, Vec::<String>::new(), "alpha");
        assert_eq!(self.beta.prepared().await, Vec::<String>::new(), "beta");
    }

    /// Transaction states straight from the coordinator database.
    pub async fn stored_state(&self, gxid: Uuid) -> (String, i32) {
        sqlx::query_as("SELECT state, attempts FROM global_transactions WHERE gxid = $1")
            .bind(gxid)
            .fetch_one(&self.db)
            .await
            .expect("a stored transaction")
    }

    /// Records a transaction as a coordinator that has since died would have left it: owned by
    /// `dead-coordinator`, its lease expired, in `state`, with branches in `branch_states`.
    pub async fn seed(
        &self,
        gxid: Uuid,
        mode: &str,
        state: &str,
        branches: &[(&TestParticipant, Value, &str)],
    ) {
        let specs: Vec<Value> = branches
            .iter()
            .map(|(p, payload, _)| json!({"service": p.service, "branch": p.branch, "payload": payload}))
            .collect();
        let reason = match state {
            "aborting" | "aborted" | "compensating" | "compensated" => Some("presumed-abort"),
            _ => None,
        };
        let finished = matches!(state, "committed" | "aborted" | "completed" | "compensated");
        let mut tx = self.db.begin().await.expect("begin");
        sqlx::query(
            "INSERT INTO global_transactions
                 (gxid, mode, state, branches, timeout_ms, deadline, reason, lease_owner,
                  lease_until, attempts, finished_at)
             VALUES ($1, $2, $3, $4, 3000, now() + interval '3 seconds', $5, 'dead-coordinator',
                     CASE WHEN $6 THEN NULL ELSE now() - interval '1 second' END, 1,
                     CASE WHEN $6 THEN now() END)",
        )
        .bind(gxid)
        .bind(mode)
        .bind(state)
        .bind(Value::Array(specs))
        .bind(reason)
        .bind(finished)
        .execute(&mut *tx)
        .await
        .expect("seed transaction");
        for (position, (p, _, branch_state)) in branches.iter().enumerate() {
            sqlx::query(
                "INSERT INTO branches (gxid, position, service, branch, gid, state)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(gxid)
            .bind(i32::try_from(position).expect("small"))
            .bind(&p.service)
            .bind(p.branch)
            .bind(gid(gxid, p.branch))
            .bind(branch_state)
            .execute(&mut *tx)
            .await
            .expect("seed branch");
        }
        tx.commit().await.expect("commit the seed");
    }

    /// A 2PC transaction a dead coordinator left in `state` with both branches prepared (4 widgets
    /// from alpha, 2 gadgets from beta), each participant having been sent `ops` in turn (e.g.
    /// `prepare` then `commit`: a phase 2 that was done before its final state was lost).
    pub async fn seed_both_prepared(&self, gxid: Uuid, state: &str, ops: &[&str]) {
        self.seed(
            gxid,
            "2pc",
            state,
            &[
                (&self.alpha, take("widget", 4), "prepared"),
                (&self.beta, take("gadget", 2), "prepared"),
            ],
        )
        .await;
        for (p, payload) in [
            (&self.alpha, take("widget", 4)),
            (&self.beta, take("gadget", 2)),
        ] {
            for op in ops {
                let (status, body) = p.call("2pc", &gid(gxid, p.branch), op, &payload).await;
                assert_eq!(status, StatusCode::OK, "{op}: {body}");
            }
        }
    }
}

/// A submission taking `a` widgets from alpha, then `b` gadgets from beta.
pub fn submission(gxid: Uuid, mode: &str, a: i32, b: i32) -> Value {
    json!({
        "gxid": gxid,
        "mode": mode,
        "branches": [
            {"service": "alpha", "branch": "take_a", "payload": {"item": "widget", "quantity": a}},
            {"service": "beta", "branch": "take_b", "payload": {"item": "gadget", "quantity": b}},
        ],
        "timeout_ms": 3000,
        "wait_ms": 5000,
    })
}

pub fn take(item: &str, quantity: i32) -> Value {
    json!({"item": item, "quantity": quantity})
}
