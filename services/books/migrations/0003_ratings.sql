-- Ratings, written behind: accepted into a Redis Stream (202), persisted here by the books instances'
-- persister (docs/CACHE.md, "Ratings"). One row per customer and book: a later rating replaces the
-- earlier one. "Later" is the stream's order — (stream_ms, stream_seq) is the entry id Redis gave
-- the rating — so replaying an entry, or persisting two ratings out of order, never lets an older
-- one win: the upsert only overwrites a row with a smaller entry id.
CREATE TABLE ratings (
    customer_id uuid        NOT NULL,
    book_id     uuid        NOT NULL,
    -- The id the API answered with (202 {rating_id}).
    rating_id   uuid        NOT NULL,
    stars       smallint    NOT NULL CONSTRAINT ratings_stars_range CHECK (stars BETWEEN 1 AND 5),
    text        text        CONSTRAINT ratings_text_length CHECK (char_length(text) <= 2000),
    stream_ms   bigint      NOT NULL,
    stream_seq  bigint      NOT NULL,
    rated_at    timestamptz NOT NULL,
    persisted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, book_id)
);

CREATE UNIQUE INDEX ratings_rating_id_key ON ratings (rating_id);
-- The books' totals are recomputed from here after every batch.
CREATE INDEX ratings_book_id_idx ON ratings (book_id);

-- The leaderboard: best average first (more ratings break ties).
CREATE INDEX books_top_idx ON books ((rating_sum::float8 / rating_count) DESC, rating_count DESC, id)
    WHERE deleted_at IS NULL AND rating_count > 0;
