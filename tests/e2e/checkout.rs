//! Checkout through the gateway on the real platform: both protocols, refusals that change nothing,
//! idempotent replays, and the invariants (stock sold = order lines, credit debited = order totals,
//! nothing left prepared) under concurrent, oversubscribed checkouts.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use testkit::TestPlatform;

use crate::{admin_token, client, expect_problem, new_customer, superuser_url};

/// One platform with a few books of known stock, the admin, and direct database access for the
/// invariant checks.
pub struct Shop {
    pub platform: TestPlatform,
    pub client: reqwest::Client,
    pub gateway: String,
    admin: String,
    pub books_db: PgPool,
    pub orders_db: PgPool,
    /// Credit given to each customer created through [`Shop::customer`], by id.
    credit: HashMap<String, i64>,
    /// Stock each book was created with, by id.
    stock: HashMap<String, i64>,
}

/// Coordinator settings that take an abandoned transaction over within about 2 s.
pub const FAST_RECOVERY: [(&str, &str); 3] = [
    ("BOOKSTORE_COORDINATOR__COORDINATOR__LEASE_MS", "1500"),
    ("BOOKSTORE_COORDINATOR__COORDINATOR__LEASE_RENEW_MS", "500"),
    (
        "BOOKSTORE_COORDINATOR__COORDINATOR__RECOVERY_INTERVAL_MS",
        "300",
    ),
];

/// A customer's id and token.
pub struct Customer {
    pub id: String,
    pub token: String,
}

impl Shop {
    pub async fn open(platform: TestPlatform) -> anyhow::Result<Shop> {
        let client = client();
        let gateway = platform.gateway_url().to_owned();
        let admin = admin_token(&client, &platform).await?;
        let books_db = PgPool::connect(&superuser_url(&platform, "books")?).await?;
        let orders_db = PgPool::connect(&superuser_url(&platform, "orders")?).await?;
        Ok(Shop {
            platform,
            client,
            gateway,
            admin,
            books_db,
            orders_db,
            credit: HashMap::new(),
            stock: HashMap::new(),
        })
    }

    /// Points the invariant checks at the PostgreSQL listening on `pg_port` (on a cluster: the
    /// primary after a failover; `open` connects to the first member).
    pub async fn check_on(&mut self, pg_port: u16) -> anyhow::Result<()> {
        let url = |db: &str| -> anyhow::Result<String> {
            let base = superuser_url(&self.platform, db)?;
            let port = self.platform.state().postgres_port;
            Ok(base.replace(&format!(":{port}/"), &format!(":{pg_port}/")))
        };
        self.books_db = PgPool::connect(&url("books")?).await?;
        self.orders_db = PgPool::connect(&url("orders")?).await?;
        Ok(())
    }

