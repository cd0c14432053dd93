//! Publishes the CA root to a file at start, so proxies (and curl) can verify the
//! agent. Written atomically: a reader sees the old file or the whole new one.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Why the trust anchor could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the trust anchor to {}: {error}", path.display())]
pub struct WriteAnchorError {
    /// The file that was being written (the temporary one, if that failed).
    pub path: PathBuf,
    /// The I/O error.
    pub error: std::io::Error,
}

/// Writes `pem` to `path` through `<path>.tmp` and a rename.
pub fn write_atomic(path: &Path, pem: &str) -> Result<(), WriteAnchorError> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let fail = |p: &Path| {
        let p = p.to_path_buf();
        move |error| WriteAnchorError { path: p, error }
    };
    let mut file = std::fs::File::create(&tmp).map_err(fail(&tmp))?;
    file.write_all(pem.as_bytes()).map_err(fail(&tmp))?;
    file.sync_all().map_err(fail(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(fail(path))?;
    tracing::info!(path = %path.display(), "trust anchor written");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_whole() {
        let dir = std::env::temp_dir().join(format!("pillion-anchor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("root.pem");
        write_atomic(&path, "one").unwrap();
        write_atomic(&path, "two").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
        assert!(!dir.join("root.pem.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
