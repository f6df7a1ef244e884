-- The catalog. One row per book ever created; deletes are soft (`deleted_at`) because order lines in the
-- orders database keep referring to deleted books and the warehouse ETL still wants the row.
--
-- The CHECK constraints mirror the API's validation (domain/*.rs), so the database itself can never hold
-- data the API would have refused, whoever writes it.
CREATE TABLE books (
    id           uuid        PRIMARY KEY,
    -- Always normalised to 13 digits (an ISBN-10 is converted on the way in).
    isbn         text        NOT NULL CONSTRAINT books_isbn_format CHECK (isbn ~ '^97[89][0-9]{10}$'),
    title        text        NOT NULL CONSTRAINT books_title_length CHECK (char_length(title) BETWEEN 1 AND 300),
    author       text        NOT NULL CONSTRAINT books_author_length CHECK (char_length(author) BETWEEN 1 AND 200),
    genre        text        NOT NULL CONSTRAINT books_genre_length CHECK (char_length(genre) BETWEEN 1 AND 64),
    price_cents  bigint      NOT NULL CONSTRAINT books_price_range CHECK (price_cents BETWEEN 0 AND 100000000),
    stock        integer     NOT NULL CONSTRAINT books_stock_range CHECK (stock BETWEEN 0 AND 1000000),
    -- Optimistic concurrency: the ETag. Every statement that changes the row adds one.
    version      bigint      NOT NULL DEFAULT 1 CONSTRAINT books_version_positive CHECK (version >= 1),
    -- Ratings are 1..5 stars, so the sum always lies between count and 5 * count.
    rating_count bigint      NOT NULL DEFAULT 0 CONSTRAINT books_rating_count_positive CHECK (rating_count >= 0),
    rating_sum   bigint      NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- Maintained by the trigger below, so no writer (API, checkout, ratings persister) can forget it:
    -- the warehouse extracts incrementally by this column.
    updated_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at   timestamptz,
    -- Text search over title and author. 'simple' (no stemming, no stop words) because titles and
    -- names are proper nouns in many languages.
    search       tsvector    GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, title || ' ' || author)) STORED,
    CONSTRAINT books_rating_sum_range CHECK (rating_sum BETWEEN rating_count AND 5 * rating_count)
);

-- One live book per ISBN; a deleted book's ISBN may be used again. The API maps a violation of this
-- name to 409.
CREATE UNIQUE INDEX books_isbn_key ON books (isbn) WHERE deleted_at IS NULL;

-- Keyset pagination walks (title, id) in order.
CREATE INDEX books_title_id_idx ON books (title, id) WHERE deleted_at IS NULL;

-- Case-insensitive exact filters.
CREATE INDEX books_author_lower_idx ON books (lower(author)) WHERE deleted_at IS NULL;
CREATE INDEX books_genre_lower_idx ON books (lower(genre)) WHERE deleted_at IS NULL;

CREATE INDEX books_search_idx ON books USING gin (search) WHERE deleted_at IS NULL;

-- Incremental extraction by the warehouse; includes deleted rows on purpose.
CREATE INDEX books_updated_at_idx ON books (updated_at, id);

CREATE FUNCTION books_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE TRIGGER books_touch_updated_at
    BEFORE UPDATE ON books
    FOR EACH ROW EXECUTE FUNCTION books_touch_updated_at();
