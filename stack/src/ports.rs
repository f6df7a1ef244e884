//! Free ports on loopback, for servers that cannot bind port 0 themselves and report it (PostgreSQL).
//! Between our probe and the server's bind another process may take the port, so callers retry.

use std::net::TcpListener;

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `n` distinct ports that were free a moment ago: every probe stays bound until the last one is
/// picked, so the kernel cannot hand out the same port twice (one probe at a time, it may).
pub fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let held = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    held.iter()
        .map(|probe| Ok(probe.local_addr()?.port()))
        .collect()
}

/// Whether `port` on 127.0.0.1 can be bound right now.
pub fn is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_picked_together_are_distinct_and_free() -> std::io::Result<()> {
        let ports = free_ports(64)?;
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        assert!(ports.iter().all(|p| is_free(*p)), "{ports:?}");
        Ok(())
    }
}
