//! Finding fixture files: folders are searched recursively, each folder at most once
//! however symbolic links loop back into it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Fixture files under `paths`: files as given, folders searched recursively for
/// `*.json`, each folder's entries in name order. A path that does not exist is an
/// error naming it. A folder reached again through a symbolic link (`a -> .`) is not
/// searched again. Nothing is opened here: [`crate::tooling::fixture::Fixture::load`] refuses
/// what is not a regular file (a FIFO named `x.json`) before opening it.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut visited = HashSet::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| Error::Fixture {
            path: p.clone(),
            msg: format!("cannot open: {e}"),
        })?;
        if meta.is_dir() {
            walk(p, &mut visited, &mut files)?;
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}

/// Searches `dir` unless its canonical path is in `visited`.
fn walk(dir: &Path, visited: &mut HashSet<PathBuf>, files: &mut Vec<PathBuf>) -> Result<()> {
    let io = |e: std::io::Error| Error::Fixture {
        path: dir.to_path_buf(),
        msg: format!("cannot list folder: {e}"),
    };
    if !visited.insert(dir.canonicalize().map_err(io)?) {
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .map_err(io)?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, visited, files)?;
        } else if p.extension().is_some_and(|e| e == "json") {
            files.push(p);
        }
    }
    Ok(())
}
