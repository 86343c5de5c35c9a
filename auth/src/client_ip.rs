//! Who a call came from: trusted proxies, `X-Forwarded-For`, and the
//! rate-limit bucket of an anonymous caller.

use std::net::{IpAddr, SocketAddr};

use ordermesh_runtime::config::{self, ConfigError, Env};

/// CIDRs of the proxies whose `X-Forwarded-For` is believed; none by default.
pub const ENV_TRUSTED_PROXIES: &str = "AUTH_TRUSTED_PROXIES";

/// An IP network: an address and how many of its leading bits count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

/// An address as a number, and its width in bits.
fn ip_bits(ip: IpAddr) -> (u128, u32) {
    match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

/// The low `n` bits set (`n` up to 128).
fn low_bits(n: u32) -> u128 {
    u128::MAX.checked_shr(128 - n).unwrap_or(0)
}

/// An IPv4-mapped IPv6 address (`::ffff:192.0.2.7`, what a dual-stack
/// listener reports for IPv4 peers) as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

impl IpNet {
    /// Whether `ip` is in this network; an address of the other family
    /// never is.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        if self.addr.is_ipv4() != ip.is_ipv4() {
            return false;
        }
        let (net, width) = ip_bits(self.addr);
        let (ip, _) = ip_bits(ip);
        (net ^ ip) & !low_bits(width - u32::from(self.prefix)) == 0
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;

    /// `10.0.0.0/8`, `fd00::/8`, or one address (`192.0.2.7`, `::1`).
    /// Bits past the prefix must be zero: `10.0.0.1/8` is likely a typo.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or a CIDR"))?;
        let (bits, width) = ip_bits(addr);
        let prefix = match prefix {
            None => width,
            Some(p) => match p.parse::<u32>() {
                Ok(n) if n <= width && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => {
                    return Err(format!(
                        "{text:?}: the prefix length must be a number from 0 to {width}"
                    ));
                }
            },
        };
        let host = low_bits(width - prefix);
        if bits & host != 0 {
            let network = match addr {
                IpAddr::V4(_) => IpAddr::from(std::net::Ipv4Addr::from((bits & !host) as u32)),
                IpAddr::V6(_) => IpAddr::from(std::net::Ipv6Addr::from(bits & !host)),
            };
            return Err(format!(
                "{text:?} has bits set past its prefix: did you mean {network}/{prefix}?"
            ));
        }
        // An IPv4-mapped network is kept as the IPv4 one, as peers are.
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (addr, prefix),
            },
            _ => (addr, prefix),
        };
        Ok(Self {
            addr,
            prefix: u8::try_from(prefix).expect("at most 128"),
        })
    }
}

/// The proxies (an ingress, a load balancer) whose `X-Forwarded-For` is
/// believed. Empty by default: then the TCP peer is the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

/// How many `X-Forwarded-For` entries are looked at, from the right: a
/// request passes through a few proxies, not dozens.
const MAX_FORWARDED_HOPS: usize = 16;

