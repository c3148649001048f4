//! SDXL against diffusers' `StableDiffusionXLPipeline`: both text encoders (their own
//! tokenizers, penultimate states, the pooled projection), the UNet's pooled-text and size
//! conditioning, every sampler, the zeroed empty negative, a second prompt with custom
//! micro-conditioning, and an SDXL-Turbo-style run; on the tiny random model that
//! tests/fixtures/make_sdxl.py builds and records.

mod common;

use candle_core::{Device, Tensor};
use common::*;
use easel::diffusion::schedulers::{Sampler, Spacing};
use easel::diffusion::{GenerateRequest, Pipeline, SdxlOptions, SizeConditioning};
use easel::lora::{AdapterSettings, LoraStack};

const MODEL: &str = "sdxl-tiny";

fn pipeline() -> Pipeline {
    Pipeline::load(&fixtures().join(MODEL), &Device::Cpu).unwrap_or_else(|e| panic!("{MODEL}: {e}"))
}

fn refs_dir() -> std::path::PathBuf {
    fixtures().join("refs").join(MODEL)
}

fn ids(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|i| i as u32)
        .collect()
}

#[test]
fn loads_as_sdxl_with_two_text_encoders() {
    let p = pipeline();
    assert!(p.model.is_sdxl());
    let second = p.model.text_encoder_2.as_ref().unwrap();
    assert_eq!(second.encoder.config.projection_dim, Some(24));
    assert_eq!(second.tokenizer.pad_id(), second.tokenizer.tokenize("!")[0]);
    assert_ne!(p.model.tokenizer.pad_id(), second.tokenizer.pad_id());
    let tt = p.model.unet.text_time().unwrap();
    assert_eq!((tt.pooled_dim, tt.time_dim), (24, 12));
    assert_eq!(p.model.vae.config.scaling_factor, 0.13025);
}

#[test]
fn text_encoders_match_diffusers() {
    let p = pipeline();
    let refs = load(&refs_dir().join("text.safetensors"));
    let tok_1 = &p.model.tokenizer;
    let tok_2 = &p.model.text_encoder_2.as_ref().unwrap().tokenizer;
    const PROMPT: &str = "a red circle on a blue background, highly detailed";
    const NEGATIVE: &str = "blurry, ugly";
    const PROMPT_2: &str = "a watercolor painting of a forest with a river";
    const NEGATIVE_2: &str = "low quality, deformed";
    for (text, key_1, key_2) in [
        (PROMPT, "prompt_ids", "prompt_ids_2"),
        (NEGATIVE, "negative_ids", "negative_ids_2"),
        ("", "empty_ids", "empty_ids_2"),
    ] {
        assert_eq!(tok_1.encode(text).ids, ids(&refs[key_1]), "{key_1}");
        assert_eq!(tok_2.encode(text).ids, ids(&refs[key_2]), "{key_2}");
    }
    assert_eq!(tok_2.encode(PROMPT_2).ids, ids(&refs["prompt_2_ids_2"]));
    assert_eq!(tok_2.encode(NEGATIVE_2).ids, ids(&refs["negative_2_ids_2"]));

    for (texts, texts_2, states, pooled) in [
        ([PROMPT], [PROMPT], "prompt_embeds", "pooled_prompt_embeds"),
        (
            [NEGATIVE],
            [NEGATIVE],
            "negative_prompt_embeds",
            "negative_pooled_prompt_embeds",
        ),
        (
            [PROMPT],
            [PROMPT_2],
            "dual_prompt_embeds",
            "dual_pooled_prompt_embeds",
        ),
        (
            [NEGATIVE],
            [NEGATIVE_2],
            "dual_negative_prompt_embeds",
            "dual_negative_pooled_prompt_embeds",
        ),
        (
            [""],
            [""],
            "empty_negative_prompt_embeds",
            "empty_negative_pooled_prompt_embeds",
        ),
    ] {
        let enc = p.encode_texts(&texts, &texts_2, 1).unwrap();
        let d = max_abs_diff(&enc.states, &refs[states]);
        assert!(d < TOL, "{states} differs by {d}");
        let d = max_abs_diff(enc.pooled.as_ref().unwrap(), &refs[pooled]);
        assert!(d < TOL, "{pooled} differs by {d}");
    }
    // diffusers conditions an unset negative on zeros (`force_zeros_for_empty_prompt`).
    for key in [
        "zeros_negative_prompt_embeds",
        "zeros_negative_pooled_prompt_embeds",
    ] {
        let max = refs[key].abs().unwrap().max_all().unwrap();
        assert_eq!(max.to_scalar::<f32>().unwrap(), 0.0, "{key}");
    }
}

