//! Turns a Consul service definition into a [`NewService`] the catalog can hold, or a sentence saying
//! which field is wrong. Mirrors Consul's defaults: the ID defaults to the name, checks start
//! critical unless `Status` says otherwise, and check IDs are `service:<id>` (`service:<id>:<n>` when
//! there are several).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::duration::RawDuration;
use crate::server::checks::{CheckKind, CheckSpec, HttpProbe, Status};
use crate::wire::{CheckDefinition, ServiceDefinition};

/// Consul's default HTTP check timeout.
const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// A validated registration.
#[derive(Debug, Clone, PartialEq)]
pub struct NewService {
    pub id: String,
    pub name: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: HashMap<String, String>,
    pub checks: Vec<CheckSpec>,
}

impl NewService {
    pub fn parse(definition: ServiceDefinition) -> Result<NewService, String> {
        let name = definition.name.trim().to_owned();
        if name.is_empty() {
            return Err("Name: missing service name".into());
        }
        let id = definition
            .id
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| name.clone());
        let address = definition.address.unwrap_or_default();
        if matches!(address.as_str(), "0.0.0.0" | "::" | "[::]") {
            return Err(format!(
                "Address: {address} is not an address clients can reach"
            ));
        }
        let mut definitions: Vec<(String, CheckDefinition)> = Vec::new();
        if let Some(check) = definition
            .check
            .filter(|c| *c != CheckDefinition::default())
        {
            definitions.push(("Check".into(), check));
        }
        for (i, check) in definition
            .checks
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            definitions.push((format!("Checks[{i}]"), check));
        }
        let several = definitions.len() > 1;
        let mut seen = HashSet::new();
        let mut checks = Vec::with_capacity(definitions.len());
        for (position, (field, check)) in definitions.into_iter().enumerate() {
            let default_id = if several {
                format!("service:{id}:{}", position + 1)
            } else {
                format!("service:{id}")
            };
            let default_name = format!("Service '{name}' check");
            let spec =
                parse_check(check, default_id, default_name).map_err(|e| format!("{field}.{e}"))?;
            if !seen.insert(spec.id.clone()) {
                return Err(format!("{field}.CheckID: {:?} is used twice", spec.id));
            }
            checks.push(spec);
        }
        Ok(NewService {
            id,
            name,
            address,
            port: definition.port.unwrap_or(0),
            tags: definition.tags.unwrap_or_default(),
            meta: definition.meta.unwrap_or_default(),
            checks,
        })
    }
}

fn parse_check(
    check: CheckDefinition,
    default_id: String,
    default_name: String,
) -> Result<CheckSpec, String> {
    for (field, used) in [
        ("TCP", check.tcp.is_some()),
        ("GRPC", check.grpc.is_some()),
        ("Args", check.args.is_some()),
    ] {
        if used {
            return Err(format!(
                "{field}: only TTL and HTTP checks are supported by this registry"
            ));
        }
    }
    let status = match check.status.as_deref() {
        None | Some("") => Status::Critical,
        Some(text) => Status::parse(text)
            .ok_or_else(|| format!("Status: {text:?} is not one of passing, warning, critical"))?,
    };
    let kind = match (check.ttl, check.http) {
        (Some(_), Some(_)) => {
            return Err("TTL: a check has either a TTL or an HTTP URL, not both".into());
        }
        (Some(ttl), None) => CheckKind::Ttl(positive("TTL", &ttl)?),
        (None, Some(url)) => CheckKind::Http(parse_probe(
            url,
            check.method,
            check.header,
            check.interval,
            check.timeout,
        )?),
        (None, None) => {
            return Err("TTL: a check needs a TTL, or an HTTP URL and an Interval".into());
        }
    };
    let deregister_after = check
        .deregister_critical_service_after
        .map(|raw| parse_duration("DeregisterCriticalServiceAfter", &raw))
        .transpose()?;
    Ok(CheckSpec {
        id: check
            .check_id
            .filter(|id| !id.is_empty())
            .unwrap_or(default_id),
        name: check
            .name
            .filter(|name| !name.is_empty())
            .unwrap_or(default_name),
        notes: check.notes.unwrap_or_default(),
        kind,
        status,
        deregister_after,
    })
}

fn parse_probe(
    url: String,
    method: Option<String>,
    headers: Option<HashMap<String, Vec<String>>>,
    interval: Option<RawDuration>,
    timeout: Option<RawDuration>,
) -> Result<HttpProbe, String> {
    match url::Url::parse(&url) {
        Ok(parsed) if parsed.scheme() == "http" => {}
        Ok(parsed) => {
            return Err(format!(
                "HTTP: {:?} checks are not supported, only http",
                parsed.scheme()
            ));
        }
        Err(e) => return Err(format!("HTTP: {url:?} is not a URL: {e}")),
    }
    let method = method
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "GET".into());
    if http::Method::from_bytes(method.as_bytes()).is_err() {
        return Err(format!("Method: {method:?} is not an HTTP method"));
    }
    let interval = interval.ok_or("Interval: an HTTP check needs an Interval, e.g. \"10s\"")?;
    Ok(HttpProbe {
        url,
        method,
        headers: headers.unwrap_or_default(),
        interval: positive("Interval", &interval)?,
        timeout: match timeout {
            Some(raw) => positive("Timeout", &raw)?,
            None => DEFAULT_HTTP_TIMEOUT,
        },
    })
}

