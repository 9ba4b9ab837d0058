//! On-disk shuffle: map tasks write *spill files* holding one block of records per
//! partition; the reduce task of partition `p` reads block `p` of every spill file. This
//! is the map → shuffle-by-key → reduce shape a distributed engine runs, with partitions
//! small enough to reduce in bounded memory.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

const MAGIC: &[u8; 8] = b"C4SPILL1";

/// Partition of a 128-bit key (keys are hashes, so any fixed bits are uniform).
pub fn partition_of(key: u128, partitions: usize) -> usize {
    ((key >> 64) as u64 % partitions as u64) as usize
}

/// Records of one map task, buffered per partition.
pub struct SpillBuffer {
    blocks: Vec<Vec<u8>>,
    bytes: usize,
}

impl SpillBuffer {
    pub fn new(partitions: usize) -> Self {
        SpillBuffer {
            blocks: vec![Vec::new(); partitions],
            bytes: 0,
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Append a record built by `f` to partition `p`.
    pub fn push(&mut self, p: usize, f: impl FnOnce(&mut Enc)) {
        let block = &mut self.blocks[p];
        let before = block.len();
        f(&mut Enc(block));
        self.bytes += block.len() - before;
    }

    /// Write the buffer as a spill file and empty it. A `durable` spill (map output that
    /// a resumed run reuses) is written atomically and synced; the others are rebuilt on
    /// resume, so a plain write is enough.
    pub fn flush_to(&mut self, path: &Path, durable: bool) -> Result<()> {
        let write = |w: &mut dyn Write| -> Result<()> {
            w.write_all(MAGIC)?;
            w.write_all(&(self.blocks.len() as u64).to_le_bytes())?;
            let mut offset = 0u64;
            for b in &self.blocks {
                w.write_all(&offset.to_le_bytes())?;
                offset += b.len() as u64;
            }
            w.write_all(&offset.to_le_bytes())?;
            for b in &self.blocks {
                w.write_all(b)?;
            }
            Ok(())
        };
        if durable {
            fisherkit_common::atomic::write_file(path, |w| write(w))?;
        } else {
            let mut w = create(path)?;
            write(&mut w)?;
            w.flush()
                .with_context(|| format!("writing {}", path.display()))?;
        }
        for b in &mut self.blocks {
            b.clear();
        }
        self.bytes = 0;
        Ok(())
    }
}

/// Size in bytes of block `p` of a spill file.
pub fn block_len(path: &Path, p: usize) -> Result<u64> {
    let (start, end) = block_range(&mut open(path)?, path, p)?;
    Ok(end - start)
}

fn open(path: &Path) -> Result<File> {
    File::open(path).with_context(|| format!("opening spill file {}", path.display()))
}

fn block_range(f: &mut File, path: &Path, p: usize) -> Result<(u64, u64)> {
    let mut head = [0u8; 16];
    f.read_exact(&mut head)
        .with_context(|| format!("reading spill file {}", path.display()))?;
    if &head[..8] != MAGIC {
        bail!("{} is not a spill file", path.display());
    }
    let n = u64::from_le_bytes(head[8..].try_into().unwrap()) as usize;
    if p >= n {
        bail!("{} has {n} partitions, not {}", path.display(), p + 1);
    }
    f.seek(SeekFrom::Start(16 + 8 * p as u64))?;
    let mut two = [0u8; 16];
    f.read_exact(&mut two)?;
    let data = 16 + 8 * (n as u64 + 1);
    Ok((
        data + u64::from_le_bytes(two[..8].try_into().unwrap()),
        data + u64::from_le_bytes(two[8..].try_into().unwrap()),
    ))
}

/// Block `p` of every spill file, concatenated.
pub fn read_partition(files: &[PathBuf], p: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for path in files {
        let mut f = open(path)?;
        let (start, end) = block_range(&mut f, path, p)?;
        f.seek(SeekFrom::Start(start))?;
        let before = out.len();
        out.resize(before + (end - start) as usize, 0);
        f.read_exact(&mut out[before..])
            .with_context(|| format!("reading partition {p} of {}", path.display()))?;
    }
    Ok(out)
}

/// Append-only binary encoder of records.
pub struct Enc<'a>(pub &'a mut Vec<u8>);

impl Enc<'_> {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u128(&mut self, v: u128) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn str(&mut self, v: &str) -> &mut Self {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v.as_bytes());
        self
    }
}

/// Decoder matching [`Enc`]; every read is bounds-checked.
pub struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Dec { buf, pos: 0 }
    }
    pub fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            bail!("spill record cut short at byte {}", self.pos);
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    pub fn u128(&mut self) -> Result<u128> {
        Ok(u128::from_le_bytes(self.take(16)?.try_into().unwrap()))
    }
    pub fn str(&mut self) -> Result<&'a str> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).context("spill record holds invalid UTF-8")
    }
}

/// Bounds the bytes of partitions held in memory at once across reduce workers.
pub struct MemoryGate {
    budget: u64,
    used: Mutex<u64>,
    freed: Condvar,
}

impl MemoryGate {
    pub fn new(budget: u64) -> Self {
        MemoryGate {
            budget: budget.max(1),
            used: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// Wait until `bytes` (capped at the budget, so one huge partition still runs alone)
    /// fit, run `f`, then release them.
    pub fn with<T>(&self, bytes: u64, f: impl FnOnce() -> T) -> T {
        let bytes = bytes.min(self.budget);
        {
            let mut used = self.used.lock().unwrap();
            while *used > 0 && *used + bytes > self.budget {
                used = self.freed.wait(used).unwrap();
            }
            *used += bytes;
        }
        let out = f();
        *self.used.lock().unwrap() -= bytes;
        self.freed.notify_all();
        out
    }
}

fn create(path: &Path) -> Result<BufWriter<File>> {
    Ok(BufWriter::new(
        File::create(path).with_context(|| format!("creating {}", path.display()))?,
    ))
}