    /// A new book with `stock` copies at `price_cents`; its id.
    pub async fn book(&mut self, stock: i64, price_cents: i64) -> anyhow::Result<String> {
        let n = self.stock.len() + 1;
        let book: Value = self
            .client
            .post(format!("{}/api/books", self.gateway))
            .bearer_auth(&self.admin)
            .json(&json!({"isbn": isbn(n), "title": format!("Checkout {n}"),
                          "author": "C. Heckout", "genre": "test",
                          "price_cents": price_cents, "stock": stock}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let id = book["id"].as_str().unwrap_or_default().to_owned();
        self.stock.insert(id.clone(), stock);
        Ok(id)
    }

    /// A new customer holding `credit_cents`.
    pub async fn customer(&mut self, credit_cents: i64) -> anyhow::Result<Customer> {
        let email = format!(
            "buyer{}-{}@example.com",
            self.credit.len(),
            std::process::id()
        );
        let (id, token) =
            new_customer(&self.client, &self.gateway, &email, "s3cret-passw0rd").await?;
        if credit_cents > 0 {
            self.client
                .post(format!("{}/api/customers/{id}/credit", self.gateway))
                .bearer_auth(&token)
                .json(&json!({"amount_cents": credit_cents}))
                .send()
                .await?
                .error_for_status()?;
        }
        self.credit.insert(id.clone(), credit_cents);
        Ok(Customer { id, token })
    }

    pub async fn checkout(
        &self,
        customer: &Customer,
        key: &str,
        mode: &str,
        items: &[(&str, i64)],
    ) -> anyhow::Result<reqwest::Response> {
        let items: Vec<Value> = items
            .iter()
            .map(|(book, quantity)| json!({"book_id": book, "quantity": quantity}))
            .collect();
        Ok(self
            .client
            .post(format!("{}/api/checkout", self.gateway))
            .bearer_auth(&customer.token)
            .header("idempotency-key", key)
            .json(&json!({"mode": mode, "items": items}))
            .send()
            .await?)
    }

    /// Follows a checkout's order until it is no longer pending; its last representation.
    pub async fn settle(&self, customer: &Customer, order_id: &str) -> anyhow::Result<Value> {
        for _ in 0..600 {
            let view: Value = self
                .client
                .get(format!("{}/api/orders/{order_id}", self.gateway))
                .bearer_auth(&customer.token)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            if view["status"] != "pending" {
                return Ok(view);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("order {order_id} is still pending after a minute")
    }

    pub async fn stock_of(&self, book: &str) -> anyhow::Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT stock::bigint FROM books WHERE id = $1::uuid")
                .bind(book)
                .fetch_one(&self.books_db)
                .await?,
        )
    }

    pub async fn credit_of(&self, customer: &Customer) -> anyhow::Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT credit_cents FROM customers WHERE id = $1::uuid")
                .bind(&customer.id)
                .fetch_one(&self.orders_db)
                .await?,
        )
    }

    /// The invariants of every checkout test, over every book and customer this shop made:
    /// stock sold = committed order lines, credit debited = committed order totals, nothing left
    /// prepared in either database. Waits (up to `patience`) for recovery to settle the last
    /// prepared transactions before it judges.
    pub async fn assert_invariants(&self, patience: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let prepared = self.prepared().await?;
            if prepared == 0 {
                break;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{prepared} prepared transactions are still left"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for (book, initial) in &self.stock {
            let now = self.stock_of(book).await?;
            let sold: i64 = sqlx::query_scalar(
                "SELECT coalesce(sum(l.quantity), 0)::bigint FROM order_lines l
                 JOIN orders o ON o.id = l.order_id
                 WHERE l.book_id = $1::uuid AND o.status = 'committed'",
            )
            .bind(book)
            .fetch_one(&self.orders_db)
            .await?;
            assert!(now >= 0, "book {book} has negative stock {now}");
            assert_eq!(
                initial - now,
                sold,
                "stock of {book}: taken != sold in committed orders"
            );
        }
        for (customer, initial) in &self.credit {
            let (now, spent): (i64, i64) = sqlx::query_as(
                "SELECT c.credit_cents,
                        coalesce((SELECT sum(total_cents) FROM orders
                                  WHERE customer_id = c.id AND status = 'committed'), 0)::bigint
                 FROM customers c WHERE c.id = $1::uuid",
            )
            .bind(customer)
            .fetch_one(&self.orders_db)
            .await?;
            assert!(now >= 0, "customer {customer} has negative credit {now}");
            assert_eq!(
                initial - now,
                spent,
                "credit of {customer}: debited != committed totals"
            );
        }
        Ok(())
    }

    async fn prepared(&self) -> anyhow::Result<i64> {
        let mut total = 0;
        for db in [&self.books_db, &self.orders_db] {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()",
            )
            .fetch_one(db)
            .await?;
            total += n;
        }
        Ok(total)
    }
}

