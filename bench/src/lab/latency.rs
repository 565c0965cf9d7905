//! Round-trip times in an HdrHistogram (1 ns to 60 s, 3 significant
//! digits): the percentiles the report states and the percentile curve
//! the latency plot draws.

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;

/// A histogram of round trips in nanoseconds.
pub fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).context("creating a histogram")
}

/// Record `rtts_ns` into a new histogram.
pub fn record(rtts_ns: &[u64]) -> Result<Histogram<u64>> {
    let mut h = histogram()?;
    for &rtt in rtts_ns {
        h.saturating_record(rtt.max(1));
    }
    Ok(h)
}

/// The percentiles of one histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Round trips recorded.
    pub samples: u64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// The slowest.
    pub max_us: f64,
}

impl Percentiles {
    /// Read them from `h`.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Percentiles {
            samples: h.len(),
            p50_us: us(0.5),
            p90_us: us(0.9),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: h.max() as f64 / 1000.0,
        }
    }
}

/// One point of a percentile curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CurvePoint {
    /// Percentile, 0 to 100.
    pub percentile: f64,
    /// "Nines": `-log10(1 - percentile / 100)`, the plot's x axis (1 =
    /// 90 %, 2 = 99 %, 3 = 99.9 %).
    pub nines: f64,
    /// Round trip at that percentile, microseconds.
    pub us: f64,
}

/// The percentile curve of `h`, from the median to as many nines as its
/// sample count supports (one tenth of a nine apart), ending at the
/// maximum.
pub fn curve(h: &Histogram<u64>) -> Vec<CurvePoint> {
    if h.is_empty() {
        return Vec::new();
    }
    // With n samples, 1 - 1/n is the last quantile that is not the max.
    let top = (h.len() as f64).log10().floor();
    let mut points: Vec<CurvePoint> = (0..)
        .map(|i| 0.3 + f64::from(i) * 0.1)
        .take_while(|nines| *nines <= top + 1e-9)
        .map(|nines| {
            let q = 1.0 - 10f64.powf(-nines);
            CurvePoint {
                percentile: 100.0 * q,
                nines,
                us: h.value_at_quantile(q) as f64 / 1000.0,
            }
        })
        .collect();
    points.push(CurvePoint {
        percentile: 100.0,
        nines: top.max(0.3) + 0.5,
        us: h.max() as f64 / 1000.0,
    });
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        // 1..=1000 µs, once each.
        let rtts: Vec<u64> = (1..=1000).map(|us| us * 1000).collect();
        let p = Percentiles::of(&record(&rtts).unwrap());
        assert_eq!(p.samples, 1000);
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.002;
        assert!(close(p.p50_us, 500.0), "{p:?}");
        assert!(close(p.p90_us, 900.0), "{p:?}");
        assert!(close(p.p99_us, 990.0), "{p:?}");
        assert!(close(p.p999_us, 999.0), "{p:?}");
        assert!(close(p.max_us, 1000.0), "{p:?}");
    }

    #[test]
    fn curves_stop_where_the_samples_do() {
        let rtts: Vec<u64> = (1..=1000).map(|us| us * 1000).collect();
        let points = curve(&record(&rtts).unwrap());
        // 0.3 to 3.0 nines in tenths, then the maximum.
        assert_eq!(points.len(), 28 + 1);
        assert!((points[0].percentile - 49.88).abs() < 0.01);
        let last = points[points.len() - 1];
        assert_eq!(last.percentile, 100.0);
        assert!(points.windows(2).all(|w| w[0].us <= w[1].us));
        assert!(points.windows(2).all(|w| w[0].nines < w[1].nines));
        assert!(curve(&histogram().unwrap()).is_empty());
    }
}
