//! Highlighted snippets. The field's own analyzer gives byte offsets into the original text, so
//! marks land on character boundaries whatever the script.

use crate::tokenize;
use std::collections::HashSet;
use tantivy::tokenizer::TextAnalyzer;

/// Longest snippet, in characters.
pub const SNIPPET_CHARS: usize = 200;
/// Characters of context kept before the first match when the text is cut.
const LEAD_CHARS: usize = 30;

fn escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
}

/// Byte ranges of the text's tokens found in `terms`, merged where they overlap or touch.
pub fn match_ranges(
    analyzer: &mut TextAnalyzer,
    text: &str,
    terms: &HashSet<String>,
) -> Vec<(usize, usize)> {
    let mut ranges: Vec<(usize, usize)> = tokenize::tokens(analyzer, text)
        .into_iter()
        .filter(|t| terms.contains(&t.text))
        .map(|t| (t.offset_from, t.offset_to))
        .filter(|(a, b)| a < b && *b <= text.len())
        .collect();
    ranges.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match merged.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    merged
}

/// The snippet of `text` with matches wrapped in `<em>…</em>` (the rest HTML-escaped), or
/// `None` when nothing matches.
pub fn snippet(analyzer: &mut TextAnalyzer, text: &str, terms: &HashSet<String>) -> Option<String> {
    let ranges = match_ranges(analyzer, text, terms);
    let first = ranges.first()?.0;
    let total_chars = text.chars().count();
    let (start, end) = if total_chars <= SNIPPET_CHARS {
        (0, text.len())
    } else {
        // Byte index LEAD_CHARS characters before the first match, then SNIPPET_CHARS on.
        let lead: Vec<usize> = text[..first].char_indices().map(|(i, _)| i).collect();
        let start = if lead.len() > LEAD_CHARS {
            lead[lead.len() - LEAD_CHARS]
        } else {
            0
        };
        let end = text[start..]
            .char_indices()
            .nth(SNIPPET_CHARS)
            .map(|(i, _)| start + i)
            .unwrap_or(text.len());
        (start, end)
    };
    let mut out = String::with_capacity(end - start + 32);
    if start > 0 {
        out.push('…');
    }
    let mut at = start;
    for (a, b) in ranges {
        if b <= start || a >= end {
            continue;
        }
        let (a, b) = (a.max(start), b.min(end));
        escape(&text[at..a], &mut out);
        out.push_str("<em>");
        escape(&text[a..b], &mut out);
        out.push_str("</em>");
        at = b;
    }
    escape(&text[at..end], &mut out);
    if end < text.len() {
        out.push('…');
    }
    Some(out)
}
