//! Settings: read once from the environment at start-up, typed, validated.
//!
//! Every backend is optional; an unset variable means the embedded default, never a crash. An
//! invalid value stops start-up with one line naming the variable and what is wrong with it.
//! Secrets are wrapped in [`Secret`], whose `Debug` never prints the value.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A value that must never reach a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }
    /// The secret itself, for the one place that must send it somewhere.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// One invalid setting: which variable, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {var}: {problem}")]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}

impl ConfigError {
    fn new(var: &'static str, problem: impl Into<String>) -> Self {
        Self {
            var,
            problem: problem.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone)]
pub struct CosmosSettings {
    pub endpoint: String,
    /// Account key; when absent the service authenticates with Entra ID (managed identity).
    pub key: Option<Secret<String>>,
    pub database: String,
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// Address to bind; `0.0.0.0` by default so that the container is reachable.
    pub host: IpAddr,
    pub port: u16,
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    pub cosmos: Option<CosmosSettings>,
    pub redis_url: Option<Secret<String>>,
    /// Prefix of every Redis key, so several deployments can share one Redis.
    pub redis_key_prefix: String,
    pub context_cache_ttl: Duration,
    /// How many transcript turns a context keeps before older ones fold into the summary.
    pub transcript_max_turns: usize,
    /// Upper bound on any one HTTP request's handling time.
    pub request_timeout: Duration,
    /// How long a graceful shutdown waits for in-flight work before giving up.
    pub shutdown_grace: Duration,
}

/// Every variable the service reads, with whether it is optional. Kept next to the code that
/// reads them so that docs and infra checks compare against one list.
pub const SETTINGS: &[(&str, &str)] = &[
    ("HOST", "address to bind (default 0.0.0.0)"),
    ("PORT", "HTTP port (default 8080)"),
    (
        "HANDOFF_DATA_DIR",
        "directory of the embedded store (default ./data)",
    ),
    ("LOG_FORMAT", "`human` (default) or `json`"),
    (
        "RUST_LOG",
        "log filter, e.g. `info,handoff=debug` (default info)",
    ),
    (
        "COSMOS_ENDPOINT",
        "Cosmos DB account endpoint; unset = embedded store",
    ),
    (
        "COSMOS_KEY",
        "Cosmos DB account key; unset = Entra ID (managed identity)",
    ),
    ("COSMOS_DATABASE", "Cosmos DB database (default handoff)"),
    (
        "REDIS_URL",
        "redis:// or rediss:// URL; unset = in-process cache and embedded claims",
    ),
    (
        "REDIS_KEY_PREFIX",
        "prefix of every Redis key (default handoff:)",
    ),
    (
        "CONTEXT_CACHE_TTL_SECS",
        "how long Redis keeps a cached context (default 300)",
    ),
    (
        "TRANSCRIPT_MAX_TURNS",
        "turns kept per context before older ones fold into the summary (default 200)",
    ),
    (
        "REQUEST_TIMEOUT_SECS",
        "upper bound on handling one HTTP request (default 25)",
    ),
    (
        "SHUTDOWN_GRACE_SECS",
        "how long shutdown drains in-flight work (default 20)",
    ),
];

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`, so tests can pass a map instead of the environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(&lookup);
        let cosmos = match env.string("COSMOS_ENDPOINT") {
            None => None,
            Some(endpoint) => Some(CosmosSettings {
                endpoint: parse_url("COSMOS_ENDPOINT", &endpoint, &["http", "https"])?,
                key: env.string("COSMOS_KEY").map(Secret::new),
                database: env
                    .string("COSMOS_DATABASE")
                    .unwrap_or_else(|| "handoff".into()),
            }),
        };
        let redis_url = match env.string("REDIS_URL") {
            None => None,
            Some(url) => {
                parse_url("REDIS_URL", &url, &["redis", "rediss"])?;
                Some(Secret::new(url))
            }
        };
        Ok(Self {
            host: env.parse("HOST", "an IP address", "0.0.0.0".parse().ok())?,
            port: env.parse("PORT", "a port number 0-65535", Some(8080))?,
            data_dir: env
                .string("HANDOFF_DATA_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("./data")),
            log_format: match env.string("LOG_FORMAT").as_deref() {
                None | Some("human") | Some("text") | Some("pretty") => LogFormat::Human,
                Some("json") => LogFormat::Json,
                Some(other) => {
                    return Err(ConfigError::new(
                        "LOG_FORMAT",
                        format!("`{other}` is not `human` or `json`"),
                    ));
                }
            },
            cosmos,
            redis_url,
            redis_key_prefix: env
                .string("REDIS_KEY_PREFIX")
                .unwrap_or_else(|| "handoff:".into()),
            context_cache_ttl: env.seconds("CONTEXT_CACHE_TTL_SECS", 300, 1)?,
            transcript_max_turns: env.parse_min("TRANSCRIPT_MAX_TURNS", 200, 1)?,
            request_timeout: env.seconds("REQUEST_TIMEOUT_SECS", 25, 1)?,
            shutdown_grace: env.seconds("SHUTDOWN_GRACE_SECS", 20, 0)?,
        })
    }

    /// Defaults only: what `handoff serve` uses with an empty environment.
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        let mut settings = Self::from_lookup(|_| None).expect("defaults are valid");
        settings.data_dir = data_dir.into();
        settings
    }
}

struct Env<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    /// The value, trimmed; empty counts as unset (a common way to "unset" in deploy tooling).
    fn string(&self, var: &str) -> Option<String> {
        (self.0)(var)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn parse<T: std::str::FromStr>(
        &self,
        var: &'static str,
        expected: &str,
        default: Option<T>,
    ) -> Result<T, ConfigError> {
        match self.string(var) {
            Some(raw) => raw
                .parse()
                .map_err(|_| ConfigError::new(var, format!("`{raw}` is not {expected}"))),
            None => default.ok_or_else(|| ConfigError::new(var, "is required")),
        }
    }

    fn parse_min<T>(&self, var: &'static str, default: T, min: T) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
    {
        let value: T = self.parse(var, "a whole number", Some(default))?;
        if value < min {
            return Err(ConfigError::new(var, format!("must be at least {min}")));
        }
        Ok(value)
    }

    fn seconds(&self, var: &'static str, default: u64, min: u64) -> Result<Duration, ConfigError> {
        self.parse_min(var, default, min).map(Duration::from_secs)
    }
}

/// Checks that `raw` is an absolute URL with one of `schemes`; returns it without a trailing `/`.
fn parse_url(var: &'static str, raw: &str, schemes: &[&str]) -> Result<String, ConfigError> {
    let (scheme, rest) = raw
        .split_once("://")
        .ok_or_else(|| ConfigError::new(var, "is not an absolute URL (scheme://host…)"))?;
    if !schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
        return Err(ConfigError::new(
            var,
            format!("scheme `{scheme}` is not one of {}", schemes.join(", ")),
        ));
    }
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = host.rsplit('@').next().unwrap_or_default();
    if host.is_empty() {
        return Err(ConfigError::new(var, "has no host"));
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn from(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn empty_environment_means_embedded_defaults() {
        let s = from(&[]).unwrap();
        assert_eq!(s.port, 8080);
        assert_eq!(s.data_dir, PathBuf::from("./data"));
        assert!(s.cosmos.is_none());
        assert!(s.redis_url.is_none());
        assert_eq!(s.log_format, LogFormat::Human);
        assert_eq!(s.context_cache_ttl, Duration::from_secs(300));
    }

    #[test]
    fn cosmos_and_redis_are_read_with_their_defaults() {
        let s = from(&[
            ("COSMOS_ENDPOINT", "https://acct.documents.azure.com:443/"),
            ("COSMOS_KEY", "c2VjcmV0"),
            ("REDIS_URL", "rediss://:pw@cache:6380"),
            ("LOG_FORMAT", "json"),
        ])
        .unwrap();
        let cosmos = s.cosmos.unwrap();
        assert_eq!(cosmos.endpoint, "https://acct.documents.azure.com:443");
        assert_eq!(cosmos.database, "handoff");
        assert_eq!(cosmos.key.unwrap().expose(), "c2VjcmV0");
        assert_eq!(s.log_format, LogFormat::Json);
    }

    #[test]
    fn invalid_values_name_the_variable_and_the_problem() {
        let cases: &[(&str, &str, &str)] = &[
            ("PORT", "eighty", "`eighty` is not a port number 0-65535"),
            ("PORT", "70000", "`70000` is not a port number 0-65535"),
            (
                "COSMOS_ENDPOINT",
                "acct.documents.azure.com",
                "is not an absolute URL",
            ),
            (
                "REDIS_URL",
                "http://cache:6379",
                "scheme `http` is not one of redis, rediss",
            ),
            ("LOG_FORMAT", "xml", "`xml` is not `human` or `json`"),
            ("TRANSCRIPT_MAX_TURNS", "0", "must be at least 1"),
            ("CONTEXT_CACHE_TTL_SECS", "-3", "`-3` is not a whole number"),
        ];
        for (var, value, problem) in cases {
            let err = from(&[(var, value)]).unwrap_err();
            assert_eq!(err.var, *var);
            assert!(
                err.problem.contains(problem),
                "{var}={value}: {}",
                err.problem
            );
            assert!(
                err.to_string()
                    .starts_with(&format!("invalid configuration: {var}: "))
            );
        }
    }

    #[test]
    fn empty_values_count_as_unset() {
        let s = from(&[("COSMOS_ENDPOINT", "  "), ("PORT", "")]).unwrap();
        assert!(s.cosmos.is_none());
        assert_eq!(s.port, 8080);
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let s = from(&[
            ("COSMOS_ENDPOINT", "https://acct.documents.azure.com"),
            ("COSMOS_KEY", "super-secret-key"),
            ("REDIS_URL", "redis://:hunter2@cache:6379"),
        ])
        .unwrap();
        let debug = format!("{s:?}");
        assert!(!debug.contains("super-secret-key"));
        assert!(!debug.contains("hunter2"));
        assert!(debug.contains("Secret(***)"));
    }
}
