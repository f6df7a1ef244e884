//! Prefix routing: which service a public path belongs to. Internal routes are never routable.

use crate::config::RouteConfig;

/// Routes sorted longest prefix first, so `/api/books/top` could later go elsewhere than `/api/books`.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<RouteConfig>,
}

impl RouteTable {
    pub fn new(routes: &[RouteConfig]) -> anyhow::Result<RouteTable> {
        for route in routes {
            anyhow::ensure!(
                route.prefix.starts_with("/api/") && !route.prefix.ends_with('/'),
                "route prefix {:?} must start with /api/ and not end with /",
                route.prefix
            );
            anyhow::ensure!(
                !route.service.is_empty(),
                "route {:?} names no service",
                route.prefix
            );
        }
        let mut routes = routes.to_vec();
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Ok(RouteTable { routes })
    }

    /// The service for `path`, matching whole segments only (`/api/booksx` is not `/api/books`).
    pub fn resolve(&self, path: &str) -> Option<&str> {
        self.routes
            .iter()
            .find(|r| {
                path.strip_prefix(r.prefix.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
            .map(|r| r.service.as_str())
    }

    /// Every distinct service named by a route.
    pub fn services(&self) -> Vec<String> {
        let mut services: Vec<String> = self.routes.iter().map(|r| r.service.clone()).collect();
        services.sort();
        services.dedup();
        services
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn default_routes_send_each_resource_to_its_service() {
        let table = RouteTable::new(&Config::default().routes).expect("valid defaults");
        assert_eq!(table.resolve("/api/books"), Some("books"));
        assert_eq!(table.resolve("/api/books/123"), Some("books"));
        assert_eq!(table.resolve("/api/customers/1/orders"), Some("orders"));
        assert_eq!(table.resolve("/api/orders/1"), Some("orders"));
        assert_eq!(table.resolve("/api/reports/sales"), Some("warehouse"));
        assert_eq!(table.services(), vec!["books", "orders", "warehouse"]);
    }

    #[test]
    fn partial_segments_and_internal_paths_are_not_routed() {
        let table = RouteTable::new(&Config::default().routes).expect("valid defaults");
        for path in [
            "/api/booksx",
            "/internal/prepare",
            "/api",
            "/",
            "/api/unknown",
        ] {
            assert_eq!(table.resolve(path), None, "{path}");
        }
    }

    #[test]
    fn the_longest_prefix_wins() {
        let routes = vec![
            RouteConfig {
                prefix: "/api/books".into(),
                service: "books".into(),
            },
            RouteConfig {
                prefix: "/api/books/top".into(),
                service: "ranking".into(),
            },
        ];
        let table = RouteTable::new(&routes).expect("valid");
        assert_eq!(table.resolve("/api/books/top"), Some("ranking"));
        assert_eq!(table.resolve("/api/books/1"), Some("books"));
    }

    #[test]
    fn prefixes_outside_api_are_refused() {
        let routes = vec![RouteConfig {
            prefix: "/internal".into(),
            service: "x".into(),
        }];
        assert!(RouteTable::new(&routes).is_err());
    }
}
