//! Free ports on loopback, for servers that cannot bind port 0 themselves and report it (PostgreSQL).
//! Between our probe and the server's bind another process may take the port, so callers retry.

use std::net::TcpListener;

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether `port` on 127.0.0.1 can be bound right now.
pub fn is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}
