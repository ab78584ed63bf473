//! Which URLs a scenario may open: the agent's allow and deny lists of host patterns.
//!
//! A pattern is a host (`example.com`), a wildcard suffix (`*.example.com`), `*`, an IP
//! address or a CIDR range (`10.0.0.0/8`, `fd00::/8`). Deny wins over allow; a non-empty
//! allow list admits only what it matches. Link-local addresses and cloud metadata
//! endpoints are denied unless an allow pattern other than `*` names them.

use std::net::{IpAddr, Ipv6Addr};
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

    /// `Ok` when the URL may be opened, else the reason it may not.
    pub fn check(&self, url: &str) -> Result<(), String> {
        if url == "about:blank" {
            return Ok(());
        }
        let parsed = Url::parse(url).map_err(|e| format!("not a valid URL ({e})"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("scheme {} is not allowed (http and https only)", parsed.scheme()));
        }
        let host = parsed.host().ok_or("the URL has no host")?;
        let (name, ip) = match host {
            Host::Domain(d) => (d.to_ascii_lowercase(), None),
            Host::Ipv4(a) => (a.to_string(), Some(IpAddr::V4(a))),
            Host::Ipv6(a) => (a.to_string(), Some(IpAddr::V6(a))),
        };
        if let Some(p) = self.deny.iter().find(|p| matches(p, &name, ip)) {
            return Err(format!("host {name} matches the deny pattern {p}"));
        }
        let explicitly_allowed = self.allow.iter().any(|p| p != "*" && matches(p, &name, ip));
        if is_metadata(&name, ip) && !explicitly_allowed {
            return Err(format!(
                "host {name} is a link-local or cloud metadata address, denied unless an allow pattern names it"
            ));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|p| matches(p, &name, ip)) {
            return Err(format!("host {name} matches no allow pattern ({})", self.allow.join(", ")));
        }
        Ok(())
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

    #[test]
    fn metadata_addresses_are_denied_by_default() {
        let p = policy(&[], &[]);
        assert!(p.check("http://127.0.0.1:8088/login").is_ok());
        assert!(p.check("http://169.254.169.254/latest/meta-data").unwrap_err().contains("link-local"));
        assert!(p.check("http://[fd00:ec2::254]/").unwrap_err().contains("metadata"));
        assert!(p.check("http://metadata.google.internal/").is_err());
        assert!(policy(&["*"], &[]).check("http://169.254.169.254/").is_err());
        assert!(policy(&["169.254.169.254"], &[]).check("http://169.254.169.254/").is_ok());
    }

    #[test]
    fn allow_and_deny_patterns() {
        let p = policy(&["*.example.com", "10.0.0.0/8"], &["bad.example.com"]);
        assert!(p.check("https://www.example.com/").is_ok());
        assert!(p.check("http://10.1.2.3/").is_ok());
        assert!(p.check("https://bad.example.com/").unwrap_err().contains("deny pattern"));
        assert!(p.check("https://example.org/").unwrap_err().contains("no allow pattern"));
        assert!(p.check("file:///etc/passwd").unwrap_err().contains("scheme"));
    }
}
