//! The embedding demo runs and converges (it is included here so it cannot rot).

#[path = "../../demos/embed.rs"]
mod demo;

#[test]
fn embedding_demo_converges() {
    let (first, last) = demo::run(500).expect("demo runs");
    assert!(last < first * 1e-4, "loss {first} → {last}");
}
