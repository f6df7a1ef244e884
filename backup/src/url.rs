//! Multi-host PostgreSQL URLs read the way libpq reads them (`postgresql://user:pass@h1:p1,h2:p2/db?…`),
//! so an operator can paste the URL every client uses. Parsing is strict: anything libpq would
//! silently default or that this tool cannot honour is an error that names the exact part at fault.

use std::fmt;

use sqlx::postgres::{PgConnectOptions, PgSslMode};

/// libpq's default port (we read no `PGPORT`: the URL alone says where to go).
pub const DEFAULT_PORT: u16 = 5432;

/// Query parameters this tool accepts; libpq rejects unknown ones too.
pub const KNOWN_PARAMETERS: &[&str] = &[
    "host",
    "port",
    "dbname",
    "user",
    "password",
    "sslmode",
    "connect_timeout",
    "application_name",
    "target_session_attrs",
];

const SSL_MODES: &[&str] = &[
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];
const SESSION_ATTRS: &[&str] = &[
    "any",
    "read-write",
    "read-only",
    "primary",
    "standby",
    "prefer-standby",
];

/// What is wrong with a URL, precisely enough to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("the URL must start with postgresql:// or postgres:// (it starts with {0:?})")]
    Scheme(String),
    #[error("a PostgreSQL URL has no #fragment (found {0:?})")]
    Fragment(String),
    #[error(
        "invalid percent-encoding in the {part}: {found:?} is not '%' followed by two hex digits"
    )]
    PercentEncoding { part: &'static str, found: String },
    #[error("the {0} is not valid UTF-8 once percent-decoded")]
    NotUtf8(&'static str),
    #[error(
        "the URL names no host: give at least one, e.g. postgresql://user@host1:5432,host2:5432/db"
    )]
    NoHost,
    #[error("host {index} of the host list is empty (two commas in a row, or a trailing comma)")]
    EmptyHost { index: usize },
    #[error("host {index} starts an IPv6 address with '[' but has no closing ']'")]
    UnclosedBracket { index: usize },
    #[error("host {index} ({host}) has {rest:?} after its ']': expected ':port', ',' or the end")]
    AfterBracket {
        index: usize,
        host: String,
        rest: String,
    },
    #[error("the port {port:?} of host {host} is not a number from 1 to 65535")]
    BadPort { host: String, port: String },
    #[error("{ports} ports for {hosts} hosts: give one port for all hosts or exactly one per host")]
    PortCount { ports: usize, hosts: usize },
    #[error("{0} is given twice (in the address and as ?{0}=): give it once")]
    GivenTwice(&'static str),
    #[error("unknown query parameter {name:?}; supported: {}", KNOWN_PARAMETERS.join(", "))]
    UnknownParameter { name: String },
    #[error("query parameter {0:?} is given more than once")]
    DuplicateParameter(String),
    #[error("query parameter {0:?} has no '=value'")]
    MissingValue(String),
    #[error("{name}={value:?} is not valid: expected {expected}")]
    BadValue {
        name: &'static str,
        value: String,
        expected: String,
    },
}

/// One server of the URL's host list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A parsed, validated multi-host URL. The password never appears in `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterUrl {
    pub user: Option<String>,
    password: Option<String>,
    pub hosts: Vec<HostPort>,
    /// libpq defaults an absent database to the user name; see [`ClusterUrl::database`].
    pub dbname: Option<String>,
    pub sslmode: Option<String>,
    pub connect_timeout: Option<u64>,
    pub application_name: Option<String>,
    /// A client routing hint; the backup connects to every host whatever it says.
    pub target_session_attrs: Option<String>,
}

impl fmt::Debug for ClusterUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterUrl({self})")
    }
}

impl fmt::Display for ClusterUrl {
    /// The URL with the password replaced by `***`, for messages and manifests.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "postgresql://")?;
        if let Some(user) = &self.user {
            write!(f, "{user}")?;
            if self.password.is_some() {
                write!(f, ":***")?;
            }
            write!(f, "@")?;
        }
        let hosts: Vec<String> = self.hosts.iter().map(HostPort::to_string).collect();
        write!(f, "{}/{}", hosts.join(","), self.database())
    }
}

impl std::str::FromStr for ClusterUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

impl ClusterUrl {
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The database the URL names, or libpq's default: the user name (else `postgres`).
    pub fn database(&self) -> &str {
        self.dbname
            .as_deref()
            .or(self.user.as_deref())
            .unwrap_or("postgres")
    }

