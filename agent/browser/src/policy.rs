//! Which URLs a scenario may open: the agent's allow and deny lists of host patterns.
//!
//! A pattern is a host (`example.com`), a wildcard suffix (`*.example.com`), `*`, an IP
//! address or a CIDR range (`10.0.0.0/8`, `fd00::/8`). Deny wins over allow; a non-empty
//! allow list admits only what it matches. Link-local addresses and cloud metadata
//! endpoints are denied unless an allow pattern other than `*` names them.
//!
//! Every spelling of an address counts as that address: the URL parser reads decimal,
//! octal and hex IPv4 (`http://2852039166/`, `http://0xa9.0xfe.0xa9.0xfe/`), IPv4-mapped
//! and NAT64 IPv6 (`[::ffff:169.254.169.254]`, `[64:ff9b::a9fe:a9fe]`) are their IPv4
//! address, and a trailing dot is dropped (`metadata.google.internal.`). A name is also
//! checked by what it resolves to ([`UrlPolicy::check`]): a name that resolves
//! to a denied or metadata address is denied. The agent checks a job's URLs before any
//! browser starts; while the browser runs, every request it makes is checked again by the
//! policy proxy ([`crate::guard`]), which connects only to the addresses it checked.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;
use url::{Host, Url};

const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
const METADATA_HOSTS: [&str; 2] = ["metadata.google.internal", "metadata"];

#[derive(Debug, Clone, Default)]
pub struct UrlPolicy {
    allow: Vec<String>,
    deny: Vec<String>,
}

impl UrlPolicy {
    pub fn new(allow: &[String], deny: &[String]) -> Self {
        let clean = |v: &[String]| v.iter().map(|p| p.trim().to_ascii_lowercase()).filter(|p| !p.is_empty()).collect();
        Self { allow: clean(allow), deny: clean(deny) }
    }

    /// `Ok` when the URL may be opened, else the reason it may not: its host as written,
    /// and for a name every address it resolves to (in at most 2 s; a name that does not
    /// resolve is left to fail in the browser).
    pub async fn check(&self, url: &str) -> Result<(), String> {
        let Some((name, port)) = self.check_as_written(url)? else { return Ok(()) };
        let lookup = tokio::time::timeout(Duration::from_secs(2), tokio::net::lookup_host((name.as_str(), port)));
        let Ok(Ok(addresses)) = lookup.await else { return Ok(()) };
        self.check_addresses(&name, addresses.map(|a| a.ip()))
    }

    /// The URL's scheme and host as written: `Err` when denied; `Some((name, port))` when
    /// the host is a name whose addresses are still to be checked
    /// ([`UrlPolicy::check_addresses`]); `None` when nothing is left to check.
    pub fn check_as_written(&self, url: &str) -> Result<Option<(String, u16)>, String> {
        let Some((name, ip, port)) = self.target(url)? else { return Ok(None) };
        self.check_host(&name, ip)?;
        Ok(ip.is_none().then_some((name, port)))
    }

    /// Whether the name may be reached at these addresses: `Err` names the first denied one.
    pub fn check_addresses(&self, name: &str, addresses: impl IntoIterator<Item = IpAddr>) -> Result<(), String> {
        let named = self.allow.iter().any(|p| p != "*" && matches(p, name, None));
        for address in addresses {
            let ip = canonical(address);
            let shown = ip.to_string();
            if let Some(p) = self.deny.iter().find(|p| matches(p, &shown, Some(ip))) {
                return Err(format!("host {name} resolves to {shown}, which matches the deny pattern {p}"));
            }
            let allowed = named || self.allow.iter().any(|p| p != "*" && matches(p, &shown, Some(ip)));
            if is_metadata(&shown, Some(ip)) && !allowed {
                return Err(format!(
                    "host {name} resolves to {shown}, a link-local or cloud metadata address, denied unless an allow pattern names it"
                ));
            }
        }
        Ok(())
    }

    /// The URL's host (name, address, port), or `None` for about:blank.
    fn target(&self, url: &str) -> Result<Option<(String, Option<IpAddr>, u16)>, String> {
        if url == "about:blank" {
            return Ok(None);
        }
        let parsed = Url::parse(url).map_err(|e| format!("not a valid URL ({e})"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("scheme {} is not allowed (http and https only)", parsed.scheme()));
        }
        let port = parsed.port_or_known_default().unwrap_or(80);
        let host = parsed.host().ok_or("the URL has no host")?;
        Ok(Some(match host {
            Host::Domain(d) => (d.trim_end_matches('.').to_ascii_lowercase(), None, port),
            Host::Ipv4(a) => (a.to_string(), Some(IpAddr::V4(a)), port),
            Host::Ipv6(a) => {
                let ip = canonical(IpAddr::V6(a));
                (ip.to_string(), Some(ip), port)
            }
        }))
    }

    fn check_host(&self, name: &str, ip: Option<IpAddr>) -> Result<(), String> {
        if let Some(p) = self.deny.iter().find(|p| matches(p, name, ip)) {
            return Err(format!("host {name} matches the deny pattern {p}"));
        }
        let explicitly_allowed = self.allow.iter().any(|p| p != "*" && matches(p, name, ip));
        if is_metadata(name, ip) && !explicitly_allowed {
            return Err(format!(
                "host {name} is a link-local or cloud metadata address, denied unless an allow pattern names it"
            ));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|p| matches(p, name, ip)) {
            return Err(format!("host {name} matches no allow pattern ({})", self.allow.join(", ")));
        }
        Ok(())
    }
}