impl TrustedProxies {
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self(networks)
    }

    /// `AUTH_TRUSTED_PROXIES`: a comma-separated list of CIDRs or single
    /// addresses; a bad entry is an error naming the variable.
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        config::list(env, ENV_TRUSTED_PROXIES, &[])
            .iter()
            .map(|entry| {
                entry
                    .parse()
                    .map_err(|reason| config::invalid(ENV_TRUSTED_PROXIES, entry, reason))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn networks(&self) -> &[IpNet] {
        &self.0
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }

    /// Who a request that came from `peer` was sent by. An untrusted peer
    /// is the caller itself, whatever it claims. A trusted one passed on
    /// `X-Forwarded-For` (all of `headers`' values, in order, are one
    /// list): walking it from the right, the first address that is not a
    /// trusted proxy is the caller, as everything left of it was written
    /// by that caller. An entry that is not an address ends the walk at
    /// the last trusted hop, as does running out of entries.
    pub fn client_ip(&self, peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
        let mut client = canonical(peer);
        if !self.contains(client) {
            return client;
        }
        let values: Vec<&http::HeaderValue> = headers.get_all("x-forwarded-for").iter().collect();
        let hops = values
            .iter()
            .rev()
            .flat_map(|value| match value.to_str() {
                Ok(text) => text.rsplit(',').map(Some).collect::<Vec<_>>(),
                Err(_) => vec![None],
            })
            .take(MAX_FORWARDED_HOPS);
        for hop in hops {
            if hop.is_some_and(|h| h.trim().is_empty()) {
                continue;
            }
            let Some(ip) = hop.and_then(parse_forwarded_hop) else {
                break;
            };
            client = canonical(ip);
            if !self.contains(client) {
                return client;
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, maybe with a port
/// (`192.0.2.7:4711`, `[2001:db8::1]:443`) or in brackets.
fn parse_forwarded_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = hop.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

/// The address a call came from (see [`TrustedProxies::client_ip`]), in the
/// request extensions of every call but the open routes, when the server
/// knows its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// The rate-limit bucket of an anonymous caller: its IPv4 address, or its
/// IPv6 /64 (one subscriber's usual share, which it can fill with
/// addresses at will).
pub(crate) fn client_bucket(ip: IpAddr) -> String {
    match canonical(ip) {
        IpAddr::V4(v4) => format!("ip:{v4}"),
        IpAddr::V6(v6) => {
            let network = std::net::Ipv6Addr::from(u128::from(v6) & !low_bits(64));
            format!("ip:{network}/64")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthConfig;
    use crate::test_support::env;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_match() {
        let private = net("10.0.0.0/8");
        assert!(private.contains(ip("10.255.1.2")) && !private.contains(ip("11.0.0.1")));
        assert_eq!(private.to_string(), "10.0.0.0/8");
        let one = net("192.0.2.7");
        assert_eq!(one.to_string(), "192.0.2.7/32");
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        // IPv4 peers of a dual-stack listener arrive IPv4-mapped.
        assert!(one.contains(ip("::ffff:192.0.2.7")));
        assert_eq!(net("::ffff:10.0.0.0/104"), private);
        let v6 = net("2001:db8::/32");
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.0.0.1")) && !private.contains(ip("::a00:1")));
        assert!(net("::1").contains(ip("::1")) && !net("::1").contains(ip("::2")));
        for everything in ["0.0.0.0/0", "::/0"] {
            let all = net(everything);
            let family = if everything.contains(':') {
                "2001:db8::9"
            } else {
                "203.0.113.9"
            };
            assert!(all.contains(ip(family)), "{everything}");
        }
        assert!(!net("0.0.0.0/0").contains(ip("2001:db8::9")));

        for (bad, says) in [
            ("10.0.0.1/8", "did you mean 10.0.0.0/8"),
            ("2001:db8::1/32", "did you mean 2001:db8::/32"),
            ("10.0.0.0/33", "0 to 32"),
            ("::/129", "0 to 128"),
            ("10.0.0.0/+8", "0 to 32"),
            ("10.0.0.0/", "0 to 32"),
            ("10.0.0/8", "not an IP address"),
            ("ingress", "not an IP address"),
            ("", "not an IP address"),
        ] {
            let err = bad.parse::<IpNet>().unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn trusted_proxies_come_from_one_variable() {
        let none = AuthConfig::from_env(&env(&[])).unwrap().trusted_proxies;
        assert_eq!(none, TrustedProxies::default());
        assert!(!none.contains(ip("127.0.0.1")));
        let c = AuthConfig::from_env(&env(&[(
            ENV_TRUSTED_PROXIES,
            " 10.0.0.0/8, ,fd00::/8,192.0.2.7 ",
        )]))
        .unwrap();
        assert_eq!(
            c.trusted_proxies.networks(),
            [net("10.0.0.0/8"), net("fd00::/8"), net("192.0.2.7/32")]
        );
        for bad in ["10.0.0.0/8,nonsense", "10.0.0.1/8", "10.0.0.0/40"] {
            let err = AuthConfig::from_env(&env(&[(ENV_TRUSTED_PROXIES, bad)])).unwrap_err();
            assert_eq!(err.name, ENV_TRUSTED_PROXIES, "{bad}");
            assert!(err.to_string().contains(ENV_TRUSTED_PROXIES), "{err}");
        }
    }

    fn forwarded(values: &[&str]) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn the_caller_is_the_right_most_untrusted_forwarded_address() {
        let proxies = TrustedProxies::new(vec![net("10.0.0.0/8"), net("fd00::/8")]);
        let client = |peer: &str, values: &[&str]| proxies.client_ip(ip(peer), &forwarded(values));
        let ingress = "10.0.0.5";

        // An untrusted peer is the caller, whatever it forwards.
        assert_eq!(client("203.0.113.9", &["198.51.100.1"]), ip("203.0.113.9"));
        assert_eq!(client("::ffff:203.0.113.9", &[]), ip("203.0.113.9"));
        // A trusted one without the header: itself.
        assert_eq!(client(ingress, &[]), ip(ingress));
        // The ingress appended the address it saw; what the caller wrote to
        // its left (a spoof) is not believed.
        assert_eq!(client(ingress, &["198.51.100.1"]), ip("198.51.100.1"));
        assert_eq!(
            client(ingress, &["1.1.1.1, 198.51.100.1"]),
            ip("198.51.100.1")
        );
        assert_eq!(
            client(ingress, &["1.1.1.1", "198.51.100.1"]),
            ip("198.51.100.1"),
            "several headers are one list"
        );
        // Trusted hops (a second proxy) are skipped.
        assert_eq!(
            client(ingress, &["1.1.1.1, 198.51.100.1, 10.9.9.9 , fd00::7"]),
            ip("198.51.100.1")
        );
        // Ports, brackets and IPv4-mapped addresses.
        assert_eq!(client(ingress, &["198.51.100.1:4711"]), ip("198.51.100.1"));
        assert_eq!(client(ingress, &["[2001:db8::1]:443"]), ip("2001:db8::1"));
        assert_eq!(client(ingress, &["[2001:db8::1]"]), ip("2001:db8::1"));
        assert_eq!(
            client(ingress, &["::ffff:198.51.100.1"]),
            ip("198.51.100.1")
        );
        // Garbage ends the walk at the last trusted hop: never further left.
        assert_eq!(client(ingress, &["1.1.1.1, unknown"]), ip(ingress));
        assert_eq!(
            client(ingress, &["1.1.1.1, bogus, 10.1.1.1"]),
            ip("10.1.1.1")
        );
        assert_eq!(client(ingress, &["198.51.100.1, "]), ip("198.51.100.1"));
        let mut opaque = http::HeaderMap::new();
        opaque.append(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"\xff1.1.1.1").unwrap(),
        );
        assert_eq!(proxies.client_ip(ip(ingress), &opaque), ip(ingress));
        // Only so many hops are walked.
        let chain = vec!["10.0.0.1"; MAX_FORWARDED_HOPS + 1].join(",");
        let chain = format!("198.51.100.1,{chain}");
        assert_eq!(client(ingress, &[&chain]), ip("10.0.0.1"));
        // Nobody trusted: the header is ignored.
        let none = TrustedProxies::default();
        assert_eq!(
            none.client_ip(ip("127.0.0.1"), &forwarded(&["198.51.100.1"])),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn anonymous_buckets_are_per_ipv4_address_and_ipv6_64() {
        assert_eq!(client_bucket(ip("192.0.2.7")), "ip:192.0.2.7");
        assert_eq!(client_bucket(ip("::ffff:192.0.2.7")), "ip:192.0.2.7");
        assert_eq!(
            client_bucket(ip("2001:db8:1:2:aaaa::1")),
            client_bucket(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_eq!(client_bucket(ip("2001:db8:1:2::1")), "ip:2001:db8:1:2::/64");
        assert_ne!(
            client_bucket(ip("2001:db8:1:2::1")),
            client_bucket(ip("2001:db8:1:3::1"))
        );
    }
}
