//! The C4 cleaning pipeline for Common Crawl WET files: a streaming WET reader, the
//! page rules of the released tfds `c4_utils` code, a bad-words filter, corpus-wide
//! line (or three-sentence-span) de-duplication as an on-disk map → shuffle → reduce,
//! language identification and sharded JSON-lines output. See `pipeline::run`.

pub mod badwords;
pub mod bench;
pub mod clean;
pub mod counters;
pub mod lang;
pub mod pipeline;
pub mod shuffle;
pub mod text;
pub mod wet;

pub use badwords::Badwords;
pub use clean::{clean_page, normalize_url, CleanConfig};
pub use counters::{Counter, Counters};
pub use pipeline::{run, Compression, DedupMode, Options, RunConfig, Summary};
