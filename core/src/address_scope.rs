//! Which addresses a component may send traffic to, as a set of CIDR blocks.
//!
//! Two users: the operator's rollout analysis, which probes the pod IPs the API server
//! reports and must not be steered elsewhere (a pod status is writable by whoever may
//! patch `pods/status`; a forged IP would otherwise make the operator send prompts and
//! metric scrapes to any address it can reach, such as a cloud metadata endpoint), and the
//! test harness, whose simulated pods and nodes must stay on the machine.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// A set of CIDR blocks; empty means "no restriction beyond [`AddressScope::never`]".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressScope {
    blocks: Vec<IpNet>,
}

/// Why an address is outside a scope, in words for a status message or a log line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OutOfScope {
    #[error("{ip} is {what}, which is never a pod's address")]
    Never { ip: IpAddr, what: &'static str },
    #[error("{ip} is outside {scope}")]
    Outside { ip: IpAddr, scope: String },
}

/// A CIDR list that does not parse, naming the entry and the expected form.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{entry:?} is not a CIDR block: write it as ADDRESS/PREFIX, e.g. 10.244.0.0/16 or fd00::/64")]
pub struct ScopeParseError {
    pub entry: String,
}

impl AddressScope {
    /// The scope made of `blocks`.
    pub fn new(blocks: Vec<IpNet>) -> Self {
        AddressScope { blocks }
    }

    /// Parses a comma-separated list of CIDR blocks (spaces allowed; an empty list is an
    /// empty scope).
    pub fn parse_list(list: &str) -> Result<Self, ScopeParseError> {
        let blocks = list
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| IpNet::from_str(entry).map_err(|_| ScopeParseError { entry: entry.to_owned() }))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AddressScope { blocks: blocks.into_iter().map(|b| b.trunc()).collect() })
    }

    /// True when no block is configured.
    pub fn is_unrestricted(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Whether `ip` may be contacted: never an address no pod can have (unspecified,
    /// link-local — where cloud metadata services live —, multicast, broadcast), and, when
    /// blocks are configured, only inside one of them.
    pub fn check(&self, ip: IpAddr) -> Result<(), OutOfScope> {
        if let Some(what) = Self::never(ip) {
            return Err(OutOfScope::Never { ip, what });
        }
        if self.blocks.is_empty() || self.blocks.iter().any(|b| b.contains(&ip)) {
            Ok(())
        } else {
            Err(OutOfScope::Outside { ip, scope: self.to_string() })
        }
    }

    /// What kind of address `ip` is, when it is one that no pod or node has.
    pub fn never(ip: IpAddr) -> Option<&'static str> {
        let ip = ip.to_canonical();
        if ip.is_unspecified() {
            return Some("the unspecified address");
        }
        if ip.is_multicast() {
            return Some("a multicast address");
        }
        match ip {
            IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
            IpAddr::V4(v4) if v4.is_link_local() => Some("link-local (169.254.0.0/16, where metadata services live)"),
            IpAddr::V6(v6) if v6.is_unicast_link_local() => Some("link-local (fe80::/10)"),
            _ => None,
        }
    }
}

impl fmt::Display for AddressScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.blocks.is_empty() {
            return f.write_str("any address");
        }
        let list: Vec<String> = self.blocks.iter().map(IpNet::to_string).collect();
        write!(f, "{}", list.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_configured_scope_admits_only_its_blocks() {
        let scope = AddressScope::parse_list("127.0.0.0/16, 127.244.0.0/16").unwrap();
        assert_eq!(scope.check(ip("127.0.3.7")), Ok(()));
        assert_eq!(scope.check(ip("127.244.0.1")), Ok(()));
        assert_eq!(
            scope.check(ip("127.99.0.7")),
            Err(OutOfScope::Outside { ip: ip("127.99.0.7"), scope: "127.0.0.0/16,127.244.0.0/16".into() })
        );
        assert_eq!(
            scope.check(ip("10.244.0.1")).unwrap_err().to_string(),
            "10.244.0.1 is outside 127.0.0.0/16,127.244.0.0/16"
        );
    }

    #[test]
    fn an_empty_scope_still_refuses_what_no_pod_can_be() {
        let scope = AddressScope::parse_list("").unwrap();
        assert!(scope.is_unrestricted());
        assert_eq!(scope.check(ip("10.1.2.3")), Ok(()));
        for never in
            ["169.254.169.254", "0.0.0.0", "255.255.255.255", "224.0.0.1", "fe80::1", "::", "::ffff:169.254.169.254"]
        {
            assert!(matches!(scope.check(ip(never)), Err(OutOfScope::Never { .. })), "{never}");
        }
        assert!(scope.check(ip("169.254.169.254")).unwrap_err().to_string().contains("metadata"));
    }

    #[test]
    fn host_bits_are_dropped_and_bad_entries_are_named() {
        assert_eq!(AddressScope::parse_list("10.85.0.1/24").unwrap().to_string(), "10.85.0.0/24");
        assert_eq!(
            AddressScope::parse_list("10.0.0.0/8,10.85.0.1").unwrap_err().to_string(),
            "\"10.85.0.1\" is not a CIDR block: write it as ADDRESS/PREFIX, e.g. 10.244.0.0/16 or fd00::/64"
        );
        assert_eq!(AddressScope::parse_list("").unwrap().to_string(), "any address");
    }
}
