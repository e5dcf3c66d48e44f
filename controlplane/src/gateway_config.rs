//! The gateway's own configuration file (`/etc/corridor/gateway.toml` by default).
//!
//! It says who this gateway is and where its things are; what it serves comes from the policy
//! (standalone mode, `policy = DIR`) or from a controller (controller mode, a `[controller]`
//! table that `corridor gateway enroll` writes). The two are mutually exclusive. Relative paths are taken relative to the
//! file's own directory, so a configuration directory can be moved as a whole.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where `corridor gateway run` looks without `--config`.
pub const DEFAULT_PATH: &str = "/etc/corridor/gateway.toml";
/// Where the control socket lives unless configured.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/corridor/control.sock";
/// The WAN port unless configured.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:51820";
/// Where a controller-mode gateway keeps its state (last good bundle, rotation record).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/corridor";

/// A gateway's configuration, as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GatewayConfig {
    /// This gateway's name in the policy (`gateways.toml`).
    pub name: String,
    /// Directory of this gateway's private keys, one `<tenant>.key` per tenant (0600).
    pub key_dir: PathBuf,
    /// The WAN socket: one UDP port carries every tenant.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The local control socket that `corridor status` talks to.
    #[serde(default = "default_control_socket")]
    pub control_socket: PathBuf,
    /// Standalone mode: the policy directory to serve (reloaded on SIGHUP).
    pub policy: Option<PathBuf>,
    /// MTU of the app interfaces; 1420 leaves room for WireGuard over IPv6 on a 1500 WAN.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// Where to serve Prometheus metrics (`GET /metrics`); absent: not served. Unauthenticated
    /// and naming tenants and peers: keep it on loopback (a warning is logged otherwise).
    pub metrics: Option<SocketAddr>,
    /// An app whose namespace does not exist at start (or at a reload that adds it).
    #[serde(default)]
    pub missing_netns: MissingNetns,
    /// How many worker threads carry packets: `"auto"` (the default: one per online CPU, no
    /// more than the tenants the gateway starts with) or a number from 1 to 64. Each worker
    /// serves a disjoint set of tenants, so no flow is ever reordered; `1` runs everything on
    /// one thread.
    #[serde(default, deserialize_with = "de_workers")]
    pub workers: Workers,
    /// Controller mode: where this gateway's bundles come from (excludes `policy`).
    pub controller: Option<ControllerSection>,
}

/// The `[controller]` table: the controller this gateway enrolled with.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ControllerSection {
    /// The controller's URLs, `https://HOST:PORT`, tried in order (replicas); at least one.
    pub urls: Vec<String>,
    /// The controller's key fingerprint (`ed25519:...`), pinned at enrollment: TLS connections
    /// and bundles are accepted from that key only.
    pub fingerprint: String,
    /// Where the gateway keeps its last good bundle and its key-rotation record. Default
    /// `/var/lib/corridor`; a relative path is relative to this file.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Rotate this gateway's tenant keys this often (besides when the controller asks):
    /// whole seconds as an integer (`2592000`) or a string with one unit of `s`, `m`, `h`, `d`
    /// (`"30d"`, `"12h"`, `"90s"`). Absent: only when the controller asks.
    #[serde(default, deserialize_with = "de_duration")]
    pub rotate_keys_every: Option<Duration>,
    /// How long one bundle request may wait at the controller for a change (the controller
    /// may cap it). Same format as `rotate-keys-every`. Absent: the controller's default.
    #[serde(default, deserialize_with = "de_duration")]
    pub long_poll: Option<Duration>,
}

/// Which mode `corridor gateway run` runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode<'a> {
    /// Serve a policy directory.
    Standalone(&'a Path),
    /// Take bundles from a controller.
    Controller(&'a ControllerSection),
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}

/// Parses `"30d"`, `"12h"`, `"15m"`, `"90s"` (one unit, a whole number greater than 0).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let bad = || {
        format!(
            "{text:?} is not a duration: give whole seconds as an integer, or a string like \"30d\", \"12h\", \"15m\" or \"90s\""
        )
    };
    let Some(unit) = text.chars().last() else {
        return Err(bad());
    };
    let mult: u64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    let n: u64 = text[..text.len() - 1].parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(format!("{text:?}: a duration must be greater than 0"));
    }
    n.checked_mul(mult).map(Duration::from_secs).ok_or_else(bad)
}

