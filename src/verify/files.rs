//! Finding fixture files.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Fixture files under `paths`: files as given, folders searched recursively for
/// `*.json`, each folder's entries in name order. A path that does not exist is an
/// error naming it.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| Error::Fixture {
            path: p.clone(),
            msg: format!("cannot open: {e}"),
        })?;
        if meta.is_dir() {
            walk(p, &mut files)?;
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    let io = |e: std::io::Error| Error::Fixture {
        path: dir.to_path_buf(),
        msg: format!("cannot list folder: {e}"),
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .map_err(io)?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, files)?;
        } else if p.extension().is_some_and(|e| e == "json") {
            files.push(p);
        }
    }
    Ok(())
}
