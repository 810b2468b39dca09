//! Search requests: their JSON shape, their checking against a schema, and their translation
//! into a tantivy query and sort plan.

use crate::error::{Result, SearchError};
use crate::schema::{json_kind, parse_date, FieldKind, Fields, IndexMeta, TokenizerKind};
use crate::tokenize;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;
use tantivy::query::{
    AllQuery, BooleanQuery, BoostQuery, ConstScoreQuery, Occur, PhraseQuery, Query, RangeQuery,
    TermQuery,
};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::tokenizer::{TextAnalyzer, TokenizerManager};
use tantivy::Term;

/// Longest accepted `q`, in bytes.
pub const MAX_QUERY_BYTES: usize = 1024;
/// Deepest page: `offset + limit` may not exceed it (use the cursor to go further).
pub const MAX_DEPTH: usize = 10_000;
/// Largest `limit`.
pub const MAX_LIMIT: usize = 1000;
pub const DEFAULT_LIMIT: usize = 20;
/// Most sort keys in one request.
pub const MAX_SORT: usize = 3;
/// Most values reported per facet field.
pub const FACET_VALUES: usize = 100;
/// Most tag values or facet fields in one request.
const MAX_FILTER_VALUES: usize = 1024;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagFilters {
    /// The document holds every listed value (of each field).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub all: BTreeMap<String, Vec<String>>,
    /// The document holds at least one listed value of each field.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub any: BTreeMap<String, Vec<String>>,
    /// The document holds none of the listed values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub none: BTreeMap<String, Vec<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gt: Option<Json>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gte: Option<Json>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lt: Option<Json>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lte: Option<Json>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SortDir {
    Asc,
    Desc,
}

/// The body of `POST /indexes/{name}/search` (DESIGN.md section 7).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    #[serde(default)]
    pub q: Option<String>,
    #[serde(default)]
    pub tags: Option<TagFilters>,
    #[serde(default)]
    pub ranges: BTreeMap<String, RangeSpec>,
    /// `[{"year": "desc"}, {"_score": "desc"}]`; by score when empty.
    #[serde(default)]
    pub sort: Vec<BTreeMap<String, SortDir>>,
    #[serde(default)]
    pub limit: Option<usize>,
    #[serde(default)]
    pub offset: Option<usize>,
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default)]
    pub facets: Vec<String>,
    #[serde(default)]
    pub highlight: bool,
}

/// What a sort key reads.
#[derive(Clone, Debug, PartialEq)]
pub enum SortSource {
    Score,
    I64(String),
    F64(String),
    Date(String),
}

/// A checked request, ready to run on a shard.
pub struct Plan {
    pub query: Box<dyn Query>,
    pub sort: Vec<(SortSource, SortDir)>,
    pub scoring: bool,
    pub facets: Vec<String>,
    /// Per text field: the query terms, for highlighting.
    pub highlight_terms: Vec<(String, Field, String, HashSet<String>)>,
}

impl SearchRequest {
    /// The page shape: `(limit, offset)`, checked against the depth limit.
    pub fn page(&self) -> Result<(usize, usize)> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        let offset = self.offset.unwrap_or(0);
        if limit > MAX_LIMIT {
            return Err(SearchError::InvalidRequest(format!(
                "limit {limit} is above {MAX_LIMIT}"
            )));
        }
        let depth = offset.saturating_add(limit);
        if depth > MAX_DEPTH {
            return Err(SearchError::PageTooDeep {
                depth,
                limit: MAX_DEPTH,
            });
        }
        if self.cursor.is_some() && offset > 0 {
            return Err(SearchError::InvalidRequest(
                "use either offset or cursor, not both".into(),
            ));
        }
        Ok((limit, offset))
    }

    /// Hash of the parts that decide the order of results: a cursor is only valid for them.
    pub fn fingerprint(&self) -> u64 {
        let parts = serde_json::json!([self.q, self.tags, self.ranges, self.sort]);
        crate::schema::id_hash(&parts.to_string())
    }
}

fn unknown(index: &IndexMeta, what: &str, name: &str) -> SearchError {
    SearchError::UnknownField(format!(
        "{what} field {name:?} is not in the schema of index {:?}",
        index.def.name
    ))
}

fn field_of<'a>(
    fields: &'a Fields,
    meta: &IndexMeta,
    what: &str,
    name: &str,
    kinds: &[FieldKind],
) -> Result<&'a (Field, crate::schema::FieldDef)> {
    let f = fields
        .user
        .get(name)
        .ok_or_else(|| unknown(meta, what, name))?;
    if !kinds.contains(&f.1.kind) {
        return Err(SearchError::InvalidRequest(format!(
            "field {name:?} is of type {:?}; {what} needs {:?}",
            f.1.kind, kinds
        )));
    }
    Ok(f)
}