fn de_duration<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("seconds as an integer, or a string like \"30d\", \"12h\", \"90s\"")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
            match u64::try_from(v) {
                Ok(s) if s > 0 => Ok(Duration::from_secs(s)),
                _ => Err(E::custom(format!("{v}: a duration must be greater than 0"))),
            }
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
            if v == 0 {
                return Err(E::custom("0: a duration must be greater than 0"));
            }
            Ok(Duration::from_secs(v))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).map_err(E::custom)
        }
    }
    de.deserialize_any(V).map(Some)
}

/// What the gateway does about an app whose namespace does not exist when it starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MissingNetns {
    /// Refuse to start (and refuse a reload that adds such an app): the default.
    #[default]
    Fail,
    /// Start without that app's interface and create it when the namespace appears (for
    /// service managers, which may start the gateway before the containers).
    Wait,
}

/// The `workers` setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Workers {
    /// One per online CPU, capped by the number of tenants.
    #[default]
    Auto,
    /// Exactly this many (1 to 64).
    Count(u8),
}

fn de_workers<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Workers, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Workers;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("\"auto\" or a number of workers from 1 to 64")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Workers, E> {
            match u8::try_from(v) {
                Ok(n @ 1..=64) => Ok(Workers::Count(n)),
                _ => Err(E::custom(format!(
                    "{v}: workers must be \"auto\" or a number from 1 to 64"
                ))),
            }
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Workers, E> {
            self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Workers, E> {
            match v {
                "auto" => Ok(Workers::Auto),
                _ => Err(E::custom(format!(
                    "{v:?}: workers must be \"auto\" or a number from 1 to 64"
                ))),
            }
        }
    }
    de.deserialize_any(V)
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 51820))
}

fn default_control_socket() -> PathBuf {
    PathBuf::from(DEFAULT_CONTROL_SOCKET)
}

fn default_mtu() -> u16 {
    1420
}

/// Why a gateway configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GatewayConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Syntax, an unknown or missing field, or a wrong value.
    #[error("{path}:{line}:{column}: {field}{sep}{message}", sep = if field.is_empty() { "" } else { ": " })]
    Parse {
        /// The file.
        path: PathBuf,
        /// Line (1-based).
        line: usize,
        /// Column (1-based).
        column: usize,
        /// The field the problem is in (`listen`); empty when it is about the file as a whole
        /// (a syntax error, a missing field).
        field: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// A value that parses but cannot work.
    #[error("{path}: {field}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The field.
        field: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
}

impl GatewayConfig {
    /// Reads and checks a configuration file; relative paths become relative to its directory.
    pub fn load(path: &Path) -> Result<Self, GatewayConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| GatewayConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(&text, path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.key_dir = base.join(&config.key_dir);
        config.control_socket = base.join(&config.control_socket);
        config.policy = config.policy.map(|p| base.join(p));
        if let Some(c) = config.controller.as_mut() {
            c.state_dir = base.join(&c.state_dir);
        }
        Ok(config)
    }

