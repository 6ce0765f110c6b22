//! Output in kubectl's conventions: `table` (upper-case headers, columns three spaces apart, no
//! borders), `wide` (more columns), `json` and `yaml` (a `v1` `List` of the objects, as
//! `kubectl get -o json` prints). Tables are laid out by comfy-table.
use comfy_table::{presets, CellAlignment, ColumnConstraint, ContentArrangement, Table};
use serde::Serialize;

use super::CliError;

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Table,
    Wide,
    Json,
    Yaml,
}

/// A table as kubectl prints it.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut t = Table::new();
    t.load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers.iter().map(|h| h.to_uppercase()));
    for row in rows {
        t.add_row(row.clone());
    }
    let last = headers.len().saturating_sub(1);
    for (i, col) in t.column_iter_mut().enumerate() {
        col.set_padding((0, if i == last { 0 } else { 3 }));
        col.set_cell_alignment(CellAlignment::Left);
        col.set_constraint(ColumnConstraint::ContentWidth);
    }
    let mut out = String::new();
    for line in t.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A `v1` `List` of `items`, as JSON or YAML text.
pub fn list<T: Serialize>(format: Format, items: &[T]) -> Result<String, CliError> {
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "metadata": {"resourceVersion": ""},
        "items": items,
    });
    document(format, &doc)
}

/// One document as JSON (pretty, with a final newline) or YAML.
pub fn document<T: Serialize>(format: Format, doc: &T) -> Result<String, CliError> {
    let err = |e: &dyn std::fmt::Display| CliError::Output(e.to_string());
    match format {
        Format::Yaml => serde_norway::to_string(doc).map_err(|e| err(&e)),
        _ => serde_json::to_string_pretty(doc)
            .map(|s| s + "\n")
            .map_err(|e| err(&e)),
    }
}

/// `<none>` for an empty cell, as kubectl shows it.
pub fn cell(v: Option<&str>) -> String {
    match v {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => "<none>".to_string(),
    }
}

/// A short age ("45s", "12m", "3h", "2d") since `t`, as kubectl prints ages.
pub fn age(t: Option<k8s_openapi::jiff::Timestamp>) -> String {
    let Some(t) = t else {
        return "<unknown>".into();
    };
    let secs = k8s_openapi::jiff::Timestamp::now()
        .duration_since(t)
        .as_secs()
        .max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_look_like_kubectl() {
        let out = table(
            &["name", "os"],
            &[
                vec!["sim-000".into(), "debian-12".into()],
                vec!["a".into(), "<none>".into()],
            ],
        );
        assert_eq!(out, "NAME      OS\nsim-000   debian-12\na         <none>\n");
    }

    #[test]
    fn lists_are_v1_lists() {
        let out = list(Format::Json, &[serde_json::json!({"a": 1})]).expect("json");
        let v: serde_json::Value = serde_json::from_str(&out).expect("parses");
        assert_eq!(v["kind"], "List");
        assert_eq!(v["items"][0]["a"], 1);
        let y = list(Format::Yaml, &[serde_json::json!({"a": 1})]).expect("yaml");
        assert!(y.contains("kind: List"));
    }
}
