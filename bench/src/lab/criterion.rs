//! The per-frame figures of the criterion benchmarks (`cargo bench -p
//! podswitch-bench`: encapsulation, decapsulation, flow hash, FIB), read
//! from what criterion last saved under `target/criterion`, so the lab
//! report shows them beside the end-to-end figures.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

/// One criterion benchmark's last estimate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CriterionFigure {
    /// Its id, e.g. `encap/frame/vxlan-ipv4-64B`.
    pub id: String,
    /// Mean time per element (per frame, per lookup), nanoseconds.
    pub ns_per_element: f64,
}

/// Where criterion keeps its results: `target/criterion`, found from
/// this executable's place (`target/release/podswitch-bench`), or from
/// `CARGO_TARGET_DIR`.
pub fn criterion_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return Some(PathBuf::from(dir).join("criterion"));
    }
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.join("criterion"))
}

/// Every estimate saved under `dir`, sorted by id; empty when criterion
/// has not run.
pub fn read_all(dir: &Path) -> Result<Vec<CriterionFigure>> {
    let mut figures = Vec::new();
    if dir.is_dir() {
        collect(dir, &mut figures)?;
    }
    figures.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(figures)
}

fn collect(dir: &Path, figures: &mut Vec<CriterionFigure>) -> Result<()> {
    let new = dir.join("new");
    if new.join("benchmark.json").is_file() && new.join("estimates.json").is_file() {
        let read = |name: &str| -> Result<Value> {
            let path = new.join(name);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
        };
        if let Some(figure) = figure(&read("benchmark.json")?, &read("estimates.json")?) {
            figures.push(figure);
        }
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        // criterion's own report pages are not results.
        if path.is_dir() && path.file_name().is_some_and(|n| n != "report") {
            collect(&path, figures)?;
        }
    }
    Ok(())
}

/// The figure in one benchmark's `benchmark.json` and `estimates.json`.
fn figure(benchmark: &Value, estimates: &Value) -> Option<CriterionFigure> {
    let id = benchmark["full_id"].as_str()?.to_string();
    let mean = estimates["mean"]["point_estimate"].as_f64()?;
    let elements = benchmark["throughput"]["Elements"]
        .as_f64()
        .unwrap_or(1.0)
        .max(1.0);
    Some(CriterionFigure {
        id,
        ns_per_element: mean / elements,
    })
}

/// Whether the report's table shows `id`: the IPv4 64-byte cases of
/// encap and decap, the flow hash and every FIB figure (the JSON has all).
pub fn headline(id: &str) -> bool {
    (id.contains("ipv4-64B") && (id.starts_with("encap/") || id.starts_with("decap/")))
        || id.starts_with("flow_hash")
        || id.starts_with("fib/")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reads_per_element_figures() {
        let dir = std::env::temp_dir().join(format!("bl-criterion-{}", std::process::id()));
        let case = dir.join("encap/batch64/vxlan-ipv4-64B/new");
        std::fs::create_dir_all(&case).unwrap();
        std::fs::create_dir_all(dir.join("report")).unwrap();
        std::fs::write(
            case.join("benchmark.json"),
            json!({"full_id": "encap/batch64/vxlan-ipv4-64B",
                   "throughput": {"Elements": 64}})
            .to_string(),
        )
        .unwrap();
        std::fs::write(
            case.join("estimates.json"),
            json!({"mean": {"point_estimate": 640.0}}).to_string(),
        )
        .unwrap();
        let figures = read_all(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            figures,
            vec![CriterionFigure {
                id: "encap/batch64/vxlan-ipv4-64B".into(),
                ns_per_element: 10.0
            }]
        );
        assert!(read_all(&dir).unwrap().is_empty());
    }

    #[test]
    fn picks_headline_ids() {
        assert!(headline("encap/frame/vxlan-ipv4-64B"));
        assert!(headline("decap/batch64/geneve-ipv4-64B"));
        assert!(headline("fib/lookup/1M"));
        assert!(headline("flow_hash_ipv4-udp"));
        assert!(!headline("encap/frame/vxlan-ipv6-1400B"));
        assert!(!headline("decap/frame/vxlan-ipv4-1400B"));
    }
}
