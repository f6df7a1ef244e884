#!/usr/bin/env python3
"""Seeds a running platform through its API for the benchmarks: BOOKS books (plenty of stock) and
CUSTOMERS customers with credit, writing their ids to WORK/books.txt and tokens to WORK/tokens.txt.

    seed.py GATEWAY_URL SECRETS_JSON BOOKS CUSTOMERS WORK
"""
import json
import sys
import urllib.request

gateway, secrets, n_books, n_customers, work = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]


def call(method, path, body=None, token=None):
    req = urllib.request.Request(gateway + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", "Bearer " + token)
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")


def isbn(n):
    body = "9793%08d" % n
    s = sum(int(c) * (1 if i % 2 == 0 else 3) for i, c in enumerate(body))
    return body + str((10 - s % 10) % 10)


admin = call("POST", "/api/auth/token", {"email": "admin@bookstore.local",
             "password": json.load(open(secrets))["admin_password"]})["access_token"]
with open(work + "/books.txt", "w") as f:
    for i in range(n_books):
        b = call("POST", "/api/books", {"isbn": isbn(i), "title": "Bench %d" % i, "author": "B. Ench",
                 "genre": "bench", "price_cents": 100, "stock": 1000000}, admin)
        f.write(b["id"] + "\n")
with open(work + "/tokens.txt", "w") as f:
    for i in range(n_customers):
        email = "bench%d@example.com" % i
        c = call("POST", "/api/customers", {"email": email, "name": "Bench", "password": "bench-password"})
        t = call("POST", "/api/auth/token", {"email": email, "password": "bench-password"})["access_token"]
        for _ in range(10):
            call("POST", "/api/customers/%s/credit" % c["id"], {"amount_cents": 1000000}, t)
        f.write(t + "\n")
