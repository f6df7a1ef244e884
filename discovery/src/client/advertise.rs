//! Where others reach an instance, and the id it registers under. An instance listening on
//! 0.0.0.0 (every container does) must not register that: nobody can route to it. And ids must stay
//! unique when two instances on different hosts listen on the same port (both books on 8080).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// The host to register: `configured` when set, else the listen address — with an unspecified one
/// (0.0.0.0, ::) replaced by an address this host's name resolves to, or refused with what to set.
pub fn advertised_host(listen: SocketAddr, configured: &str) -> anyhow::Result<String> {
    let configured = configured.trim();
    if !configured.is_empty() {
        return match configured.parse::<IpAddr>() {
            Ok(ip) if ip.is_unspecified() => Err(anyhow::anyhow!(
                "registry.advertise_address {configured:?} is not an address others can reach"
            )),
            _ => Ok(configured.to_owned()),
        };
    }
    if !listen.ip().is_unspecified() {
        return Ok(listen.ip().to_string());
    }
    let name = host_name();
    let candidates = name.as_deref().map(resolve).unwrap_or_default();
    routable(listen.ip(), &candidates)
        .map(|ip| ip.to_string())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "listening on {listen}, but this host's name ({}) resolves to no address others can \
                 reach: set registry.advertise_address (BOOKSTORE_REGISTRY__ADVERTISE_ADDRESS)",
                name.as_deref().unwrap_or("unknown")
            )
        })
}

/// `name-<port>` for a loopback host — ports are unique on one machine, and `bookstore up` keeps
/// its short ids — else `name-<host>-<port>`, unique across hosts.
pub fn instance_id(name: &str, host: &str, port: u16) -> String {
    match host.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => format!("{name}-{port}"),
        _ => format!("{name}-{host}-{port}"),
    }
}

/// The first candidate others can route to, of the listen address's family when it has one.
fn routable(listen: IpAddr, candidates: &[IpAddr]) -> Option<IpAddr> {
    let usable = |ip: &&IpAddr| !ip.is_loopback() && !ip.is_unspecified();
    candidates
        .iter()
        .filter(usable)
        .find(|ip| ip.is_ipv4() == listen.is_ipv4())
        .or_else(|| candidates.iter().find(usable))
        .copied()
}

/// The kernel's host name (what `hostname` prints; a container's or pod's own name), else `$HOSTNAME`.
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
}

/// The addresses `name` resolves to (/etc/hosts, DNS); none when it does not resolve.
fn resolve(name: &str) -> Vec<IpAddr> {
    (name, 0)
        .to_socket_addrs()
        .map(|addrs| addrs.map(|a| a.ip()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn a_configured_address_wins_and_an_unspecified_one_is_refused() {
        let host = advertised_host(addr("0.0.0.0:8080"), " books-1 ").ok();
        assert_eq!(host.as_deref(), Some("books-1"));
        let host = advertised_host(addr("127.0.0.1:8080"), "10.1.2.3").ok();
        assert_eq!(host.as_deref(), Some("10.1.2.3"));
        for bad in ["0.0.0.0", "::"] {
            let err = advertised_host(addr("0.0.0.0:8080"), bad).err();
            let text = err.map(|e| e.to_string()).unwrap_or_default();
            assert!(text.contains("advertise_address"), "{bad}: {text:?}");
        }
    }

    #[test]
    fn a_specific_listen_address_is_advertised_as_it_is() {
        let host = advertised_host(addr("127.0.0.1:43817"), "").ok();
        assert_eq!(host.as_deref(), Some("127.0.0.1"));
        let host = advertised_host(addr("[::1]:43817"), "").ok();
        assert_eq!(host.as_deref(), Some("::1"));
    }

    #[test]
    fn an_unspecified_listen_address_becomes_a_routable_one_or_an_error_saying_what_to_set() {
        match advertised_host(addr("0.0.0.0:8080"), "") {
            Ok(host) => {
                let ip: IpAddr = host.parse().unwrap_or_else(|e| panic!("{host}: {e}"));
                assert!(!ip.is_unspecified() && !ip.is_loopback(), "{ip}");
            }
            Err(e) => {
                let text = e.to_string();
                assert!(
                    text.contains("BOOKSTORE_REGISTRY__ADVERTISE_ADDRESS"),
                    "{text}"
                );
            }
        }
    }

    #[test]
    fn the_routable_candidate_skips_loopback_and_prefers_the_listen_family() {
        let v4: IpAddr = [10, 0, 0, 7].into();
        let v6: IpAddr = "fd00::7".parse().unwrap_or(v4);
        let loopback: IpAddr = [127, 0, 1, 1].into();
        let unspecified_v4: IpAddr = [0, 0, 0, 0].into();
        let unspecified_v6: IpAddr = "::".parse().unwrap_or(v4);
        assert_eq!(routable(unspecified_v4, &[loopback, v6, v4]), Some(v4));
        assert_eq!(routable(unspecified_v6, &[loopback, v4, v6]), Some(v6));
        assert_eq!(routable(unspecified_v4, &[loopback, v6]), Some(v6));
        assert_eq!(routable(unspecified_v4, &[loopback]), None);
        assert_eq!(routable(unspecified_v4, &[]), None);
    }

    #[test]
    fn ids_are_short_on_loopback_and_carry_the_host_elsewhere() {
        assert_eq!(instance_id("books", "127.0.0.1", 43817), "books-43817");
        assert_eq!(instance_id("books", "::1", 43817), "books-43817");
        assert_eq!(
            instance_id("books", "10.0.0.7", 8080),
            "books-10.0.0.7-8080"
        );
        assert_eq!(
            instance_id("books", "10.0.0.8", 8080),
            "books-10.0.0.8-8080"
        );
        assert_eq!(instance_id("books", "books-1", 8080), "books-books-1-8080");
    }
}