    /// The mode `corridor gateway run` runs in: exactly one of `policy` and `[controller]`.
    pub fn mode(&self, path: &Path) -> Result<Mode<'_>, GatewayConfigError> {
        match (&self.policy, &self.controller) {
            (Some(p), None) => Ok(Mode::Standalone(p)),
            (None, Some(c)) => Ok(Mode::Controller(c)),
            // `parse` refuses both.
            (Some(_), Some(_)) => Err(both(path)),
            (None, None) => Err(GatewayConfigError::Invalid {
                path: path.to_owned(),
                field: "policy",
                message: "neither `policy` nor `[controller]`: give `policy = \"DIR\"` to serve a \
                          policy directory (standalone), or enroll with a controller \
                          (`corridor gateway enroll --controller URL --token T`), which adds \
                          the [controller] table"
                    .to_owned(),
            }),
        }
    }

    /// Parses and checks configuration text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, GatewayConfigError> {
        let config: GatewayConfig = toml::from_str(text).map_err(|e| {
            let span = e.span();
            let (line, column) = span
                .as_ref()
                .map(|s| line_col(text, s.start))
                .unwrap_or((1, 1));
            let field = span.and_then(|s| field_at(text, &s)).unwrap_or_default();
            let message = e.message().trim_end();
            let message = match hint(&field) {
                Some(h) if !message.starts_with("unknown field") => format!("{message}; {h}"),
                _ => message.to_owned(),
            };
            GatewayConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                field,
                message,
            }
        })?;
        let invalid = |field, message: String| GatewayConfigError::Invalid {
            path: path.to_owned(),
            field,
            message,
        };
        let name_ok = !config.name.is_empty()
            && config.name.len() <= 32
            && config
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return Err(invalid(
                "name",
                format!(
                    "{:?} is not a gateway name: use 1 to 32 of a-z, 0-9 and '-', as in gateways.toml",
                    config.name
                ),
            ));
        }
        if !(1280..=9000).contains(&config.mtu) {
            return Err(invalid(
                "mtu",
                format!(
                    "{} is out of range: use 1280 to 9000 (1420 suits a 1500-byte WAN)",
                    config.mtu
                ),
            ));
        }
        if config.policy.is_some() && config.controller.is_some() {
            return Err(both(path));
        }
        if let Some(c) = &config.controller {
            if c.urls.is_empty() {
                return Err(invalid(
                    "controller.urls",
                    "no URL: give at least one, e.g. urls = [\"https://controller.example:8443\"]"
                        .to_owned(),
                ));
            }
            for url in &c.urls {
                if let Err(e) = crate::client::parse_url(url) {
                    return Err(invalid("controller.urls", e));
                }
            }
            if crate::client::parse_fingerprint(&c.fingerprint).is_none() {
                return Err(invalid(
                    "controller.fingerprint",
                    format!(
                        "{:?} is not a key fingerprint: give the controller's \"ed25519:...\" \
                         (51 characters) as `corridor controller` prints it and the token carries",
                        c.fingerprint
                    ),
                ));
            }
        }
        Ok(config)
    }
}

fn both(path: &Path) -> GatewayConfigError {
    GatewayConfigError::Invalid {
        path: path.to_owned(),
        field: "policy",
        message: "both `policy` and `[controller]` are set: a gateway serves a local policy \
                  directory (standalone) or what its controller sends, not both; remove `policy` \
                  to run under the controller, or the [controller] table to run standalone"
            .to_owned(),
    }
}

/// The top-level key whose entry (key and value) holds the byte range `span` (also used by
/// the controller's configuration).
pub(crate) fn field_at(text: &str, span: &std::ops::Range<usize>) -> Option<String> {
    if span.is_empty() {
        // A missing field: about the file as a whole.
        return None;
    }
    let doc = toml::de::DeTable::parse(text).ok()?;
    // A table header's error starts at its `[`, before the key: take the first entry that the
    // error overlaps, unless it covers more than one entry.
    let overlapping: Vec<String> = doc
        .get_ref()
        .iter()
        .filter(|(k, v)| {
            let start = k.span().start.min(v.span().start);
            let end = k.span().end.max(v.span().end);
            span.start < end && start < span.end
        })
        .map(|(k, _)| k.get_ref().to_string())
        .collect();
    match <[String; 1]>::try_from(overlapping) {
        Ok([field]) => Some(field),
        Err(_) => None,
    }
}

/// What a field takes, said after a wrong value.
fn hint(field: &str) -> Option<&'static str> {
    Some(match field {
        "name" => "give this gateway's name as in gateways.toml, e.g. \"edge-1\"",
        "key-dir" | "control-socket" | "policy" => {
            "give a path as a string (a relative path is relative to this file)"
        }
        "listen" => {
            "give IP:PORT, e.g. \"0.0.0.0:51820\" or \"[::]:51820\" (an address: host names are not resolved)"
        }
        "mtu" => "give a number from 1280 to 9000, e.g. 1420",
        "metrics" => {
            "give IP:PORT to serve Prometheus metrics on, e.g. \"127.0.0.1:9477\" (keep it on loopback), or leave it out"
        }
        "missing-netns" => "give \"fail\" (the default) or \"wait\"",
        "controller" => {
            "give a table: [controller] urls = [\"https://HOST:PORT\"], fingerprint = \"ed25519:...\" (as `corridor gateway enroll` writes it)"
        }
        _ => return None,
    })
}

