//! Newton–Schulz coefficient sets and pre-normalizations, exactly as docs/optimizers.md §1.2–§1.3 list them.

use serde::{Deserialize, Serialize};

/// Which odd-quintic coefficients each Newton–Schulz step uses (docs/optimizers.md §1.3).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NsCoefficients {
    /// `(3.4445, −4.7750, 2.0315)` every step (KellerJordan/Muon). Maps σ ∈ [1e-3, 1] into ≈ [0.47, 1.20] in 5 steps.
    #[default]
    Keller,
    /// You Jiacheng's 5-step list (Dao-AILab `YOU_COEFFICIENTS`); steps past 5 reuse the last row.
    You,
    /// Polar Express paper list (`polar_express/basic.py`): 8 rows, the first 7 divided by the safety factor
    /// 1.01 `(a/1.01, b/1.01³, c/1.01⁵)`, the last `(15/8, −10/8, 3/8)` reused for further steps.
    PolarExpressPaper,
    /// modded-nanogpt's Polar Express list (safety already folded in); steps past 5 reuse the last row.
    PolarExpressModded,
    /// Dao-AILab `POLAR_EXPRESS_COEFFICIENTS`: the first five paper rows, each divided by safety 1.05.
    PolarExpressDao,
    /// Classical quintic Newton–Schulz `(15/8, −10/8, 3/8)`, converging to exactly 1.
    Classical,
    /// Your own rows; steps past the end reuse the last row.
    Custom(Vec<[f64; 3]>),
}

const KELLER: [f64; 3] = [3.4445, -4.7750, 2.0315];
const YOU: [[f64; 3]; 5] = [
    [4.0848, -6.8946, 2.9270],
    [3.9505, -6.3029, 2.6377],
    [3.7418, -5.5913, 2.3037],
    [2.8769, -3.1427, 1.2046],
    [2.8366, -3.0525, 1.2012],
];
const PE_PAPER: [[f64; 3]; 8] = [
    [8.28721201814563, -23.595886519098837, 17.300387312530933],
    [4.107059111542203, -2.9478499167379106, 0.5448431082926601],
    [3.9486908534822946, -2.908902115962949, 0.5518191394370137],
    [3.3184196573706015, -2.488488024314874, 0.51004894012372],
    [2.300652019954817, -1.6689039845747493, 0.4188073119525673],
    [1.891301407787398, -1.2679958271945868, 0.37680408948524835],
    [1.8750014808534479, -1.2500016453999487, 0.3750001645474248],
    [1.875, -1.25, 0.375],
];
const PE_MODDED: [[f64; 3]; 5] = [
    [8.156554524902461, -22.48329292557795, 15.878769915207462],
    [4.042929935166739, -2.808917465908714, 0.5000178451051316],
    [3.8916678022926607, -2.772484153217685, 0.5060648178503393],
    [3.285753657755655, -2.3681294933425376, 0.46449024233003106],
    [2.3465413258596377, -1.7097828382687081, 0.42323551169305323],
];
const CLASSICAL: [f64; 3] = [15.0 / 8.0, -10.0 / 8.0, 3.0 / 8.0];

fn safety([a, b, c]: [f64; 3], s: f64) -> [f64; 3] {
    [a / s, b / s.powi(3), c / s.powi(5)]
}

impl NsCoefficients {
    /// The rows used by `steps` iterations, in f64.
    pub fn rows(&self, steps: usize) -> Vec<[f64; 3]> {
        let table: Vec<[f64; 3]> = match self {
            NsCoefficients::Keller => vec![KELLER],
            NsCoefficients::You => YOU.to_vec(),
            NsCoefficients::PolarExpressPaper => PE_PAPER
                .iter()
                .enumerate()
                .map(|(i, &r)| if i + 1 < PE_PAPER.len() { safety(r, 1.01) } else { r })
                .collect(),
            NsCoefficients::PolarExpressModded => PE_MODDED.to_vec(),
            NsCoefficients::PolarExpressDao => PE_PAPER[..5].iter().map(|&r| safety(r, 1.05)).collect(),
            NsCoefficients::Classical => vec![CLASSICAL],
            NsCoefficients::Custom(rows) => rows.clone(),
        };
        (0..steps).map(|i| table[i.min(table.len().saturating_sub(1))]).collect()
    }

