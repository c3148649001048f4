//! `easel bench --gallery`: what the gallery costs.
//!
//! - Query: top-10 over N stored 512-d embeddings (default 100k), written to a real index and
//!   loaded back, median over many queries, text encoding excluded (timed on its own).
//! - Indexing throughput: images/s through the whole pipeline (walk, read, hash, decode,
//!   preprocess, embed, commit) on ViT-B/32-architecture random weights, made here once in
//!   transformers' layout so `benches/clip_index_vs_transformers.py` can time transformers'
//!   `CLIPModel` on the very same weights and files.
//! - Index size on disk per image, for both indexes.
//!
//! Speed depends on the architecture, not on the weight values, which is why random weights do.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use candle_nn::{Init, VarBuilder, VarMap};
use candle_transformers::models::clip::text_model::{
    Activation, ClipTextConfig, ClipTextTransformer,
};
use candle_transformers::models::clip::vision_model::{ClipVisionConfig, ClipVisionTransformer};
use clap::Args;
use rand::{Rng, SeedableRng};

use crate::gallery::index::{FileRow, GalleryIndex};
use crate::gallery::{index_folders, ClipEmbedder, Filter, IndexOptions, Library};

#[derive(Args, Debug, Clone)]
pub struct GalleryBenchArgs {
    /// Benchmark the gallery (query, indexing throughput, index size) instead of generation.
    #[arg(long)]
    pub gallery: bool,
    /// A CLIP folder to benchmark instead of random ViT-B/32 weights.
    #[arg(long, value_name = "DIR")]
    pub gallery_clip: Option<PathBuf>,
    /// Images to index for the throughput measurement.
    #[arg(long, default_value_t = 64)]
    pub gallery_images: usize,
    /// Stored embeddings to search for the query measurement.
    #[arg(long, default_value_t = 100_000)]
    pub gallery_embeddings: usize,
}

/// OpenAI ViT-B/32's config.json, in the shape transformers writes it.
const VIT_B32_CONFIG: &str = r#"{"architectures":["CLIPModel"],"model_type":"clip","projection_dim":512,
"logit_scale_init_value":2.6592,
"text_config":{"vocab_size":49408,"hidden_size":512,"intermediate_size":2048,"num_hidden_layers":12,
"num_attention_heads":8,"max_position_embeddings":77,"hidden_act":"quick_gelu","layer_norm_eps":1e-05,
"bos_token_id":49406,"eos_token_id":49407,"pad_token_id":1,"model_type":"clip_text_model"},
"vision_config":{"hidden_size":768,"intermediate_size":3072,"num_hidden_layers":12,"num_attention_heads":12,
"num_channels":3,"image_size":224,"patch_size":32,"hidden_act":"quick_gelu","layer_norm_eps":1e-05,
"model_type":"clip_vision_model"}}"#;

const OPENAI_PREPROCESSOR: &str = r#"{"crop_size":{"height":224,"width":224},"do_center_crop":true,
"do_convert_rgb":true,"do_normalize":true,"do_rescale":true,"do_resize":true,
"image_mean":[0.48145466,0.4578275,0.40821073],"image_processor_type":"CLIPImageProcessor",
"image_std":[0.26862954,0.26130258,0.27577711],"resample":3,"rescale_factor":0.00392156862745098,
"size":{"shortest_edge":224}}"#;

