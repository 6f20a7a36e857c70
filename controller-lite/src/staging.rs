//! Staging: a package (a tar.gz or zip of the app's directory) becomes a droplet: the same
//! files as a tar.gz, plus the `web` start command, taken from the `Procfile` or, failing
//! that, from the command given with `push --command`. There are no buildpacks: the app
//! must run with what the machine has.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek};
use std::path::Path;

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

/// Why bits could not be read or staged; shown to the user as is.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    #[error("the upload is neither a gzip-compressed tar nor a zip archive")]
    UnknownFormat,
    #[error("the archive is corrupt: {0}")]
    Corrupt(String),
    #[error("the archive is empty")]
    Empty,
    #[error("no start command: add a Procfile with a 'web: COMMAND' line, or push with --command")]
    NoCommand,
    #[error("staging I/O error: {0}")]
    Io(#[from] io::Error),
}

/// The archive formats accepted for packages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    TarGz,
    Zip,
}

/// Recognises a package by its magic bytes.
pub fn detect(path: &Path) -> Result<Format, StagingError> {
    let mut magic = [0u8; 4];
    let mut f = File::open(path)?;
    let n = read_up_to(&mut f, &mut magic)?;
    match &magic[..n] {
        [0x1f, 0x8b, ..] => Ok(Format::TarGz),
        [b'P', b'K', 3, 4] => Ok(Format::Zip),
        [b'P', b'K', 5, 6] => Err(StagingError::Empty),
        _ => Err(StagingError::UnknownFormat),
    }
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Reads every entry of a package to prove it is a readable archive with files in it.
pub fn validate(path: &Path) -> Result<(), StagingError> {
    let corrupt = |e: &dyn std::fmt::Display| StagingError::Corrupt(e.to_string());
    let entries = match detect(path)? {
        Format::TarGz => {
            let mut archive = tar::Archive::new(GzDecoder::new(BufReader::new(File::open(path)?)));
            let mut count = 0usize;
            for entry in archive.entries().map_err(|e| corrupt(&e))? {
                let mut entry = entry.map_err(|e| corrupt(&e))?;
                // Reading the data checks the gzip stream to its end.
                io::copy(&mut entry, &mut io::sink()).map_err(|e| corrupt(&e))?;
                count += 1;
            }
            count
        }
        Format::Zip => {
            let mut archive = zip::ZipArchive::new(File::open(path)?).map_err(|e| corrupt(&e))?;
            for i in 0..archive.len() {
                let mut entry = archive.by_index(i).map_err(|e| corrupt(&e))?;
                io::copy(&mut entry, &mut io::sink()).map_err(|e| corrupt(&e))?;
            }
            archive.len()
        }
    };
    if entries == 0 {
        return Err(StagingError::Empty);
    }
    Ok(())
}

/// Unpacks a package or droplet into `dest`; entries that would land outside `dest`
/// (absolute paths, `..`) are refused by the tar and zip crates.
pub fn unpack(path: &Path, dest: &Path) -> Result<(), StagingError> {
    std::fs::create_dir_all(dest)?;
    match detect(path)? {
        Format::TarGz => {
            let mut archive = tar::Archive::new(GzDecoder::new(BufReader::new(File::open(path)?)));
            archive.set_preserve_permissions(true);
            archive
                .unpack(dest)
                .map_err(|e| StagingError::Corrupt(e.to_string()))
        }
        Format::Zip => unpack_zip(File::open(path)?, dest),
    }
}

fn unpack_zip<R: Read + Seek>(reader: R, dest: &Path) -> Result<(), StagingError> {
    let mut archive =
        zip::ZipArchive::new(reader).map_err(|e| StagingError::Corrupt(e.to_string()))?;
    archive
        .extract(dest)
        .map_err(|e| StagingError::Corrupt(e.to_string()))
}

/// Packs a directory as tar.gz (what `push` uploads and what a droplet is).
pub fn pack_dir(dir: &Path, out: impl io::Write) -> Result<(), StagingError> {
    let gz = GzEncoder::new(out, Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    tar.append_dir_all(".", dir)?;
    tar.into_inner()?.finish()?;
    Ok(())
}

/// The `web:` command of a Procfile, if there is one.
pub fn procfile_web_command(procfile: &str) -> Option<String> {
    procfile.lines().find_map(|line| {
        let (kind, command) = line.split_once(':')?;
        (kind.trim() == "web" && !command.trim().is_empty()).then(|| command.trim().to_owned())
    })
}

/// Stages a package into a droplet file; returns the start command found. `work` is a
/// scratch directory removed afterwards.
pub fn stage(
    package: &Path,
    droplet: &Path,
    work: &Path,
    command: Option<&str>,
) -> Result<String, StagingError> {
    let result = stage_in(package, droplet, work, command);
    // Scratch space only: failing to remove it loses nothing.
    let _ = std::fs::remove_dir_all(work);
    result
}

fn stage_in(
    package: &Path,
    droplet: &Path,
    work: &Path,
    command: Option<&str>,
) -> Result<String, StagingError> {
    unpack(package, work)?;
    let procfile = match std::fs::read_to_string(work.join("Procfile")) {
        Ok(text) => procfile_web_command(&text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e.into()),
    };
    let command = procfile
        .or_else(|| command.map(str::to_owned).filter(|c| !c.trim().is_empty()))
        .ok_or(StagingError::NoCommand)?;
    pack_dir(work, File::create(droplet)?)?;
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn procfile_web_line_is_the_start_command() {
        let text = "# comment\nworker: python3 w.py\nweb:  python3 app.py --x \n";
        assert_eq!(
            procfile_web_command(text).as_deref(),
            Some("python3 app.py --x")
        );
        assert_eq!(procfile_web_command("worker: x\n"), None);
        assert_eq!(procfile_web_command("web:\n"), None);
    }

    #[test]
    fn a_directory_round_trips_through_a_droplet() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("Procfile"), "web: ./run\n").unwrap();
        std::fs::create_dir(src.path().join("sub")).unwrap();
        std::fs::write(src.path().join("sub/file"), "x").unwrap();
        let work = tempfile::tempdir().unwrap();
        let pkg = work.path().join("pkg");
        pack_dir(src.path(), File::create(&pkg).unwrap()).unwrap();
        validate(&pkg).unwrap();
        let droplet = work.path().join("droplet");
        let cmd = stage(&pkg, &droplet, &work.path().join("scratch"), None).unwrap();
        assert_eq!(cmd, "./run");
        assert!(!work.path().join("scratch").exists());
        let out = work.path().join("out");
        unpack(&droplet, &out).unwrap();
        assert_eq!(std::fs::read_to_string(out.join("sub/file")).unwrap(), "x");
    }

    #[test]
    fn staging_without_a_command_fails_clearly() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("index.html"), "hi").unwrap();
        let work = tempfile::tempdir().unwrap();
        let pkg = work.path().join("pkg");
        pack_dir(src.path(), File::create(&pkg).unwrap()).unwrap();
        let err = stage(&pkg, &work.path().join("d"), &work.path().join("s"), None).unwrap_err();
        assert!(err.to_string().contains("Procfile"), "{err}");
        let cmd = stage(
            &pkg,
            &work.path().join("d"),
            &work.path().join("s"),
            Some("./x"),
        )
        .unwrap();
        assert_eq!(cmd, "./x");
    }

    #[test]
    fn garbage_is_not_a_package() {
        let work = tempfile::tempdir().unwrap();
        let p = work.path().join("junk");
        std::fs::write(&p, b"hello, not an archive").unwrap();
        assert!(matches!(validate(&p), Err(StagingError::UnknownFormat)));
        std::fs::write(&p, [0x1f, 0x8b, 8, 0, 1, 2, 3]).unwrap();
        assert!(matches!(validate(&p), Err(StagingError::Corrupt(_))));
    }
}
