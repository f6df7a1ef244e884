-- The star schema (docs/WAREHOUSE.md). Loaded only by the ETL (src/etl); read by the reports.
-- Every table is keyed by the source's own ids, so a load is an upsert and re-running a window
-- changes nothing.

-- One row per calendar day a fact refers to; reports group and filter on it.
CREATE TABLE dim_date (
    date_key  integer  PRIMARY KEY,            -- yyyymmdd
    day       date     NOT NULL UNIQUE,
    year      smallint NOT NULL,
    quarter   smallint NOT NULL,
    month     smallint NOT NULL,
    day_of_month smallint NOT NULL,
    iso_week  smallint NOT NULL,
    -- 1 = Monday … 7 = Sunday (ISO).
    iso_day_of_week smallint NOT NULL
);

-- Books, slowly changing dimension type 2: a change of title, author, genre, isbn or price closes the
-- current version (valid_to) and opens a new one, so a sale is reported under the book as it was
-- when sold. The first version of a book is valid from -infinity: a sale loaded before the book's
-- first change always finds a version. `deleted` is type 1 (set on every version).
CREATE TABLE dim_book (
    book_key    bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    book_id     uuid        NOT NULL,
    isbn        text        NOT NULL,
    title       text        NOT NULL,
    author      text        NOT NULL,
    genre       text        NOT NULL,
    price_cents bigint      NOT NULL,
    valid_from  timestamptz NOT NULL,
    valid_to    timestamptz NOT NULL DEFAULT 'infinity',
    is_current  boolean     NOT NULL DEFAULT true,
    deleted     boolean     NOT NULL DEFAULT false,
    CONSTRAINT dim_book_valid_range CHECK (valid_from < valid_to)
);

-- At most one current version per book; the loader relies on it.
CREATE UNIQUE INDEX dim_book_current_key ON dim_book (book_id) WHERE is_current;
-- The version valid at a sale's time.
CREATE INDEX dim_book_validity_idx ON dim_book (book_id, valid_from, valid_to);

-- Customers, type 1 (name and email overwritten): the reports never group by customer attributes,
-- so their history is not worth a version per credit top-up. Never the password hash.
CREATE TABLE dim_customer (
    customer_id uuid        PRIMARY KEY,
    email       text        NOT NULL,
    name        text        NOT NULL,
    signed_up_at timestamptz NOT NULL
);

-- One row per order line of a committed order. An order that is later compensated (a saga undone)
-- loses its rows on the next run.
CREATE TABLE fact_sales (
    order_id     uuid        NOT NULL,
    line_no      integer     NOT NULL,
    date_key     integer     NOT NULL REFERENCES dim_date (date_key),
    sold_at      timestamptz NOT NULL,
    customer_id  uuid        NOT NULL,
    book_id      uuid        NOT NULL,
    -- The dim_book version valid at sold_at; NULL only until the book's row arrives (a late dimension).
    book_key     bigint      REFERENCES dim_book (book_key),
    mode         text        NOT NULL,
    quantity     integer     NOT NULL CHECK (quantity > 0),
    -- The unit price the customer paid (the order line's), not the catalog price of today.
    price_cents  bigint      NOT NULL CHECK (price_cents >= 0),
    revenue_cents bigint     GENERATED ALWAYS AS (quantity::bigint * price_cents) STORED,
    PRIMARY KEY (order_id, line_no)
);

-- Reports filter on a date range and group by day, author/genre (through book_key) or book.
CREATE INDEX fact_sales_date_idx ON fact_sales (date_key) INCLUDE (book_key, quantity, revenue_cents, order_id);
CREATE INDEX fact_sales_book_date_idx ON fact_sales (book_id, date_key);
CREATE INDEX fact_sales_unresolved_book_idx ON fact_sales (book_id) WHERE book_key IS NULL;

-- The latest rating of each customer for each book (the source keeps only that one too).
CREATE TABLE fact_ratings (
    customer_id uuid        NOT NULL,
    book_id     uuid        NOT NULL,
    rating_id   uuid        NOT NULL,
    stars       smallint    NOT NULL CHECK (stars BETWEEN 1 AND 5),
    rated_at    timestamptz NOT NULL,
    date_key    integer     NOT NULL REFERENCES dim_date (date_key),
    PRIMARY KEY (customer_id, book_id)
);

CREATE INDEX fact_ratings_book_idx ON fact_ratings (book_id) INCLUDE (stars);
