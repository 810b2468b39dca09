//! Tokenizers for text fields: `jieba` (Chinese words), `mixed` (Chinese words plus single
//! characters, and Latin words) and `standard` (Latin words).
//!
//! Positions count *units*: one per CJK character and one per Latin word, so a Chinese word sits
//! at the position of its first character. Phrases can then be matched on any chain of tokens
//! that covers the text, whatever segmentation jieba chose for the document.

use jieba_rs::Jieba;
use std::sync::{Arc, OnceLock};
use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, TextAnalyzer, Token,
    TokenFilter, TokenStream, Tokenizer, TokenizerManager,
};

/// Tokenizer names registered on every index.
pub const JIEBA: &str = "kw_jieba";
pub const MIXED: &str = "kw_mixed";
pub const STANDARD: &str = "kw_standard";

/// Longest token kept, in bytes; longer ones are dropped (they are noise such as base64).
const MAX_TOKEN_BYTES: usize = 64;

/// The dictionary without user words, built once per process (it takes 50-250 ms).
fn base_jieba() -> Arc<Jieba> {
    static BASE: OnceLock<Arc<Jieba>> = OnceLock::new();
    BASE.get_or_init(|| Arc::new(Jieba::new())).clone()
}

/// The `Jieba` of an index: the shared default one, or a copy extended with the index's user
/// dictionary (`word [freq [tag]]` per line, as jieba's dictionary files).
pub fn jieba_for(user_dict: &[String]) -> Arc<Jieba> {
    if user_dict.is_empty() {
        return base_jieba();
    }
    let mut j = (*base_jieba()).clone();
    for line in user_dict {
        let mut parts = line.split_whitespace();
        let Some(word) = parts.next() else { continue };
        let freq = parts.next().and_then(|f| f.parse::<usize>().ok());
        let tag = parts.next();
        j.add_word(word, freq, tag);
    }
    Arc::new(j)
}

pub(crate) fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF   // kana
        | 0x3400..=0x4DBF // CJK extension A
        | 0x4E00..=0x9FFF // CJK unified
        | 0xAC00..=0xD7AF // hangul
        | 0xF900..=0xFAFF // compatibility ideographs
        | 0x20000..=0x3134F)
}

/// Segments text into Chinese words (and single characters with `unigrams`) and Latin words.
/// Clones share one `Jieba`, so tantivy's per-thread clones are cheap.
#[derive(Clone)]
pub struct CjkTokenizer {
    jieba: Arc<Jieba>,
    unigrams: bool,
    /// Reused from text to text: slots past the current text's count keep their `String`
    /// buffers, so a token costs no allocation once the buffers have grown (one per token
    /// was a sixth of indexing time).
    tokens: Vec<Token>,
}

/// Writes a token into slot `*n` of `out`, reusing the slot's text buffer.
fn emit(
    out: &mut Vec<Token>,
    n: &mut usize,
    from: usize,
    to: usize,
    pos: usize,
    len: usize,
    text: &str,
) {
    if let Some(t) = out.get_mut(*n) {
        t.offset_from = from;
        t.offset_to = to;
        t.position = pos;
        t.position_length = len;
        t.text.clear();
        t.text.push_str(text);
    } else {
        out.push(Token {
            offset_from: from,
            offset_to: to,
            position: pos,
            text: text.to_owned(),
            position_length: len,
        });
    }
    *n += 1;
}

/// Lower-cases the last emitted token in place, as tantivy's `LowerCaser` would (characters
/// one by one, no final-sigma rule). Done here for Latin words only: CJK tokens have no case,
/// and running the Unicode path over each of them was a few percent of indexing time.
fn lower_last(out: &mut [Token], n: usize) {
    let Some(t) = n.checked_sub(1).and_then(|i| out.get_mut(i)) else {
        return;
    };
    if t.text.is_ascii() {
        t.text.make_ascii_lowercase();
    } else {
        // Not only upper-case letters change: title-case ones such as 'ǅ' do too.
        let lowered: String = t.text.chars().flat_map(char::to_lowercase).collect();
        t.text = lowered;
    }
}

impl CjkTokenizer {
    pub fn new(jieba: Arc<Jieba>, unigrams: bool) -> Self {
        CjkTokenizer {
            jieba,
            unigrams,
            tokens: Vec::new(),
        }
    }

