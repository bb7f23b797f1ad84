//! f64 CPU references of the nn ops, written like the equations (row-major flat vectors).

pub fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize, ta: bool, tb: bool) -> Vec<f64> {
    let at = |i: usize, p: usize| if ta { a[p * m + i] } else { a[i * k + p] };
    let bt = |p: usize, j: usize| if tb { b[j * k + p] } else { b[p * n + j] };
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k).map(|p| at(i, p) * bt(p, j)).sum();
        }
    }
    out
}

pub fn erf(x: f64) -> f64 {
    // Abramowitz & Stegun 7.1.26, as the kernel (|error| ≤ 1.5e-7).
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    x.signum() * (1.0 - poly * (-a * a).exp())
}

pub fn gelu(x: &[f64]) -> Vec<f64> {
    x.iter().map(|&v| 0.5 * v * (1.0 + erf(v / 2f64.sqrt()))).collect()
}

pub fn layer_norm(x: &[f64], w: &[f64], b: Option<&[f64]>, c: usize, eps: f64) -> Vec<f64> {
    let mut out = vec![0.0; x.len()];
    for (row, o) in x.chunks(c).zip(out.chunks_mut(c)) {
        let mean = row.iter().sum::<f64>() / c as f64;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / c as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        for j in 0..c {
            o[j] = (row[j] - mean) * rstd * w[j] + b.map_or(0.0, |b| b[j]);
        }
    }
    out
}

pub fn embedding(ids: &[u32], table: &[f64], pos: &[f64], block: usize, c: usize) -> Vec<f64> {
    let mut out = vec![0.0; ids.len() * c];
    for (n, &t) in ids.iter().enumerate() {
        for j in 0..c {
            out[n * c + j] = table[t as usize * c + j] + pos[(n % block) * c + j];
        }
    }
    out
}

pub fn causal_attention(qkv: &[f64], batch: usize, t: usize, heads: usize, c: usize) -> Vec<f64> {
    causal_attention_masked(qkv, batch, t, heads, c, &|_| 1.0)
}

/// Causal attention whose probability at index `((b·heads + h)·t + i)·t + j` of P multiplies v times `mask(index)`
/// (dropout: 0 or 1/(1 − p)).
pub fn causal_attention_masked(
    qkv: &[f64],
    batch: usize,
    t: usize,
    heads: usize,
    c: usize,
    mask: &dyn Fn(usize) -> f64,
) -> Vec<f64> {
    let d = c / heads;
    let at = |b: usize, i: usize, part: usize, h: usize, k: usize| qkv[(b * t + i) * 3 * c + part * c + h * d + k];
    let mut out = vec![0.0; batch * t * c];
    for b in 0..batch {
        for h in 0..heads {
            for i in 0..t {
                let s: Vec<f64> = (0..=i)
                    .map(|j| (0..d).map(|k| at(b, i, 0, h, k) * at(b, j, 1, h, k)).sum::<f64>() / (d as f64).sqrt())
                    .collect();
                let m = s.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
                let z: f64 = e.iter().sum();
                let row = ((b * heads + h) * t + i) * t;
                for k in 0..d {
                    out[(b * t + i) * c + h * d + k] =
                        (0..=i).map(|j| e[j] / z * mask(row + j) * at(b, j, 2, h, k)).sum();
                }
            }
        }
    }
    out
}

pub fn cross_entropy(logits: &[f64], targets: &[u32], v: usize) -> f64 {
    let n = targets.len();
    let mut total = 0.0;
    for (row, &t) in logits.chunks(v).zip(targets) {
        let m = row.iter().cloned().fold(f64::MIN, f64::max);
        let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        total += lse - row[t as usize];
    }
    total / n as f64
}
