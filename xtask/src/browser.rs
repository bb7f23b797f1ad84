//! The browser half of `cargo xtask test`: Chromium, Node.js and playwright-core; every kernel source compiled by
//! Chromium's WebGPU; the web demo built with wasm-bindgen and run in Chromium against the native example.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{cargo, found, install};

/// Chromium, Node.js with npm, and playwright-core (pinned in xtask/browser/package.json, installed into
/// xtask/browser/node_modules).
pub fn ensure_browser(root: &Path) -> Result<(), String> {
    let mut packages = Vec::new();
    if !Path::new("/usr/bin/chromium").exists() {
        packages.push("chromium");
    }
    if !found("node") || !found("npm") {
        packages.extend(["nodejs", "npm"]);
    }
    if !packages.is_empty() {
        let apt = format!("DEBIAN_FRONTEND=noninteractive apt-get install -y {}", packages.join(" "));
        install(&packages.join(", "), &["apt-get update".to_string(), apt])?;
    }
    let dir = root.join("xtask/browser");
    if dir.join("node_modules/playwright-core/package.json").is_file() {
        return Ok(());
    }
    println!("$ npm install (in {})", dir.display());
    let ok = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(())
    } else {
        Err(format!("npm install in {} failed", dir.display()))
    }
}

/// Run a script of xtask/browser with node; its last line is the result.
fn node(root: &Path, script: &str, args: &[&Path], what: &str) -> Result<String, String> {
    let script = root.join("xtask/browser").join(script);
    let shown: Vec<String> = args.iter().map(|a| a.display().to_string()).collect();
    println!("$ node {} {}", script.display(), shown.join(" "));
    let out = Command::new("node").arg(&script).args(args).output().map_err(|e| format!("node: {e}"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    print!("{text}");
    let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(no output)").to_string();
    if out.status.success() {
        Ok(last)
    } else {
        Err(format!("{what}: {last}"))
    }
}

/// Compile every dumped kernel source with Chromium's WebGPU (Tint): what the web build would hand the browser.
pub fn check_wgsl(root: &Path, dump: &Path) -> Result<String, String> {
    node(root, "check_wgsl.mjs", &[dump], "kernel sources fail to compile in the browser")
}

/// The version of wasm-bindgen the workspace locks: the CLI must match it exactly.
fn locked_wasm_bindgen(root: &Path) -> Result<String, String> {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).map_err(|e| format!("Cargo.lock: {e}"))?;
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l == "name = \"wasm-bindgen\"" {
            if let Some(v) = lines.next().and_then(|v| v.strip_prefix("version = \"")) {
                return Ok(v.trim_end_matches('"').to_string());
            }
        }
    }
    Err("Cargo.lock has no wasm-bindgen package".into())
}

/// wasm-bindgen-cli of the locked version, installed into target/tools (nothing global).
fn ensure_wasm_bindgen(root: &Path) -> Result<PathBuf, String> {
    let version = locked_wasm_bindgen(root)?;
    let tools = root.join("target/tools");
    let bin = tools.join("bin/wasm-bindgen");
    let has = Command::new(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().nth(1) == Some(version.as_str()));
    if !has {
        let tools = tools.display().to_string();
        let v = format!("={version}");
        cargo(root, &["install", "wasm-bindgen-cli", "--version", &v, "--root", &tools], false)?;
    }
    Ok(bin)
}

/// The optimizers the web demo is checked with: the elementwise baseline and the flagship matrix optimizer.
const DEMO_OPTIMIZERS: [&str; 2] = ["adamw", "muon"];

/// The demo configuration both sides run: the tiny preset, briefly, with two validation estimates.
const DEMO: [(&str, &str); 6] = [
    ("preset", "tiny"),
    ("iters", "40"),
    ("seed", "1337"),
    ("eval_interval", "20"),
    ("eval_iters", "4"),
    ("sample", "200"),
];

/// Build the web demo into target/web: a wasm32 release build of the library and the wasm crate, its
/// wasm-bindgen bindings, and the page of wasm/www.
pub fn build_web(root: &Path) -> Result<PathBuf, String> {
    let bindgen = ensure_wasm_bindgen(root)?;
    let target = "wasm32-unknown-unknown";
    cargo(root, &["build", "--release", "--target", target, "-p", "wgoptim", "-p", "wgoptim-wasm", "--lib"], false)?;
    let web = root.join("target/web");
    let _ = std::fs::remove_dir_all(&web);
    let wasm = root.join("target").join(target).join("release/wgoptim_wasm.wasm");
    let pkg = web.join("pkg");
    println!("$ {} --target web --no-typescript --out-dir {} {}", bindgen.display(), pkg.display(), wasm.display());
    let ok = Command::new(&bindgen)
        .args(["--target", "web", "--no-typescript", "--out-dir"])
        .arg(&pkg)
        .arg(&wasm)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return Err("wasm-bindgen failed".into());
    }
    for f in ["index.html", "app.js"] {
        std::fs::copy(root.join("wasm/www").join(f), web.join(f)).map_err(|e| format!("copy wasm/www/{f}: {e}"))?;
    }
    Ok(web)
}

/// Build the web demo, train with it in Chromium, and compare its losses with the native example's on the same
/// runs (one per optimizer of [`DEMO_OPTIMIZERS`]); then every optimizer trains a few steps in Chromium.
pub fn web_demo(root: &Path, data: &Path) -> Result<String, String> {
    let web = build_web(root)?;
    let mut lines = Vec::new();
    for optimizer in DEMO_OPTIMIZERS {
        let config: Vec<(&str, &str)> = [("optimizer", optimizer)].into_iter().chain(DEMO).collect();
        let native = root.join("target/web-native").join(optimizer);
        let (data_arg, out_arg) = (data.display().to_string(), native.display().to_string());
        let mut args =
            vec!["run", "--release", "--example", "gpt_shakespeare", "--", "--data", &data_arg, "--out", &out_arg];
        let flags: Vec<String> = config.iter().map(|(k, _)| format!("--{}", k.replace('_', "-"))).collect();
        for ((_, v), flag) in config.iter().zip(&flags) {
            args.extend([flag.as_str(), v]);
        }
        cargo(root, &args, false)?;
        let query: Vec<String> = config.iter().map(|(k, v)| format!("{k}={v}")).chain(["auto=1".into()]).collect();
        let query = PathBuf::from(query.join("&"));
        let shot = web.join(format!("demo-{optimizer}.png"));
        let csv = native.join("loss.csv");
        lines.push(node(root, "run_demo.mjs", &[&web, data, &csv, &query, &shot], "web demo failed")?);
    }
    lines.push(node(root, "every_optimizer.mjs", &[&web, data], "an optimizer fails in the browser")?);
    Ok(format!("{}\n(screenshots in {})", lines.join("\n"), web.display()))
}
