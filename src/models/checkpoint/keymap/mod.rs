//! Tensor names of the original (LDM/SGM) layout → the names Easel's modules ask for
//! (diffusers' and transformers' layout), one file per component.
//!
//! Each mapping is a function of one source name (plus the few layout numbers detection
//! found), so a name that maps to nothing is an extra tensor and can be named as such. The
//! tables follow the structure of the original code (`input_blocks.N.M` with N counting
//! resnets, attentions and downsamplers in order), not a list of SD 1.5's names, so a model
//! of any depth maps the same way.

pub mod clip;
pub mod unet;
pub mod vae;

/// Which part of the source tensor a target name takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Whole,
    /// The `index`-th of `of` equal slices along the first axis (a fused q/k/v projection).
    Rows {
        index: usize,
        of: usize,
    },
    /// The transposed matrix (OpenCLIP's `text_projection`, applied as `x @ P`).
    Transposed,
}

/// One target name and the part of the source it takes.
pub type Target = (String, Part);

pub(super) fn whole(name: String) -> Vec<Target> {
    vec![(name, Part::Whole)]
}

/// `"3.rest"` → (3, "rest").
pub(super) fn index_and_rest(s: &str) -> Option<(usize, &str)> {
    let (n, rest) = s.split_once('.')?;
    Some((n.parse().ok()?, rest))
}
