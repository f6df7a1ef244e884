use super::*;

fn hp(host: &str, port: u16) -> HostPort {
    HostPort {
        host: host.into(),
        port,
    }
}

fn err(url: &str) -> UrlError {
    match parse(url) {
        Ok(parsed) => panic!("{url} should be rejected, parsed as {parsed:?}"),
        Err(e) => e,
    }
}

#[test]
fn a_multi_host_url_with_per_host_ports_parses() {
    let url = parse("postgresql://backup:s%40cret@h1:5433,h2:5434,h3/books?sslmode=disable&connect_timeout=5&application_name=nightly&target_session_attrs=any").expect("valid");
    assert_eq!(url.user.as_deref(), Some("backup"));
    assert_eq!(url.password(), Some("s@cret"));
    assert_eq!(
        url.hosts,
        vec![hp("h1", 5433), hp("h2", 5434), hp("h3", 5432)]
    );
    assert_eq!(url.database(), "books");
    assert_eq!(url.sslmode.as_deref(), Some("disable"));
    assert_eq!(url.connect_timeout, Some(5));
    assert_eq!(url.application_name.as_deref(), Some("nightly"));
    assert_eq!(url.target_session_attrs.as_deref(), Some("any"));
}

#[test]
fn one_port_in_the_query_applies_to_every_host_and_a_list_pairs_up() {
    let one = parse("postgres://u@a,b/db?port=6000").expect("valid");
    assert_eq!(one.hosts, vec![hp("a", 6000), hp("b", 6000)]);
    let list = parse("postgres://u@a,b/db?port=6000,6001").expect("valid");
    assert_eq!(list.hosts, vec![hp("a", 6000), hp("b", 6001)]);
    let from_query = parse("postgresql:///db?host=a,b&port=1,2&user=u").expect("valid");
    assert_eq!(from_query.hosts, vec![hp("a", 1), hp("b", 2)]);
    assert_eq!(from_query.user.as_deref(), Some("u"));
}

#[test]
fn ipv6_hosts_in_brackets_and_percent_encoded_socket_paths_parse() {
    let url = parse("postgresql://u@[::1]:7000,%2Fvar%2Frun%2Fpostgresql/db").expect("valid");
    assert_eq!(
        url.hosts,
        vec![hp("::1", 7000), hp("/var/run/postgresql", 5432)]
    );
    assert_eq!(url.hosts[0].to_string(), "[::1]:7000");
}

#[test]
fn an_absent_database_defaults_to_the_user_name() {
    assert_eq!(
        parse("postgresql://alice@h").expect("valid").database(),
        "alice"
    );
    assert_eq!(
        parse("postgresql://h").expect("valid").database(),
        "postgres"
    );
}

#[test]
fn the_password_never_shows_in_debug_or_display() {
    let url = parse("postgresql://u:topsecret@h:1/db").expect("valid");
    assert!(!format!("{url:?}").contains("topsecret"));
    assert_eq!(url.to_string(), "postgresql://u:***@h:1/db");
}

#[test]
fn conninfo_quotes_values_and_leaves_the_password_out() {
    let url = parse("postgresql://o%27brien:pw@h:1/my%20db").expect("valid");
    let info = url.conninfo(&url.hosts[0], "my db");
    assert_eq!(
        info,
        "host='h' port='1' dbname='my db' user='o\\'brien' application_name='bookstore-backup'"
    );
    assert!(!info.contains("pw"));
}

#[test]
fn a_wrong_scheme_is_named() {
    assert!(matches!(err("mysql://u@h/db"), UrlError::Scheme(s) if s.starts_with("mysql")));
    assert!(matches!(err("h1:5432,h2:5432"), UrlError::Scheme(_)));
}

