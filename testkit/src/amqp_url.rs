//! The one reader of AMQP URLs in test code: where a URL points
//! (`host:port`), and the same URL pointed somewhere else (a fault proxy).

use anyhow::{Context, bail};

/// An AMQP URL cut at its authority:
/// `scheme://[user[:password]@]host[:port][/vhost][?query]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpUrl<'a> {
    scheme: &'a str,
    /// `user:password@`, or empty.
    userinfo: &'a str,
    host_port: &'a str,
    /// The path and query as written, from the first `/` or `?`.
    tail: &'a str,
}

impl<'a> AmqpUrl<'a> {
    pub fn parse(url: &'a str) -> anyhow::Result<Self> {
        let (scheme, rest) = url.split_once("://").context("AMQP URL without a scheme")?;
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (userinfo, host_port) = match authority.rfind('@') {
            Some(at) => authority.split_at(at + 1),
            None => ("", authority),
        };
        if host_port.is_empty() {
            bail!("AMQP URL without a host");
        }
        Ok(Self {
            scheme,
            userinfo,
            host_port,
            tail,
        })
    }

    /// `host:port`, with the scheme's default port (5671 for `amqps`, else
    /// 5672) when the URL names none.
    pub fn authority(&self) -> String {
        if self.host_port.contains(':') {
            self.host_port.to_owned()
        } else {
            let port = if self.scheme == "amqps" { 5671 } else { 5672 };
            format!("{}:{port}", self.host_port)
        }
    }

    /// The URL with its `host:port` replaced; user, vhost and query kept.
    pub fn with_authority(&self, host_port: impl std::fmt::Display) -> String {
        let Self {
            scheme,
            userinfo,
            tail,
            ..
        } = self;
        format!("{scheme}://{userinfo}{host_port}{tail}")
    }
}

/// `host:port` of an AMQP URL (port 5672 unless it names one); panics on a
/// URL without scheme or host.
pub fn amqp_authority(url: &str) -> String {
    AmqpUrl::parse(url).expect("an AMQP URL").authority()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_cut_at_their_authority() {
        let url = AmqpUrl::parse("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(url.authority(), "127.0.0.1:5672");
        assert_eq!(
            url.with_authority("127.0.0.1:4000"),
            "amqp://guest:guest@127.0.0.1:4000/%2f"
        );
        assert_eq!(amqp_authority("amqp://broker"), "broker:5672");
        assert_eq!(amqp_authority("amqps://u@broker/v"), "broker:5671");
        assert_eq!(
            AmqpUrl::parse("amqp://broker?heartbeat=5")
                .unwrap()
                .with_authority("h:1"),
            "amqp://h:1?heartbeat=5"
        );
        assert_eq!(
            AmqpUrl::parse("amqp://h:1").unwrap().with_authority("x:2"),
            "amqp://x:2"
        );
        assert!(AmqpUrl::parse("broker:5672").is_err());
        assert!(AmqpUrl::parse("amqp://user@/vhost").is_err());
    }
}
