//! The VAE's encoder against diffusers: `AutoencoderKL.encode(image).latent_dist.mean ×
//! scaling_factor` for a fixed image (a batch of two, non-square), recorded for both tiny models
//! by tests/fixtures/make_fixtures.py (`vae`). The decoder is checked by every pipeline reference
//! test, which compares the final image.

mod common;

use candle_core::Device;
use common::*;
use easel::diffusion::Pipeline;

#[test]
fn encode_matches_diffusers_latent_mean() {
    // sd-tiny-a: two levels, one resnet each, 32 groups; sd-tiny-b: three levels of 16/32/32
    // channels (a conv_shortcut), two resnets each, 8 groups.
    for model in ["sd-tiny-a", "sd-tiny-b"] {
        let p = Pipeline::load(&fixtures().join(model), &Device::Cpu)
            .unwrap_or_else(|e| panic!("{model}: {e}"));
        let refs = load(
            &fixtures()
                .join("refs")
                .join(model)
                .join("vae_encode.safetensors"),
        );
        let vae = &p.model.vae;
        let latents = vae.encode(&refs["image"]).unwrap();
        let d = max_abs_diff(&latents, &refs["latents"]);
        // Compared before scaling too: the mean itself is within TOL of diffusers'.
        let unscaled = d / vae.config.scaling_factor as f32;
        assert!(
            unscaled < TOL,
            "{model}: encoded latents differ by {d} ({unscaled} before scaling)"
        );
        eprintln!("{model}: vae encode diff {d:.2e} ({unscaled:.2e} before scaling)");
    }
}

#[test]
fn encode_gives_latents_the_decoder_takes() {
    let p = Pipeline::load(&fixtures().join("sd-tiny-b"), &Device::Cpu).unwrap();
    let refs = load(
        &fixtures()
            .join("refs")
            .join("sd-tiny-b")
            .join("vae_encode.safetensors"),
    );
    let image = &refs["image"];
    let latents = p.model.vae.encode(image).unwrap();
    let f = p.model.vae.config.downscale_factor();
    let (b, _, h, w) = image.dims4().unwrap();
    assert_eq!(
        latents.dims(),
        [b, p.model.vae.config.latent_channels, h / f, w / f]
    );
    assert_eq!(p.model.vae.decode(&latents).unwrap().dims(), image.dims());
}
