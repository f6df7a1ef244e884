use std::collections::HashSet;

use serde_json::{Value, json};

use crate::helpers::{assert_problem, book, id_of, spawn_app, titled};

fn titles(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|b| b["title"].as_str().expect("title").to_owned())
        .collect()
}

#[tokio::test]
async fn an_empty_catalog_is_one_empty_page() {
    let app = spawn_app().await;
    let page = app.list_page(&[]).await;
    assert_eq!(page, json!({"items": [], "next_cursor": null}));
}

#[tokio::test]
async fn pagination_walks_every_book_exactly_once_in_title_order() {
    let app = spawn_app().await;
    let mut expected = Vec::new();
    // Created out of order, so the order seen must come from the sort, not insertion.
    for n in (0..45).rev() {
        expected.push(id_of(&app.create_book(&book(n)).await));
    }
    expected.reverse();

    let (items, pages) = app.list_all(&[("limit", "10")]).await;
    assert_eq!(pages, 5);
    let ids: Vec<String> = items.iter().map(id_of).collect();
    assert_eq!(ids, expected, "every book once, in title order");

    let first = app.list_page(&[]).await;
    assert_eq!(
        first["items"].as_array().map(Vec::len),
        Some(20),
        "default limit"
    );
}

#[tokio::test]
async fn books_with_the_same_title_are_ordered_by_id_and_none_is_lost() {
    let app = spawn_app().await;
    for n in 0..7 {
        app.create_book(&titled(n, "Same Title", "A", "G")).await;
    }
    let (items, _) = app.list_all(&[("limit", "2")]).await;
    let ids: Vec<String> = items.iter().map(id_of).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 7);
}

#[tokio::test]
async fn a_book_inserted_mid_walk_before_the_cursor_shifts_nothing() {
    let app = spawn_app().await;
    for n in 0..45 {
        app.create_book(&book(n)).await;
    }
    let mut seen = Vec::new();
    let mut page = app.list_page(&[("limit", "10")]).await;
    for walked in 1.. {
        seen.extend(titles(page["items"].as_array().expect("items")));
        if walked == 2 {
            // "Book 005a" sorts before the cursor ("Book 019"), "Book 030a" after it.
            app.create_book(&titled(100, "Book 005a", "A", "G")).await;
            app.create_book(&titled(101, "Book 030a", "A", "G")).await;
        }
        let Some(cursor) = page["next_cursor"].as_str().map(String::from) else {
            break;
        };
        page = app.list_page(&[("limit", "10"), ("cursor", &cursor)]).await;
    }
    let mut expected: Vec<String> = (0..45).map(|n| format!("Book {n:03}")).collect();
    expected.insert(31, "Book 030a".into());
    assert_eq!(
        seen, expected,
        "no duplicates, no gaps, the later insert seen once"
    );
}

#[tokio::test]
async fn invalid_limits_are_400_problems() {
    let app = spawn_app().await;
    for limit in ["0", "101", "abc", "-1", "1.5", ""] {
        let problem = assert_problem(app.list_books(&[("limit", limit)]).await, 400).await;
        assert!(
            problem["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("limit")
        );
    }
    assert_eq!(app.list_books(&[("limit", "100")]).await.status(), 200);
}

#[tokio::test]
async fn a_forged_cursor_is_a_400_problem() {
    use platform::pagination::encode_cursor;
    let app = spawn_app().await;
    for cursor in [
        "garbage!".to_string(),
        encode_cursor(&"a string"),
        encode_cursor(&json!(["title", "not-a-uuid"])),
        encode_cursor(&json!({"title": "x"})),
        encode_cursor(&json!([
            "nul\u{0}title",
            "0193a6f2-0000-7000-8000-000000000000"
        ])),
    ] {
        assert_problem(app.list_books(&[("cursor", &cursor)]).await, 400).await;
    }
    // A well-formed cursor for a book that does not exist just continues after that key.
    let cursor = encode_cursor(&json!(["M", "0193a6f2-0000-7000-8000-000000000000"]));
    assert_eq!(app.list_books(&[("cursor", &cursor)]).await.status(), 200);
}
