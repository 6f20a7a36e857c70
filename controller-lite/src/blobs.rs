//! The blob directory (`DATA/blobs`): uploaded packages and staged droplets, one file
//! each, named by GUID. Files are written to a temporary name and renamed into place, so
//! a reader never sees half a blob.

use std::io;
use std::path::{Path, PathBuf};

/// Blob store failures.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob directory {path}: {source}")]
    Io { path: String, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BlobError + '_ {
    move |source| BlobError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The blob directory.
#[derive(Debug, Clone)]
pub struct Blobs {
    root: PathBuf,
}

impl Blobs {
    /// Opens (creating) the directory tree under `root`.
    pub fn open(root: &Path) -> Result<Blobs, BlobError> {
        for sub in ["packages", "droplets", "tmp"] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        Ok(Blobs {
            root: root.to_owned(),
        })
    }

    /// Where a package's bits live (tar.gz or zip, as uploaded).
    pub fn package_path(&self, guid: &str) -> PathBuf {
        self.root.join("packages").join(safe_name(guid))
    }

    /// Where a droplet lives (always tar.gz).
    pub fn droplet_path(&self, guid: &str) -> PathBuf {
        self.root
            .join("droplets")
            .join(format!("{}.tgz", safe_name(guid)))
    }

    /// A fresh temporary path inside the blob directory (same filesystem, so a rename
    /// into place is atomic).
    pub fn temp_path(&self) -> PathBuf {
        self.root.join("tmp").join(uuid::Uuid::new_v4().to_string())
    }

    /// Moves a finished temporary file into place.
    pub fn commit(&self, temp: &Path, dest: &Path) -> Result<(), BlobError> {
        std::fs::rename(temp, dest).map_err(io_err(dest))
    }

    /// Removes a blob; a missing one is fine (delete is idempotent).
    pub fn remove(&self, path: &Path) -> Result<(), BlobError> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(path)(e)),
            _ => Ok(()),
        }
    }
}

/// GUIDs come from URLs: keep only characters that cannot escape the directory.
fn safe_name(guid: &str) -> String {
    guid.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_cannot_escape_the_blob_directory() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let p = blobs.package_path("../../etc/passwd");
        assert!(p.starts_with(dir.path().join("packages")));
        assert_eq!(p.file_name().unwrap(), "etcpasswd");
    }
}