/// A request built from the case's recorded `pipeline_kwargs`.
fn request(p: &Pipeline, case: &str) -> GenerateRequest {
    request_in(p, &refs_dir(), case)
}

/// [`request`] for a case recorded in `dir`.
fn request_in(p: &Pipeline, dir: &std::path::Path, case: &str) -> GenerateRequest {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{case}.json"))).unwrap())
            .unwrap();
    let kw = &meta["pipeline_kwargs"];
    let text = |k: &str| kw[k].as_str().map(str::to_string);
    let size = |k: &str| {
        kw[k].as_array().map(|v| {
            let n: Vec<usize> = v.iter().map(|x| x.as_u64().unwrap() as usize).collect();
            (n[1], n[0])
        })
    };
    let mut req = GenerateRequest::new(&p.model, &text("prompt").unwrap(), 0);
    req.negative_prompt = text("negative_prompt").unwrap_or_default();
    req.sdxl = SdxlOptions {
        prompt_2: text("prompt_2"),
        negative_prompt_2: text("negative_prompt_2"),
        size: SizeConditioning {
            original: size("original_size"),
            crop: size("crops_coords_top_left").unwrap_or_default(),
            target: size("target_size"),
        },
    };
    req.steps = kw["num_inference_steps"].as_u64().unwrap() as usize;
    req.cfg_scale = kw["guidance_scale"].as_f64().unwrap();
    req.width = kw["width"].as_u64().unwrap() as usize;
    req.height = kw["height"].as_u64().unwrap() as usize;
    req.sampler = meta["sampler"].as_str().unwrap().parse().unwrap();
    // diffusers built the sampler with `from_config` on SDXL's file, which says "leading": it
    // carries that spacing to every class (Easel only to the file's own class, Euler), unless
    // the case overrode it.
    let spacing = meta["scheduler_overrides"]["timestep_spacing"]
        .as_str()
        .unwrap_or("leading");
    req.spacing = req
        .sampler
        .takes_spacing()
        .then(|| spacing.parse::<Spacing>().unwrap());
    // The noise is in the case's file, or shared by the model's cases.
    let own = load(&dir.join(format!("{case}.safetensors"))).remove("init_noise");
    req.init_noise =
        own.or_else(|| Some(load(&refs_dir().join("init_noise.safetensors"))["noise"].clone()));
    // The micro-conditioning the UNet saw at the first step.
    let recorded: Vec<f32> = meta["add_time_ids"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter())
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let ours = req.sdxl.size.time_ids(req.width, req.height);
    assert_eq!(&recorded[recorded.len() - 6..], &ours, "{case}: time ids");
    req
}

fn check(case: &str) {
    let p = pipeline();
    let req = request(&p, case);
    check_request(&p, &refs_dir(), case, &req);
}

#[test]
fn ddim_matches_diffusers() {
    check("ddim");
}

#[test]
fn euler_matches_diffusers() {
    check("euler");
}

#[test]
fn euler_ancestral_matches_diffusers_with_its_noise() {
    check("euler_a");
}

#[test]
fn dpmpp_2m_karras_matches_diffusers() {
    check("dpmpp_2m_karras");
}

/// No negative prompt: the unconditional half is zeros, not the encoding of "".
#[test]
fn an_empty_negative_conditions_on_zeros_like_diffusers() {
    check("euler_zero_negative");
}

#[test]
fn second_prompts_and_micro_conditioning_match_diffusers() {
    check("euler_dual_microcond");
}