/// A valid ISBN-13 no demo book has.
fn isbn(n: usize) -> String {
    let body = format!("9792{:08}", n);
    let sum: u32 = body
        .bytes()
        .enumerate()
        .map(|(i, b)| u32::from(b - b'0') * if i % 2 == 0 { 1 } else { 3 })
        .sum();
    format!("{body}{}", (10 - sum % 10) % 10)
}

#[tokio::test]
async fn a_checkout_takes_stock_and_credit_once_in_both_modes_and_replays_its_answer()
-> anyhow::Result<()> {
    let mut shop = Shop::open(crate::start().await?).await?;
    let (a, b) = (shop.book(10, 1_250).await?, shop.book(5, 800).await?);
    let buyer = shop.customer(20_000).await?;
    let mut spent = 0;
    for mode in ["2pc", "saga"] {
        let key = format!("basket-{mode}");
        let response = shop
            .checkout(&buyer, &key, mode, &[(&a, 2), (&b, 1)])
            .await?;
        assert_eq!(response.status(), StatusCode::CREATED, "{mode}");
        let location = response.headers()["location"].to_str()?.to_owned();
        let first: Value = response.json().await?;
        assert_eq!(first["status"], "committed");
        assert_eq!(first["mode"], mode);
        assert_eq!(first["total_cents"], 3_300);
        assert_eq!(first["lines"].as_array().map(Vec::len), Some(2));
        assert_eq!(
            location,
            format!("/api/orders/{}", first["id"].as_str().unwrap_or("?"))
        );
        spent += 3_300;

        // The same key and basket: the same answer, marked as a replay, and nothing taken twice.
        let again = shop
            .checkout(&buyer, &key, mode, &[(&a, 2), (&b, 1)])
            .await?;
        assert_eq!(again.status(), StatusCode::CREATED);
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        let replayed: Value = again.json().await?;
        assert_eq!(replayed, first);

        // The final outcome is written unforced (docs/TRANSACTIONS.md, "What is forced"): a crash
        // of the database may lose it, leaving the record as it was before. A repeat then asks the
        // coordinator again, gives the same answer, and records the outcome again.
        let undone = sqlx::query(
            "UPDATE checkouts SET status = 'started', protocol_state = NULL, problem = NULL
             WHERE idempotency_key = $1 AND status = 'committed'",
        )
        .bind(&key)
        .execute(&shop.orders_db)
        .await?
        .rows_affected();
        assert_eq!(undone, 1, "{mode}");
        let relearned = shop
            .checkout(&buyer, &key, mode, &[(&a, 2), (&b, 1)])
            .await?;
        assert_eq!(relearned.status(), StatusCode::CREATED, "{mode}");
        let relearned: Value = relearned.json().await?;
        assert_eq!(relearned, first, "{mode}");
        let status: String =
            sqlx::query_scalar("SELECT status FROM checkouts WHERE idempotency_key = $1")
                .bind(&key)
                .fetch_one(&shop.orders_db)
                .await?;
        assert_eq!(status, "committed", "{mode}: recorded again");

        // The same key for another basket is refused.
        let other = shop.checkout(&buyer, &key, mode, &[(&a, 1)]).await?;
        expect_problem(other, 422).await;

        // The answer is made from the checkout's record, not read back from the order: it must be
        // the order exactly as it is read afterwards, timestamps included.
        let id = first["id"].as_str().unwrap_or_default();
        let view = shop.settle(&buyer, id).await?;
        assert_eq!(
            view, first,
            "{mode}: the checkout's answer is the stored order"
        );
    }
    assert_eq!(shop.stock_of(&a).await?, 6);
    assert_eq!(shop.stock_of(&b).await?, 3);
    assert_eq!(shop.credit_of(&buyer).await?, 20_000 - spent);

    // With the catalog down, a new checkout cannot be priced (503), but a repeat still gets the
    // recorded answer: the quote comes first, and its failure falls back to the record.
    for books in shop.platform.processes("books") {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(books.pid)?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP)?;
    }
    let fresh = shop
        .checkout(&buyer, "basket-books-down", "2pc", &[(&a, 1)])
        .await?;
    expect_problem(fresh, 503).await;
    let again = shop
        .checkout(&buyer, "basket-2pc", "2pc", &[(&a, 2), (&b, 1)])
        .await?;
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    for books in shop.platform.processes("books") {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(books.pid)?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT)?;
    }
    assert_eq!(shop.stock_of(&a).await?, 6);
    shop.assert_invariants(Duration::from_secs(10)).await
}