    /// Segments `text` into the first slots of `out`; returns how many.
    fn segment(&self, text: &str, out: &mut Vec<Token>) -> usize {
        let mut n = 0usize;
        let mut unit = 0usize;
        let mut chars = text.char_indices().peekable();
        while let Some(&(start, c)) = chars.peek() {
            if is_cjk(c) {
                let mut end = start;
                let mut chars_in_run = 0usize;
                while let Some(&(i, c)) = chars.peek() {
                    if !is_cjk(c) {
                        break;
                    }
                    end = i + c.len_utf8();
                    chars_in_run += 1;
                    chars.next();
                }
                self.segment_cjk(&text[start..end], start, unit, out, &mut n);
                unit += chars_in_run;
            } else if c.is_alphanumeric() {
                let mut end = start;
                while let Some(&(i, c)) = chars.peek() {
                    if !c.is_alphanumeric() || is_cjk(c) {
                        break;
                    }
                    end = i + c.len_utf8();
                    chars.next();
                }
                emit(out, &mut n, start, end, unit, 1, &text[start..end]);
                lower_last(out, n);
                unit += 1;
            } else {
                chars.next();
            }
        }
        // Postings want each term's positions in order; overlapping words come out of jieba
        // grouped by word, not by position.
        out[..n].sort_by_key(|t| (t.position, t.offset_from, t.offset_to));
        n
    }

    fn segment_cjk(
        &self,
        run: &str,
        base: usize,
        unit: usize,
        out: &mut Vec<Token>,
        n: &mut usize,
    ) {
        for w in self.jieba.cut_for_search(run, true) {
            let len = w.end - w.start;
            if self.unigrams && len == 1 {
                continue; // emitted below as a unigram
            }
            emit(
                out,
                n,
                base + w.byte_start,
                base + w.byte_end,
                unit + w.start,
                len.max(1),
                w.word,
            );
        }
        if self.unigrams {
            for (k, (i, c)) in run.char_indices().enumerate() {
                let end = i + c.len_utf8();
                emit(out, n, base + i, base + end, unit + k, 1, &run[i..end]);
            }
        }
    }
}

pub struct VecTokenStream<'a> {
    tokens: &'a mut [Token],
    next: usize,
    /// Answered by `token()` before the first `advance()` or on an empty text.
    none: Token,
}

impl TokenStream for VecTokenStream<'_> {
    fn advance(&mut self) -> bool {
        if self.next < self.tokens.len() {
            self.next += 1;
            true
        } else {
            false
        }
    }
    fn token(&self) -> &Token {
        match self.next.checked_sub(1) {
            Some(i) => self.tokens.get(i).unwrap_or(&self.none),
            None => &self.none,
        }
    }
    fn token_mut(&mut self) -> &mut Token {
        match self.next.checked_sub(1) {
            Some(i) if i < self.tokens.len() => &mut self.tokens[i],
            _ => &mut self.none,
        }
    }
}

impl Tokenizer for CjkTokenizer {
    type TokenStream<'a> = VecTokenStream<'a>;
    fn token_stream<'a>(&'a mut self, text: &'a str) -> VecTokenStream<'a> {
        let mut tokens = std::mem::take(&mut self.tokens);
        let n = self.segment(text, &mut tokens);
        self.tokens = tokens;
        VecTokenStream {
            tokens: &mut self.tokens[..n],
            next: 0,
            none: Token::default(),
        }
    }
}

/// English stemming for Latin tokens only: tantivy's `Stemmer` also runs the snowball rules
/// over every Chinese word and character, which was a tenth of indexing time for nothing.
#[derive(Clone)]
pub struct LatinStemmer;

impl TokenFilter for LatinStemmer {
    type Tokenizer<T: Tokenizer> = LatinStemmerFilter<T>;
    fn transform<T: Tokenizer>(self, inner: T) -> LatinStemmerFilter<T> {
        LatinStemmerFilter {
            inner,
            cache: StemCache::default(),
        }
    }
}

/// Words whose stems a filter remembers; word frequencies follow Zipf's law, so a small
/// cache answers most tokens with one hash lookup instead of the snowball rules.
const STEM_CACHE_WORDS: usize = 32_768;
/// Longer words are stemmed every time (rare, and they would crowd the cache).
const STEM_CACHE_WORD_BYTES: usize = 24;

type StemCache = std::collections::HashMap<String, String, foldhash::fast::RandomState>;

#[derive(Clone)]
pub struct LatinStemmerFilter<T> {
    inner: T,
    /// Per clone: tantivy gives each indexing thread its own analyzer.
    cache: StemCache,
}

impl<T: Tokenizer> Tokenizer for LatinStemmerFilter<T> {
    type TokenStream<'a> = LatinStemmerStream<'a, T::TokenStream<'a>>;
    fn token_stream<'a>(&'a mut self, text: &'a str) -> Self::TokenStream<'a> {
        LatinStemmerStream {
            tail: self.inner.token_stream(text),
            stemmer: frostem::Stemmer::new(frostem::Algorithm::English),
            cache: &mut self.cache,
        }
    }
}

pub struct LatinStemmerStream<'a, T> {
    tail: T,
    stemmer: frostem::Stemmer,
    cache: &'a mut StemCache,
}

