//! The generator's view of the shop: its own customers (signed up and funded through the public
//! API), the catalog, and one HTTP call per operation, classified into an [`Outcome`].

use std::sync::RwLock;
use std::time::Duration;

use rand::Rng;
use rand::seq::IndexedRandom;
use serde_json::{Value, json};

use crate::client::{self, log_in};
use crate::ledger::{AckOrder, AckRating, Ledger, TopUp};
use crate::mix::Operation;
use crate::stats::Outcome;

/// Where the platform is and how to log in as its admin (the admin funds the customers).
#[derive(Debug, Clone)]
pub struct Target {
    /// The gateway's base URL, e.g. `http://127.0.0.1:8080`.
    pub gateway: String,
    pub admin_email: String,
    pub admin_password: String,
}

/// Credit every customer starts with (the most one top-up may add).
pub const STARTING_CREDIT_CENTS: i64 = 1_000_000;

const PASSWORD: &str = "loadgen-passw0rd";

/// A customer the generator signed up; the token is renewed before it expires.
pub struct Customer {
    pub id: String,
    email: String,
    token: RwLock<String>,
}

impl Customer {
    fn token(&self) -> String {
        self.token.read().map(|t| t.clone()).unwrap_or_default()
    }
}

/// A book of the catalog as the generator picks from it.
#[derive(Debug, Clone)]
pub struct Book {
    pub id: String,
    pub title: String,
    pub genre: String,
}

pub struct Shop {
    http: reqwest::Client,
    gateway: String,
    target: Target,
    admin: RwLock<String>,
    /// When every token was last obtained (at most: the sign-ups come after it).
    tokens_since: RwLock<std::time::Instant>,
    pub customers: Vec<Customer>,
    pub books: Vec<Book>,
}