    /// The scalar map of one singular value through `steps` iterations: `σ ↦ aσ + bσ³ + cσ⁵`, composed.
    pub fn map_singular_value(&self, steps: usize, mut s: f64) -> f64 {
        for [a, b, c] in self.rows(steps) {
            s = a * s + b * s.powi(3) + c * s.powi(5);
        }
        s
    }
}

/// How the input is scaled before iterating (docs/optimizers.md §1.2): `X / max(‖X‖_F·mult + add, floor)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NsNormalization {
    /// `X / (‖X‖_F + 1e-7)` — KellerJordan/Muon, NorMuon, AdaMuon, Moonlight, Dao-AILab.
    #[default]
    Keller,
    /// `X / max(‖X‖_F, 1e-7)` — torch.optim.Muon.
    TorchClamp,
    /// `X / (1.01·‖X‖_F + 1e-7)` — NoahAmsel/PolarExpress.
    PolarExpress,
    /// `X / (1.02·‖X‖_F + 1e-6)` — modded-nanogpt.
    Modded,
    /// `X / (‖X‖_F + 1e-8)` — optax contrib muon, kvfrans/matrix-whitening.
    Optax,
    /// `X / max(‖X‖_F·mult + add, floor)`.
    Custom {
        /// Multiplier of the norm.
        mult: f32,
        /// Added to the scaled norm.
        add: f32,
        /// Lower clamp of the denominator.
        floor: f32,
    },
}

impl NsNormalization {
    /// `(mult, add, floor)` of the denominator `max(‖X‖·mult + add, floor)`.
    pub fn params(&self) -> (f32, f32, f32) {
        match *self {
            NsNormalization::Keller => (1.0, 1e-7, 0.0),
            NsNormalization::TorchClamp => (1.0, 0.0, 1e-7),
            NsNormalization::PolarExpress => (1.01, 1e-7, 0.0),
            NsNormalization::Modded => (1.02, 1e-6, 0.0),
            NsNormalization::Optax => (1.0, 1e-8, 0.0),
            NsNormalization::Custom { mult, add, floor } => (mult, add, floor),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn band(c: &NsCoefficients, steps: usize) -> (f64, f64) {
        let xs = (0..=3000).map(|i| 10f64.powf(-3.0 + 3.0 * i as f64 / 3000.0));
        xs.map(|x| c.map_singular_value(steps, x)).fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)))
    }

    #[test]
    fn bands_match_the_spec() {
        // §1.3: Keller ≈ [0.47, 1.20], You ≈ [0.475, 1.145], modded Polar Express ≈ [0.847, 1.141].
        let (lo, hi) = band(&NsCoefficients::Keller, 5);
        assert!((0.45..0.50).contains(&lo) && (1.18..1.22).contains(&hi), "keller {lo} {hi}");
        let (lo, hi) = band(&NsCoefficients::You, 5);
        assert!((0.46..0.49).contains(&lo) && (1.13..1.16).contains(&hi), "you {lo} {hi}");
        let (lo, hi) = band(&NsCoefficients::PolarExpressModded, 5);
        assert!((0.83..0.86).contains(&lo) && (1.13..1.15).contains(&hi), "modded {lo} {hi}");
    }

    #[test]
    fn tables_and_safety_factors() {
        let paper = NsCoefficients::PolarExpressPaper.rows(9);
        assert!((paper[0][0] - 8.28721201814563 / 1.01).abs() < 1e-15);
        assert_eq!(paper[7], [1.875, -1.25, 0.375]);
        assert_eq!(paper[8], [1.875, -1.25, 0.375]);
        let dao = NsCoefficients::PolarExpressDao.rows(5);
        assert!((dao[4][2] - 0.4188073119525673 / 1.05f64.powi(5)).abs() < 1e-15);
        assert_eq!(NsCoefficients::You.rows(7)[6], YOU[4]);
        assert!((NsCoefficients::Classical.map_singular_value(30, 0.3) - 1.0).abs() < 1e-12);
    }
}