impl<T: TokenStream> TokenStream for LatinStemmerStream<'_, T> {
    fn advance(&mut self) -> bool {
        if !self.tail.advance() {
            return false;
        }
        let token = self.tail.token_mut();
        if token.text.chars().next().is_none_or(is_cjk) {
            return true;
        }
        if let Some(stem) = self.cache.get(&token.text) {
            token.text.clear();
            token.text.push_str(stem);
            return true;
        }
        let stem = self.stemmer.stem(&token.text).into_owned();
        if token.text.len() <= STEM_CACHE_WORD_BYTES {
            if self.cache.len() >= STEM_CACHE_WORDS {
                self.cache.clear();
            }
            self.cache.insert(token.text.clone(), stem.clone());
        }
        token.text = stem;
        true
    }
    fn token(&self) -> &Token {
        self.tail.token()
    }
    fn token_mut(&mut self) -> &mut Token {
        self.tail.token_mut()
    }
}

/// The analyzer of one tokenizer name; `None` for an unknown name.
pub fn analyzer(name: &str, jieba: &Arc<Jieba>) -> Option<TextAnalyzer> {
    Some(match name {
        // The CJK tokenizer lower-cases its Latin words itself.
        JIEBA => TextAnalyzer::builder(CjkTokenizer::new(jieba.clone(), false))
            .filter(RemoveLongFilter::limit(MAX_TOKEN_BYTES))
            .build(),
        MIXED => TextAnalyzer::builder(CjkTokenizer::new(jieba.clone(), true))
            .filter(RemoveLongFilter::limit(MAX_TOKEN_BYTES))
            .filter(LatinStemmer)
            .build(),
        STANDARD => TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(RemoveLongFilter::limit(MAX_TOKEN_BYTES))
            .filter(LowerCaser)
            .filter(Stemmer::new(Language::English))
            .build(),
        _ => return None,
    })
}

/// Registers the three tokenizers of an index, all sharing the index's `Jieba`.
pub fn register(manager: &TokenizerManager, jieba: &Arc<Jieba>) {
    for name in [JIEBA, MIXED, STANDARD] {
        if let Some(a) = analyzer(name, jieba) {
            manager.register(name, a);
        }
    }
}

/// Runs an analyzer over text and collects its tokens.
pub fn tokens(analyzer: &mut TextAnalyzer, text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut stream = analyzer.token_stream(text);
    while stream.advance() {
        out.push(stream.token().clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_offsets_are_byte_offsets_and_positions_count_units() {
        let j = base_jieba();
        let mut a = analyzer(MIXED, &j).unwrap();
        let text = "Rust 编写的数据库系统";
        let toks = tokens(&mut a, text);
        for t in &toks {
            let slice = &text[t.offset_from..t.offset_to];
            assert!(!slice.is_empty());
        }
        let db = toks.iter().find(|t| t.text == "数据库").expect("word");
        assert_eq!(&text[db.offset_from..db.offset_to], "数据库");
        assert_eq!(db.position, 4); // rust, 编, 写, 的, 数…
        assert!(toks.iter().any(|t| t.text == "库" && t.position == 6));
        assert!(toks.iter().any(|t| t.text == "rust" && t.position == 0));
        let mut pos: Vec<usize> = toks.iter().map(|t| t.position).collect();
        let sorted = {
            pos.sort();
            pos.clone()
        };
        assert_eq!(pos, sorted);
    }

    #[test]
    fn latin_stemming_matches_tantivy_stemmer_and_leaves_cjk_alone() {
        let j = base_jieba();
        let mut ours = analyzer(MIXED, &j).unwrap();
        let mut theirs = TextAnalyzer::builder(CjkTokenizer::new(j.clone(), true))
            .filter(RemoveLongFilter::limit(MAX_TOKEN_BYTES))
            .filter(LowerCaser)
            .filter(Stemmer::new(Language::English))
            .build();
        // Twice, so that the second half comes from the stem cache.
        let text = "Running databases 数据库系统 connections ÉCOLES caresses ponies 生命 ΣΊΣΥΦΟΣ ǅungla \
                    Running databases 数据库系统 connections ÉCOLES caresses ponies 生命 ΣΊΣΥΦΟΣ ǅungla";
        let a = tokens(&mut ours, text);
        let a2 = tokens(&mut ours, text);
        let b = tokens(&mut theirs, text);
        let texts = |v: &[Token]| v.iter().map(|t| t.text.clone()).collect::<Vec<_>>();
        assert_eq!(a, b, "{:?}\n{:?}", texts(&a), texts(&b));
        assert_eq!(a, a2);
        assert!(a.iter().any(|t| t.text == "databas"), "{:?}", texts(&a));
        assert!(a.iter().any(|t| t.text == "数据库"));
    }

    #[test]
    fn user_dictionary_changes_segmentation() {
        let plain = jieba_for(&[]);
        let custom = jieba_for(&["钥守引擎 1000 n".to_string()]);
        let mut a = analyzer(JIEBA, &plain).unwrap();
        let mut b = analyzer(JIEBA, &custom).unwrap();
        let text = "我们使用钥守引擎";
        assert!(!tokens(&mut a, text).iter().any(|t| t.text == "钥守引擎"));
        assert!(tokens(&mut b, text).iter().any(|t| t.text == "钥守引擎"));
    }
}
