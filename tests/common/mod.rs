//! Helpers shared by the integration tests: fixture paths and tensor comparison.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};
use easel::diffusion::noise::NoiseSource;
use easel::diffusion::schedulers::Sampler;
use easel::diffusion::{GenerateRequest, Outcome, Pipeline};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

pub fn load(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Largest absolute difference between two tensors of the same shape (as f32).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap();
    let b = b
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Largest per-channel difference between two 8-bit images.
pub fn max_u8_diff(a: &[u8], b: &[u8]) -> u8 {
    assert_eq!(a.len(), b.len(), "image sizes differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

/// A PNG's pixels as RGB8.
pub fn read_rgb(path: &Path) -> (u32, u32, Vec<u8>) {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    (img.width(), img.height(), img.into_raw())
}

/// Copies a fixture model into a temp dir so a test can break it.
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), to).unwrap();
        }
    }
}

/// Drops a file on the studio window, as a file manager would, and draws one frame (with no
/// pointer position, as on X11).
pub fn drop_file(h: &mut egui_kittest::Harness<'_, easel::app::StudioApp>, path: &Path) {
    drop_file_at(h, path, None);
}

/// [`drop_file`] with the pointer at `at` (window coordinates), where the file lands.
pub fn drop_file_at(
    h: &mut egui_kittest::Harness<'_, easel::app::StudioApp>,
    path: &Path,
    at: Option<egui::Pos2>,
) {
    #[derive(Debug)]
    struct Dropped(PathBuf);
    impl egui::DroppedFile for Dropped {
        fn path(&self) -> &Path {
            &self.0
        }
        fn bytes(&self) -> Result<Vec<u8>, String> {
            std::fs::read(&self.0).map_err(|e| e.to_string())
        }
    }
    if let Some(at) = at {
        h.input_mut().events.push(egui::Event::PointerMoved(at));
        h.step();
    }
    h.input_mut()
        .dropped_files
        .push(std::sync::Arc::new(Dropped(path.to_path_buf())));
    h.step();
}

/// Text states and latents: f32 on both sides, so 1e-4 absolute…
pub const TOL: f32 = 1e-4;

/// …except where diffusers' own f32 result is further than that from its f64 run (sigma-space
/// samplers carry latents of magnitude ~50, where one f32 ulp is ~4e-6): there two correct f32
/// implementations may each be that far from the exact value, so allow twice diffusers' own error.
/// Runs recorded without an f64 twin (LCM's, whose latents stay near unit scale) get 1e-4.
fn step_tolerance(refs: &std::collections::HashMap<String, Tensor>, i: usize) -> f32 {
    let Some(exact) = refs.get(&format!("latents64_{i}")) else {
        return TOL;
    };
    TOL.max(2.0 * max_abs_diff(&refs[&format!("latents_{i}")], exact))
}

/// Replays the noise diffusers drew, in order.
struct Replay(VecDeque<Tensor>);

impl NoiseSource for Replay {
    fn randn(&mut self, shape: &[usize], _device: &Device) -> candle_core::Result<Tensor> {
        let t = self
            .0
            .pop_front()
            .expect("the sampler drew more noise than diffusers did");
        assert_eq!(t.dims(), shape, "noise shape");
        Ok(t)
    }
}

/// Runs one case recorded by the fixture scripts (`<dir>/<case>.json` + `.safetensors` +
/// `.png`) from `init` noise and checks every step's latents and the final image against it.
pub fn check_recorded_run(p: &Pipeline, dir: &Path, case: &str, init: Tensor, clip_skip: usize) {
    let mut req = recorded_request(p, &read_case(dir, case));
    req.clip_skip = clip_skip;
    req.init_noise = Some(init);
    check_request(p, dir, case, &req);
}

/// A case's `<dir>/<case>.json`, as the fixture scripts wrote it.
pub fn read_case(dir: &Path, case: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{case}.json"))).unwrap())
        .unwrap()
}

/// The request a recorded case describes: prompts, steps, guidance, size and sampler.
pub fn recorded_request(p: &Pipeline, meta: &serde_json::Value) -> GenerateRequest {
    let mut req = GenerateRequest::new(&p.model, meta["prompt"].as_str().unwrap(), 0);
    req.negative_prompt = meta["negative_prompt"].as_str().unwrap().to_string();
    req.steps = meta["steps"].as_u64().unwrap() as usize;
    req.cfg_scale = meta["guidance_scale"].as_f64().unwrap();
    req.width = meta["width"].as_u64().unwrap() as usize;
    req.height = meta["height"].as_u64().unwrap() as usize;
    req.sampler = meta["sampler"]
        .as_str()
        .unwrap()
        .parse::<Sampler>()
        .unwrap();
    req
}

/// Runs `req` (with `init_noise` set) and checks every step's latents and the final image
/// against the case recorded in `<dir>/<case>.safetensors` and `.png`.
pub fn check_request(p: &Pipeline, dir: &Path, case: &str, req: &GenerateRequest) {
    let model = dir
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let refs = load(&dir.join(format!("{case}.safetensors")));
    let mut noise = Replay(
        (0..req.steps)
            .filter_map(|i| refs.get(&format!("noise_{i}")).cloned())
            .collect(),
    );
    let mut worst = 0f32;
    let mut steps_seen = 0;
    let outcome = p
        .generate_with_noise(req, &mut noise, &AtomicBool::new(false), &mut |s| {
            let i = s.step - 1;
            let d = max_abs_diff(s.latents, &refs[&format!("latents_{i}")]);
            let tol = step_tolerance(&refs, i);
            assert!(
                d < tol,
                "{model}/{case}: latents after step {i} differ by {d} (allowed {tol})"
            );
            worst = worst.max(d);
            steps_seen += 1;
        })
        .unwrap();
    // img2img runs only the schedule's last steps; diffusers recorded each one it ran.
    let recorded = refs.keys().filter(|k| k.starts_with("latents_")).count();
    assert_eq!(steps_seen, recorded);
    assert!(
        noise.0.is_empty(),
        "{model}/{case}: diffusers drew {} more noise tensors",
        noise.0.len()
    );
    let Outcome::Finished(image) = outcome else {
        panic!("not finished")
    };
    let d = max_abs_diff(&image.pixels, &refs["image"]);
    assert!(
        d < 2.0 / 255.0,
        "{model}/{case}: decoded image differs by {d}"
    );
    let (w, h, png) = read_rgb(&dir.join(format!("{case}.png")));
    assert_eq!((w as usize, h as usize), (image.width, image.height));
    let d8 = max_u8_diff(&image.rgb, &png);
    assert!(d8 <= 2, "{model}/{case}: 8-bit image differs by {d8}/255");
    eprintln!("{model}/{case}: worst latent diff {worst:.2e}, image diff {d:.2e}, 8-bit diff {d8}");
}