#[tokio::test]
async fn short_stock_or_credit_is_a_409_naming_what_is_short_and_changes_nothing()
-> anyhow::Result<()> {
    let mut shop = Shop::open(crate::start().await?).await?;
    let (scarce, plenty) = (shop.book(1, 500).await?, shop.book(100, 500).await?);
    let buyer = shop.customer(2_000).await?;
    for mode in ["2pc", "saga"] {
        let response = shop
            .checkout(
                &buyer,
                &format!("short-stock-{mode}"),
                mode,
                &[(&plenty, 1), (&scarce, 3)],
            )
            .await?;
        let problem = expect_problem(response, 409).await;
        assert_eq!(
            problem["type"], "/problems/insufficient-stock",
            "{mode}: {problem}"
        );
        assert_eq!(problem["refusal"]["short"][0]["book_id"], scarce.as_str());
        assert_eq!(problem["refusal"]["short"][0]["available"], 1);

        let response = shop
            .checkout(
                &buyer,
                &format!("short-credit-{mode}"),
                mode,
                &[(&plenty, 5)],
            )
            .await?;
        let problem = expect_problem(response, 409).await;
        assert_eq!(
            problem["type"], "/problems/insufficient-credit",
            "{mode}: {problem}"
        );
        assert_eq!(problem["refusal"]["required_cents"], 2_500);
        assert_eq!(problem["refusal"]["available_cents"], 2_000);

        // A replay of a refused checkout is refused the same way.
        let again = shop
            .checkout(
                &buyer,
                &format!("short-credit-{mode}"),
                mode,
                &[(&plenty, 5)],
            )
            .await?;
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        expect_problem(again, 409).await;
    }
    assert_eq!(shop.stock_of(&scarce).await?, 1);
    assert_eq!(shop.stock_of(&plenty).await?, 100);
    assert_eq!(shop.credit_of(&buyer).await?, 2_000);
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&shop.orders_db)
        .await?;
    assert_eq!(orders, 0, "a refused checkout left an order");
    shop.assert_invariants(Duration::from_secs(10)).await
}

#[tokio::test]
async fn checkout_refuses_bad_requests_clearly() -> anyhow::Result<()> {
    let mut shop = Shop::open(crate::start().await?).await?;
    let book = shop.book(10, 100).await?;
    let buyer = shop.customer(1_000).await?;
    let url = format!("{}/api/checkout", shop.gateway);
    let basket = json!({"items": [{"book_id": book, "quantity": 1}]});
    // No token, the admin, no key, a bad body, an unknown book.
    let anonymous = shop
        .client
        .post(&url)
        .header("idempotency-key", "k1")
        .json(&basket)
        .send()
        .await?;
    expect_problem(anonymous, 401).await;
    let admin = shop
        .client
        .post(&url)
        .bearer_auth(&shop.admin)
        .header("idempotency-key", "k1")
        .json(&basket)
        .send()
        .await?;
    expect_problem(admin, 403).await;
    // Refused for who it is before the key or the body is looked at.
    let admin_bad = shop
        .client
        .post(&url)
        .bearer_auth(&shop.admin)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await?;
    expect_problem(admin_bad, 403).await;
    let keyless = shop
        .client
        .post(&url)
        .bearer_auth(&buyer.token)
        .json(&basket)
        .send()
        .await?;
    expect_problem(keyless, 400).await;
    let bad = shop
        .client
        .post(&url)
        .bearer_auth(&buyer.token)
        .header("idempotency-key", "k2")
        .json(&json!({"items": [{"book_id": book, "quantity": 0}], "mode": "xa"}))
        .send()
        .await?;
    let problem = expect_problem(bad, 422).await;
    assert_eq!(
        problem["errors"].as_array().map(Vec::len),
        Some(2),
        "{problem}"
    );
    let unknown = shop
        .checkout(
            &buyer,
            "k3",
            "2pc",
            &[("00000000-0000-7000-8000-000000000000", 1)],
        )
        .await?;
    let problem = expect_problem(unknown, 409).await;
    assert_eq!(problem["type"], "/problems/unknown-book");
    // Another customer cannot read this customer's order.
    let done = shop.checkout(&buyer, "k4", "2pc", &[(&book, 1)]).await?;
    let id = done.json::<Value>().await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let other = shop.customer(0).await?;
    let peek = shop
        .client
        .get(format!("{}/api/orders/{id}", shop.gateway))
        .bearer_auth(&other.token)
        .send()
        .await?;
    expect_problem(peek, 403).await;
    shop.assert_invariants(Duration::from_secs(10)).await
}

