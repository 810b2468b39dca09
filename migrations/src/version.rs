//! Migration versions: dot- or underscore-separated numbers (`1`, `1.2`, `2024_06_01`),
//! compared part by part as numbers, so `1.10` comes after `1.9`.

use crate::error::MigrateError;
use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Version {
    parts: Vec<u64>,
}

impl Version {
    pub fn parts(&self) -> &[u64] {
        &self.parts
    }
}

impl FromStr for Version {
    type Err = MigrateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            MigrateError::Usage(format!("bad version {s:?}: expected numbers separated by '.' or '_', like 1, 1.2 or 2024_06_01"))
        };
        let s = s.strip_prefix(['V', 'v']).unwrap_or(s);
        if s.is_empty() {
            return Err(bad());
        }
        let mut parts = Vec::new();
        for p in s.split(['.', '_']) {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            parts.push(p.parse::<u64>().map_err(|_| bad())?);
        }
        // Trailing zero parts do not change the version: `1.0` is `1`.
        while parts.len() > 1 && parts.last() == Some(&0) {
            parts.pop();
        }
        Ok(Version { parts })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for p in &self.parts {
            if !first {
                f.write_str(".")?;
            }
            first = false;
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let n = self.parts.len().max(other.parts.len());
        for i in 0..n {
            let a = self.parts.get(i).copied().unwrap_or(0);
            let b = other.parts.get(i).copied().unwrap_or(0);
            match a.cmp(&b) {
                Ordering::Equal => {}
                o => return o,
            }
        }
        Ordering::Equal
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn versions_compare_as_numbers() {
        assert!(v("1.10") > v("1.9"));
        assert!(v("2") > v("1.99"));
        assert_eq!(v("1.0"), v("1"));
        assert_eq!(v("V3").to_string(), "3");
        assert_eq!(v("2024_06_01").to_string(), "2024.6.1");
        assert!("1..2".parse::<Version>().is_err());
        assert!("x".parse::<Version>().is_err());
        assert!("".parse::<Version>().is_err());
        assert!("99999999999999999999999".parse::<Version>().is_err());
    }
}
