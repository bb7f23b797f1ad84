//! Finding Tiny Shakespeare: `--data PATH`, else `$WGOPTIM_DATA_DIR/tinyshakespeare.txt`, else the cached copy,
//! else a download (progress bar, sha256 check) into the cache.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wgoptim::nn::data::{TINY_SHAKESPEARE_SHA256 as SHA256, TINY_SHAKESPEARE_URL as URL};

const FILE: &str = "tinyshakespeare.txt";

fn cache_dir() -> PathBuf {
    let set = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    let base = set("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| set("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("wgoptim")
}

/// The text, from the first place that has it.
pub fn load(explicit: Option<&Path>) -> Result<String, String> {
    if let Some(p) = explicit {
        return std::fs::read_to_string(p).map_err(|e| format!("cannot read --data {}: {e}", p.display()));
    }
    if let Some(dir) = std::env::var_os("WGOPTIM_DATA_DIR") {
        let p = PathBuf::from(dir).join(FILE);
        return std::fs::read_to_string(&p)
            .map_err(|e| format!("cannot read {} (from WGOPTIM_DATA_DIR): {e}", p.display()));
    }
    let cached = cache_dir().join(FILE);
    if let Ok(text) = std::fs::read_to_string(&cached) {
        return Ok(text);
    }
    download(&cached).map_err(|e| {
        format!(
            "Tiny Shakespeare is not available: {e}.\nDownload {URL} yourself and either pass --data PATH, set \
             WGOPTIM_DATA_DIR to its folder (file name {FILE}), or put it at {}",
            cached.display()
        )
    })?;
    std::fs::read_to_string(&cached).map_err(|e| e.to_string())
}

fn download(to: &Path) -> Result<(), String> {
    eprintln!("downloading Tiny Shakespeare from {URL}");
    let response = ureq::get(URL).call().map_err(|e| format!("download failed ({e})"))?;
    let len = response.headers().get("content-length").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let bar = indicatif::ProgressBar::new(len.unwrap_or(1_115_394));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec}")
            .map_err(|e| e.to_string())?,
    );
    let mut reader = response.into_body().into_reader();
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 1 << 16];
    loop {
        let n = reader.read(&mut chunk).map_err(|e| format!("download interrupted ({e})"))?;
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&chunk[..n]);
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    let digest: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    if digest != SHA256 {
        return Err(format!("the download's sha256 is {digest}, expected {SHA256}"));
    }
    std::fs::create_dir_all(to.parent().unwrap_or(Path::new("."))).map_err(|e| e.to_string())?;
    let tmp = to.with_extension("part");
    std::fs::File::create(&tmp).and_then(|mut f| f.write_all(&bytes)).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, to).map_err(|e| e.to_string())?;
    eprintln!("saved to {}", to.display());
    Ok(())
}