/// SDXL-Turbo's recipe: Euler a, trailing spacing, 2 steps, no guidance (no unconditional
/// pass), the ancestral noise replayed.
#[test]
fn turbo_style_run_matches_diffusers() {
    let p = pipeline();
    let req = request(&p, "turbo_euler_a");
    assert_eq!(req.sampler, Sampler::EulerAncestral);
    assert_eq!(req.spacing, Some(Spacing::Trailing));
    check_request(&p, &refs_dir(), "turbo_euler_a", &req);
}

/// Sizes off SDXL's latent grid (8 × 2² = 32 px for this model) are refused in one line.
#[test]
fn sizes_off_the_latent_grid_are_refused() {
    let p = pipeline();
    let mut req = GenerateRequest::new(&p.model, "x", 0);
    req.width = 100;
    let err = p.validate(&req).unwrap_err().to_string();
    assert!(
        err.starts_with("--width: 100 is not a multiple of"),
        "{err}"
    );
}

/// One SDXL adapter (UNet with LoCon convolutions, both text encoders, per-part alphas) in
/// kohya's SGM names (`lora_unet_input_blocks_4_1_…`, `lora_te1_…`, `lora_te2_…`) and in
/// diffusers/peft's, against `load_lora_weights`.
#[test]
fn lora_in_kohya_and_peft_formats_matches_diffusers() {
    let dir = fixtures().join("refs/lora");
    for file in ["sdxl-style.safetensors", "sdxl-style-peft.safetensors"] {
        let p = pipeline();
        let mut stack = LoraStack::new();
        stack
            .add(
                &p.model,
                &fixtures().join("loras").join(file),
                AdapterSettings::new(1.0),
            )
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let report = stack.apply(&p.model).unwrap();
        assert_eq!(report.layers, 300, "{file}: layers adapted");
        let req = request_in(&p, &dir, "sdxl-style_w1");
        check_request(&p, &dir, "sdxl-style_w1", &req);
    }
}

/// An SDXL adapter on an SD 1.x model and the reverse are refused whole, saying why.
#[test]
fn a_lora_for_another_family_is_refused() {
    let sd1 = Pipeline::load(&fixtures().join("sd-tiny-a"), &Device::Cpu).unwrap();
    let err = LoraStack::new()
        .add(
            &sd1.model,
            &fixtures().join("loras/sdxl-style.safetensors"),
            AdapterSettings::new(1.0),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("adapter for SDXL"), "{err}");
    assert!(!err.contains('\n'), "{err}");
    let sdxl = pipeline();
    let err = LoraStack::new()
        .add(
            &sdxl.model,
            &fixtures().join("loras/tiny-style.safetensors"),
            AdapterSettings::new(1.0),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("tiny-style.safetensors"), "{err}");
    assert!(err.contains("no such"), "{err}");
}