/// One piece of `q`: a bare word (or unsegmented run) or a quoted phrase.
enum Chunk<'a> {
    Words(&'a str),
    Phrase(&'a str),
}

fn chunks(q: &str) -> Vec<Chunk<'_>> {
    let mut out = Vec::new();
    let mut rest = q;
    while let Some(i) = rest.find('"') {
        out.extend(rest[..i].split_whitespace().map(Chunk::Words));
        let after = &rest[i + 1..];
        match after.find('"') {
            Some(j) => {
                out.push(Chunk::Phrase(&after[..j]));
                rest = &after[j + 1..];
            }
            None => {
                // An unclosed quote is read as plain words.
                rest = after;
            }
        }
    }
    out.extend(rest.split_whitespace().map(Chunk::Words));
    out
}

/// The tokens of a chunk that cover it left to right, each with its offset from the first: the
/// shortest tokens at each position for `mixed` (single characters, so any segmentation of the
/// document matches), the longest for the others.
fn chain(tokens: &[tantivy::tokenizer::Token], shortest: bool) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    let Some(first) = tokens.iter().map(|t| t.position).min() else {
        return out;
    };
    let mut pos = first;
    loop {
        let here = tokens.iter().filter(|t| t.position == pos);
        let pick = if shortest {
            here.min_by_key(|t| t.position_length)
        } else {
            here.max_by_key(|t| t.position_length)
        };
        match pick {
            Some(t) => {
                out.push((t.position - first, t.text.clone()));
                pos += t.position_length.max(1);
            }
            None => match tokens.iter().map(|t| t.position).filter(|p| *p > pos).min() {
                Some(p) => pos = p,
                None => break,
            },
        }
    }
    out
}

fn term_query(field: Field, text: &str) -> Box<dyn Query> {
    Box::new(TermQuery::new(
        Term::from_field_text(field, text),
        IndexRecordOption::WithFreqs,
    ))
}

fn phrase_query(field: Field, chain: &[(usize, String)]) -> Option<Box<dyn Query>> {
    match chain {
        [] => None,
        [(_, t)] => Some(term_query(field, t)),
        _ => Some(Box::new(PhraseQuery::new_with_offset(
            chain
                .iter()
                .map(|(o, t)| (*o, Term::from_field_text(field, t)))
                .collect(),
        ))),
    }
}

fn boosted(q: Box<dyn Query>, boost: f32) -> Box<dyn Query> {
    if (boost - 1.0).abs() > f32::EPSILON {
        Box::new(BoostQuery::new(q, boost))
    } else {
        q
    }
}

fn boolean(clauses: Vec<(Occur, Box<dyn Query>)>) -> Box<dyn Query> {
    Box::new(BooleanQuery::new(clauses))
}

/// Filters take part in matching but not in the score.
fn filter(q: Box<dyn Query>) -> (Occur, Box<dyn Query>) {
    (Occur::Must, Box::new(ConstScoreQuery::new(q, 0.0)))
}

fn range_term(field: Field, name: &str, kind: FieldKind, v: &Json) -> Result<Term> {
    Ok(match kind {
        FieldKind::I64 => match v.as_i64() {
            Some(i) => Term::from_field_i64(field, i),
            None => {
                return Err(SearchError::InvalidType(format!(
                    "range on {name:?} needs an integer, got {}",
                    json_kind(v)
                )))
            }
        },
        FieldKind::F64 => match v.as_f64() {
            Some(x) if x.is_finite() => Term::from_field_f64(field, x),
            _ => {
                return Err(SearchError::InvalidType(format!(
                    "range on {name:?} needs a number, got {}",
                    json_kind(v)
                )))
            }
        },
        FieldKind::Date => Term::from_field_date(
            field,
            tantivy::DateTime::from_timestamp_micros(parse_date(name, v)?),
        ),
        _ => {
            return Err(SearchError::InvalidRequest(format!(
                "ranges apply to i64, f64 and date fields, not {name:?}"
            )))
        }
    })
}

fn bound(
    field: Field,
    name: &str,
    kind: FieldKind,
    excl: &Option<Json>,
    incl: &Option<Json>,
) -> Result<Bound<Term>> {
    match (excl, incl) {
        (Some(_), Some(_)) => Err(SearchError::InvalidRequest(format!(
            "range on {name:?} gives both the strict and the inclusive form of one bound"
        ))),
        (Some(v), None) => Ok(Bound::Excluded(range_term(field, name, kind, v)?)),
        (None, Some(v)) => Ok(Bound::Included(range_term(field, name, kind, v)?)),
        (None, None) => Ok(Bound::Unbounded),
    }
}