impl Shop {
    /// Logs the admin in, reads the catalog, and signs up and funds `customers` new customers
    /// (four at a time: sign-up hashes a password and is deliberately slow). The funding top-ups
    /// go into `ledger`.
    pub async fn open(
        target: &Target,
        customers: usize,
        timeout: Duration,
        ledger: &mut Ledger,
    ) -> anyhow::Result<Shop> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(256)
            .build()?;
        let gateway = target.gateway.trim_end_matches('/').to_owned();
        let admin = log_in(&http, &gateway, &target.admin_email, &target.admin_password)
            .await
            .map_err(|e| anyhow::anyhow!("cannot log in as the admin: {e:#}"))?;
        let mut shop = Shop {
            http,
            gateway,
            target: target.clone(),
            admin: RwLock::new(admin),
            tokens_since: RwLock::new(std::time::Instant::now()),
            customers: Vec::new(),
            books: Vec::new(),
        };
        shop.books = shop.catalog().await?;
        anyhow::ensure!(
            !shop.books.is_empty(),
            "the catalog is empty: load the demo data (`bookstore up` does unless --no-demo)"
        );
        let run = uuid::Uuid::new_v4().simple().to_string();
        let signed_up = {
            // At most four sign-ups at once.
            let mut all = Vec::new();
            for chunk in (0..customers).collect::<Vec<_>>().chunks(4) {
                let batch = futures::future::try_join_all(chunk.iter().map(|n| {
                    let email = format!("loadgen-{}-{n}@example.com", &run[..12]);
                    shop.sign_up(email)
                }))
                .await?;
                all.extend(batch);
            }
            all
        };
        for customer in &signed_up {
            let top_up = TopUp {
                customer_id: customer.id.clone(),
                idempotency_key: uuid::Uuid::new_v4().to_string(),
                amount_cents: STARTING_CREDIT_CENTS,
            };
            let admin = shop.admin_token();
            match shop.send_top_up(&admin, &top_up).await {
                TopUpResult::Applied => ledger.top_ups.push(top_up),
                TopUpResult::Unknown(_) => ledger.unresolved_top_ups.push(top_up),
                TopUpResult::Refused(why) => anyhow::bail!("cannot fund a customer: {why}"),
            }
        }
        shop.customers = signed_up;
        Ok(shop)
    }

    fn admin_token(&self) -> String {
        self.admin.read().map(|t| t.clone()).unwrap_or_default()
    }

    /// Logs everyone in again: tokens live 15 minutes, longer runs call this every few minutes.
    pub async fn renew_tokens(&self) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let admin = log_in(
            &self.http,
            &self.gateway,
            &self.target.admin_email,
            &self.target.admin_password,
        )
        .await?;
        if let Ok(mut slot) = self.admin.write() {
            *slot = admin;
        }
        for customer in &self.customers {
            let token = log_in(&self.http, &self.gateway, &customer.email, PASSWORD).await?;
            if let Ok(mut slot) = customer.token.write() {
                *slot = token;
            }
        }
        if let Ok(mut since) = self.tokens_since.write() {
            *since = started;
        }
        Ok(())
    }

    /// [`Shop::renew_tokens`] when the tokens are older than `age`: a chaos session reuses one shop
    /// for many short runs, longer together than a token lives.
    pub async fn renew_tokens_older_than(&self, age: Duration) -> anyhow::Result<()> {
        let since = self
            .tokens_since
            .read()
            .map(|t| *t)
            .unwrap_or_else(|_| std::time::Instant::now());
        if since.elapsed() < age {
            return Ok(());
        }
        self.renew_tokens().await
    }

    async fn sign_up(&self, email: String) -> anyhow::Result<Customer> {
        let (id, token) = client::sign_up(
            &self.http,
            &self.gateway,
            &email,
            "Load Generator",
            PASSWORD,
        )
        .await?;
        Ok(Customer {
            id,
            email,
            token: RwLock::new(token),
        })
    }

    async fn catalog(&self) -> anyhow::Result<Vec<Book>> {
        let books = client::all_books(&self.http, &self.gateway).await?;
        Ok(books
            .iter()
            .map(|item| {
                let text = |k: &str| item[k].as_str().unwrap_or_default().to_owned();
                Book {
                    id: text("id"),
                    title: text("title"),
                    genre: text("genre"),
                }
            })
            .collect())
    }

    /// Sends one `op` as a random customer; what it acknowledged goes into `ledger`.
    pub async fn perform(&self, op: Operation, ledger: &mut Ledger) -> Outcome {
        let (customer, book, roll) = {
            let mut rng = rand::rng();
            let customer = self.customers.choose(&mut rng);
            let book = self.books.choose(&mut rng);
            (customer, book, rng.random::<u32>())
        };
        let (Some(customer), Some(book)) = (customer, book) else {
            return Outcome::Failed("no customer or book to use".into());
        };
        match op {
            Operation::Browse => {
                let books = format!("{}/api/books", self.gateway);
                match roll % 2 {
                    0 => self.read(customer, &books, &[("limit", "20")]).await,
                    _ => {
                        let query = [("limit", "20"), ("genre", book.genre.as_str())];
                        self.read(customer, &books, &query).await
                    }
                }
            }
            Operation::Search => {
                let word = book.title.split_whitespace().next().unwrap_or("the");
                let prefix: String = word.chars().take(4).collect();
                let books = format!("{}/api/books", self.gateway);
                self.read(customer, &books, &[("limit", "20"), ("q", &prefix)])
                    .await
            }
            Operation::View => {
                let url = format!("{}/api/books/{}", self.gateway, book.id);
                self.read(customer, &url, &[]).await
            }
            Operation::Rate => self.rate(customer, book, roll, ledger).await,
            Operation::TopUp => {
                let top_up = TopUp {
                    customer_id: customer.id.clone(),
                    idempotency_key: uuid::Uuid::new_v4().to_string(),
                    amount_cents: 100 + i64::from(roll % 4901),
                };
                match self.send_top_up(&customer.token(), &top_up).await {
                    TopUpResult::Applied => {
                        ledger.top_ups.push(top_up);
                        Outcome::Ok
                    }
                    TopUpResult::Refused(kind) => Outcome::Failed(kind),
                    TopUpResult::Unknown(kind) => {
                        ledger.unresolved_top_ups.push(top_up);
                        Outcome::Failed(kind)
                    }
                }
            }
            Operation::Checkout2pc => self.checkout(customer, "2pc", ledger).await,
            Operation::CheckoutSaga => self.checkout(customer, "saga", ledger).await,
        }
    }

    /// A GET; `query` is percent-encoded (titles and genres may hold any character).
    async fn read(&self, customer: &Customer, url: &str, query: &[(&str, &str)]) -> Outcome {
        let url = match url::Url::parse_with_params(url, query) {
            Ok(url) => url,
            Err(e) => return Outcome::Failed(format!("bad url: {e}")),
        };
        match self
            .http
            .get(url)
            .bearer_auth(customer.token())
            .send()
            .await
        {
            Ok(response) if response.status().is_success() => {
                // Read the body: a response that breaks off half-way is a failure too.
                match response.bytes().await {
                    Ok(_) => Outcome::Ok,
                    Err(e) => Outcome::Failed(transport_kind(&e)),
                }
            }
            Ok(response) => Outcome::Failed(problem_kind(response).await),
            Err(e) => Outcome::Failed(transport_kind(&e)),
        }
    }

    async fn rate(
        &self,
        customer: &Customer,
        book: &Book,
        roll: u32,
        ledger: &mut Ledger,
    ) -> Outcome {
        let sent = self
            .http
            .post(format!("{}/api/books/{}/ratings", self.gateway, book.id))
            .bearer_auth(customer.token())
            .json(&json!({"stars": 1 + roll % 5}))
            .send()
            .await;
        match sent {
            Ok(response) if response.status().as_u16() == 202 => {
                match response.json::<Value>().await {
                    Ok(body) => match body["rating_id"].as_str() {
                        Some(id) => {
                            ledger.ratings.push(AckRating {
                                customer_id: customer.id.clone(),
                                book_id: book.id.clone(),
                                rating_id: id.to_owned(),
                            });
                            Outcome::Ok
                        }
                        None => Outcome::Failed("202 without rating_id".into()),
                    },
                    Err(e) => {
                        ledger
                            .unsure_ratings
                            .push((customer.id.clone(), book.id.clone()));
                        Outcome::Failed(transport_kind(&e))
                    }
                }
            }
            Ok(response) if response.status().is_client_error() => {
                Outcome::Failed(problem_kind(response).await)
            }
            // No answer, or a 5xx: the rating may still have been accepted (and may replace an
            // earlier one of this customer for this book).
            Ok(response) => {
                ledger
                    .unsure_ratings
                    .push((customer.id.clone(), book.id.clone()));
                Outcome::Failed(problem_kind(response).await)
            }
            Err(e) => {
                ledger
                    .unsure_ratings
                    .push((customer.id.clone(), book.id.clone()));
                Outcome::Failed(transport_kind(&e))
            }
        }
    }

    async fn checkout(&self, customer: &Customer, mode: &str, ledger: &mut Ledger) -> Outcome {
        let items: Vec<Value> = {
            let mut rng = rand::rng();
            let lines = rng.random_range(1..=2usize);
            self.books
                .choose_multiple(&mut rng, lines)
                .map(|b| json!({"book_id": b.id, "quantity": 1}))
                .collect()
        };
        let sent = self
            .http
            .post(format!("{}/api/checkout", self.gateway))
            .bearer_auth(customer.token())
            .header("idempotency-key", uuid::Uuid::new_v4().to_string())
            .json(&json!({"mode": mode, "items": items}))
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => return Outcome::Failed(transport_kind(&e)),
        };
        let status = response.status().as_u16();
        match status {
            201 | 202 => match response.json::<Value>().await {
                Ok(order) => {
                    ledger.orders.push(AckOrder {
                        order_id: order["id"].as_str().unwrap_or_default().to_owned(),
                        customer_id: customer.id.clone(),
                        status: if status == 201 {
                            "committed"
                        } else {
                            "pending"
                        }
                        .into(),
                        total_cents: order["total_cents"].as_i64().unwrap_or(-1),
                    });
                    Outcome::Ok
                }
                Err(e) => Outcome::Failed(transport_kind(&e)),
            },
            409 => {
                let kind = problem_kind(response).await;
                // Out of stock or credit is the shop working; a checkout that could not finish is not.
                if kind.contains("checkout-aborted") {
                    Outcome::Failed(kind)
                } else {
                    Outcome::Refused
                }
            }
            _ => Outcome::Failed(problem_kind(response).await),
        }
    }

    async fn send_top_up(&self, token: &str, top_up: &TopUp) -> TopUpResult {
        let sent = self
            .http
            .post(format!(
                "{}/api/customers/{}/credit",
                self.gateway, top_up.customer_id
            ))
            .bearer_auth(token)
            .header("idempotency-key", &top_up.idempotency_key)
            .json(&json!({"amount_cents": top_up.amount_cents}))
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => match response.bytes().await {
                Ok(_) => TopUpResult::Applied,
                Err(e) => TopUpResult::Unknown(transport_kind(&e)),
            },
            // A 4xx is a decision made before anything was written (429 too: never forwarded).
            Ok(response) if response.status().is_client_error() && response.status() != 408 => {
                TopUpResult::Refused(problem_kind(response).await)
            }
            Ok(response) => TopUpResult::Unknown(problem_kind(response).await),
            Err(e) => TopUpResult::Unknown(transport_kind(&e)),
        }
    }

    /// Follows every checkout answered 202 to its order (`GET /api/orders/{id}`, the `Location`
    /// of the answer) until the order is final, so the ledger knows which acknowledged orders
    /// committed and with what total. An order the platform no longer knows (404) stays pending in
    /// the ledger, and the invariant check reports it as an acknowledged order lost. Gives up at
    /// `deadline`, leaving the rest pending.
    pub async fn resolve_pending_orders(
        &self,
        ledger: &mut Ledger,
        deadline: tokio::time::Instant,
    ) {
        loop {
            let mut left = 0;
            for order in ledger.orders.iter_mut().filter(|o| o.status == "pending") {
                let token = self
                    .customers
                    .iter()
                    .find(|c| c.id == order.customer_id)
                    .map(Customer::token)
                    .unwrap_or_else(|| self.admin_token());
                let answer = self
                    .http
                    .get(format!("{}/api/orders/{}", self.gateway, order.order_id))
                    .bearer_auth(token)
                    .send()
                    .await;
                let body = match answer {
                    Ok(response) if response.status().is_success() => {
                        response.json::<Value>().await.ok()
                    }
                    _ => None,
                };
                match body.as_ref().and_then(|b| b["status"].as_str()) {
                    Some(status @ ("committed" | "aborted")) => {
                        order.status = status.to_owned();
                        if let Some(total) = body.as_ref().and_then(|b| b["total_cents"].as_i64()) {
                            order.total_cents = total;
                        }
                    }
                    _ => left += 1,
                }
            }
            if left == 0 || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Repeats every top-up whose answer was lost, with its key, until it is answered: a replay
    /// returns the first answer if it was applied, and applies it now if it was not — either way
    /// it is then known. Gives up at `deadline`, leaving the rest unresolved.
    pub async fn resolve_top_ups(&self, ledger: &mut Ledger, deadline: tokio::time::Instant) {
        let mut left = std::mem::take(&mut ledger.unresolved_top_ups);
        while !left.is_empty() && tokio::time::Instant::now() < deadline {
            let mut still = Vec::new();
            for top_up in left {
                let token = self
                    .customers
                    .iter()
                    .find(|c| c.id == top_up.customer_id)
                    .map(Customer::token)
                    .unwrap_or_else(|| self.admin_token());
                // The funding top-ups were the admin's; a replay must come from the same scope,
                // which is the customer, so either caller finds the same key.
                match self.send_top_up(&token, &top_up).await {
                    TopUpResult::Applied => ledger.top_ups.push(top_up),
                    TopUpResult::Refused(_) => {}
                    TopUpResult::Unknown(_) => still.push(top_up),
                }
            }
            left = still;
            if !left.is_empty() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        ledger.unresolved_top_ups = left;
    }
}

enum TopUpResult {
    Applied,
    /// Refused before anything was written.
    Refused(String),
    /// Sent, but whether it was applied is not known.
    Unknown(String),
}

/// `503 /problems/unavailable`: the status and the problem type, which together say what failed.
async fn problem_kind(response: reqwest::Response) -> String {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    match body["type"].as_str() {
        Some(kind) => format!("{status} {kind}"),
        None => status.to_string(),
    }
}

/// `timeout`, `connect` or `transport`, for errors where no answer came.
pub fn transport_kind(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timeout".into()
    } else if error.is_connect() {
        "connect".into()
    } else {
        "transport".into()
    }
}
