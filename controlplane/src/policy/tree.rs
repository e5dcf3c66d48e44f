//! Walking a spanned TOML tree: typed accessors that report problems instead of stopping.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::Path;

use dataplane::config::PortRange;
use ip_network::IpNetwork;
use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue};

use crate::diag::{Diagnostic, LineIndex, Severity};

/// A value from a file with where it was and its field path.
#[derive(Debug, Clone)]
pub(super) struct At<T> {
    pub(super) value: T,
    pub(super) span: Range<usize>,
    pub(super) field: String,
}

/// A field that may be absent, present but invalid (already reported), or valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Opt<T> {
    Absent,
    Invalid,
    Valid(T),
}

/// One file being checked: its name, line index and the diagnostics found in it.
#[derive(Debug)]
pub(super) struct FileCtx<'a> {
    pub(super) path: &'a Path,
    index: LineIndex<'a>,
}

impl<'a> FileCtx<'a> {
    pub(super) fn new(path: &'a Path, text: &'a str) -> Self {
        FileCtx {
            path,
            index: LineIndex::new(text),
        }
    }

    pub(super) fn diag(
        &self,
        severity: Severity,
        span: &Range<usize>,
        field: &str,
        message: impl Into<String>,
    ) -> Diagnostic {
        Diagnostic {
            severity,
            file: self.path.to_path_buf(),
            position: Some(self.index.span_start(span)),
            field: field.to_owned(),
            message: message.into(),
        }
    }

    pub(super) fn position(&self, span: &Range<usize>) -> crate::diag::Position {
        self.index.span_start(span)
    }

    pub(super) fn line_of(&self, span: &Range<usize>) -> usize {
        self.index.span_start(span).line
    }
}

/// Collects diagnostics for one file.
#[derive(Debug)]
pub(super) struct Sink<'c, 'a> {
    pub(super) ctx: &'c FileCtx<'a>,
    pub(super) diags: &'c mut Vec<Diagnostic>,
}

impl Sink<'_, '_> {
    pub(super) fn error(&mut self, span: &Range<usize>, field: &str, message: impl Into<String>) {
        let d = self.ctx.diag(Severity::Error, span, field, message);
        self.diags.push(d);
    }

    pub(super) fn warning(&mut self, span: &Range<usize>, field: &str, message: impl Into<String>) {
        let d = self.ctx.diag(Severity::Warning, span, field, message);
        self.diags.push(d);
    }
}

pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

pub(super) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// A table whose fields are taken one by one; what is left over is reported as unknown.
#[derive(Debug)]
pub(super) struct Table<'a, 'i> {
    table: &'a DeTable<'i>,
    pub(super) span: Range<usize>,
    pub(super) field: String,
    known: &'static [&'static str],
}

impl<'a, 'i> Table<'a, 'i> {
    pub(super) fn new(
        table: &'a DeTable<'i>,
        span: Range<usize>,
        field: String,
        known: &'static [&'static str],
    ) -> Self {
        Table {
            table,
            span,
            field,
            known,
        }
    }

    /// The value of `key`, if present.
    pub(super) fn get(&self, key: &str) -> Option<&'a Spanned<DeValue<'i>>> {
        self.table.get(key)
    }

    /// The value of `key`; reports it missing otherwise.
    pub(super) fn require(
        &self,
        sink: &mut Sink<'_, '_>,
        key: &str,
        example: &str,
    ) -> Option<&'a Spanned<DeValue<'i>>> {
        let v = self.table.get(key);
        if v.is_none() {
            sink.error(
                &self.span,
                &self.field,
                format!("missing required field `{key}`; add {key} = {example}"),
            );
        }
        v
    }

    /// Reports every field not in the known list, with the closest known name as a hint.
    pub(super) fn check_unknown(&self, sink: &mut Sink<'_, '_>) {
        let mut unknown: Vec<_> = self
            .table
            .iter()
            .filter(|(k, _)| !self.known.contains(&k.get_ref().as_ref()))
            .collect();
        unknown.sort_by_key(|(k, _)| k.span().start);
        for (k, _) in unknown {
            let key: &str = k.get_ref();
            let hint = match closest(key, self.known) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("known fields: {}", self.known.join(", ")),
            };
            sink.error(
                &k.span(),
                &join(&self.field, key),
                format!("unknown field `{key}`; {hint}"),
            );
        }
    }
}

fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (levenshtein(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

pub(super) fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

fn wrong_type(sink: &mut Sink<'_, '_>, v: &Spanned<DeValue<'_>>, field: &str, expected: &str) {
    sink.error(
        &v.span(),
        field,
        format!("expected {expected}, found {}", type_name(v.get_ref())),
    );
}

pub(super) fn string(
    sink: &mut Sink<'_, '_>,
    v: &Spanned<DeValue<'_>>,
    field: &str,
    example: &str,
) -> Option<At<String>> {
    match v.get_ref() {
        DeValue::String(s) => Some(At {
            value: s.to_string(),
            span: v.span(),
            field: field.to_owned(),
        }),
        _ => {
            wrong_type(sink, v, field, &format!("a string (e.g. {example})"));
            None
        }
    }
}

pub(super) fn integer(
    sink: &mut Sink<'_, '_>,
    v: &Spanned<DeValue<'_>>,
    field: &str,
) -> Option<i128> {
    match v.get_ref() {
        DeValue::Integer(i) => {
            let parsed = i128::from_str_radix(i.as_str(), i.radix()).ok();
            if parsed.is_none() {
                sink.error(&v.span(), field, "integer out of range");
            }
            parsed
        }
        _ => {
            wrong_type(sink, v, field, "an integer");
            None
        }
    }
}

pub(super) fn boolean(
    sink: &mut Sink<'_, '_>,
    v: &Spanned<DeValue<'_>>,
    field: &str,
) -> Option<bool> {
    match v.get_ref() {
        DeValue::Boolean(b) => Some(*b),
        _ => {
            wrong_type(sink, v, field, "a boolean (true or false)");
            None
        }
    }
}

pub(super) fn array<'a, 'i>(
    sink: &mut Sink<'_, '_>,
    v: &'a Spanned<DeValue<'i>>,
    field: &str,
    example: &str,
) -> Option<&'a DeArray<'i>> {
    match v.get_ref() {
        DeValue::Array(a) => Some(a),
        _ => {
            wrong_type(sink, v, field, &format!("an array (e.g. {example})"));
            None
        }
    }
}

pub(super) fn table<'a, 'i>(
    sink: &mut Sink<'_, '_>,
    v: &'a Spanned<DeValue<'i>>,
    field: &str,
    known: &'static [&'static str],
    example: &str,
) -> Option<Table<'a, 'i>> {
    match v.get_ref() {
        DeValue::Table(t) => Some(Table::new(t, v.span(), field.to_owned(), known)),
        _ => {
            wrong_type(sink, v, field, &format!("a table (e.g. {example})"));
            None
        }
    }
}

/// The tables of an array of tables (`[[endpoint]]`), each with its index.
pub(super) fn tables<'a, 'i>(
    sink: &mut Sink<'_, '_>,
    v: &'a Spanned<DeValue<'i>>,
    field: &str,
    known: &'static [&'static str],
) -> Vec<(usize, Table<'a, 'i>)> {
    let header = format!("[[{field}]] tables");
    let Some(items) = array(sink, v, field, &header) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let f = index(field, i);
        if let Some(t) = table(sink, item, &f, known, &header) {
            out.push((i, t));
        }
    }
    out
}

// ---- domain values -------------------------------------------------------------------------

/// Checks a name against `[a-z0-9-]{1,32}`.
pub(super) fn check_name(sink: &mut Sink<'_, '_>, name: &At<String>, what: &str) -> bool {
    let s = name.value.as_str();
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        let suggestion: String = s
            .to_ascii_lowercase()
            .chars()
            .map(|c| {
                if c.is_ascii_lowercase() || c.is_ascii_digit() {
                    c
                } else {
                    '-'
                }
            })
            .take(32)
            .collect();
        let hint = if !suggestion.is_empty() && suggestion != s {
            format!(" (e.g. \"{suggestion}\")")
        } else {
            String::new()
        };
        sink.error(
            &name.span,
            &name.field,
            format!(
                "\"{s}\" is not a valid {what} name; use 1 to 32 characters from a-z, 0-9 and -{hint}"
            ),
        );
    }
    ok
}

/// Parses `ADDR/LEN`, with a fix suggested when it does not parse or has host bits set.
pub(super) fn parse_prefix(text: &str) -> Result<IpNetwork, String> {
    let t = text.trim();
    let Some((addr, len)) = t.split_once('/') else {
        return Err(match t.parse::<IpAddr>() {
            Ok(ip) => format!(
                "\"{text}\" has no prefix length; write {ip}/{} for the single address",
                if ip.is_ipv4() { 32 } else { 128 }
            ),
            Err(_) => {
                format!("\"{text}\" is not a prefix; write ADDRESS/LENGTH, e.g. 10.20.1.0/24")
            }
        });
    };
    let ip: IpAddr = addr.parse().map_err(|_| {
        format!(
            "\"{addr}\" in \"{text}\" is not an IP address; write ADDRESS/LENGTH, e.g. 10.20.1.0/24"
        )
    })?;
    let max: u8 = if ip.is_ipv4() { 32 } else { 128 };
    let len: u8 = len.parse().ok().filter(|l| *l <= max).ok_or_else(|| {
        format!("prefix length \"{len}\" in \"{text}\" is not a number from 0 to {max}")
    })?;
    let net = IpNetwork::new_truncate(ip, len)
        .map_err(|e| format!("\"{text}\" is not a valid prefix: {e}"))?;
    if net.network_address() != ip {
        return Err(format!(
            "{text} has host bits set; did you mean {}/{len} or {ip}/{max}?",
            net.network_address()
        ));
    }
    Ok(net)
}