    /// sqlx options for one node of the list and one database.
    pub fn connect_options(&self, node: &HostPort, database: &str) -> PgConnectOptions {
        let mut options = PgConnectOptions::new_without_pgpass()
            .host(&node.host)
            .port(node.port)
            .database(database)
            .application_name(
                self.application_name
                    .as_deref()
                    .unwrap_or("bookstore-backup"),
            );
        if let Some(user) = &self.user {
            options = options.username(user);
        }
        if let Some(password) = &self.password {
            options = options.password(password);
        }
        if let Some(mode) = self
            .sslmode
            .as_deref()
            .and_then(|m| m.parse::<PgSslMode>().ok())
        {
            options = options.ssl_mode(mode);
        }
        options
    }

    /// A libpq keyword/value string for one node (for pg_dump/pg_restore), without the password,
    /// which goes through `PGPASSWORD` so it never shows in `ps`.
    pub fn conninfo(&self, node: &HostPort, database: &str) -> String {
        let mut pairs: Vec<(&str, String)> = vec![
            ("host", node.host.clone()),
            ("port", node.port.to_string()),
            ("dbname", database.to_owned()),
        ];
        if let Some(user) = &self.user {
            pairs.push(("user", user.clone()));
        }
        if let Some(mode) = &self.sslmode {
            pairs.push(("sslmode", mode.clone()));
        }
        if let Some(timeout) = self.connect_timeout {
            pairs.push(("connect_timeout", timeout.to_string()));
        }
        let app = self
            .application_name
            .as_deref()
            .unwrap_or("bookstore-backup");
        pairs.push(("application_name", app.to_owned()));
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", quote_conninfo(v)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// libpq keyword/value quoting: single quotes, with `\` and `'` escaped by a backslash.
fn quote_conninfo(value: &str) -> String {
    let escaped = value.replace('\\', "\\\\").replace('\'', "\\'");
    format!("'{escaped}'")
}

/// Parses and validates `url`.
pub fn parse(url: &str) -> Result<ClusterUrl, UrlError> {
    let rest = strip_scheme(url)?;
    if let Some(at) = rest.find('#') {
        return Err(UrlError::Fragment(rest[at..].to_owned()));
    }
    let (before_query, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (before_query, None),
    };
    let (userinfo, hostlist) = match authority.split_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let mut url = ClusterUrl {
        user: None,
        password: None,
        hosts: Vec::new(),
        dbname: None,
        sslmode: None,
        connect_timeout: None,
        application_name: None,
        target_session_attrs: None,
    };
    if let Some(userinfo) = userinfo {
        let (user, password) = match userinfo.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (userinfo, None),
        };
        url.user = non_empty(decode(user, "user name")?);
        url.password = password.map(|p| decode(p, "password")).transpose()?;
    }
    if let Some(path) = path {
        url.dbname = non_empty(decode(path, "database name")?);
    }
    let (hosts, ports) = split_hosts(hostlist)?;
    let params = parse_query(query.unwrap_or(""))?;
    apply_params(&mut url, params, hosts, ports)?;
    Ok(url)
}

fn strip_scheme(url: &str) -> Result<&str, UrlError> {
    ["postgresql://", "postgres://"]
        .iter()
        .find_map(|scheme| url.strip_prefix(scheme))
        .ok_or_else(|| UrlError::Scheme(url.chars().take(14).collect()))
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// Percent-decodes one part of the URL; a stray `%` is an error, as in libpq.
fn decode(raw: &str, part: &'static str) -> Result<String, UrlError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw
                .get(i + 1..i + 3)
                .filter(|h| h.len() == 2 && h.bytes().all(|b| b.is_ascii_hexdigit()));
            match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(value) => {
                    out.push(value);
                    i += 3;
                }
                None => {
                    let found = raw.get(i..raw.len().min(i + 3)).unwrap_or(&raw[i..]);
                    return Err(UrlError::PercentEncoding {
                        part,
                        found: found.to_owned(),
                    });
                }
            }
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UrlError::NotUtf8(part))
}

type HostList = (Vec<String>, Vec<Option<String>>);

