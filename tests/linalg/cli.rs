//! The `wgoptim` command line as a user pipes it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn bench_output_piped_into_a_closed_reader_exits_cleanly() {
    // `wgoptim bench matmul … | head -1`: the reader closes after the first line, while the second size is still
    // being measured; the next line must end the process quietly, not panic on the broken pipe (exit 101).
    let mut child = Command::new(env!("CARGO_BIN_EXE_wgoptim"))
        .args(["bench", "matmul", "--sizes", "32,256,512"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run wgoptim");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout")).read_line(&mut first).expect("read a line");
    assert!(first.contains("GFLOPS"), "unexpected first line: {first}");
    let out = child.wait_with_output().expect("wait for wgoptim");
    assert!(out.status.success(), "exit {:?}: {}", out.status.code(), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn bench_matmul_names_the_variant_that_ran() {
    // The adapter's choice is reported as such ("auto: subgroup" on lavapipe), a forced one by its name.
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_wgoptim"))
            .args(["bench", "matmul", "--sizes", "32", "--json"])
            .args(extra)
            .output()
            .expect("run wgoptim");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let auto = run(&[]);
    let known = ["registers", "vec4", "subgroup", "shared"];
    assert!(known.iter().any(|v| auto.contains(&format!("\"variant\":\"auto: {v}\""))), "{auto}");
    assert!(run(&["--variant", "registers"]).contains("\"variant\":\"registers\""));
}

#[test]
fn bench_step_runs_optimizers_that_take_the_loss() {
    // ScheduleFree+ refuses to build without a loss tensor; `bench step` gives it one rather than failing.
    let out = Command::new(env!("CARGO_BIN_EXE_wgoptim"))
        .args(["bench", "step", "--optimizer", "schedulefree_plus", "--json"])
        .output()
        .expect("run wgoptim");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\"optimizer\":\"schedulefree_plus\"") && stdout.contains("\"ms_per_step\""), "{stdout}");
}

#[test]
fn bench_step_times_whole_refresh_periods() {
    // SOAP refreshing every 7 steps: 20 timed steps would carry 2 or 3 refreshes per stack, not the share
    // training pays; the default rounds up to 21. A period beyond the default's reach asks for --steps.
    let run = |config: &str| {
        Command::new(env!("CARGO_BIN_EXE_wgoptim"))
            .args(["bench", "step", "--optimizer", "soap", "--warmup", "1", "--json", "--config", config])
            .output()
            .expect("run wgoptim")
    };
    let out = run(r#"{"precondition_frequency": 7}"#);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\"timed_steps\":21") && stdout.contains("\"refresh_period\":7"), "{stdout}");
    let out = run(r#"{"precondition_frequency": 20000}"#);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--steps") && stderr.contains("20000"), "{stderr}");
}
