-- A book's rating totals move to a table of their own (docs/CACHE.md, "The totals, maintained").
--
-- Every persisted batch of ratings moves its books' totals. On `books` that rewrote the whole book
-- row, and never as a HOT update: the leaderboard index (`books_top_idx`) covers the totals, so each
-- rating added entries to all eight of `books`' indexes (the GIN search index among them), which
-- every replica replays too. Here a totals update writes a short row with two indexes (its key and
-- the leaderboard), leaves `books` — its row locks, which checkout takes, and its `updated_at`,
-- which the warehouse extracts by — alone, and the API shows the same JSON (the reads join).
--
-- Existing databases keep their totals: they are copied over under a lock that keeps any writer
-- (an instance still running the previous version) out until the columns are gone.
LOCK TABLE books IN ACCESS EXCLUSIVE MODE;

CREATE TABLE book_rating_totals (
    -- One row per book, made with the book (the trigger below); a book deleted for good (not the
    -- API's soft delete) takes its totals with it.
    book_id      uuid        PRIMARY KEY REFERENCES books (id) ON DELETE CASCADE,
    rating_count bigint      NOT NULL DEFAULT 0
                             CONSTRAINT book_rating_totals_count_positive CHECK (rating_count >= 0),
    rating_sum   bigint      NOT NULL DEFAULT 0,
    -- When a persisted rating last moved these totals ('-infinity': never). The API's `updated_at`
    -- of a book is the later of this and the book row's, as it was when the totals lived there.
    updated_at   timestamptz NOT NULL DEFAULT '-infinity',
    -- Ratings are 1..5 stars, so the sum always lies between count and 5 * count.
    CONSTRAINT book_rating_totals_sum_range CHECK (rating_sum BETWEEN rating_count AND 5 * rating_count)
);

-- The book row's `updated_at` already counts the last rating that moved its totals.
INSERT INTO book_rating_totals (book_id, rating_count, rating_sum, updated_at)
SELECT id, rating_count, rating_sum,
       CASE WHEN rating_count > 0 THEN updated_at ELSE '-infinity' END
  FROM books;

-- The leaderboard: best average first (more ratings break ties). Deleted books are filtered by the
-- join to `books`; they are few and only cost a skipped row each.
CREATE INDEX book_rating_totals_top_idx
    ON book_rating_totals ((rating_sum::float8 / rating_count) DESC, rating_count DESC, book_id)
    WHERE rating_count > 0;

DROP INDEX books_top_idx;
ALTER TABLE books
    DROP CONSTRAINT books_rating_sum_range,
    DROP CONSTRAINT books_rating_count_positive,
    DROP COLUMN rating_count,
    DROP COLUMN rating_sum;

-- Every book gets its totals row in the statement that inserts it, whoever inserts it (the API, a
-- seed script, a test), so the persisters only ever update and lock existing rows.
CREATE FUNCTION books_add_rating_totals() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO book_rating_totals (book_id) SELECT id FROM new_books;
    RETURN NULL;
END;
$$;

CREATE TRIGGER books_add_rating_totals
    AFTER INSERT ON books
    REFERENCING NEW TABLE AS new_books
    FOR EACH STATEMENT EXECUTE FUNCTION books_add_rating_totals();
