//! Atomic outputs: write to a temporary sibling, then rename into place, so a failed
//! or interrupted run never leaves a half-written file or directory that looks complete.

use crate::{Context, Result};
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Write a file atomically: `write` fills a buffered temporary file in the same
/// directory, which is flushed, synced and renamed over `path` only on success.
pub fn write_file<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<&mut fs::File>) -> Result<()>,
{
    let dir = parent_dir(path);
    fs::create_dir_all(&dir).with_context(|| format!("creating directory {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", file_name(path)))
        .suffix(".tmp")
        .tempfile_in(&dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    {
        let mut w = BufWriter::new(tmp.as_file_mut());
        write(&mut w).with_context(|| format!("writing {}", path.display()))?;
        w.flush()
            .with_context(|| format!("writing {}", path.display()))?;
    }
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming the temporary file to {}", path.display()))?;
    Ok(())
}

/// Write bytes atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_file(path, |w| Ok(w.write_all(bytes)?))
}

/// Serialise `value` as pretty JSON, atomically.
pub fn write_json<T: serde::Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    write_file(path, |w| {
        serde_json::to_writer_pretty(&mut *w, value)?;
        w.write_all(b"\n")?;
        Ok(())
    })
}

/// A directory built under a temporary sibling name and renamed into place by
/// [`StagedDir::commit`]. Dropped without commit, the temporary directory is removed.
pub struct StagedDir {
    target: PathBuf,
    staging: Option<PathBuf>,
}

impl StagedDir {
    /// Start building `target`. Refuses an existing `target` unless `overwrite`.
    pub fn new(target: &Path, overwrite: bool) -> Result<Self> {
        if target.exists() && !overwrite {
            crate::bail!(
                "output directory {} already exists (pass --force to replace it)",
                target.display()
            );
        }
        let dir = parent_dir(target);
        fs::create_dir_all(&dir)
            .with_context(|| format!("creating directory {}", dir.display()))?;
        let staging = tempfile::Builder::new()
            .prefix(&format!(".{}.", file_name(target)))
            .suffix(".partial")
            .tempdir_in(&dir)
            .with_context(|| format!("creating a staging directory in {}", dir.display()))?
            .keep();
        Ok(Self {
            target: target.to_path_buf(),
            staging: Some(staging),
        })
    }

    /// Where files go until [`commit`](Self::commit).
    pub fn path(&self) -> &Path {
        self.staging
            .as_deref()
            .expect("staging directory exists until commit")
    }

    /// Move the finished directory into place (replacing an old one if allowed at creation).
    pub fn commit(mut self) -> Result<PathBuf> {
        let staging = self.staging.take().expect("commit called once");
        if self.target.exists() {
            let old = staging.with_extension("old");
            fs::rename(&self.target, &old)
                .with_context(|| format!("moving aside {}", self.target.display()))?;
            fs::rename(&staging, &self.target)
                .with_context(|| format!("renaming into {}", self.target.display()))?;
            fs::remove_dir_all(&old).ok();
        } else {
            fs::rename(&staging, &self.target)
                .with_context(|| format!("renaming into {}", self.target.display()))?;
        }
        Ok(self.target.clone())
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if let Some(staging) = self.staging.take() {
            fs::remove_dir_all(staging).ok();
        }
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        write_bytes(&path, b"old").unwrap();
        let err = write_file(&path, |w| {
            w.write_all(b"half")?;
            crate::bail!("disk full")
        });
        assert!(err.is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn staged_dir_appears_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("model");
        {
            let staged = StagedDir::new(&target, false).unwrap();
            fs::write(staged.path().join("a"), b"x").unwrap();
            assert!(!target.exists());
        }
        assert!(!target.exists());
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "staging removed on drop"
        );
        let staged = StagedDir::new(&target, false).unwrap();
        fs::write(staged.path().join("a"), b"x").unwrap();
        staged.commit().unwrap();
        assert_eq!(fs::read(target.join("a")).unwrap(), b"x");
        assert!(
            StagedDir::new(&target, false).is_err(),
            "existing output refused"
        );
    }
}
