//! Streaming reader of Common Crawl WET files: concatenated gzip members holding WARC
//! records. Nothing is loaded whole; a truncated or corrupt tail ends the file after the
//! last good record, and records with missing headers are skipped and counted.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Bodies larger than this are treated as a malformed header (a corrupt length would
/// otherwise make us allocate gigabytes).
const MAX_BODY_BYTES: usize = 256 << 20;

/// One WARC record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub warc_type: String,
    pub url: Option<String>,
    pub date: Option<String>,
    pub body: Vec<u8>,
}

/// What the reader found next.
#[derive(Debug)]
pub enum Item {
    Record(Record),
    /// A record whose headers were unusable (no `Content-Length`, garbage before the
    /// `WARC/1.0` line, …); reading resumes at the next record.
    Malformed(String),
    /// The file ends inside a record (truncated download or corrupt gzip); nothing more
    /// can be read from it.
    Truncated(String),
}

/// Counts bytes flowing through a reader (compressed input and decompressed text).
pub struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl<R> Counting<R> {
    pub fn new(inner: R, count: Arc<AtomicU64>) -> Self {
        Counting { inner, count }
    }
}

/// Open a `.warc.wet.gz` for streaming. `compressed` and `decompressed` receive the byte
/// counts as reading proceeds. A file that does not start with the gzip magic is refused.
pub fn open(
    path: &Path,
    compressed: Arc<AtomicU64>,
    decompressed: Arc<AtomicU64>,
) -> Result<WetReader<Box<dyn BufRead + Send>>> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut magic = [0u8; 2];
    let n =
        read_up_to(&mut file, &mut magic).with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(
        n == 0 || magic == [0x1f, 0x8b],
        "{} is not gzip-compressed (WET files are concatenated gzip members)",
        path.display()
    );
    if n == 0 {
        // An empty file holds no records (a gzip decoder would call it truncated).
        return Ok(WetReader::new(Box::new(std::io::empty())));
    }
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let gz = flate2::read::MultiGzDecoder::new(BufReader::with_capacity(
        1 << 16,
        Counting::new(file, compressed),
    ));
    Ok(WetReader::new(Box::new(BufReader::with_capacity(
        1 << 16,
        Counting::new(gz, decompressed),
    ))))
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Iterator over the records of one WET stream.
pub struct WetReader<R> {
    reader: R,
    line: Vec<u8>,
    finished: bool,
    /// Non-blank bytes were seen outside any record since the last one.
    garbage: bool,
    /// Skipping the body of a record already reported as malformed.
    skipping: bool,
    /// The `WARC/` line of the next record was consumed while reporting garbage.
    version_line_read: bool,
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

impl<R: BufRead> WetReader<R> {
    pub fn new(reader: R) -> Self {
        WetReader {
            reader,
            line: Vec::new(),
            finished: false,
            garbage: false,
            skipping: false,
            version_line_read: false,
        }
    }

    /// Read one line into `self.line`; `Ok(false)` at end of stream.
    fn read_line(&mut self) -> std::io::Result<bool> {
        self.line.clear();
        Ok(self.reader.read_until(b'\n', &mut self.line)? > 0)
    }

    fn truncated(&mut self, what: String) -> Item {
        self.finished = true;
        Item::Truncated(what)
    }

    /// Headers and body of a record whose `WARC/` line was just read.
    fn read_record(&mut self) -> Item {
        let mut warc_type = None;
        let mut url = None;
        let mut date = None;
        let mut length = None;
        loop {
            match self.read_line() {
                Ok(true) => {}
                Ok(false) => return self.truncated("the file ends inside record headers".into()),
                Err(e) => return self.truncated(format!("reading record headers: {e}")),
            }
            let line = trim_eol(&self.line);
            if line.is_empty() {
                break;
            }
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let name = &line[..colon];
            let value = String::from_utf8_lossy(&line[colon + 1..])
                .trim()
                .to_string();
            if name.eq_ignore_ascii_case(b"WARC-Type") {
                warc_type = Some(value);
            } else if name.eq_ignore_ascii_case(b"WARC-Target-URI") {
                url = Some(value);
            } else if name.eq_ignore_ascii_case(b"WARC-Date") {
                date = Some(value);
            } else if name.eq_ignore_ascii_case(b"Content-Length") {
                length = Some(value);
            }
        }
        let length = match length.as_deref().map(str::parse::<usize>) {
            Some(Ok(n)) if n <= MAX_BODY_BYTES => n,
            Some(_) => {
                self.skipping = true;
                return Item::Malformed(format!("bad Content-Length {length:?}"));
            }
            None => {
                self.skipping = true;
                return Item::Malformed("record without Content-Length".into());
            }
        };
        // `take` + `read_to_end` fills the body without zeroing it first.
        let mut body = Vec::with_capacity(length);
        match (&mut self.reader)
            .take(length as u64)
            .read_to_end(&mut body)
        {
            Ok(n) if n == length => {}
            Ok(_) => return self.truncated("the file ends inside a record body".into()),
            Err(e) => return self.truncated(format!("reading a record body: {e}")),
        }
        Item::Record(Record {
            warc_type: warc_type.unwrap_or_default(),
            url,
            date,
            body,
        })
    }
}

impl<R: BufRead> Iterator for WetReader<R> {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        if self.finished {
            return None;
        }
        if std::mem::take(&mut self.version_line_read) {
            return Some(self.read_record());
        }
        loop {
            match self.read_line() {
                Ok(true) => {}
                Ok(false) => {
                    self.finished = true;
                    return std::mem::take(&mut self.garbage)
                        .then(|| Item::Malformed("bytes after the last record".into()));
                }
                Err(e) => return Some(self.truncated(format!("reading between records: {e}"))),
            }
            let line = trim_eol(&self.line);
            if line.starts_with(b"WARC/") {
                self.skipping = false;
                if std::mem::take(&mut self.garbage) {
                    self.version_line_read = true;
                    return Some(Item::Malformed("bytes outside any record".into()));
                }
                return Some(self.read_record());
            }
            if !self.skipping && !line.iter().all(u8::is_ascii_whitespace) {
                self.garbage = true;
            }
        }
    }
}

/// Write records as a WET file: one gzip member per record, like Common Crawl. Used by
/// tests and by the benchmark's generated corpora.
pub fn write_wet(out: &mut impl std::io::Write, records: &[Record]) -> Result<()> {
    for r in records {
        let mut head = format!("WARC/1.0\r\nWARC-Type: {}\r\n", r.warc_type);
        if let Some(url) = &r.url {
            head.push_str(&format!("WARC-Target-URI: {url}\r\n"));
        }
        if let Some(date) = &r.date {
            head.push_str(&format!("WARC-Date: {date}\r\n"));
        }
        head.push_str(&format!(
            "Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
            r.body.len()
        ));
        let mut gz = flate2::write::GzEncoder::new(&mut *out, flate2::Compression::fast());
        gz.write_all(head.as_bytes())?;
        gz.write_all(&r.body)?;
        gz.write_all(b"\r\n\r\n")?;
        gz.finish()?;
    }
    Ok(())
}