pub fn run(args: &GalleryBenchArgs, work_dir: Option<&Path>, json: bool) -> Result<()> {
    let work = work_dir.map_or_else(
        || std::env::temp_dir().join("easel-bench"),
        Path::to_path_buf,
    );
    let device = Device::Cpu;
    let clip_dir = match &args.gallery_clip {
        Some(d) => d.clone(),
        None => {
            let dir = work.join("clip-vit-b32-random");
            if !dir.join("config.json").is_file() {
                eprintln!(
                    "making random ViT-B/32 CLIP weights in {} (once)…",
                    dir.display()
                );
                make_vit_b32_random(&dir).with_context(|| format!("making {}", dir.display()))?;
            }
            dir
        }
    };
    let images_dir = work.join(format!("gallery-images-{}", args.gallery_images));
    if !images_dir.join(".complete").is_file() {
        eprintln!(
            "writing {} test images to {} (once)…",
            args.gallery_images,
            images_dir.display()
        );
        make_images(&images_dir, args.gallery_images)?;
    }

    let t = Instant::now();
    let embedder = ClipEmbedder::load(&clip_dir, &device)?;
    let load_ms = ms(t);

    // Text encoding, on its own.
    let text_ms = median(10, || {
        embedder.embed_text("a photograph of an astronaut riding a horse on the moon")?;
        Ok(())
    })?;

    // Indexing throughput: a fresh index each run, warm model (one batch embedded first).
    let warm = vec![vec![0f32; embedder.preprocess().pixels_len()]; 16];
    embedder.embed_pixels(&warm)?;
    let db = work.join("bench-index.sqlite");
    remove_db(&db)?;
    let (mut index, _) = GalleryIndex::open(&db)?;
    let t = Instant::now();
    let summary = index_folders(
        &mut index,
        &embedder,
        std::slice::from_ref(&images_dir),
        &IndexOptions::default(),
        &AtomicBool::new(false),
        &mut |_| {},
    )?;
    let index_s = t.elapsed().as_secs_f64();
    drop(index);
    let indexed = summary.embedded + summary.reused;
    let images_per_s = indexed as f64 / index_s;
    let small_db_bytes = db_bytes(&db)?;

    // Query over N stored embeddings.
    let (query_ms, load_index_ms, big_db_bytes, n) = bench_query(&work, args.gallery_embeddings)?;

    let threads = candle_core::utils::get_num_threads();
    let per_image_small = small_db_bytes as f64 / indexed.max(1) as f64;
    let per_image_big = big_db_bytes as f64 / n.max(1) as f64;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "clip_model": clip_dir, "threads": threads, "model_load_ms": load_ms,
                "text_encode_ms": text_ms,
                "index_images": indexed, "index_seconds": index_s, "index_images_per_s": images_per_s,
                "images_dir": images_dir,
                "query_embeddings": n, "query_top10_ms_median": query_ms, "index_load_ms": load_index_ms,
                "index_bytes_per_image": per_image_big, "index_bytes_per_image_small": per_image_small,
            })
        );
    } else {
        println!("CLIP {}  {threads} threads", clip_dir.display());
        println!("model load                     {load_ms:>10.1} ms");
        println!("text encode (one query)        {text_ms:>10.1} ms (median)");
        println!(
            "indexing ({indexed} images)        {images_per_s:>10.2} images/s ({index_s:.2} s)"
        );
        println!("query, top 10 of {n}       {query_ms:>10.2} ms (median, text encoding excluded)");
        println!("loading {n} embeddings       {load_index_ms:>10.1} ms");
        println!("index size per image           {per_image_big:>10.0} bytes ({n} images), {per_image_small:.0} bytes ({indexed} images)");
    }
    Ok(())
}

/// Writes `n` unit 512-d random embeddings with realistic rows to an index, loads them back
/// and times top-10 queries. Returns (median query ms, load ms, db bytes, n).
fn bench_query(work: &Path, n: usize) -> Result<(f64, f64, u64, usize)> {
    const DIM: usize = 512;
    let db = work.join(format!("bench-query-{n}.sqlite"));
    let model_id = "bench:random-512";
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let unit_vec = |rng: &mut rand::rngs::StdRng| {
        let v: Vec<f32> = (0..DIM).map(|_| rng.random::<f32>() - 0.5).collect();
        crate::gallery::embedder::unit(v)
    };
    if !db.is_file() {
        eprintln!("writing {n} embeddings to {} (once)…", db.display());
        let (mut index, _) = GalleryIndex::open(&db)?;
        let mut done = 0;
        while done < n {
            let batch = (n - done).min(2000);
            let mut rows = Vec::with_capacity(batch);
            let mut vectors = Vec::with_capacity(batch);
            for i in done..done + batch {
                let hash = format!("{:064x}", i as u128 * 0x9e37_79b9_7f4a_7c15);
                rows.push(FileRow {
                    path: format!(
                        "/home/user/Pictures/easel/2026-11-{:02}/{i:06}-{}.png",
                        i % 28 + 1,
                        1_000_000_007u64 * i as u64 % 4_294_967_291
                    ),
                    size: 412_345,
                    mtime_ns: 1_790_000_000_000_000_000 + i as i64,
                    hash: hash.clone(),
                    width: 512,
                    height: 512,
                    gen_model: Some("v1-5-pruned-emaonly".into()),
                    prompt: Some(
                        "a photograph of an astronaut riding a horse on the moon, highly detailed"
                            .into(),
                    ),
                });
                vectors.push((hash, unit_vec(&mut rng)));
            }
            index.commit_batch(model_id, &vectors, &rows, &[])?;
            done += batch;
        }
    }
    let index = GalleryIndex::open_existing(&db)?;
    let t = Instant::now();
    let lib = Library::load(&index, model_id, DIM)?;
    let load_ms = ms(t);
    drop(index);
    let queries: Vec<Vec<f32>> = (0..50).map(|_| unit_vec(&mut rng)).collect();
    let mut i = 0;
    let query_ms = median(queries.len() - 1, || {
        let hits = lib.top_k(&queries[i % queries.len()], 10, &Filter::default());
        i += 1;
        anyhow::ensure!(hits.len() == 10.min(lib.len()), "expected 10 hits");
        Ok(())
    })?;
    Ok((query_ms, load_ms, db_bytes(&db)?, lib.len()))
}