/// 1-based line and column of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gateway.toml");
        std::fs::write(
            &file,
            "name = \"edge-1\"\nkey-dir = \"keys\"\npolicy = \"policy\"\n",
        )
        .unwrap();
        let c = GatewayConfig::load(&file).unwrap();
        assert_eq!(c.name, "edge-1");
        assert_eq!(c.key_dir, dir.path().join("keys"));
        assert_eq!(c.policy, Some(dir.path().join("policy")));
        assert_eq!(c.listen, "0.0.0.0:51820".parse().unwrap());
        assert_eq!(c.control_socket, PathBuf::from(DEFAULT_CONTROL_SOCKET));
        assert_eq!(c.mtu, 1420);
        assert_eq!(c.metrics, None);
        assert_eq!(c.missing_netns, MissingNetns::Fail);
    }

    #[test]
    fn workers_auto_or_a_number() {
        let p = Path::new("gw.toml");
        let parse = |extra: &str| {
            GatewayConfig::parse(&format!("name = \"e\"\nkey-dir = \"k\"\n{extra}"), p)
        };
        assert_eq!(parse("").unwrap().workers, Workers::Auto);
        assert_eq!(
            parse("workers = \"auto\"\n").unwrap().workers,
            Workers::Auto
        );
        assert_eq!(parse("workers = 2\n").unwrap().workers, Workers::Count(2));
        for bad in ["workers = 0\n", "workers = 65\n", "workers = \"many\"\n"] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("gw.toml:3:"), "{e}");
            assert!(
                e.contains("workers must be \"auto\" or a number from 1 to 64"),
                "{e}"
            );
        }
    }

    #[test]
    fn metrics_and_missing_netns() {
        let p = Path::new("gw.toml");
        let c = GatewayConfig::parse(
            "name = \"e\"\nkey-dir = \"k\"\nmetrics = \"127.0.0.1:9477\"\nmissing-netns = \"wait\"\n",
            p,
        )
        .unwrap();
        assert_eq!(c.metrics, Some("127.0.0.1:9477".parse().unwrap()));
        assert_eq!(c.missing_netns, MissingNetns::Wait);
        let e = GatewayConfig::parse(
            "name = \"e\"\nkey-dir = \"k\"\nmissing-netns = \"later\"\n",
            p,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("gw.toml:3:17: missing-netns: unknown variant `later`"),
            "{e}"
        );
        assert!(
            e.ends_with("give \"fail\" (the default) or \"wait\""),
            "{e}"
        );
        let e = GatewayConfig::parse(
            "name = \"e\"\nkey-dir = \"k\"\nmetrics = \"localhost\"\n",
            p,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("gw.toml:3:11: metrics: invalid socket address syntax; give IP:PORT"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_line_and_field() {
        let p = Path::new("gw.toml");
        let e = GatewayConfig::parse(
            "name = \"edge-1\"\nkey-dir = \"k\"\nlisten = \"nowhere\"\n",
            p,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("gw.toml:3:10: listen: invalid socket address syntax; give IP:PORT"),
            "{e}"
        );
        let e = GatewayConfig::parse("name = \"edge-1\"\nkey-dir = \"k\"\nlisen = \"x\"\n", p)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("gw.toml:3:1: lisen: unknown field `lisen`, expected one of"),
            "{e}"
        );
        let e = GatewayConfig::parse("key-dir = \"k\"\n", p)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "gw.toml:1:1: missing field `name`");
        let e = GatewayConfig::parse("name = \"e\"\nkey-dir = \"k\"\nmtu = \"big\"\n", p)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "gw.toml:3:7: mtu: invalid type: string \"big\", expected u16; give a number"
            ),
            "{e}"
        );
        let e = GatewayConfig::parse("name = \"e\"\nkey-dir = \"k\"\n[policy]\n", p)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("gw.toml:3:1: policy: invalid type: map"),
            "{e}"
        );
        let e = GatewayConfig::parse("name = \"e\"\nkey-dir = \"k\"\nmtu = \n", p)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("gw.toml:3:7: "), "{e}");
        let e = GatewayConfig::parse("name = \"Edge 1\"\nkey-dir = \"k\"\n", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("gw.toml: name:"), "{e}");
        let e = GatewayConfig::parse("name = \"e\"\nkey-dir = \"k\"\nmtu = 100\n", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("mtu"), "{e}");
    }

    const FP: &str = "ed25519:Zmh6rfhivXdsj8GLjp-OIAiXFIVu4jOzkCpZHQ1fKSU";

    #[test]
    fn controller_section() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gateway.toml");
        std::fs::write(
            &file,
            format!(
                "name = \"edge-1\"\nkey-dir = \"keys\"\n[controller]\nurls = [\"https://c1:8443\", \"https://[::1]:8443\"]\nfingerprint = \"{FP}\"\nstate-dir = \"state\"\nrotate-keys-every = \"30d\"\nlong-poll = 60\n"
            ),
        )
        .unwrap();
        let c = GatewayConfig::load(&file).unwrap();
        let ctl = c.controller.as_ref().unwrap();
        assert_eq!(ctl.urls.len(), 2);
        assert_eq!(ctl.fingerprint, FP);
        assert_eq!(ctl.state_dir, dir.path().join("state"));
        assert_eq!(
            ctl.rotate_keys_every,
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(ctl.long_poll, Some(Duration::from_secs(60)));
        assert_eq!(c.mode(&file).unwrap(), Mode::Controller(ctl));

        let p = Path::new("gw.toml");
        let c = GatewayConfig::parse(
            &format!("name = \"e\"\nkey-dir = \"k\"\n[controller]\nurls = [\"https://c:1\"]\nfingerprint = \"{FP}\"\n"),
            p,
        )
        .unwrap();
        let ctl = c.controller.as_ref().unwrap();
        assert_eq!(ctl.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(ctl.rotate_keys_every, None);
        assert_eq!(ctl.long_poll, None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(2_592_000)));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("").is_err());
        let p = Path::new("gw.toml");
        let e = GatewayConfig::parse(
            &format!("name = \"e\"\nkey-dir = \"k\"\n[controller]\nurls = [\"https://c:1\"]\nfingerprint = \"{FP}\"\nrotate-keys-every = \"monthly\"\n"),
            p,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("gw.toml:6:21: \"monthly\" is not a duration"),
            "{e}"
        );
    }

    #[test]
    fn policy_and_controller_exclusive() {
        let p = Path::new("gw.toml");
        let e = GatewayConfig::parse(
            &format!("name = \"e\"\nkey-dir = \"k\"\npolicy = \"p\"\n[controller]\nurls = [\"https://c:1\"]\nfingerprint = \"{FP}\"\n"),
            p,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("gw.toml: policy: both `policy` and `[controller]`"),
            "{e}"
        );
        assert!(e.contains("remove `policy`"), "{e}");
        let c = GatewayConfig::parse("name = \"e\"\nkey-dir = \"k\"\n", p).unwrap();
        let e = c.mode(p).unwrap_err().to_string();
        assert!(e.contains("neither `policy` nor `[controller]`"), "{e}");
        assert!(e.contains("corridor gateway enroll"), "{e}");
        let c = GatewayConfig::parse("name = \"e\"\nkey-dir = \"k\"\npolicy = \"p\"\n", p).unwrap();
        assert_eq!(c.mode(p).unwrap(), Mode::Standalone(Path::new("p")));
    }

    #[test]
    fn controller_section_errors() {
        let p = Path::new("gw.toml");
        let parse = |body: &str| {
            GatewayConfig::parse(
                &format!("name = \"e\"\nkey-dir = \"k\"\n[controller]\n{body}"),
                p,
            )
            .unwrap_err()
            .to_string()
        };
        let e = parse(&format!("urls = []\nfingerprint = \"{FP}\"\n"));
        assert!(e.starts_with("gw.toml: controller.urls: no URL"), "{e}");
        let e = parse(&format!(
            "urls = [\"http://c:1\"]\nfingerprint = \"{FP}\"\n"
        ));
        assert!(
            e.contains("controller.urls: \"http://c:1\" is not a controller URL"),
            "{e}"
        );
        let e = parse("urls = [\"https://c:1\"]\nfingerprint = \"abc\"\n");
        assert!(
            e.contains("controller.fingerprint: \"abc\" is not a key fingerprint"),
            "{e}"
        );
        let e = parse("urls = [\"https://c:1\"]\n");
        assert!(e.contains("missing field `fingerprint`"), "{e}");
        let e = parse(&format!(
            "url = [\"https://c:1\"]\nfingerprint = \"{FP}\"\n"
        ));
        assert!(e.contains("unknown field `url`"), "{e}");
    }
}
