//! `cargo xtask test`: install what a fresh Debian/Ubuntu machine lacks, then run every suite and summarize.
//! `cargo xtask web`: build the in-browser demo.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod browser;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (name, result) = match args.first().map(String::as_str) {
        Some("test") => ("test", test()),
        Some("web") => ("web", web()),
        _ => {
            eprintln!(
                "usage: cargo xtask test | web\n  test: installs what is missing (lavapipe if no Vulkan driver, Rust \
                 targets, Chromium, Node.js, playwright-core, wasm-bindgen-cli), then runs the native suite on the \
                 present adapter and again with WebGPU's kernel choices, compiles every kernel it specialized with \
                 Chromium's WebGPU, trains with the web demo in Chromium against the native example, and type-checks \
                 DX12/Metal\n  web: builds the in-browser demo into target/web"
            );
            return ExitCode::FAILURE;
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {name} failed: {e}");
            ExitCode::FAILURE
        }
    }
}

const TARGETS: &[&str] = &["wasm32-unknown-unknown", "x86_64-pc-windows-msvc", "aarch64-apple-darwin"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Build the web demo and say how to open it (with Tiny Shakespeare beside it when it is at hand).
fn web() -> Result<(), String> {
    let root = root();
    ensure_targets()?;
    let web = browser::build_web(&root)?;
    if let Ok(data) = ensure_data(&root) {
        std::fs::copy(&data, web.join("tinyshakespeare.txt")).map_err(|e| format!("copy {}: {e}", data.display()))?;
    }
    println!(
        "\nbuilt {dir}. Serve it on localhost (WebGPU needs a secure context), e.g.\n  python3 -m http.server -b 127.0.0.1 \
         -d {dir} 8000\nand open http://127.0.0.1:8000/ in a browser with WebGPU.",
        dir = web.display()
    );
    Ok(())
}

fn test() -> Result<(), String> {
    let root = root();
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        let dir = std::env::temp_dir().join("wgoptim-xdg");
        let _ = std::fs::create_dir_all(&dir);
        std::env::set_var("XDG_RUNTIME_DIR", dir);
    }
    ensure_vulkan()?;
    ensure_targets()?;
    let data = ensure_data(&root)?;
    browser::ensure_browser(&root)?;
    let mut summary = Vec::new();

    // Every kernel source the suite specializes is dumped for the browser compile check below.
    let dump = root.join("target/wgsl-dump");
    let _ = std::fs::remove_dir_all(&dump);
    std::env::set_var("WGOPTIM_DUMP_WGSL", &dump);
    let out = cargo(&root, &["test", "--release", "--workspace"], true)?;
    let (passed, failed) = count_tests(&out);
    let adapter = used_adapter(&root);
    summary.push(format!("native tests: {passed} passed, {failed} failed"));
    if failed > 0 || !out.contains("test result:") {
        return Err(format!("native tests failed ({failed} failures)"));
    }
    summary.push(webgpu_variants(&root)?);

    summary.push(browser::check_wgsl(&root, &dump)?);
    summary.push(browser::web_demo(&root, &data)?);
    for t in ["x86_64-pc-windows-msvc", "aarch64-apple-darwin"] {
        cargo(&root, &["check", "--target", t, "-p", "wgoptim", "--lib"], false)?;
        summary.push(format!("cargo check {t}: ok"));
    }

    println!("\n== wgoptim test summary ==\nadapter: {adapter}");
    for s in &summary {
        println!("{s}");
    }
    println!("{passed} passed, {failed} failed");
    Ok(())
}

