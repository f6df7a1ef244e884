//! Demo data, loaded through the public API (so it goes through the same validation and the same
//! authorization as any client): 60 classics over eight genres and many authors, created as the
//! admin, and three customers who sign up, log in and top up their own credit. Loaded only into an
//! empty catalog, so `up` on existing data changes nothing.

use anyhow::Context;
use futures::StreamExt;
use serde_json::json;

/// (title, author, genre): public-domain classics, so the names are real and free to use.
const BOOKS: &[(&str, &str, &str)] = &[
    ("Pride and Prejudice", "Jane Austen", "romance"),
    ("Sense and Sensibility", "Jane Austen", "romance"),
    ("Emma", "Jane Austen", "romance"),
    ("Persuasion", "Jane Austen", "romance"),
    ("Jane Eyre", "Charlotte Brontë", "romance"),
    ("Wuthering Heights", "Emily Brontë", "romance"),
    ("North and South", "Elizabeth Gaskell", "romance"),
    ("Moby-Dick", "Herman Melville", "adventure"),
    ("Treasure Island", "Robert Louis Stevenson", "adventure"),
    ("Kidnapped", "Robert Louis Stevenson", "adventure"),
    ("The Count of Monte Cristo", "Alexandre Dumas", "adventure"),
    ("The Three Musketeers", "Alexandre Dumas", "adventure"),
    (
        "Around the World in Eighty Days",
        "Jules Verne",
        "adventure",
    ),
    (
        "Twenty Thousand Leagues Under the Seas",
        "Jules Verne",
        "science-fiction",
    ),
    (
        "Journey to the Center of the Earth",
        "Jules Verne",
        "science-fiction",
    ),
    ("The Time Machine", "H. G. Wells", "science-fiction"),
    ("The War of the Worlds", "H. G. Wells", "science-fiction"),
    ("The Invisible Man", "H. G. Wells", "science-fiction"),
    (
        "The Island of Doctor Moreau",
        "H. G. Wells",
        "science-fiction",
    ),
    ("Frankenstein", "Mary Shelley", "horror"),
    ("Dracula", "Bram Stoker", "horror"),
    (
        "The Strange Case of Dr Jekyll and Mr Hyde",
        "Robert Louis Stevenson",
        "horror",
    ),
    ("The Picture of Dorian Gray", "Oscar Wilde", "horror"),
    ("The Turn of the Screw", "Henry James", "horror"),
    ("Carmilla", "Sheridan Le Fanu", "horror"),
    (
        "The Hound of the Baskervilles",
        "Arthur Conan Doyle",
        "mystery",
    ),
    ("A Study in Scarlet", "Arthur Conan Doyle", "mystery"),
    ("The Sign of the Four", "Arthur Conan Doyle", "mystery"),
    (
        "The Adventures of Sherlock Holmes",
        "Arthur Conan Doyle",
        "mystery",
    ),
    ("The Moonstone", "Wilkie Collins", "mystery"),
    ("The Woman in White", "Wilkie Collins", "mystery"),
    (
        "The Mysterious Affair at Styles",
        "Agatha Christie",
        "mystery",
    ),
    ("The Secret Adversary", "Agatha Christie", "mystery"),
    ("Great Expectations", "Charles Dickens", "literary"),
    ("A Tale of Two Cities", "Charles Dickens", "historical"),
    ("Oliver Twist", "Charles Dickens", "literary"),
    ("Bleak House", "Charles Dickens", "literary"),
    ("David Copperfield", "Charles Dickens", "literary"),
    ("War and Peace", "Leo Tolstoy", "historical"),
    ("Anna Karenina", "Leo Tolstoy", "literary"),
    ("Crime and Punishment", "Fyodor Dostoevsky", "literary"),
    ("The Brothers Karamazov", "Fyodor Dostoevsky", "literary"),
    ("The Idiot", "Fyodor Dostoevsky", "literary"),
    ("Madame Bovary", "Gustave Flaubert", "literary"),
    ("Les Misérables", "Victor Hugo", "historical"),
    ("The Hunchback of Notre-Dame", "Victor Hugo", "historical"),
    ("Ivanhoe", "Walter Scott", "historical"),
    (
        "The Last of the Mohicans",
        "James Fenimore Cooper",
        "historical",
    ),
    ("Middlemarch", "George Eliot", "literary"),
    ("Silas Marner", "George Eliot", "literary"),
    ("The Scarlet Letter", "Nathaniel Hawthorne", "historical"),
    ("Adventures of Huckleberry Finn", "Mark Twain", "adventure"),
    ("The Adventures of Tom Sawyer", "Mark Twain", "adventure"),
    ("Little Women", "Louisa May Alcott", "literary"),
    ("The Odyssey", "Homer", "poetry"),
    ("The Iliad", "Homer", "poetry"),
    ("Leaves of Grass", "Walt Whitman", "poetry"),
    ("Paradise Lost", "John Milton", "poetry"),
    ("The Divine Comedy", "Dante Alighieri", "poetry"),
    ("Don Quixote", "Miguel de Cervantes", "adventure"),
];

/// Demo customers: (email, name, credit in cents). Their password is [`DEMO_PASSWORD`].
pub const CUSTOMERS: &[(&str, &str, i64)] = &[
    ("alice@example.com", "Alice Archer", 50_000),
    ("bob@example.com", "Bob Baker", 25_000),
    ("carol@example.com", "Carol Chen", 100_000),
];

/// Documented in the README; demo accounts only.
pub const DEMO_PASSWORD: &str = "bookstore-demo";

