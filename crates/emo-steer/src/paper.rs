//! The paper's constants (Llama-3.2-3B-Instruct, 28 layers), each in one place, and their scaling to a
//! model of another depth (round to nearest, as spec section 0 says).
use emo_model::config::scale_layer;

/// Depth of the paper's model: every layer number below is given for it.
pub const REFERENCE_LAYERS: usize = 28;

/// Residual steering acts on `hook_resid_post` of layers 11..=20 (spec section 6).
pub const STEERING_LAYERS: (usize, usize) = (11, 20);

/// The reference direction v_ref sums the unit directions of layers 21..=25, both sites (spec section 8).
pub const REFERENCE_DIRECTION_LAYERS: (usize, usize) = (21, 25);

/// The layers the paper's PCA maps (Fig. 2) show.
pub const PCA_LAYERS: [usize; 4] = [0, 9, 12, 27];

/// The paper's steering strength.
pub const STEERING_ALPHA: f64 = 8.0;

/// The injection strengths of the sublayer-importance sweep (spec section 8).
pub const IMPORTANCE_ALPHAS: [f64; 4] = [0.1, 0.3, 0.5, 0.7];

/// The paper's Table 1 / Appendix C (Llama-3.2-3B-Instruct, GPT-4o-mini judge): per emotion in
/// `Emotion::ALL` order, then overall.
pub const PUBLISHED_ACCURACY: [(&str, [f64; 7]); 4] = [
    ("prompting, SEV", [99.58, 99.38, 97.92, 100.00, 97.29, 98.96, 98.85]),
    ("prompting, test", [100.0, 99.79, 97.49, 99.58, 97.50, 99.38, 98.96]),
    ("steering, test", [93.33, 96.04, 99.58, 96.88, 67.71, 93.75, 91.22]),
    // Table 2's per-valence rows averaged per emotion; the text's overall figure.
    ("circuit modulation, test", [98.12, 100.0, 99.79, 100.0, 100.0, 100.0, 99.65]),
];

/// The paper's Table 2: circuit-modulation accuracy on the test set per valence (`Valence::ALL` order:
/// positive, neutral, negative) and emotion (`Emotion::ALL` order).
pub const PUBLISHED_MODULATION: [[f64; 6]; 3] = [
    [98.75, 100.00, 100.00, 100.00, 100.00, 100.00],
    [98.12, 100.00, 100.00, 100.00, 100.00, 100.00],
    [97.50, 100.00, 99.38, 100.00, 100.00, 100.00],
];

/// The paper's overlap of emotions' circuits (mean and standard deviation of the Jaccard index over pairs):
/// neurons, then heads.
pub const PUBLISHED_CIRCUIT_OVERLAP: [(f64, f64); 2] = [(0.056, 0.033), (0.454, 0.047)];

/// A layer of the paper's model at the depth `n_layers`.
pub fn scaled(layer: usize, n_layers: usize) -> usize {
    scale_layer(layer, n_layers, REFERENCE_LAYERS)
}

/// An inclusive layer range of the paper's model at the depth `n_layers`.
pub fn scaled_range(range: (usize, usize), n_layers: usize) -> (usize, usize) {
    (scaled(range.0, n_layers), scaled(range.1, n_layers))
}
