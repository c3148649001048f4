//! Quality of a scene model, measured: generate each ask with its own seed at the request
//! defaults (optionally another CFG scale), read the image back with [`check`], and count.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use image::RgbImage;

use super::{check, Reading, SceneAsk};
use crate::diffusion::{GenerateRequest, Outcome, Pipeline, PipelineError};

/// Counts over one set of asks; each count is of images where that attribute matched.
#[derive(Debug, Clone, Default)]
pub struct QualityReport {
    pub images: usize,
    pub colour: usize,
    pub background: usize,
    pub shape: usize,
    pub striped: usize,
    /// Wall time per image: text encoding, every step with its preview, decoding.
    pub secs_per_image: f64,
    /// One line per image where colour, background or shape was wrong.
    pub misses: Vec<String>,
}

impl QualityReport {
    pub fn share(&self, count: usize) -> f64 {
        count as f64 / self.images.max(1) as f64
    }

    /// `colour 0.92, background 0.96, shape 0.81, striped 0.00, 0.41 s/image`.
    pub fn summary(&self) -> String {
        format!(
            "colour {:.2}, background {:.2}, shape {:.2}, striped {:.2}, {:.3} s/image ({} images)",
            self.share(self.colour),
            self.share(self.background),
            self.share(self.shape),
            self.share(self.striped),
            self.secs_per_image,
            self.images
        )
    }
}

/// Generates `asks[i]` with seed `first_seed + i` and scores every image. `cfg` replaces the
/// default guidance scale; `on_image` sees each image with its reading (to save or show it).
pub fn measure(
    pipeline: &Pipeline,
    asks: &[SceneAsk],
    first_seed: u64,
    cfg: Option<f64>,
    on_image: &mut dyn FnMut(usize, &SceneAsk, &RgbImage, &Reading),
) -> Result<QualityReport, PipelineError> {
    let mut report = QualityReport::default();
    let cancel = AtomicBool::new(false);
    let start = Instant::now();
    for (i, ask) in asks.iter().enumerate() {
        let mut req = GenerateRequest::new(&pipeline.model, &ask.prompt(), first_seed + i as u64);
        if let Some(cfg) = cfg {
            req.cfg_scale = cfg;
        }
        let Outcome::Finished(out) = pipeline.generate(&req, &cancel, &mut |_| {})? else {
            continue; // nothing cancels here
        };
        let img =
            RgbImage::from_raw(out.width as u32, out.height as u32, out.rgb).ok_or_else(|| {
                PipelineError::InvalidRequest {
                    arg: "size",
                    msg: "decoded image has the wrong number of pixels".into(),
                }
            })?;
        let r = check(&img);
        report.images += 1;
        let colour = r.colour.as_deref() == Some(ask.colour.as_str());
        let background = r.background == ask.background;
        let shape = r.shape.as_deref() == Some(ask.shape.as_str());
        report.colour += colour as usize;
        report.background += background as usize;
        report.shape += shape as usize;
        report.striped += r.striped as usize;
        if !(colour && background && shape) {
            report.misses.push(format!(
                "seed {}: \"{}\" read as {r:?}",
                first_seed + i as u64,
                ask.prompt()
            ));
        }
        on_image(i, ask, &img, &r);
    }
    report.secs_per_image = start.elapsed().as_secs_f64() / report.images.max(1) as f64;
    Ok(report)
}