fn parse_duration(field: &str, raw: &RawDuration) -> Result<Duration, String> {
    raw.parse().map_err(|e| format!("{field}: {e}"))
}

fn positive(field: &str, raw: &RawDuration) -> Result<Duration, String> {
    match parse_duration(field, raw)? {
        d if d.is_zero() => Err(format!("{field}: must be longer than 0")),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> Result<NewService, String> {
        NewService::parse(serde_json::from_value(json).map_err(|e| e.to_string())?)
    }

    #[test]
    fn the_id_defaults_to_the_name_and_a_lone_check_is_named_after_the_service() {
        let service = parse(serde_json::json!({
            "Name": "books", "Port": 8081, "Check": {"TTL": "10s", "DeregisterCriticalServiceAfter": "1m"}
        }))
        .expect("valid");
        assert_eq!(service.id, "books");
        assert_eq!(service.checks.len(), 1);
        let check = &service.checks[0];
        assert_eq!(check.id, "service:books");
        assert_eq!(check.name, "Service 'books' check");
        assert_eq!(check.status, Status::Critical);
        assert_eq!(check.kind, CheckKind::Ttl(Duration::from_secs(10)));
        assert_eq!(check.deregister_after, Some(Duration::from_secs(60)));
    }

    #[test]
    fn several_checks_are_numbered_from_one_and_keep_a_given_status() {
        let service = parse(serde_json::json!({
            "ID": "books-1", "Name": "books",
            "Check": {"TTL": "5s", "Status": "passing"},
            "Checks": [{"HTTP": "http://127.0.0.1:8081/health/ready", "Interval": "2s"}]
        }))
        .expect("valid");
        let ids: Vec<&str> = service.checks.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["service:books-1:1", "service:books-1:2"]);
        assert_eq!(service.checks[0].status, Status::Passing);
        let CheckKind::Http(probe) = &service.checks[1].kind else {
            panic!("an HTTP check: {:?}", service.checks[1].kind);
        };
        assert_eq!(
            (probe.method.as_str(), probe.interval, probe.timeout),
            ("GET", Duration::from_secs(2), Duration::from_secs(10))
        );
    }

    #[test]
    fn invalid_definitions_say_which_field_is_wrong() {
        for (json, expected) in [
            (serde_json::json!({"Port": 1}), "Name: missing"),
            (
                serde_json::json!({"Name": "a", "Check": {"TTL": "10"}}),
                "Check.TTL: \"10\" is missing a unit",
            ),
            (
                serde_json::json!({"Name": "a", "Check": {"TTL": "0s"}}),
                "Check.TTL: must be longer than 0",
            ),
            (
                serde_json::json!({"Name": "a", "Checks": [{"TTL": "1s"}, {"HTTP": "http://x/"}]}),
                "Checks[1].Interval",
            ),
            (
                serde_json::json!({"Name": "a", "Check": {"HTTP": "https://x/", "Interval": "1s"}}),
                "Check.HTTP: \"https\"",
            ),
            (
                serde_json::json!({"Name": "a", "Check": {"TCP": "x:1", "Interval": "1s"}}),
                "Check.TCP: only TTL and HTTP",
            ),
            (
                serde_json::json!({"Name": "a", "Check": {"TTL": "1s", "Status": "ok"}}),
                "Check.Status",
            ),
            (
                serde_json::json!({"Name": "a", "Check": {"Notes": "no kind"}}),
                "Check.TTL: a check needs",
            ),
            (
                serde_json::json!({"Name": "a", "Check": {"TTL": "1s", "DeregisterCriticalServiceAfter": "soon"}}),
                "DeregisterCriticalServiceAfter",
            ),
            (
                serde_json::json!({"Name": "a", "Checks": [{"ID": "x", "TTL": "1s"}, {"ID": "x", "TTL": "1s"}]}),
                "used twice",
            ),
            (
                serde_json::json!({"Name": "a", "Address": "0.0.0.0"}),
                "Address",
            ),
        ] {
            let err = parse(json.clone()).expect_err(&json.to_string());
            assert!(err.contains(expected), "{json}: {err}");
        }
    }

    #[test]
    fn an_empty_check_object_is_ignored_like_consul_does() {
        let service =
            parse(serde_json::json!({"Name": "a", "Check": {}, "Tags": null})).expect("valid");
        assert!(service.checks.is_empty());
        assert!(service.tags.is_empty());
    }
}
