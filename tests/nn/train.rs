//! End-to-end training on Tiny Shakespeare (from `WGOPTIM_DATA_DIR`, else `../shared/data` beside the checkout).

use super::gpu;
use wgoptim::nn::{CharData, Preset, Recipe, RunConfig, Split, Trainer};

fn data() -> CharData {
    let dir = std::env::var("WGOPTIM_DATA_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    let path = dir.join("tinyshakespeare.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("training tests need Tiny Shakespeare at {} ({e}); set WGOPTIM_DATA_DIR to its folder", path.display())
    });
    CharData::from_text(&text).unwrap()
}

fn tiny(optimizer: &str, iters: u32) -> (Trainer, Preset) {
    tiny_on(&gpu(), optimizer, iters)
}

fn tiny_on(gpu: &wgoptim::Gpu, optimizer: &str, iters: u32) -> (Trainer, Preset) {
    let data = data();
    let preset = Preset::named("tiny", data.vocab_size()).unwrap();
    let mut recipe = Recipe::new(optimizer, iters);
    recipe.warmup = preset.warmup.min(iters / 3);
    let config = RunConfig { model: preset.model.clone(), batch: preset.batch, seed: 1337, recipe };
    (Trainer::new(gpu, data, config).unwrap(), preset)
}

#[test]
fn tiny_preset_learns_shakespeare() {
    let iters = 150;
    // A device of its own: its submit counter sees only this run (tests run in parallel).
    let own = wgoptim::Gpu::new_blocking().unwrap();
    let (mut t, preset) = tiny_on(&own, "adamw", iters);
    let submits = own.counters().submits();
    let mut losses = Vec::new();
    for _ in 0..iters {
        losses.extend(pollster::block_on(t.step()).unwrap());
    }
    assert_eq!(own.counters().submits() - submits, iters as u64, "one submit per training step");
    losses.extend(pollster::block_on(t.flush()).unwrap());
    assert_eq!(losses.len(), iters as usize);
    let uniform = (t.data().vocab_size() as f32).ln();
    assert!((losses[0].1 - uniform).abs() < 0.3, "initial loss {} vs ln(vocab) {uniform}", losses[0].1);
    let last: f32 = losses[losses.len() - 10..].iter().map(|l| l.1).sum::<f32>() / 10.0;
    let val = pollster::block_on(t.evaluate(Split::Val, preset.eval_iters)).unwrap();
    println!("tiny: first loss {:.3}, last-10 mean {last:.3}, val {val:.3}", losses[0].1);
    assert!(last < uniform - 1.2, "training loss {last} should fall well below {uniform}");
    assert!(val < uniform - 1.0, "validation loss {val}");
    let text = pollster::block_on(t.sample("ROMEO:", 40, 0.8, 10, 7)).unwrap();
    assert_eq!(text.chars().count(), 40);
}

#[test]
fn resume_from_checkpoint_is_bit_exact() {
    // EKFAC: the preconditioner's factors, bases and scales travel in the checkpoint too.
    for name in ["adamw", "ekfac"] {
        resume_is_bit_exact(name);
    }
}

fn resume_is_bit_exact(name: &str) {
    let (mut a, _) = tiny(name, 8);
    for _ in 0..8 {
        pollster::block_on(a.step()).unwrap();
    }
    pollster::block_on(a.flush()).unwrap();
    let (mut b, _) = tiny(name, 8);
    for _ in 0..4 {
        pollster::block_on(b.step()).unwrap();
    }
    pollster::block_on(b.flush()).unwrap();
    let ckpt = pollster::block_on(b.save()).unwrap();
    let (mut c, _) = tiny(name, 8);
    c.load(&ckpt).unwrap();
    assert_eq!(c.steps(), 4);
    for _ in 0..4 {
        pollster::block_on(c.step()).unwrap();
    }
    pollster::block_on(c.flush()).unwrap();
    let pa = a.model().store.params_flat().read_blocking().unwrap();
    let pc = c.model().store.params_flat().read_blocking().unwrap();
    assert!(pa.iter().zip(&pc).all(|(x, y)| x.to_bits() == y.to_bits()), "{name}: resumed run differs");

    let (mut other, _) = tiny("lion", 8);
    assert!(other.load(&ckpt).is_err(), "a checkpoint of another run is refused");
    assert!(c.load(&ckpt[..ckpt.len() / 2]).is_err(), "a truncated checkpoint is refused");
    assert_eq!(c.steps(), 8, "a refused load changes nothing");
}

#[test]
fn every_optimizer_trains_without_nan() {
    for name in Recipe::names() {
        let (mut t, _) = tiny(name, 4);
        for _ in 0..4 {
            pollster::block_on(t.step()).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let losses = pollster::block_on(t.flush()).unwrap();
        let params = t.model().store.params_flat().read_blocking().unwrap();
        assert!(losses.iter().all(|l| l.1.is_finite()), "{name}: losses {losses:?}");
        assert!(params.iter().all(|v| v.is_finite()), "{name}: non-finite parameters");
        let val = pollster::block_on(t.evaluate(Split::Val, 1)).unwrap();
        assert!(val.is_finite(), "{name}: validation loss {val}");
    }
}

#[test]
fn timed_steps_train_like_plain_steps() {
    // A timed step runs the optimizer's plan on its own for timestamps; the whitening refreshes and Shampoo's
    // direction must still follow, so both runs end bit-identical.
    let gpu = gpu();
    let data = data();
    let preset = Preset::named("tiny", data.vocab_size()).unwrap();
    let config =
        RunConfig { model: preset.model.clone(), batch: preset.batch, seed: 1337, recipe: Recipe::new("shampoo", 12) };
    let mut plain = Trainer::new(&gpu, data.clone(), config.clone()).unwrap();
    let mut timed = Trainer::new_timed(&gpu, data, config, false).unwrap();
    for _ in 0..12 {
        pollster::block_on(plain.step()).unwrap();
        pollster::block_on(timed.timed_step()).unwrap();
    }
    pollster::block_on(plain.flush()).unwrap();
    let a = plain.model().store.params_flat().read_blocking().unwrap();
    let b = timed.model().store.params_flat().read_blocking().unwrap();
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "timed steps diverged from plain steps");
}