fn check_values(field: &str, values: &[String]) -> Result<()> {
    if values.is_empty() || values.len() > MAX_FILTER_VALUES {
        return Err(SearchError::InvalidRequest(format!(
            "tag filter on {field:?} needs 1-{MAX_FILTER_VALUES} values"
        )));
    }
    Ok(())
}

/// Checks a request against an index and builds its plan. `tokenizers` are the index's.
pub fn plan(
    meta: &IndexMeta,
    fields: &Fields,
    tokenizers: &TokenizerManager,
    req: &SearchRequest,
) -> Result<Plan> {
    let q = req.q.as_deref().unwrap_or("");
    if q.len() > MAX_QUERY_BYTES {
        return Err(SearchError::QueryTooLong {
            len: q.len(),
            limit: MAX_QUERY_BYTES,
        });
    }
    req.page()?;
    let mut top: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    let mut highlight_terms = Vec::new();

    // Full text over every text field.
    let text_fields: Vec<(&String, Field, TokenizerKind, f32)> = fields
        .user
        .iter()
        .filter(|(_, (_, d))| d.kind == FieldKind::Text)
        .map(|(n, (f, d))| {
            (
                n,
                *f,
                d.tokenizer.unwrap_or_default(),
                d.boost.unwrap_or(1.0),
            )
        })
        .collect();
    let mut analyzers: Vec<TextAnalyzer> = Vec::new();
    for (name, _, kind, _) in &text_fields {
        let a = tokenizers
            .get(kind.name())
            .ok_or_else(|| SearchError::Internal(format!("tokenizer of {name:?} missing")))?;
        analyzers.push(a);
    }
    // Bare words become one flat union of term queries, each carrying its field's boost, so
    // tantivy runs a single union of term scorers (its fastest path) rather than a union per
    // word and per field; the bonus for characters found next to each other is an optional
    // clause beside it. The scores are the same sums a nested query would give.
    let mut terms: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    let mut bonuses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    let mut phrases: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    let mut terms_per_field: Vec<HashSet<String>> = vec![HashSet::new(); text_fields.len()];
    for chunk in chunks(q) {
        let (text, is_phrase) = match chunk {
            Chunk::Words(t) => (t, false),
            Chunk::Phrase(t) => (t, true),
        };
        let mut per_field: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for (i, (_, field, kind, boost)) in text_fields.iter().enumerate() {
            let toks = tokenize::tokens(&mut analyzers[i], text);
            if toks.is_empty() {
                continue;
            }
            let ch = chain(&toks, *kind == TokenizerKind::Mixed);
            if is_phrase {
                if let Some(p) = phrase_query(*field, &ch) {
                    per_field.push((Occur::Should, boosted(p, *boost)));
                }
            } else {
                let mut seen = HashSet::new();
                for t in &toks {
                    if seen.insert(t.text.as_str()) {
                        terms.push((Occur::Should, boosted(term_query(*field, &t.text), *boost)));
                    }
                }
                let words = chain(&toks, false).len();
                let latin_compound = words > 1 && !text.chars().any(tokenize::is_cjk);
                if latin_compound {
                    // "non-blocking" is also written "nonblocking": the joined form is one more
                    // alternative, analysed as the index analyses it (stemmed, lower-cased).
                    let joined: String = text.chars().filter(|c| c.is_alphanumeric()).collect();
                    for t in tokenize::tokens(&mut analyzers[i], &joined) {
                        if !seen.contains(t.text.as_str()) {
                            terms.push((
                                Occur::Should,
                                boosted(term_query(*field, &t.text), *boost),
                            ));
                        }
                    }
                }
                // Pieces found next to each other beat the same pieces apart. A CJK character
                // means little alone, so its run's adjacency weighs double; the parts of a Latin
                // compound ("read-only") each already score as words, so their adjacency weighs
                // one word more, not two. A chunk that is one dictionary word needs no bonus:
                // documents holding it contiguously hold its own token (jieba cuts it alike, and
                // search mode emits it inside longer words too), so the phrase would only
                // re-count it, at the price of reading positions for every document holding
                // its characters.
                if ch.len() > 1 && words > 1 {
                    let weight = if latin_compound { 1.0 } else { 2.0 };
                    if let Some(p) = phrase_query(*field, &ch) {
                        bonuses.push((Occur::Should, boosted(p, weight * boost)));
                    }
                }
            }
            terms_per_field[i].extend(toks.into_iter().map(|t| t.text));
        }
        if !per_field.is_empty() {
            // A quoted phrase must match (in any text field).
            phrases.push((Occur::Must, boolean(per_field)));
        }
    }
    let has_text = !terms.is_empty() || !phrases.is_empty();
    if !phrases.is_empty() {
        top.extend(phrases);
        if !terms.is_empty() {
            top.push((Occur::Should, boolean(terms)));
        }
    } else if !terms.is_empty() {
        top.push((Occur::Must, boolean(terms)));
    } else if !q.trim().is_empty() {
        // A query of only punctuation or stop characters matches nothing, not everything.
        top.push((Occur::Must, Box::new(tantivy::query::EmptyQuery)));
    } else {
        top.push((Occur::Must, Box::new(AllQuery)));
    }
    top.extend(bonuses);
    for (i, (name, field, _, _)) in text_fields.iter().enumerate() {
        if !terms_per_field[i].is_empty() {
            highlight_terms.push((
                (*name).clone(),
                *field,
                text_fields[i].2.name().to_owned(),
                std::mem::take(&mut terms_per_field[i]),
            ));
        }
    }

    // Tags.
    if let Some(tags) = &req.tags {
        for (name, values) in &tags.all {
            let (f, _) = field_of(fields, meta, "tag filter", name, &[FieldKind::Tags])?;
            check_values(name, values)?;
            for v in values {
                top.push(filter(term_query(*f, v)));
            }
        }
        for (name, values) in &tags.any {
            let (f, _) = field_of(fields, meta, "tag filter", name, &[FieldKind::Tags])?;
            check_values(name, values)?;
            let any = values
                .iter()
                .map(|v| (Occur::Should, term_query(*f, v)))
                .collect();
            top.push(filter(boolean(any)));
        }
        for (name, values) in &tags.none {
            let (f, _) = field_of(fields, meta, "tag filter", name, &[FieldKind::Tags])?;
            check_values(name, values)?;
            for v in values {
                top.push((Occur::MustNot, term_query(*f, v)));
            }
        }
    }

    // Ranges.
    for (name, r) in &req.ranges {
        let (f, d) = field_of(
            fields,
            meta,
            "range",
            name,
            &[FieldKind::I64, FieldKind::F64, FieldKind::Date],
        )?;
        let lo = bound(*f, name, d.kind, &r.gt, &r.gte)?;
        let hi = bound(*f, name, d.kind, &r.lt, &r.lte)?;
        if matches!((&lo, &hi), (Bound::Unbounded, Bound::Unbounded)) {
            return Err(SearchError::InvalidRequest(format!(
                "range on {name:?} has no bound (gt, gte, lt, lte)"
            )));
        }
        top.push(filter(Box::new(RangeQuery::new(lo, hi))));
    }

    // Sort.
    if req.sort.len() > MAX_SORT {
        return Err(SearchError::InvalidRequest(format!(
            "at most {MAX_SORT} sort keys"
        )));
    }
    let mut sort = Vec::new();
    for entry in &req.sort {
        if entry.len() != 1 {
            return Err(SearchError::InvalidRequest(
                "each sort entry is one {\"field\": \"asc\"|\"desc\"}".into(),
            ));
        }
        for (name, dir) in entry {
            let src = if name == "_score" {
                SortSource::Score
            } else {
                let (_, d) = field_of(
                    fields,
                    meta,
                    "sort",
                    name,
                    &[FieldKind::I64, FieldKind::F64, FieldKind::Date],
                )?;
                match d.kind {
                    FieldKind::I64 => SortSource::I64(name.clone()),
                    FieldKind::F64 => SortSource::F64(name.clone()),
                    _ => SortSource::Date(name.clone()),
                }
            };
            sort.push((src, *dir));
        }
    }
    if sort.is_empty() {
        sort.push((SortSource::Score, SortDir::Desc));
    }

    // Facets.
    if req.facets.len() > 64 {
        return Err(SearchError::InvalidRequest(
            "at most 64 facet fields".into(),
        ));
    }
    for name in &req.facets {
        field_of(fields, meta, "facet", name, &[FieldKind::Tags])?;
    }

    Ok(Plan {
        query: boolean(top),
        scoring: has_text || sort.iter().any(|(s, _)| *s == SortSource::Score),
        sort,
        facets: req.facets.clone(),
        highlight_terms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_split_words_and_phrases() {
        let c = chunks(r#"rust "数据 库" engine "open"#);
        let kinds: Vec<String> = c
            .iter()
            .map(|c| match c {
                Chunk::Words(w) => format!("w:{w}"),
                Chunk::Phrase(p) => format!("p:{p}"),
            })
            .collect();
        assert_eq!(kinds, ["w:rust", "p:数据 库", "w:engine", "w:open"]);
    }
}
