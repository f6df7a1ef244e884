//! Layered configuration: typed defaults, then an optional TOML file, then environment variables.
//!
//! Every component has one typed config struct with defaults (`Default`), so a process starts with no
//! file at all. Environment variables win over the file so that a launcher (or a container) can
//! override one field without writing a file: `BOOKSTORE_<SECTION>__<FIELD>`, e.g.
//! `BOOKSTORE_HTTP__LISTEN=127.0.0.1:0`.

use std::path::Path;

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Serialize, de::DeserializeOwned};

/// The prefix of every environment variable the platform reads as configuration.
pub const ENV_PREFIX: &str = "BOOKSTORE_";

/// Loads `T` from its defaults, then `file` (when given; it must exist), then the environment.
pub fn load<T>(file: Option<&Path>) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    figment::<T>(file)?
        .extract()
        .map_err(|e| ConfigError::Invalid(e.to_string()))
}

/// The layered figment, exposed so tests and tools can inspect where a value came from.
pub fn figment<T: Serialize + Default>(file: Option<&Path>) -> Result<Figment, ConfigError> {
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError::MissingFile(path.display().to_string()));
        }
        figment = figment.merge(Toml::file(path));
    }
    Ok(figment.merge(Env::prefixed(ENV_PREFIX).split("__")))
}

/// Why a configuration could not be loaded; the message is meant for a person.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(String),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail fixes the closure's error type
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Sample {
        http: Http,
        name: String,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Http {
        listen: String,
        body_limit_bytes: usize,
    }

    impl Default for Sample {
        fn default() -> Self {
            Sample {
                http: Http {
                    listen: "127.0.0.1:0".into(),
                    body_limit_bytes: 1024,
                },
                name: "default".into(),
            }
        }
    }

    #[test]
    fn defaults_apply_without_file_or_environment() {
        figment::Jail::expect_with(|_jail| {
            let cfg: Sample = load(None).map_err(|e| e.to_string())?;
            assert_eq!(cfg, Sample::default());
            Ok(())
        });
    }

    #[test]
    fn file_overrides_defaults_and_environment_overrides_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "name = \"from-file\"\n[http]\nlisten = \"127.0.0.1:9000\"\n",
            )?;
            jail.set_env("BOOKSTORE_HTTP__LISTEN", "127.0.0.1:9100");
            let cfg: Sample = load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(cfg.name, "from-file");
            assert_eq!(cfg.http.listen, "127.0.0.1:9100");
            assert_eq!(
                cfg.http.body_limit_bytes, 1024,
                "untouched field keeps its default"
            );
            Ok(())
        });
    }

    #[test]
    fn a_missing_file_is_a_clear_error() {
        let err = load::<Sample>(Some(Path::new("/nonexistent/bookstore.toml")))
            .expect_err("missing file must fail");
        assert!(err.to_string().contains("/nonexistent/bookstore.toml"));
    }

    #[test]
    fn a_wrongly_typed_value_is_a_clear_error() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("BOOKSTORE_HTTP__BODY_LIMIT_BYTES", "lots");
            let err = load::<Sample>(None).expect_err("a word is not a number");
            assert!(
                err.to_string().to_lowercase().contains("body_limit_bytes"),
                "{err}"
            );
            Ok(())
        });
    }
}