fn remove_db(db: &Path) -> Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.as_os_str().to_os_string();
        p.push(suffix);
        let p = PathBuf::from(p);
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| p.display().to_string())?;
        }
    }
    Ok(())
}

/// Bytes of the index on disk, WAL included (what a user's disk holds).
fn db_bytes(db: &Path) -> Result<u64> {
    let mut total = 0;
    for suffix in ["", "-wal"] {
        let mut p = db.as_os_str().to_os_string();
        p.push(suffix);
        if let Ok(m) = std::fs::metadata(PathBuf::from(p)) {
            total += m.len();
        }
    }
    Ok(total)
}

/// Test images like a real gallery: half 512×512 PNG (SD 1.5 outputs), a quarter 768×512 PNG,
/// a quarter 1024×768 JPEG (photos); smooth colour fields with noise, so PNGs compress as
/// poorly as real renders do.
fn make_images(dir: &Path, n: usize) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for i in 0..n {
        let (w, h, ext) = match i % 4 {
            0 | 1 => (512, 512, "png"),
            2 => (768, 512, "png"),
            _ => (1024, 768, "jpg"),
        };
        let base: [f32; 6] = std::array::from_fn(|_| rng.random::<f32>() * 255.0);
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            let t = (x as f32 / w as f32 + y as f32 / h as f32) / 2.0;
            let noise = rng.random::<f32>() * 24.0 - 12.0;
            image::Rgb(std::array::from_fn(|c| {
                (base[c] * (1.0 - t) + base[c + 3] * t + noise).clamp(0.0, 255.0) as u8
            }))
        });
        let path = dir.join(format!("img_{i:05}.{ext}"));
        img.save(&path)
            .with_context(|| path.display().to_string())?;
    }
    std::fs::write(dir.join(".complete"), b"").context("marking the images complete")?;
    Ok(())
}

/// Random weights in transformers' CLIPModel layout: every tensor the towers ask for, made by
/// a `VarMap`, plus the ones candle's builders only read when present.
fn make_vit_b32_random(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let device = Device::Cpu;
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &device);
    let text = ClipTextConfig {
        vocab_size: 49408,
        embed_dim: 512,
        activation: Activation::QuickGelu,
        intermediate_size: 2048,
        max_position_embeddings: 77,
        pad_with: None,
        num_hidden_layers: 12,
        num_attention_heads: 8,
        projection_dim: 512,
    };
    let vision = ClipVisionConfig::vit_base_patch32();
    // candle draws a fresh class embedding when the file lacks one; create it so it is saved.
    vb.pp("vision_model.embeddings").get_with_hints(
        vision.embed_dim,
        "class_embedding",
        Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        },
    )?;
    vb.get_with_hints((), "logit_scale", Init::Const(2.6592))?;
    ClipTextTransformer::new(vb.pp("text_model"), &text)?;
    ClipVisionTransformer::new(vb.pp("vision_model"), &vision)?;
    candle_nn::linear_no_bias(512, 512, vb.pp("text_projection"))?;
    candle_nn::linear_no_bias(768, 512, vb.pp("visual_projection"))?;
    vm.save(dir.join("model.safetensors"))?;
    std::fs::write(dir.join("preprocessor_config.json"), OPENAI_PREPROCESSOR)?;
    // Written last: the folder is complete once config.json is there.
    std::fs::write(dir.join("config.json"), VIT_B32_CONFIG)?;
    Ok(())
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Runs `f` once to warm up, then `reps` times; the median in milliseconds.
fn median(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f()?;
        times.push(ms(t));
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[times.len() / 2])
}