/// Whether `inner` lies inside `outer`.
pub(super) fn prefix_within(inner: &IpNetwork, outer: &IpNetwork) -> bool {
    inner.is_ipv4() == outer.is_ipv4()
        && inner.netmask() >= outer.netmask()
        && outer.contains(inner.network_address())
}

/// Whether two prefixes share any address.
pub(super) fn prefixes_overlap(a: &IpNetwork, b: &IpNetwork) -> bool {
    prefix_within(a, b) || prefix_within(b, a)
}

pub(super) fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = text.trim().parse().map_err(|_| {
        format!(
            "\"{text}\" is not a socket address; write IP:PORT, e.g. 192.168.50.1:51820 or [2001:db8::1]:51820"
        )
    })?;
    if addr.port() == 0 {
        return Err(format!(
            "\"{text}\" has port 0; give the UDP port the peer listens on (e.g. 51820)"
        ));
    }
    Ok(addr)
}

pub(super) fn parse_public_key(text: &str) -> Result<[u8; 32], String> {
    dataplane::config::decode_key(text).map_err(|e| {
        format!("\"{text}\" is not a public key ({e}); give the base64 X25519 public key, as `corridor keys generate` or `wg pubkey` prints it")
    })
}

pub(super) fn parse_port(text: &str, whole: &str) -> Result<u16, String> {
    let n: u64 = text.trim().parse().map_err(|_| {
        format!("\"{whole}\" is not a port or port range; write e.g. \"443\" or \"9000-9100\"")
    })?;
    match u16::try_from(n) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(format!(
            "port {n} in \"{whole}\" is out of range; ports go from 1 to 65535"
        )),
    }
}

pub(super) fn parse_port_range(text: &str) -> Result<PortRange, String> {
    let (start, end) = match text.split_once('-') {
        Some((a, b)) => (parse_port(a, text)?, parse_port(b, text)?),
        None => {
            let p = parse_port(text, text)?;
            (p, p)
        }
    };
    if start > end {
        return Err(format!(
            "port range \"{text}\" is reversed; write \"{end}-{start}\""
        ));
    }
    Ok(PortRange { start, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert!(parse_prefix("10.20.0.0/16").is_ok());
        let e = parse_prefix("10.20.1.10/24").unwrap_err();
        assert!(
            e.contains("did you mean 10.20.1.0/24 or 10.20.1.10/32?"),
            "{e}"
        );
        assert!(
            parse_prefix("10.20.1.10")
                .unwrap_err()
                .contains("10.20.1.10/32")
        );
        assert!(parse_prefix("10.20.1.0/33").is_err());
        assert!(parse_prefix("fd00::/8").is_ok());
        assert!(parse_prefix("nonsense").is_err());
        let a = parse_prefix("10.20.0.0/16").unwrap();
        let b = parse_prefix("10.20.1.0/24").unwrap();
        let c = parse_prefix("10.21.0.0/16").unwrap();
        assert!(prefix_within(&b, &a) && !prefix_within(&a, &b));
        assert!(prefixes_overlap(&a, &b) && !prefixes_overlap(&a, &c));
    }

    #[test]
    fn ports() {
        assert_eq!(
            parse_port_range("443"),
            Ok(PortRange {
                start: 443,
                end: 443
            })
        );
        assert_eq!(
            parse_port_range("9000-9100"),
            Ok(PortRange {
                start: 9000,
                end: 9100
            })
        );
        assert!(
            parse_port_range("9100-9000")
                .unwrap_err()
                .contains("reversed")
        );
        assert!(parse_port_range("0").unwrap_err().contains("out of range"));
        assert!(
            parse_port_range("70000")
                .unwrap_err()
                .contains("out of range")
        );
        assert!(parse_port_range("http").is_err());
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            closest("adress-space", &["name", "address-space"]),
            Some("address-space")
        );
        assert_eq!(closest("zzzzzz", &["name"]), None);
    }
}