#[test]
fn a_bad_port_names_its_host() {
    assert_eq!(
        err("postgresql://u@h1:5432,h2:54x2/db"),
        UrlError::BadPort {
            host: "h2".into(),
            port: "54x2".into()
        }
    );
    for port in ["0", "65536", "", "-1", "+5"] {
        assert!(
            matches!(
                err(&format!("postgresql://u@h:{port}/db")),
                UrlError::BadPort { .. }
            ),
            "{port}"
        );
    }
    let message = err("postgresql://u@h1:1,h2:99999/db").to_string();
    assert!(
        message.contains("h2") && message.contains("99999"),
        "{message}"
    );
}

#[test]
fn empty_hosts_and_a_missing_host_are_errors() {
    assert_eq!(
        err("postgresql://u@h1,,h3/db"),
        UrlError::EmptyHost { index: 2 }
    );
    assert_eq!(
        err("postgresql://u@h1,/db"),
        UrlError::EmptyHost { index: 2 }
    );
    assert_eq!(
        err("postgresql://u@:5432/db"),
        UrlError::EmptyHost { index: 1 }
    );
    assert_eq!(err("postgresql://u@/db"), UrlError::NoHost);
}

#[test]
fn broken_ipv6_brackets_are_errors() {
    assert_eq!(
        err("postgresql://u@[::1/db"),
        UrlError::UnclosedBracket { index: 1 }
    );
    assert!(matches!(
        err("postgresql://u@h,[::1]x/db"),
        UrlError::AfterBracket { index: 2, .. }
    ));
}

#[test]
fn bad_percent_encoding_names_the_part() {
    assert_eq!(
        err("postgresql://u:p%zzw@h/db"),
        UrlError::PercentEncoding {
            part: "password",
            found: "%zz".into()
        }
    );
    assert!(matches!(
        err("postgresql://u@h/db%2"),
        UrlError::PercentEncoding {
            part: "database name",
            ..
        }
    ));
    assert_eq!(
        err("postgresql://u%ff@h/db"),
        UrlError::NotUtf8("user name")
    );
}

#[test]
fn unknown_duplicate_and_valueless_parameters_are_errors() {
    let unknown = err("postgresql://u@h/db?ssl=true");
    assert_eq!(unknown, UrlError::UnknownParameter { name: "ssl".into() });
    assert!(
        unknown.to_string().contains("sslmode"),
        "lists the supported ones"
    );
    assert_eq!(
        err("postgresql://u@h/db?sslmode=disable&sslmode=require"),
        UrlError::DuplicateParameter("sslmode".into())
    );
    assert_eq!(
        err("postgresql://u@h/db?sslmode"),
        UrlError::MissingValue("sslmode".into())
    );
}

#[test]
fn bad_parameter_values_say_what_is_expected() {
    let e = err("postgresql://u@h/db?sslmode=maybe");
    assert!(e.to_string().contains("verify-full"), "{e}");
    assert!(matches!(
        err("postgresql://u@h/db?target_session_attrs=primary-ish"),
        UrlError::BadValue {
            name: "target_session_attrs",
            ..
        }
    ));
    assert!(matches!(
        err("postgresql://u@h/db?connect_timeout=5s"),
        UrlError::BadValue {
            name: "connect_timeout",
            ..
        }
    ));
}

#[test]
fn ports_and_hosts_given_twice_or_miscounted_are_errors() {
    assert_eq!(
        err("postgresql://u@a:1,b:2/db?port=3"),
        UrlError::GivenTwice("port")
    );
    assert_eq!(
        err("postgresql://u@a/db?host=b"),
        UrlError::GivenTwice("host")
    );
    assert_eq!(
        err("postgresql://u@a/db?dbname=other"),
        UrlError::GivenTwice("dbname")
    );
    assert_eq!(
        err("postgresql://u@a,b,c/db?port=1,2"),
        UrlError::PortCount { ports: 2, hosts: 3 }
    );
}

#[test]
fn a_fragment_is_rejected() {
    assert!(matches!(
        err("postgresql://u@h/db#x"),
        UrlError::Fragment(_)
    ));
}
