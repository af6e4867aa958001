//! Parameter counts as people write them: "135M", "7.6B", "70B".

use std::fmt;
use std::str::FromStr;

/// Regular expression (for the CRD schema) that [`ParameterCount::from_str`] accepts.
pub const PARAMETER_COUNT_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?[KMBT]?$";

/// A model's number of parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ParameterCount(pub u64);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{input:?} is not a parameter count: write a number with an optional K, M, B or T suffix, such as 135M or 7.6B"
)]
pub struct ParameterCountError {
    input: String,
}

impl FromStr for ParameterCount {
    type Err = ParameterCountError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParameterCountError { input: s.to_owned() };
        let (number, scale) = match s.chars().last() {
            Some('K') => (&s[..s.len() - 1], 1e3),
            Some('M') => (&s[..s.len() - 1], 1e6),
            Some('B') => (&s[..s.len() - 1], 1e9),
            Some('T') => (&s[..s.len() - 1], 1e12),
            _ => (s, 1.0),
        };
        if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit() || c == '.') {
            return Err(err());
        }
        let value: f64 = number.parse().map_err(|_| err())?;
        let count = (value * scale).round();
        if !count.is_finite() || count < 1.0 || count > u64::MAX as f64 {
            return Err(err());
        }
        Ok(ParameterCount(count as u64))
    }
}

impl fmt::Display for ParameterCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0 as f64;
        let (value, suffix) = match self.0 {
            c if c >= 1_000_000_000_000 => (n / 1e12, "T"),
            c if c >= 1_000_000_000 => (n / 1e9, "B"),
            c if c >= 1_000_000 => (n / 1e6, "M"),
            c if c >= 1_000 => (n / 1e3, "K"),
            _ => (n, ""),
        };
        let text = format!("{value:.1}");
        write!(f, "{}{suffix}", text.trim_end_matches(".0"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_spellings() {
        assert_eq!("135M".parse(), Ok(ParameterCount(135_000_000)));
        assert_eq!("7.6B".parse(), Ok(ParameterCount(7_600_000_000)));
        assert_eq!("70B".parse(), Ok(ParameterCount(70_000_000_000)));
        assert_eq!("1T".parse(), Ok(ParameterCount(1_000_000_000_000)));
        assert_eq!("12345".parse(), Ok(ParameterCount(12_345)));
    }

    #[test]
    fn rejects_what_the_schema_pattern_rejects() {
        for bad in ["", "B", "7b", "-1B", "7.6.1B", "1e9", "0", "seven"] {
            let err = bad.parse::<ParameterCount>().unwrap_err();
            assert!(err.to_string().contains("135M"), "{bad}: {err}");
        }
    }

    #[test]
    fn displays_compactly() {
        assert_eq!(ParameterCount(135_000_000).to_string(), "135M");
        assert_eq!(ParameterCount(7_600_000_000).to_string(), "7.6B");
        assert_eq!(ParameterCount(70_000_000_000).to_string(), "70B");
    }
}
