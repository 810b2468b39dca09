//! Splits a SQL or CQL script into statements at top-level `;`, so that each statement runs on
//! its own (drivers run one prepared statement at a time). Quotes, comments, PostgreSQL dollar
//! quotes and the `BEGIN … END` bodies of triggers and routines are not split.

/// Options of the lexer that differ between dialects.
#[derive(Clone, Copy, Debug, Default)]
pub struct SplitOptions {
    /// MySQL: a backslash escapes the next character inside string literals.
    pub backslash_escapes: bool,
    /// PostgreSQL: `$tag$ … $tag$` quoting.
    pub dollar_quotes: bool,
}

/// The statements of a script, trimmed, without the final `;`; comment-only pieces are dropped.
pub fn split_statements(script: &str, opts: SplitOptions) -> Vec<String> {
    let b = script.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    // Block depth inside CREATE TRIGGER/PROCEDURE/FUNCTION bodies (BEGIN/CASE … END).
    let mut depth: i32 = 0;
    let mut routine = false;
    let mut words_in_stmt = 0usize;
    let mut saw_create = false;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' | b'"' | b'`' => {
                i = skip_quoted(b, i, c, opts.backslash_escapes && c != b'`');
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                i = (i + 2).min(b.len());
            }
            b'$' if opts.dollar_quotes => {
                i = skip_dollar(b, i);
            }
            b';' if depth <= 0 => {
                push_stmt(&script[start..i], &mut out);
                i += 1;
                start = i;
                depth = 0;
                routine = false;
                words_in_stmt = 0;
                saw_create = false;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let s = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                let w = script[s..i].to_ascii_uppercase();
                words_in_stmt += 1;
                if words_in_stmt == 1 && w == "CREATE" {
                    saw_create = true;
                }
                if saw_create
                    && words_in_stmt <= 6
                    && matches!(w.as_str(), "TRIGGER" | "PROCEDURE" | "FUNCTION")
                {
                    routine = true;
                }
                if routine {
                    match w.as_str() {
                        "BEGIN" | "CASE" => depth += 1,
                        "END" => depth -= 1,
                        _ => {}
                    }
                }
            }
            _ => i += 1,
        }
    }
    push_stmt(&script[start..], &mut out);
    out
}

fn push_stmt(s: &str, out: &mut Vec<String>) {
    let t = s.trim();
    if !t.is_empty() && !is_only_comments(t) {
        out.push(t.to_owned());
    }
}

fn is_only_comments(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_whitespace() {
            i += 1;
        } else if b[i] == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                i += 1;
            }
            i = (i + 2).min(b.len());
        } else {
            return false;
        }
    }
    true
}

/// Index after the closing quote (a doubled quote is an escaped quote).
fn skip_quoted(b: &[u8], open: usize, q: u8, backslash: bool) -> usize {
    let mut i = open + 1;
    while i < b.len() {
        if backslash && b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

/// Index after a `$tag$ … $tag$` string, or after the `$` when it opens no dollar quote.
fn skip_dollar(b: &[u8], open: usize) -> usize {
    let mut j = open + 1;
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
        j += 1;
    }
    if j >= b.len() || b[j] != b'$' || (j > open + 1 && b[open + 1].is_ascii_digit()) {
        // `$1` placeholders and lone dollars are not quotes.
        return open + 1;
    }
    let tag = &b[open..=j];
    let mut k = j + 1;
    while k + tag.len() <= b.len() {
        if &b[k..k + tag.len()] == tag {
            return k + tag.len();
        }
        k += 1;
    }
    b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Vec<String> {
        split_statements(
            s,
            SplitOptions {
                backslash_escapes: false,
                dollar_quotes: true,
            },
        )
    }

    #[test]
    fn splits_at_top_level_semicolons_only() {
        let s = "create table a (x text default ';'); -- c;\n/* d; */ insert into a values ('it''s;');\n\n-- only a comment\n";
        assert_eq!(
            split(s),
            vec![
                "create table a (x text default ';')",
                "-- c;\n/* d; */ insert into a values ('it''s;')"
            ]
        );
    }

    #[test]
    fn keeps_dollar_quotes_and_trigger_bodies_whole() {
        let s = "create function f() returns int as $body$ begin return 1; end; $body$ language plpgsql; select $1;";
        assert_eq!(split(s).len(), 2);
        let t = "create trigger tr after insert on a begin update b set n = n + 1; select case when 1 then 2 end; end; insert into a values (1);";
        let parts = split(t);
        assert_eq!(parts.len(), 2, "{parts:?}");
        assert!(parts[0].ends_with("end"));
    }

    #[test]
    fn mysql_backslash_escapes() {
        let s = r"insert into a values ('a\';b'); select 1";
        let parts = split_statements(
            s,
            SplitOptions {
                backslash_escapes: true,
                dollar_quotes: false,
            },
        );
        assert_eq!(parts.len(), 2);
    }
}
