//! Checking a request before any work starts: every setting against the model, the sizes of a
//! starting picture and mask, hires fix's second pass, and the memory the job needs.

use super::hires;
use super::init_image;
use super::memory::{self, VaeTiling};
use super::pipeline::{GenerateRequest, Pipeline, PipelineError, MAX_SIDE, MAX_STEPS};

impl Pipeline {
    /// Checks a request against the model before any work starts.
    pub fn validate(&self, req: &GenerateRequest) -> Result<(), PipelineError> {
        self.plan(req).map(|_| ())
    }

    /// [`Self::validate`], returning whether the VAE is to decode in tiles.
    pub(super) fn plan(&self, req: &GenerateRequest) -> Result<bool, PipelineError> {
        let invalid = |arg, msg: String| Err(PipelineError::InvalidRequest { arg, msg });
        if req.steps == 0 || req.steps > MAX_STEPS.min(self.model.scheduler.num_train_timesteps) {
            return invalid(
                "steps",
                format!(
                    "{} is outside 1..={}",
                    req.steps,
                    MAX_STEPS.min(self.model.scheduler.num_train_timesteps)
                ),
            );
        }
        self.scheduler(req)?;
        let layers = self.model.text_encoder.num_layers();
        if req.clip_skip == 0 || req.clip_skip > layers {
            return invalid(
                "clip-skip",
                format!(
                    "{} is outside 1..={layers} (this text encoder's layers)",
                    req.clip_skip
                ),
            );
        }
        if !req.cfg_scale.is_finite() {
            return invalid(
                "cfg",
                format!("{} is not a finite number (use 0..=100)", req.cfg_scale),
            );
        }
        if req.cfg_scale < 0.0 || req.cfg_scale > 100.0 {
            return invalid("cfg", format!("{} is outside 0..=100", req.cfg_scale));
        }
        let multiple = self.model.size_multiple();
        for (arg, v) in [("width", req.width), ("height", req.height)] {
            if v == 0 || v > MAX_SIDE {
                return invalid(arg, format!("{v} is outside 1..={MAX_SIDE}"));
            }
            if v % multiple != 0 {
                return invalid(
                    arg,
                    format!(
                        "{v} is not a multiple of {multiple}, which this model needs (try {})",
                        round_to(v, multiple)
                    ),
                );
            }
        }
        let vae_tiled = self.check_memory(req)?;
        if let Some(init) = &req.init_image {
            let s = init.strength;
            if !(s.is_finite() && s > 0.0 && s <= 1.0) {
                return invalid("strength", format!("{s} is outside 0 < strength ≤ 1"));
            }
            if init_image::first_step(req.steps, s).is_none() {
                return invalid(
                    "strength",
                    format!(
                        "{s} of {} steps runs no step (raise it to at least {:.3}, or the steps)",
                        req.steps,
                        init_image::min_strength(req.steps)
                    ),
                );
            }
            let (w, h) = init.image.dimensions();
            if req.only_masked.is_none() && (w as usize, h as usize) != (req.width, req.height) {
                return invalid(
                    "init-image",
                    format!(
                        "the picture is {w}×{h}, the request {}×{}",
                        req.width, req.height
                    ),
                );
            }
        }
        if let Some(mask) = &req.mask {
            if req.init_image.is_none() {
                return invalid(
                    "mask",
                    "a mask needs the picture it covers (--init-image)".to_string(),
                );
            }
            let (w, h) = mask.image.dimensions();
            // Only masked: the mask lies on the picture, at its size.
            let want = match (&req.init_image, req.only_masked) {
                (Some(init), Some(_)) => init.image.dimensions(),
                _ => (req.width as u32, req.height as u32),
            };
            if (w, h) != want {
                return invalid(
                    "mask",
                    format!("the mask is {w}×{h}, it must be {}×{}", want.0, want.1),
                );
            }
            if mask.coverage() == 0.0 {
                return invalid(
                    "mask",
                    "the mask is all black: nothing to repaint (white marks what changes)"
                        .to_string(),
                );
            }
        }
        if req.only_masked.is_some() && (req.mask.is_none() || req.hires.is_some()) {
            return invalid(
                "inpaint-area",
                "\"only masked\" needs a mask, and no hires fix".to_string(),
            );
        }
        if let Some(h) = &req.hires {
            if !(h.scale.is_finite() && h.scale > 1.0 && h.scale <= hires::MAX_SCALE) {
                return invalid(
                    "hires-scale",
                    format!("{} is outside 1 < scale ≤ {}", h.scale, hires::MAX_SCALE),
                );
            }
            let d = h.denoise;
            if !(d.is_finite() && d > 0.0 && d <= 1.0) {
                return invalid("hires-denoise", format!("{d} is outside 0 < strength ≤ 1"));
            }
            let big = self.hires_request(req, h);
            if init_image::first_step(big.steps, d).is_none() {
                return invalid(
                    "hires-denoise",
                    format!(
                        "{d} of {} steps runs no step (raise it to at least {:.3}, or the steps)",
                        big.steps,
                        init_image::min_strength(big.steps)
                    ),
                );
            }
            // The second pass's size, steps and memory, named as the hires setting's.
            self.plan(&big).map_err(|e| match e {
                PipelineError::InvalidRequest { arg, msg } => PipelineError::InvalidRequest {
                    arg: if arg == "steps" {
                        "hires-steps"
                    } else {
                        "hires-scale"
                    },
                    msg: format!(
                        "the second pass at {}×{}, {} steps: {arg}: {msg}",
                        big.width, big.height, big.steps
                    ),
                },
                other => other,
            })?;
        }
        if let Some(noise) = &req.init_noise {
            let want = self.latent_shape(req);
            if noise.dims() != want {
                return invalid(
                    "init-noise",
                    format!(
                        "tensor has shape {:?}, this model and size need {:?}",
                        noise.dims(),
                        want
                    ),
                );
            }
        }
        Ok(vae_tiled)
    }

    /// Refuses a size whose working memory (beyond the loaded weights) the machine does not
    /// have free now, naming a size that fits; see [`memory`]. Returns whether the VAE is to
    /// decode in tiles: as asked, or with auto when only the tiled decode fits. CPU only: GPU
    /// memory is not what `MemAvailable` measures (auto then does not tile).
    fn check_memory(&self, req: &GenerateRequest) -> Result<bool, PipelineError> {
        let Some(available) = memory::available_bytes().filter(|_| self.model.device.is_cpu())
        else {
            return Ok(req.vae_tiling == VaeTiling::On);
        };
        let vae_channels = &self.model.vae.config.block_out_channels;
        let shape = memory::Shape {
            vae_scale: self.model.vae_scale(),
            unet_channels: self
                .model
                .unet
                .config
                .block_out_channels
                .first()
                .copied()
                .unwrap_or(320),
            vae_channels: vae_channels.first().copied().unwrap_or(128),
            vae_latent_channels: vae_channels.last().copied().unwrap_or(512),
        };
        let batch = if self.guided_by_cfg(req) { 2 } else { 1 };
        let multiple = self.model.size_multiple();
        memory::plan(
            shape,
            req.width,
            req.height,
            batch,
            multiple,
            available,
            req.vae_tiling,
        )
        .map_err(|msg| PipelineError::InvalidRequest { arg: "width", msg })
    }
}

fn round_to(v: usize, multiple: usize) -> usize {
    (((v + multiple / 2) / multiple) * multiple).max(multiple)
}