/// An IPv6 address that carries an IPv4 one (IPv4-mapped `::ffff:a.b.c.d`, NAT64
/// `64:ff9b::a.b.c.d`) is that IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = a.segments();
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [a1, a2] = s[6].to_be_bytes();
                let [a3, a4] = s[7].to_be_bytes();
                return IpAddr::V4(Ipv4Addr::new(a1, a2, a3, a4));
            }
            ip
        }
        IpAddr::V4(_) => ip,
    }
}

fn is_metadata(name: &str, ip: Option<IpAddr>) -> bool {
    match ip {
        Some(IpAddr::V4(a)) => a.is_link_local(),
        // fe80::/10 link-local, and AWS's IPv6 metadata endpoint fd00:ec2::254.
        Some(IpAddr::V6(a)) => (a.segments()[0] & 0xffc0) == 0xfe80 || a == AWS_METADATA_V6,
        None => METADATA_HOSTS.contains(&name),
    }
}

fn matches(pattern: &str, name: &str, ip: Option<IpAddr>) -> bool {
    if pattern == "*" || pattern == name {
        return true;
    }
    if let Some(suffix) = pattern.strip_prefix("*.") {
        return ip.is_none() && name.ends_with(&format!(".{suffix}"));
    }
    let Some(ip) = ip else { return false };
    let (base, bits) = match pattern.split_once('/') {
        Some((b, n)) => (b, n.parse::<u32>().ok()),
        None => (pattern.trim_matches(['[', ']']), None),
    };
    let Ok(base) = base.trim_matches(['[', ']']).parse::<IpAddr>() else {
        return false;
    };
    match (base, ip) {
        (IpAddr::V4(b), IpAddr::V4(a)) => prefix_eq(&b.octets(), &a.octets(), bits.unwrap_or(32)),
        (IpAddr::V6(b), IpAddr::V6(a)) => prefix_eq(&b.octets(), &a.octets(), bits.unwrap_or(128)),
        _ => false,
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u32) -> bool {
    let bits = bits.min(a.len() as u32 * 8) as usize;
    let (full, rest) = (bits / 8, bits % 8);
    if a[..full] != b[..full] {
        return false;
    }
    rest == 0 || (a[full] ^ b[full]) >> (8 - rest) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str]) -> UrlPolicy {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        UrlPolicy::new(&v(allow), &v(deny))
    }

    #[tokio::test]
    async fn metadata_addresses_are_denied_by_default() {
        let p = policy(&[], &[]);
        assert!(p.check("http://127.0.0.1:8088/login").await.is_ok());
        assert!(p.check("http://169.254.169.254/latest/meta-data").await.unwrap_err().contains("link-local"));
        assert!(p.check("http://[fd00:ec2::254]/").await.unwrap_err().contains("metadata"));
        assert!(p.check("http://metadata.google.internal/").await.is_err());
        assert!(policy(&["*"], &[]).check("http://169.254.169.254/").await.is_err());
        assert!(policy(&["169.254.169.254"], &[]).check("http://169.254.169.254/").await.is_ok());
    }

    #[tokio::test]
    async fn every_spelling_of_a_metadata_address_is_denied() {
        let p = policy(&[], &[]);
        for url in [
            "http://2852039166/",                 // decimal
            "http://0xa9.0xfe.0xa9.0xfe/",        // hex
            "http://0251.0376.0251.0376/",        // octal
            "http://169.254.43518/",              // shortened
            "http://[::ffff:169.254.169.254]/",   // IPv4-mapped IPv6
            "http://[::ffff:a9fe:a9fe]/",         // the same, in hex
            "http://[64:ff9b::169.254.169.254]/", // NAT64
            "http://metadata.google.internal./",  // trailing dot
            "http://METADATA.Google.Internal/",   // case
            "http://[fe80::1]/",                  // IPv6 link-local
        ] {
            let refused = p.check(url).await.expect_err(url);
            assert!(refused.contains("metadata"), "{url}: {refused}");
        }
        // A deny pattern catches mapped and dotted spellings too.
        let deny = policy(&[], &["10.0.0.0/8", "intranet.example.com"]);
        assert!(deny.check("http://[::ffff:10.1.2.3]/").await.unwrap_err().contains("deny pattern 10.0.0.0/8"));
        assert!(deny.check("http://intranet.example.com./").await.unwrap_err().contains("deny pattern"));
        assert!(deny.check("http://0x0a000001/").await.unwrap_err().contains("deny pattern"));
    }

    #[tokio::test]
    async fn a_name_is_checked_by_the_addresses_it_resolves_to() {
        let p = policy(&[], &["127.0.0.0/8"]);
        let refused = p.check("http://localhost:8088/login").await.unwrap_err();
        assert!(refused.starts_with("host localhost resolves to 127."), "{refused}");
        assert!(refused.ends_with("which matches the deny pattern 127.0.0.0/8"), "{refused}");
        assert!(policy(&[], &[]).check("http://localhost:8088/").await.is_ok());
        // A name that does not resolve is left to the browser.
        assert!(policy(&[], &[]).check("http://no-such-host.invalid/").await.is_ok());
    }

    #[tokio::test]
    async fn allow_and_deny_patterns() {
        let p = policy(&["*.example.com", "10.0.0.0/8"], &["bad.example.com"]);
        assert!(p.check("https://www.example.com/").await.is_ok());
        assert!(p.check("http://10.1.2.3/").await.is_ok());
        assert!(p.check("https://bad.example.com/").await.unwrap_err().contains("deny pattern"));
        assert!(p.check("https://example.org/").await.unwrap_err().contains("no allow pattern"));
        assert!(p.check("file:///etc/passwd").await.unwrap_err().contains("scheme"));
    }
}
