//! The arithmetic of the report: medians and spreads over runs, ratios to
//! a baseline, costs per unit of work, and the difference of two counter
//! snapshots.

use serde::Serialize;
use serde_json::{Map, Value};

/// One figure over several runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// The median of the runs (the mean of the middle two for an even
    /// count).
    pub median: f64,
    /// The smallest run.
    pub min: f64,
    /// The largest run.
    pub max: f64,
    /// How many runs.
    pub runs: usize,
}

impl Spread {
    /// The spread of `values`, or `None` without any (non-finite values
    /// are left out).
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut sorted: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: sorted[0],
            max: sorted[n - 1],
            runs: n,
        })
    }

    /// Every figure multiplied by `factor` (a change of unit).
    pub fn scaled(&self, factor: f64) -> Spread {
        Spread {
            median: self.median * factor,
            min: self.min * factor,
            max: self.max * factor,
            runs: self.runs,
        }
    }

    /// The range as a share of the median, in percent (0 for one run).
    pub fn range_pct(&self) -> f64 {
        if self.median == 0.0 {
            0.0
        } else {
            100.0 * (self.max - self.min) / self.median.abs()
        }
    }
}

/// `value / baseline`, when both are there and the baseline is not zero.
pub fn ratio(value: Option<f64>, baseline: Option<f64>) -> Option<f64> {
    match (value, baseline) {
        (Some(v), Some(b)) if b != 0.0 && v.is_finite() && b.is_finite() => Some(v / b),
        _ => None,
    }
}

/// CPU cost per unit of work: `cores / work`, when there was work.
pub fn per_unit(cores: f64, work: f64) -> Option<f64> {
    (work > 0.0 && cores.is_finite()).then(|| cores / work)
}

/// What changed between two snapshots of counters: numbers are
/// subtracted (`after - before`), objects compared key by key, and
/// everything that did not change, is not a number, or is listed in
/// `skip` (gauges such as frame locations) is left out. `None` when
/// nothing changed.
pub fn counter_delta(before: &Value, after: &Value, skip: &[&str]) -> Option<Value> {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            let changed: Map<String, Value> = a
                .iter()
                .filter(|(key, _)| !skip.contains(&key.as_str()))
                .filter_map(|(key, av)| {
                    let bv = b.get(key).unwrap_or(&Value::Null);
                    counter_delta(bv, av, skip).map(|d| (key.clone(), d))
                })
                .collect();
            (!changed.is_empty()).then_some(Value::Object(changed))
        }
        (Value::Array(b), Value::Array(a)) => {
            let changed: Vec<Value> = a
                .iter()
                .enumerate()
                .map(|(i, av)| counter_delta(b.get(i).unwrap_or(&Value::Null), av, skip))
                .map(|d| d.unwrap_or(Value::from(0)))
                .collect();
            changed
                .iter()
                .any(|v| v != &Value::from(0))
                .then_some(Value::Array(changed))
        }
        (b, Value::Number(a)) => {
            let a = a.as_i64()?;
            let d = a - b.as_i64().unwrap_or(0);
            (d != 0).then(|| Value::from(d))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn medians_and_ranges() {
        let s = Spread::of([3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.runs), (2.0, 1.0, 3.0, 3));
        assert!((s.range_pct() - 100.0).abs() < 1e-9);
        let s = Spread::of([4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(s.median, 2.5);
        let s = Spread::of([5.0]).unwrap();
        assert_eq!((s.median, s.range_pct()), (5.0, 0.0));
        assert_eq!(Spread::of([]), None);
        assert_eq!(Spread::of([f64::NAN, 1.0]).unwrap().runs, 1);
        assert_eq!(Spread::of([0.0, 0.0]).unwrap().range_pct(), 0.0);
        let k = Spread::of([1.0, 2.0]).unwrap().scaled(1000.0);
        assert_eq!(
            (k.median, k.min, k.max, k.runs),
            (1500.0, 1000.0, 2000.0, 2)
        );
    }

    #[test]
    fn ratios_need_both_figures() {
        assert_eq!(ratio(Some(3.0), Some(1.5)), Some(2.0));
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        assert_eq!(ratio(Some(1.0), None), None);
        assert_eq!(per_unit(0.5, 2.0), Some(0.25));
        assert_eq!(per_unit(0.5, 0.0), None);
    }

    #[test]
    fn counter_deltas_keep_what_changed() {
        let before = json!({
            "ports": {"ul0": {"rx_packets": 10, "tx_packets": 5, "name": "ul0", "drops": {}}},
            "workers": [{"busy_polls": 1, "batches": [0, 1, 0]}],
            "frames": {"free": 100},
        });
        let after = json!({
            "ports": {"ul0": {"rx_packets": 25, "tx_packets": 5, "name": "ul0",
                              "drops": {"tx_ring_full": 3}}},
            "workers": [{"busy_polls": 1, "batches": [2, 1, 0]}],
            "frames": {"free": 90},
        });
        assert_eq!(
            counter_delta(&before, &after, &["frames"]),
            Some(json!({
                "ports": {"ul0": {"rx_packets": 15, "drops": {"tx_ring_full": 3}}},
                "workers": [{"batches": [2, 0, 0]}],
            }))
        );
        assert_eq!(counter_delta(&before, &before, &[]), None);
    }
}