/// A single file in Stability's SGM layout (made from a tiny SDXL that keeps the real
/// conventions by diffusers' `convert_diffusers_to_original_sdxl.py`), identified from its keys
/// and run, against `StableDiffusionXLPipeline.from_single_file`: text states, a guided Euler
/// run and a Turbo-style one.
#[test]
fn single_file_in_the_sgm_layout_matches_from_single_file() {
    let file = fixtures().join("checkpoints/sdxl-tiny.safetensors");
    let p = Pipeline::load(&file, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
    assert!(p.model.is_sdxl());
    assert_eq!(p.model.description, "SDXL · fp16 · single file");
    assert_eq!(p.model.vae.config.scaling_factor, 0.13025);
    assert_eq!(p.model.text_encoder.num_layers(), 3);
    let dir = fixtures().join("refs/checkpoints");
    let refs = load(&dir.join("sdxl-tiny-euler.safetensors"));
    for (text, states, pooled) in [
        (
            "a red circle on a blue background, highly detailed",
            "prompt_embeds",
            "pooled_prompt_embeds",
        ),
        (
            "blurry, ugly",
            "negative_prompt_embeds",
            "negative_pooled_prompt_embeds",
        ),
    ] {
        let enc = p.encode_texts(&[text], &[text], 1).unwrap();
        let d = max_abs_diff(&enc.states, &refs[states]);
        assert!(d < TOL, "{states} differs by {d}");
        let d = max_abs_diff(enc.pooled.as_ref().unwrap(), &refs[pooled]);
        assert!(d < TOL, "{pooled} differs by {d}");
    }
    for case in ["sdxl-tiny-euler", "sdxl-tiny-euler-a-turbo"] {
        let req = request_in(&p, &dir, case);
        check_request(&p, &dir, case, &req);
    }
}

/// The CLI's SDXL flags reach the image and its PNG; bad values get one line.
#[test]
fn cli_second_prompt_and_size_flags_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.png");
    let model = fixtures().join(MODEL);
    let run = |extra: &[&str]| {
        let mut args = vec![
            "generate".to_string(),
            "--model".into(),
            model.display().to_string(),
            "--prompt".into(),
            "a red circle".into(),
            "--steps".into(),
            "2".into(),
            "--width".into(),
            "96".into(),
            "--height".into(),
            "64".into(),
            "-o".into(),
            out.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        std::process::Command::new(env!("CARGO_BIN_EXE_easel"))
            .args(&args)
            .output()
            .unwrap()
    };
    let ok = run(&[
        "--prompt-2",
        "a watercolor forest",
        "--original-size",
        "128x96",
        "--crop",
        "8,4",
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let meta = easel::gallery::png_meta::read_png_metadata(&out).unwrap();
    let sdxl = meta.easel.unwrap().sdxl.unwrap();
    assert_eq!(sdxl.prompt_2.as_deref(), Some("a watercolor forest"));
    assert_eq!(sdxl.size.original, Some((128, 96)));
    assert_eq!(sdxl.size.crop, (8, 4));
    assert_eq!(sdxl.size.target, None);
    for (flag, value) in [
        ("--original-size", "0x5"),
        ("--crop", "8"),
        ("--width", "100"),
    ] {
        let bad = run(&[flag, value]);
        let err = String::from_utf8_lossy(&bad.stderr);
        assert!(!bad.status.success(), "{flag} {value} was accepted");
        assert!(err.contains(flag.trim_start_matches("--")), "{flag}: {err}");
    }
}

/// The studio looks for TAESDXL for an SDXL model (TAESD has the same shapes but another
/// latent space: it would preview wrong colours without a word) and TAESD for the others.
#[test]
fn taesdxl_is_chosen_for_sdxl_models() {
    let lib = tempfile::tempdir().unwrap();
    let approx = lib.path().join("vae_approx");
    std::fs::create_dir(&approx).unwrap();
    let file = fixtures().join("taesd-tiny-original/taesd_decoder.safetensors");
    for name in ["taesd_decoder.safetensors", "taesdxl_decoder.safetensors"] {
        std::fs::copy(&file, approx.join(name)).unwrap();
    }
    let settings = easel::settings::Settings {
        model_dirs: vec![lib.path().to_path_buf()],
        ..Default::default()
    };
    for (model, want) in [
        (fixtures().join(MODEL), "taesdxl_decoder.safetensors"),
        (
            fixtures().join("checkpoints/sdxl-tiny.safetensors"),
            "taesdxl_decoder.safetensors",
        ),
        (fixtures().join("sd-tiny-a"), "taesd_decoder.safetensors"),
    ] {
        let found = settings.taesd_file(&model).unwrap();
        assert!(
            found.ends_with(want),
            "{}: {}",
            model.display(),
            found.display()
        );
    }
}

/// A single file named like SDXL-Turbo (its weights cannot tell) offers the Turbo recipe:
/// Euler a with trailing spacing, no guidance; the same file under another name does not.
#[test]
fn a_turbo_named_single_file_offers_its_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let turbo = dir.path().join("my-sdxl-turbo-merge.safetensors");
    std::fs::copy(fixtures().join("checkpoints/sdxl-tiny.safetensors"), &turbo).unwrap();
    let few = |path: &std::path::Path| {
        let p = Pipeline::load(path, &Device::Cpu).unwrap();
        easel::diffusion::pipeline::few_step_defaults(&p.model)
    };
    let offer = few(&turbo).expect("a Turbo offer");
    assert_eq!((offer.steps, offer.cfg_scale), (4, 0.0));
    assert_eq!(
        offer.sampler,
        Some((Sampler::EulerAncestral, Spacing::Trailing))
    );
    assert_eq!(
        few(&fixtures().join("checkpoints/sdxl-tiny.safetensors")),
        None
    );
}

/// A refiner folder (aesthetic-score conditioning) is refused by name, not run wrongly.
#[test]
fn a_refiner_folder_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("refiner");
    copy_dir(&fixtures().join(MODEL), &model);
    let index = model.join("model_index.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
    json["requires_aesthetics_score"] = true.into();
    std::fs::write(&index, json.to_string()).unwrap();
    let err = Pipeline::load(&model, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("SDXL refiner"), "{err}");
    assert!(err.contains("model_index.json"), "{err}");
}

/// SDXL single files take their prediction type and zero-SNR schedule the way SD 2.x files
/// do: from A1111's yaml beside them (v-prediction SDXL fine-tunes ship one).
#[test]
fn a_v_prediction_sdxl_file_is_read_from_its_yaml() {
    use easel::diffusion::schedulers::PredictionType;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sdxl-v.safetensors");
    std::fs::copy(fixtures().join("checkpoints/sdxl-tiny.safetensors"), &file).unwrap();
    std::fs::write(
        dir.path().join("sdxl-v.yaml"),
        "model:\n  params:\n    parameterization: \"v\"\n    zero_terminal_snr: true\n",
    )
    .unwrap();
    let p = Pipeline::load(&file, &Device::Cpu).unwrap();
    assert_eq!(
        p.model.scheduler.prediction_type,
        PredictionType::VPrediction
    );
    assert!(p.model.scheduler.rescale_betas_zero_snr);
}

/// A folder whose `model_index.json` turns `force_zeros_for_empty_prompt` off encodes an empty
/// negative as "" (diffusers' `negative_prompt=""`), as recorded.
#[test]
fn force_zeros_off_encodes_the_empty_negative() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("no-zeros");
    copy_dir(&fixtures().join(MODEL), &model);
    let index = model.join("model_index.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
    json["force_zeros_for_empty_prompt"] = false.into();
    std::fs::write(&index, json.to_string()).unwrap();
    let refs = load(&refs_dir().join("text.safetensors"));
    for (path, key) in [
        (model.as_path(), "empty_negative_prompt_embeds"),
        (
            fixtures().join(MODEL).as_path(),
            "zeros_negative_prompt_embeds",
        ),
    ] {
        let p = Pipeline::load(path, &Device::Cpu).unwrap();
        let mut req = GenerateRequest::new(&p.model, "a red circle", 0);
        (req.width, req.height) = (96, 64);
        let cond = p.conditioning_for(&req).unwrap();
        let uncond = cond.context.narrow(0, 0, 1).unwrap();
        let d = max_abs_diff(&uncond, &refs[key]);
        assert!(d < TOL, "{}: {key} differs by {d}", path.display());
    }
}

/// An SDXL textual-inversion file (`clip_l` + `clip_g`): each text encoder takes its own
/// vectors, as diffusers' `load_textual_inversion` called once per encoder
/// (tests/fixtures/make_prompts.py); the pooled projection follows.
#[test]
fn sdxl_embeddings_give_each_encoder_its_vectors() {
    let mut p = pipeline();
    let (found, skipped) = easel::prompt::embeddings::scan(&[fixtures().join("embeddings")]);
    assert!(skipped.is_empty(), "{skipped:?}");
    let xl = found.iter().find(|e| e.name == "tinyxl").expect("tinyxl");
    assert_eq!((xl.len(), xl.vectors.len()), (2, 2));
    p.embeddings = found;
    let refs = load(&fixtures().join("refs/prompts/embedding_sdxl.safetensors"));
    let prompt = "a tinyxl red circle, highly detailed";
    let enc = p.encode_texts(&[prompt], &[prompt], 1).unwrap();
    let d = max_abs_diff(&enc.states, &refs["states"]);
    assert!(d < TOL, "states differ by {d}");
    let d = max_abs_diff(enc.pooled.as_ref().unwrap(), &refs["pooled"]);
    assert!(d < TOL, "pooled differs by {d}");
    let used: Vec<&str> = p
        .embeddings_used(&[prompt])
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(used, ["tinyxl"]);
}
