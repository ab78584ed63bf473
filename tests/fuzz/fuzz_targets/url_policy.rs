//! The browser's URL policy: no URL that reaches a link-local, metadata or denied address
//! is allowed, however it spells the address; nor a name resolving to one.
#![no_main]
use baton_browser::UrlPolicy;
use std::net::{IpAddr, Ipv4Addr};

/// Written independently of the policy: the addresses it must refuse.
fn forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local() || a.octets()[0] == 10,
        IpAddr::V6(a) => {
            let s = a.segments();
            if let Some(v4) = a.to_ipv4_mapped() {
                return forbidden(IpAddr::V4(v4));
            }
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let o = a.octets();
                return forbidden(IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15])));
            }
            s[0] & 0xffc0 == 0xfe80 || s == [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254]
        }
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(url) = std::str::from_utf8(data) else { return };
    let policy = UrlPolicy::new(&[], &["10.0.0.0/8".to_string()]);
    let written = policy.check_as_written(url);
    if let Ok(parsed) = url::Url::parse(url)
        && matches!(parsed.scheme(), "http" | "https")
    {
        let ip = match parsed.host() {
            Some(url::Host::Ipv4(a)) => Some(IpAddr::V4(a)),
            Some(url::Host::Ipv6(a)) => Some(IpAddr::V6(a)),
            _ => None,
        };
        if let Some(ip) = ip {
            assert!(!forbidden(ip) || written.is_err(), "{url:?} reaches {ip}");
        }
    }
    if let Ok(Some((name, _))) = written {
        let addresses: Vec<IpAddr> =
            data.chunks_exact(4).map(|c| IpAddr::V4(Ipv4Addr::new(c[0], c[1], c[2], c[3]))).collect();
        let checked = policy.check_addresses(&name, addresses.iter().copied());
        assert!(!addresses.iter().any(|ip| forbidden(*ip)) || checked.is_err(), "{name} at {addresses:?}");
    }
});