/// `h1:p1,[::1]:p2,h3` → hosts and the port written after each (if any).
fn split_hosts(list: &str) -> Result<HostList, UrlError> {
    if list.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    for (i, item) in list.split(',').enumerate() {
        let index = i + 1;
        if item.is_empty() {
            return Err(UrlError::EmptyHost { index });
        }
        let (host, port) = if let Some(inner) = item.strip_prefix('[') {
            let (host, after) = inner
                .split_once(']')
                .ok_or(UrlError::UnclosedBracket { index })?;
            let port = match after {
                "" => None,
                p if p.starts_with(':') => Some(p[1..].to_owned()),
                rest => {
                    return Err(UrlError::AfterBracket {
                        index,
                        host: host.to_owned(),
                        rest: rest.to_owned(),
                    });
                }
            };
            (host.to_owned(), port)
        } else {
            match item.split_once(':') {
                Some((h, p)) => (decode(h, "host list")?, Some(p.to_owned())),
                None => (decode(item, "host list")?, None),
            }
        };
        if host.is_empty() {
            return Err(UrlError::EmptyHost { index });
        }
        hosts.push(host);
        ports.push(port);
    }
    Ok((hosts, ports))
}

fn parse_query(query: &str) -> Result<Vec<(String, String)>, UrlError> {
    let mut params: Vec<(String, String)> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| UrlError::MissingValue(pair.to_owned()))?;
        let key = decode(key, "query")?;
        let value = decode(value, "query")?;
        if !KNOWN_PARAMETERS.contains(&key.as_str()) {
            return Err(UrlError::UnknownParameter { name: key });
        }
        if params.iter().any(|(k, _)| *k == key) {
            return Err(UrlError::DuplicateParameter(key));
        }
        params.push((key, value));
    }
    Ok(params)
}

fn apply_params(
    url: &mut ClusterUrl,
    params: Vec<(String, String)>,
    mut hosts: Vec<String>,
    mut ports: Vec<Option<String>>,
) -> Result<(), UrlError> {
    let mut query_ports: Option<Vec<String>> = None;
    for (key, value) in params {
        match key.as_str() {
            "host" => {
                if !hosts.is_empty() {
                    return Err(UrlError::GivenTwice("host"));
                }
                let (h, p) = split_hosts(&value)?;
                hosts = h;
                ports = p;
            }
            "port" => query_ports = Some(value.split(',').map(str::to_owned).collect()),
            "dbname" => set_once(&mut url.dbname, value, "dbname")?,
            "user" => set_once(&mut url.user, value, "user")?,
            "password" => set_once(&mut url.password, value, "password")?,
            "sslmode" => url.sslmode = Some(one_of("sslmode", value, SSL_MODES)?),
            "target_session_attrs" => {
                url.target_session_attrs =
                    Some(one_of("target_session_attrs", value, SESSION_ATTRS)?)
            }
            "connect_timeout" => {
                let seconds = value.parse::<u64>().map_err(|_| UrlError::BadValue {
                    name: "connect_timeout",
                    value: value.clone(),
                    expected: "a whole number of seconds".into(),
                })?;
                url.connect_timeout = Some(seconds);
            }
            "application_name" => url.application_name = Some(value),
            _ => return Err(UrlError::UnknownParameter { name: key }),
        }
    }
    if hosts.is_empty() {
        return Err(UrlError::NoHost);
    }
    if let Some(list) = query_ports {
        if ports.iter().any(Option::is_some) {
            return Err(UrlError::GivenTwice("port"));
        }
        if list.len() != 1 && list.len() != hosts.len() {
            return Err(UrlError::PortCount {
                ports: list.len(),
                hosts: hosts.len(),
            });
        }
        ports = (0..hosts.len())
            .map(|i| Some(list[if list.len() == 1 { 0 } else { i }].clone()))
            .collect();
    }
    url.hosts = hosts
        .into_iter()
        .zip(ports)
        .map(|(host, port)| {
            let port = match port {
                None => DEFAULT_PORT,
                Some(p) => parse_port(&host, &p)?,
            };
            Ok(HostPort { host, port })
        })
        .collect::<Result<_, UrlError>>()?;
    Ok(())
}

fn set_once(slot: &mut Option<String>, value: String, what: &'static str) -> Result<(), UrlError> {
    if slot.is_some() {
        return Err(UrlError::GivenTwice(what));
    }
    *slot = non_empty(value);
    Ok(())
}

fn one_of(name: &'static str, value: String, allowed: &[&str]) -> Result<String, UrlError> {
    if allowed.contains(&value.as_str()) {
        Ok(value)
    } else {
        Err(UrlError::BadValue {
            name,
            value,
            expected: format!("one of {}", allowed.join(", ")),
        })
    }
}

fn parse_port(host: &str, port: &str) -> Result<u16, UrlError> {
    match port.parse::<u16>() {
        Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(UrlError::BadPort {
            host: host.to_owned(),
            port: port.to_owned(),
        }),
    }
}

#[cfg(test)]
#[path = "url_tests.rs"]
mod tests;
