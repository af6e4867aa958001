//! Which address ranges a ModelDeployment may open for its workers' egress
//! (`spec.access.egress.allowedCidrs`): only ranges inside what the operator allows
//! (`--egress-allowed-cidrs`, set by the platform team), and never a whole address family.
//! One check, used by the admission webhook and again at reconcile (a webhook can be
//! fail-open), so that both refuse with the same words.

use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;

/// The ranges the operator lets users open; empty means none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressRanges {
    allowed: Vec<IpNet>,
}

/// Why a requested range is refused, naming the entry and what to do instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EgressRangeError {
    #[error(
        "spec.access.egress.allowedCidrs[{index}]: {entry:?} is not a CIDR block: write ADDRESS/PREFIX, e.g. 10.20.0.0/16"
    )]
    NotACidr { index: usize, entry: String },
    #[error(
        "spec.access.egress.allowedCidrs[{index}]: {entry} opens every address: name the model mirror's range instead, e.g. 10.20.0.0/16"
    )]
    Everything { index: usize, entry: String },
    #[error(
        "spec.access.egress.allowedCidrs[{index}]: {entry} is not inside the ranges this cluster allows ({allowed}): use a range inside them, or ask the platform team to allow it (operator flag --egress-allowed-cidrs)"
    )]
    Outside { index: usize, entry: String, allowed: String },
    #[error(
        "spec.access.egress.allowedCidrs[{index}]: {entry} cannot be opened: this cluster allows no extra egress ranges (operator flag --egress-allowed-cidrs is empty): remove allowedCidrs, or ask the platform team to allow the range"
    )]
    NoneAllowed { index: usize, entry: String },
}

/// A flag value that does not parse, naming the entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{entry:?} is not a CIDR block: write it as ADDRESS/PREFIX, e.g. 10.0.0.0/8")]
pub struct EgressRangesParseError {
    pub entry: String,
}

impl EgressRanges {
    /// Parses a comma-separated list of CIDR blocks (spaces allowed; empty allows none).
    pub fn parse_list(list: &str) -> Result<Self, EgressRangesParseError> {
        let allowed = list
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                IpNet::from_str(entry)
                    .map(|n| n.trunc())
                    .map_err(|_| EgressRangesParseError { entry: entry.to_owned() })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EgressRanges { allowed })
    }

    /// Checks every requested range; the first refused one is the error.
    pub fn check(&self, requested: &[String]) -> Result<(), EgressRangeError> {
        requested.iter().enumerate().try_for_each(|(index, entry)| self.check_one(index, entry))
    }

    fn check_one(&self, index: usize, entry: &str) -> Result<(), EgressRangeError> {
        let net =
            IpNet::from_str(entry.trim()).map_err(|_| EgressRangeError::NotACidr { index, entry: entry.to_owned() })?;
        // Refused even when an operator range is /0 itself: a user who wants everything
        // asks for `egress.mode: Unrestricted`, which says so in the spec.
        if net.prefix_len() == 0 {
            return Err(EgressRangeError::Everything { index, entry: entry.to_owned() });
        }
        if self.allowed.is_empty() {
            return Err(EgressRangeError::NoneAllowed { index, entry: entry.to_owned() });
        }
        if self.allowed.iter().any(|a| a.contains(&net)) {
            Ok(())
        } else {
            Err(EgressRangeError::Outside { index, entry: entry.to_owned(), allowed: self.to_string() })
        }
    }
}

impl fmt::Display for EgressRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.allowed.iter().map(IpNet::to_string).collect();
        f.write_str(&list.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(list: &str) -> EgressRanges {
        EgressRanges::parse_list(list).expect("valid list")
    }

    fn cidrs(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn ranges_inside_the_allowed_ones_pass() {
        let allowed = ranges("10.0.0.0/8, 192.168.7.0/24");
        assert_eq!(allowed.check(&cidrs(&["10.20.0.0/16", "10.0.0.0/8", "192.168.7.5/32"])), Ok(()));
        assert_eq!(allowed.check(&[]), Ok(()));
        assert_eq!(ranges("").check(&[]), Ok(()));
    }

    #[test]
    fn each_refusal_names_the_entry_and_the_fix() {
        let allowed = ranges("10.0.0.0/8");
        let outside = allowed.check(&cidrs(&["10.1.0.0/16", "8.8.8.0/24"])).unwrap_err();
        assert_eq!(
            outside.to_string(),
            "spec.access.egress.allowedCidrs[1]: 8.8.8.0/24 is not inside the ranges this cluster allows (10.0.0.0/8): use a range inside them, or ask the platform team to allow it (operator flag --egress-allowed-cidrs)"
        );
        // A range larger than the allowed one is outside it.
        assert!(matches!(allowed.check(&cidrs(&["10.0.0.0/7"])), Err(EgressRangeError::Outside { index: 0, .. })));
        assert!(matches!(allowed.check(&cidrs(&["10.0.0.0/33"])), Err(EgressRangeError::NotACidr { index: 0, .. })));
        assert!(matches!(ranges("").check(&cidrs(&["10.0.0.0/8"])), Err(EgressRangeError::NoneAllowed { .. })));
    }

    #[test]
    fn a_whole_address_family_is_refused_even_when_allowed() {
        let everything = ranges("0.0.0.0/0, ::/0");
        for entry in ["0.0.0.0/0", "::/0", "10.0.0.0/0"] {
            assert!(
                matches!(everything.check(&cidrs(&[entry])), Err(EgressRangeError::Everything { index: 0, .. })),
                "{entry}"
            );
        }
    }

    #[test]
    fn a_flag_entry_that_does_not_parse_is_named() {
        assert_eq!(
            EgressRanges::parse_list("10.0.0.0/8,nope").unwrap_err(),
            EgressRangesParseError { entry: "nope".into() }
        );
    }
}
