//! Every counter of the pipeline, named as in stats.json. Counters are plain sums, so
//! per-task counts merge in any order and the totals do not depend on worker count.

use serde::ser::{Serialize, SerializeMap, Serializer};

macro_rules! counters {
    ($($variant:ident => $name:literal,)*) => {
        /// One counter of the pipeline.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter { $($variant,)* }

        impl Counter {
            pub const ALL: &'static [Counter] = &[$(Counter::$variant,)*];
            pub fn name(self) -> &'static str {
                match self { $(Counter::$variant => $name,)* }
            }
        }
    };
}

counters! {
    FilesIn => "files-in",
    FilesNotGzip => "files-not-gzip",
    FilesUnreadable => "files-unreadable",
    FilesTruncated => "files-truncated",
    BytesInCompressed => "bytes-in-compressed",
    BytesIn => "bytes-in",
    RecordsIn => "records-in",
    RecordsNotConversion => "records-not-conversion",
    RecordsMalformed => "records-malformed",
    RecordsTruncated => "records-truncated",
    PagesIn => "pages-in",
    PagesInvalidUtf8 => "pages-invalid-utf8",
    Utf8Replacements => "utf8-replacement-chars",
    PagesNoContent => "pages-no-content",
    PagesTooLong => "pages-too-long",
    PagesDuplicateUrl => "pages-duplicate-url",
    LinesIn => "lines-in",
    LinesTooLongWord => "lines-too-long-word",
    LinesNoEndmark => "lines-no-endmark",
    LinesTooShort => "lines-too-short",
    LinesJavascript => "lines-javascript",
    LinesPolicy => "lines-policy",
    LinesValid => "lines-valid",
    PagesLoremIpsum => "pages-lorem-ipsum",
    PagesCurlyBrace => "pages-curly-brace",
    PagesTooFewSentences => "pages-too-few-sentences",
    PagesBadwords => "pages-badwords",
    LinesDuplicate => "lines-duplicate",
    LinesDuplicateInPage => "lines-duplicate-in-page",
    SentencesDuplicate => "sentences-duplicate",
    PagesDedupEmpty => "pages-dedup-empty",
    PagesDedupTooFewSentences => "pages-dedup-too-few-sentences",
    PagesNotEnglish => "pages-not-english",
    PagesOut => "pages-out",
    PagesTrain => "pages-train",
    PagesValidation => "pages-validation",
    LinesOut => "lines-out",
    BytesOut => "bytes-out",
}

/// Page-level drop reasons in pipeline order; with `pages-out` they add up to `pages-in`.
pub const PAGE_DROPS: &[Counter] = &[
    Counter::PagesNoContent,
    Counter::PagesTooLong,
    Counter::PagesDuplicateUrl,
    Counter::PagesLoremIpsum,
    Counter::PagesCurlyBrace,
    Counter::PagesTooFewSentences,
    Counter::PagesBadwords,
    Counter::PagesDedupEmpty,
    Counter::PagesDedupTooFewSentences,
    Counter::PagesNotEnglish,
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counters([u64; Counter::ALL.len()]);

impl Default for Counters {
    fn default() -> Self {
        Counters([0; Counter::ALL.len()])
    }
}

impl Counters {
    pub fn add(&mut self, c: Counter, n: u64) {
        self.0[c as usize] += n;
    }
    pub fn inc(&mut self, c: Counter) {
        self.add(c, 1);
    }
    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }
    pub fn merge(&mut self, other: &Counters) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += b;
        }
    }
    /// Read counters back from their JSON map (resume markers); unknown names are errors.
    pub fn from_json(value: &serde_json::Value) -> anyhow::Result<Counters> {
        let map = value
            .as_object()
            .ok_or_else(|| anyhow::anyhow!("counters are not a JSON object"))?;
        let mut out = Counters::default();
        for (name, v) in map {
            let c = Counter::ALL
                .iter()
                .find(|c| c.name() == name)
                .ok_or_else(|| anyhow::anyhow!("unknown counter {name:?}"))?;
            let n = v
                .as_u64()
                .ok_or_else(|| anyhow::anyhow!("counter {name:?} is not a count"))?;
            out.add(*c, n);
        }
        Ok(out)
    }
}

impl Serialize for Counters {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(Counter::ALL.len()))?;
        for c in Counter::ALL {
            map.serialize_entry(c.name(), &self.get(*c))?;
        }
        map.end()
    }
}
