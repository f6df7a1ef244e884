use serde_json::Value;

use crate::helpers::{TestApp, assert_problem, spawn_app, titled};

/// A small catalog with shared words, authors and genres.
async fn catalog() -> TestApp {
    let app = spawn_app().await;
    for (n, title, author, genre) in [
        (
            1,
            "Harry Potter and the Philosopher's Stone",
            "J. K. Rowling",
            "Fantasy",
        ),
        (2, "Dune", "Frank Herbert", "Science Fiction"),
        (3, "Dune Messiah", "Frank Herbert", "Science Fiction"),
        (4, "The Hobbit", "J. R. R. Tolkien", "Fantasy"),
        (
            5,
            "Dune: The Butlerian Jihad",
            "Brian Herbert",
            "Science Fiction",
        ),
        (6, "Neuromancer", "William Gibson", "Cyberpunk"),
    ] {
        app.create_book(&titled(n, title, author, genre)).await;
    }
    app
}

async fn titles(app: &TestApp, params: &[(&str, &str)]) -> Vec<String> {
    let (items, _) = app.list_all(params).await;
    items
        .iter()
        .map(|b: &Value| b["title"].as_str().expect("title").to_owned())
        .collect()
}

#[tokio::test]
async fn author_and_genre_filters_are_exact_trimmed_and_case_insensitive() {
    let app = catalog().await;
    assert_eq!(
        titles(&app, &[("author", "  frank HERBERT ")]).await,
        ["Dune", "Dune Messiah"]
    );
    assert_eq!(titles(&app, &[("genre", "FANTASY")]).await.len(), 2);
    assert!(
        titles(&app, &[("author", "Herbert")]).await.is_empty(),
        "exact, not partial"
    );
    assert_eq!(
        titles(&app, &[("author", "")]).await.len(),
        6,
        "blank filters nothing"
    );
}

#[tokio::test]
async fn q_finds_whole_words_in_titles_and_authors() {
    let app = catalog().await;
    let dune = ["Dune", "Dune Messiah", "Dune: The Butlerian Jihad"];
    assert_eq!(titles(&app, &[("q", "dune")]).await, dune);
    assert_eq!(titles(&app, &[("q", "HERBERT")]).await, dune);
    assert_eq!(
        titles(&app, &[("q", "gibson neuromancer")]).await,
        ["Neuromancer"]
    );
}

#[tokio::test]
async fn q_matches_word_prefixes_as_they_are_typed() {
    let app = catalog().await;
    assert_eq!(
        titles(&app, &[("q", "harr pot")]).await,
        ["Harry Potter and the Philosopher's Stone"]
    );
    assert_eq!(titles(&app, &[("q", "tolk")]).await, ["The Hobbit"]);
    assert_eq!(titles(&app, &[("q", "dune mess")]).await, ["Dune Messiah"]);
}

#[tokio::test]
async fn q_understands_exclusions_and_phrases() {
    let app = catalog().await;
    assert_eq!(
        titles(&app, &[("q", "dune -brian")]).await,
        ["Dune", "Dune Messiah"]
    );
    assert_eq!(
        titles(&app, &[("q", "\"dune messiah\"")]).await,
        ["Dune Messiah"]
    );
}

#[tokio::test]
async fn filters_combine() {
    let app = catalog().await;
    assert_eq!(
        titles(&app, &[("genre", "fantasy"), ("q", "harry")]).await,
        ["Harry Potter and the Philosopher's Stone"]
    );
    assert_eq!(
        titles(&app, &[("author", "frank herbert"), ("q", "mess")]).await,
        ["Dune Messiah"]
    );
    assert!(
        titles(&app, &[("genre", "fantasy"), ("q", "dune")])
            .await
            .is_empty()
    );
    assert_eq!(
        titles(
            &app,
            &[("genre", "science fiction"), ("author", "brian herbert")]
        )
        .await,
        ["Dune: The Butlerian Jihad"]
    );
}

#[tokio::test]
async fn filtered_results_paginate_like_the_full_list() {
    let app = catalog().await;
    let (items, pages) = app.list_all(&[("q", "dune"), ("limit", "1")]).await;
    assert_eq!((items.len(), pages), (3, 3));
}

#[tokio::test]
async fn odd_search_text_never_fails() {
    let app = catalog().await;
    for q in [
        "!!!",
        "&",
        "|",
        "!",
        "a:*",
        "dune:*",
        "'",
        "''",
        "\\",
        "(((",
        ")",
        "<->",
        "<2>",
        "-",
        "--",
        "\"",
        "\"\"",
        "or",
        "dune or hobbit",
        "-dune",
        "²",
        "日本語",
        "😀",
        "a & b | !c",
        "x:A",
        "%",
        "_",
        "null",
        "' OR 1=1 --",
        "dune\u{200b}",
        "\u{fffd}",
    ] {
        let response = app.list_books(&[("q", q)]).await;
        assert_eq!(response.status(), 200, "q={q:?}");
    }
    assert!(
        titles(&app, &[("q", "!!!")]).await.is_empty(),
        "no words, no match"
    );
    assert_eq!(titles(&app, &[("q", "dune or hobbit")]).await.len(), 4);
}

#[tokio::test]
async fn too_long_or_control_character_filters_are_400_problems() {
    let app = spawn_app().await;
    let long = |n: usize| "x".repeat(n);
    for (name, value) in [
        ("q", long(201)),
        ("author", long(201)),
        ("genre", long(65)),
        ("q", "a\u{0}b".into()),
        ("author", "a\u{1}b".into()),
    ] {
        let problem = assert_problem(app.list_books(&[(name, &value)]).await, 400).await;
        assert!(
            problem["detail"]
                .as_str()
                .unwrap_or_default()
                .contains(name)
        );
    }
    for (name, value) in [("q", long(200)), ("author", long(200)), ("genre", long(64))] {
        assert_eq!(
            app.list_books(&[(name, &value)]).await.status(),
            200,
            "{name}"
        );
    }
}
