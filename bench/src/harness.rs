//! The shared harness: contenders run interleaved (A B A B …), each round measured, medians
//! reported. Interleaving spreads drift (page cache, CPU frequency, other load) over both sides
//! instead of charging it to whichever ran second.

use async_trait::async_trait;
use std::collections::BTreeMap;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum BenchError {
    #[error("anchor {name}: {message}")]
    Anchor { name: String, message: String },
    #[error("{0}")]
    Setup(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Named figures of one run, e.g. `pairs_per_s`.
pub type Measures = BTreeMap<String, f64>;

/// One side of a comparison.
#[async_trait]
pub trait Contender: Send {
    fn name(&self) -> &str;
    /// One measured run of the same work as every other contender.
    async fn run(&mut self, round: usize) -> Result<Measures, String>;
}

/// How long and how often to measure.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub rounds: usize,
    pub quick: bool,
}

impl Plan {
    pub fn new(quick: bool) -> Self {
        Plan {
            rounds: if quick { 1 } else { 3 },
            quick,
        }
    }
    pub fn mode(&self) -> &'static str {
        if self.quick {
            "quick"
        } else {
            "full"
        }
    }
}

/// Median of each measure of each contender, `contender -> measure -> value`.
pub type Medians = BTreeMap<String, Measures>;

/// Runs the contenders interleaved for `plan.rounds` rounds and returns the medians. A contender
/// that fails is reported and left out of later rounds (its figures become `NA`).
pub async fn interleave(plan: Plan, contenders: &mut [&mut dyn Contender]) -> Medians {
    let mut samples: BTreeMap<String, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    let mut failed = vec![false; contenders.len()];
    for round in 0..plan.rounds {
        for (i, c) in contenders.iter_mut().enumerate() {
            if failed[i] {
                continue;
            }
            match c.run(round).await {
                Ok(measures) => {
                    eprintln!("round {round} {}: {}", c.name(), fmt_measures(&measures));
                    let entry = samples.entry(c.name().to_owned()).or_default();
                    for (k, v) in measures {
                        entry.entry(k).or_default().push(v);
                    }
                }
                Err(message) => {
                    eprintln!("round {round} {}: failed: {message}", c.name());
                    failed[i] = true;
                    samples.remove(c.name());
                }
            }
        }
    }
    samples
        .into_iter()
        .map(|(name, m)| (name, m.into_iter().map(|(k, v)| (k, median(&v))).collect()))
        .collect()
}

fn fmt_measures(m: &Measures) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={}", fmt_number(*v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Median of the samples (mean of the middle two for an even count); NaN for none.
pub fn median(samples: &[f64]) -> f64 {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A plain decimal number: no exponent, no units; `NA` for missing or non-finite values.
pub fn fmt_number(v: f64) -> String {
    if !v.is_finite() {
        return "NA".into();
    }
    let digits = if v.abs() >= 1000.0 {
        0
    } else if v.abs() >= 1.0 {
        3
    } else {
        6
    };
    format!("{v:.digits$}")
}

/// The last line of every bench run.
#[derive(Debug, Default)]
pub struct ResultLine {
    pairs: Vec<(String, Option<f64>)>,
}

impl ResultLine {
    pub fn set(&mut self, name: &str, value: Option<f64>) -> &mut Self {
        self.pairs
            .push((name.to_owned(), value.filter(|v| v.is_finite())));
        self
    }

    /// `keyward / anchor` when both exist.
    pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
        match (a, b) {
            (Some(a), Some(b)) if b != 0.0 => Some(a / b),
            _ => None,
        }
    }

    pub fn render(&self, plan: Plan) -> String {
        let mut s = format!("RESULT mode={}", plan.mode());
        for (k, v) in &self.pairs {
            s.push(' ');
            s.push_str(k);
            s.push('=');
            s.push_str(&v.map(fmt_number).unwrap_or_else(|| "NA".into()));
        }
        s
    }
}

/// Looks up one median.
pub fn get(medians: &Medians, contender: &str, measure: &str) -> Option<f64> {
    medians.get(contender).and_then(|m| m.get(measure)).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_numbers() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(fmt_number(1234567.89), "1234568");
        assert_eq!(fmt_number(1.23456), "1.235");
        assert_eq!(fmt_number(0.000123), "0.000123");
        assert_eq!(fmt_number(f64::NAN), "NA");
        assert_eq!(fmt_number(1e20), "100000000000000000000");
    }

    #[test]
    fn result_line_format() {
        let mut r = ResultLine::default();
        r.set("a_per_s", Some(1500.0))
            .set("ratio_vs_x", ResultLine::ratio(Some(3.0), Some(2.0)))
            .set("missing", None)
            .set("inf", Some(f64::INFINITY));
        assert_eq!(
            r.render(Plan::new(false)),
            "RESULT mode=full a_per_s=1500 ratio_vs_x=1.500 missing=NA inf=NA"
        );
        assert!(r.render(Plan::new(true)).starts_with("RESULT mode=quick "));
    }

    struct Fixed(&'static str, f64, usize);
    #[async_trait]
    impl Contender for Fixed {
        fn name(&self) -> &str {
            self.0
        }
        async fn run(&mut self, round: usize) -> Result<Measures, String> {
            self.2 += 1;
            if self.1 < 0.0 {
                return Err("broken".into());
            }
            Ok([("x".to_owned(), self.1 + round as f64)].into())
        }
    }

    #[tokio::test]
    async fn interleaves_and_drops_failed_contenders() {
        let mut a = Fixed("a", 10.0, 0);
        let mut b = Fixed("b", -1.0, 0);
        let m = interleave(Plan::new(false), &mut [&mut a, &mut b]).await;
        assert_eq!(a.2, 3, "three rounds");
        assert_eq!(b.2, 1, "a failed contender is not run again");
        assert_eq!(get(&m, "a", "x"), Some(11.0));
        assert_eq!(get(&m, "b", "x"), None);
    }
}
