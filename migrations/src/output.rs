//! What a command hands back: a JSON value for scripts and a text rendering for people.

use serde::Serialize;

/// The result of one command. `render(true)` is one JSON document; `render(false)` is text.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub command: String,
    pub data: serde_json::Value,
    pub human: String,
}

impl Outcome {
    pub fn new<T: Serialize>(command: &str, report: &T, human: String) -> Outcome {
        let data = serde_json::to_value(report)
            .unwrap_or_else(|e| serde_json::json!({"serialize_error": e.to_string()}));
        Outcome {
            command: command.to_owned(),
            data,
            human,
        }
    }

    pub fn render(&self, json: bool) -> String {
        if json {
            serde_json::json!({"command": self.command, "ok": true, "result": self.data})
                .to_string()
        } else {
            self.human.clone()
        }
    }
}

/// An error as `--json` prints it.
pub fn error_json(e: &crate::MigrateError) -> String {
    serde_json::json!({
        "ok": false,
        "error": {"kind": e.kind(), "exit_code": e.exit_code(), "message": e.to_string()}
    })
    .to_string()
}

/// A plain text table with a header row and columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            s.push_str(c);
            if i + 1 < cells.len() {
                let pad = widths[i].saturating_sub(c.chars().count());
                s.push_str(&" ".repeat(pad));
            }
        }
        s.trim_end().to_owned()
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    out.push_str(&line(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    ));
    for r in rows {
        out.push('\n');
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table(
            &["version", "state"],
            &[
                vec!["1".into(), "applied".into()],
                vec!["10.2".into(), "pending".into()],
            ],
        );
        assert_eq!(
            t,
            "version  state\n-------  -------\n1        applied\n10.2     pending"
        );
    }
}