#[tokio::test]
async fn oversubscribed_concurrent_checkouts_never_oversell_and_conserve_money()
-> anyhow::Result<()> {
    let platform = testkit::TestPlatform::start_with(crate::bookstore(), &FAST_RECOVERY).await?;
    let mut shop = Shop::open(platform).await?;
    let books = [
        shop.book(7, 300).await?,
        shop.book(5, 700).await?,
        shop.book(9, 100).await?,
    ];
    let mut buyers = Vec::new();
    for _ in 0..12 {
        buyers.push(shop.customer(5_000).await?);
    }
    let shop = &shop;
    let attempts = buyers.iter().enumerate().map(|(i, buyer)| {
        let books = &books;
        async move {
            let mode = if i % 2 == 0 { "2pc" } else { "saga" };
            let items = [(books[i % 3].as_str(), 2), (books[(i + 1) % 3].as_str(), 1)];
            let response = shop
                .checkout(buyer, &format!("rush-{i}"), mode, &items)
                .await?;
            let status = response.status();
            let body: Value = response.json().await?;
            anyhow::ensure!(
                [201, 202, 409].contains(&status.as_u16()),
                "unexpected {status}: {body}"
            );
            let committed = match status {
                StatusCode::CREATED => true,
                StatusCode::ACCEPTED => {
                    let id = body["id"].as_str().unwrap_or_default();
                    shop.settle(buyer, id).await?["status"] == "committed"
                }
                _ => false,
            };
            anyhow::Ok(committed)
        }
    });
    // Mid-run, one coordinator is killed (SIGKILL: no lease released) and a new one started; the
    // survivors and the newcomer take over whatever it was driving.
    let victim = shop.platform.processes("coordinator")[0].pid;
    let chaos = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(victim)?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL)?;
        shop.platform
            .spawn_instance(
                crate::bookstore(),
                "coordinator",
                "coordinator-restarted",
                &[
                    ("BOOKSTORE_COORDINATOR__LEASE_MS", "1500"),
                    ("BOOKSTORE_COORDINATOR__LEASE_RENEW_MS", "500"),
                    ("BOOKSTORE_COORDINATOR__RECOVERY_INTERVAL_MS", "300"),
                ],
            )
            .await
    };
    let (outcomes, restarted) = tokio::join!(futures::future::join_all(attempts), chaos);
    let _restarted = restarted?;
    let mut committed = 0;
    for outcome in outcomes {
        committed += usize::from(outcome?);
    }
    // 21 copies, each checkout wants 3 of two books: some must win and some must lose.
    assert!(committed > 0, "no checkout committed");
    assert!(
        committed < 12,
        "every checkout committed although stock is short"
    );
    shop.assert_invariants(Duration::from_secs(20)).await
}