/// A valid ISBN-13 in the 979-8 range, derived from `n` so the catalog is the same on every machine.
pub fn isbn13(n: usize) -> String {
    let body = format!("9798{:08}", 40_000_000 + n * 7919);
    let sum: u32 = body
        .bytes()
        .enumerate()
        .map(|(i, b)| u32::from(b - b'0') * if i % 2 == 0 { 1 } else { 3 })
        .sum();
    format!("{body}{}", (10 - sum % 10) % 10)
}

/// The admin credentials the catalog is loaded with.
pub struct Admin<'a> {
    pub email: &'a str,
    pub password: &'a str,
}

/// Loads the demo data through the gateway when the catalog is empty. Returns whether it loaded.
pub async fn load_if_empty(
    gateway: &str,
    admin: &Admin<'_>,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<bool> {
    let client = reqwest::Client::new();
    let page: serde_json::Value = client
        .get(format!("{gateway}/api/books?limit=1"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    if page["items"]
        .as_array()
        .is_some_and(|items| !items.is_empty())
    {
        return Ok(false);
    }
    let admin_token = log_in(&client, gateway, admin.email, admin.password)
        .await
        .context("demo data: cannot log in as the admin")?;
    // A few requests at a time: the catalog sorts by title, so the order they land in does not
    // show, and one after another made the demo data most of a debug build's start-up.
    let books_url = format!("{gateway}/api/books");
    let mut loaded = 0;
    let mut books = futures::stream::iter(BOOKS.iter().enumerate())
        .map(|(n, (title, author, genre))| {
            let book = json!({
                "isbn": isbn13(n), "title": title, "author": author, "genre": genre,
                "price_cents": 499 + (n as i64 * 137) % 2500, "stock": 5 + (n as i64 * 7) % 40,
            });
            let (client, url, token) = (&client, &books_url, &admin_token);
            async move { post(client, url, &book, Some(token)).await }
        })
        .buffer_unordered(DEMO_CONCURRENCY);
    while let Some(book) = books.next().await {
        book?;
        loaded += 1;
        progress.set_message(format!("loading demo data: book {loaded}/{}", BOOKS.len()));
    }
    progress.set_message("loading demo data: customers");
    futures::future::try_join_all(
        CUSTOMERS
            .iter()
            .map(|(email, name, credit)| demo_customer(&client, gateway, email, name, *credit)),
    )
    .await?;
    Ok(true)
}

/// How many demo requests are in flight at once.
const DEMO_CONCURRENCY: usize = 4;

/// One demo customer: signed up, logged in, given credit.
async fn demo_customer(
    client: &reqwest::Client,
    gateway: &str,
    email: &str,
    name: &str,
    credit: i64,
) -> anyhow::Result<()> {
    let body = json!({"email": email, "name": name, "password": DEMO_PASSWORD});
    let customer = post(client, &format!("{gateway}/api/customers"), &body, None).await?;
    let id = customer["id"].as_str().context("customer without id")?;
    let token = log_in(client, gateway, email, DEMO_PASSWORD)
        .await
        .with_context(|| format!("demo data: cannot log in as {email}"))?;
    let url = format!("{gateway}/api/customers/{id}/credit");
    post(client, &url, &json!({"amount_cents": credit}), Some(&token)).await?;
    Ok(())
}

/// `POST /api/auth/token`; the access token. Errors name neither the password nor the token.
async fn log_in(
    client: &reqwest::Client,
    gateway: &str,
    email: &str,
    password: &str,
) -> anyhow::Result<String> {
    let body = json!({"email": email, "password": password});
    let answer = post(client, &format!("{gateway}/api/auth/token"), &body, None).await?;
    answer["access_token"]
        .as_str()
        .map(str::to_owned)
        .context("the login answer has no access_token")
}

/// A JSON POST (with `Authorization: Bearer <token>` when given) that must succeed.
async fn post(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    token: Option<&str>,
) -> anyhow::Result<serde_json::Value> {
    // A gateway with a strict rate limit answers 429: wait as told and try again, like any
    // well-behaved client (these writes are not idempotent, but a 429 means it was not done).
    for _ in 0..20 {
        let mut request = client.post(url).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        let status = response.status();
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            let wait = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .unwrap_or(1)
                .min(5);
            tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
            continue;
        }
        let answer: serde_json::Value = response.json().await.unwrap_or_default();
        anyhow::ensure!(
            status.is_success(),
            "demo data: POST {url} answered {status}: {answer}"
        );
        return Ok(answer);
    }
    anyhow::bail!("demo data: POST {url} was rate limited 20 times; raise the gateway's rate limit")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_isbns_are_valid_and_distinct() {
        let isbns: std::collections::HashSet<String> = (0..BOOKS.len()).map(isbn13).collect();
        assert_eq!(isbns.len(), BOOKS.len());
        for isbn in &isbns {
            let sum: u32 = isbn
                .bytes()
                .enumerate()
                .map(|(i, b)| u32::from(b - b'0') * if i % 2 == 0 { 1 } else { 3 })
                .sum();
            assert_eq!(sum % 10, 0, "{isbn}");
            assert_eq!(isbn.len(), 13);
        }
    }

    #[test]
    fn the_catalog_spans_many_genres_and_authors() {
        let genres: std::collections::HashSet<_> = BOOKS.iter().map(|b| b.2).collect();
        let authors: std::collections::HashSet<_> = BOOKS.iter().map(|b| b.1).collect();
        assert!(BOOKS.len() >= 50);
        assert!(genres.len() >= 6, "{genres:?}");
        assert!(authors.len() >= 20);
    }
}