/// The training tests read Tiny Shakespeare from `$WGOPTIM_DATA_DIR`, else `../shared/data` beside the checkout;
/// say up front where it was found, or exactly what to provide.
fn ensure_data(root: &Path) -> Result<PathBuf, String> {
    let dir = std::env::var_os("WGOPTIM_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("../shared/data"));
    let file = dir.join("tinyshakespeare.txt");
    if file.is_file() {
        println!("training data: {}", file.display());
        return Ok(file);
    }
    Err(format!(
        "the training tests need Tiny Shakespeare at {} (the standard 1,115,394-byte file, \
         https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt); \
         set WGOPTIM_DATA_DIR to the folder that holds tinyshakespeare.txt",
        file.display()
    ))
}

/// The kernel suites again with the variants a browser's GPU adapter gets (`WGOPTIM_KERNELS_FOR=webgpu`: GPU tiles,
/// workgroup-memory matmul, QR panels of 8 row groups, one-workgroup Jacobi for small eigendecompositions, WebGPU's
/// default limits), so those sources are dumped for the browser check too, and proven correct on this adapter:
/// training every optimizer included.
/// Skipped here: the 10,000-step run.
fn webgpu_variants(root: &Path) -> Result<String, String> {
    std::env::set_var("WGOPTIM_KERNELS_FOR", "webgpu");
    let runs: [&[&str]; 3] = [
        &["test", "--release", "--test", "linalg"],
        &["test", "--release", "--test", "nn"],
        &["test", "--release", "--test", "optim", "--", "--skip", "10000_steps"],
    ];
    let mut totals = (0, 0);
    for args in runs {
        let result = cargo(root, args, true);
        let (p, f) = result.as_deref().map(count_tests).unwrap_or((0, 1));
        totals = (totals.0 + p, totals.1 + f);
    }
    std::env::remove_var("WGOPTIM_KERNELS_FOR");
    let line = format!("with WebGPU's kernel choices: {} passed, {} failed", totals.0, totals.1);
    if totals.1 > 0 {
        return Err(line);
    }
    Ok(line)
}

/// Run shell commands that install system packages: as root with apt, or print them and fail.
pub(crate) fn install(what: &str, cmds: &[String]) -> Result<(), String> {
    let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !(is_root && Path::new("/usr/bin/apt-get").exists()) {
        return Err(format!("{what} missing. Install as root:\n  {}", cmds.join("\n  ")));
    }
    println!("{what} missing: installing");
    for c in cmds {
        println!("# {c}");
        if !Command::new("sh").args(["-c", c]).status().is_ok_and(|s| s.success()) {
            return Err(format!("`{c}` failed"));
        }
    }
    Ok(())
}

pub(crate) fn found(program: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {program}")]).output().is_ok_and(|o| o.status.success())
}

/// Run cargo, echoing its output; return stdout+stderr when `capture`.
pub(crate) fn cargo(dir: &Path, args: &[&str], capture: bool) -> Result<String, String> {
    println!("$ cargo {}", args.join(" "));
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args).current_dir(dir);
    if !capture {
        let st = cmd.status().map_err(|e| e.to_string())?;
        return if st.success() { Ok(String::new()) } else { Err(format!("cargo {} failed", args.join(" "))) };
    }
    let out = cmd.output().map_err(|e| e.to_string())?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    print!("{text}");
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("cargo {} failed", args.join(" ")))
    }
}

/// The adapter the suite ran on, as `wgoptim info` marks it (the test harness captures the tests' own output).
fn used_adapter(root: &Path) -> String {
    let bin = root.join("target/release/wgoptim");
    Command::new(bin)
        .arg("info")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find(|l| l.ends_with("<- used"))
                .map(|l| l.trim_end_matches("<- used").trim().to_string())
        })
        .unwrap_or_else(|| "(unknown: `wgoptim info` found none)".into())
}

fn count_tests(out: &str) -> (usize, usize) {
    let mut totals = (0, 0);
    for line in out.lines().filter(|l| l.starts_with("test result:")) {
        let num = |key: &str| {
            line.split(';')
                .find(|p| p.contains(key))
                .and_then(|p| p.split_whitespace().rev().nth(1)?.parse::<usize>().ok())
                .unwrap_or(0)
        };
        totals.0 += num(" passed");
        totals.1 += num(" failed");
    }
    totals
}

fn has_vulkan_driver() -> bool {
    let loader =
        Command::new("sh").args(["-c", "ldconfig -p | grep -q 'libvulkan.so.1'"]).status().is_ok_and(|s| s.success());
    let icd = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"].iter().any(|d| {
        std::fs::read_dir(d)
            .is_ok_and(|mut it| it.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "json"))))
    });
    loader && icd
}

/// Install lavapipe (Mesa's Vulkan CPU driver) when no Vulkan driver exists; the bookworm-backports build on
/// Debian 12 (Mesa 25, ~6× faster for compute than bookworm's). Prints the commands instead when not root.
fn ensure_vulkan() -> Result<(), String> {
    if has_vulkan_driver() {
        return Ok(());
    }
    let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let bookworm = os.lines().any(|l| l.trim() == "VERSION_CODENAME=bookworm");
    let mut cmds = Vec::new();
    if bookworm {
        cmds.push(
            "echo 'deb http://deb.debian.org/debian bookworm-backports main' > /etc/apt/sources.list.d/backports.list"
                .to_string(),
        );
        cmds.push("apt-get update".into());
        cmds.push(
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -t bookworm-backports mesa-vulkan-drivers libvulkan1"
                .into(),
        );
    } else {
        cmds.push("apt-get update".into());
        cmds.push("DEBIAN_FRONTEND=noninteractive apt-get install -y mesa-vulkan-drivers libvulkan1".into());
    }
    install("a Vulkan driver (lavapipe; other systems: your GPU's Vulkan driver or Mesa's lavapipe)", &cmds)?;
    if has_vulkan_driver() {
        Ok(())
    } else {
        Err("lavapipe was installed but no Vulkan driver is visible".into())
    }
}

fn ensure_targets() -> Result<(), String> {
    let out = Command::new("rustup").args(["target", "list", "--installed"]).output();
    let installed = out.map(|o| String::from_utf8_lossy(&o.stdout).to_string()).unwrap_or_default();
    let missing: Vec<&str> = TARGETS.iter().copied().filter(|t| !installed.lines().any(|l| l.trim() == *t)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("$ rustup target add {}", missing.join(" "));
    let ok = Command::new("rustup").arg("target").arg("add").args(&missing).status().is_ok_and(|s| s.success());
    if ok {
        Ok(())
    } else {
        Err(format!("rustup target add {} failed", missing.join(" ")))
    }
}
