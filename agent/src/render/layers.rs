//! Per-layer data as tables and bars. The `layers` array of a container is
//! added to the report by another change; until its fields are in
//! docs/json-schema.md it is shown as written: one row per layer, one
//! column per field (nested objects flattened as `a.b`, keys sorted), and the bars use
//! the first field whose name ends in `total_ns` (else `count`).

use crate::live::{fmt_bytes, fmt_ns};
use serde_json::{Map, Value};

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, x, out);
            }
        }
        _ => out.push((prefix.to_string(), v.clone())),
    }
}

fn cell(key: &str, v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_u64() {
            Some(x) if key.ends_with("_ns") => fmt_ns(x),
            Some(x) if key.ends_with("bytes") => fmt_bytes(x),
            _ => n.to_string(),
        },
        Value::Array(a) => format!("[{} items]", a.len()),
        other => other.to_string(),
    }
}

/// Column names (first-seen order) and one row of cells per layer.
pub fn layer_rows(layers: &[Map<String, Value>]) -> (Vec<String>, Vec<Vec<String>>) {
    let flat: Vec<Vec<(String, Value)>> = layers
        .iter()
        .map(|m| {
            let mut out = Vec::new();
            flatten("", &Value::Object(m.clone()), &mut out);
            out
        })
        .collect();
    let mut cols: Vec<String> = Vec::new();
    for row in &flat {
        for (k, _) in row {
            if !cols.contains(k) {
                cols.push(k.clone());
            }
        }
    }
    let rows = flat
        .iter()
        .map(|row| {
            cols.iter()
                .map(|c| {
                    row.iter()
                        .find(|(k, _)| k == c)
                        .map(|(k, v)| cell(k, v))
                        .unwrap_or_else(|| "-".into())
                })
                .collect()
        })
        .collect();
    (cols, rows)
}

/// What the per-layer bars show: (field, label per layer, value per layer).
pub fn layer_cost(layers: &[Map<String, Value>]) -> Option<(String, Vec<(String, u64)>)> {
    let flat: Vec<Vec<(String, Value)>> = layers
        .iter()
        .map(|m| {
            let mut out = Vec::new();
            flatten("", &Value::Object(m.clone()), &mut out);
            out
        })
        .collect();
    let field = ["total_ns", "count"].iter().find_map(|suffix| {
        flat.iter()
            .flatten()
            .find(|(k, v)| k.ends_with(suffix) && v.is_u64())
            .map(|(k, _)| k.clone())
    })?;
    let bars = flat
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let label = row
                .iter()
                .find(|(_, v)| v.is_string())
                .and_then(|(_, v)| v.as_str().map(str::to_string))
                .unwrap_or_else(|| format!("layer {i}"));
            let v = row
                .iter()
                .find(|(k, _)| *k == field)
                .and_then(|(_, v)| v.as_u64())
                .unwrap_or(0);
            (label, v)
        })
        .collect();
    Some((field, bars))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_fields_become_columns_and_units_are_kept() {
        let layers: Vec<Map<String, Value>> = serde_json::from_value(serde_json::json!([
            {"diff_id": "sha256:a", "copy_up": {"count": 2, "total_ns": 1_500_000, "bytes": 4096}},
            {"diff_id": "sha256:b", "copy_up": {"count": 0}}
        ]))
        .unwrap();
        let (cols, rows) = layer_rows(&layers);
        // serde_json keeps object keys sorted.
        assert_eq!(
            cols,
            [
                "copy_up.bytes",
                "copy_up.count",
                "copy_up.total_ns",
                "diff_id"
            ]
        );
        assert_eq!(rows[0], ["4.0KiB", "2", "1500.0us", "sha256:a"]);
        assert_eq!(rows[1], ["-", "0", "-", "sha256:b"]);
        let (field, bars) = layer_cost(&layers).unwrap();
        assert_eq!(field, "copy_up.total_ns");
        assert_eq!(
            bars,
            [
                ("sha256:a".to_string(), 1_500_000),
                ("sha256:b".to_string(), 0)
            ]
        );
    }
}
